"""Shared fixtures: a real local Kubernetes control plane, Noria's node agent and Prometheus.

Fixture names are a contract other test modules rely on:

* ``cluster`` (session): a :class:`noria_testbed.LocalTestbed` — ``.kubeconfig``, ``.env``,
  ``.store_dir`` (what the PVC ``noria-store`` maps to), ``.kubectl(*args, input=None, check=True)``,
  ``.node_agent.pod_log(namespace, pod)``, ``.log_dir``. CRDs from ``crds/`` are applied and
  Established; ``KUBECONFIG`` is exported for in-process clients (Kopf, lightkube).
* ``prometheus`` (session): ``.url`` of a Prometheus scraping the model servers and routers it finds
  through Kubernetes pod discovery (noria_testbed.prometheus).
* ``namespace`` (function): a fresh ``t-<random>`` namespace with its ``default`` ServiceAccount.

When the binaries can be neither found nor built, tests that need them are skipped locally and
fail under CI (``CI`` set). On a failing test the component logs and the pod logs of the test's
namespace are attached to the report.
"""

from __future__ import annotations

import os
import secrets
import shutil
import signal
import threading
from collections.abc import Iterator

import pytest
from unavailable import unavailable

_ACTIVE: list = []  # the session's LocalTestbed, for the failure report hook


def _interrupt(signum: int, frame: object) -> None:
    raise KeyboardInterrupt(f"signal {signum}")


def pytest_configure(config) -> None:  # noqa: ANN001
    # SIGTERM (a CI time-out, `timeout`, a closed terminal) would end pytest without running
    # fixture teardown; as a KeyboardInterrupt, the test bed is stopped and its workdir handled.
    if threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGTERM, _interrupt)


@pytest.fixture(scope="session")
def cluster(request) -> Iterator:  # noqa: ANN001
    from noria_testbed.binaries import BinariesUnavailable
    from noria_testbed.testbed import LocalTestbed

    testbed = LocalTestbed(keep_workdir=True)
    try:
        testbed.start()
    except BinariesUnavailable as error:
        unavailable(f"control-plane binaries unavailable: {error}")
    previous = os.environ.get("KUBECONFIG")
    os.environ["KUBECONFIG"] = str(testbed.kubeconfig)
    _ACTIVE.append(testbed)
    try:
        yield testbed
    finally:
        _ACTIVE.remove(testbed)
        testbed.stop()
        if request.session.testsfailed:  # keep certs, etcd data and every log for a post-mortem
            print(f"\nnoria testbed kept for inspection: {testbed.workdir}")
        else:
            shutil.rmtree(testbed.workdir, ignore_errors=True)
        if previous is None:
            os.environ.pop("KUBECONFIG", None)
        else:
            os.environ["KUBECONFIG"] = previous


@pytest.fixture(scope="session")
def prometheus(cluster):  # noqa: ANN001, ANN201
    from noria_testbed.binaries import PrometheusUnavailable

    try:
        return cluster.start_prometheus()
    except PrometheusUnavailable as error:
        unavailable(f"Prometheus unavailable: {error}")


@pytest.fixture
def namespace(cluster) -> Iterator[str]:  # noqa: ANN001
    from noria_testbed.processes import wait_until

    name = f"t-{secrets.token_hex(4)}"
    cluster.kubectl("create", "namespace", name)
    # Pods are refused until the controller manager has created the namespace's default ServiceAccount.
    wait_until(f"ServiceAccount default in {name}",
               lambda: cluster.kubectl("get", "serviceaccount", "default", "-n", name, check=False).returncode == 0,
               timeout=30)
    yield name
    cluster.kubectl("delete", "namespace", name, "--wait=false", check=False)


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):  # noqa: ANN001, ANN201
    outcome = yield
    report = outcome.get_result()
    if not report.failed or not _ACTIVE or report.when == "teardown":
        return
    from noria_testbed.processes import tail

    testbed = _ACTIVE[-1]
    dead = testbed.dead_components()
    if dead:
        report.sections.append(("testbed components that exited", "\n".join(dead)))
    for name, path in testbed.log_files().items():
        report.sections.append((f"{name} log (tail)", tail(path, 40)))
    namespace = item.funcargs.get("namespace") if hasattr(item, "funcargs") else None
    if isinstance(namespace, str) and testbed.node_agent is not None:
        pods_dir = testbed.node_agent.root / "pods" / namespace
        for pod_dir in sorted(pods_dir.iterdir()) if pods_dir.exists() else []:
            report.sections.append((f"pod {namespace}/{pod_dir.name} log (tail)",
                                    "\n".join(testbed.node_agent.pod_log(namespace, pod_dir.name).splitlines()[-60:])))
        listing = testbed.kubectl("get", "all", "-n", namespace, "-o", "wide", check=False)
        report.sections.append((f"kubectl get all -n {namespace}", listing.stdout + listing.stderr))
