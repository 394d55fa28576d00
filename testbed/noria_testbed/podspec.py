"""Pure decisions of the node agent: from a pod's spec to a local command line, and from the
observed processes to the pod's status. No I/O here, so every rule has a unit test.

The path rewriting rule
-----------------------
A process started by the agent sees this machine's file system, not the container's. Every volume
mount is therefore a local directory, and the agent rewrites any absolute path that starts with a
volumeMount's ``mountPath`` — or equals the container's ``terminationMessagePath`` (default
``/dev/termination-log``) — inside the container's ``command``, ``args``, ``workingDir`` and env
values into the local path. The files of configMap volumes are rewritten the same way (with the
mount paths of all the pod's containers), so a run spec naming ``file:///var/lib/noria/store/...``
names the directory the process really sees. A path matches only at a path boundary: ``/data`` rewrites ``/data``,
``/data/x`` and ``file:///data/x``, never ``/database`` or ``/srv/data``. Longer mount paths win
(``/etc/app/sub`` before ``/etc/app``). Paths that code computes at run time from constants are
not seen: pass every path through an argument or an env var.
"""

from __future__ import annotations

import re
import sys
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import PurePosixPath
from typing import Any

from noria.scrape import series_label

Json = dict[str, Any]

DEFAULT_TERMINATION_MESSAGE_PATH = "/dev/termination-log"
MAX_TERMINATION_MESSAGE_BYTES = 4096  # kubelet's per-container limit
FALLBACK_LOG_LINES = 80  # kubelet's FallbackToLogsOnError takes the last 80 lines (at most 2048 bytes)
FALLBACK_LOG_BYTES = 2048
_PYTHON = re.compile(r"^python(3(\.\d+)?)?$")


class PodSpecError(ValueError):
    """The pod asks for something the node agent cannot run; the message names the field."""


# ---- $(VAR) expansion, as the kubelet does it ------------------------------------------------------
def expand(text: str, variables: Mapping[str, str]) -> str:
    """Kubernetes' ``$(VAR)`` expansion: defined names are replaced, ``$$`` escapes a ``$``,
    unknown names and unterminated references stay as written.

    >>> expand("$(A)-$$(A)-$(B)-$(C", {"A": "x"})
    'x-$(A)-$(B)-$(C'
    """
    out: list[str] = []
    i = 0
    while i < len(text):
        char = text[i]
        if char != "$" or i + 1 == len(text):
            out.append(char)
            i += 1
            continue
        nxt = text[i + 1]
        if nxt == "$":
            out.append("$")
            i += 2
        elif nxt == "(":
            end = text.find(")", i + 2)
            if end == -1:
                out.append(text[i:])
                break
            name = text[i + 2:end]
            out.append(variables[name] if name in variables else text[i:end + 1])
            i = end + 1
        else:
            out.append(text[i:i + 2])
            i += 2
    return "".join(out)


# ---- fieldRef / resource lookups -------------------------------------------------------------------
_LABEL_REF = re.compile(r"^metadata\.(labels|annotations)\['(.+)'\]$")


def field_ref(pod: Json, path: str, pod_ip: str, host_ip: str = "127.0.0.1") -> str:
    """The value of a downward-API ``fieldRef.fieldPath`` for this pod."""
    meta, spec = pod.get("metadata", {}), pod.get("spec", {})
    simple = {
        "metadata.name": meta.get("name", ""),
        "metadata.namespace": meta.get("namespace", ""),
        "metadata.uid": meta.get("uid", ""),
        "spec.nodeName": spec.get("nodeName", ""),
        "spec.serviceAccountName": spec.get("serviceAccountName", ""),
        "status.podIP": pod_ip,
        "status.podIPs": pod_ip,
        "status.hostIP": host_ip,
        "status.hostIPs": host_ip,
    }
    if path in simple:
        return simple[path]
    match = _LABEL_REF.match(path)
    if match:
        return str(meta.get(match.group(1), {}).get(match.group(2), ""))
    if path in ("metadata.labels", "metadata.annotations"):
        items = meta.get(path.split(".")[1], {})
        return "\n".join(f'{k}="{v}"' for k, v in sorted(items.items()))
    raise PodSpecError(f"env fieldRef.fieldPath {path!r} is not supported by the node agent")


