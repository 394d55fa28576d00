"""Crash points for tests only: ``hit(name, key)`` kills the process on the spot when asked to.

The Rollout pass calls ``hit("<name>")`` right after each of its side effects (see ``NAMES``) -- only
when that step changed something, so an operator started with a point armed runs quietly until the
pass that really does that step (a test arms one, then annotates abort or promote). When
the environment variable ``NORIA_FAILPOINT`` equals that name, the process exits at once with
``os._exit(137)`` -- the exit code of a SIGKILL, with no cleanup, no finally blocks and no flushed
buffers, exactly as if the node had died there. The crash-point integration test starts an operator
with each name in turn, lets it die, restarts it without the variable and checks that the Rollout and
its ModelVersions end up agreeing. Never set it in production.

The TrainingPipeline pass and the ModelVersion judgement do the same (``TRAINING_NAMES``), and pass
a key: the pipeline's name (the pass) or the ModelVersion's name (the judgement). The variable may
then name several points, comma-separated, each ``name`` (any key) or ``name@key`` (that object only):
``training-after-job@churn,version-after-approval@churn-v1`` -- the process dies at the first one it
reaches. A test can so give every crash point its own pipeline in one namespace, with one operator at
a time, and no pipeline reaches a point armed for another.

Cost when unset: one comparison per call (the variable is read once, at import).
"""

from __future__ import annotations

import os
import sys
from typing import Final

ENV: Final = "NORIA_FAILPOINT"
EXIT_CODE: Final = 137  # 128 + SIGKILL, what a killed container reports

# Every crash point of a Rollout pass, in the order a pass reaches them.
CONSUMED_FIRST: Final = "rollout-after-consume-first"  # noria.dev/promote removed
PROVIDER_ENSURED: Final = "rollout-after-provider-ensure"
REPLICAS_APPLIED: Final = "rollout-after-replicas"  # per-version Deployments and Services
TRAFFIC_SET: Final = "rollout-after-traffic"
SCALE_DOWN_STAMPED: Final = "rollout-after-scale-down-stamps"
DELETED: Final = "rollout-after-deletes"
STATUS_WRITTEN: Final = "rollout-after-status"
STAGE_WRITTEN: Final = "rollout-after-stage"  # after each ModelVersion stage write
EVENTS_POSTED: Final = "rollout-after-events"
CONSUMED_LAST: Final = "rollout-after-consume-last"  # noria.dev/abort / retry removed
FINALIZED: Final = "rollout-after-finalize"  # deletion: route restored and stages recorded, finalizer kept
NAMES: Final = (CONSUMED_FIRST, PROVIDER_ENSURED, REPLICAS_APPLIED, TRAFFIC_SET, SCALE_DOWN_STAMPED, DELETED,
                STATUS_WRITTEN, STAGE_WRITTEN, EVENTS_POSTED, CONSUMED_LAST, FINALIZED)

# Every crash point of a TrainingPipeline pass (training/handlers.execute and reconcile), in the
# order a pass reaches them; each fires only when its write happened (not on AlreadyExists, not
# for a delete of something already gone). Key: the pipeline's name.
TRAINING_VERSION_CREATED: Final = "training-after-version-create"  # a finished run's ModelVersion
TRAINING_VERSION_STAGED: Final = "training-after-version-stage"  # its first stage (status)
TRAINING_VERSION_EVENT: Final = "training-after-version-event"  # the Event on that ModelVersion
TRAINING_STATUS_WRITTEN: Final = "training-after-status"  # a status write of a pass that finished no run
TRAINING_RUN_RECORDED: Final = "training-after-run-recorded"  # the status write of a pass that finished a run
TRAINING_EVENTS_POSTED: Final = "training-after-events"  # the pass's Events on the pipeline
TRAINING_CONFIG_MAP_CREATED: Final = "training-after-config-map"  # a run's ConfigMap (single or dask)
TRAINING_DASK_CLUSTER_CREATED: Final = "training-after-dask-cluster"
TRAINING_JOB_CREATED: Final = "training-after-job"
TRAINING_PRUNED: Final = "training-after-prune"  # after each old run's Job or ConfigMap deleted
TRAINING_DASK_CLUSTER_DELETED: Final = "training-after-dask-cluster-delete"
TRAINING_RECOVERED: Final = "training-after-recovered"  # Reconciled=True once a pass got through again
TRAINING_ERROR_REPORTED: Final = "training-after-error-report"  # Reconciled=False, ReconcileError
# The judgement of a ModelVersion (training/handlers._judge_model_version_as_seen). Key: its name.
VERSION_SCOPE_WRITTEN: Final = "version-after-scope"  # Degraded ArtifactOutOfScope / InScope
VERSION_REGISTRATION_WRITTEN: Final = "version-after-registration"  # a hand-made version: Registered
VERSION_APPROVAL_WRITTEN: Final = "version-after-approval"  # noria.dev/approve or reject applied
VERSION_EVENT_POSTED: Final = "version-after-event"  # after each Event of the judgement
TRAINING_NAMES: Final = (
    TRAINING_VERSION_CREATED, TRAINING_VERSION_STAGED, TRAINING_VERSION_EVENT, TRAINING_STATUS_WRITTEN,
    TRAINING_RUN_RECORDED, TRAINING_EVENTS_POSTED, TRAINING_CONFIG_MAP_CREATED, TRAINING_DASK_CLUSTER_CREATED,
    TRAINING_JOB_CREATED, TRAINING_PRUNED, TRAINING_DASK_CLUSTER_DELETED, TRAINING_RECOVERED,
    TRAINING_ERROR_REPORTED, VERSION_SCOPE_WRITTEN, VERSION_REGISTRATION_WRITTEN, VERSION_APPROVAL_WRITTEN,
    VERSION_EVENT_POSTED)


def _parse(value: str | None) -> frozenset[tuple[str, str | None]] | None:
    """``a,b@key`` -> {(a, None), (b, key)}; None when nothing is armed."""
    points = set()
    for item in (value or "").split(","):
        name, _, key = item.strip().partition("@")
        if name:
            points.add((name, key or None))
    return frozenset(points) or None


_armed: frozenset[tuple[str, str | None]] | None = _parse(os.environ.get(ENV))


def hit(name: str, key: str | None = None) -> None:
    """Exit the process now if ``NORIA_FAILPOINT`` names this point (for any key, or for ``key``);
    otherwise do nothing."""
    if _armed is not None and ((name, None) in _armed or (key is not None and (name, key) in _armed)):
        where = f"@{key}" if key is not None else ""
        sys.stderr.write(f"noria failpoint {name}{where}: exiting with {EXIT_CODE}\n")
        sys.stderr.flush()
        os._exit(EXIT_CODE)


def arm(value: str | None) -> None:
    """Set (or clear) the armed points in this process (same syntax as the variable): for unit tests
    that run in-process."""
    global _armed
    _armed = _parse(value)
