"""The Node this agent stands for: registered Ready (and untainted) at start, its Lease renewed
and its Ready heartbeat refreshed while the agent runs, as a kubelet does."""

from __future__ import annotations

import asyncio
import logging
import os

import httpx

from noria_testbed.kubeapi import ApiError, KubeApi
from noria_testbed.node_agent.common import HOST_IP, LOGGER_NAME, Json, micro_now, now

log = logging.getLogger(LOGGER_NAME)


class NodeRegistration:
    """The Node object ``node_name`` and its Lease in ``kube-node-lease``."""

    def __init__(self, api: KubeApi, node_name: str, kubelet_port: int) -> None:
        self.api, self.node_name, self.kubelet_port = api, node_name, kubelet_port
        self.started_at = now()
        self.node_uid = ""

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

    async def register(self) -> None:
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
