"""The chart with an ``s3://`` store root (chart_render's ``s3`` combination, as Helm renders it): no
claim is made and none is mounted, and the operator's own S3 access comes from the values, its keys
from the named Secret through the kubelet (never as a value in the rendered objects)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from chart_render import COMBINATIONS, helm_binary, of_kind, render


@pytest.fixture(scope="module")
def helm() -> Path:
    return helm_binary()


def operator_container(docs: list[dict[str, Any]]) -> dict[str, Any]:
    (deployment,) = of_kind(docs, "Deployment")
    (container,) = deployment["spec"]["template"]["spec"]["containers"]
    return container


def test_an_s3_root_renders_no_claim_no_store_volume_and_the_operators_own_access(helm: Path) -> None:
    docs = render(helm, *COMBINATIONS["s3"])
    assert of_kind(docs, "PersistentVolumeClaim") == []
    (deployment,) = of_kind(docs, "Deployment")
    volumes = deployment["spec"]["template"]["spec"]["volumes"]
    assert [v for v in volumes if "persistentVolumeClaim" in v] == []
    container = operator_container(docs)
    assert [m["name"] for m in container["volumeMounts"]] == ["tmp"]
    env = {e["name"]: e for e in container["env"]}
    assert env["NORIA_STORE_ROOT"]["value"] == "s3://noria-store/models"
    assert env["AWS_ENDPOINT_URL"]["value"] == "http://seaweedfs.storage:8333"
    assert env["AWS_REGION"]["value"] == env["AWS_DEFAULT_REGION"]["value"] == "us-east-1"
    for key in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"):
        assert env[key] == {
            "name": key,
            "valueFrom": {"secretKeyRef": {"name": "noria-s3", "key": key, "optional": False}},
        }
    (account,) = of_kind(docs, "ServiceAccount")
    assert account["metadata"]["annotations"] == {"eks.amazonaws.com/role-arn": "arn:aws:iam::1:role/noria"}


def test_workload_identity_means_no_key_variables_and_a_file_root_sets_no_s3_access(helm: Path) -> None:
    identity = operator_container(render(helm, "--set", "store.root=s3://noria-store"))
    assert not [e for e in identity["env"] if e["name"].startswith("AWS_")]
    file_root = render(
        helm, "--set", "store.s3.endpoint=http://ignored:8333", "--set", "store.s3.credentialsSecret=x"
    )
    assert not [e for e in operator_container(file_root)["env"] if e["name"].startswith("AWS_")]
    assert [c["metadata"]["name"] for c in of_kind(file_root, "PersistentVolumeClaim")] == ["noria-store"]
