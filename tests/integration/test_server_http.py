"""The model server as a real process over real HTTP, serving real trained models.

Given models trained and saved the trainer's way (skops + digest + drift profile), when they are
served by ``python -m noria_server serve``, then OIP v2 predictions equal the model's own
``predict``, feedback moves the confusion counters, ``/metrics`` exposes every metric of
docs/architecture.md §6, malformed requests get a 4xx that says what is wrong, and the prediction log
holds one line per prediction.
"""

from __future__ import annotations

import concurrent.futures
import datetime as dt
import json
import signal
import time
import urllib.error
import urllib.request
from typing import Any

import numpy as np
import pytest
from noria import metrics as m
from noria_server import launch, oip
from noria_server.reference_models import SavedModel, dataset, train_and_save

KINDS = ("logistic", "hgb", "regressor", "mixed")


def post(url: str, payload: Any, headers: dict[str, str] | None = None, raw: bytes | None = None,
         method: str = "POST") -> tuple[int, dict[str, Any]]:
    data = raw if raw is not None else json.dumps(payload).encode()
    req = urllib.request.Request(url, data=data, method=method,
                                 headers={"content-type": "application/json", **(headers or {})})
    try:
        with urllib.request.urlopen(req, timeout=10) as resp:
            return resp.status, json.loads(resp.read())
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read() or b"{}")


def metric_lines(url: str) -> list[str]:
    status, body = launch.get(url + "/metrics")
    assert status == 200
    return [line for line in body.decode().splitlines() if line and not line.startswith("#")]


def metric_value(lines: list[str], name: str, **labels: str) -> float:
    total = 0.0
    for line in lines:
        if not line.startswith(name + "{"):
            continue
        if all(f'{k}="{v}"' in line for k, v in labels.items()):
            total += float(line.rsplit(" ", 1)[1])
    return total


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory):  # type: ignore[no-untyped-def]
    root = tmp_path_factory.mktemp("served")
    # Inside the store root: the server loads only artifacts under it (docs/security/artifact-scope.md).
    models: dict[str, SavedModel] = {kind: train_and_save(kind, str(root / "store" / "ml" / kind / "model"), rows=1500)
                                     for kind in KINDS}
    procs: dict[str, launch.Process] = {}
    try:
        for kind, saved in models.items():
            extra = ["--store-root", f"file://{root}/store", "--namespace", "ml", "--pipeline", kind,
                     "--pod", f"{kind}-pod"]
            if kind == "mixed":
                extra += ["--max-body-bytes", "262144"]
            procs[kind] = launch.serve(saved.artifact_uri, saved.digest, kind, f"{kind}-v1", str(root),
                                       saved.profile_uri, extra)
        for proc in procs.values():
            proc.wait_ready(300)
        yield root, models, procs
    finally:
        for proc in procs.values():
            proc.stop()


def _per_feature_payload(frame: Any, categorical: set[str]) -> dict[str, Any]:
    inputs = []
    for col in frame.columns:
        values = frame[col].tolist()
        inputs.append({"name": col, "shape": [len(values)], "datatype": "BYTES" if col in categorical else "FP64",
                       "data": values})
    return {"inputs": inputs}


@pytest.mark.parametrize("kind", KINDS)
def test_batch_predictions_equal_the_models_own_predict(served, kind: str) -> None:  # type: ignore[no-untyped-def]
    _, models, procs = served
    saved = models[kind]
    frame, _ = dataset(kind, rows=200, seed=7)
    expected = saved.estimator.predict(frame)
    url = f"{procs[kind].url}/v2/models/{kind}/infer"
    if kind == "mixed":
        status, answer = post(url, _per_feature_payload(frame, {"segment"}))
    else:
        status, answer = post(url, {"id": "batch-1", "inputs": [{"name": "input-0", "shape": [200, 20],
                                                                 "datatype": "FP64",
                                                                 "data": frame.to_numpy().tolist()}]})
    assert status == 200, answer
    assert answer["model_version"] == f"{kind}-v1" and answer["model_name"] == kind
    assert len(set(oip.row_ids(answer))) == 200  # one prediction id per row
    predict = next(o for o in answer["outputs"] if o["name"] == "predict")
    if kind == "regressor":
        assert np.allclose(predict["data"], expected, rtol=1e-9, atol=1e-12)
    else:
        assert predict["data"] == expected.tolist()
        proba = next(o for o in answer["outputs"] if o["name"] == "predict_proba")
        assert np.allclose(np.array(proba["data"]).reshape(200, -1), saved.estimator.predict_proba(frame))


