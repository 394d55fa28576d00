{{- define "noria.fullname" -}}
{{- if contains .Chart.Name .Release.Name -}}
{{- .Release.Name | trunc 63 | trimSuffix "-" -}}
{{- else -}}
{{- printf "%s-%s" .Release.Name .Chart.Name | trunc 63 | trimSuffix "-" -}}
{{- end -}}
{{- end -}}

{{- define "noria.labels" -}}
app.kubernetes.io/name: noria
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version }}
{{- end -}}

{{- define "noria.selectorLabels" -}}
app.kubernetes.io/name: noria
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end -}}

{{- define "noria.serviceAccountName" -}}
{{- default (include "noria.fullname" .) .Values.serviceAccount.name -}}
{{- end -}}
