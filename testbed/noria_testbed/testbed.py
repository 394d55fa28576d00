"""The whole local test bed in one object: control plane, Noria's CRDs, the node agent and
(optionally) Prometheus.

    with LocalTestbed(prometheus=True) as tb:
        tb.kubectl("apply", "-f", "examples/")
        print(tb.kubeconfig, tb.prometheus.url)

Used by the pytest fixtures (tests/conftest.py), ``python -m noria_testbed up`` and the demo.
"""

from __future__ import annotations

import contextlib
import json
import os
import random
import shutil
import signal
import subprocess
import tempfile
import time
import uuid
from pathlib import Path

import yaml

from noria_testbed.binaries import REPO_ROOT, find_binaries
from noria_testbed.controlplane import ControlPlane
from noria_testbed.node_agent import NODE_NAME, RUN_MARKER_ENV
from noria_testbed.processes import (
    ManagedProcess,
    ProcessExited,
    free_port,
    port_clash,
    tail,
    urlopen,
    wait_until,
)


class NodeAgentProcess:
    """The node agent running as a child process (``python -m noria_testbed.node_agent``)."""

    def __init__(self, *, kubeconfig: Path, root: Path, store_dir: Path, log_path: Path, run_id: str,
                 python: str, env: dict[str, str], node_name: str = NODE_NAME,
                 tls: tuple[Path, Path] | None = None, pod_cidr: str = "127.0.0.0/17") -> None:
        self.root, self.store_dir, self.log_path, self.node_name = root, store_dir, log_path, node_name
        port = free_port()
        self.url = f"http://127.0.0.1:{port}"
        self.sd_url = f"{self.url}/sd"
        self.process = ManagedProcess(
            "node-agent",
            [python, "-m", "noria_testbed.node_agent", "--kubeconfig", str(kubeconfig), "--root", str(root),
             "--store-dir", str(store_dir), "--listen", f"127.0.0.1:{port}", "--node-name", node_name,
             "--run-id", run_id, "--pod-cidr", pod_cidr,
             *(["--kubelet-port", str(free_port()), "--tls-cert", str(tls[0]), "--tls-key", str(tls[1])] if tls else [])],
            log_path, env=env)

    def wait_ready(self, timeout: float = 30.0) -> None:
        def ready() -> bool:
            self.process.check_alive()
            with urlopen(f"{self.url}/healthz", timeout=2) as response:
                return response.status == 200

        wait_until("node agent ready", ready, timeout, on_timeout=lambda: tail(self.log_path))

    def pod_dir(self, namespace: str, pod: str) -> Path:
        return self.root / "pods" / namespace / pod

    def pod_log(self, namespace: str, pod: str) -> str:
        """The container logs of a pod (all containers, in name order), or "" when it never ran here."""
        directory = self.pod_dir(namespace, pod)
        logs = sorted(directory.glob("*.log")) if directory.exists() else []
        if len(logs) == 1:
            return logs[0].read_text(errors="replace")
        return "".join(f"==> {p.stem} <==\n{p.read_text(errors='replace')}" for p in logs)

    def targets(self) -> list[dict]:
        with urlopen(self.sd_url, timeout=5) as response:
            return json.loads(response.read())

    def stop(self) -> None:
        self.process.stop(grace=10.0)


