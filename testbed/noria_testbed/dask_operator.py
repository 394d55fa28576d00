"""The Dask Kubernetes operator on the test bed, for the tests of dask runs (docs/training-dask.md).

A dask run creates a ``kubernetes.dask.org/v1`` DaskCluster; the Dask operator (``dask-kubernetes`` on
PyPI, a Kopf operator like ours) turns it into a scheduler Deployment and Service and a worker group
of Deployments, whose pods the node agent runs like any other. Here its CRDs come from the installed
wheel (the ones its Helm chart installs) and the operator runs as a local process in one namespace,
as ``kopf run -m dask_kubernetes.operator.controller`` (its image's entrypoint), with the test bed's
admin kubeconfig.
"""

from __future__ import annotations

import sys
import urllib.request
from collections.abc import Callable
from importlib import resources
from pathlib import Path

from noria_testbed.processes import ManagedProcess, free_port, wait_until

CONTROLLER_MODULE = "dask_kubernetes.operator.controller"
# Where the dask-kubernetes wheel keeps the CRDs of its Helm chart (DaskCluster, DaskWorkerGroup, DaskJob,
# DaskAutoscaler): the controller reads and writes all but the autoscaler's.
CRDS_PACKAGE = "dask_kubernetes.operator"
CRDS_DIR = ("deployment", "helm", "dask-kubernetes-operator", "crds")


def crd_files() -> list[Path]:
    """The Dask operator's CRD manifests as shipped in its wheel."""
    folder = resources.files(CRDS_PACKAGE).joinpath(*CRDS_DIR)
    files = sorted(Path(str(folder)).glob("*.yaml"))
    if not files:
        raise FileNotFoundError(f"no CRDs in {folder}: is dask-kubernetes installed (the dev extra)?")
    return files


def install_crds(kubectl: Callable[..., object]) -> None:
    """Apply the Dask CRDs and wait until they are served (``kubectl`` as LocalTestbed.kubectl)."""
    files = crd_files()
    args = [arg for path in files for arg in ("-f", str(path))]
    kubectl("apply", "--server-side", *args)
    kubectl("wait", "--for=condition=Established", "--timeout=60s", *args)


class DaskOperatorProcess:
    """The Dask Kubernetes operator watching one namespace; ``stop`` ends it."""

    def __init__(self, *, namespace: str, env: dict[str, str], log_path: Path) -> None:
        self.namespace, self.log_path = namespace, log_path
        self.port = free_port()
        argv = [
            sys.executable,
            "-m",
            "kopf",
            "run",
            "-m",
            CONTROLLER_MODULE,
            "--standalone",
            "--namespace",
            namespace,
            f"--liveness=http://127.0.0.1:{self.port}/healthz",
        ]
        self.process = ManagedProcess("dask-operator", argv, log_path, env={**env, "PYTHONUNBUFFERED": "1"})

    def wait_ready(self, timeout: float = 60.0) -> DaskOperatorProcess:
        def live() -> bool:
            self.process.check_alive()
            with urllib.request.urlopen(f"http://127.0.0.1:{self.port}/healthz", timeout=2) as response:
                return response.status == 200

        wait_until("Dask operator liveness", live, timeout=timeout)
        return self

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def stop(self) -> None:
        self.process.stop()


def start(cluster, namespace: str) -> DaskOperatorProcess:  # noqa: ANN001 - a LocalTestbed
    """Install the CRDs (idempotent) and start the Dask operator for ``namespace`` on ``cluster``."""
    install_crds(cluster.kubectl)
    operator = DaskOperatorProcess(
        namespace=namespace,
        env=dict(cluster.env),
        log_path=cluster.log_dir / f"dask-operator-{namespace}.log",
    )
    try:
        return operator.wait_ready()
    except BaseException:
        operator.stop()
        raise
