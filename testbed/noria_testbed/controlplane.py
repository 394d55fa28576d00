"""A real Kubernetes control plane on loopback ports: etcd, kube-apiserver,
kube-controller-manager and kube-scheduler, started the way controller-runtime's envtest starts
them (flags and order in ``ControlPlane.start`` below; the test bed in testbed/README.md), plus the
two controllers envtest leaves out so that Deployments, Jobs, garbage collection and scheduling
really happen.

Two deliberate departures from a cloud cluster:

* The service ClusterIP range is a loopback range (``127.96.0.0/20`` by default). Nothing here
  implements kube-proxy, so a ClusterIP is not routable anyway; keeping it in 127/8 means code
  that connects to one by mistake talks to this machine, never to a 10.x address on a network.
* etcd runs with ``--unsafe-no-fsync``: its data dir is thrown away with the testbed.
"""

from __future__ import annotations

import base64
import contextlib
import os
import shutil
import ssl
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from noria_testbed.binaries import find_binaries
from noria_testbed.pki import Pki, make_pki
from noria_testbed.processes import ManagedProcess, free_port, port_clash, tail, urlopen, wait_until

DEFAULT_SERVICE_CIDR = "127.96.0.0/20"


@dataclass
class ControlPlane:
    """Start with :meth:`start`, stop with :meth:`stop` (or use it as a context manager)."""

    workdir: Path | None = None
    binaries: Path | None = None
    service_cidr: str = DEFAULT_SERVICE_CIDR
    start_timeout: float = 90.0
    processes: dict[str, ManagedProcess] = field(default_factory=dict)
    kubeconfig: Path = field(init=False)
    log_dir: Path = field(init=False)
    server: str = field(init=False)
    pki: Pki = field(init=False)
    _owns_workdir: bool = field(init=False, default=False)

    # ---- lifecycle -------------------------------------------------------------------------
    def start(self) -> ControlPlane:
        started = time.monotonic()
        if self.workdir is None:
            self.workdir = Path(tempfile.mkdtemp(prefix="noria-testbed-"))
            self._owns_workdir = True
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.log_dir = self.workdir / "logs"
        self.log_dir.mkdir(exist_ok=True)
        self.binaries = self.binaries or find_binaries()
        try:
            self.pki = make_pki(self.workdir / "pki")
            self._retry_on_port_clash("etcd", self._start_etcd)
            self._retry_on_port_clash("kube-apiserver", self._start_apiserver)
            self.kubeconfig = self._write_kubeconfig(self.workdir / "kubeconfig")
            self._start_controller_manager()
            self._start_scheduler()
        except BaseException:
            self.stop()
            raise
        self.startup_seconds = time.monotonic() - started
        return self

    def stop(self) -> None:
        """Stop the components in reverse order of start. Keeps the workdir (logs) for inspection."""
        for name in reversed(list(self.processes)):
            self.processes[name].stop()
        self.processes.clear()

    def remove_workdir(self) -> None:
        if self._owns_workdir and self.workdir is not None:
            shutil.rmtree(self.workdir, ignore_errors=True)

    def __enter__(self) -> ControlPlane:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def log_files(self) -> dict[str, Path]:
        return {name: self.log_dir / f"{name}.log" for name in
                ("etcd", "kube-apiserver", "kube-controller-manager", "kube-scheduler")}

    def check_alive(self) -> None:
        for process in self.processes.values():
            process.check_alive()

    # ---- components --------------------------------------------------------------------------
    def _launch(self, name: str, *args: str) -> ManagedProcess:
        assert self.binaries is not None
        process = ManagedProcess(name, [str(self.binaries / name), *args], self.log_dir / f"{name}.log")
        self.processes[name] = process
        return process

    def _wait(self, name: str, check) -> None:  # type: ignore[no-untyped-def]
        process = self.processes[name]

        def alive_and_ready() -> bool:
            process.check_alive()
            return bool(check())

        try:
            wait_until(f"{name} ready", alive_and_ready, self.start_timeout,
                       on_timeout=lambda: f"last lines of {process.log_path}:\n{tail(process.log_path)}")
        except RuntimeError:
            raise
        except TimeoutError:
            process.check_alive()
            raise

    def _retry_on_port_clash(self, name: str, start: Callable[[], None], attempts: int = 3) -> None:
        """Start a component; if it died because another process took its "free" port in the
        meantime (several test beds start at once on a shared machine), try again with new ports."""
        for attempt in range(attempts):
            try:
                start()
                return
            except RuntimeError:
                process = self.processes.pop(name, None)
                clash = process is not None and port_clash(process.log_path)
                if process is not None:
                    process.stop()
                if not clash or attempt == attempts - 1:
                    raise

    def _start_etcd(self) -> None:
        assert self.workdir is not None
        client, peer = free_port(), free_port()
        self.etcd_url = f"http://127.0.0.1:{client}"
        self._launch(
            "etcd",
            "--name=testbed", f"--data-dir={self.workdir / 'etcd'}",
            f"--listen-client-urls={self.etcd_url}", f"--advertise-client-urls={self.etcd_url}",
            f"--listen-peer-urls=http://127.0.0.1:{peer}",
            f"--initial-advertise-peer-urls=http://127.0.0.1:{peer}",
            f"--initial-cluster=testbed=http://127.0.0.1:{peer}",
            "--unsafe-no-fsync=true", "--log-level=warn",
        )

        def healthy() -> bool:
            with urlopen(f"{self.etcd_url}/health", timeout=2) as response:
                return b'"health":"true"' in response.read()

        self._wait("etcd", healthy)

    def _start_apiserver(self) -> None:
        assert self.workdir is not None
        port = free_port()
        self.server = f"https://127.0.0.1:{port}"
        pki = self.pki
        self._launch(
            "kube-apiserver",
            f"--etcd-servers={self.etcd_url}",
            "--bind-address=127.0.0.1", "--advertise-address=127.0.0.1", f"--secure-port={port}",
            f"--cert-dir={self.workdir / 'apiserver-certs'}",
            f"--tls-cert-file={pki.serving_cert}", f"--tls-private-key-file={pki.serving_key}",
            f"--client-ca-file={pki.ca_cert}",
            "--authorization-mode=RBAC",
            f"--service-cluster-ip-range={self.service_cidr}",
            f"--service-account-issuer={self.server}",
            f"--service-account-key-file={pki.sa_pub}",
            f"--service-account-signing-key-file={pki.sa_key}",
            "--endpoint-reconciler-type=none",
            "--allow-privileged=true",
            # The node agent serves container logs at the node's InternalIP (its Hostname does not resolve).
            "--kubelet-preferred-address-types=InternalIP",
            "--profiling=false",
        )
        context = ssl.create_default_context(cafile=str(pki.ca_cert))

        def ready() -> bool:
            # /readyz is readable without credentials (system:public-info-viewer).
            with urlopen(f"{self.server}/readyz", timeout=2, context=context) as response:
                return response.status == 200

        self._wait("kube-apiserver", ready)

    def _write_kubeconfig(self, path: Path) -> Path:
        def b64(file: Path) -> str:
            return base64.b64encode(file.read_bytes()).decode()

        config = {
            "apiVersion": "v1", "kind": "Config", "current-context": "noria-testbed",
            "clusters": [{"name": "noria-testbed", "cluster": {
                "server": self.server, "certificate-authority-data": b64(self.pki.ca_cert)}}],
            "users": [{"name": "admin", "user": {
                "client-certificate-data": b64(self.pki.admin_cert),
                "client-key-data": b64(self.pki.admin_key)}}],
            "contexts": [{"name": "noria-testbed", "context": {
                "cluster": "noria-testbed", "user": "admin", "namespace": "default"}}],
        }
        path.write_text(yaml.safe_dump(config))
        path.chmod(0o600)
        return path

    def _start_controller_manager(self) -> None:
        self._launch(
            "kube-controller-manager",
            f"--kubeconfig={self.kubeconfig}",
            "--leader-elect=false",
            "--secure-port=0",  # no health endpoint needed; readiness is judged from the API below
            f"--root-ca-file={self.pki.ca_cert}",
            f"--service-account-private-key-file={self.pki.sa_key}",
            f"--service-cluster-ip-range={self.service_cidr}",
            "--controllers=*",
            # Pods here are local processes: a node that stops heartbeating should not have its
            # pods evicted mid-test because the machine was busy for a minute.
            "--node-monitor-grace-period=120s",
        )
        # The controller manager creates the `default` ServiceAccount in every namespace: once it
        # exists in `default`, the service-account and token controllers are running.
        self._wait("kube-controller-manager", lambda: self._exists("/api/v1/namespaces/default/serviceaccounts/default"))

    def _start_scheduler(self) -> None:
        self._launch("kube-scheduler", f"--kubeconfig={self.kubeconfig}", "--leader-elect=false", "--secure-port=0")
        # The scheduler has no endpoint with --secure-port=0; give it a moment to crash on bad flags.
        time.sleep(0.5)
        self.processes["kube-scheduler"].check_alive()

    # ---- tiny admin client (no dependencies, used only during start-up) -----------------------
    def _ssl_context(self) -> ssl.SSLContext:
        context = ssl.create_default_context(cafile=str(self.pki.ca_cert))
        context.load_cert_chain(str(self.pki.admin_cert), str(self.pki.admin_key))
        return context

    def _exists(self, api_path: str) -> bool:
        try:
            with urlopen(f"{self.server}{api_path}", timeout=5, context=self._ssl_context()):
                return True
        except urllib.error.HTTPError as error:
            if error.code == 404:
                return False
            raise

    def env(self) -> dict[str, str]:
        """os.environ plus KUBECONFIG pointing here and kubectl's directory first on PATH."""
        env = dict(os.environ)
        env["KUBECONFIG"] = str(self.kubeconfig)
        with contextlib.suppress(TypeError):
            env["PATH"] = f"{self.binaries}{os.pathsep}{env.get('PATH', '')}"
        return env
