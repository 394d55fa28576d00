"""A dask run's Dask cluster (pure): the DaskCluster object, the scheduler address the trainer Job gets,
and what the observed cluster says about the run.

``TrainingPipeline.spec.compute.engine: dask`` runs on a Dask cluster made for the run through the Dask
Kubernetes operator (``kubernetes.dask.org/v1`` DaskCluster; docs/training-dask.md). We create a
DaskCluster and keep our own trainer Job as the Dask *client*, rather than a DaskJob, so that a dask run
is a run like any other: the same Job, ``podFailurePolicy`` retries, termination-message summary,
ModelVersion registration and history. A DaskJob would move the client pod under the Dask operator,
which knows none of these.

The order of a dask run (``pipeline`` carries it out, one idempotent step per pass):

1. the run starts: its ConfigMap and DaskCluster ``<pipeline>-r<N>`` are created, no Job yet;
2. once the scheduler pod is ready and its Service ``<run>-scheduler`` has a ClusterIP, the Job is created
   with ``NORIA_DASK_SCHEDULER=tcp://<ClusterIP>:8786`` (a ClusterIP, not a DNS name: it lives as long as
   the cluster, and the test bed has no cluster DNS) and the scheduler pod's uid is recorded in
   ``status.currentRun.daskScheduler``;
3. the run fails with ``DaskClusterNotReady`` when the scheduler is not ready within
   ``CLUSTER_START_TIMEOUT_SECONDS`` (no Dask operator, an image that cannot start, no room), and with
   ``DaskClusterLost`` when, once the Job runs, the DaskCluster is gone or the recorded scheduler pod
   is gone or restarted (a new scheduler knows nothing of the client's work: its Deployment would
   replace it, and the client would hang or retry against an empty cluster);
4. when the run ends, whatever the outcome, every DaskCluster of the pipeline but the current run's is
   deleted (the Dask operator's objects are owned by it and go with it).

Pods: scheduler and workers run the trainer image (it has dask and distributed), with explicit
commands (``python -m distributed.cli.dask_scheduler`` / ``dask_worker``), the restricted Pod
Security profile and no service-account token. Workers find the scheduler through the Service
variables the kubelet expands in a container's arguments (``$(<RUN>_SCHEDULER_SERVICE_HOST)``), since
the Dask operator creates the Service before the workers. A worker runs without a nanny (one process
per pod, so the container's memory limit is the worker's) with ``--memory-limit`` equal to that limit,
so Dask spills to the pod's ``/tmp`` and pauses before the kernel kills it.
"""

from __future__ import annotations

import copy
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Final

from noria.api.training_pipeline import DaskCompute
from noria.contracts import (
    COMPONENT_TRAINER,
    LABEL_COMPONENT,
    LABEL_MANAGED_BY,
    LABEL_PIPELINE,
    LABEL_RUN,
    MANAGED_BY,
)
from noria.runspec import SCHEDULER_ENV
from noria.training.runs import TMP_PATH, TMP_VOLUME, restricted_container_security, restricted_pod_security

GROUP: Final = "kubernetes.dask.org"
API_VERSION: Final = f"{GROUP}/v1"
KIND: Final = "DaskCluster"
PLURAL: Final = "daskclusters"

SCHEDULER_PORT: Final = 8786
SCHEDULER_PORT_NAME: Final = "tcp-comm"
SCHEDULER_CONTAINER: Final = "scheduler"
WORKER_CONTAINER: Final = "worker"
# Labels the Dask operator puts on its pods (its own contract, kubernetes.dask.org).
LABEL_CLUSTER_NAME: Final = "dask.org/cluster-name"
LABEL_DASK_COMPONENT: Final = "dask.org/component"
DASK_SCHEDULER: Final = "scheduler"

# From the run's start to a ready scheduler: the Dask operator, two pod starts and the image's imports.
CLUSTER_START_TIMEOUT_SECONDS: Final = 300.0

POD_IP_ENV: Final = "NORIA_POD_IP"
# What a Dask nanny sets in its worker's environment (distributed.nanny.pre-spawn-environ), set here since
# the worker runs without one: glibc gives freed memory back to the kernel (else a worker's RSS only grows
# and the memory limit kills it), and numeric libraries use the worker's one thread.
WORKER_PROCESS_ENV: Final = {
    "MALLOC_TRIM_THRESHOLD_": "65536",
    "OMP_NUM_THREADS": "1",
    "MKL_NUM_THREADS": "1",
    "OPENBLAS_NUM_THREADS": "1",
    # Arrow's own allocator keeps what a read Parquet file used; the system one gives it back (above).
    "ARROW_DEFAULT_MEMORY_POOL": "system",
}


def is_dask(pipeline_spec: Mapping[str, Any]) -> bool:
    """Whether the pipeline's runs train on a Dask cluster (spec.compute.engine: dask)."""
    return ((pipeline_spec.get("compute") or {}).get("engine") or "single") == "dask"


def scheduler_service_name(run: str) -> str:
    """The Service the Dask operator makes for a cluster's scheduler (``<cluster>-scheduler``)."""
    return f"{run}-scheduler"


