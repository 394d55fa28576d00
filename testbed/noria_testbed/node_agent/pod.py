"""One pod's life on this node, in one task: prepare its volumes and launches (waiting for
missing ConfigMaps/Secrets), run init containers in order, then the containers; write its
status whenever it changes; on deletion stop the processes and let the apiserver drop it."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from typing import TYPE_CHECKING

from noria_testbed.kubeapi import ApiError
from noria_testbed.node_agent.common import GRACE_CAP, HOST_IP, LOGGER_NAME, Json, now
from noria_testbed.node_agent.container import ContainerRunner
from noria_testbed.node_agent.launch import Launch, launch_for
from noria_testbed.node_agent.service_account import PodCredentials
from noria_testbed.node_agent.volumes import PodVolumes, materialise_volumes
from noria_testbed.podspec import ContainerState, PodSpecError, Sources, pod_status, scrape_targets

if TYPE_CHECKING:
    from noria_testbed.node_agent.agent import NodeAgent

log = logging.getLogger(LOGGER_NAME)


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
        self.volumes = PodVolumes()
        self.credentials: PodCredentials | None = None  # its service-account token, if it gets one
        self.token_refresh: asyncio.Task[None] | None = None
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
            if self.token_refresh is not None:
                self.token_refresh.cancel()
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
        self.volumes = materialise_volumes(self.pod, self.dir, self.ip, sources, self.agent.claim_dir)
        await self.prepare_credentials()
        init = [self.launch_for(c, sources) for c in spec.get("initContainers") or []]
        main = [self.launch_for(c, sources) for c in spec["containers"]]
        if self.credentials is not None and self.token_refresh is None:
            self.token_refresh = asyncio.create_task(self.credentials.refresh(),
                                                     name=f"token {self.namespace}/{self.name}")
        return init, main

    async def prepare_credentials(self) -> None:
        """The pod's service-account token, as the kubelet mounts it (PodSpecError while refused)."""
        if self.agent.access is None or self.credentials is not None:
            return
        credentials = PodCredentials(self.agent.api, self.agent.access, self.pod, self.dir / "serviceaccount")
        if await credentials.wanted():
            await credentials.issue()
            self.credentials = credentials

    def launch_for(self, container: Json, sources: Sources) -> Launch:
        return launch_for(self.pod, container, sources=sources, volume_dirs=self.volumes.dirs, pod_dir=self.dir,
                          pod_ip=self.ip, python=self.agent.python, run_id=self.agent.run_id,
                          credentials=self.credentials.directory if self.credentials else None)

    def refresh_config_map(self, cm_name: str, data: dict[str, str]) -> None:
        self.volumes.refresh_config_map(cm_name, data)

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
        # As the kubelet does, the terminal phase is written before the object goes: a Job with a
        # podFailurePolicy counts a deleted pod only once it is Failed (its finalizer holds it till then).
        await self.report()
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
