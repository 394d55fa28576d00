"""Online features (noria_server.online): requests of entity keys, answered by the real model server
over its real HTTP port, with a real local HTTP server standing in for Feast's feature server
(``feast serve``'s POST /get-online-features and its answer shape): the predictions are the model's
own on the stored features, the drift counters count them, and an unknown key, a slow store, a dead
store and a failing store each get their status within the bound; the store coming back serves the
next request."""

from __future__ import annotations

import asyncio
import datetime as dt
import math
import ssl
import time
from collections.abc import Iterator
from typing import Any

import httpx
import numpy as np
import orjson
import pandas as pd
import pytest
import served_model_server
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from fake_feast import STORE, FakeFeast
from noria import metrics as m
from noria.profile import build_profile
from noria_server import online
from noria_server.__main__ import parser, serve_settings
from noria_server.httpserver import Request
from noria_server.model import ServedModel
from noria_server.serve import ModelServer
from noria_testbed.processes import free_port
from server_helpers import FEATURES, fitted_server, handled
from sklearn.ensemble import HistGradientBoostingClassifier

TIMEOUT_MS = 100
# What "within its bound" allows on a loaded 2-core CI machine: the timeout plus scheduling slack.
BOUND_S = TIMEOUT_MS / 1000 + 0.9



@pytest.fixture
def feast() -> Iterator[FakeFeast]:
    fake = FakeFeast()
    yield fake
    fake.stop()


def settings(url: str, **over: Any) -> online.OnlineFeatureSettings:
    return online.OnlineFeatureSettings(**{"url": url, "entity_keys": ("customer_id",),
                                           "feature_service": "churn_v1", "timeout": TIMEOUT_MS / 1000, **over})


def keyed_server(url: str, kind: str = "classifier", **over: Any) -> ModelServer:
    server = fitted_server(kind, online_features=settings(url, **over))
    rng = np.random.default_rng(1)
    profile = build_profile({f: rng.normal(size=500) for f in FEATURES}, {f: "numeric" for f in FEATURES})
    server.metrics.enable_feature_bins(FEATURES, profile)
    server.model.profile = profile  # type: ignore[union-attr]
    return server


def keys_body(ids: list[Any], datatype: str = "INT64", **extra: Any) -> dict[str, Any]:
    return {"inputs": [{"name": "customer_id", "shape": [len(ids)], "datatype": datatype, "data": ids}], **extra}


def stored_rows(ids: list[int]) -> np.ndarray:
    return np.array([STORE[i] for i in ids], dtype=np.float64)


def sample(server: ModelServer, name: str, **labels: str) -> float:
    server.settle()  # as a scrape does: the answered batches' counts are in
    return server.metrics.registry.get_sample_value(name, {"model": "m", "version": "m-v1", **labels}) or 0.0


def bins_total(server: ModelServer, feature: str) -> float:
    server.settle()
    text = server.metrics.exposition().decode()
    return sum(float(line.rsplit(" ", 1)[1]) for line in text.splitlines()
               if line.startswith(m.FEATURE_BIN_TOTAL) and f'feature="{feature}"' in line)


class Served(served_model_server.Served):
    """The model server on a real port, and an HTTP client for it."""

    async def infer(self, body: dict[str, Any]) -> tuple[int, dict[str, Any], httpx.Headers, float]:
        t0 = time.perf_counter()
        answer = await self.client.post("/v2/models/m/infer", content=orjson.dumps(body))
        return answer.status_code, answer.json(), answer.headers, time.perf_counter() - t0


async def test_a_request_of_keys_is_predicted_on_the_stored_features_and_drift_counts_them(feast) -> None:
    server = keyed_server(feast.url)
    ids = [1001, 1002, 1003]
    async with Served(server) as s:
        status, answer, _, _ = await s.infer(keys_body(ids, id="r1"))
    assert status == 200, answer
    model = server.model
    expected, _ = model.predict(stored_rows(ids))  # type: ignore[union-attr]
    assert answer["outputs"][0]["data"] == expected.tolist() and answer["id"] == "r1"
    (call,) = feast.calls
    assert call == {"path": "/get-online-features", "feature_service": "churn_v1",
                    "entities": {"customer_id": ids}, "full_feature_names": False}
    for feature in FEATURES:  # the drift counters saw the filled features, one value per row
        assert bins_total(server, feature) == len(ids)
    assert sample(server, m.ONLINE_LOOKUPS_TOTAL, outcome=m.LOOKUP_OK) == 1
    assert sample(server, m.ONLINE_LOOKUP_SECONDS + "_count") == 1
    assert sample(server, m.ONLINE_MISSES_TOTAL, feature="a", status=m.MISS_NOT_FOUND) == 0