def _service_variable(run: str, suffix: str) -> str:
    """A kubelet Service variable name: the Service's name upper-cased, dashes as underscores."""
    return f"{scheduler_service_name(run).upper().replace('-', '_')}_SERVICE_{suffix}"


def _pod_ip_env() -> dict[str, Any]:
    return {"name": POD_IP_ENV, "valueFrom": {"fieldRef": {"fieldPath": "status.podIP"}}}


def _pod_spec(
    container: dict[str, Any],
    resources: Mapping[str, Any] | None,
    image_pull_policy: str,
    service_links: bool,
) -> dict[str, Any]:
    if resources:
        container["resources"] = dict(resources)
    container.update(
        {
            "imagePullPolicy": image_pull_policy,
            "securityContext": restricted_container_security(),
            "volumeMounts": [{"name": TMP_VOLUME, "mountPath": TMP_PATH}],
        }
    )
    return {
        "automountServiceAccountToken": False,
        "enableServiceLinks": service_links,
        "securityContext": restricted_pod_security(),
        "containers": [container],
        "volumes": [{"name": TMP_VOLUME, "emptyDir": {}}],
    }


def scheduler_pod_spec(
    image: str, resources: Mapping[str, Any] | None, image_pull_policy: str
) -> dict[str, Any]:
    container = {
        "name": SCHEDULER_CONTAINER,
        "image": image,
        "command": [
            "python",
            "-m",
            "distributed.cli.dask_scheduler",
            "--host",
            f"$({POD_IP_ENV})",
            "--port",
            str(SCHEDULER_PORT),
            "--no-dashboard",
        ],
        "env": [_pod_ip_env()],
        "ports": [{"name": SCHEDULER_PORT_NAME, "containerPort": SCHEDULER_PORT, "protocol": "TCP"}],
        "readinessProbe": {"tcpSocket": {"port": SCHEDULER_PORT_NAME}, "periodSeconds": 2},
    }
    return _pod_spec(container, resources, image_pull_policy, service_links=False)


def worker_pod_spec(
    run: str, image: str, resources: Mapping[str, Any] | None, image_pull_policy: str
) -> dict[str, Any]:
    memory = ((resources or {}).get("limits") or {}).get("memory")
    scheduler = f"tcp://$({_service_variable(run, 'HOST')}):$({_service_variable(run, 'PORT_TCP_COMM')})"
    command = [
        "python",
        "-m",
        "distributed.cli.dask_worker",
        scheduler,
        "--host",
        f"$({POD_IP_ENV})",
        "--no-nanny",
        "--nthreads",
        "1",
        "--no-dashboard",
        "--local-directory",
        TMP_PATH,
        "--name",
        "$(DASK_WORKER_NAME)",
    ]
    if memory:
        command += ["--memory-limit", str(memory)]
    env = [_pod_ip_env(), *({"name": k, "value": v} for k, v in WORKER_PROCESS_ENV.items())]
    container = {"name": WORKER_CONTAINER, "image": image, "command": command, "env": env}
    return _pod_spec(container, resources, image_pull_policy, service_links=True)


def with_scheduler(job: Mapping[str, Any], address: str) -> dict[str, Any]:
    """The run's Job with the scheduler address in its trainer container's environment."""
    out = copy.deepcopy(dict(job))
    for container in out["spec"]["template"]["spec"]["containers"]:
        container["env"] = [*container.get("env", []), {"name": SCHEDULER_ENV, "value": address}]
    return out


def labels(pipeline_name: str, run: str) -> dict[str, str]:
    return {
        LABEL_PIPELINE: pipeline_name,
        LABEL_RUN: run,
        LABEL_COMPONENT: COMPONENT_TRAINER,
        LABEL_MANAGED_BY: MANAGED_BY,
    }


def dask_cluster(
    pipeline: Mapping[str, Any], owner_ref: Mapping[str, Any], run: str, image: str, image_pull_policy: str
) -> dict[str, Any]:
    """The DaskCluster of run ``run``: scheduler and ``compute.dask.workers`` workers on the trainer image.
    Owned by the pipeline (deleted with it); the run's end deletes it before that."""
    meta, spec = pipeline["metadata"], pipeline["spec"]
    dask = (spec.get("compute") or {}).get("dask") or {}
    run_labels = labels(meta["name"], run)
    return {
        "apiVersion": API_VERSION,
        "kind": KIND,
        "metadata": {
            "name": run,
            "namespace": meta["namespace"],
            "labels": run_labels,
            "ownerReferences": [dict(owner_ref)],
        },
        "spec": {
            "scheduler": {
                "metadata": {"labels": run_labels},
                "spec": scheduler_pod_spec(image, dask.get("schedulerResources"), image_pull_policy),
                "service": {
                    "type": "ClusterIP",
                    "selector": {LABEL_CLUSTER_NAME: run, LABEL_DASK_COMPONENT: DASK_SCHEDULER},
                    "ports": [
                        {
                            "name": SCHEDULER_PORT_NAME,
                            "protocol": "TCP",
                            "port": SCHEDULER_PORT,
                            "targetPort": SCHEDULER_PORT_NAME,
                        }
                    ],
                },
            },
            "worker": {
                # compute.dask as the API model reads it: its default when the spec sets no workers
                "replicas": DaskCompute.model_validate(dask).workers,
                "metadata": {"labels": run_labels},
                "spec": worker_pod_spec(run, image, dask.get("workerResources"), image_pull_policy),
            },
        },
    }


