"""A training run's Kubernetes objects (pure): names, the run spec, its ConfigMap and Job, and
what a finished Job says.

Names are deterministic (``<pipeline>-r<N>`` for the ConfigMap and the Job, ``<pipeline>-v<N>``
for the ModelVersion the run may register) so that a step re-run after a crash finds the object it
made instead of making a second one. Every pod of a run works on the same run id, version and
output location, so a retried pod that finds the set an earlier pod wrote reports it again
(the trainer's output check) and the run registers once.

Retries (docs/training.md, "Retries"): the Job's ``podFailurePolicy`` ignores pods that failed
because of a disruption (eviction, node drain, preemption: the ``DisruptionTarget`` pod
condition), fails the Job at once on the trainer's exit codes for failures another pod would meet
again (``noria.runspec.NOT_RETRIED_EXIT_CODES``), and counts anything else (a crash, an
out-of-memory kill) against a small ``backoffLimit``. The pod runs with the ``restricted`` Pod Security profile and
no service-account token: the trainer reads data and writes artifacts on the store volume (or an
``s3://`` store, reached with the AWS variables of ``noria.objectstore``: no volume at all) and
needs nothing from the Kubernetes API.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Final

from noria import objectstore, runspec, store
from noria.contracts import (
    ANNOTATION_TRIGGER,
    ANNOTATION_TRIGGERED_AT,
    COMPONENT_TRAINER,
    LABEL_COMPONENT,
    LABEL_MANAGED_BY,
    LABEL_PIPELINE,
    LABEL_RUN,
    MANAGED_BY,
    POD_USER_ID,
)

RUN_SPEC_KEY: Final = runspec.RUN_SPEC_KEY
RUN_MOUNT_PATH: Final = "/etc/noria/run"
TERMINATION_LOG: Final = "/dev/termination-log"
TRAINER_CONTAINER: Final = "trainer"
STORE_VOLUME: Final = "store"
RUN_VOLUME: Final = "run"
# The one writable directory of a training container (its root filesystem is read-only).
TMP_VOLUME: Final = "tmp"
TMP_PATH: Final = "/tmp"


# Retries of a run's pod for what is not the run's own fault (a crash, an out-of-memory kill): the
# trainer's deterministic failures fail the Job at once (podFailurePolicy), and an evicted or
# drained pod is not counted at all, so two retries cover a flaky node without hiding a real bug.
DEFAULT_BACKOFF_LIMIT: Final = 2
DEFAULT_ACTIVE_DEADLINE_SECONDS: Final = 6 * 3600
DEFAULT_JOBS_KEPT: Final = 5


def restricted_pod_security() -> dict[str, Any]:
    """The restricted Pod Security Standard at pod level, for every training pod (the trainer Job's,
    a Dask run's scheduler and workers): the images' non-root user, RuntimeDefault seccomp."""
    return {
        "runAsNonRoot": True,
        "runAsUser": POD_USER_ID,
        "runAsGroup": POD_USER_ID,
        "fsGroup": POD_USER_ID,
        "seccompProfile": {"type": "RuntimeDefault"},
    }


def restricted_container_security() -> dict[str, Any]:
    """The restricted Pod Security Standard at container level, for every training container."""
    return {
        "allowPrivilegeEscalation": False,
        "capabilities": {"drop": ["ALL"]},
        "readOnlyRootFilesystem": True,
        "runAsNonRoot": True,
    }


def run_name(pipeline: str, n: int) -> str:
    return f"{pipeline}-r{int(n)}"


def version_name(pipeline: str, n: int) -> str:
    return f"{pipeline}-v{int(n)}"


def run_number(pipeline: str, name: str) -> int | None:
    """``churn-r7`` -> 7 (None for a name that is not one of this pipeline's runs)."""
    m = re.fullmatch(re.escape(pipeline) + r"-r([0-9]+)", name)
    return int(m.group(1)) if m else None


@dataclass(frozen=True)
class RunSettings:
    """What the run objects need from operator settings."""

    trainer_image: str
    store_root: str  # as seen inside the pod
    store_pvc: str
    store_mount_path: str
    image_pull_policy: str = "IfNotPresent"
    backoff_limit: int = DEFAULT_BACKOFF_LIMIT
    active_deadline_seconds: int = DEFAULT_ACTIVE_DEADLINE_SECONDS
    local_store_root: str = ""  # the store as the operator sees it (see Settings.local_store_root)
    # NORIA_TRUSTED_DATA_PREFIXES, handed to the trainer so that it checks the data source itself.
    trusted_data_prefixes: tuple[str, ...] = ()
    # The operator's s3 endpoint and region, for a pipeline whose spec.store.s3 names none.
    s3_endpoint: str = ""
    s3_region: str = ""
    trainer_feast_image: str = ""  # for spec.data.feast (Settings.trainer_feast_image); empty: trainer_image

    def trainer_image_for(self, pipeline_spec: Mapping[str, Any]) -> str:
        """The image a run of this pipeline trains on: a Feast pipeline's needs Feast (pandas<3)."""
        if (pipeline_spec.get("data") or {}).get("feast") and self.trainer_feast_image:
            return self.trainer_feast_image
        return self.trainer_image

    def pod_uri(self, uri: str | None) -> str | None:
        """A store URI as pods see it. A trainer that saw the store at the operator's local root
        (the test bed runs pods as local processes) reports local URIs; records keep the pod view."""
        local, root = self.local_store_root.rstrip("/"), self.store_root.rstrip("/")
        if uri and local and local != root and (uri == local or uri.startswith(local + "/")):
            return root + uri[len(local):]
        return uri


def run_spec(pipeline: Mapping[str, Any], n: int, trigger: str, champion: runspec.ChampionRef | None,
             settings: RunSettings) -> runspec.RunSpecDocument:
    """The JSON document the trainer reads (docs/contracts.md, "Run spec")."""
    meta = pipeline["metadata"]
    ns, name = meta["namespace"], meta["name"]
    document: runspec.RunSpecDocument = {
        "runId": run_name(name, n),
        "trigger": trigger,
        "namespace": ns,
        "pipeline": name,
        "version": int(n),
        "spec": pipeline["spec"],
        "champion": champion,
        "outputUri": store.version_dir(settings.store_root, ns, name, n),
        "storeRoot": settings.store_root,
    }
    if settings.trusted_data_prefixes:
        # The trainer refuses a data source outside <storeRoot>/<namespace>/, <storeRoot>/datasets/
        # and these (defence in depth: the operator has checked already).
        document["trustedDataPrefixes"] = list(settings.trusted_data_prefixes)
    return document


def _labels(pipeline_name: str, run: str) -> dict[str, str]:
    # noria.dev/component like every pod Noria creates (one key to select Noria's pods by role).
    return {LABEL_PIPELINE: pipeline_name, LABEL_RUN: run, LABEL_COMPONENT: COMPONENT_TRAINER,
            LABEL_MANAGED_BY: MANAGED_BY}


def config_map(pipeline: Mapping[str, Any], owner_ref: Mapping[str, Any], spec: Mapping[str, Any]) -> dict[str, Any]:
    meta = pipeline["metadata"]
    return {
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": {"name": spec["runId"], "namespace": meta["namespace"],
                     "labels": _labels(meta["name"], spec["runId"]), "ownerReferences": [dict(owner_ref)]},
        "data": {RUN_SPEC_KEY: json.dumps(spec, indent=1, sort_keys=True)},
        "immutable": True,
    }


def job(pipeline: Mapping[str, Any], owner_ref: Mapping[str, Any], spec: Mapping[str, Any], triggered_at: str,
        settings: RunSettings) -> dict[str, Any]:
    meta, pspec = pipeline["metadata"], pipeline["spec"]
    run = spec["runId"]
    labels = _labels(meta["name"], run)
    resources = pspec.get("resources") or {}
    container: dict[str, Any] = {
        "name": TRAINER_CONTAINER,
        "image": settings.trainer_image_for(pspec),
        "imagePullPolicy": settings.image_pull_policy,
        "command": ["python", "-m", "noria_trainer", "run",
                    "--spec", f"{RUN_MOUNT_PATH}/{RUN_SPEC_KEY}", "--termination-log", TERMINATION_LOG],
        "env": [{"name": "NORIA_STORE_ROOT", "value": settings.store_root},
                {"name": "NORIA_RUN_ID", "value": run},
                *trainer_s3_env(pspec, settings)],
        "volumeMounts": [
            {"name": RUN_VOLUME, "mountPath": RUN_MOUNT_PATH, "readOnly": True},
            *store_volume_mounts(settings),
            {"name": TMP_VOLUME, "mountPath": TMP_PATH},
        ],
        "terminationMessagePath": TERMINATION_LOG,
        # A crash before the trainer writes its summary still leaves the log tail as the reason.
        "terminationMessagePolicy": "FallbackToLogsOnError",
        "securityContext": restricted_container_security(),
    }
    if resources:
        container["resources"] = resources
    return {
        "apiVersion": "batch/v1",
        "kind": "Job",
        "metadata": {
            "name": run,
            "namespace": meta["namespace"],
            "labels": labels,
            "annotations": {ANNOTATION_TRIGGER: spec["trigger"], ANNOTATION_TRIGGERED_AT: triggered_at},
            "ownerReferences": [dict(owner_ref)],
        },
        "spec": {
            "backoffLimit": settings.backoff_limit,
            "podFailurePolicy": pod_failure_policy(),
            "activeDeadlineSeconds": settings.active_deadline_seconds,
            "template": {
                "metadata": {"labels": labels},
                "spec": {
                    "restartPolicy": "Never",
                    "automountServiceAccountToken": False,
                    "enableServiceLinks": False,
                    "securityContext": restricted_pod_security(),
                    "containers": [container],
                    "volumes": [
                        {"name": RUN_VOLUME, "configMap": {"name": run}},
                        *store_volumes(settings),
                        {"name": TMP_VOLUME, "emptyDir": {}},
                    ],
                },
            },
        },
    }


def trainer_s3_env(pipeline_spec: Mapping[str, Any], settings: RunSettings) -> list[dict[str, Any]]:
    """How the trainer reaches s3:// data and an s3:// store: the pipeline's spec.store.s3, else the
    operator's endpoint and region; nothing for a file:// store and no spec.store."""
    access = objectstore.parse_access(pipeline_spec.get("store"))
    if access is None and not objectstore.is_s3(settings.store_root):
        return []
    return objectstore.pod_env(access, settings.s3_endpoint, settings.s3_region)


def store_volume_mounts(settings: RunSettings) -> list[dict[str, Any]]:
    """The store claim's mount; none on an s3:// store (nothing to mount, no ReadWriteMany needed)."""
    if objectstore.is_s3(settings.store_root):
        return []
    return [{"name": STORE_VOLUME, "mountPath": settings.store_mount_path}]


def store_volumes(settings: RunSettings) -> list[dict[str, Any]]:
    if objectstore.is_s3(settings.store_root):
        return []
    return [{"name": STORE_VOLUME, "persistentVolumeClaim": {"claimName": settings.store_pvc}}]


def pod_failure_policy() -> dict[str, Any]:
    """Which failed pods a run retries. Rules are tried in order and the first match acts: a
    disrupted pod is ignored first, because a trainer stopped by SIGTERM mid-read can exit with a
    data error it would not have had otherwise."""
    return {"rules": [
        {"action": "Ignore", "onPodConditions": [{"type": "DisruptionTarget", "status": "True"}]},
        {"action": "FailJob", "onExitCodes": {"containerName": TRAINER_CONTAINER, "operator": "In",
                                              "values": list(runspec.NOT_RETRIED_EXIT_CODES)}},
    ]}


# --- reading a Job ------------------------------------------------------------------------------
RUNNING: Final = "Running"
SUCCEEDED: Final = "Succeeded"
FAILED: Final = "Failed"
MISSING: Final = "Missing"


@dataclass(frozen=True)
class JobOutcome:
    state: str  # Missing | Running | Succeeded | Failed
    summary: dict[str, Any] | None = None  # the trainer's JSON summary, when a pod left one
    reason: str | None = None  # the Job's failure reason (BackoffLimitExceeded, DeadlineExceeded, ...)
    message: str | None = None
    finished_at: str | None = None
    created_at: str | None = None
    # Of the run's pods that ended: how many the kernel killed for memory (container reason
    # OOMKilled), and the trainer's memory limit, so that the run's failure can say what to raise.
    oom_killed: int = 0
    memory_limit: str | None = None


def _condition(job_obj: Mapping[str, Any], type_: str) -> Mapping[str, Any] | None:
    for cond in (job_obj.get("status") or {}).get("conditions") or []:
        if cond.get("type") == type_ and cond.get("status") == "True":
            return cond
    return None


def parse_summary(text: str | None) -> dict[str, Any] | None:
    """The trainer's summary from a termination message; the last JSON object line wins (with
    FallbackToLogsOnError the message can be a log tail ending with the summary line)."""
    if not text:
        return None
    for line in reversed(text.strip().splitlines()):
        line = line.strip()
        if line.startswith("{"):
            try:
                value = json.loads(line)
            except ValueError:
                continue
            if isinstance(value, dict) and "status" in value:
                return value
    try:
        value = json.loads(text)
    except ValueError:
        return None
    return value if isinstance(value, dict) and "status" in value else None


def termination_message(pods: list[Mapping[str, Any]]) -> str | None:
    """The newest terminated trainer container's message among the Job's pods."""
    found: list[tuple[str, str]] = []
    for pod in pods:
        for cs in (pod.get("status") or {}).get("containerStatuses") or []:
            if cs.get("name") != TRAINER_CONTAINER:
                continue
            term = (cs.get("state") or {}).get("terminated")
            if term and term.get("message"):
                found.append((term.get("finishedAt") or "", term["message"]))
    return max(found)[1] if found else None


def _oom_killed(pods: list[Mapping[str, Any]]) -> int:
    """Trainer containers that ended OOMKilled (their current or last termination)."""
    count = 0
    for pod in pods:
        for cs in (pod.get("status") or {}).get("containerStatuses") or []:
            if cs.get("name") != TRAINER_CONTAINER:
                continue
            ended = [(cs.get(key) or {}).get("terminated") or {} for key in ("state", "lastState")]
            count += any(term.get("reason") == "OOMKilled" for term in ended)
    return count


def _memory_limit(job_obj: Mapping[str, Any]) -> str | None:
    containers = ((((job_obj.get("spec") or {}).get("template") or {}).get("spec") or {}).get("containers") or [])
    for container in containers:
        if container.get("name") == TRAINER_CONTAINER:
            return ((container.get("resources") or {}).get("limits") or {}).get("memory")
    return None


def job_outcome(job_obj: Mapping[str, Any] | None, pods: list[Mapping[str, Any]]) -> JobOutcome:
    if job_obj is None:
        return JobOutcome(MISSING)
    created = job_obj["metadata"].get("creationTimestamp")
    complete = _condition(job_obj, "Complete")
    failed = _condition(job_obj, "Failed")
    if not complete and not failed:
        return JobOutcome(RUNNING, created_at=created)
    summary = parse_summary(termination_message(pods))
    if complete:
        finished = (job_obj.get("status") or {}).get("completionTime") or complete.get("lastTransitionTime")
        return JobOutcome(SUCCEEDED, summary, finished_at=finished, created_at=created)
    assert failed is not None
    return JobOutcome(FAILED, summary, failed.get("reason"), failed.get("message"),
                      failed.get("lastTransitionTime"), created, _oom_killed(pods), _memory_limit(job_obj))


def runs_to_prune(pipeline: str, names: list[str], keep: int, current: str | None) -> list[str]:
    """Run objects (Jobs or ConfigMaps) beyond the newest ``keep`` finished ones; never the current run."""
    numbered = [(run_number(pipeline, n), n) for n in names if n != current]
    finished = sorted(((num, n) for num, n in numbered if num is not None), reverse=True)
    return [n for _, n in finished[keep:]]
