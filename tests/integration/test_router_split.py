"""The router as a real process in front of real model servers, configured through a polled file.

Given two versions of a model served by ``noria_server serve`` and a shadow, when traffic goes
through ``noria_server route --config <file>``, then the split follows the weights, the
``x-noria-version`` header pins a version, mirrored requests never change the user's answer and
their agreement counts equal an offline comparison, a weight change is live within a second, and
a dead or silent backend gives a fast 502/503 instead of a hang.
"""

from __future__ import annotations

import asyncio
import json
import os
import socket
import time
from pathlib import Path
from typing import Any

import aiohttp
import numpy as np
import pytest
from noria import metrics as m
from noria_server import launch
from noria_server.reference_models import SavedModel, dataset, train_and_save

MODEL = "churn"


@pytest.fixture(scope="module")
def bed(tmp_path_factory: pytest.TempPathFactory):  # type: ignore[no-untyped-def]
    root = tmp_path_factory.mktemp("router")
    stable = train_and_save("logistic", str(root / "v1"), rows=600, seed=0)
    canary = train_and_save("hgb", str(root / "v2"), rows=300, seed=1)
    servers = {
        "churn-v1": launch.serve(stable.artifact_uri, stable.digest, MODEL, "churn-v1", str(root), stable.profile_uri),
        "churn-v2": launch.serve(canary.artifact_uri, canary.digest, MODEL, "churn-v2", str(root), canary.profile_uri),
    }
    config_path = root / "router.json"
    write_config(config_path, {"model": MODEL, "namespace": "ml", "backends": [
        {"version": "churn-v1", "service": "churn-churn-v1", "port": 8080, "weight": 90,
         "url": servers["churn-v1"].url},
        {"version": "churn-v2", "service": "churn-churn-v2", "port": 8080, "weight": 10,
         "url": servers["churn-v2"].url}], "shadow": None})
    router = launch.route(str(config_path), str(root), extra=["--timeout", "3", "--connect-timeout", "0.5"])
    try:
        for proc in servers.values():
            proc.wait_ready(300)
        router.wait_ready(300)
        yield {"root": root, "servers": servers, "router": router, "config": config_path,
               "models": {"churn-v1": stable, "churn-v2": canary}}
    finally:
        router.stop()
        for proc in servers.values():
            proc.stop()


def write_config(path: Path, config: dict[str, Any]) -> None:
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(config))
    os.replace(tmp, path)


def backends(bed: dict[str, Any], weights: dict[str, int], shadow: str | None = None, mirror: int = 100,
             urls: dict[str, str] | None = None) -> dict[str, Any]:
    urls = {**{v: p.url for v, p in bed["servers"].items()}, **(urls or {})}
    config: dict[str, Any] = {"model": MODEL, "namespace": "ml", "backends": [
        {"version": v, "service": f"churn-{v}", "port": 8080, "weight": w, "url": urls.get(v)}
        for v, w in weights.items()], "shadow": None}
    if shadow:
        config["shadow"] = {"version": shadow, "service": f"churn-{shadow}", "port": 8080, "mirrorPercent": mirror,
                            "url": urls.get(shadow)}
    return config


def apply(bed: dict[str, Any], config: dict[str, Any], timeout: float = 5.0) -> float:
    """Write the config file and return the seconds until the router reports it applied."""
    started = time.monotonic()
    write_config(bed["config"], config)
    want = [(b["version"], b["weight"], [b["url"]] if b["url"] else []) for b in config["backends"]]
    want_shadow = config["shadow"] and (config["shadow"]["version"], [config["shadow"]["url"]])
    while time.monotonic() - started < timeout:
        _, body = launch.get(bed["router"].url + "/router/state")
        state = json.loads(body)
        shadow = state.get("shadow")
        if [(b["version"], b["weight"], b["endpoints"]) for b in state.get("backends", [])] == want and \
                (shadow and (shadow["version"], shadow["endpoints"])) == want_shadow:
            return time.monotonic() - started
        time.sleep(0.01)
    raise AssertionError(f"router did not apply {config} within {timeout}s")


def row_payload(row: list[float], rid: str | None = None) -> bytes:
    body: dict[str, Any] = {"inputs": [{"name": "x", "shape": [1, 20], "datatype": "FP64", "data": row}]}
    if rid:
        body["id"] = rid
    return json.dumps(body).encode()