async def test_feature_references_and_a_feature_the_request_gives_itself(feast) -> None:
    server = keyed_server(feast.url, feature_service=None, features=("customer_stats:a", "customer_stats:b"))
    body = keys_body([1003, 1004])
    body["inputs"].append({"name": "c", "shape": [2, 1], "datatype": "FP64", "data": [[9.0], [-9.0]]})
    async with Served(server) as s:
        status, answer, _, _ = await s.infer(body)
        assert status == 200, answer
        rows = stored_rows([1003, 1004])
        rows[:, 2] = [9.0, -9.0]
        assert answer["outputs"][0]["data"] == server.model.predict(rows)[0].tolist()  # type: ignore[union-attr]
        assert feast.calls[-1]["features"] == ["customer_stats:a", "customer_stats:b"]
        # a feature the store gives may not also come in the request: which one the model saw would be a guess
        body["inputs"][1]["name"] = "a"
        status, answer, _, _ = await s.infer(body)
        assert status == 422 and "a are features the feature store provides" in answer["error"]


async def test_requests_of_one_loop_turn_share_one_call(feast) -> None:
    server = keyed_server(feast.url)
    ids = [[1001], [1002, 1003], [1004]]
    requests = [Request(method="POST", path="/v2/models/m/infer", query=b"", headers={},
                        body=orjson.dumps(keys_body(batch))) for batch in ids]
    answers = await asyncio.gather(*(handled(server, r) for r in requests))
    server.lookup.close()  # type: ignore[union-attr]
    assert [a.status for a in answers] == [200, 200, 200]
    assert len(feast.calls) == 1 and feast.calls[0]["entities"] == {"customer_id": [1001, 1002, 1003, 1004]}
    for batch, answer in zip(ids, answers, strict=True):
        expected = server.model.predict(stored_rows(batch))[0].tolist()  # type: ignore[union-attr]
        assert orjson.loads(answer.body)["outputs"][0]["data"] == expected


@pytest.mark.parametrize("not_found", [False, True], ids=["feast-redis-null-at-epoch", "status-not-found"])
async def test_an_unknown_key_is_404_naming_the_key_and_the_features_and_counts_misses(feast, not_found) -> None:
    feast.not_found = not_found
    server = keyed_server(feast.url)
    async with Served(server) as s:
        status, answer, _, elapsed = await s.infer(keys_body([1001, 999]))
    assert status == 404
    assert "customer_id=999" in answer["error"] and "1001" not in answer["error"]
    assert "missing feature(s) a, b, c" in answer["error"]
    assert set(answer) == {"error", "id", "model_name", "model_version"}  # the server's error shape
    assert elapsed < BOUND_S
    for feature in FEATURES:
        assert sample(server, m.ONLINE_MISSES_TOTAL, feature=feature, status=m.MISS_NOT_FOUND) == 1
    assert sample(server, m.REQUESTS_TOTAL, handler="infer", code="404") == 1
    assert bins_total(server, "a") == 0  # nothing predicted, nothing counted


async def test_as_missing_sends_an_unknown_keys_features_to_the_model_as_missing_values(feast) -> None:
    server = keyed_server(feast.url, on_missing="asMissing")
    rng = np.random.default_rng(0)
    frame = pd.DataFrame(rng.normal(size=(200, 3)), columns=FEATURES)
    server.model = ServedModel.from_estimator(  # a model that takes missing values
        HistGradientBoostingClassifier(max_iter=10).fit(frame, (frame["a"] > 0).astype(int)), None)
    async with Served(server) as s:
        status, answer, _, _ = await s.infer(keys_body([1002, 999, 1005]))
    assert status == 200, answer
    rows = np.array([STORE[1002], [math.nan] * 3, STORE[1005]], dtype=np.float64)
    assert answer["outputs"][0]["data"] == server.model.predict(rows)[0].tolist()
    assert sample(server, m.ONLINE_MISSES_TOTAL, feature="b", status=m.MISS_NOT_FOUND) == 1
    assert sample(server, m.ONLINE_MISSES_TOTAL, feature="a", status=m.MISS_NOT_FOUND) == 1  # not 1005's null
    assert sample(server, m.FEATURE_BIN_TOTAL, feature="a", bin=m.BIN_MISSING) == 2  # drift sees both as missing