def test_concurrent_single_rows_are_batched_and_still_exact(served) -> None:  # type: ignore[no-untyped-def]
    _, models, procs = served
    saved = models["hgb"]
    frame, _ = dataset("hgb", rows=120, seed=9)
    expected = saved.estimator.predict(frame).tolist()
    url = f"{procs['hgb'].url}/v2/models/hgb/infer"

    def one(i: int) -> tuple[str, Any]:
        row = frame.iloc[i].tolist()
        status, answer = post(url, {"id": f"single-{i}", "inputs": [{"name": "x", "shape": [1, 20],
                                                                     "datatype": "FP64", "data": row}]})
        assert status == 200, answer
        return answer["id"], answer["outputs"][0]["data"][0]

    with concurrent.futures.ThreadPoolExecutor(16) as pool:
        answers = dict(pool.map(one, range(120)))
    assert [answers[f"single-{i}"] for i in range(120)] == expected


def test_feedback_moves_the_confusion_counters(served) -> None:  # type: ignore[no-untyped-def]
    _, models, procs = served
    url = procs["logistic"].url
    frame, _ = dataset("logistic", rows=3, seed=11)
    status, answer = post(f"{url}/v2/models/logistic/infer",
                          {"id": "fb", "inputs": [{"name": "x", "shape": [3, 20], "datatype": "FP64",
                                                   "data": frame.to_numpy().tolist()}]})
    assert status == 200
    ids, predicted = oip.row_ids(answer), answer["outputs"][0]["data"]
    before = metric_lines(url)
    actual = [1 - predicted[0], predicted[1], predicted[2]]
    status, fb = post(f"{url}/v2/models/logistic/feedback",
                      {"feedback": [{"id": i, "label": a} for i, a in zip(ids, actual, strict=True)]
                       + [{"id": "never-predicted", "label": 1}]})
    assert status == 200 and fb["accepted"] == 4 and fb["matched"] == 3 and fb["model_version"] == "logistic-v1"
    after = metric_lines(url)
    deltas: dict[tuple[str, str], float] = {}
    for p, a in zip(predicted, actual, strict=True):
        deltas[(str(a), str(p))] = deltas.get((str(a), str(p)), 0) + 1
    for (a, p), delta in deltas.items():
        got = (metric_value(after, m.FEEDBACK_TOTAL, actual=a, predicted=p)
               - metric_value(before, m.FEEDBACK_TOTAL, actual=a, predicted=p))
        assert got == delta, (a, p)

    # Regression: the absolute error sum and count move.
    rurl = procs["regressor"].url
    status, answer = post(f"{rurl}/v2/models/regressor/infer",
                          {"id": "reg", "inputs": [{"name": "x", "shape": [1, 20], "datatype": "FP64",
                                                    "data": [0.0] * 20}]})
    prediction = answer["outputs"][0]["data"][0]
    before = metric_lines(rurl)
    status, _ = post(f"{rurl}/v2/models/regressor/feedback", {"id": "reg", "label": prediction + 2.5})
    assert status == 200
    after = metric_lines(rurl)
    assert metric_value(after, m.FEEDBACK_ABS_ERROR_COUNT) - metric_value(before, m.FEEDBACK_ABS_ERROR_COUNT) == 1
    assert metric_value(after, m.FEEDBACK_ABS_ERROR_SUM) - metric_value(before, m.FEEDBACK_ABS_ERROR_SUM) \
        == pytest.approx(2.5)
    status, bad = post(f"{rurl}/v2/models/regressor/feedback", {"id": "reg", "label": "high"})
    assert status == 422 and "must be a number" in bad["error"]