async def _blast(url: str, bodies: list[bytes], concurrency: int = 32,
                 headers: dict[str, str] | None = None) -> list[tuple[int, str | None, dict[str, Any]]]:
    results: list[Any] = [None] * len(bodies)
    queue: asyncio.Queue[int] = asyncio.Queue()
    for i in range(len(bodies)):
        queue.put_nowait(i)
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=concurrency)) as session:
        async def worker() -> None:
            while not queue.empty():
                i = queue.get_nowait()
                async with session.post(url, data=bodies[i], headers=headers) as resp:
                    results[i] = (resp.status, resp.headers.get("x-noria-version"), await resp.json())
        await asyncio.gather(*(worker() for _ in range(concurrency)))
    return results


def router_metrics(bed: dict[str, Any]) -> list[str]:
    _, body = launch.get(bed["router"].url + "/metrics")
    return [line for line in body.decode().splitlines() if line and not line.startswith("#")]


def value(lines: list[str], name: str, **labels: str) -> float:
    return sum(float(line.rsplit(" ", 1)[1]) for line in lines
               if line.startswith(name + "{") and all(f'{k}="{v}"' in line for k, v in labels.items()))


def test_ninety_ten_split_over_ten_thousand_requests(bed) -> None:  # type: ignore[no-untyped-def]
    apply(bed, backends(bed, {"churn-v1": 90, "churn-v2": 10}))
    body = row_payload([0.1] * 20)
    results = asyncio.run(_blast(bed["router"].url + f"/v2/models/{MODEL}/infer", [body] * 10_000))
    failures = [(status, answer) for status, _, answer in results if status != 200]
    assert not failures, (len(failures), failures[:3])
    versions = [v for _, v, _ in results]
    assert all(answer["model_version"] == v for _, v, answer in results)
    canary = versions.count("churn-v2")
    # Binomial(10000, 0.1): sd = 30; 5 sd either way fails a real bias, not chance.
    assert 850 <= canary <= 1150, canary
    assert versions.count("churn-v1") + canary == 10_000
    lines = router_metrics(bed)
    assert value(lines, m.ROUTER_WEIGHT, model=MODEL, version="churn-v1") == 90
    assert value(lines, m.ROUTER_WEIGHT, model=MODEL, version="churn-v2") == 10
    assert value(lines, m.REQUEST_DURATION_SECONDS + "_count", model=MODEL) >= 10_000


def test_header_pins_a_version(bed) -> None:  # type: ignore[no-untyped-def]
    apply(bed, backends(bed, {"churn-v1": 99, "churn-v2": 1}))
    url = bed["router"].url + f"/v2/models/{MODEL}/infer"
    results = asyncio.run(_blast(url, [row_payload([0.3] * 20)] * 100, concurrency=8,
                                 headers={"x-noria-version": "churn-v2"}))
    assert {(s, v) for s, v, _ in results} == {(200, "churn-v2")}
    results = asyncio.run(_blast(url, [row_payload([0.3] * 20)], headers={"x-noria-version": "churn-v9"}))
    status, _, answer = results[0]
    assert status == 404 and "churn-v9" in answer["error"] and "churn-v1" in answer["error"]


def test_full_mirroring_keeps_primary_answers_and_counts_agreement_like_an_offline_comparison(bed) -> None:  # type: ignore[no-untyped-def]
    apply(bed, backends(bed, {"churn-v1": 100, "churn-v2": 0}, shadow="churn-v2", mirror=100))
    models: dict[str, SavedModel] = bed["models"]
    frame, _ = dataset("logistic", rows=400, seed=21)
    rows = frame.to_numpy().tolist()
    primary = models["churn-v1"].estimator.predict(frame)
    shadow = models["churn-v2"].estimator.predict(frame)
    expected_agree = int(np.sum(primary == shadow))
    assert 0 < expected_agree < 400  # the two versions really differ on some rows
    before = router_metrics(bed)
    results = asyncio.run(_blast(bed["router"].url + f"/v2/models/{MODEL}/infer",
                                 [row_payload(r, f"mirror-{i}") for i, r in enumerate(rows)], concurrency=16))
    assert [a["outputs"][0]["data"][0] for _, _, a in results] == primary.tolist()
    assert {v for _, v, _ in results} == {"churn-v1"}
    labels = {"model": MODEL, "stable": "churn-v1", "shadow": "churn-v2"}
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        after = router_metrics(bed)
        agree = value(after, m.SHADOW_COMPARISONS_TOTAL, outcome="agree", **labels) - \
            value(before, m.SHADOW_COMPARISONS_TOTAL, outcome="agree", **labels)
        disagree = value(after, m.SHADOW_COMPARISONS_TOTAL, outcome="disagree", **labels) - \
            value(before, m.SHADOW_COMPARISONS_TOTAL, outcome="disagree", **labels)
        if agree + disagree >= 400:
            break
        time.sleep(0.1)
    assert (agree, disagree) == (expected_agree, 400 - expected_agree)
    assert value(after, m.SHADOW_DURATION_SECONDS + "_count", model=MODEL, shadow="churn-v2") >= 400

    # Feedback through the router reaches the replica that remembers the id in both versions.
    status_body = asyncio.run(_feedback(bed["router"].url, {"id": "mirror-3", "label": 1}))
    assert status_body[0] == 200
    assert status_body[1]["matchedByVersion"] == {"churn-v1": 1, "churn-v2": 1}


