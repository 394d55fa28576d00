"""The S3 server killed (SIGKILL, as a crash or an eviction) and started again in the middle of the
work that writes to it: nothing lost, nothing half-written.

* During a training run, between reading the data and writing the artifact: the run either
  completes or fails and is retried, and under a version's final keys there is only ever a whole
  artifact set whose model matches its ModelVersion's digest (checked through the S3 API).
* During the prediction log's flushes: every prediction a user got an answer for is in the log
  once the server is back, once each.
"""

from __future__ import annotations

import json
import threading
import time

import pytest
import s3_helpers
from noria.store import ARTIFACT_FILES, MODEL_FILE
from rollout_helpers import rollout_status, service_url
from s3_helpers import (
    FEATURES,
    apply,
    create_secret,
    filesystem,
    infer_and_label,
    jsonl_rows,
    keys_under,
    operator_env,
    pipeline_on_s3,
    rollout_on_s3,
    sha256_of,
    wait_for_stage,
    write_data,
)
from training_helpers import classification_frame, get, model_versions, status, wait_for

pytestmark = pytest.mark.integration
s3 = s3_helpers.s3  # the fixture: the test bed's S3 server

OUTAGE_SECONDS = 20.0  # longer than botocore's own retries of a refused connection
# A run long enough for the server to go down after the data is read and before the artifact is written.
TUNING = {"strategy": "random", "trials": 20, "space": {"C": [0.01, 10.0]}}


def final_artifact_sets(fs, root: str) -> dict[str, list[str]]:  # noqa: ANN001
    """``v<N>`` -> the names of the objects directly under it (hidden temporary prefixes excluded)."""
    sets: dict[str, list[str]] = {}
    for key in keys_under(fs, root):
        relative = key.split(f"{root.removeprefix('s3://')}/", 1)[1]
        parts = relative.split("/")
        if len(parts) == 2 and parts[0].startswith("v") and parts[0][1:].isdigit():
            sets.setdefault(parts[0], []).append(parts[1])
    return {version: sorted(names) for version, names in sets.items()}


def test_s3_killed_during_a_training_run_leaves_no_half_written_artifact_and_the_run_completes(
    cluster, namespace, s3, operator_factory
):
    fs = filesystem(s3)
    create_secret(cluster, namespace, s3.secret_data())
    source = write_data(fs, s3, namespace, "crash", classification_frame(600))
    # A run that fails on the outage (after the Job's own pod retries) is started again 3 s later.
    operator_factory(namespace, **operator_env(s3), NORIA_INITIAL_RETRY_SECONDS="3")
    apply(cluster, namespace, pipeline_on_s3(s3, namespace, "crash", source, extra={"tuning": TUNING}))

    pod = wait_for_stage(cluster, namespace, "tuning")  # the data is read; the artifact not yet written
    s3.kill()
    began = time.monotonic()
    try:
        # Down until the trainer has tried to write (and then some), or the outage's length.
        while time.monotonic() - began < OUTAGE_SECONDS:
            if '"stage": "write", ' in cluster.node_agent.pod_log(namespace, pod):
                time.sleep(5)
                break
            time.sleep(0.2)
    finally:
        s3.start()

    mv = wait_for(
        "ModelVersion crash-v1 after the outage",
        lambda: get(cluster, namespace, "modelversion", "crash-v1"),
        timeout=300,
        on_timeout=lambda: json.dumps(status(cluster, namespace, "crash"), indent=1),
    )
    root = f"{s3.store_root}/{namespace}/crash"
    assert mv["spec"]["artifact"]["digest"] == sha256_of(fs, mv["spec"]["artifact"]["uri"])
    registered = {
        m["spec"]["artifact"]["uri"]: m["spec"]["artifact"]["digest"]
        for m in model_versions(cluster, namespace)
    }
    for version, names in final_artifact_sets(fs, root).items():
        assert names == sorted(ARTIFACT_FILES), f"{version} is incomplete under its final keys: {names}"
        model = f"{root}/{version}/{MODEL_FILE}"
        assert registered.get(model) == sha256_of(fs, model), f"{model} is not the registered artifact"
    assert len(registered) == 1, registered


def test_s3_killed_during_prediction_log_flushes_loses_no_prediction(
    cluster, namespace, s3, operator_factory
):
    fs = filesystem(s3)
    create_secret(cluster, namespace, s3.secret_data())
    source = write_data(fs, s3, namespace, "flush", classification_frame(600))
    operator_factory(namespace, **operator_env(s3), NORIA_ROUTER_BACKEND_URLS="clusterIP")
    apply(cluster, namespace, pipeline_on_s3(s3, namespace, "flush", source))
    wait_for(
        "ModelVersion flush-v1",
        lambda: get(cluster, namespace, "modelversion", "flush-v1"),
        timeout=240,
        on_timeout=lambda: json.dumps(status(cluster, namespace, "flush"), indent=1),
    )
    apply(cluster, namespace, rollout_on_s3(s3, namespace, "flush"))
    wait_for(
        "flush-v1 served",
        lambda: rollout_status(cluster, namespace, "flush").get("phase") == "Healthy",
        timeout=180,
        on_timeout=lambda: json.dumps(rollout_status(cluster, namespace, "flush"), indent=1),
    )
    url = service_url(cluster, namespace, "flush")

    counts: list[tuple[int, int]] = []
    rows = classification_frame(400, seed=5)
    sender = threading.Thread(target=lambda: counts.append(infer_and_label(url, "flush", rows, FEATURES)))
    sender.start()
    time.sleep(3)  # several flushes have happened (every 0.5 s), more are due
    s3.kill()
    time.sleep(8)  # the writer's flushes fail meanwhile; requests go on
    s3.start()
    sender.join(120)
    assert counts, "the traffic thread did not finish"
    answered, _ = counts[0]
    assert answered == len(rows)

    prefix = f"{s3.store_root}/{namespace}/flush/predictions/flush-v1/"
    logged = wait_for(
        "every answered prediction in the log",
        lambda: len(r := jsonl_rows(fs, prefix)) >= answered and r,
        timeout=90,
        on_timeout=lambda: f"{len(jsonl_rows(fs, prefix))} of {answered} logged",
    )
    ids = [row["id"] for row in logged]
    assert len(ids) == len(set(ids)) == answered, (
        f"{len(ids)} rows, {len(set(ids))} distinct, {answered} answered"
    )