async def test_a_slow_store_is_504_within_the_timeout(feast) -> None:
    feast.delay = 3.0
    server = keyed_server(feast.url)
    async with Served(server) as s:
        status, answer, _, elapsed = await s.infer(keys_body([1001]))
    assert status == 504 and f"no answer within {TIMEOUT_MS} ms" in answer["error"]
    assert elapsed < BOUND_S
    assert sample(server, m.ONLINE_LOOKUPS_TOTAL, outcome=m.LOOKUP_TIMEOUT) == 1
    assert sample(server, m.ONLINE_LOOKUP_SECONDS + "_sum") >= TIMEOUT_MS / 1000


async def test_a_dead_store_is_503_with_retry_after_and_the_next_request_after_it_recovers_is_served() -> None:
    port = free_port()
    server = keyed_server(f"http://127.0.0.1:{port}")
    async with Served(server) as s:
        status, answer, headers, elapsed = await s.infer(keys_body([1001]))
        assert status == 503 and "is unavailable" in answer["error"], answer
        assert headers["retry-after"] == str(online.RETRY_AFTER_SECONDS)
        assert elapsed < BOUND_S
        fake = FakeFeast(port)  # the store comes back on its address
        try:
            status, answer, _, _ = await s.infer(keys_body([1001]))
            assert status == 200, answer
            fake.stop()  # and goes away again under a kept-alive connection ...
            status, _, _, _ = await s.infer(keys_body([1001]))
            assert status == 503
            fake = FakeFeast(port)  # ... and comes back: served again
            status, answer, _, _ = await s.infer(keys_body([1002]))
            assert status == 200, answer
        finally:
            fake.stop()
    assert sample(server, m.ONLINE_LOOKUPS_TOTAL, outcome=m.LOOKUP_UNAVAILABLE) == 2
    assert sample(server, m.ONLINE_LOOKUPS_TOTAL, outcome=m.LOOKUP_OK) == 2


async def test_a_failing_store_is_503_and_an_unknown_feature_service_502(feast) -> None:
    feast.mode = "error"
    server = keyed_server(feast.url)
    async with Served(server) as s:
        status, answer, headers, _ = await s.infer(keys_body([1001]))
        assert status == 503 and "answered 500: Error 111 connecting" in answer["error"], answer
        assert headers["retry-after"] == "1"
    feast.mode = "ok"
    server = keyed_server(feast.url, feature_service="churn_v9")
    async with Served(server) as s:
        status, answer, headers, _ = await s.infer(keys_body([1001]))
    assert status == 502 and "refused the lookup (404): Feature service churn_v9 does not exist in project" \
        in answer["error"], answer
    assert "retry-after" not in headers
    assert sample(server, m.ONLINE_LOOKUPS_TOTAL, outcome=m.LOOKUP_BAD_ANSWER) == 1


def self_signed(folder: Any) -> tuple[str, str]:
    """(cert, key) files of a certificate for 127.0.0.1, its own issuer."""
    import ipaddress

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "feast.test")])
    now = dt.datetime.now(dt.UTC)
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
            .serial_number(x509.random_serial_number()).not_valid_before(now - dt.timedelta(minutes=1))
            .not_valid_after(now + dt.timedelta(hours=1))
            .add_extension(x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]), False)
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), True)
            .sign(key, hashes.SHA256()))
    cert_file, key_file = folder / "cert.pem", folder / "key.pem"
    cert_file.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_file.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                           serialization.NoEncryption()))
    return str(cert_file), str(key_file)


