"""Volumes as local directories: configMap, secret, emptyDir, downwardAPI, projected (configMap
sources), hostPath and persistentVolumeClaim; and the pre-bound PersistentVolume for a claim."""

from __future__ import annotations

import shutil
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from noria_testbed.node_agent.common import Json
from noria_testbed.podspec import PathRewriter, PodSpecError, Sources, field_ref


@dataclass


class PodVolumes:
    """A pod's volumes on disk. ``content_rewrite`` maps every mount path of the pod's containers
    to its local directory; configMap file contents go through it (see :func:`mounts_rewriter`)."""

    dirs: dict[str, Path] = field(default_factory=dict)  # volume name → local directory
    config_maps: dict[str, tuple[str, Json]] = field(default_factory=dict)  # volume name → (ConfigMap, volume)
    content_rewrite: PathRewriter = field(default_factory=lambda: PathRewriter({}))

    def refresh_config_map(self, cm_name: str, data: dict[str, str]) -> None:
        """Rewrite the files of every volume showing ConfigMap ``cm_name`` (kept up to date, as the kubelet does)."""
        for volume_name, (name, volume) in self.config_maps.items():
            if name == cm_name and volume_name in self.dirs:
                write_projection(self.dirs[volume_name], {k: self.content_rewrite(v) for k, v in data.items()},
                                 volume.get("items"))


def materialise_volumes(pod: Json, pod_dir: Path, pod_ip: str, sources: Sources,
                        claim_dir: Callable[[str, str], Path]) -> PodVolumes:
    """Create every volume of ``pod`` under ``pod_dir``/volumes (claims under ``claim_dir(namespace,
    claim)``). Raises PodSpecError when a ConfigMap or Secret a volume needs is missing."""
    namespace = pod["metadata"]["namespace"]
    volumes_root = pod_dir / "volumes"
    shutil.rmtree(volumes_root, ignore_errors=True)  # a pod re-created with the same name starts clean
    volumes_root.mkdir(parents=True)
    result = PodVolumes()
    config_map_files: list[tuple[Path, dict[str, str], list[Json] | None]] = []
    for volume in pod["spec"].get("volumes") or []:
        name = volume["name"]
        local = volumes_root / name
        if "persistentVolumeClaim" in volume:
            local = claim_dir(namespace, volume["persistentVolumeClaim"]["claimName"])
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
            result.config_maps[name] = (cm_name, volume["configMap"])
        elif "secret" in volume:
            secret_name = volume["secret"]["secretName"]
            data = sources.secrets.get(secret_name)
            if data is None and not volume["secret"].get("optional"):
                raise PodSpecError(f"volume {name!r}: Secret {secret_name!r} not found")
            write_projection(local, data or {}, volume["secret"].get("items"))
        elif "downwardAPI" in volume:
            files = {item["path"]: field_ref(pod, item["fieldRef"]["fieldPath"], pod_ip)
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
        result.dirs[name] = local
    result.content_rewrite = mounts_rewriter(pod, result.dirs)
    for local, data, items in config_map_files:
        write_projection(local, {k: result.content_rewrite(v) for k, v in data.items()}, items)
    return result


def mounts_rewriter(pod: Json, dirs: dict[str, Path]) -> PathRewriter:
    """Mount paths of all the pod's containers -> local dirs. Applied to configMap file contents
    too: a config file naming a path under a mount (a run spec's file:///var/lib/noria/store/...)
    must name the local directory the process really sees."""
    mounts: dict[str, str] = {}
    for container in (pod["spec"].get("initContainers") or []) + pod["spec"]["containers"]:
        for mount in container.get("volumeMounts") or []:
            if mount["name"] in dirs:
                local = dirs[mount["name"]] / mount["subPath"] if mount.get("subPath") else dirs[mount["name"]]
                mounts.setdefault(mount["mountPath"], str(local))
    return PathRewriter(mounts)


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


def referenced_secrets(pod: Json) -> set[str]:
    spec = pod.get("spec", {})
    names = {v["secret"]["secretName"] for v in spec.get("volumes") or [] if "secret" in v}
    for container in [*(spec.get("initContainers") or []), *spec.get("containers", [])]:
        names |= {e["secretRef"]["name"] for e in container.get("envFrom") or [] if "secretRef" in e}
        names |= {e["valueFrom"]["secretKeyRef"]["name"] for e in container.get("env") or []
                  if "secretKeyRef" in e.get("valueFrom", {})}
    return names


def persistent_volume_for(claim: Json, local: Path) -> Json:
    """A hostPath PersistentVolume at ``local``, pre-bound to ``claim`` (the PV controller binds it)."""
    meta, spec = claim["metadata"], claim.get("spec", {})
    size = (spec.get("resources") or {}).get("requests", {}).get("storage", "1Gi")
    return {
        "apiVersion": "v1", "kind": "PersistentVolume",
        "metadata": {"name": persistent_volume_name(claim), "labels": {"noria.dev/node-agent": "true"}},
        "spec": {"capacity": {"storage": size}, "accessModes": spec.get("accessModes") or ["ReadWriteOnce"],
                 "persistentVolumeReclaimPolicy": "Retain", "storageClassName": spec.get("storageClassName") or "",
                 "volumeMode": spec.get("volumeMode", "Filesystem"),
                 "hostPath": {"path": str(local), "type": "DirectoryOrCreate"},
                 "claimRef": {"apiVersion": "v1", "kind": "PersistentVolumeClaim", "namespace": meta["namespace"],
                              "name": meta["name"], "uid": meta["uid"]}},
    }


def persistent_volume_name(claim: Json) -> str:
    return f"noria-{claim['metadata']['uid']}"
