"""The names several processes must agree on, written once: the API group, label and annotation keys,
ModelVersion stages, the HTTP headers shared by model server, router and operator, and the user id
the pods run as.

Each of these crosses a process boundary (the operator labels a pod that Prometheus relabels and the
router selects; a person annotates an object the operator reads; the router sets a header the server
reads; a Dockerfile's USER must be the runAsUser of the pods the operator creates), so a copy that
drifts breaks the system without an error at either end. Import from here; do not restate them.
This module imports nothing, so every image (operator, trainer, server) can use it.
"""

from __future__ import annotations

from typing import Final

# --- the API ---------------------------------------------------------------------------------------
GROUP: Final = "noria.dev"
VERSION: Final = "v1alpha1"
API_VERSION: Final = f"{GROUP}/{VERSION}"
PREFIX: Final = f"{GROUP}/"  # of every Noria label, annotation and finalizer

# --- ModelVersion stages (status.stage) --------------------------------------------------------------
REGISTERED: Final = "Registered"  # created by hand, not by a training run: waits for approval
CANDIDATE: Final = "Candidate"  # trained and gated, waits for approval (approval: manual)
REJECTED: Final = "Rejected"
APPROVED: Final = "Approved"
CANARY: Final = "Canary"
SHADOW: Final = "Shadow"
PREVIEW: Final = "Preview"
PRODUCTION: Final = "Production"
RETIRED: Final = "Retired"
STAGES: Final = (REGISTERED, CANDIDATE, REJECTED, APPROVED, CANARY, SHADOW, PREVIEW, PRODUCTION, RETIRED)
APPROVABLE_STAGES: Final = (REGISTERED, CANDIDATE)  # what noria.dev/approve and noria.dev/reject act on

# --- labels on the objects the operator creates ------------------------------------------------------
LABEL_ROLLOUT: Final = PREFIX + "rollout"
LABEL_VERSION: Final = PREFIX + "version"  # the ModelVersion a server pod serves
LABEL_PIPELINE: Final = PREFIX + "pipeline"
LABEL_RUN: Final = PREFIX + "run"  # a training run's Job and pod
# Prometheus' pod discovery turns it into noria_dev_component (noria.scrape), which keeps the router's hop out
# of a version's latency (noria.deployment.checks).
LABEL_COMPONENT: Final = PREFIX + "component"
LABEL_MANAGED_BY: Final = "app.kubernetes.io/managed-by"
MANAGED_BY: Final = "noria"
COMPONENT_SERVER: Final = "server"
COMPONENT_ROUTER: Final = "router"
COMPONENT_TRAINER: Final = "trainer"

# --- annotations people write -----------------------------------------------------------------------
# kubectl annotate mro <name> noria.dev/promote=true   past the current gate (pause or analysis), once
# kubectl annotate mro <name> noria.dev/promote=full   skip every remaining step: promote now
ANNOTATION_PROMOTE: Final = PREFIX + "promote"
PROMOTE_ONCE: Final = "true"
PROMOTE_FULL: Final = "full"
ANNOTATION_ABORT: Final = PREFIX + "abort"  # traffic back to the stable version
ANNOTATION_RETRY: Final = PREFIX + "retry"  # try an aborted version again
ANNOTATION_APPROVE: Final = PREFIX + "approve"  # =<user>: a Registered or Candidate version to Approved
ANNOTATION_REJECT: Final = PREFIX + "reject"  # =<user>: to Rejected (wins over approve)
ANNOTATION_RETRAIN: Final = PREFIX + "retrain"  # any new value: one more training run

# --- annotations and finalizers the operator writes ---------------------------------------------------
FINALIZER: Final = PREFIX + "finalizer"
ANNOTATION_TRIGGER: Final = PREFIX + "trigger"
ANNOTATION_TRIGGERED_AT: Final = PREFIX + "triggered-at"
ANNOTATION_INITIAL_STAGE: Final = PREFIX + "initial-stage"
ANNOTATION_INITIAL_REASON: Final = PREFIX + "initial-reason"
ANNOTATION_GATE_METRIC: Final = PREFIX + "gate-metric"
ANNOTATION_SCALE_DOWN_AT: Final = PREFIX + "scale-down-at"
ANNOTATION_ORIGINAL_BACKENDS: Final = PREFIX + "original-backends"

# --- HTTP headers between router, model servers and clients ------------------------------------------
HEADER_VERSION: Final = "x-noria-version"  # request: pin a version; answer: the version that answered
HEADER_FEEDBACK_FANOUT: Final = "x-noria-feedback-fanout"  # the router copied a label to every pod
HEADER_FEEDBACK_LOG: Final = "x-noria-feedback-log"  # "matched": log only what this pod predicted
FEEDBACK_LOG_MATCHED: Final = "matched"

# --- the user every Noria pod runs as ------------------------------------------------------------------
# The images' USER (operator/, trainer_image/ and server_image/Dockerfile) and the runAsUser/runAsGroup
# of the pods the operator creates; numeric, so the kubelet can check runAsNonRoot without a passwd file.
POD_USER_ID: Final = 65532

# --- notifications (noria/notify.py, docs/operations/notifications.md) -----------------------------------
# One ConfigMap of this name per namespace lists the webhook receivers for that namespace's objects;
# receiver URLs come from Secrets it names (a URL with a token in it is a credential).
NOTIFICATIONS_CONFIGMAP: Final = "noria-notifications"
