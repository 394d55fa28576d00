"""Traffic with delayed labels, the counterfactual score and the report, against a small OIP v2
HTTP server in the test process serving a real scikit-learn model saved and loaded the Noria way."""

from __future__ import annotations

import datetime as dt
import json
import struct

import numpy as np
import pandas as pd
import pytest
from aiohttp import web
from noria.artifact import dumps_model, sha256_digest
from noria.profile import build_profile
from noria_testbed.demo import dataset as D
from noria_testbed.demo import report, scoring, traffic
from noria_testbed.demo.timeline import Timeline, read_timeline

START = dt.datetime(2026, 1, 1, tzinfo=dt.UTC)


def _train(world: D.World, seed: int):
    from sklearn.compose import ColumnTransformer
    from sklearn.ensemble import HistGradientBoostingClassifier
    from sklearn.pipeline import Pipeline
    from sklearn.preprocessing import OneHotEncoder

    frame = D.generate(3000, world, np.random.default_rng(seed), START, START + dt.timedelta(days=30))
    prepare = ColumnTransformer([("numeric", "passthrough", list(D.NUMERIC_FEATURES)),
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


def _oip_app(model, version: str, feedback: list[dict], fail_every: int = 0) -> web.Application:
    seen = {"n": 0}

    async def infer(request: web.Request) -> web.Response:
        body = await request.json()
        seen["n"] += 1
        if fail_every and seen["n"] % fail_every == 0:
            return web.json_response({"error": "boom"}, status=503)
        row = {i["name"]: i["data"][0] for i in body["inputs"]}
        prediction = int(model.predict(pd.DataFrame([row]))[0])
        return web.json_response({"id": body["id"], "model_name": "churn", "model_version": version,
                                  "outputs": [{"name": "predict", "shape": [1], "datatype": "INT64",
                                               "data": [prediction]}]})

    async def label(request: web.Request) -> web.Response:
        feedback.append({**(await request.json()), "header": request.headers.get(traffic.VERSION_HEADER)})
        return web.json_response({"accepted": True})

    app = web.Application()
    app.router.add_post("/v2/models/churn/infer", infer)
    app.router.add_post("/v2/models/churn/feedback", label)
    return app


async def _serve(app: web.Application) -> tuple[web.AppRunner, str]:
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    return runner, f"http://127.0.0.1:{port}"


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
    feedback: list[dict] = []
    runner, url = await _serve(_oip_app(models["v2"], "churn-v2", feedback, fail_every=50))
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
        await runner.cleanup()

    records = list(read_timeline(path))
    requests = [r for r in records if r["kind"] == "request"]
    labels = [r for r in records if r["kind"] == "feedback"]
    assert 250 <= len(requests) <= 330, len(requests)
    failed = [r for r in requests if r["status"] != 200]
    assert failed and all(r["status"] == 503 for r in failed)  # failures are recorded, not hidden
    answered = {r["id"]: r for r in requests if r["status"] == 200}
    assert {f["id"] for f in feedback} == set(answered)  # one label per answer, none for failures
    assert all(f["header"] == "churn-v2" for f in feedback)
    for record in labels:  # each label went out after its answer, by about the delay
        assert record["ts"] - answered[record["id"]]["ts"] >= 0.3
        assert record["label"] == answered[record["id"]]["label"] and record["status"] == 200

    v1 = scoring.load_model(models["v1_uri"], models["v1_digest"])
    frame = traffic.requests_frame(records)
    served = scoring.score(frame["label"], frame["prediction"])
    counterfactual = scoring.score(frame["label"], scoring.predict_rows(v1, frame))
    assert served.accuracy > 0.8 and counterfactual.accuracy < 0.7, (served, counterfactual)

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
    drift = scoring.drift_over_time(frame, models["profile"], 1.0)
    assert (drift["psi"] > 0.2).all()  # drifted traffic against the reference profile


def test_report_refuses_an_empty_timeline(tmp_path) -> None:
    (tmp_path / "t.jsonl").write_text("")
    with pytest.raises(ValueError, match="no records"):
        report.write_report(tmp_path / "r", report.ReportInput(timeline=tmp_path / "t.jsonl"))
