"""s3:// in the pods Noria starts: the trainer Job and the model-server Deployment get the AWS SDK's
variables (credentials only as secretKeyRefs the kubelet resolves) and no store volume, so no
ReadWriteMany claim is needed; a file:// store keeps its claim and gets no AWS variable."""

from __future__ import annotations

import json

import pytest
from noria import objectstore
from noria.api.common import S3Access
from noria.deployment import objects
from noria.deployment.spec import parse_rollout_spec
from noria.settings import Settings
from noria.training import runs

S3_ROOT = "s3://noria-store/prod"
OWNER = {"uid": "u-1", "name": "churn", "kind": "TrainingPipeline", "apiVersion": "noria.dev/v1alpha1"}
REF = objects.RolloutRef(name="churn", namespace="ml", uid="u1")
MV = {
    "metadata": {"name": "churn-v1"},
    "spec": {
        "pipeline": "churn",
        "artifact": {"uri": f"{S3_ROOT}/ml/churn/v1/model.skops", "digest": "sha256:" + "a" * 64},
    },
}
STORE = {
    "s3": {
        "endpoint": "http://seaweedfs.storage:8333",
        "region": "eu-west-1",
        "credentialsSecret": "store-creds",
    }
}


def _pipeline(store: dict | None) -> dict:
    spec = {
        "model": {
            "task": "classification",
            "estimator": "sklearn.linear_model.LogisticRegression",
            "target": "y",
        },
        "data": {"source": f"{S3_ROOT}/datasets/churn/"},
    }
    if store is not None:
        spec["store"] = store
    return {"metadata": {"name": "churn", "namespace": "ml", "uid": "u-1"}, "spec": spec}


def _trainer_pod(store_root: str, store: dict | None, **defaults: str) -> dict:
    settings = runs.RunSettings(
        trainer_image="img:1",
        store_root=store_root,
        store_pvc="noria-store",
        store_mount_path="/var/lib/noria/store",
        **defaults,
    )
    tp = _pipeline(store)
    spec = runs.run_spec(tp, 3, "manual", None, settings)
    return runs.job(tp, OWNER, spec, "2026-11-23T12:00:00Z", settings)["spec"]["template"]["spec"]


def _server_pod(settings: Settings, store: dict | None) -> dict:
    spec = {"source": {"pipeline": "churn"}, "strategy": {"canary": {"steps": [{"setWeight": 10}]}}}
    if store is not None:
        spec["store"] = store
    access = parse_rollout_spec(spec).store_access
    return objects.version_deployment(REF, MV, 1, settings, store_access=access)["spec"]["template"]["spec"]


def _env(pod: dict) -> dict[str, dict]:
    return {e["name"]: e for e in pod["containers"][0]["env"]}


EXPECTED_S3_ENV = {
    "AWS_ENDPOINT_URL": {"name": "AWS_ENDPOINT_URL", "value": "http://seaweedfs.storage:8333"},
    "AWS_REGION": {"name": "AWS_REGION", "value": "eu-west-1"},
    "AWS_DEFAULT_REGION": {"name": "AWS_DEFAULT_REGION", "value": "eu-west-1"},
    "AWS_ACCESS_KEY_ID": {
        "name": "AWS_ACCESS_KEY_ID",
        "valueFrom": {"secretKeyRef": {"name": "store-creds", "key": "AWS_ACCESS_KEY_ID", "optional": False}},
    },
    "AWS_SECRET_ACCESS_KEY": {
        "name": "AWS_SECRET_ACCESS_KEY",
        "valueFrom": {
            "secretKeyRef": {"name": "store-creds", "key": "AWS_SECRET_ACCESS_KEY", "optional": False}
        },
    },
    "AWS_SESSION_TOKEN": {
        "name": "AWS_SESSION_TOKEN",
        "valueFrom": {"secretKeyRef": {"name": "store-creds", "key": "AWS_SESSION_TOKEN", "optional": True}},
    },
}


