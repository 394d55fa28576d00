"""The closed loop on Feast, on the test bed's control plane (issue 18 item 4): Feast as the training
source, the online lookup and the feedback sink, once end to end.

A TrainingPipeline trains churn-v1 from the example repository (examples/feast-churn, applied into the
namespace's store folder; the trainer pod joins Feast's features); a Rollout serves it with
``spec.onlineFeatures.feast`` (the operator passes it to the model-server pod the node agent runs, which
asks the test bed's ``feast serve`` over Redis); requests through the Rollout's Service carry only
``customer_id`` and are answered with the model's own predictions on the features Feast holds, which the
drift counters count; a key the store never saw is a 404 naming it; labels are sent for the requests,
the feedback sink puts the rows into Feast, a retrain by hand builds its training set with them, and
churn-v2 is registered and rolled out (docs/training-feast.md, "The closed loop on Feast")."""

from __future__ import annotations

import json
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

import httpx
import numpy as np
import pandas as pd
import pytest
import yaml
from feast_helpers import EXAMPLE, apply_repository, feast_python
from noria import metrics as m
from noria.artifact import load_verified
from noria.profile import Profile
from noria_server import oip
from rollout_helpers import rollout_status, service_url
from training_helpers import POD_STORE, get, jobs, status, wait_for
from unavailable import unavailable

pytestmark = pytest.mark.integration

FEATURES = ["tenure_months", "monthly_charges", "support_calls"]
UNKNOWN = 987654  # a customer the feature source never had
CUSTOMERS = 120  # in the example's data: keys 0..119
SERVED_KEYS = list(range(0, 40))  # the customers of the loop's requests
BATCH = 8  # rows (customers) a request
PUSH_SOURCE = "churn_feedback"  # examples/feast-churn/features.py: a PushSource into data/churn_feedback.parquet
ENV = {"NORIA_ROUTER_BACKEND_URLS": "clusterIP",  # the test bed has no EndpointSlices
       "NORIA_ROLLOUT_INTERVAL_SECONDS": "0.5"}


@pytest.fixture(scope="module")
def redis(cluster):  # noqa: ANN001, ANN201 - the test bed's Redis (LocalTestbed.start_redis), Feast's online store
    from noria_testbed.binaries import RedisUnavailable

    try:
        return cluster.start_redis()
    except RedisUnavailable as error:
        unavailable(str(error))


def serve_features(repository: Path, redis, log_dir: Path):  # noqa: ANN001, ANN201
    """``feast materialize`` of everything in the repository's source into Redis, then ``feast serve``."""
    from noria_testbed.feast_server import FeastFeatureServer, materialize

    materialize(repository, datetime(2000, 1, 1, tzinfo=UTC), datetime.now(UTC) + timedelta(minutes=1),
                redis_connection=redis.feast_connection_string())
    server = FeastFeatureServer(repository=repository, redis_connection=redis.feast_connection_string(),
                                log_path=log_dir / "feast-serve.log")
    return server.start()


def pipeline(repository: str) -> str:
    return json.dumps({
        "apiVersion": "noria.dev/v1alpha1", "kind": "TrainingPipeline", "metadata": {"name": "churn"},
        "spec": {"model": {"task": "classification", "estimator": "sklearn.linear_model.LogisticRegression",
                           "params": {"max_iter": 500}, "target": "churned"},
                 "data": {"source": f"{repository}/labels.parquet", "timestampColumn": "label_time",
                          "feast": {"repository": repository, "featureService": "churn_v1",
                                    "feedbackPushSource": PUSH_SOURCE}},
                 "evaluation": {"metric": "accuracy"}},
    })


def rollout(feast_url: str) -> str:
    """examples/feast-churn/rollout.yaml's onlineFeatures at this feature server, for pipeline churn,
    served at once (immediate) instead of through its canary."""
    example = yaml.safe_load((EXAMPLE / "rollout.yaml").read_text())
    feast = example["spec"]["onlineFeatures"]["feast"]
    assert feast["feedbackPushSource"] == PUSH_SOURCE and feast["entityKeys"] == ["customer_id"], feast
    # 2 s, not the example's 100 ms: feast serve shares two loaded cores with the whole test bed.
    feast.update(url=feast_url, timeout="2s")
    return json.dumps({
        "apiVersion": example["apiVersion"], "kind": "Rollout", "metadata": {"name": "churn"},
        "spec": {"source": {"pipeline": "churn"}, "replicas": 1, "strategy": {"immediate": {}},
                 "scaleDownDelay": "3s", "onlineFeatures": {"feast": feast}},
    })


def newest(repository: Path) -> pd.DataFrame:
    """The newest row of each customer in the feature source: what materialize put into Redis."""
    stats = pd.read_parquet(repository / "data" / "customer_stats.parquet")
    return stats.sort_values("event_timestamp").groupby("customer_id").tail(1).set_index("customer_id")


def keys_request(keys: list[int]) -> dict:
    return {"inputs": [{"name": "customer_id", "shape": [len(keys)], "datatype": "INT64", "data": keys}]}