# --- reading a cluster --------------------------------------------------------------------------
@dataclass(frozen=True)
class SchedulerPod:
    uid: str
    ready: bool
    restarts: int


@dataclass(frozen=True)
class ClusterObservation:
    """A run's DaskCluster as observed: whether it exists, its scheduler Service's address and pods."""

    exists: bool
    phase: str | None = None  # the Dask operator's status.phase (Created, Pending, Running, Error)
    scheduler_address: str | None = None  # tcp://<ClusterIP>:<port>, once the Service has a ClusterIP
    schedulers: tuple[SchedulerPod, ...] = ()


MISSING: Final = "Missing"
STARTING: Final = "Starting"
READY: Final = "Ready"
NOT_READY: Final = "NotReady"  # did not start in time: the run fails
LOST: Final = "Lost"  # the cluster or its scheduler went away under a running Job: the run fails


def observe(
    cluster: Mapping[str, Any] | None, service: Mapping[str, Any] | None, pods: list[Mapping[str, Any]]
) -> ClusterObservation:
    """The observation from the DaskCluster, its scheduler Service and its scheduler pods."""
    if cluster is None:
        return ClusterObservation(exists=False)
    address = None
    cluster_ip = ((service or {}).get("spec") or {}).get("clusterIP")
    if cluster_ip and cluster_ip != "None":
        address = f"tcp://{cluster_ip}:{SCHEDULER_PORT}"
    schedulers = []
    for pod in pods:
        if (pod.get("metadata") or {}).get("deletionTimestamp"):
            continue
        statuses = [
            cs
            for cs in (pod.get("status") or {}).get("containerStatuses") or []
            if cs.get("name") == SCHEDULER_CONTAINER
        ]
        ready = bool(statuses) and all(cs.get("ready") for cs in statuses)
        restarts = sum(int(cs.get("restartCount") or 0) for cs in statuses)
        schedulers.append(SchedulerPod(pod["metadata"]["uid"], ready, restarts))
    return ClusterObservation(True, (cluster.get("status") or {}).get("phase"), address, tuple(schedulers))


@dataclass(frozen=True)
class ClusterState:
    state: str  # MISSING | STARTING | READY | NOT_READY | LOST
    message: str = ""
    scheduler_uid: str | None = None  # of the ready scheduler (READY)


def judge(
    observed: ClusterObservation | None,
    recorded_scheduler: str | None,
    waited_seconds: float,
    timeout: float = CLUSTER_START_TIMEOUT_SECONDS,
) -> ClusterState:
    """What the cluster means for the run. ``recorded_scheduler``: the scheduler pod uid the Job was
    started against (None before the Job); ``waited_seconds``: since the run started."""
    if recorded_scheduler is not None:
        if observed is None or not observed.exists:
            return ClusterState(LOST, "the run's DaskCluster was deleted while the trainer ran")
        mine = next((pod for pod in observed.schedulers if pod.uid == recorded_scheduler), None)
        if mine is None:
            return ClusterState(
                LOST,
                f"the Dask scheduler pod ({recorded_scheduler}) is gone: the cluster lost the run's state",
            )
        if mine.restarts:
            return ClusterState(
                LOST,
                f"the Dask scheduler restarted ({mine.restarts} time(s)): the cluster lost the run's state",
            )
        return ClusterState(READY, scheduler_uid=mine.uid)
    if observed is None or not observed.exists:
        if waited_seconds > timeout:
            return ClusterState(NOT_READY, f"the DaskCluster was not created within {timeout:.0f} s")
        return ClusterState(MISSING)
    ready = [pod for pod in observed.schedulers if pod.ready and not pod.restarts]
    if observed.phase == "Error":
        return ClusterState(NOT_READY, "the Dask operator refused the DaskCluster (status.phase Error)")
    if ready and observed.scheduler_address:
        return ClusterState(READY, scheduler_uid=ready[0].uid)
    if waited_seconds > timeout:
        seen = (
            f"phase {observed.phase or 'unset'}, {len(observed.schedulers)} scheduler pod(s), "
            f"{'a' if observed.scheduler_address else 'no'} scheduler Service address"
        )
        return ClusterState(
            NOT_READY,
            f"the Dask scheduler was not ready within {timeout:.0f} s ({seen}); is the "
            "Dask Kubernetes operator running?",
        )
    return ClusterState(STARTING)


def clusters_to_delete(names: list[str], current: str | None) -> list[str]:
    """Every DaskCluster of the pipeline but the current run's: a cluster lives only while its run does."""
    return sorted(name for name in names if name != current)
