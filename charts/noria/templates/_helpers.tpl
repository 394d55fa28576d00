{{/* The chart's name, or nameOverride: the app.kubernetes.io/name label. */}}
{{- define "noria.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{/* The prefix of every object's name: fullnameOverride, else <release>-<name> unless the
release name already holds the name. */}}
{{- define "noria.fullname" -}}
{{- if .Values.fullnameOverride -}}
{{- .Values.fullnameOverride | trunc 63 | trimSuffix "-" -}}
{{- else -}}
{{- $name := include "noria.name" . -}}
{{- if contains $name .Release.Name -}}
{{- .Release.Name | trunc 63 | trimSuffix "-" -}}
{{- else -}}
{{- printf "%s-%s" .Release.Name $name | trunc 63 | trimSuffix "-" -}}
{{- end -}}
{{- end -}}
{{- end -}}

{{- define "noria.labels" -}}
app.kubernetes.io/name: {{ include "noria.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version }}
{{- end -}}

{{- define "noria.selectorLabels" -}}
app.kubernetes.io/name: {{ include "noria.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end -}}

{{/* Whether the store is an object store (store.root s3://...): then no claim is made or mounted. */}}
{{- define "noria.storeOnS3" -}}
{{- if hasPrefix "s3://" .Values.store.root }}true{{ end -}}
{{- end -}}

{{- define "noria.serviceAccountName" -}}
{{- default (include "noria.fullname" .) .Values.serviceAccount.name -}}
{{- end -}}

{{/* Whether the operator serves /metrics: operator.metricsPort 0 turns off the port, the Service,
the scrape annotations and the ServiceMonitor. */}}
{{- define "noria.metricsEnabled" -}}
{{- if gt (int .Values.operator.metricsPort) 0 }}true{{ end -}}
{{- end -}}

{{/* The operator's permissions in a namespace it watches: one list, granted by a ClusterRole
(watchNamespaces empty: every namespace) or by a Role in each watched namespace. Each rule is
here because a call in operator/noria needs it; charts/noria/tests/rbac-can-i-*.txt is the
resulting `kubectl auth can-i --list`, checked against the API server. */}}
{{- define "noria.namespacedRules" -}}
# Noria's own kinds. Kopf lists and watches them; the operator reads one at a time (get), writes
# status through /status (merge patch), and patches Rollouts' metadata: the annotations it
# consumes (promote, abort, retry) and Kopf's finalizer and bookkeeping. Pipelines and
# ModelVersions are handled by event handlers, which write no metadata. The operator creates
# ModelVersions (end of a training run) and deletes none of the user's objects.
- apiGroups: [noria.dev]
  resources: [trainingpipelines]
  verbs: [get, list, watch]
- apiGroups: [noria.dev]
  resources: [modelversions]
  verbs: [get, list, watch, create]
- apiGroups: [noria.dev]
  resources: [rollouts]
  verbs: [get, list, watch, patch]
- apiGroups: [noria.dev]
  resources: [trainingpipelines/status, modelversions/status, rollouts/status]
  verbs: [patch]
# Owned objects carry blockOwnerDeletion: with the OwnerReferencesPermissionEnforcement admission
# plugin that needs update on the owner's finalizers (pipelines own runs, Rollouts own serving).
- apiGroups: [noria.dev]
  resources: [trainingpipelines/finalizers, rollouts/finalizers]
  verbs: [update]
# Training runs: a ConfigMap with the run spec and a Job per run (listed by label, watched by Kopf,
# deleted when a run is cancelled). `get` reads an existing object after a create found it there.
- apiGroups: [batch]
  resources: [jobs]
  verbs: [get, list, watch, create, delete]
# Dask runs (spec.compute.engine: dask): a DaskCluster of the Dask Kubernetes operator per run, listed
# by label, created when the run starts and deleted when it ends (training/dask_cluster.py).
- apiGroups: [kubernetes.dask.org]
  resources: [daskclusters]
  verbs: [get, list, watch, create, delete]
# ConfigMaps: run specs and the router's weights (server-side apply: patch, and create when new).
# watch only because the router's Role grants it on its own ConfigMap, and the API server lets
# nobody grant what they do not hold.
- apiGroups: [""]
  resources: [configmaps]
  verbs: [get, list, watch, create, patch, delete]
# Webhook URLs of the namespace's notification receivers: that one Secret, read only.
- apiGroups: [""]
  resources: [secrets]
  resourceNames: [noria-notifications]
  verbs: [get]
# A run's summary is in its pod's termination message, and a model server's readiness in its pods:
# listed and watched, never written. get: only because the router's Role grants it (below).
- apiGroups: [""]
  resources: [pods]
  verbs: [get, list, watch]
# Serving: a Deployment and a Service per version, the router, the entry Service (server-side
# apply: patch, and create when new). Deployments are watched by Kopf; the router's Deployment,
# like its Services and ConfigMap, is read one by one before it is applied with the
# resourceVersion read (a deposed leader's write then fails: docs/operations/high-availability.md).
# Services: list and watch only because the router's Role grants them.
- apiGroups: [apps]
  resources: [deployments]
  verbs: [get, list, watch, create, patch, delete]
- apiGroups: [""]
  resources: [services]
  verbs: [get, list, watch, create, patch, delete]
# The router of provider `router` runs under its own ServiceAccount with a Role that reads its
# ConfigMap, and the EndpointSlices, Services and Pods of its namespace (objects.router_rbac).
# Created and kept in shape by server-side apply, garbage-collected with the Rollout. The operator
# can only grant what it holds itself (tests/unit/test_chart.py checks the router's Role is within
# these rules), hence endpointslices and the reads above.
- apiGroups: [""]
  resources: [serviceaccounts]
  verbs: [create, patch]
- apiGroups: [rbac.authorization.k8s.io]
  resources: [roles, rolebindings]
  verbs: [create, patch]
- apiGroups: [discovery.k8s.io]
  resources: [endpointslices]
  verbs: [get, list, watch]
# Traffic provider gatewayAPI: weights and mirror filter on the user's HTTPRoute (merge patch).
- apiGroups: [gateway.networking.k8s.io]
  resources: [httproutes]
  verbs: [get, patch]
# Events for `kubectl describe` (Noria's and Kopf's, both core/v1).
- apiGroups: [""]
  resources: [events]
  verbs: [create]
{{- end -}}
