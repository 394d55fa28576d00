"""The closed loop on ``s3://`` against a real S3 server (the test bed's SeaweedFS), with no volume.

Data lands in a bucket; the pipeline trains from it and registers a ModelVersion whose artifact is
an object in the bucket; the Rollout's server loads it from there; its prediction and feedback logs
are objects in the bucket; a retrain learns from them. Every check of the store goes through the S3
API with the server's own credentials, never through Noria's code. The credentials reach pods only
through the Secret the specs name, and appear in no log, status, Event or ConfigMap. A Secret with
the wrong key fails the run with an error that says so.
"""

from __future__ import annotations

import json

import pytest
import s3_helpers
from noria.store import ARTIFACT_FILES
from rollout_helpers import rollout_status, service_url
from s3_helpers import (
    FEATURES,
    SECRET,
    apply,
    create_secret,
    filesystem,
    infer_and_label,
    jsonl_rows,
    keys_under,
    operator_env,
    pipeline_on_s3,
    rollout_on_s3,
    secret_leaks,
    sha256_of,
    write_data,
)
from training_helpers import classification_frame, condition, get, jobs, status, wait_for

pytestmark = pytest.mark.integration
s3 = s3_helpers.s3  # the fixture: the test bed's S3 server

ROUTER_BY_CLUSTER_IP = {"NORIA_ROUTER_BACKEND_URLS": "clusterIP"}  # the test bed has no EndpointSlices


def test_closed_loop_on_s3_trains_serves_logs_and_retrains_from_its_own_logs(
    cluster, namespace, s3, operator_factory
):
    fs = filesystem(s3)
    create_secret(cluster, namespace, s3.secret_data())
    source = write_data(fs, s3, namespace, "churn", classification_frame(600))
    operator = operator_factory(namespace, **operator_env(s3), **ROUTER_BY_CLUSTER_IP)
    apply(
        cluster,
        namespace,
        pipeline_on_s3(
            s3,
            namespace,
            "churn",
            source,
            extra={"data": {"source": source, "format": "parquet", "feedback": {"enabled": True}}},
        ),
    )

    mv = wait_for(
        "ModelVersion churn-v1",
        lambda: get(cluster, namespace, "modelversion", "churn-v1"),
        timeout=240,
        on_timeout=lambda: json.dumps(status(cluster, namespace, "churn"), indent=1),
    )
    artifact = mv["spec"]["artifact"]
    root = f"{s3.store_root}/{namespace}/churn"
    assert artifact["uri"] == f"{root}/v1/model.skops"
    assert artifact["digest"] == sha256_of(fs, artifact["uri"])
    # The version's objects are the four files, and no temporary key is left anywhere under the pipeline.
    assert [k.rsplit("/", 1)[1] for k in keys_under(fs, f"{root}/v1/")] == sorted(ARTIFACT_FILES)
    assert not [k for k in keys_under(fs, root) if "tmp" in k], keys_under(fs, root)

    [job] = jobs(cluster, namespace, "churn")
    pod = job["spec"]["template"]["spec"]
    assert not [v for v in pod.get("volumes") or [] if "persistentVolumeClaim" in v], pod.get("volumes")
    env = {e["name"]: e for c in pod["containers"] for e in c.get("env") or []}
    assert env["AWS_ENDPOINT_URL"]["value"] == s3.endpoint
    for key in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"):
        assert env[key]["valueFrom"]["secretKeyRef"] == {"name": SECRET, "key": key, "optional": False}

    apply(cluster, namespace, rollout_on_s3(s3, namespace, "churn"))
    wait_for(
        "churn-v1 served",
        lambda: (
            rollout_status(cluster, namespace, "churn").get("stableVersion") == "churn-v1"
            and rollout_status(cluster, namespace, "churn").get("phase") == "Healthy"
        ),
        timeout=180,
        on_timeout=lambda: json.dumps(rollout_status(cluster, namespace, "churn"), indent=1),
    )
    traffic = classification_frame(150, seed=11)
    answered, labelled = infer_and_label(service_url(cluster, namespace, "churn"), "churn", traffic, FEATURES)
    assert answered == labelled == len(traffic)

    predictions = wait_for(
        "every prediction logged in s3",
        lambda: len(rows := jsonl_rows(fs, f"{root}/predictions/churn-v1/")) >= answered and rows,
        timeout=60,
    )
    assert len(predictions) == answered
    feedback = wait_for(
        "every label logged in s3",
        lambda: len(rows := jsonl_rows(fs, f"{root}/feedback/")) >= labelled and rows,
        timeout=60,
    )
    assert len(feedback) == labelled
    assert {row["id"] for row in feedback} <= {row["id"] for row in predictions}

    cluster.kubectl(
        "annotate", "trainingpipeline", "churn", "-n", namespace, "noria.dev/retrain=after-traffic"
    )
    mv2 = wait_for(
        "ModelVersion churn-v2",
        lambda: get(cluster, namespace, "modelversion", "churn-v2"),
        timeout=240,
        on_timeout=lambda: json.dumps(status(cluster, namespace, "churn"), indent=1),
    )
    assert mv2["spec"]["artifact"]["digest"] == sha256_of(fs, f"{root}/v2/model.skops")
    report = json.loads(fs.cat(f"{root}/v2/report.json"))
    assert report["feedback"]["inWindow"] == labelled, report["feedback"]

    leaks = secret_leaks(cluster, namespace, s3.secret_access_key, operator.log())
    assert not leaks, f"the secret access key appears in: {leaks}"


def test_a_wrong_secret_fails_the_run_saying_access_was_refused_without_the_key(
    cluster, namespace, s3, operator_factory
):
    fs = filesystem(s3)
    wrong = {**s3.secret_data(), "AWS_SECRET_ACCESS_KEY": "not-the-key-" + "x" * 28}
    create_secret(cluster, namespace, wrong)
    source = write_data(fs, s3, namespace, "denied", classification_frame(300))
    operator = operator_factory(namespace, **operator_env(s3))
    apply(cluster, namespace, pipeline_on_s3(s3, namespace, "denied", source))

    st = wait_for(
        "Degraded",
        lambda: (
            condition(s := status(cluster, namespace, "denied"), "Degraded").get("status") == "True" and s
        ),
        timeout=240,
    )
    message = condition(st, "Degraded")["message"]
    assert any(
        word in message for word in ("SignatureDoesNotMatch", "AccessDenied", "Forbidden", "credentials")
    ), message
    assert source.rstrip("/") in message or "s3://" in message, message  # it names what could not be read
    assert get(cluster, namespace, "modelversions") == []
    leaks = secret_leaks(cluster, namespace, wrong["AWS_SECRET_ACCESS_KEY"], operator.log())
    assert not leaks, f"the secret access key appears in: {leaks}"
