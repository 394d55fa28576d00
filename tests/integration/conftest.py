"""Integration fixtures shared by the operator's tests: the Noria operator as a real subprocess.

``operator_factory(namespace, **env)`` starts ``python -m noria --namespace <ns>`` against the
test bed (env from ``cluster.env``), waits for its liveness endpoint, and returns an
``OperatorProcess`` with ``.kill(sig)``, ``.restart()``, ``.log()``, ``.metrics_url`` and
``.metrics()``. Every process it started is stopped at the end of the test.

Default env (override with keyword arguments, e.g. ``NORIA_PROMETHEUS_URL=prometheus.url``):
the store root as pods see it (``file:///var/lib/noria/store``, the PVC ``noria-store``'s mount)
and as the operator process sees it (``NORIA_LOCAL_STORE_ROOT=file://<cluster.store_dir>``), an
unreachable Prometheus unless given, short resync/settle times for tests, and a free port for
the operator's own /metrics. Leader election is on: each test namespace has its own Lease
``noria-operator-<namespace>`` in ``LEASE_NAMESPACE`` (not in the test namespace, where it would
go with the namespace and could not be created again while the namespace terminates), with one
leader identity per namespace unless ``POD_NAME`` is given.

``store_claim(namespace)`` creates the PVC ``noria-store`` that trainer and server pods mount.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from noria_testbed.processes import ProcessExited, free_port, wait_until

START_HEADER = "===== operator start #"  # each start's section of the operator's log begins with it
PORT_ATTEMPTS = 3
LEASE_NAMESPACE = "noria-system"  # where the operators' leader Leases live (as the chart's release namespace)
STORE_CLAIM = """
apiVersion: v1
kind: PersistentVolumeClaim
metadata: {name: noria-store}
spec: {accessModes: [ReadWriteMany], resources: {requests: {storage: 1Gi}}}
"""


class OperatorProcess:
    def __init__(self, cluster, namespace: str, env: dict[str, str], log_path: Path) -> None:  # noqa: ANN001
        self.cluster, self.namespace, self.env, self.log_path = cluster, namespace, env, log_path
        self.process: subprocess.Popen | None = None
        self.starts = 0

    @property
    def metrics_url(self) -> str:
        return f"http://127.0.0.1:{self.env['NORIA_METRICS_PORT']}/metrics"

    def start(self, timeout: float = 60.0, liveness_port: int | None = None,
              attempts: int = PORT_ATTEMPTS) -> OperatorProcess:
        """Start the operator and wait for its liveness endpoint. Ports are free when picked, but not reserved:
        the liveness port is picked while the operator is down, when its own metrics port is free too (CI once
        gave it that port: the operator bound its metrics, then failed on liveness), so that one is never
        taken; and on a busy test bed another process can take a port before the operator binds it (an
        outgoing connection's local port comes from the same ephemeral range). After such a clash it starts
        again on fresh ports, at most ``attempts`` times. ``liveness_port``: the first attempt's, instead of
        a free one."""
        for _ in range(attempts - 1):
            try:
                return self._start_once(timeout, liveness_port or self._liveness_port())
            except ProcessExited:
                if not self.port_clashed():
                    raise
                liveness_port = None
                self.env["NORIA_METRICS_PORT"] = str(free_port())
        return self._start_once(timeout, liveness_port or self._liveness_port())

    def _start_once(self, timeout: float, port: int) -> OperatorProcess:
        self.starts += 1
        with open(self.log_path, "ab") as log_file:
            log_file.write(f"\n{START_HEADER}{self.starts} =====\n".encode())
            self.process = subprocess.Popen(
                [sys.executable, "-m", "noria", "--namespace", self.namespace,
                 "--liveness", f"http://127.0.0.1:{port}/healthz"],
                env=self.env, stdout=log_file, stderr=subprocess.STDOUT, start_new_session=True)

        def live() -> bool:
            assert self.process is not None
            if self.process.poll() is not None:
                raise ProcessExited(f"operator exited: {self.log()[-3000:]}")
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=2) as response:
                return response.status == 200

        wait_until("operator liveness", live, timeout=timeout, on_timeout=lambda: self.log()[-3000:])
        return self

    def _liveness_port(self) -> int:
        metrics = int(self.env["NORIA_METRICS_PORT"])
        while (port := free_port()) == metrics:
            pass
        return port

    def port_clashed(self) -> bool:
        """Whether the latest start's log says a port it was given was taken before it could bind it."""
        return "address already in use" in self.log().rpartition(START_HEADER)[2]

    def kill(self, sig: int = signal.SIGTERM, timeout: float = 20.0) -> None:
        if self.process is None or self.process.poll() is not None:
            return
        os.killpg(self.process.pid, sig)
        try:
            self.process.wait(timeout)
        except subprocess.TimeoutExpired:
            os.killpg(self.process.pid, signal.SIGKILL)
            self.process.wait()

    def restart(self) -> OperatorProcess:
        self.kill()
        return self.start()

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def metrics(self) -> str:
        with urllib.request.urlopen(self.metrics_url, timeout=5) as response:
            return response.read().decode()

    @property
    def pid(self) -> int | None:
        return self.process.pid if self.process else None


@pytest.fixture
def operator_factory(cluster, request) -> Iterator[Callable[..., OperatorProcess]]:  # noqa: ANN001
    started: list[OperatorProcess] = []
    request.node.noria_operators = started  # for the failure report below

    def start(namespace: str, **env: str) -> OperatorProcess:
        if cluster.kubectl("get", "namespace", LEASE_NAMESPACE, check=False).returncode != 0:
            cluster.kubectl("create", "namespace", LEASE_NAMESPACE, check=False)  # a parallel test may win
        full = {
            **cluster.env,
            "PYTHONUNBUFFERED": "1",
            "NORIA_STORE_ROOT": "file:///var/lib/noria/store",
            "NORIA_LOCAL_STORE_ROOT": f"file://{cluster.store_dir}",
            "NORIA_TRAINER_IMAGE": "noria-trainer:test",
            "NORIA_SERVER_IMAGE": "noria-server:test",
            "NORIA_PROMETHEUS_URL": "http://127.0.0.1:9",  # unreachable unless a test passes one
            "NORIA_PROMETHEUS_TIMEOUT": "2",
            "NORIA_METRICS_PORT": str(free_port()),
            "NORIA_TRAINING_RESYNC_SECONDS": "2",
            "NORIA_TRIGGER_SETTLE_SECONDS": "1",
            # Leader identity: one per namespace, as a restarted pod keeps its name, so an operator
            # killed and started again resumes its Lease at once. Give POD_NAME to run two replicas.
            "POD_NAME": f"operator-{namespace}",
            "NORIA_LEADER_NAMESPACE": LEASE_NAMESPACE,  # not a POD_NAMESPACE this machine happens to have
            "NORIA_LEADER_LEASE_NAME": f"noria-operator-{namespace}",
            **{k: str(v) for k, v in env.items()},
        }
        name = request.node.name.replace("/", "_")[:80]
        proc = OperatorProcess(cluster, namespace, full, cluster.log_dir / f"operator-{name}-{len(started)}.log")
        started.append(proc)
        return proc.start()

    yield start
    for proc in started:
        proc.kill()


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):  # noqa: ANN001, ANN201
    outcome = yield
    report = outcome.get_result()
    if report.failed and report.when == "call":
        for proc in getattr(item, "noria_operators", []):
            report.sections.append((f"operator log {proc.log_path.name} (tail)",
                                    "\n".join(proc.log().splitlines()[-80:])))


@pytest.fixture
def store_claim(cluster) -> Callable[[str], None]:  # noqa: ANN001
    def create(namespace: str) -> None:
        cluster.kubectl("apply", "-n", namespace, "-f", "-", input=STORE_CLAIM)

    return create
