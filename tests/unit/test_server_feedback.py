"""Feedback in the model server and the router (in-process, a real fitted model, no sockets): replay,
forged ids, invalid labels and missing tokens move no counter; the router merges replicas' answers."""

from __future__ import annotations

import asyncio
import math
from typing import Any

import orjson
import pytest
from noria import metrics as m
from noria_server import bearer, ledger
from noria_server.httpserver import Request
from noria_server.route import merge_feedback_answers
from noria_server.serve import ModelServer, ServeSettings
from server_helpers import fitted_server, handled

TOKEN = "s3cret-token-0123456789abcdef"


def _server(kind: str, **settings: Any) -> ModelServer:
    server = fitted_server(kind, **settings)
    server.metrics.declare_classes(server.model.classes)
    return server


def _request(path: str, payload: Any, headers: dict[str, str] | None = None) -> Request:
    return Request(method="POST", path=path, query=b"", headers=dict(headers or {}), body=orjson.dumps(payload))


def _call(server: ModelServer, request: Request) -> tuple[int, dict[str, Any]]:
    response = asyncio.run(handled(server, request))
    return response.status, orjson.loads(response.body)


def _predict(server: ModelServer, ids: list[str], headers: dict[str, str] | None = None) -> list[Any]:
    rows = [[0.5 * i - 1.0, 0.1, -0.2] for i in range(len(ids))]
    status, answer = _call(server, _request("/v2/models/m/infer", {
        "inputs": [{"name": "x", "shape": [len(ids), 3], "datatype": "FP64", "data": rows}],
        "parameters": {"ids": ids}}, headers))
    assert status == 200, answer
    return answer["outputs"][0]["data"]


def _feedback(server: ModelServer, items: list[dict[str, Any]], headers: dict[str, str] | None = None,
              ) -> tuple[int, dict[str, Any]]:
    return _call(server, _request("/v2/models/m/feedback", {"feedback": items}, headers))


def _value(server: ModelServer, name: str, **labels: str) -> float:
    return server.metrics.registry.get_sample_value(name, {"model": "m", "version": "m-v1", **labels}) or 0.0


def _feedback_total(server: ModelServer) -> float:
    classes = [str(c) for c in server.model.classes or []]  # type: ignore[union-attr]
    return sum(_value(server, m.FEEDBACK_TOTAL, actual=a, predicted=p) for a in classes for p in classes)


def test_one_request_replaying_an_id_ten_thousand_times_counts_one_label() -> None:
    server = _server("classifier")
    [predicted] = _predict(server, ["p-1"])
    status, answer = _feedback(server, [{"id": "p-1", "label": predicted}] * 10_000)
    assert status == 200
    assert answer["outcomes"] == {"counted": 1, "duplicate": 9_999, "invalid": 0, "expired": 0, "unknown_id": 0}
    assert answer["results"][0] == {"id": "p-1", "outcome": "counted"}
    assert answer["results"][1] == {"id": "p-1", "outcome": "duplicate"}
    assert _feedback_total(server) == 1
    assert _value(server, m.FEEDBACK_TOTAL, actual=str(predicted), predicted=str(predicted)) == 1
    status, again = _feedback(server, [{"id": "p-1", "label": 1 - predicted}])  # a later "correction"
    assert again["outcomes"]["duplicate"] == 1 and _feedback_total(server) == 1
    assert _value(server, m.FEEDBACK_REFUSED_TOTAL, reason=m.FEEDBACK_DUPLICATE) == 10_000


def test_forged_ids_and_unknown_classes_move_nothing_and_say_why() -> None:
    server = _server("classifier")
    _predict(server, ["p-1"])
    status, answer = _feedback(server, [{"id": "never-made", "label": 1}, {"id": "p-1", "label": "cat"},
                                        {"id": "p-1", "label": 7}])
    assert status == 200 and _feedback_total(server) == 0
    assert [r["outcome"] for r in answer["results"]] == ["unknown_id", "invalid", "invalid"]
    assert answer["results"][1]["reason"] == m.FEEDBACK_UNKNOWN_CLASS and "0, 1" in answer["results"][1]["message"]
    assert answer["matched"] == 0 and answer["accepted"] == 3
    assert _value(server, m.FEEDBACK_REFUSED_TOTAL, reason=m.FEEDBACK_UNKNOWN_CLASS) == 2
    assert _value(server, m.FEEDBACK_REFUSED_TOTAL, reason=m.FEEDBACK_UNKNOWN_ID) == 1
    # The id stayed open: a valid label still counts once.
    assert _feedback(server, [{"id": "p-1", "label": 1}])[1]["outcomes"]["counted"] == 1
    assert _feedback_total(server) == 1


