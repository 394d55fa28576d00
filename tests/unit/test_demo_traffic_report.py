"""Traffic with delayed labels, the counterfactual score and the report, against a small OIP v2
HTTP server in the test process serving a real scikit-learn model saved and loaded the Noria way."""

from __future__ import annotations

import datetime as dt
import json
import struct

import numpy as np
import pandas as pd
import pytest
from noria.artifact import dumps_model, sha256_digest
from noria.profile import build_profile
from noria_testbed.demo import dataset as D
from noria_testbed.demo import report, scoring, traffic
from noria_testbed.demo.timeline import Timeline, read_timeline

START = dt.datetime(2026, 1, 1, tzinfo=dt.UTC)


def _train(world: D.World, seed: int):
    from sklearn.compose import ColumnTransformer
    from sklearn.ensemble import HistGradientBoostingClassifier
    from sklearn.impute import SimpleImputer
    from sklearn.pipeline import Pipeline
    from sklearn.preprocessing import OneHotEncoder

    frame = D.generate(3000, world, np.random.default_rng(seed), START, START + dt.timedelta(days=30))
    # built from the trainer's pieces: the loader trusts exactly what the trainer writes (noria.trusted_types)
    prepare = ColumnTransformer([("numeric", SimpleImputer(strategy="median"), list(D.NUMERIC_FEATURES)),
                                 ("categorical", OneHotEncoder(handle_unknown="ignore"), list(D.CATEGORICAL_FEATURES))],
                                sparse_threshold=0.0)
    model = Pipeline([("prepare", prepare), ("model", HistGradientBoostingClassifier(max_iter=60, random_state=0))])
    model.fit(frame[list(D.FEATURES)], frame[D.TARGET])
    return model, frame


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    """v1 (reference world) saved as a skops artifact with its digest and profile; v2 (drifted world)."""
    folder = tmp_path_factory.mktemp("store")
    v1, frame = _train(D.REFERENCE_WORLD, 1)
    data, _ = dumps_model(v1)
    (folder / "model.skops").write_bytes(data)
    profile = build_profile({n: frame[n].to_numpy() if n in D.NUMERIC_FEATURES else frame[n].tolist()
                             for n in D.FEATURES},
                            {n: "numeric" if n in D.NUMERIC_FEATURES else "categorical" for n in D.FEATURES})
    v2, _ = _train(D.DRIFTED_WORLD, 2)
    return {"v1_uri": f"file://{folder}/model.skops", "v1_digest": sha256_digest(data), "profile": profile,
            "v2": v2}