def test_metrics_expose_every_contract_metric_with_its_labels(served) -> None:  # type: ignore[no-untyped-def]
    _, _, procs = served
    url = procs["mixed"].url
    frame, _ = dataset("mixed", rows=5, seed=3)
    status, _ = post(f"{url}/v2/models/mixed/infer", _per_feature_payload(frame, {"segment"}))
    assert status == 200
    post(f"{url}/v2/models/mixed/infer", {"inputs": []})
    lines = metric_lines(url)
    base = {"model": "mixed", "version": "mixed-v1"}
    assert metric_value(lines, m.REQUESTS_TOTAL, code="200", **base) >= 1
    assert metric_value(lines, m.REQUESTS_TOTAL, code="400", **base) >= 1
    assert metric_value(lines, m.REQUEST_DURATION_SECONDS + "_count", **base) >= 1
    assert metric_value(lines, m.PREDICTIONS_TOTAL, **base) >= 5
    assert any(f'{m.PREDICTIONS_TOTAL}{{class="1"' in line for line in lines)
    # Every numeric value of the 5 rows went into some bin of f0, every segment into a category.
    assert metric_value(lines, m.FEATURE_BIN_TOTAL, feature="f0", **base) >= 5
    for label in ("gold", "silver", "bronze", "other", "missing"):
        assert any(f'bin="{label}",feature="segment"' in line for line in lines), label
    for label in ("below", "above", "missing", "0", "9"):
        assert any(f'bin="{label}",feature="f3"' in line for line in lines), label
    for name in (m.FEEDBACK_ABS_ERROR_SUM, m.FEEDBACK_ABS_ERROR_COUNT, m.PREDICTION_LOG_DROPPED_TOTAL):
        assert any(line.startswith(name + "{") for line in lines), name
    # Feedback series appear with their labels once feedback arrived (tested above on another server).
    status, ans = post(f"{url}/v2/models/mixed/infer", _per_feature_payload(frame.iloc[:1], {"segment"}))
    post(f"{url}/v2/models/mixed/feedback", {"id": ans["id"], "label": 1})
    assert any(line.startswith(m.FEEDBACK_TOTAL + '{actual="1"') for line in metric_lines(url))


def test_twenty_malformed_requests_get_4xx_with_a_reason_and_the_server_goes_on(served) -> None:  # type: ignore[no-untyped-def]
    _, _, procs = served
    url = procs["mixed"].url
    infer = f"{url}/v2/models/mixed/infer"
    row = {"name": "x", "shape": [1, 21], "datatype": "BYTES", "data": [0.0] * 20 + ["gold"]}
    cases: list[tuple[str, dict[str, Any]]] = [
        ("not json", {"raw": b"{oops"}),
        ("empty body", {"raw": b""}),
        ("array body", {"raw": b"[]"}),
        ("no inputs", {"payload": {"id": "x"}}),
        ("inputs not a list", {"payload": {"inputs": {"a": 1}}}),
        ("tensor without data", {"payload": {"inputs": [{"name": "x", "shape": [1, 21], "datatype": "FP64"}]}}),
        ("wrong width", {"payload": {"inputs": [{**row, "shape": [1, 3], "data": [1, 2, 3]}]}}),
        ("shape/data mismatch", {"payload": {"inputs": [{**row, "shape": [2, 21]}]}}),
        ("string in numeric column", {"payload": {"inputs": [{**row, "data": ["a"] * 21}]}}),
        ("number in categorical column", {"payload": {"inputs": [{**row, "data": [0.0] * 21}]}}),
        ("unknown datatype", {"payload": {"inputs": [{**row, "datatype": "FLOAT99"}]}}),
        ("negative shape", {"payload": {"inputs": [{**row, "shape": [-1, 21]}]}}),
        ("missing features", {"payload": {"inputs": [{"name": "f0", "shape": [1], "datatype": "FP64",
                                                      "data": [1]}]}}),
        ("unknown feature", {"payload": {"inputs": [{"name": "colour", "shape": [1], "datatype": "FP64",
                                                     "data": [1]}]}}),
        ("bad id", {"payload": {"id": [1], "inputs": [row]}}),
        ("unknown model", {"url": f"{url}/v2/models/nope/infer", "payload": {"inputs": [row]}}),
        ("unknown version", {"url": f"{url}/v2/models/mixed/versions/mixed-v9/infer", "payload": {"inputs": [row]}}),
        ("GET on infer", {"method": "GET", "raw": None}),
        ("oversized body", {"raw": b'{"inputs": [' + b" " * 300_000 + b"]}"}),
        ("feedback without label", {"url": f"{url}/v2/models/mixed/feedback", "payload": {"id": "x"}}),
        ("unknown path", {"url": f"{url}/v3/everything", "payload": {}}),
    ]
    assert len(cases) >= 20
    for name, case in cases:
        target = case.get("url", infer)
        method = case.get("method", "POST")
        if method == "GET":
            status, body = launch.get(target)
            answer = json.loads(body)
        else:
            status, answer = post(target, case.get("payload"), raw=case.get("raw"))
        assert 400 <= status < 500, (name, status, answer)
        assert answer.get("error"), name
        assert "model_version" in answer and "id" in answer, name
    expectations = {"oversized body": 413, "unknown model": 404, "GET on infer": 405, "not json": 400}
    for name, status in expectations.items():
        case = dict(cases)[name]
        if name == "GET on infer":
            got, _ = launch.get(infer)
        else:
            got, _ = post(case.get("url", infer), case.get("payload"), raw=case.get("raw"))
        assert got == status, name
    status, answer = post(infer, {"inputs": [row]})
    assert status == 200 and answer["outputs"][0]["data"] in ([0], [1])
    assert procs["mixed"].proc.poll() is None