def served(cluster, namespace: str, version: str) -> bool:  # noqa: ANN001
    st = rollout_status(cluster, namespace, "churn")
    return st.get("stableVersion") == version and st.get("phase") == "Healthy"


def bin_counts(metrics_text: str, version: str) -> dict[tuple[str, str], float]:
    """noria_feature_bin_total of one version by (feature, bin)."""
    from prometheus_client.parser import text_string_to_metric_families

    out = {}
    for family in text_string_to_metric_families(metrics_text):
        for sample in family.samples:
            if sample.name == m.FEATURE_BIN_TOTAL and sample.labels.get(m.LABEL_VERSION) == version:
                out[(sample.labels[m.LABEL_FEATURE], sample.labels[m.LABEL_BIN])] = sample.value
    return out


def test_closed_loop_on_feast_source_lookup_and_sink(cluster, namespace, store_claim, operator_factory,  # noqa: ANN001
                                                     redis, tmp_path: Path) -> None:
    started = time.monotonic()
    timeline: list[str] = []

    def mark(what: str) -> None:
        timeline.append(f"{time.monotonic() - started:6.1f}s {what}")
        print(timeline[-1], flush=True)

    feast_python()
    store_claim(namespace)
    folder = apply_repository(cluster.store_dir / "datasets" / namespace / "feast-churn", customers=CUSTOMERS)
    repository = f"file://{POD_STORE}/datasets/{namespace}/feast-churn"
    mark("feast apply")
    operator_factory(namespace, **ENV)
    cluster.kubectl("apply", "-n", namespace, "-f", "-", input=pipeline(repository))
    # While the trainer pod trains v1: the online store and its feature server.
    features = serve_features(folder, redis, tmp_path)
    mark(f"feast materialize + serve at {features.url}")

    mv1 = wait_for("ModelVersion churn-v1", lambda: get(cluster, namespace, "modelversion", "churn-v1"),
                   timeout=300, on_timeout=lambda: json.dumps(status(cluster, namespace, "churn"), indent=1))
    lineage = mv1["spec"]["lineage"]["data"]["feast"]
    assert lineage["repository"] == repository and lineage["featureService"] == "churn_v1", lineage
    assert lineage["definitionsDigest"].startswith("sha256:") and len(lineage["definitionsDigest"]) == 71
    [job] = jobs(cluster, namespace, "churn")  # the run went to the Feast image (the node agent: .venv-feast)
    [trainer] = job["spec"]["template"]["spec"]["containers"]
    assert trainer["image"].rsplit("/", 1)[-1].startswith("noria-trainer-feast:"), trainer["image"]
    mark("churn-v1 registered")

    cluster.kubectl("apply", "-n", namespace, "-f", "-", input=rollout(features.url))
    wait_for("churn-v1 served", lambda: served(cluster, namespace, "churn-v1"), timeout=180,
             on_timeout=lambda: json.dumps(rollout_status(cluster, namespace, "churn"), indent=1))
    mark("churn-v1 served")
    [deployment] = [d for d in get(cluster, namespace, "deployments") if d["metadata"]["name"] == "churn-churn-v1"]
    [container] = deployment["spec"]["template"]["spec"]["containers"]
    env = {e["name"]: e.get("value") for e in container.get("env") or []}
    assert env["NORIA_FEAST_URL"] == features.url and env["NORIA_FEAST_FEATURE_SERVICE"] == "churn_v1", env
    assert env["NORIA_FEAST_FEEDBACK_PUSH_SOURCE"] == PUSH_SOURCE, env

    # Requests of keys only, through the Rollout's Service (its router) to the pod the node agent runs.
    url = service_url(cluster, namespace, "churn")
    artifact = mv1["spec"]["artifact"]
    model = load_verified(f"file://{cluster.store_dir}/{artifact['uri'][len(f'file://{POD_STORE}/'):]}",
                          artifact["digest"])
    stored = newest(folder)
    expected = model.predict(stored.loc[SERVED_KEYS, list(model.feature_names_in_)])
    ids: list[str] = []
    with httpx.Client(timeout=30) as client:
        for start in range(0, len(SERVED_KEYS), BATCH):  # a few rows a request: one lookup of their keys
            keys = SERVED_KEYS[start:start + BATCH]
            answer = client.post(f"{url}/v2/models/churn/infer", json=keys_request(keys))
            assert answer.status_code == 200, answer.text
            body = answer.json()
            assert body["model_version"] == "churn-v1"
            assert body["outputs"][0]["data"] == expected[start:start + BATCH].tolist(), (keys, body)
            ids += oip.row_ids(body)
        assert len(set(ids)) == len(SERVED_KEYS)
        mark(f"{len(SERVED_KEYS)} rows of keys answered")

        # A key the store never saw: 404 through the router, naming the key and the features.
        unknown = client.post(f"{url}/v2/models/churn/infer", json=keys_request([UNKNOWN]))
        assert unknown.status_code == 404, unknown.text
        assert f"customer_id={UNKNOWN}" in unknown.json()["error"]
        assert all(f in unknown.json()["error"] for f in FEATURES)

        # The drift counters counted the features the model received: Feast's values, binned by v1's profile.
        profile = Profile.load(f"file://{cluster.store_dir}/"
                               f"{mv1['spec']['profileUri'][len(f'file://{POD_STORE}/'):]}")
        counts = bin_counts(client.get(f"{service_url(cluster, namespace, 'churn-churn-v1')}/metrics").text,
                            "churn-v1")
        for feature in FEATURES:
            fp = profile.features[feature]
            want_counts = fp.counts(stored.loc[SERVED_KEYS, feature].to_numpy(dtype=np.float64))
            got = [counts.get((feature, label), 0.0) for label in fp.labels]
            assert got == [float(c) for c in want_counts], (feature, fp.labels, got)
    mark("drift counters checked")

    # Labels for those requests; the model server's feedback sink pushes each counted one, with the
    # features as served and the prediction, to Feast's offline store through feast serve's /push.
    labels = dict(zip(ids, (int(v) for v in stored.loc[SERVED_KEYS, "support_calls"] >= 2), strict=True))
    with httpx.Client(timeout=30) as client:
        for prediction_id, label in labels.items():
            answer = client.post(f"{url}/v2/models/churn/feedback", json={"id": prediction_id, "label": label})
            assert answer.status_code < 300, answer.text
    mark(f"{len(labels)} labels sent")
    sink = folder / "data" / f"{PUSH_SOURCE}.parquet"

    def pushed() -> list[pd.DataFrame]:  # a list: a DataFrame has no truth value for wait_for
        try:
            rows = pd.read_parquet(sink)
        except (OSError, ValueError):  # not there yet, or read while Feast rewrites it (ArrowInvalid)
            return []
        return [rows] if set(labels) <= set(rows["prediction_id"]) else []

    [rows] = wait_for("the labelled rows in Feast's offline store", pushed, timeout=60,
                    on_timeout=lambda: str(pd.read_parquet(sink) if sink.exists() else "no file"))
    rows = rows.drop_duplicates("prediction_id").set_index("prediction_id").loc[ids]
    assert len(rows) == len(SERVED_KEYS)
    assert rows["customer_id"].tolist() == SERVED_KEYS
    for feature in FEATURES:  # the features as served: Feast's online values
        assert rows[feature].tolist() == stored.loc[SERVED_KEYS, feature].astype(float).tolist(), feature
    assert rows["prediction"].tolist() == expected.tolist()
    assert rows["label"].tolist() == list(labels.values())
    assert set(rows["model_version"]) == {"churn-v1"}
    mark("rows in Feast")

    # A retrain by hand: its training set is the entity source's rows plus the pushed ones.
    cluster.kubectl("annotate", "trainingpipeline", "churn", "-n", namespace, "noria.dev/retrain=feedback")
    mv2 = wait_for("ModelVersion churn-v2", lambda: get(cluster, namespace, "modelversion", "churn-v2"),
                   timeout=300, on_timeout=lambda: json.dumps(status(cluster, namespace, "churn"), indent=1))
    mark("churn-v2 registered")
    store = cluster.store_dir / namespace / "churn"
    v1_data = json.loads((store / "v1" / "metadata.json").read_text())["data"]
    v2_data = json.loads((store / "v2" / "metadata.json").read_text())["data"]
    assert v1_data["rows"] == CUSTOMERS and v2_data["rows"] == CUSTOMERS + len(labels), (v1_data, v2_data)
    assert mv1["spec"]["lineage"]["data"]["rows"] == CUSTOMERS
    assert mv2["spec"]["lineage"]["data"]["rows"] == CUSTOMERS + len(labels), mv2["spec"]["lineage"]
    # ... of which the labelled production rows: the pushed ones (v1 had none)
    assert (v1_data["feedbackRows"], v2_data["feedbackRows"]) == (0, len(labels)), (v1_data, v2_data)
    assert mv2["spec"]["lineage"]["data"]["feedbackRows"] == len(labels), mv2["spec"]["lineage"]
    assert mv2["spec"]["lineage"]["data"]["feast"]["definitionsDigest"] == \
        mv1["spec"]["lineage"]["data"]["feast"]["definitionsDigest"]

    wait_for("churn-v2 served", lambda: served(cluster, namespace, "churn-v2"), timeout=180,
             on_timeout=lambda: json.dumps(rollout_status(cluster, namespace, "churn"), indent=1))
    artifact = mv2["spec"]["artifact"]
    model2 = load_verified(f"file://{cluster.store_dir}/{artifact['uri'][len(f'file://{POD_STORE}/'):]}",
                           artifact["digest"])
    keys = SERVED_KEYS[:5]
    with httpx.Client(timeout=30) as client:
        body = wait_for("an answer of churn-v2", lambda: (
            b := client.post(f"{url}/v2/models/churn/infer", json=keys_request(keys)).json()
        ).get("model_version") == "churn-v2" and b, timeout=60)
    assert body["outputs"][0]["data"] == model2.predict(
        stored.loc[keys, list(model2.feature_names_in_)]).tolist()
    mark("churn-v2 served and answering")
