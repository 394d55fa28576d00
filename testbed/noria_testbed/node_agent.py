"""Noria's node agent: one Kubernetes Node whose pods run as local processes.

It takes the place of a kubelet (and of kwok) on a machine without a container runtime, so
that the trainer's Jobs and the model server's Deployments run the repo's real code:

* registers the Node ``noria-local`` (Ready; cpu 64, memory 256Gi, pods 500), renews its Lease
  in ``kube-node-lease`` and refreshes the Ready condition's heartbeat;
* watches the pods bound to it and runs each container's ``command`` + ``args`` as a local
  process in its own process group. ``python``/``python3`` as the first word becomes this
  interpreter (``sys.executable``), so ``python -m noria_trainer ...`` runs the repo code. The image
  is ignored. Env: values with ``$(VAR)`` expansion, fieldRef (name, namespace, uid, labels,
  annotations, status.podIP, ...), configMapKeyRef, secretKeyRef, envFrom;
* gives each pod its own loopback address from ``--pod-cidr`` (a block of 127/8, lowest free
  first, reused after the pod is gone), written as ``status.podIP``; processes must bind to it
  (e.g. via a fieldRef env var);
* materialises volumes as local directories: configMap (kept up to date from a watch), secret,
  emptyDir, downwardAPI, hostPath, persistentVolumeClaim (claim ``noria-store`` is the testbed's
  store dir, other claims get a directory under the agent's root; the agent also creates a
  pre-bound hostPath PersistentVolume for every pending claim so the scheduler can place pods);
  then applies the path rewriting rule of :mod:`noria_testbed.podspec` to command, args, env and
  workingDir;
* writes pod status as the kubelet does: Pending → Running (started, ready from the
  readinessProbe: httpGet, tcpSocket or exec; no probe means ready once started; a failing
  livenessProbe restarts the container) → Succeeded or
  Failed with exit code and ``terminated.message`` from the (rewritten) termination-message file,
  FallbackToLogsOnError honoured; restartPolicy Always/OnFailure restarts with exponential backoff;
* on deletion sends SIGTERM to the process group, SIGKILL after terminationGracePeriodSeconds
  (capped at GRACE_CAP seconds), then removes the pod (gracePeriodSeconds=0);
* serves Prometheus ``http_sd_configs`` targets at ``/sd`` (Debian's Prometheus has no
  kubernetes_sd), and ``/healthz``.

Not implemented: startup probes, service-account token volumes (Noria's pods set
automountServiceAccountToken: false), resource limits, ``kubectl logs``/``exec`` (container
logs are files under ``<root>/pods/<namespace>/<pod>/<container>.log``), EndpointSlices (the
apiserver refuses loopback endpoint addresses).

Run it as ``python -m noria_testbed.node_agent --kubeconfig ... --root ... --store-dir ...``.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import contextlib
import datetime as dt
import ipaddress
import logging
import os
import re
import shutil
import signal
import ssl
import sys
import time
from pathlib import Path
from typing import Any

import httpx
from aiohttp import web

from noria_testbed.kubeapi import ApiError, KubeApi, inform
from noria_testbed.podspec import (
    DEFAULT_TERMINATION_MESSAGE_PATH,
    ContainerState,
    PathRewriter,
    PodSpecError,
    Sources,
    container_env,
    expand,
    field_ref,
    pod_status,
    python_aware_argv,
    scrape_targets,
    should_restart,
    termination_message,
)
from noria_testbed.processes import detach_and_die_with_parent, tail

log = logging.getLogger("noria_testbed.node_agent")

Json = dict[str, Any]
NODE_NAME = "noria-local"
HOST_IP = "127.0.0.1"
GRACE_CAP = 5.0  # seconds: terminationGracePeriodSeconds is capped so tests do not wait 30 s per pod
STORE_CLAIM = "noria-store"
RUN_MARKER_ENV = "NORIA_TESTBED_RUN"  # set on every pod process so teardown can find strays
# Host environment a container may see: enough to run Python and numeric libraries the way this
# machine needs them (e.g. OPENBLAS_CORETYPE), nothing that leaks the test's own configuration.
INHERITED_ENV = ("PATH", "HOME", "LANG", "LC_ALL", "TZ", "TMPDIR", "SSL_CERT_FILE", "SSL_CERT_DIR")
INHERITED_PREFIXES = ("OPENBLAS_", "OMP_", "MKL_")
_LOG_HEADER = re.compile(rb"^--- \S+ starting ")  # the agent's own line before each (re)start


def now() -> str:
    return dt.datetime.now(dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def micro_now() -> str:
    return dt.datetime.now(dt.UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


class PodAddresses:
    """Pod addresses from a loopback block (e.g. 127.23.0.0/17); the lowest free one is handed
    out, so addresses are reused. Addresses ending in .0, .1 or .255 are skipped."""

    def __init__(self, cidr: str = "127.0.0.0/17") -> None:
        network = ipaddress.IPv4Network(cidr)
        if not network.is_loopback:
            raise ValueError(f"pod CIDR {cidr} is not in 127.0.0.0/8: pods must stay on this machine")
        self._used: set[int] = set()
        self._first = int(network.network_address) + 2
        self._last = int(network.broadcast_address) - 1
        self.cidr = cidr

    def allocate(self) -> str:
        for value in range(self._first, self._last + 1):
            if value not in self._used and value & 0xFF not in (0, 1, 255):
                self._used.add(value)
                return str(ipaddress.IPv4Address(value))
        raise RuntimeError(f"no free pod address left in {self.cidr}")

    def release(self, address: str) -> None:
        self._used.discard(int(ipaddress.IPv4Address(address)))


class ContainerRunner:
    """One container: its process, restarts and readiness probe. Reports through ``worker.notify``."""

    def __init__(self, worker: PodWorker, spec: Json, launch: Launch, state: ContainerState) -> None:
        self.worker, self.spec, self.launch, self.state = worker, spec, launch, state
        self.process: asyncio.subprocess.Process | None = None
        self.task: asyncio.Task[None] | None = None

    def start(self, restart_policy: str) -> None:
        self.task = asyncio.create_task(self.supervise(restart_policy), name=f"container {self.state.name}")

    async def run_once(self) -> int:
        """Start the process, wait for it, record its termination. Returns the exit code."""
        state, launch = self.state, self.launch
        launch.termination_file.parent.mkdir(parents=True, exist_ok=True)
        launch.termination_file.write_text("")
        launch.log_file.parent.mkdir(parents=True, exist_ok=True)
        started = now()
        with open(launch.log_file, "ab") as log_handle:
            command_line = " ".join(launch.argv).replace("\n", "\\n")  # the header stays one line
            log_handle.write(f"--- {started} starting {command_line}\n".encode())
            log_handle.flush()
            try:
                self.process = await asyncio.create_subprocess_exec(
                    *launch.argv, env=launch.env, cwd=launch.cwd, stdin=asyncio.subprocess.DEVNULL,
                    stdout=log_handle, stderr=asyncio.subprocess.STDOUT, preexec_fn=detach_and_die_with_parent)
            except OSError as error:
                state.state, state.reason, state.exit_code = "terminated", "StartError", 128
                state.message, state.started_at, state.finished_at = str(error), started, now()
                state.pid = None
                self.worker.notify()
                self.worker.event("Failed", f"Error: cannot start container {state.name}: {error}", warning=True)
                return 128
        state.state, state.reason, state.message = "running", "", ""
        state.started_at, state.pid, state.exit_code = started, self.process.pid, None
        self.worker.notify()
        self.worker.event("Started", f"Started container {state.name} (pid {self.process.pid})")
        probes = [asyncio.create_task(self.probe_readiness(), name=f"readiness {state.name}"),
                  asyncio.create_task(self.probe_liveness(), name=f"liveness {state.name}")]
        try:
            code = await self.process.wait()
        finally:
            for probe in probes:
                probe.cancel()
            await asyncio.gather(*probes, return_exceptions=True)
        exit_code = code if code >= 0 else 128 - code  # killed by signal N → 128+N, as runtimes report
        try:
            file_text = launch.termination_file.read_text(errors="replace")
        except OSError:
            file_text = ""
        policy = self.spec.get("terminationMessagePolicy", "File")
        state.message = termination_message(file_text, policy, exit_code, tail(launch.log_file, 80))
        state.state, state.exit_code, state.finished_at, state.ready = "terminated", exit_code, now(), False
        state.reason = "Completed" if exit_code == 0 else "Error"
        self.worker.notify()
        return exit_code

    async def supervise(self, restart_policy: str) -> None:
        backoff = 1.0
        while True:
            began = time.monotonic()
            exit_code = await self.run_once()
            if not should_restart(restart_policy, exit_code) or self.worker.terminating:
                self.state.will_restart = False
                self.worker.notify()
                return
            # Kubelet-style CrashLoopBackOff: 1s, 2s, 4s ... 30s; reset after a long healthy run.
            if time.monotonic() - began > 60:
                backoff = 1.0
            self.state.will_restart = True
            self.state.last_terminated = self.state.status()["state"]["terminated"]
            self.state.state, self.state.reason = "waiting", "CrashLoopBackOff"
            self.state.message = f"back-off {backoff:.0f}s restarting failed container {self.state.name}"
            self.worker.notify()
            self.worker.event("BackOff", f"Back-off restarting failed container {self.state.name} "
                                         f"(exit code {exit_code})", warning=True)
            await asyncio.sleep(backoff)
            backoff = min(backoff * 2, 30.0)
            self.state.restart_count += 1

    async def probe_readiness(self) -> None:
        probe = self.spec.get("readinessProbe")
        if not probe or not any(k in probe for k in ("httpGet", "tcpSocket", "exec")):
            self.state.ready = True
            self.worker.notify()
            return
        await asyncio.sleep(probe.get("initialDelaySeconds", 0))
        period = max(1, probe.get("periodSeconds", 10))
        successes_needed, failures_allowed = probe.get("successThreshold", 1), probe.get("failureThreshold", 3)
        successes = failures = 0
        while True:
            ok = await self.probe_once(probe)
            successes, failures = (successes + 1, 0) if ok else (0, failures + 1)
            if ok and not self.state.ready and successes >= successes_needed:
                self.state.ready = True
                self.worker.notify()
            elif not ok and self.state.ready and failures >= failures_allowed:
                self.state.ready = False
                self.worker.notify()
                self.worker.event("Unhealthy", f"Readiness probe failed {failures} times", warning=True)
            await asyncio.sleep(period)

    async def probe_liveness(self) -> None:
        """Kill the container after ``failureThreshold`` failed liveness probes; the restart
        policy then decides, as with the kubelet."""
        probe = self.spec.get("livenessProbe")
        if not probe or not any(k in probe for k in ("httpGet", "tcpSocket", "exec")):
            return
        await asyncio.sleep(probe.get("initialDelaySeconds", 0))
        period, allowed = max(1, probe.get("periodSeconds", 10)), probe.get("failureThreshold", 3)
        failures = 0
        while True:
            failures = 0 if await self.probe_once(probe) else failures + 1
            if failures >= allowed:
                self.worker.event("Unhealthy", f"Liveness probe failed {failures} times; container "
                                               f"{self.state.name} will be restarted", warning=True)
                self.signal(signal.SIGTERM)
                assert self.process is not None
                try:
                    await asyncio.wait_for(self.process.wait(), self.worker.grace())
                except TimeoutError:
                    self.signal(signal.SIGKILL)
                return
            await asyncio.sleep(period)

    def _port(self, port: int | str) -> int:
        if isinstance(port, int) or str(port).isdigit():
            return int(port)
        for declared in self.spec.get("ports") or []:
            if declared.get("name") == port:
                return int(declared["containerPort"])
        raise PodSpecError(f"probe port {port!r} is not a declared container port")

    async def probe_once(self, probe: Json) -> bool:
        timeout = float(probe.get("timeoutSeconds", 1))
        try:
            if "httpGet" in probe:
                get = probe["httpGet"]
                host = get.get("host") or self.worker.ip
                scheme = get.get("scheme", "HTTP").lower()
                url = f"{scheme}://{host}:{self._port(get['port'])}{get.get('path', '/')}"
                headers = {h["name"]: h["value"] for h in get.get("httpHeaders") or []}
                response = await self.worker.agent.http.get(url, headers=headers, timeout=timeout)
                return 200 <= response.status_code < 400
            if "tcpSocket" in probe:
                sock = probe["tcpSocket"]
                host = sock.get("host") or self.worker.ip
                _, writer = await asyncio.wait_for(asyncio.open_connection(host, self._port(sock["port"])), timeout)
                writer.close()
                return True
            command = [self.launch.rewrite(part) for part in probe["exec"].get("command", [])]
            process = await asyncio.create_subprocess_exec(
                *python_aware_argv(command, []), env=self.launch.env, cwd=self.launch.cwd,
                stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.DEVNULL)
            try:
                return await asyncio.wait_for(process.wait(), timeout) == 0
            except TimeoutError:
                process.kill()
                await process.wait()
                return False
        except (httpx.HTTPError, OSError, TimeoutError, PodSpecError):
            return False

    def signal(self, signum: int) -> None:
        if self.process is not None and self.process.returncode is None:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(self.process.pid, signum)

    async def stop(self, grace: float) -> None:
        """SIGTERM the process group, SIGKILL after ``grace`` seconds, and end supervision."""
        if self.process is not None and self.process.returncode is None:
            self.worker.event("Killing", f"Stopping container {self.state.name} (grace {grace:.0f}s)")
        self.signal(signal.SIGTERM)
        if self.process is not None and self.process.returncode is None:
            try:
                await asyncio.wait_for(self.process.wait(), grace)
            except TimeoutError:
                pass
        self.signal(signal.SIGKILL)
        if self.process is not None:
            # The leader is gone; children that ignored SIGTERM may still hold the group.
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(self.process.pid, signal.SIGKILL)
            await self.process.wait()
        if self.task is not None and not self.task.done():
            self.task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self.task


class Launch:
    """How one container runs here: argv, env, cwd, log and termination-message files."""

    def __init__(self, argv: list[str], env: dict[str, str], cwd: Path, log_file: Path, termination_file: Path,
                 rewrite: PathRewriter) -> None:
        self.argv, self.env, self.cwd = argv, env, cwd
        self.log_file, self.termination_file, self.rewrite = log_file, termination_file, rewrite


class PodWorker:
    """Everything the agent does for one pod, in one task: set up, run, report, tear down."""

    def __init__(self, agent: NodeAgent, pod: Json) -> None:
        self.agent, self.pod = agent, pod
        meta = pod["metadata"]
        self.uid, self.namespace, self.name = meta["uid"], meta["namespace"], meta["name"]
        self.dir = agent.root / "pods" / self.namespace / self.name
        self.ip = ""
        self.changed = asyncio.Event()
        self.removed_from_api = False
        self.terminating = False
        self.runners: list[ContainerRunner] = []  # those with a process to stop
        spec = pod["spec"]
        has_init = bool(spec.get("initContainers"))
        self.init_states = [self.state_for(c, "PodInitializing") for c in spec.get("initContainers") or []]
        self.main_states = [self.state_for(c, "PodInitializing" if has_init else "ContainerCreating")
                            for c in spec["containers"]]
        self.init_done, self.init_failed = not has_init, False
        self.start_time = now()
        self.config_map_volumes: dict[str, tuple[str, Json]] = {}  # volume name → (ConfigMap name, volume)
        self.volume_dirs: dict[str, Path] = {}
        self.content_rewrite = PathRewriter({})
        self.last_status: Json | None = None
        self.transitions: dict[str, tuple[str, str]] = {}
        self.phase = "Pending"
        self.task = asyncio.create_task(self.run(), name=f"pod {self.namespace}/{self.name}")

    # ---- events from the agent --------------------------------------------------------------------
    def update(self, pod: Json) -> None:
        self.pod = pod
        self.changed.set()

    def removed(self) -> None:
        self.removed_from_api = True
        self.changed.set()

    def notify(self) -> None:
        self.changed.set()

    def event(self, reason: str, message: str, *, warning: bool = False) -> None:
        self.agent.event(self.pod, reason, message, warning=warning)

    @property
    def deletion_requested(self) -> bool:
        return self.removed_from_api or bool(self.pod["metadata"].get("deletionTimestamp"))

    # ---- the pod's life ------------------------------------------------------------------------
    async def run(self) -> None:
        try:
            await self._run()
        except asyncio.CancelledError:
            raise
        except Exception:
            log.exception("pod %s/%s: node agent error", self.namespace, self.name)
        finally:
            await self.stop_containers(0.5)
            self.agent.forget(self)

    async def _run(self) -> None:
        self.ip = self.agent.addresses.allocate()
        spec = self.pod["spec"]
        restart_policy = spec.get("restartPolicy", "Always")
        launches = await self.prepare_until_ready()
        if launches is None:  # deleted while waiting for a ConfigMap or Secret
            await self.finish_deletion()
            return
        init_launches, main_launches = launches

        init_ok = await self.run_init_containers(init_launches, restart_policy)
        if init_ok is None:
            await self.finish_deletion()
            return
        self.init_failed, self.init_done = not init_ok, init_ok
        if init_ok:
            self.main_states = [self.state_for(c) for c in spec["containers"]]
            for container, launch, state in zip(spec["containers"], main_launches, self.main_states, strict=True):
                runner = ContainerRunner(self, container, launch, state)
                self.runners.append(runner)
                runner.start(restart_policy)

        while True:
            await self.report()
            if self.deletion_requested:
                await self.finish_deletion()
                return
            await self.changed.wait()
            self.changed.clear()

    def state_for(self, container: Json, reason: str = "ContainerCreating") -> ContainerState:
        return ContainerState(name=container["name"], image=container.get("image", ""), reason=reason)

    async def prepare_until_ready(self) -> tuple[list[Launch], list[Launch]] | None:
        """Build the launches; while a ConfigMap/Secret is missing report CreateContainerConfigError
        and retry, as the kubelet does."""
        spec = self.pod["spec"]
        while True:
            try:
                return await self.prepare()
            except PodSpecError as error:
                log.info("pod %s/%s: %s", self.namespace, self.name, error)
                if not self.main_states or self.main_states[0].message != str(error):
                    self.event("Failed", f"Error: {error}", warning=True)
                self.main_states = [ContainerState(name=c["name"], image=c.get("image", ""),
                                                   reason="CreateContainerConfigError", message=str(error))
                                    for c in spec["containers"]]
                await self.report()
                if self.deletion_requested:
                    return None
                self.changed.clear()
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self.changed.wait(), 2.0)
                if self.deletion_requested:
                    return None

    async def prepare(self) -> tuple[list[Launch], list[Launch]]:
        spec = self.pod["spec"]
        sources = await self.agent.sources_for(self.pod)
        self.volume_dirs = await self.materialise_volumes(sources)
        init = [self.launch_for(c, sources) for c in spec.get("initContainers") or []]
        main = [self.launch_for(c, sources) for c in spec["containers"]]
        return init, main

    async def materialise_volumes(self, sources: Sources) -> dict[str, Path]:
        volumes_root = self.dir / "volumes"
        shutil.rmtree(volumes_root, ignore_errors=True)  # a pod re-created with the same name starts clean
        volumes_root.mkdir(parents=True)
        dirs: dict[str, Path] = {}
        config_map_files: list[tuple[Path, dict[str, str], list[Json] | None]] = []
        for volume in self.pod["spec"].get("volumes") or []:
            name = volume["name"]
            local = volumes_root / name
            if "persistentVolumeClaim" in volume:
                local = self.agent.claim_dir(self.namespace, volume["persistentVolumeClaim"]["claimName"])
                local.mkdir(parents=True, exist_ok=True)
            elif "hostPath" in volume:
                local = Path(volume["hostPath"]["path"])
                if volume["hostPath"].get("type", "") in ("", "DirectoryOrCreate"):
                    local.mkdir(parents=True, exist_ok=True)
            elif "configMap" in volume:
                cm_name = volume["configMap"]["name"]
                data = sources.config_maps.get(cm_name)
                if data is None and not volume["configMap"].get("optional"):
                    raise PodSpecError(f"volume {name!r}: ConfigMap {cm_name!r} not found")
                # Written after the loop: its contents are rewritten with every volume's local dir.
                config_map_files.append((local, data or {}, volume["configMap"].get("items")))
                self.config_map_volumes[name] = (cm_name, volume["configMap"])
            elif "secret" in volume:
                secret_name = volume["secret"]["secretName"]
                data = sources.secrets.get(secret_name)
                if data is None and not volume["secret"].get("optional"):
                    raise PodSpecError(f"volume {name!r}: Secret {secret_name!r} not found")
                write_projection(local, data or {}, volume["secret"].get("items"))
            elif "downwardAPI" in volume:
                files = {item["path"]: field_ref(self.pod, item["fieldRef"]["fieldPath"], self.ip)
                         for item in volume["downwardAPI"].get("items", []) if "fieldRef" in item}
                write_projection(local, files, None)
            elif "projected" in volume:
                local.mkdir(parents=True, exist_ok=True)
                for source in volume["projected"].get("sources", []):
                    if "configMap" in source:
                        data = sources.config_maps.get(source["configMap"]["name"]) or {}
                        write_projection(local, data, source["configMap"].get("items"), clean=False)
            else:  # emptyDir and anything the agent does not model: a fresh directory
                local.mkdir(parents=True, exist_ok=True)
            dirs[name] = local
        self.content_rewrite = self.mounts_rewriter(dirs)
        for local, data, items in config_map_files:
            write_projection(local, {k: self.content_rewrite(v) for k, v in data.items()}, items)
        return dirs

    def mounts_rewriter(self, dirs: dict[str, Path]) -> PathRewriter:
        """Mount paths of all the pod's containers -> local dirs. Applied to configMap file contents
        too: a config file naming a path under a mount (a run spec's file:///var/lib/noria/store/...)
        must name the local directory the process really sees."""
        mounts: dict[str, str] = {}
        for container in (self.pod["spec"].get("initContainers") or []) + self.pod["spec"]["containers"]:
            for mount in container.get("volumeMounts") or []:
                if mount["name"] in dirs:
                    local = dirs[mount["name"]] / mount["subPath"] if mount.get("subPath") else dirs[mount["name"]]
                    mounts.setdefault(mount["mountPath"], str(local))
        return PathRewriter(mounts)

    def refresh_config_map(self, cm_name: str, data: dict[str, str]) -> None:
        for volume_name, (name, volume) in self.config_map_volumes.items():
            if name == cm_name and volume_name in self.volume_dirs:
                write_projection(self.volume_dirs[volume_name], {k: self.content_rewrite(v) for k, v in data.items()},
                                 volume.get("items"))

    def launch_for(self, container: Json, sources: Sources) -> Launch:
        cname = container["name"]
        mounts: dict[str, str] = {}
        for mount in container.get("volumeMounts") or []:
            if mount["name"] not in self.volume_dirs:
                raise PodSpecError(f"container {cname!r} mounts unknown volume {mount['name']!r}")
            local = self.volume_dirs[mount["name"]]
            if mount.get("subPath"):
                local = local / mount["subPath"]
                if not local.exists():  # the kubelet creates a missing subPath as a directory
                    local.mkdir(parents=True, exist_ok=True)
            mounts[mount["mountPath"]] = str(local)
        termination_file = self.dir / "containers" / cname / "termination-log"
        mounts[container.get("terminationMessagePath") or DEFAULT_TERMINATION_MESSAGE_PATH] = str(termination_file)
        rewrite = PathRewriter(mounts)

        container_vars = dict(sources.service_env) if self.pod["spec"].get("enableServiceLinks", True) else {}
        container_vars.update(container_env(self.pod, container, self.ip, sources))
        # Expand with the container's own (unrewritten) values, then rewrite each string exactly
        # once: a local path may itself start with a mount path (the testbed lives under /tmp).
        command = [rewrite(expand(part, container_vars)) for part in container.get("command") or []]
        args = [rewrite(expand(part, container_vars)) for part in container.get("args") or []]
        env_vars = {k: rewrite(v) for k, v in container_vars.items()}
        if "/tmp" in mounts and "TMPDIR" not in env_vars:
            env_vars["TMPDIR"] = mounts["/tmp"]  # tempfile then uses the pod's /tmp volume
        argv = python_aware_argv(command, args, self.agent.python)
        cwd = Path(rewrite(container["workingDir"])) if container.get("workingDir") else self.dir / "containers" / cname
        cwd.mkdir(parents=True, exist_ok=True)

        env = {k: v for k, v in os.environ.items() if k in INHERITED_ENV or k.startswith(INHERITED_PREFIXES)}
        venv_bin = str(Path(self.agent.python).parent)
        env["PATH"] = f"{venv_bin}{os.pathsep}{env.get('PATH', '/usr/local/bin:/usr/bin:/bin')}"
        env.update({"HOSTNAME": self.name, "PYTHONUNBUFFERED": "1", RUN_MARKER_ENV: self.agent.run_id})
        if self.pod["spec"].get("automountServiceAccountToken", True) is not False and self.agent.kubeconfig:
            # Stand-in for a mounted service-account token: clients that honour KUBECONFIG (lightkube,
            # kubectl) reach the API server; pods that opt out of a token get no credentials at all.
            env["KUBECONFIG"] = str(self.agent.kubeconfig)
        env.update(env_vars)
        return Launch(argv, env, cwd, self.dir / f"{cname}.log", termination_file, rewrite)

    async def run_init_containers(self, launches: list[Launch], restart_policy: str) -> bool | None:
        """Run init containers in order. True: all succeeded; False: one failed for good; None: deleted."""
        for container, launch, state in zip(self.pod["spec"].get("initContainers") or [], launches,
                                            self.init_states, strict=True):
            runner = ContainerRunner(self, container, launch, state)
            self.runners = [runner]
            backoff = 1.0
            while True:
                await self.report()
                waiter = asyncio.create_task(runner.run_once())
                while not waiter.done():
                    self.changed.clear()
                    changed = asyncio.create_task(self.changed.wait())
                    await asyncio.wait({waiter, changed}, return_when=asyncio.FIRST_COMPLETED)
                    changed.cancel()
                    if self.deletion_requested:
                        self.terminating = True
                        await runner.stop(self.grace())
                        waiter.cancel()
                        with contextlib.suppress(asyncio.CancelledError):
                            await waiter
                        return None
                if waiter.result() == 0:
                    state.ready = False
                    break
                if restart_policy == "Never":
                    self.runners = []
                    return False
                await asyncio.sleep(backoff)
                backoff = min(backoff * 2, 30.0)
                state.restart_count += 1
        self.runners = []
        return True

    def grace(self) -> float:
        meta_grace = self.pod["metadata"].get("deletionGracePeriodSeconds")
        spec_grace = self.pod["spec"].get("terminationGracePeriodSeconds", 30)
        grace = meta_grace if meta_grace is not None else spec_grace
        return min(float(grace), GRACE_CAP)

    async def stop_containers(self, grace: float) -> None:
        self.terminating = True
        await asyncio.gather(*(runner.stop(grace) for runner in self.runners))

    async def finish_deletion(self) -> None:
        """Stop the processes, then let the apiserver drop the object (gracePeriodSeconds=0)."""
        await self.stop_containers(self.grace())
        if self.removed_from_api:
            return
        body = {"apiVersion": "v1", "kind": "DeleteOptions", "gracePeriodSeconds": 0,
                "preconditions": {"uid": self.uid}}
        try:
            await self.agent.api.delete(f"/api/v1/namespaces/{self.namespace}/pods/{self.name}", body)
        except ApiError as error:
            if error.status != 409:  # 409: a new pod with the same name already replaced ours
                raise
        log.info("pod %s/%s: deleted", self.namespace, self.name)

    # ---- status ----------------------------------------------------------------------------------
    def current_status(self) -> Json:
        status = pod_status(self.main_states, pod_ip=self.ip, host_ip=HOST_IP, start_time=self.start_time,
                            init_done=self.init_done, init_failed=self.init_failed,
                            init_containers=self.init_states or None)
        for condition in status["conditions"]:
            previous = self.transitions.get(condition["type"])
            if previous is None or previous[0] != condition["status"]:
                self.transitions[condition["type"]] = (condition["status"], now())
            condition["lastTransitionTime"] = self.transitions[condition["type"]][1]
        return status

    async def report(self) -> None:
        """Patch the status subresource when it changed since the last write."""
        if self.removed_from_api:
            return
        status = self.current_status()
        self.phase = status["phase"]
        if status == self.last_status:
            return
        try:
            await self.agent.api.patch(f"/api/v1/namespaces/{self.namespace}/pods/{self.name}/status",
                                       {"metadata": {"uid": self.uid}, "status": status}, strategic=True)
            self.last_status = status
        except ApiError as error:
            if error.status in (404, 409):
                self.removed()
            else:
                log.warning("pod %s/%s: status update failed: %s", self.namespace, self.name, error)

    def serving(self) -> bool:
        """Running, every container ready, not being deleted: what an EndpointSlice would list as ready."""
        return (self.phase == "Running" and not self.deletion_requested and bool(self.ip)
                and bool(self.runners) and all(r.state.ready for r in self.runners))

    def running_targets(self) -> list[Json]:
        if self.phase != "Running" or self.deletion_requested or not self.ip:
            return []
        return scrape_targets(self.pod, self.ip)


def write_projection(directory: Path, data: dict[str, str], items: list[Json] | None, *, clean: bool = True) -> None:
    """Write keys as files (all keys, or ``items`` key→path), each atomically via rename."""
    directory.mkdir(parents=True, exist_ok=True)
    wanted = {item["path"]: data[item["key"]] for item in items if item["key"] in data} if items else dict(data)
    if clean:
        for existing in directory.rglob("*"):
            if existing.is_file() and str(existing.relative_to(directory)) not in wanted:
                existing.unlink()
    for relative, content in wanted.items():
        target = directory / relative
        target.parent.mkdir(parents=True, exist_ok=True)
        temporary = target.with_name(f".{target.name}.tmp")
        temporary.write_text(content)
        temporary.replace(target)


class ServiceProxy:
    """kube-proxy in miniature: listens on each Service's ClusterIP:port (a loopback address in
    the testbed's service range) and forwards every TCP connection to a ready pod selected by the
    Service, round-robin. The apiserver refuses loopback addresses in EndpointSlices, so the
    endpoints come straight from the agent's own pods instead."""

    def __init__(self, agent: NodeAgent) -> None:
        self.agent = agent
        self.services: dict[str, Json] = {}  # uid → latest Service
        self.servers: dict[str, list[asyncio.AbstractServer]] = {}
        self.listening: dict[str, tuple] = {}  # uid → (clusterIP, ports) currently bound
        self.turn = 0

    async def on_service(self, event: str, service: Json) -> None:
        uid = service["metadata"]["uid"]
        spec = service.get("spec", {})
        wanted = (spec.get("clusterIP"), tuple((p.get("port"), p.get("protocol", "TCP")) for p in spec.get("ports") or []))
        if event == "DELETED" or not spec.get("selector") or spec.get("clusterIP") in (None, "", "None"):
            self.services.pop(uid, None)
            await self._close(uid)
            return
        self.services[uid] = service
        if self.listening.get(uid) == wanted:
            return
        await self._close(uid)
        servers = []
        for port in spec.get("ports") or []:
            if port.get("protocol", "TCP") != "TCP":
                continue
            try:
                servers.append(await asyncio.start_server(
                    lambda r, w, uid=uid, port=port: self._forward(uid, port, r, w), spec["clusterIP"], port["port"]))
            except OSError as error:
                log.warning("service %s/%s: cannot listen on %s:%s: %s", service["metadata"]["namespace"],
                            service["metadata"]["name"], spec["clusterIP"], port["port"], error)
        self.servers[uid], self.listening[uid] = servers, wanted

    async def _close(self, uid: str) -> None:
        for server in self.servers.pop(uid, []):
            server.close()
        self.listening.pop(uid, None)

    async def close(self) -> None:
        for uid in list(self.servers):
            await self._close(uid)

    def endpoints(self, service: Json, port: Json) -> list[tuple[str, int]]:
        """(pod IP, port) of every ready, not terminating pod the Service selects."""
        namespace, selector = service["metadata"]["namespace"], service["spec"]["selector"]
        target = port.get("targetPort", port["port"])
        found = []
        for worker in self.agent.workers.values():
            labels = worker.pod["metadata"].get("labels") or {}
            if worker.namespace != namespace or not worker.serving() or \
                    any(labels.get(k) != v for k, v in selector.items()):
                continue
            number = resolve_port(worker.pod, target)
            if number is not None:
                found.append((worker.ip, number))
        return sorted(found)

    async def _forward(self, uid: str, port: Json, client_reader: asyncio.StreamReader,
                       client_writer: asyncio.StreamWriter) -> None:
        service = self.services.get(uid)
        candidates = self.endpoints(service, port) if service else []
        if not candidates:
            client_writer.close()  # like a Service without endpoints: the connection is refused
            return
        self.turn += 1
        host, number = candidates[self.turn % len(candidates)]
        try:
            upstream_reader, upstream_writer = await asyncio.open_connection(host, number)
        except OSError:
            client_writer.close()
            return
        try:
            await asyncio.gather(_pipe(client_reader, upstream_writer), _pipe(upstream_reader, client_writer),
                                 return_exceptions=True)
        except asyncio.CancelledError:  # the agent is stopping with this connection open
            pass
        for writer in (client_writer, upstream_writer):
            writer.close()


async def _pipe(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    try:
        while data := await reader.read(65536):
            writer.write(data)
            await writer.drain()
        if writer.can_write_eof():
            writer.write_eof()  # half-close, so request/response protocols see the end of the request
    except (ConnectionError, OSError):
        writer.close()


def resolve_port(pod: Json, target: int | str) -> int | None:
    """A Service targetPort (number or container port name) for this pod."""
    if isinstance(target, int) or str(target).isdigit():
        return int(target)
    for container in pod["spec"].get("containers", []):
        for declared in container.get("ports") or []:
            if declared.get("name") == target:
                return int(declared["containerPort"])
    return None


def service_links(services: list[Json]) -> dict[str, str]:
    """The ``<NAME>_SERVICE_HOST``/``_PORT`` variables the kubelet gives pods (enableServiceLinks)."""
    env: dict[str, str] = {}
    for service in services:
        spec = service.get("spec", {})
        if spec.get("clusterIP") in (None, "", "None") or not spec.get("ports"):
            continue
        name = service["metadata"]["name"].upper().replace("-", "_")
        env[f"{name}_SERVICE_HOST"] = spec["clusterIP"]
        env[f"{name}_SERVICE_PORT"] = str(spec["ports"][0]["port"])
        for port in spec["ports"]:
            if port.get("name"):
                env[f"{name}_SERVICE_PORT_{port['name'].upper().replace('-', '_')}"] = str(port["port"])
    return env


class NodeAgent:
    def __init__(self, api: KubeApi, *, root: Path, store_dir: Path, node_name: str = NODE_NAME,
                 python: str = sys.executable, run_id: str = "", kubeconfig: Path | None = None,
                 kubelet_port: int = 0, tls: tuple[Path, Path] | None = None, pod_cidr: str = "127.0.0.0/17") -> None:
        self.kubelet_port, self.tls = kubelet_port, tls  # serves container logs to the apiserver
        self.api, self.root, self.store_dir, self.node_name = api, root, store_dir, node_name
        self.kubeconfig = kubeconfig  # given to pods that do not opt out of a service-account token
        self.python, self.run_id = python, run_id or str(os.getpid())
        self.addresses = PodAddresses(pod_cidr)
        self.workers: dict[str, PodWorker] = {}
        self.finished: set[str] = set()  # uids whose worker ended; later events for them are ignored
        self.config_maps: dict[tuple[str, str], dict[str, str]] = {}
        self.http = httpx.AsyncClient(trust_env=False)  # probes go to pod addresses, never via a proxy
        self.synced = asyncio.Event()
        self.tasks: list[asyncio.Task[None]] = []
        self.proxy = ServiceProxy(self)
        self._event_tasks: set[asyncio.Task[None]] = set()

    # ---- node -----------------------------------------------------------------------------------
    def node_status(self) -> Json:
        resources = {"cpu": "64", "memory": "256Gi", "pods": "500", "ephemeral-storage": "1Ti"}
        heartbeat = now()

        def condition(kind: str, status: str, reason: str, message: str) -> Json:
            return {"type": kind, "status": status, "reason": reason, "message": message,
                    "lastHeartbeatTime": heartbeat, "lastTransitionTime": self.started_at}

        return {
            "capacity": resources, "allocatable": resources,
            "conditions": [
                condition("Ready", "True", "KubeletReady", "noria node agent is running pods as local processes"),
                condition("MemoryPressure", "False", "KubeletHasSufficientMemory", "no memory pressure"),
                condition("DiskPressure", "False", "KubeletHasNoDiskPressure", "no disk pressure"),
                condition("PIDPressure", "False", "KubeletHasSufficientPID", "no PID pressure"),
            ],
            "addresses": [{"type": "InternalIP", "address": HOST_IP}, {"type": "Hostname", "address": self.node_name}],
            "nodeInfo": {"machineID": "", "systemUUID": "", "bootID": "", "kernelVersion": os.uname().release,
                         "osImage": "noria-testbed", "containerRuntimeVersion": "noria-node-agent://0.1",
                         "kubeletVersion": "v1.36.3", "kubeProxyVersion": "", "operatingSystem": "linux",
                         "architecture": "amd64"},
            "daemonEndpoints": {"kubeletEndpoint": {"Port": self.kubelet_port}},
        }

    async def register_node(self) -> None:
        self.started_at = now()
        labels = {"kubernetes.io/hostname": self.node_name, "kubernetes.io/os": "linux",
                  "kubernetes.io/arch": "amd64", "noria.dev/node-agent": "true"}
        node = {"apiVersion": "v1", "kind": "Node", "metadata": {"name": self.node_name, "labels": labels},
                "spec": {}, "status": self.node_status()}
        try:
            created = await self.api.request("POST", "/api/v1/nodes", body=node)
        except ApiError as error:
            if error.status != 409:
                raise
            created = await self.api.request("GET", f"/api/v1/nodes/{self.node_name}")
        self.node_uid = created["metadata"]["uid"]
        await self.api.patch(f"/api/v1/nodes/{self.node_name}/status", {"status": self.node_status()})
        # The TaintNodesByCondition admission plugin taints a new node not-ready until the node
        # lifecycle controller's next pass; the node is ready now, so drop the taint at once.
        await self.api.patch(f"/api/v1/nodes/{self.node_name}", {"spec": {"taints": None}})
        log.info("node %s registered", self.node_name)

    async def heartbeat(self) -> None:
        lease_path = f"/apis/coordination.k8s.io/v1/namespaces/kube-node-lease/leases/{self.node_name}"
        beats = 0
        while True:
            try:
                lease_spec = {"holderIdentity": self.node_name, "leaseDurationSeconds": 40, "renewTime": micro_now()}
                if await self.api.get(lease_path) is None:
                    await self.api.request("POST", "/apis/coordination.k8s.io/v1/namespaces/kube-node-lease/leases",
                                           body={"apiVersion": "coordination.k8s.io/v1", "kind": "Lease",
                                                 "metadata": {"name": self.node_name, "ownerReferences": [{
                                                     "apiVersion": "v1", "kind": "Node", "name": self.node_name,
                                                     "uid": self.node_uid}]},
                                                 "spec": lease_spec})
                else:
                    await self.api.patch(lease_path, {"spec": lease_spec})
                if beats % 3 == 0:
                    await self.api.patch(f"/api/v1/nodes/{self.node_name}/status", {"status": self.node_status()})
                beats += 1
            except (ApiError, httpx.HTTPError, OSError) as error:
                log.warning("heartbeat failed: %s", error)
            await asyncio.sleep(10)

    # ---- events -----------------------------------------------------------------------------------
    def event(self, pod: Json, reason: str, message: str, *, warning: bool = False) -> None:
        """Post a Kubernetes Event about a pod, as the kubelet does (``kubectl describe`` shows
        them). Fire and forget: an event that cannot be posted is only logged."""
        meta = pod["metadata"]
        stamp = now()
        body = {
            "apiVersion": "v1", "kind": "Event",
            "metadata": {"generateName": f"{meta['name']}.", "namespace": meta["namespace"]},
            "involvedObject": {"apiVersion": "v1", "kind": "Pod", "namespace": meta["namespace"],
                               "name": meta["name"], "uid": meta["uid"]},
            "reason": reason, "message": message, "type": "Warning" if warning else "Normal",
            "source": {"component": "kubelet", "host": self.node_name},
            "firstTimestamp": stamp, "lastTimestamp": stamp, "count": 1,
            "reportingComponent": "noria-node-agent", "reportingInstance": self.node_name,
        }

        async def post() -> None:
            try:
                await self.api.request("POST", f"/api/v1/namespaces/{meta['namespace']}/events", body=body)
            except (ApiError, httpx.HTTPError, OSError) as error:
                log.info("event %s for %s/%s not posted: %s", reason, meta["namespace"], meta["name"], error)

        task = asyncio.create_task(post())
        self._event_tasks.add(task)  # keep a reference until done (the loop holds only weak ones)
        task.add_done_callback(self._event_tasks.discard)

    # ---- pods -----------------------------------------------------------------------------------
    async def on_pod(self, event: str, pod: Json) -> None:
        uid = pod["metadata"]["uid"]
        worker = self.workers.get(uid)
        if event == "DELETED":
            self.finished.discard(uid)
            if worker:
                worker.removed()
            return
        if worker:
            worker.update(pod)
            return
        if uid in self.finished:
            return
        if pod.get("status", {}).get("phase") in ("Succeeded", "Failed"):
            if pod["metadata"].get("deletionTimestamp"):  # terminal and deleted: nothing to stop
                with contextlib.suppress(ApiError):
                    await self.api.delete(f"/api/v1/namespaces/{pod['metadata']['namespace']}/pods/"
                                          f"{pod['metadata']['name']}", {"gracePeriodSeconds": 0})
            return
        self.workers[uid] = PodWorker(self, pod)

    def forget(self, worker: PodWorker) -> None:
        if self.workers.get(worker.uid) is worker:
            del self.workers[worker.uid]
            if not worker.removed_from_api:
                self.finished.add(worker.uid)
        if worker.ip:
            self.addresses.release(worker.ip)

    async def on_config_map(self, event: str, cm: Json) -> None:
        key = (cm["metadata"]["namespace"], cm["metadata"]["name"])
        if event == "DELETED":
            self.config_maps.pop(key, None)
            return
        data = dict(cm.get("data") or {})
        data.update({k: base64.b64decode(v).decode("utf-8", "replace") for k, v in (cm.get("binaryData") or {}).items()})
        if self.config_maps.get(key) == data:
            return
        self.config_maps[key] = data
        for worker in list(self.workers.values()):
            if worker.namespace == key[0]:
                worker.refresh_config_map(key[1], data)

    async def sources_for(self, pod: Json) -> Sources:
        namespace = pod["metadata"]["namespace"]
        config_maps = {name: data for (ns, name), data in self.config_maps.items() if ns == namespace}
        secrets: dict[str, dict[str, str]] = {}
        for name in referenced_secrets(pod):
            secret = await self.api.get(f"/api/v1/namespaces/{namespace}/secrets/{name}")
            if secret is not None:
                secrets[name] = {k: base64.b64decode(v).decode("utf-8", "replace")
                                 for k, v in (secret.get("data") or {}).items()}
        services = [svc for svc in self.proxy.services.values() if svc["metadata"]["namespace"] == namespace]
        return Sources(config_maps=config_maps, secrets=secrets, service_env=service_links(services))

    # ---- persistent volume claims ------------------------------------------------------------------
    def claim_dir(self, namespace: str, claim: str) -> Path:
        return self.store_dir if claim == STORE_CLAIM else self.root / "volumes" / namespace / claim

    async def on_claim(self, event: str, claim: Json) -> None:
        """Pre-bind a hostPath PersistentVolume to every pending claim (the PV controller binds it)."""
        meta, spec = claim["metadata"], claim.get("spec", {})
        pv_name = f"noria-{meta['uid']}"
        if event == "DELETED":
            await self.api.delete(f"/api/v1/persistentvolumes/{pv_name}")
            return
        if spec.get("volumeName") or claim.get("status", {}).get("phase") == "Bound":
            return
        local = self.claim_dir(meta["namespace"], meta["name"])
        local.mkdir(parents=True, exist_ok=True)
        size = (spec.get("resources") or {}).get("requests", {}).get("storage", "1Gi")
        volume = {
            "apiVersion": "v1", "kind": "PersistentVolume",
            "metadata": {"name": pv_name, "labels": {"noria.dev/node-agent": "true"}},
            "spec": {"capacity": {"storage": size}, "accessModes": spec.get("accessModes") or ["ReadWriteOnce"],
                     "persistentVolumeReclaimPolicy": "Retain", "storageClassName": spec.get("storageClassName") or "",
                     "volumeMode": spec.get("volumeMode", "Filesystem"),
                     "hostPath": {"path": str(local), "type": "DirectoryOrCreate"},
                     "claimRef": {"apiVersion": "v1", "kind": "PersistentVolumeClaim", "namespace": meta["namespace"],
                                  "name": meta["name"], "uid": meta["uid"]}},
        }
        try:
            await self.api.request("POST", "/api/v1/persistentvolumes", body=volume)
            log.info("claim %s/%s: created PersistentVolume %s at %s", meta["namespace"], meta["name"], pv_name, local)
        except ApiError as error:
            if error.status != 409:
                log.warning("claim %s/%s: %s", meta["namespace"], meta["name"], error)

    # ---- service discovery --------------------------------------------------------------------------
    def sd_targets(self) -> list[Json]:
        return [group for worker in self.workers.values() for group in worker.running_targets()]

    async def serve_http(self, host: str, port: int) -> web.AppRunner:
        async def sd(_: web.Request) -> web.Response:
            return web.json_response(self.sd_targets())

        async def healthz(_: web.Request) -> web.Response:
            return web.Response(text="ok" if self.synced.is_set() else "starting", status=200 if self.synced.is_set() else 503)

        async def pods(_: web.Request) -> web.Response:
            return web.json_response([{"namespace": w.namespace, "name": w.name, "ip": w.ip, "phase": w.phase}
                                      for w in self.workers.values()])

        app = web.Application()
        app.add_routes([web.get("/sd", sd), web.get("/healthz", healthz), web.get("/pods", pods)])
        runner = web.AppRunner(app, access_log=None)
        await runner.setup()
        await web.TCPSite(runner, host, port).start()
        return runner

    async def serve_kubelet_logs(self) -> web.AppRunner | None:
        """The kubelet's ``/containerLogs`` endpoint over TLS, so ``kubectl logs [-f]`` works: the
        apiserver reaches it at the node's InternalIP and ``daemonEndpoints.kubeletEndpoint.Port``."""
        if not self.kubelet_port or self.tls is None:
            return None

        async def container_logs(request: web.Request) -> web.StreamResponse:
            namespace, pod, container = (request.match_info[k] for k in ("namespace", "pod", "container"))
            path = self.root / "pods" / namespace / pod / f"{container}.log"
            if not path.exists():
                return web.Response(status=404, text=f"no log for container {container} of pod {namespace}/{pod}\n")
            data = path.read_bytes()
            lines = [line for line in data.splitlines(keepends=True) if not _LOG_HEADER.match(line)]
            if request.query.get("tailLines"):
                lines = lines[-int(request.query["tailLines"]):] if int(request.query["tailLines"]) > 0 else []
            response = web.StreamResponse(headers={"Content-Type": "text/plain; charset=utf-8"})
            await response.prepare(request)
            await response.write(b"".join(lines))
            offset = len(data)
            while request.query.get("follow") == "true" and self._pod_running(namespace, pod):
                await asyncio.sleep(0.5)
                with open(path, "rb") as handle:
                    handle.seek(offset)
                    chunk = handle.read()
                offset += len(chunk)
                if chunk:
                    await response.write(b"".join(x for x in chunk.splitlines(keepends=True) if not _LOG_HEADER.match(x)))
            await response.write_eof()
            return response

        app = web.Application()
        app.add_routes([web.get("/containerLogs/{namespace}/{pod}/{container}", container_logs)])
        runner = web.AppRunner(app, access_log=None)
        await runner.setup()
        context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        context.load_cert_chain(str(self.tls[0]), str(self.tls[1]))
        await web.TCPSite(runner, HOST_IP, self.kubelet_port, ssl_context=context).start()
        return runner

    def _pod_running(self, namespace: str, name: str) -> bool:
        return any(w.namespace == namespace and w.name == name and w.phase in ("Pending", "Running")
                   for w in self.workers.values())

    # ---- main -----------------------------------------------------------------------------------------
    async def run(self, host: str, port: int) -> None:
        http_runner = await self.serve_http(host, port)
        logs_runner = await self.serve_kubelet_logs()
        try:
            await self.register_node()
            pods_synced, cms_synced, services_synced = asyncio.Event(), asyncio.Event(), asyncio.Event()
            self.tasks = [
                asyncio.create_task(self.heartbeat(), name="heartbeat"),
                asyncio.create_task(inform(self.api, "/api/v1/configmaps", self.on_config_map,
                                           on_synced=cms_synced.set), name="configmaps"),
                asyncio.create_task(inform(self.api, "/api/v1/persistentvolumeclaims", self.on_claim), name="claims"),
                asyncio.create_task(inform(self.api, "/api/v1/services", self.proxy.on_service,
                                           on_synced=services_synced.set), name="services"),
            ]
            await cms_synced.wait()
            await services_synced.wait()  # pods may need ConfigMaps as soon as they are seen
            self.tasks.append(asyncio.create_task(inform(
                self.api, "/api/v1/pods", self.on_pod, params={"fieldSelector": f"spec.nodeName={self.node_name}"},
                on_synced=pods_synced.set), name="pods"))
            await pods_synced.wait()
            self.synced.set()
            log.info("node agent ready on %s:%d", host, port)
            await asyncio.gather(*self.tasks)
        finally:
            for task in self.tasks:
                task.cancel()
            workers = list(self.workers.values())
            for worker in workers:
                worker.task.cancel()
            await asyncio.gather(*(w.task for w in workers), return_exceptions=True)
            await asyncio.gather(*(w.stop_containers(1.0) for w in workers), return_exceptions=True)
            await self.proxy.close()
            if logs_runner is not None:
                await logs_runner.cleanup()
            await http_runner.cleanup()
            await self.http.aclose()


def referenced_secrets(pod: Json) -> set[str]:
    spec = pod.get("spec", {})
    names = {v["secret"]["secretName"] for v in spec.get("volumes") or [] if "secret" in v}
    for container in [*(spec.get("initContainers") or []), *spec.get("containers", [])]:
        names |= {e["secretRef"]["name"] for e in container.get("envFrom") or [] if "secretRef" in e}
        names |= {e["valueFrom"]["secretKeyRef"]["name"] for e in container.get("env") or []
                  if "secretKeyRef" in e.get("valueFrom", {})}
    return names


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m noria_testbed.node_agent", description=__doc__.split("\n")[0])
    parser.add_argument("--kubeconfig", type=Path, required=True)
    parser.add_argument("--root", type=Path, required=True, help="pod directories, logs and claim volumes")
    parser.add_argument("--store-dir", type=Path, required=True, help=f"what the claim {STORE_CLAIM!r} maps to")
    parser.add_argument("--listen", default="127.0.0.1:0", help="host:port of the /sd and /healthz endpoint")
    parser.add_argument("--node-name", default=NODE_NAME)
    parser.add_argument("--run-id", default="", help=f"value of {RUN_MARKER_ENV} in every pod process")
    parser.add_argument("--pod-cidr", default="127.0.0.0/17", help="loopback block pod addresses come from")
    parser.add_argument("--kubelet-port", type=int, default=0, help="serve /containerLogs on 127.0.0.1:PORT (TLS)")
    parser.add_argument("--tls-cert", type=Path, help="serving certificate for --kubelet-port")
    parser.add_argument("--tls-key", type=Path, help="its key")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    logging.getLogger("httpx").setLevel(logging.WARNING)  # one line per readiness probe is noise
    host, _, port = args.listen.rpartition(":")

    async def run() -> None:
        api = KubeApi(args.kubeconfig)
        agent = NodeAgent(api, root=args.root, store_dir=args.store_dir, node_name=args.node_name, run_id=args.run_id,
                          kubeconfig=args.kubeconfig.resolve(), kubelet_port=args.kubelet_port,
                          tls=(args.tls_cert, args.tls_key) if args.tls_cert and args.tls_key else None,
                          pod_cidr=args.pod_cidr)
        main_task = asyncio.current_task()
        loop = asyncio.get_running_loop()
        for signum in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(signum, main_task.cancel)  # type: ignore[union-attr]
        try:
            await agent.run(host, int(port))
        except asyncio.CancelledError:
            log.info("node agent stopping")
        finally:
            await api.close()

    args.root.mkdir(parents=True, exist_ok=True)
    args.store_dir.mkdir(parents=True, exist_ok=True)
    asyncio.run(run())


if __name__ == "__main__":
    main()