@dataclass(frozen=True)
class Sources:
    """What env and volumes may refer to: ConfigMaps and Secrets of the pod's namespace (decoded)."""

    config_maps: Mapping[str, Mapping[str, str]] = field(default_factory=dict)
    secrets: Mapping[str, Mapping[str, str]] = field(default_factory=dict)
    service_env: Mapping[str, str] = field(default_factory=dict)  # <SVC>_SERVICE_HOST/PORT of the namespace


def _key_ref(kind: str, ref: Json, store: Mapping[str, Mapping[str, str]], where: str) -> str | None:
    name, key = ref.get("name", ""), ref.get("key", "")
    data = store.get(name)
    if data is None or key not in data:
        if ref.get("optional"):
            return None
        missing = f"{kind} {name!r}" if data is None else f"key {key!r} in {kind} {name!r}"
        raise PodSpecError(f"{where}: {missing} not found")
    return data[key]


def container_env(pod: Json, container: Json, pod_ip: str, sources: Sources) -> dict[str, str]:
    """The container's environment (envFrom, then env in order with ``$(VAR)`` expansion)."""
    env: dict[str, str] = {}
    cname = container.get("name", "")
    for index, source in enumerate(container.get("envFrom") or []):
        prefix = source.get("prefix", "")
        for kind, store in (("configMapRef", sources.config_maps), ("secretRef", sources.secrets)):
            ref = source.get(kind)
            if ref is None:
                continue
            data = store.get(ref.get("name", ""))
            if data is None:
                if ref.get("optional"):
                    continue
                raise PodSpecError(f"container {cname!r} envFrom[{index}].{kind}: {ref.get('name')!r} not found")
            env.update({prefix + k: v for k, v in data.items()})
    for index, var in enumerate(container.get("env") or []):
        name, where = var["name"], f"container {cname!r} env[{index}] ({var['name']})"
        if "valueFrom" not in var:
            env[name] = expand(var.get("value", ""), env)
            continue
        value_from = var["valueFrom"]
        if "fieldRef" in value_from:
            env[name] = field_ref(pod, value_from["fieldRef"]["fieldPath"], pod_ip)
        elif "configMapKeyRef" in value_from:
            value = _key_ref("ConfigMap", value_from["configMapKeyRef"], sources.config_maps, where)
            if value is not None:
                env[name] = value
        elif "secretKeyRef" in value_from:
            value = _key_ref("Secret", value_from["secretKeyRef"], sources.secrets, where)
            if value is not None:
                env[name] = value
        elif "resourceFieldRef" in value_from:
            env[name] = _resource_field(container, value_from["resourceFieldRef"])
        else:
            raise PodSpecError(f"{where}: valueFrom {sorted(value_from)} is not supported by the node agent")
    return env


def _resource_field(container: Json, ref: Json) -> str:
    kind, resource = ref.get("resource", "").split(".", 1) if "." in ref.get("resource", "") else ("", "")
    value = (container.get("resources") or {}).get(kind, {}).get(resource)
    return str(value) if value is not None else "0"


# ---- the path rewriting rule ------------------------------------------------------------------
class PathRewriter:
    """Rewrites container paths to local ones (see the module docstring)."""

    def __init__(self, mapping: Mapping[str, str]) -> None:
        self.mapping = {self._clean(k): v for k, v in mapping.items() if k.startswith("/")}
        alternatives = sorted(self.mapping, key=len, reverse=True)
        self._pattern = (re.compile(r"(?<![\w.\-])(" + "|".join(map(re.escape, alternatives)) + r")(?![\w.\-])")
                         if alternatives else None)

    @staticmethod
    def _clean(path: str) -> str:
        return str(PurePosixPath(path)) if path != "/" else path

    def __call__(self, text: str) -> str:
        if self._pattern is None:
            return text
        return self._pattern.sub(lambda m: self.mapping[m.group(1)], text)