def test_huge_regression_labels_are_refused_and_the_error_sum_stays_finite() -> None:
    server = _server("regressor")
    [predicted] = _predict(server, ["r-1"])
    status, answer = _feedback(server, [{"id": "r-1", "label": 1.7e308}, {"id": "r-1", "label": -1.7e308}])
    assert status == 200 and [r["reason"] for r in answer["results"]] == [m.FEEDBACK_OUT_OF_RANGE] * 2
    for number in (b"1" + b"0" * 400, b"1e400", b"NaN", b"Infinity"):  # refused by the JSON parser itself
        body = b'{"id": "r-1", "label": ' + number + b"}"
        status, _ = _call(server, Request(method="POST", path="/v2/models/m/feedback", query=b"", headers={},
                                          body=body))
        assert status == 400, number
    assert _value(server, m.FEEDBACK_ABS_ERROR_COUNT) == 0 and _value(server, m.FEEDBACK_ABS_ERROR_SUM) == 0
    status, answer = _feedback(server, [{"id": "r-1", "label": predicted + 2.5}])
    assert answer["outcomes"]["counted"] == 1
    assert _value(server, m.FEEDBACK_ABS_ERROR_COUNT) == 1
    assert _value(server, m.FEEDBACK_ABS_ERROR_SUM) == pytest.approx(2.5)
    assert math.isfinite(_value(server, m.FEEDBACK_ABS_ERROR_SUM))
    status, wrong_kind = _feedback(server, [{"id": "r-1", "label": "high"}])
    assert status == 422 and "must be a number" in wrong_kind["error"]


def test_the_magnitude_bound_is_a_setting() -> None:
    server = _server("regressor", feedback_max_abs_label=10.0)
    _predict(server, ["r-1", "r-2"])
    answer = _feedback(server, [{"id": "r-1", "label": 11.0}, {"id": "r-2", "label": 9.0}])[1]
    assert [r["outcome"] for r in answer["results"]] == ["invalid", "counted"]
    assert "10" in answer["results"][0]["message"]


def test_with_a_token_feedback_without_it_is_401_and_infer_stays_open() -> None:
    server = _server("classifier", feedback_token=bearer.BearerToken(TOKEN))
    [predicted] = _predict(server, ["p-1"])  # no credentials needed to predict
    for headers in ({}, {"authorization": "Bearer wrong-token-0123456789"}, {"authorization": TOKEN},
                    {"authorization": f"Basic {TOKEN}"}, {"authorization": f"Bearer {TOKEN}x"}):
        status, answer = _feedback(server, [{"id": "p-1", "label": predicted}], headers)
        assert status == 401, headers
        assert "spec.feedback.tokenSecretRef" in answer["error"] and TOKEN not in answer["error"]
    assert _feedback_total(server) == 0
    assert _value(server, m.FEEDBACK_REFUSED_TOTAL, reason=m.FEEDBACK_UNAUTHORIZED) == 5
    status, answer = _feedback(server, [{"id": "p-1", "label": predicted}], {"authorization": f"bearer  {TOKEN} "})
    assert status == 200 and answer["outcomes"]["counted"] == 1 and _feedback_total(server) == 1


def test_the_401_carries_a_bearer_challenge() -> None:
    server = _server("classifier", feedback_token=bearer.BearerToken(TOKEN))
    response = server.handle(_request("/v2/models/m/feedback", {"id": "x", "label": 1}))
    assert response.status == 401 and bearer.CHALLENGE in response.headers  # type: ignore[union-attr]


def test_behind_the_router_an_id_another_pod_holds_is_not_counted_as_refused_here() -> None:
    server = _server("classifier")
    status, answer = _feedback(server, [{"id": "elsewhere", "label": 1}], {"x-noria-feedback-fanout": "1"})
    assert status == 200 and answer["results"] == [{"id": "elsewhere", "outcome": "unknown_id"}]
    assert _value(server, m.FEEDBACK_REFUSED_TOTAL, reason=m.FEEDBACK_UNKNOWN_ID) == 0


def test_predictions_past_the_retention_are_expired() -> None:
    server = _server("classifier", feedback_retention_seconds=60.0)
    _predict(server, ["p-old"])
    server.settle()
    server.ledger.record(["p-old"], [1], now=-1000.0)  # as if predicted long ago
    answer = _feedback(server, [{"id": "p-old", "label": 1}])[1]
    assert answer["results"] == [{"id": "p-old", "outcome": "expired"}] and _feedback_total(server) == 0


def test_the_ledger_is_bounded_by_the_bytes_setting() -> None:
    server = _server("classifier", feedback_ledger_bytes=1 << 20)
    for batch in range(40):
        _predict(server, [f"b{batch}-{i}-" + "x" * 100 for i in range(64)])
    assert server.ledger.bytes <= 1 << 20 and server.ledger.evicted > 0