@pytest.mark.parametrize(
    "pod",
    [
        pytest.param(lambda: _trainer_pod(S3_ROOT, STORE), id="trainer-job"),
        pytest.param(lambda: _server_pod(Settings(store_root=S3_ROOT), STORE), id="model-server"),
    ],
)
def test_spec_store_s3_becomes_aws_variables_with_credentials_only_by_secret_reference(pod):
    spec = pod()
    env = _env(spec)
    assert {k: env[k] for k in EXPECTED_S3_ENV} == EXPECTED_S3_ENV
    # no store claim at all on an s3 store: nothing to mount, no ReadWriteMany
    assert not any("persistentVolumeClaim" in v for v in spec["volumes"])
    assert [m["name"] for m in spec["containers"][0]["volumeMounts"] if m["name"].startswith("store")] == []


@pytest.mark.parametrize(
    "pod",
    [
        pytest.param(
            lambda: _trainer_pod(S3_ROOT, None, s3_endpoint="http://op:8333", s3_region="us-east-1"),
            id="trainer-job",
        ),
        pytest.param(
            lambda: _server_pod(
                Settings(store_root=S3_ROOT, s3_endpoint="http://op:8333", s3_region="us-east-1"), None
            ),
            id="model-server",
        ),
    ],
)
def test_without_spec_store_the_pod_gets_the_operators_endpoint_and_workload_identity(pod):
    env = _env(pod())
    assert (
        env["AWS_ENDPOINT_URL"]["value"] == "http://op:8333"
        and env["AWS_DEFAULT_REGION"]["value"] == "us-east-1"
    )
    assert not set(env) & {"AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN"}


@pytest.mark.parametrize(
    "pod",
    [
        pytest.param(lambda: _trainer_pod("file:///var/lib/noria/store", None), id="trainer-job"),
        pytest.param(lambda: _server_pod(Settings(), None), id="model-server"),
    ],
)
def test_a_file_store_keeps_its_claim_and_gets_no_aws_variable(pod):
    spec = pod()
    assert not [name for name in _env(spec) if name.startswith("AWS_")]
    assert any(v.get("persistentVolumeClaim", {}).get("claimName") == "noria-store" for v in spec["volumes"])


def test_no_credential_value_reaches_the_job_or_the_run_configmap():
    settings = runs.RunSettings(
        trainer_image="img:1", store_root=S3_ROOT, store_pvc="p", store_mount_path="/s"
    )
    tp = _pipeline(STORE)
    spec = runs.run_spec(tp, 3, "manual", None, settings)
    text = json.dumps([runs.config_map(tp, OWNER, spec), runs.job(tp, OWNER, spec, "t", settings)])
    # the Secret is named, its keys are referenced; a value of a key could only come from reading it
    assert '"value": "store-creds"' not in text and "secretKeyRef" in text


def test_operator_settings_read_the_aws_sdk_variables():
    settings = Settings.from_env(
        {
            "NORIA_STORE_ROOT": S3_ROOT,
            "AWS_ENDPOINT_URL": "http://s3:8333",
            "AWS_REGION": "eu-central-1",
            "AWS_SECRET_ACCESS_KEY": "never-kept",
        }
    )
    assert (settings.s3_endpoint, settings.s3_region) == ("http://s3:8333", "eu-central-1")
    assert "never-kept" not in repr(settings)
    assert Settings.from_env({"AWS_DEFAULT_REGION": "ap-south-1"}).s3_region == "ap-south-1"
    assert settings.local_uri(f"{S3_ROOT}/ml/churn/v1/profile.json") == f"{S3_ROOT}/ml/churn/v1/profile.json"


def test_pod_env_for_a_region_only_access():
    assert objectstore.pod_env(S3Access(region="us-west-2")) == [
        {"name": "AWS_REGION", "value": "us-west-2"},
        {"name": "AWS_DEFAULT_REGION", "value": "us-west-2"},
    ]