def python_aware_argv(command: list[str], args: list[str], python: str = sys.executable) -> list[str]:
    """The argv to exec: ``python``/``python3`` as the first word becomes this venv's interpreter."""
    argv = [*command, *args]
    if not argv:
        raise PodSpecError("container has neither command nor args: the node agent cannot run an image's "
                           "entrypoint; give the container a command")
    if _PYTHON.match(PurePosixPath(argv[0]).name):
        argv[0] = python
    return argv


# ---- status --------------------------------------------------------------------------------------
@dataclass
class ContainerState:
    """What the agent knows about one container; ``status()`` turns it into a ContainerStatus."""

    name: str
    image: str = ""
    state: str = "waiting"  # waiting | running | terminated
    reason: str = "ContainerCreating"
    message: str = ""
    exit_code: int | None = None
    started_at: str | None = None
    finished_at: str | None = None
    ready: bool = False
    restart_count: int = 0
    pid: int | None = None
    last_terminated: Json | None = None
    will_restart: bool = False

    def status(self) -> Json:
        container_id = f"noria://{self.pid}" if self.pid else ""
        if self.state == "running":
            state: Json = {"running": {"startedAt": self.started_at}}
        elif self.state == "terminated":
            terminated: Json = {"exitCode": self.exit_code, "reason": self.reason,
                                "startedAt": self.started_at, "finishedAt": self.finished_at}
            if self.message:
                terminated["message"] = self.message
            if container_id:
                terminated["containerID"] = container_id
            state = {"terminated": terminated}
        else:
            waiting: Json = {"reason": self.reason}
            if self.message:
                waiting["message"] = self.message
            state = {"waiting": waiting}
        status: Json = {
            "name": self.name, "image": self.image, "imageID": "", "ready": self.ready,
            "started": self.state == "running", "restartCount": self.restart_count, "state": state,
            "lastState": {"terminated": self.last_terminated} if self.last_terminated else {},
        }
        if container_id:
            status["containerID"] = container_id
        return status


def should_restart(restart_policy: str, exit_code: int) -> bool:
    """Whether the kubelet restarts a container that exited with ``exit_code``."""
    return restart_policy == "Always" or (restart_policy == "OnFailure" and exit_code != 0)


def pod_phase(containers: Iterable[ContainerState], init_done: bool, init_failed: bool) -> str:
    """The pod phase from its containers, as the kubelet derives it."""
    states = list(containers)
    if init_failed:
        return "Failed"
    if not init_done or not states:
        return "Pending"
    if any(c.state == "running" or c.will_restart for c in states):
        return "Running"
    if all(c.state == "terminated" for c in states):
        return "Succeeded" if all(c.exit_code == 0 for c in states) else "Failed"
    if any(c.state == "terminated" or c.restart_count for c in states):
        return "Running"
    return "Pending"


def pod_status(containers: list[ContainerState], *, pod_ip: str, host_ip: str, start_time: str,
               init_done: bool, init_failed: bool, init_containers: list[ContainerState] | None = None) -> Json:
    """The status subresource the agent writes (PodScheduled stays the scheduler's)."""
    phase = pod_phase(containers, init_done, init_failed)
    all_ready = bool(containers) and all(c.ready for c in containers) and phase == "Running"

    def condition(kind: str, ok: bool, reason: str = "") -> Json:
        result: Json = {"type": kind, "status": "True" if ok else "False", "lastProbeTime": None}
        if not ok and reason:
            result["reason"] = reason
        return result

    terminal = phase in ("Succeeded", "Failed")
    status: Json = {
        "phase": phase,
        "hostIP": host_ip, "hostIPs": [{"ip": host_ip}],
        "podIP": pod_ip, "podIPs": [{"ip": pod_ip}],
        "startTime": start_time,
        "conditions": [
            condition("PodReadyToStartContainers", not terminal),
            condition("Initialized", init_done, "ContainersNotInitialized"),
            condition("ContainersReady", all_ready, "PodCompleted" if terminal else "ContainersNotReady"),
            condition("Ready", all_ready, "PodCompleted" if terminal else "ContainersNotReady"),
        ],
        "containerStatuses": [c.status() for c in containers],
    }
    if init_containers:
        status["initContainerStatuses"] = [c.status() for c in init_containers]
    return status