@pytest.mark.parametrize(("field", "value", "words"), [
    ("feedback_ledger_bytes", 1000, "at least 1 MiB"),
    ("feedback_retention_seconds", 0.0, "must be positive"),
    ("feedback_max_abs_label", math.inf, "positive finite"),
])
def test_settings_that_would_disable_the_ledger_are_refused(field: str, value: Any, words: str) -> None:
    settings = ServeSettings(artifact_uri="a", digest="d", model="m", version="v", **{field: value})
    with pytest.raises(ValueError, match=words):
        settings.validate()


@pytest.mark.parametrize(("value", "error"), [
    (None, None), ("", "empty"), ("   \n", "empty"), ("short", "shorter than 16"), (TOKEN + "\n", None),
])
def test_the_token_comes_from_the_environment_and_a_blank_one_is_refused(value: str | None, error: str | None) -> None:
    if error:
        with pytest.raises(ValueError, match=error):
            bearer.from_environment(value)
        return
    token = bearer.from_environment(value)
    assert (token is None) == (value is None)
    if token is not None:
        assert token.matches(f"Bearer {TOKEN}") and TOKEN not in repr(token)


def _answer(*outcomes: str) -> dict[str, Any]:
    results = [{"id": f"i{k}", "outcome": o} for k, o in enumerate(outcomes)]
    return {"results": results, "outcomes": ledger.tally(ledger.Judged(r["id"], r["outcome"]) for r in results)}


@pytest.mark.parametrize(("replicas", "merged", "by_version"), [
    # The pod that made the prediction counts it; the others do not know the id.
    ([("v1", 200, _answer("counted", "unknown_id")), ("v1", 200, _answer("unknown_id", "unknown_id")),
      ("v2", 200, _answer("unknown_id", "duplicate"))],
     ["counted", "duplicate"], {"v1": 1, "v2": 0}),
    # A mirrored prediction is held by a pod of each version: counted in both.
    ([("v1", 200, _answer("counted")), ("v2", 200, _answer("counted"))], ["counted"], {"v1": 1, "v2": 1}),
    # An unreachable replica does not hide the others' answers.
    ([("v1", 502, {"error": "down"}), ("v2", 200, _answer("expired"))], ["expired"], {"v1": 0, "v2": 0}),
    ([("v1", 200, _answer("unknown_id")), ("v2", 200, _answer("invalid"))], ["invalid"], {"v1": 0, "v2": 0}),
])
def test_the_router_merges_each_item_to_its_most_telling_outcome(replicas: list, merged: list[str],
                                                                  by_version: dict[str, int]) -> None:
    out = merge_feedback_answers(replicas)
    assert [r["outcome"] for r in out["results"]] == merged
    assert out["matchedByVersion"] == by_version and out["matched"] == sum(by_version.values())
    assert sum(out["outcomes"].values()) == len(merged)
    assert len(out["unreachable"]) == sum(status != 200 for _, status, _ in replicas)


def test_only_answers_to_inference_are_what_error_rate_reads() -> None:
    """errorRate reads noria_requests_total{handler="infer"}: labels fanned out to every pod, metadata
    reads, other models' paths and refusals of the HTTP layer are counted, but under other endpoints,
    so no client can dilute a failing candidate's error rate with cheap requests pinned to it."""
    server = _server("classifier")
    feedback = _request("/v2/models/m/feedback", {"id": "x", "label": 1})
    for status in (200, 401, 422):
        server._count_response(feedback, status)
    for path in ("/v2/models/m", "/v2/models/other/infer", "/v2/models/m/infer/extra", "/nowhere"):
        server._count_response(_request(path, {}), 200)
    server._count_response(None, 413)
    infer = {m.LABEL_ENDPOINT: m.ENDPOINT_INFER}
    assert sum(_value(server, m.REQUESTS_TOTAL, code=str(c), **infer) for c in (200, 401, 413, 422)) == 0
    assert sum(_value(server, m.REQUESTS_TOTAL, code=str(c), **{m.LABEL_ENDPOINT: m.ENDPOINT_FEEDBACK})
               for c in (200, 401, 422)) == 3
    assert _value(server, m.REQUESTS_TOTAL, code="200", **{m.LABEL_ENDPOINT: m.ENDPOINT_OTHER}) == 4
    assert _value(server, m.REQUESTS_TOTAL, code="413", **{m.LABEL_ENDPOINT: m.ENDPOINT_OTHER}) == 1
    server._count_response(_request("/v2/models/m/infer", {}), 200)
    server._count_response(_request("/v2/models/m/versions/m-v1/infer", {}), 500)
    assert _value(server, m.REQUESTS_TOTAL, code="200", **infer) == 1
    assert _value(server, m.REQUESTS_TOTAL, code="500", **infer) == 1