async def _feedback(url: str, payload: dict[str, Any]) -> tuple[int, dict[str, Any]]:
    async with aiohttp.ClientSession() as session:
        async with session.post(url + f"/v2/models/{MODEL}/feedback", json=payload) as resp:
            return resp.status, await resp.json()


def test_weight_change_is_applied_within_one_second(bed) -> None:  # type: ignore[no-untyped-def]
    apply(bed, backends(bed, {"churn-v1": 100, "churn-v2": 0}))
    elapsed = apply(bed, backends(bed, {"churn-v1": 0, "churn-v2": 100}))
    assert elapsed < 1.0, elapsed
    results = asyncio.run(_blast(bed["router"].url + f"/v2/models/{MODEL}/infer", [row_payload([0.0] * 20)] * 50,
                                 concurrency=4))
    assert {v for _, v, _ in results} == {"churn-v2"}
    lines = router_metrics(bed)
    assert value(lines, m.ROUTER_WEIGHT, model=MODEL, version="churn-v2") == 100
    assert value(lines, m.ROUTER_WEIGHT, model=MODEL, version="churn-v1") == 0


def test_dead_silent_and_undiscovered_backends_fail_fast(bed) -> None:  # type: ignore[no-untyped-def]
    dead_port = launch.free_port()  # nothing listens there
    silent = socket.socket()
    silent.bind(("127.0.0.1", 0))
    silent.listen(64)  # accepts connections in the kernel, never answers
    silent_url = f"http://127.0.0.1:{silent.getsockname()[1]}"
    url = bed["router"].url + f"/v2/models/{MODEL}/infer"
    try:
        for version_url, status, words, limit in ((f"http://127.0.0.1:{dead_port}", 502, "unreachable", 1.5),
                                                  (silent_url, 502, "did not answer within 3s", 4.5),
                                                  (None, 503, "no ready endpoints", 1.5)):
            apply(bed, backends(bed, {"churn-v1": 100}, urls={"churn-v1": version_url}) if version_url
                  else {"model": MODEL, "backends": [{"version": "churn-v1", "service": "churn-churn-v1",
                                                      "weight": 100, "url": None}], "shadow": None})
            started = time.monotonic()
            results = asyncio.run(_blast(url, [row_payload([0.0] * 20)] * 4, concurrency=4))
            elapsed = time.monotonic() - started
            assert elapsed < limit, (words, elapsed)
            for got, _, answer in results:
                assert got == status and words in answer["error"], answer
        lines = router_metrics(bed)
        for reason in (m.ROUTER_ERROR_UNREACHABLE, m.ROUTER_ERROR_TIMEOUT, m.ROUTER_ERROR_NO_ENDPOINTS):
            assert value(lines, m.ROUTER_ERRORS_TOTAL, model=MODEL, version="churn-v1", reason=reason) >= 4, reason
        # The router itself is fine and recovers as soon as the config is good again.
        apply(bed, backends(bed, {"churn-v1": 100}))
        results = asyncio.run(_blast(url, [row_payload([0.0] * 20)] * 4, concurrency=4))
        assert {s for s, _, _ in results} == {200}
    finally:
        silent.close()


def test_shadow_failures_count_as_errors_and_never_reach_the_user(bed) -> None:  # type: ignore[no-untyped-def]
    dead = f"http://127.0.0.1:{launch.free_port()}"
    apply(bed, backends(bed, {"churn-v1": 100}, shadow="churn-v3", urls={"churn-v3": dead}))
    before = router_metrics(bed)
    results = asyncio.run(_blast(bed["router"].url + f"/v2/models/{MODEL}/infer", [row_payload([0.2] * 20)] * 20,
                                 concurrency=4))
    assert {(s, v) for s, v, _ in results} == {(200, "churn-v1")}
    labels = {"model": MODEL, "stable": "churn-v1", "shadow": "churn-v3", "outcome": "error"}
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline:
        got = value(router_metrics(bed), m.SHADOW_COMPARISONS_TOTAL, **labels) - \
            value(before, m.SHADOW_COMPARISONS_TOTAL, **labels)
        if got >= 20:
            break
        time.sleep(0.1)
    assert got == 20
