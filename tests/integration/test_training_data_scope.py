"""A TrainingPipeline whose data source lies in another namespace's part of the store, against the
real control plane with the real operator and trainer: the red-team case (a pipeline training on
another tenant's logged production data) starts no Job, the pipeline is Degraded naming
spec.data.source with one Warning Event, and once the source is moved to the shared datasets/
folder the run starts and registers a version."""

from __future__ import annotations

import json

import pytest
from noria import conditions as c
from training_helpers import (
    POD_STORE,
    classification_frame,
    condition,
    get,
    jobs,
    pipeline_yaml,
    settle,
    status,
    wait_for,
    write_data,
)

pytestmark = pytest.mark.integration


def test_a_source_in_another_namespace_starts_no_run_until_it_is_moved(
        cluster, namespace, store_claim, operator_factory):
    store_claim(namespace)
    victim = f"{namespace}-victim"
    logged = cluster.store_dir / victim / "churn" / "exports"
    logged.mkdir(parents=True)
    classification_frame(600).to_parquet(logged / "part-0.parquet", index=False)  # real, readable data
    stolen = f"file://{POD_STORE}/{victim}/churn/exports/"
    operator_factory(namespace)
    cluster.kubectl("apply", "-n", namespace, "-f", "-", input=pipeline_yaml("churn", stolen))

    degraded = wait_for("Degraded DataSourceOutOfScope", lambda: (
        (d := condition(status(cluster, namespace, "churn"), c.DEGRADED)).get("reason") == c.DATA_SOURCE_OUT_OF_SCOPE
        and d), timeout=60)
    assert degraded["status"] == c.TRUE
    assert degraded["message"].startswith(f"spec.data.source '{stolen}' is outside namespace {namespace}'s store")
    assert status(cluster, namespace, "churn")["phase"] == "Degraded"
    settle(8)  # several passes: still no Job, and one Event
    assert jobs(cluster, namespace, "churn") == []
    events = [e for e in get(cluster, namespace, "events") or [] if e.get("reason") == c.DATA_SOURCE_OUT_OF_SCOPE]
    assert len(events) == 1 and events[0]["type"] == "Warning" and events[0].get("count", 1) == 1, events
    assert "spec.data.source" in events[0]["message"]

    shared = write_data(cluster.store_dir, namespace, "churn", classification_frame(600))
    patch = {"spec": {"data": {"source": shared}}}
    cluster.kubectl("patch", "trainingpipeline", "churn", "-n", namespace, "--type=merge", "-p", json.dumps(patch))
    wait_for("ModelVersion churn-v1", lambda: get(cluster, namespace, "modelversion", "churn-v1"), timeout=180)
    cleared = condition(status(cluster, namespace, "churn"), c.DEGRADED)
    assert cleared["status"] == c.FALSE