def test_prediction_log_has_one_line_per_prediction(served) -> None:  # type: ignore[no-untyped-def]
    root, _, procs = served
    status, answer = post(f"{procs['regressor'].url}/v2/models/regressor/infer",
                          {"id": "logged", "inputs": [{"name": "x", "shape": [2, 20], "datatype": "FP64",
                                                       "data": [[0.5] * 20, [1.5] * 20]}]})
    assert status == 200
    post(f"{procs['regressor'].url}/v2/models/regressor/feedback", {"id": "logged-1", "label": 3.0})
    day = dt.datetime.now(dt.UTC).date().isoformat()
    # One object per flush: <pod>-<seq>.jsonl, seq counting up (noria_server.predlog).
    pred_dir = root / "store/ml/regressor/predictions/regressor-v1" / day
    fb_dir = root / "store/ml/regressor/feedback" / day

    def read(directory: Any) -> str:
        return "".join(f.read_text() for f in sorted(directory.glob("regressor-pod-*.jsonl")))

    deadline = time.monotonic() + 5
    lines: list[dict[str, Any]] = []
    while time.monotonic() < deadline:
        lines = [json.loads(x) for x in read(pred_dir).splitlines()]
        if any(x["id"] == "logged-1" for x in lines) and "logged-1" in read(fb_dir):
            break
        time.sleep(0.1)
    by_id = {x["id"]: x for x in lines}
    assert by_id["logged-0"]["features"] == {f"f{i}": 0.5 for i in range(20)}
    assert by_id["logged-1"]["prediction"] == answer["outputs"][0]["data"][1]
    assert by_id["logged-1"]["model_version"] == "regressor-v1" and by_id["logged-1"]["ts"].endswith("Z")
    feedback = [json.loads(x) for x in read(fb_dir).splitlines()]
    assert {"id": "logged-1", "label": 3.0} in [{k: f[k] for k in ("id", "label")} for f in feedback]


def test_sigterm_turns_not_ready_drains_and_exits_cleanly(served, tmp_path) -> None:  # type: ignore[no-untyped-def]
    _, models, _ = served
    saved = models["logistic"]
    proc = launch.serve(saved.artifact_uri, saved.digest, "logistic", "logistic-v1", str(tmp_path),
                        saved.profile_uri, ["--drain-seconds", "1.5"])
    proc.wait_ready(300)
    assert proc.proc is not None
    proc.proc.send_signal(signal.SIGTERM)
    time.sleep(0.3)
    status, body = launch.get(proc.url + "/v2/health/ready")
    assert status == 503 and b"draining" in body
    status, answer = post(f"{proc.url}/v2/models/logistic/infer",
                          {"inputs": [{"name": "x", "shape": [1, 20], "datatype": "FP64", "data": [0.0] * 20}]})
    assert status == 200  # still serving while endpoints catch up
    assert proc.proc.wait(15) == 0
    assert "stopped (exit code 0)" in proc.log()
