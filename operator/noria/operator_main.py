"""Kopf settings and handler registration for the Noria operator.

Importing this module imports kopf; the shared modules (api, drift, artifact, store, metrics)
never import it, so the trainer and server images do not need it.
"""

from __future__ import annotations

import os
from typing import Any

import kopf

FINALIZER = "noria.dev/finalizer"
ANNOTATION_PREFIX = "noria.dev"


@kopf.on.startup()
def configure(settings: kopf.OperatorSettings, **_: Any) -> None:
    # Strict CRD schemas drop unknown status fields silently, so Kopf's progress and "last
    # handled" state go into annotations under our own prefix, never into status.
    settings.persistence.progress_storage = kopf.AnnotationsProgressStorage(prefix=ANNOTATION_PREFIX)
    settings.persistence.diffbase_storage = kopf.AnnotationsDiffBaseStorage(
        prefix=ANNOTATION_PREFIX, key="last-handled-configuration"
    )
    settings.persistence.finalizer = FINALIZER
    # WARNING and above become Kubernetes Events. Not INFO: Kopf logs "Handler succeeded" at INFO for
    # every watch event of on.event handlers (Jobs, ModelVersions), one Event object each. Noria's own
    # Events are posted explicitly (kube.post_event / kopf.event), whatever this level.
    settings.posting.level = 30
    settings.watching.server_timeout = int(os.environ.get("NORIA_WATCH_TIMEOUT", "300"))
    settings.watching.client_timeout = settings.watching.server_timeout + 30
    settings.networking.request_timeout = float(os.environ.get("NORIA_REQUEST_TIMEOUT", "30"))
    settings.networking.connect_timeout = 10.0


# Handler modules register themselves on import.
from noria.deployment import handlers as _deployment_handlers  # noqa: E402,F401
from noria.training import handlers as _training_handlers  # noqa: E402,F401