async def test_an_https_store_is_verified_against_the_trust_store(tmp_path, monkeypatch) -> None:
    cert, key = self_signed(tmp_path)
    tls = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    tls.load_cert_chain(cert, key)
    fake = FakeFeast(tls=tls)
    try:
        server = keyed_server(fake.url)  # not trusted: refused, and retrying would not help
        async with Served(server) as s:
            status, answer, headers, _ = await s.infer(keys_body([1001]))
        assert status == 502 and "TLS with the feature store" in answer["error"] and "retry-after" not in headers
        monkeypatch.setenv("SSL_CERT_FILE", cert)  # trusted (OpenSSL's default verify paths read it)
        server = keyed_server(fake.url)
        async with Served(server) as s:
            status, answer, _, _ = await s.infer(keys_body([1001, 1002]))
        assert status == 200, answer
        assert answer["outputs"][0]["data"] == server.model.predict(stored_rows([1001, 1002]))[0].tolist()  # type: ignore[union-attr]
        assert fake.calls[-1]["entities"] == {"customer_id": [1001, 1002]}
    finally:
        fake.stop()


@pytest.mark.parametrize(("body", "fragment"), [
    ({"inputs": [{"name": "a", "shape": [1], "datatype": "FP64", "data": [1.0]}]}, "missing entity key input(s) customer_id"),
    (keys_body([1.5], "FP64"), "value #0 (1.5) is not an integer"),
    (keys_body(["x"], "INT64"), "is not an integer"),
    ({"inputs": [*keys_body([1])["inputs"], {"name": "zz", "shape": [1], "datatype": "FP64", "data": [1]}]},
     "unknown input(s) zz"),
])
async def test_malformed_keyed_requests_are_422_without_a_lookup(feast, body: dict[str, Any], fragment: str) -> None:
    server = keyed_server(feast.url)
    answer = await handled(server, Request(method="POST", path="/v2/models/m/infer", query=b"", headers={},
                                           body=orjson.dumps(body)))
    assert answer.status == 422 and fragment in orjson.loads(answer.body)["error"]
    assert feast.calls == []


def test_string_keys_and_integral_floats_travel_as_feast_takes_them() -> None:
    s = settings("http://feast:6566", entity_keys=("customer_id", "region"))
    keyed = online.parse_keyed(orjson.dumps({"inputs": [
        {"name": "customer_id", "shape": [2, 1], "datatype": "FP64", "data": [[1001.0], [7]]},
        {"name": "region", "shape": [2], "datatype": "BYTES", "data": ["eu", "us"]}]}),
        fitted_server("classifier").model.schema, s, None, None, ("predict",))  # type: ignore[union-attr]
    assert keyed.keys == {"customer_id": [1001, 7], "region": ["eu", "us"]}
    assert all(isinstance(v, int) for v in keyed.keys["customer_id"])


def test_flags_and_variables_become_settings(monkeypatch) -> None:
    for var, value in {"NORIA_FEAST_URL": "http://feast.features:6566", "NORIA_FEAST_FEATURES": "v:a, v:b",
                       "NORIA_FEAST_ENTITY_KEYS": "customer_id", "NORIA_FEAST_TIMEOUT_MS": "250",
                       "NORIA_FEAST_ON_MISSING": "asMissing"}.items():
        monkeypatch.setenv(var, value)
    args = parser().parse_args(["serve", "--artifact", "file:///x", "--digest", "sha256:0", "--model", "m",
                                "--version", "m-v1"])
    got = serve_settings(args, None)
    assert got.online_features == online.OnlineFeatureSettings(
        url="http://feast.features:6566", entity_keys=("customer_id",), features=("v:a", "v:b"), timeout=0.25,
        on_missing="asMissing")
    got.validate()
    monkeypatch.delenv("NORIA_FEAST_URL")
    assert serve_settings(parser().parse_args(["serve"]), None).online_features is None


@pytest.mark.parametrize(("over", "fragment"), [
    ({"url": "ftp://feast:6566"}, "must be http\\(s\\)://"),
    ({"features": ("v:a",)}, "exactly one of"),
    ({"timeout": 11.0}, "at most 10000 ms"),
    ({"entity_keys": ()}, "names no entity key"),
    ({"on_missing": "ignore"}, "must be one of reject, asMissing"),
])
def test_settings_refuse_what_the_server_cannot_do(over: dict[str, Any], fragment: str) -> None:
    with pytest.raises(ValueError, match=fragment):
        settings(over.pop("url", "http://feast:6566"), **over).validate()