class LocalTestbed:
    """Start with :meth:`start` (or ``with``); everything stops in :meth:`stop`, even after errors."""

    def __init__(self, workdir: Path | None = None, *, store_dir: Path | None = None, prometheus: bool = False,
                 apply_crds: bool = True, crds_dir: Path = REPO_ROOT / "crds", keep_workdir: bool = False) -> None:
        """``keep_workdir=False`` removes a temp workdir this object created (certs, etcd data, logs,
        store: ~70 MB) in :meth:`stop`; a given ``workdir`` is never removed."""
        self._owns_workdir = workdir is None
        self.workdir = Path(workdir) if workdir else Path(tempfile.mkdtemp(prefix="noria-testbed-"))
        self.store_dir = Path(store_dir) if store_dir else self.workdir / "store"
        self.log_dir = self.workdir / "logs"
        self.want_prometheus, self.apply_crds, self.crds_dir = prometheus, apply_crds, crds_dir
        self.keep_workdir = keep_workdir
        self.run_id = f"testbed-{uuid.uuid4().hex[:12]}"
        # Several test beds may run on one machine at once (developers, CI): each takes its own
        # 127.B.0.0/16, pods in the lower half, Service ClusterIPs in 127.B.128.0/20, so their
        # processes and service proxies never compete for the same address and port.
        block = free_loopback_block()
        self.pod_cidr, self.service_cidr = f"127.{block}.0.0/17", f"127.{block}.128.0/20"
        self.control_plane = ControlPlane(workdir=self.workdir, service_cidr=self.service_cidr)
        self.node_agent: NodeAgentProcess | None = None
        self.prometheus = None  # a noria_testbed.prometheus.PrometheusProcess once started
        self.s3 = None  # a noria_testbed.s3.SeaweedS3 once started (start_s3: only tests on s3:// need it)
        self.redis = None  # a noria_testbed.redis.RedisServer once started (start_redis: Feast's online store)
        self.timings: dict[str, float] = {}

    # ---- lifecycle ---------------------------------------------------------------------------------
    def start(self) -> LocalTestbed:
        began = time.monotonic()
        try:
            self.binaries = find_binaries()
            self.control_plane.binaries = self.binaries
            self.control_plane.start()
            self.timings["control_plane"] = time.monotonic() - began
            self.kubeconfig = self.control_plane.kubeconfig
            self.env = self.control_plane.env()
            self.store_dir.mkdir(parents=True, exist_ok=True)
            self.node_agent = self._new_node_agent()
            if self.apply_crds:
                self._apply_crds()  # while the agent starts
            for attempt in range(3):
                try:
                    self.node_agent.wait_ready()
                    break
                except ProcessExited:
                    if attempt == 2 or not port_clash(self.node_agent.log_path):
                        raise
                    self.node_agent.stop()
                    self.node_agent = self._new_node_agent()
            self._wait_node_ready()
            self.timings["cluster"] = time.monotonic() - began
            if self.want_prometheus:
                self.start_prometheus()
        except BaseException:
            self.stop()
            raise
        return self

    def _new_node_agent(self) -> NodeAgentProcess:
        return NodeAgentProcess(
            kubeconfig=self.kubeconfig, root=self.workdir / "node", store_dir=self.store_dir,
            log_path=self.log_dir / "node-agent.log", run_id=self.run_id, python=_python(), env=self.env,
            tls=(self.control_plane.pki.serving_cert, self.control_plane.pki.serving_key), pod_cidr=self.pod_cidr)

    def start_prometheus(self):  # noqa: ANN201 - PrometheusProcess; imported lazily (Prometheus may be absent)
        if self.prometheus is None:
            began = time.monotonic()
            for attempt in range(3):
                self.prometheus = self.new_prometheus(self.workdir / "prometheus", self.log_dir / "prometheus.log")
                try:
                    self.prometheus.start()
                    break
                except ProcessExited:
                    self.prometheus.stop()
                    if attempt == 2 or not port_clash(self.prometheus.log_path):
                        self.prometheus = None
                        raise
            self.timings["prometheus"] = time.monotonic() - began
        return self.prometheus

    def start_s3(self):  # noqa: ANN201 - SeaweedS3; imported lazily (built only for the tests that use it)
        """The test bed's S3 server (SeaweedFS), started on first call; ``self.s3`` from then on."""
        from noria_testbed.s3 import SeaweedS3

        if self.s3 is None:
            self.s3 = self._started("s3", SeaweedS3(workdir=self.workdir / "s3", log_path=self.log_dir / "seaweedfs.log"))
        return self.s3

    def start_redis(self):  # noqa: ANN201 - RedisServer; imported lazily (unpacked only for the tests that use it)
        """The test bed's Redis (Debian's redis-server, ``make redis``), password-protected, for Feast's
        online store; started on first call, ``self.redis`` from then on, stopped with the test bed."""
        from noria_testbed.redis import RedisServer

        if self.redis is None:
            self.redis = self._started(
                "redis", RedisServer.with_password(workdir=self.workdir / "redis", log_path=self.log_dir / "redis.log"))
        return self.redis

    def _started(self, name: str, server):  # noqa: ANN001, ANN202 - SeaweedS3 | RedisServer
        """``server`` started (stopped again if starting fails), its start time in ``timings[name]``."""
        began = time.monotonic()
        try:
            server.start()
        except BaseException:
            server.stop()
            raise
        self.timings[name] = time.monotonic() - began
        return server

    def new_prometheus(self, workdir: Path, log_path: Path):  # noqa: ANN201 - PrometheusProcess, not started
        """A Prometheus for this cluster (not started): Kubernetes pod discovery under a read-only
        identity when the binary has it, else the node agent's http_sd (noria_testbed.prometheus)."""
        from noria_testbed.binaries import find_prometheus
        from noria_testbed.prometheus import PrometheusProcess, read_only_identity, write_kubeconfig

        assert self.node_agent is not None
        binaries = find_prometheus()
        kubeconfig = None
        if binaries.kubernetes_sd:
            kubeconfig = self.workdir / "prometheus-kubeconfig"
            if not kubeconfig.exists():
                write_kubeconfig(kubeconfig, admin_kubeconfig=self.kubeconfig, token=read_only_identity(self.kubectl))
        return PrometheusProcess(workdir=workdir, log_path=log_path, sd_url=self.node_agent.sd_url,
                                 kubeconfig=kubeconfig, binaries=binaries)

    def stop(self) -> None:
        """Stop Prometheus, the node agent (which stops its pods), the S3 server, Redis, then the control plane."""
        if self.prometheus is not None:
            self.prometheus.stop()
        if self.node_agent is not None:
            self.node_agent.stop()
        kill_stray_pod_processes(self.run_id)
        if self.s3 is not None:
            self.s3.stop()
        if self.redis is not None:
            self.redis.stop()
        self.control_plane.stop()
        if not self.keep_workdir and self._owns_workdir:
            shutil.rmtree(self.workdir, ignore_errors=True)

    def __enter__(self) -> LocalTestbed:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # ---- helpers ----------------------------------------------------------------------------------
    def kubectl(self, *args: str, input: str | None = None, check: bool = True,  # noqa: A002 - subprocess's name
                timeout: float = 120) -> subprocess.CompletedProcess[str]:
        """Run the built kubectl against this cluster (text mode). ``check`` raises with stderr."""
        result = subprocess.run([str(self.binaries / "kubectl"), *args], input=input, capture_output=True,
                                text=True, env=self.env, timeout=timeout)
        if check and result.returncode != 0:
            raise RuntimeError(f"kubectl {' '.join(args)} failed (exit {result.returncode}):\n{result.stderr}")
        return result

    def dead_components(self) -> list[str]:
        """'name exited with code N' for every testbed process that is no longer running."""
        processes = list(self.control_plane.processes.values())
        processes += [p.process for p in (self.node_agent, self.prometheus, self.s3, self.redis)
                      if p is not None and p.process is not None]
        return [f"{p.name} exited with code {p.popen.returncode}" for p in processes if not p.alive()]

    def log_files(self) -> dict[str, Path]:
        files = dict(self.control_plane.log_files())
        files["node-agent"] = self.log_dir / "node-agent.log"
        if self.prometheus is not None:
            files["prometheus"] = self.log_dir / "prometheus.log"
        if self.s3 is not None:
            files["seaweedfs"] = self.s3.log_path
        if self.redis is not None:
            files["redis"] = self.redis.log_path
        return files

    def _apply_crds(self) -> None:
        crds = sorted(self.crds_dir.glob("*.yaml")) if self.crds_dir.is_dir() else []
        if not crds:
            return
        for crd in crds:
            self.kubectl("apply", "--server-side", "-f", str(crd))
        self.kubectl("wait", "--for=condition=Established", "--timeout=60s",
                     *[arg for crd in crds for arg in ("-f", str(crd))])
        # Established comes a moment before the resource's storage is ready; until then lists
        # answer 429 "storage is (re)initializing". Wait for a list to succeed for each kind.
        for crd in crds:
            for document in yaml.safe_load_all(crd.read_text()):
                if not document or document.get("kind") != "CustomResourceDefinition":
                    continue
                resource = f"{document['spec']['names']['plural']}.{document['spec']['group']}"
                wait_until(f"{resource} listable", lambda r=resource: self.kubectl(
                    "get", r, "--all-namespaces", "--request-timeout=5s", check=False).returncode == 0, timeout=60)

    def _wait_node_ready(self) -> None:
        def ready() -> bool:
            out = self.kubectl("get", "node", NODE_NAME, "-o",
                               "jsonpath={.status.conditions[?(@.type=='Ready')].status}|{.spec.taints}",
                               check=False).stdout
            return out == "True|"

        wait_until(f"node {NODE_NAME} Ready without taints", ready, 60,
                   on_timeout=lambda: self.kubectl("get", "node", "-o", "yaml", check=False).stdout)


