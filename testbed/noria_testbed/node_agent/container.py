"""One container's process: start it in its own process group, restart it with back-off as
its pod's restartPolicy says, probe it (readiness, liveness) and stop it (SIGTERM, then SIGKILL)."""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import time
from typing import TYPE_CHECKING

from noria_testbed.node_agent import memory
from noria_testbed.node_agent.common import Json, now
from noria_testbed.node_agent.launch import Launch
from noria_testbed.node_agent.probes import has_probe, probe_once
from noria_testbed.podspec import ContainerState, should_restart, termination_message
from noria_testbed.processes import detach_and_die_with_parent, tail

if TYPE_CHECKING:
    from noria_testbed.node_agent.pod import PodWorker


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
        limit = memory.memory_limit_bytes(self.spec)
        oom = asyncio.create_task(memory.enforce(self.process.pid, limit)) if limit else None
        try:
            code = await self.process.wait()
        finally:
            for probe in probes:
                probe.cancel()
            await asyncio.gather(*probes, return_exceptions=True)
        oom_killed = bool(oom.done() and oom.result()) if oom else False  # the watcher killed it
        if oom and not oom.done():
            oom.cancel()
        exit_code = code if code >= 0 else 128 - code  # killed by signal N → 128+N, as runtimes report
        try:
            file_text = launch.termination_file.read_text(errors="replace")
        except OSError:
            file_text = ""
        policy = self.spec.get("terminationMessagePolicy", "File")
        state.message = termination_message(file_text, policy, exit_code, tail(launch.log_file, 80))
        state.state, state.exit_code, state.finished_at, state.ready = "terminated", exit_code, now(), False
        state.reason = "Completed" if exit_code == 0 else "OOMKilled" if oom_killed else "Error"
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
        if not has_probe(probe):
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
        if not has_probe(probe):
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

    async def probe_once(self, probe: Json) -> bool:
        return await probe_once(probe, container=self.spec, pod_ip=self.worker.ip, launch=self.launch,
                                http=self.worker.agent.http)

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