def termination_message(file_text: str, policy: str, exit_code: int, log_tail: str) -> str:
    """The ``terminated.message``: the file's text (capped), or the log tail under
    FallbackToLogsOnError when the file is empty and the container failed."""
    message = file_text.encode()[:MAX_TERMINATION_MESSAGE_BYTES].decode("utf-8", "ignore")
    if not message.strip() and policy == "FallbackToLogsOnError" and exit_code != 0:
        lines = "\n".join(log_tail.splitlines()[-FALLBACK_LOG_LINES:])
        message = lines.encode()[-FALLBACK_LOG_BYTES:].decode("utf-8", "ignore")
    return message


# ---- Prometheus service discovery ----------------------------------------------------------------
SCRAPE_PORT_NAMES = ("metrics", "http")


def sanitise_label(name: str) -> str:
    """A Kubernetes label key as a Prometheus label name (what kubernetes_sd does): the operator's
    own rule, ``noria.scrape.series_label``."""
    return series_label(name)


def scrape_targets(pod: Json, pod_ip: str) -> list[Json]:
    """http_sd target groups for one running pod: each container port named ``metrics`` or
    ``http``, or the ``prometheus.io/port`` annotation when ``prometheus.io/scrape`` is "true".

    Labels are those a kubernetes_sd_configs job with the usual relabeling gives: ``namespace``,
    ``pod``, ``container`` and ``label_<sanitised pod label>``; the ``__meta_kubernetes_*`` ones
    are there too so a relabel config written for a real cluster also works here.
    """
    meta = pod.get("metadata", {})
    annotations = meta.get("annotations") or {}
    pod_labels = meta.get("labels") or {}
    base = {
        "namespace": meta.get("namespace", ""), "pod": meta.get("name", ""),
        "__meta_kubernetes_namespace": meta.get("namespace", ""),
        "__meta_kubernetes_pod_name": meta.get("name", ""),
        "__meta_kubernetes_pod_ip": pod_ip,
        "__meta_kubernetes_pod_node_name": pod.get("spec", {}).get("nodeName", ""),
    }
    for key, value in pod_labels.items():
        base[f"label_{sanitise_label(key)}"] = value
        base[f"__meta_kubernetes_pod_label_{sanitise_label(key)}"] = value
    path = annotations.get("prometheus.io/path")
    if path:
        base["__metrics_path__"] = path

    groups: list[Json] = []
    seen: set[int] = set()
    for container in pod.get("spec", {}).get("containers", []):
        for port in container.get("ports") or []:
            if port.get("name") in SCRAPE_PORT_NAMES and port.get("containerPort") not in seen:
                seen.add(port["containerPort"])
                groups.append({"targets": [f"{pod_ip}:{port['containerPort']}"],
                               "labels": {**base, "container": container.get("name", ""),
                                          "__meta_kubernetes_pod_container_name": container.get("name", ""),
                                          "__meta_kubernetes_pod_container_port_name": port["name"]}})
    if str(annotations.get("prometheus.io/scrape", "")).lower() == "true" and annotations.get("prometheus.io/port"):
        port_number = int(annotations["prometheus.io/port"])
        if port_number not in seen:
            containers = pod.get("spec", {}).get("containers", [])
            groups.append({"targets": [f"{pod_ip}:{port_number}"],
                           "labels": {**base, "container": containers[0].get("name", "") if containers else ""}})
    return groups