def free_loopback_block() -> int:
    """A B in 1..254 such that nothing listens on 127.B.x.y right now (random, so that two test
    beds starting at the same moment rarely pick the same one)."""
    listening = _listening_loopback_blocks()
    candidates = [b for b in range(1, 255) if b not in listening]
    return random.choice(candidates or list(range(1, 255)))


def _listening_loopback_blocks() -> set[int]:
    blocks: set[int] = set()
    try:
        lines = Path("/proc/net/tcp").read_text().splitlines()[1:]
    except OSError:
        return blocks
    for line in lines:
        fields = line.split()
        address, state = fields[1].split(":")[0], fields[3]
        if state == "0A":  # LISTEN; the address is little-endian hex, so 127.B.x.y reads yyxxBB7F
            octets = bytes.fromhex(address)[::-1]
            if octets[0] == 127:
                blocks.add(octets[1])
    return blocks


def _python() -> str:
    import sys

    return sys.executable


def kill_stray_pod_processes(run_id: str) -> int:
    """SIGKILL every process whose environment carries this run's marker (a pod the agent could
    not stop, e.g. because the agent itself was killed). Returns how many were found."""
    try:
        import psutil
    except ImportError:
        return 0
    found = 0
    for process in psutil.process_iter(["pid"]):
        with contextlib.suppress(psutil.Error, OSError):
            if process.environ().get(RUN_MARKER_ENV) == run_id:
                found += 1
                os.kill(process.pid, signal.SIGKILL)
    return found
