"""The kind path on s3 (docs/operations/kind.md): the closed-loop demo's pipeline and Rollout with
examples/kind/s3-*-patch.yaml merged in are valid resources whose store is the in-cluster S3 server
of examples/kind/seaweedfs.yaml, and that server's pod meets the restricted Pod Security Standard's
main points (no root, no privilege escalation, no capabilities, no ServiceAccount token)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml
from noria.api.rollout import Rollout
from noria.api.training_pipeline import TrainingPipeline

ROOT = Path(__file__).resolve().parents[2]
KIND = ROOT / "examples" / "kind"
DEMO = ROOT / "examples" / "90-closed-loop"


def merge_patch(target: Any, patch: Any) -> Any:
    """RFC 7386, as `kubectl patch --type=merge` applies it."""
    if not isinstance(patch, dict):
        return patch
    out = dict(target) if isinstance(target, dict) else {}
    for key, value in patch.items():
        if value is None:
            out.pop(key, None)
        else:
            out[key] = merge_patch(out.get(key), value)
    return out


def patched(kind: str) -> dict:
    return merge_patch(
        yaml.safe_load((DEMO / f"{kind}.yaml").read_text()),
        yaml.safe_load((KIND / f"s3-{kind}-patch.yaml").read_text()),
    )


def seaweedfs_objects() -> dict[str, dict]:
    return {d["kind"]: d for d in yaml.safe_load_all((KIND / "seaweedfs.yaml").read_text()) if d}


def test_the_patched_demo_pipeline_and_rollout_are_valid_and_use_the_in_cluster_s3_store() -> None:
    service = seaweedfs_objects()["Service"]
    endpoint = f"http://{service['metadata']['name']}.{service['metadata']['namespace']}:{service['spec']['ports'][0]['port']}"
    pipeline = TrainingPipeline.model_validate(patched("pipeline"))
    rollout = Rollout.model_validate(patched("rollout"))
    for store in (pipeline.spec.store, rollout.spec.store):
        assert store is not None and store.s3 is not None
        assert store.s3.endpoint == endpoint and store.s3.credentials_secret == "noria-s3"
    assert pipeline.spec.data.source.startswith("s3://noria-store/datasets/")
    assert (
        pipeline.spec.model
        == TrainingPipeline.model_validate(yaml.safe_load((DEMO / "pipeline.yaml").read_text())).spec.model
    )


def test_the_s3_server_pod_is_restricted_and_mounts_only_a_read_write_once_claim() -> None:
    objects = seaweedfs_objects()
    pod = objects["Deployment"]["spec"]["template"]["spec"]
    assert objects["Namespace"]["metadata"]["labels"]["pod-security.kubernetes.io/enforce"] == "restricted"
    assert pod["automountServiceAccountToken"] is False
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert pod["securityContext"]["seccompProfile"]["type"] == "RuntimeDefault"
    (container,) = pod["containers"]
    assert container["securityContext"] == {
        "allowPrivilegeEscalation": False,
        "capabilities": {"drop": ["ALL"]},
    }
    assert objects["PersistentVolumeClaim"]["spec"]["accessModes"] == ["ReadWriteOnce"]