class _OipServer:
    """An OIP v2 endpoint in a thread of the test process (its own threads, so the model's work
    never stalls the generator's event loop): infer with a real model, feedback recorded."""

    def __init__(self, model, version: str, fail_every: int = 0) -> None:
        import threading
        from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

        self.feedback: list[dict] = []
        lock = threading.Lock()
        seen = {"n": 0}
        outer = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args) -> None:
                pass

            def _send(self, status: int, payload: dict) -> None:
                body = json.dumps(payload).encode()
                self.send_response(status)
                self.send_header("content-type", "application/json")
                self.send_header("content-length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def do_POST(self) -> None:
                body = json.loads(self.rfile.read(int(self.headers["content-length"])))
                if self.path.endswith("/feedback"):
                    with lock:
                        outer.feedback.append({**body, "header": self.headers.get(traffic.VERSION_HEADER)})
                    return self._send(200, {"accepted": True})
                with lock:
                    seen["n"] += 1
                    fail = bool(fail_every) and seen["n"] % fail_every == 0
                if fail:
                    return self._send(503, {"error": "boom"})
                row = {i["name"]: i["data"][0] for i in body["inputs"]}
                prediction = int(model.predict(pd.DataFrame([row]))[0])
                self._send(200, {"id": body["id"], "model_name": "churn", "model_version": version,
                                 "outputs": [{"name": "predict", "shape": [1], "datatype": "INT64",
                                              "data": [prediction]}]})

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


def test_infer_request_has_one_typed_input_per_feature() -> None:
    row = D.feature_row(D.generate(1, D.REFERENCE_WORLD, np.random.default_rng(0), START,
                                   START + dt.timedelta(days=1)), 0)
    body = traffic.infer_request(row, "r-1")
    assert body["id"] == "r-1"
    assert [i["name"] for i in body["inputs"]] == list(D.FEATURES)
    kinds = {i["name"]: i["datatype"] for i in body["inputs"]}
    assert kinds["contract"] == "BYTES" and kinds["tenure_months"] == "FP64"
    json.dumps(body)


@pytest.mark.parametrize(
    ("body", "expected"),
    [
        ({"id": "a", "model_version": "churn-v2", "outputs": [{"name": "predict", "data": [1]}]},
         traffic.Answer("a", "churn-v2", 1)),
        ({"id": "b", "model_version": "churn-v1",
          "outputs": [{"name": "probabilities", "data": [0.2, 0.8]}, {"name": "label", "data": ["0"]}]},
         traffic.Answer("b", "churn-v1", 0)),
        ({"id": "c", "outputs": []}, traffic.Answer("c", None, None)),
    ],
)
def test_infer_response_parsing(body, expected) -> None:
    assert traffic.parse_infer_response(body) == expected


def test_version_comes_from_the_header_when_the_body_lacks_it() -> None:
    answer = traffic.parse_infer_response({"id": "x", "outputs": [{"name": "predict", "data": [1]}]},
                                          {traffic.VERSION_HEADER: "churn-v3"})
    assert answer.version == "churn-v3"


def test_ready_endpoints_skip_unready_and_portless_slices() -> None:
    slices = [
        {"ports": [{"name": "http", "port": 8080}],
         "endpoints": [{"addresses": ["127.0.0.5"], "conditions": {"ready": True}},
                       {"addresses": ["127.0.0.6"], "conditions": {"ready": False}},
                       {"addresses": ["127.0.0.7"]}]},
        {"ports": [{"name": "metrics", "port": 9090}], "endpoints": [{"addresses": ["127.0.0.8"]}]},
    ]
    assert traffic.ready_endpoints(slices) == ["http://127.0.0.5:8080", "http://127.0.0.7:8080"]


def test_score_counts_only_known_pairs() -> None:
    s = scoring.score(np.array([1, 0, 1, 1]), np.array([1, 0, 0, np.nan]))
    assert s.n == 3 and s.accuracy == pytest.approx(2 / 3) and s.f1 == pytest.approx(2 / 3)
    assert scoring.score(np.array([]), np.array([])).accuracy is None


async def test_traffic_records_answers_and_sends_labels_later_then_the_report_draws_it(tmp_path, models) -> None:
    server = _OipServer(models["v2"], "churn-v2", fail_every=25)
    feedback, url = server.feedback, server.url
    path = tmp_path / "timeline.jsonl"
    try:
        with Timeline(path) as timeline:
            timeline.write("act", act="drift", message="the world changed")
            gen = traffic.TrafficGenerator(traffic.UrlTarget(url), "churn", timeline, rate=80, label_delay=0.3,
                                           world=D.DRIFTED_WORLD, phase="drifted", seed=3)
            await gen.run(duration=4.0)
            timeline.write("observation", what="weights", weights={"churn-v1": 0, "churn-v2": 100})
            timeline.write("observation", what="drift", value="0.41", threshold="0.2")
    finally:
        server.close()

    records = list(read_timeline(path))
    requests = [r for r in records if r["kind"] == "request"]
    labels = [r for r in records if r["kind"] == "feedback"]
    # the rate is a ceiling (a loaded machine may answer slower), and the loop must not stall
    assert 30 <= len(requests) <= 330, len(requests)
    failed = [r for r in requests if r["status"] != 200]
    assert failed and all(r["status"] == 503 for r in failed)  # failures are recorded, not hidden
    answered = {r["id"]: r for r in requests if r["status"] == 200}
    assert {f["id"] for f in feedback} == set(answered)  # one label per answer, none for failures
    assert all(f["header"] is None for f in feedback)  # unpinned: the router fans labels out
    for record in labels:  # each label went out after its answer, by about the delay
        assert record["ts"] - answered[record["id"]]["ts"] >= 0.3
        assert record["label"] == answered[record["id"]]["label"] and record["status"] == 200

    v1 = scoring.load_model(models["v1_uri"], models["v1_digest"])
    frame = traffic.requests_frame(records)
    served = scoring.score(frame["label"], frame["prediction"])
    counterfactual = scoring.score(frame["label"], scoring.predict_rows(v1, frame))
    assert served.accuracy - counterfactual.accuracy > 0.15, (served, counterfactual)

    page = report.write_report(tmp_path / "report", report.ReportInput(
        timeline=path, counterfactual_model=v1, reference_profile=models["profile"], drift_threshold=0.2,
        events=[report.Event(requests[0]["ts"], "Rollout/churn", "Healthy", "churn-v2 at 100%")],
        summary={"accuracy after recovery": f"{served.accuracy:.3f}"}, bucket_seconds=1.0))
    text = page.read_text()
    assert "churn-v2 at 100%" in text and "accuracy after recovery" in text
    for name in ("accuracy.png", "drift.png", "traffic.png"):
        png = (tmp_path / "report" / name).read_bytes()
        assert png[:8] == b"\x89PNG\r\n\x1a\n"
        width, height = struct.unpack(">II", png[16:24])
        assert width > 600 and height > 200
    drift = scoring.drift_over_time(frame, models["profile"], 60.0, min_n=20)
    assert len(drift) == 1 and drift["psi"].iloc[0] > 0.2  # drifted traffic against the reference profile
    assert scoring.drift_over_time(frame, models["profile"], 60.0, min_n=10_000).empty  # too few inputs


def test_report_refuses_an_empty_timeline(tmp_path) -> None:
    (tmp_path / "t.jsonl").write_text("")
    with pytest.raises(ValueError, match="no records"):
        report.write_report(tmp_path / "r", report.ReportInput(timeline=tmp_path / "t.jsonl"))


def test_ready_pod_endpoints_resolve_named_target_ports_and_skip_unready_pods() -> None:
    service = {"spec": {"selector": {"app": "r"}, "ports": [{"name": "http", "port": 80, "targetPort": "http"}]}}

    def pod(ip, ready=True, deleting=False):
        return {"metadata": {"deletionTimestamp": "x"} if deleting else {},
                "spec": {"containers": [{"ports": [{"name": "http", "containerPort": 8080}]}]},
                "status": {"podIP": ip, "conditions": [{"type": "Ready", "status": "True" if ready else "False"}]}}

    pods = [pod("127.0.0.2"), pod("127.0.0.3", ready=False), pod("127.0.0.4", deleting=True), pod(None)]
    assert traffic.ready_pod_endpoints(service, pods) == ["http://127.0.0.2:8080"]
    numeric = {"spec": {"ports": [{"name": "http", "port": 80, "targetPort": 9000}]}}
    assert traffic.ready_pod_endpoints(numeric, [pod("127.0.0.9")]) == ["http://127.0.0.9:9000"]
