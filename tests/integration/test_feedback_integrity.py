"""Feedback that cannot be gamed, end to end: real trained models served by real ``noria_server``
processes behind the real router, a feedback token configured, and a real Prometheus scraping them; and a Rollout on the real API server whose token comes from a Secret.

Given honest predictions and labels, when an attacker replays ids, forges ids, sends labels that are
not classes or not finite or absurdly large, or posts without the token, then no counter moves
(read from ``/metrics``), each item's answer says why, and the rollout's accuracy/F1 checks —
the operator's own queries (``checks.queries_for``), reduction and verdict (``analysis.judge_check``)
against Prometheus — measure exactly the same value and reach the same verdict as for a twin version
that received only the honest labels.
"""

from __future__ import annotations

import asyncio
import json
import subprocess
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import yaml
from helm_helpers import ChartRbac, build_helm
from noria import metrics as m
from noria.deployment import checks
from noria.deployment.analysis import judge_check
from noria.deployment.spec import parse_check
from noria.prometheus import PrometheusClient
from noria_server import launch, oip
from noria_server.reference_models import SavedModel, dataset, train_and_save
from noria_testbed.binaries import find_prometheus

pytestmark = pytest.mark.integration

TOKEN = "fb-token-" + "7f3a9c" * 6
AUTH = {"authorization": f"Bearer {TOKEN}"}
NAMESPACE = "fb"
MODEL = "churn"
HONEST, ATTACKED, ROUTED = "churn-honest", "churn-attacked", "churn-v1"


def post(url: str, payload: Any, headers: dict[str, str] | None = None, raw: bytes | None = None,
         ) -> tuple[int, dict[str, Any]]:
    data = raw if raw is not None else json.dumps(payload).encode()
    req = urllib.request.Request(url, data=data, method="POST",
                                 headers={"content-type": "application/json", **(headers or {})})
    try:
        with urllib.request.urlopen(req, timeout=30) as resp:
            return resp.status, json.loads(resp.read())
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read() or b"{}")


def scrape(url: str) -> dict[tuple[str, frozenset[tuple[str, str]]], float]:
    status, body = launch.get(url + "/metrics")
    assert status == 200
    out: dict[tuple[str, frozenset[tuple[str, str]]], float] = {}
    for line in body.decode().splitlines():
        if not line or line.startswith("#"):
            continue
        head, value = line.rsplit(" ", 1)
        name, _, labels = head.partition("{")
        pairs = frozenset(tuple(p.split("=", 1)) for p in labels.rstrip("}").replace('"', "").split(",") if p)
        out[(name, pairs)] = float(value)  # type: ignore[index]
    return out


def total(metrics: dict[tuple[str, frozenset[tuple[str, str]]], float], name: str, **labels: str) -> float:
    want = set(labels.items())
    return sum(v for (n, pairs), v in metrics.items() if n == name and want <= set(pairs))


MOVED_ONLY_BY_REAL_LABELS = (m.FEEDBACK_TOTAL, m.FEEDBACK_ABS_ERROR_SUM, m.FEEDBACK_ABS_ERROR_COUNT)


def counters(url: str) -> dict[str, float]:
    now = scrape(url)
    return {name: total(now, name) for name in MOVED_ONLY_BY_REAL_LABELS}


def rows_payload(rows: np.ndarray, ids: list[str]) -> dict[str, Any]:
    return {"inputs": [{"name": "x", "shape": list(rows.shape), "datatype": "FP64", "data": rows.tolist()}],
            "parameters": {"ids": ids}}


class PrometheusScraping:
    """A real Prometheus scraping the servers every second, as a kubernetes_sd job would label them."""

    def __init__(self, root: Path, targets: list[str]) -> None:
        self.port = launch.free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        config = {"global": {"scrape_interval": "1s", "scrape_timeout": "1s", "evaluation_interval": "1s"},
                  "scrape_configs": [{"job_name": "servers", "static_configs": [
                      {"targets": targets, "labels": {"namespace": NAMESPACE}}]}]}
        (root / "prometheus.yml").write_text(yaml.safe_dump(config))
        self.log = open(root / "prometheus.log", "ab")  # noqa: SIM115 - closed in stop()
        self.proc = subprocess.Popen(
            [str(find_prometheus().prometheus), f"--config.file={root / 'prometheus.yml'}", f"--storage.tsdb.path={root / 'tsdb'}",
             f"--web.listen-address=127.0.0.1:{self.port}", "--log.level=warn"],
            stdout=self.log, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            assert self.proc.poll() is None, (root / "prometheus.log").read_text()[-2000:]
            try:
                if launch.get(self.url + "/-/ready")[0] == 200:
                    return
            except OSError:
                pass
            time.sleep(0.2)
        raise TimeoutError("prometheus not ready")

    def value(self, promql: str) -> float:
        with urllib.request.urlopen(f"{self.url}/api/v1/query?{urllib.parse.urlencode({'query': promql})}",
                                    timeout=10) as resp:
            result = json.loads(resp.read())["data"]["result"]
        return float(result[0]["value"][1]) if result else 0.0

    def stop(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        self.log.close()


@pytest.fixture(scope="module")
def bed(tmp_path_factory: pytest.TempPathFactory):  # type: ignore[no-untyped-def]
    root = tmp_path_factory.mktemp("feedback")
    classifier: SavedModel = train_and_save("logistic", str(root / "store" / NAMESPACE / MODEL / "v1"), rows=1500)
    regressor: SavedModel = train_and_save("regressor", str(root / "regressor"), rows=1500)
    env = {"NORIA_FEEDBACK_TOKEN": TOKEN + "\n"}  # as a Secret made with --from-file often is
    servers: dict[str, launch.Process] = {}
    router: launch.Process | None = None
    prometheus: PrometheusScraping | None = None
    try:
        for version in (HONEST, ATTACKED, ROUTED):
            logs = ["--store-root", f"file://{root}/store", "--namespace", NAMESPACE, "--pipeline", MODEL,
                    "--pod", version]
            servers[version] = launch.serve(classifier.artifact_uri, classifier.digest, MODEL, version, str(root),
                                            classifier.profile_uri, logs, env=env)
        servers["reg-v1"] = launch.serve(regressor.artifact_uri, regressor.digest, "reg", "reg-v1", str(root),
                                         regressor.profile_uri, env=env)
        for proc in servers.values():
            proc.wait_ready(300)
        config = root / "router.json"
        config.write_text(json.dumps({"model": MODEL, "namespace": NAMESPACE, "shadow": None, "backends": [
            {"version": ROUTED, "service": None, "port": 8080, "weight": 100, "url": servers[ROUTED].url},
            {"version": ATTACKED, "service": None, "port": 8080, "weight": 0, "url": servers[ATTACKED].url}]}))
        router = launch.route(str(config), str(root), env=env)
        router.wait_ready(60)
        prometheus = PrometheusScraping(root, [s.url.removeprefix("http://") for s in servers.values()])
        # As on a cluster, where scraping starts with the pod: increase() needs the zero-valued
        # first sample of each series, taken before any label arrives.
        for version in (HONEST, ATTACKED):
            query = f'count({m.FEEDBACK_TOTAL}{{namespace="{NAMESPACE}", version="{version}"}})'
            deadline = time.monotonic() + 30
            while prometheus.value(query) == 0 and time.monotonic() < deadline:
                time.sleep(0.3)
            assert prometheus.value(query) > 0, f"prometheus never scraped {version}"
        yield {"servers": servers, "router": router, "prometheus": prometheus, "classifier": classifier,
               "regressor": regressor, "root": root}
    finally:
        if prometheus is not None:
            prometheus.stop()
        if router is not None:
            router.stop()
        for proc in servers.values():
            proc.stop()


def test_replayed_forged_invalid_and_unauthenticated_feedback_moves_no_counter(bed) -> None:  # type: ignore[no-untyped-def]
    servers, router = bed["servers"], bed["router"]
    routed_url, attacked_url = servers[ROUTED].url, servers[ATTACKED].url
    feedback = router.url + f"/v2/models/{MODEL}/feedback"
    frame, target = dataset("logistic", rows=30, seed=5)
    rows, labels = frame.to_numpy(), [int(t) for t in target]
    ids = [f"c-{i}" for i in range(30)]

    # Given 30 predictions through the router (inference needs no token) and their true labels.
    status, answer = post(router.url + f"/v2/models/{MODEL}/infer", rows_payload(rows[:25], ids[:25]))
    assert status == 200 and answer["model_version"] == ROUTED
    predicted = answer["outputs"][0]["data"]
    status, spare = post(router.url + f"/v2/models/{MODEL}/infer", rows_payload(rows[25:], ids[25:]))
    assert status == 200
    before = {v: counters(servers[v].url) for v in (ROUTED, ATTACKED)}
    requests_before = {v: total(scrape(servers[v].url), m.REQUESTS_TOTAL, **{m.LABEL_ENDPOINT: m.ENDPOINT_INFER}) for v in (ROUTED, ATTACKED)}
    status, honest = post(feedback, {"feedback": [{"id": i, "label": y} for i, y in zip(ids[:25], labels[:25],
                                                                                          strict=True)]}, AUTH)
    assert status == 200 and honest["outcomes"]["counted"] == 25
    assert honest["matchedByVersion"] == {ROUTED: 25, ATTACKED: 0}
    after_honest = {v: counters(servers[v].url) for v in (ROUTED, ATTACKED)}
    assert after_honest[ROUTED][m.FEEDBACK_TOTAL] - before[ROUTED][m.FEEDBACK_TOTAL] == 25
    assert after_honest[ATTACKED] == before[ATTACKED]

    # When an attacker replays, forges, mislabels and posts without the token ...
    replay = [{"id": i, "label": p} for i, p in zip(ids[:25], predicted, strict=True)] * 200  # 5,000 items
    status, answer = post(feedback, {"feedback": replay}, AUTH)
    assert status == 200 and answer["outcomes"]["duplicate"] == 5_000 and answer["outcomes"]["counted"] == 0
    status, answer = post(attacked_url + f"/v2/models/{MODEL}/feedback", {"feedback": replay[:2_000]}, AUTH)
    assert status == 200 and answer["outcomes"]["unknown_id"] == 2_000  # straight to a pod that never saw them
    forged = [{"id": f"forged-{k}", "label": 1} for k in range(1_000)]
    status, answer = post(feedback, {"feedback": forged}, AUTH)
    assert status == 200 and answer["outcomes"]["unknown_id"] == 1_000
    invalid = [{"id": ids[25], "label": 7}, {"id": ids[26], "label": "cat"}, {"id": ids[27], "label": 0.5},
               {"id": ids[28], "label": True}]
    status, answer = post(feedback, {"feedback": invalid}, AUTH)
    assert status == 200 and [r["outcome"] for r in answer["results"]] == ["invalid"] * 4
    assert {r["reason"] for r in answer["results"]} == {m.FEEDBACK_UNKNOWN_CLASS}
    assert "0, 1" in answer["results"][0]["message"]
    fresh = [{"id": i, "label": y} for i, y in zip(ids[25:], labels[25:], strict=True)]  # would count if allowed
    for headers in ({}, {"authorization": "Bearer guessed-token-123456"}, {"authorization": TOKEN}):
        for url in (feedback, routed_url + f"/v2/models/{MODEL}/feedback"):
            status, answer = post(url, {"feedback": fresh}, headers)
            assert status == 401 and TOKEN not in json.dumps(answer), (url, headers)
    for number in (b"1e400", b"NaN", b"-Infinity"):
        status, _ = post(feedback, None, AUTH, raw=b'{"id": "c-25", "label": ' + number + b"}")
        assert status == 400

    # ... then nothing moved on any server.
    assert {v: counters(servers[v].url) for v in (ROUTED, ATTACKED)} == after_honest
    routed_metrics = scrape(routed_url)
    assert total(routed_metrics, m.FEEDBACK_REFUSED_TOTAL, reason=m.FEEDBACK_DUPLICATE) == 5_000
    assert total(routed_metrics, m.FEEDBACK_REFUSED_TOTAL, reason=m.FEEDBACK_UNKNOWN_CLASS) == 4
    assert total(routed_metrics, m.FEEDBACK_REFUSED_TOTAL, reason=m.FEEDBACK_UNAUTHORIZED) == 3
    assert total(routed_metrics, m.FEEDBACK_REFUSED_TOTAL, reason=m.FEEDBACK_UNKNOWN_ID) == 0  # fanned-out copies
    # Feedback answers are not inference: errorRate's noria_requests_total saw none of these posts.
    assert {v: total(scrape(servers[v].url), m.REQUESTS_TOTAL, **{m.LABEL_ENDPOINT: m.ENDPOINT_INFER}) for v in (ROUTED, ATTACKED)} == requests_before
    router_metrics = scrape(router.url)
    assert total(router_metrics, m.ROUTER_FEEDBACK_TOTAL, outcome="unknown_id") == 1_000
    assert total(router_metrics, m.ROUTER_FEEDBACK_TOTAL, outcome=m.FEEDBACK_UNAUTHORIZED) == 3

    # The ids the refused posts named are still open: their first real label counts, once.
    status, answer = post(feedback, {"feedback": fresh + fresh}, AUTH)
    assert status == 200 and answer["outcomes"] == {"counted": 5, "duplicate": 5, "invalid": 0, "expired": 0,
                                                    "unknown_id": 0}
    assert counters(routed_url)[m.FEEDBACK_TOTAL] == after_honest[ROUTED][m.FEEDBACK_TOTAL] + 5
    assert oip.row_ids(spare) == ids[25:]  # the client's own ids, given as a list, answered back

    # The feedback log (what retraining reads) has each counted label once, from the pod that
    # counted it, and each label no pod held once: 5,000 replays and 3 refused posts added nothing.
    log_dir = bed["root"] / "store" / NAMESPACE / MODEL / "feedback"
    deadline = time.monotonic() + 10
    logged: list[dict[str, Any]] = []
    while time.monotonic() < deadline:
        logged = [json.loads(line) for f in sorted(log_dir.rglob(f"{ROUTED}-*.jsonl"))
                  for line in f.read_text().splitlines() if line.strip()]
        if sum(r["id"].startswith("c-") for r in logged) >= 30:
            break
        time.sleep(0.2)
    from_routed = [r["id"] for r in logged if r["id"].startswith("c-")]
    assert sorted(from_routed) == sorted(ids), "each counted label logged exactly once"
    time.sleep(1.0)
    everywhere = [json.loads(line)["id"] for f in log_dir.rglob("*.jsonl") for line in f.read_text().splitlines()
                  if line.strip()]
    forged_lines = [i for i in everywhere if i.startswith("forged-")]
    assert len(forged_lines) == len(set(forged_lines)) == 1_000


def test_regression_errors_stay_finite_and_move_only_by_real_labels(bed) -> None:  # type: ignore[no-untyped-def]
    url = bed["servers"]["reg-v1"].url
    status, answer = post(url + "/v2/models/reg/infer", rows_payload(np.zeros((2, 20)), ["r-0", "r-1"]))
    assert status == 200
    prediction = answer["outputs"][0]["data"][0]
    before = counters(url)
    status, answer = post(url + "/v2/models/reg/feedback", {"feedback": [
        {"id": "r-0", "label": 1.7e308}, {"id": "r-0", "label": 1.7e308}, {"id": "r-0", "label": -1e12},
        {"id": "never", "label": 3.0}]}, AUTH)
    assert status == 200 and [r["outcome"] for r in answer["results"]] == ["invalid"] * 3 + ["unknown_id"]
    assert {r.get("reason") for r in answer["results"][:3]} == {m.FEEDBACK_OUT_OF_RANGE}
    assert counters(url) == before
    status, answer = post(url + "/v2/models/reg/feedback", {"feedback": [{"id": "r-0", "label": prediction + 2.5}] * 3},
                          AUTH)
    assert answer["outcomes"]["counted"] == 1 and answer["outcomes"]["duplicate"] == 2
    after = counters(url)
    assert after[m.FEEDBACK_ABS_ERROR_COUNT] - before[m.FEEDBACK_ABS_ERROR_COUNT] == 1
    assert after[m.FEEDBACK_ABS_ERROR_SUM] - before[m.FEEDBACK_ABS_ERROR_SUM] == pytest.approx(2.5)


def _measure(prometheus_url: str, version: str, raw_check: dict[str, Any]) -> Any:
    """The operator's measurement of one check: its PromQL, Prometheus' answer, its reduction and verdict."""
    check = parse_check(raw_check, 0)
    ctx = checks.CheckContext(namespace=NAMESPACE, rollout=MODEL, pipeline=MODEL, version=version, stable=None,
                              window=600.0)

    async def run() -> Any:
        client = PrometheusClient(prometheus_url)
        try:
            results = {part: await client.query(q) for part, q in checks.queries_for(check, ctx).items()}
        finally:
            await client.aclose()
        return judge_check(check, checks.reduce(check, ctx, results))

    return asyncio.run(run())


def test_an_analysis_fed_replayed_and_forged_feedback_reaches_the_same_verdict(bed) -> None:  # type: ignore[no-untyped-def]
    servers, router, prometheus = bed["servers"], bed["router"], bed["prometheus"]
    frame, target = dataset("logistic", rows=80, seed=9)
    rows, labels = frame.to_numpy(), [int(t) for t in target]
    ids = [f"a-{i}" for i in range(80)]
    # Given the same 80 predictions and the same true labels on two versions of the same model: one
    # straight to its server, the other through the router (pinned to it), ...
    status, direct = post(servers[HONEST].url + f"/v2/models/{MODEL}/infer", rows_payload(rows, ids))
    assert status == 200
    status, routed = post(router.url + f"/v2/models/{MODEL}/infer", rows_payload(rows, ids),
                          {"x-noria-version": ATTACKED})
    assert status == 200 and routed["model_version"] == ATTACKED
    predicted = direct["outputs"][0]["data"]
    assert routed["outputs"][0]["data"] == predicted
    honest = {"feedback": [{"id": i, "label": y} for i, y in zip(ids, labels, strict=True)]}
    assert post(servers[HONEST].url + f"/v2/models/{MODEL}/feedback", honest, AUTH)[1]["outcomes"]["counted"] == 80
    assert post(router.url + f"/v2/models/{MODEL}/feedback", honest, AUTH)[1]["matchedByVersion"][ATTACKED] == 80
    correct = sum(p == y for p, y in zip(predicted, labels, strict=True))
    accuracy = correct / 80
    assert 0.5 < accuracy < 0.97  # a real model, with real mistakes
    # ... and a bar the honest labels do not clear.
    bar = round(accuracy + 0.02, 4)

    # When the attacked version also gets what would lift it over the bar if it counted: every id
    # relabelled with its own prediction, replayed; forged ids; unknown classes; unauthenticated posts.
    flattering = [{"id": i, "label": p} for i, p in zip(ids, predicted, strict=True)]
    attacked_feedback = servers[ATTACKED].url + f"/v2/models/{MODEL}/feedback"
    routed_feedback = router.url + f"/v2/models/{MODEL}/feedback"
    for url in (routed_feedback, attacked_feedback):
        assert post(url, {"feedback": flattering * 100}, AUTH)[1]["outcomes"]["duplicate"] == 8_000
        assert post(url, {"feedback": flattering}, {})[0] == 401
        forged = [{"id": f"{url[-30:]}-forged-{k}", "label": p} for k, p in enumerate(predicted * 20)]
        assert post(url, {"feedback": forged}, AUTH)[1]["outcomes"]["unknown_id"] == 1_600
        assert post(url, {"feedback": [{"id": ids[0], "label": 9}] * 50}, AUTH)[1]["outcomes"]["counted"] == 0
    naive_accuracy = (correct + 8_000 * 2) / (80 + 8_000 * 2)  # had replays counted, as before this change
    assert naive_accuracy > bar

    # Then both versions hold exactly the honest labels in Prometheus ...
    for version in (HONEST, ATTACKED):
        selector = f'{{namespace="{NAMESPACE}", version="{version}"}}'
        deadline = time.monotonic() + 30
        while prometheus.value(f"sum({m.FEEDBACK_TOTAL}{selector})") != 80 and time.monotonic() < deadline:
            time.sleep(0.5)
        assert prometheus.value(f"sum({m.FEEDBACK_TOTAL}{selector})") == 80
    time.sleep(2.5)  # a few more scrapes after the last label, for both

    # ... and the operator's checks measure the same value and reach the same verdict for both.
    for raw_check in ({"builtin": "accuracy", "min": str(bar), "minLabels": 20, "window": "10m"},
                      {"builtin": "f1", "min": "0.99", "minLabels": 20, "window": "10m"},
                      {"builtin": "accuracy", "min": "0.5", "minLabels": 20, "window": "10m"}):
        honest_result = _measure(prometheus.url, HONEST, raw_check)
        attacked_result = _measure(prometheus.url, ATTACKED, raw_check)
        assert attacked_result.outcome == honest_result.outcome, (raw_check, honest_result, attacked_result)
        assert honest_result.outcome in ("success", "failure"), honest_result
        assert attacked_result.value == pytest.approx(honest_result.value, rel=1e-9), raw_check
        if raw_check["builtin"] == "accuracy":
            assert honest_result.value == pytest.approx(accuracy, rel=1e-9)
        print(f"FIGURE verdict {raw_check['builtin']} min {raw_check['min']}: honest {honest_result.outcome} "
              f"{honest_result.value:.4f}, attacked {attacked_result.outcome} {attacked_result.value:.4f}")
    assert _measure(prometheus.url, ATTACKED, {"builtin": "accuracy", "min": str(bar), "minLabels": 20,
                                               "window": "10m"}).outcome == "failure"


# --- on the real API server, with the operator ------------------------------------------------------------
def test_a_rollout_with_a_token_serves_feedback_only_to_its_bearer(cluster, namespace, operator_factory,  # type: ignore[no-untyped-def]
                                                                   store_claim, prometheus) -> None:
    from rollout_helpers import get, operator_env, rollout, service_url, start_stable

    cluster.kubectl("create", "secret", "generic", "churn-feedback", "-n", namespace,
                    f"--from-literal=token={TOKEN}")
    manifest = rollout(namespace, {"immediate": {}}, feedback={"tokenSecretRef": {"name": "churn-feedback"}})
    _, traffic = start_stable(cluster, namespace, operator_factory, store_claim, operator_env(prometheus.url),
                              manifest)  # the traffic generator predicts without any token: inference is open
    try:
        for deployment in ("churn-churn-v1", "churn-router"):
            spec = get(cluster, namespace, "deployment", deployment)["spec"]["template"]["spec"]  # type: ignore[index]
            env = {e["name"]: e for e in spec["containers"][0]["env"]}
            assert env["NORIA_FEEDBACK_TOKEN"]["valueFrom"] == {
                "secretKeyRef": {"name": "churn-feedback", "key": "token"}}, deployment
        everything = cluster.kubectl("get", "deployments,configmaps,rollouts.noria.dev", "-n", namespace,
                                     "-o", "json").stdout
        assert TOKEN not in everything
        url = service_url(cluster, namespace, "churn")
        frame, target = dataset("logistic", rows=3, seed=4)
        status, answer = post(f"{url}/v2/models/churn/infer", rows_payload(frame.to_numpy(), ["k-0", "k-1", "k-2"]))
        assert status == 200
        labels = [{"id": f"k-{i}", "label": int(y)} for i, y in enumerate(target)]
        assert post(f"{url}/v2/models/churn/feedback", {"feedback": labels})[0] == 401
        assert post(f"{url}/v2/models/churn/feedback", {"feedback": labels},
                    {"authorization": "Bearer not-the-token-at-all"})[0] == 401
        status, answer = post(f"{url}/v2/models/churn/feedback", {"feedback": labels * 2}, AUTH)
        assert status == 200 and answer["outcomes"]["counted"] == 3 and answer["outcomes"]["duplicate"] == 3
        assert answer["matchedByVersion"] == {"churn-v1": 3}
        assert all(a.status == 200 for a in traffic.answers)
    finally:
        traffic.stop()


@pytest.fixture
def chart_operator_account(cluster: Any, namespace: str) -> Iterator[str]:  # noqa: ANN401
    """The operator's account as the chart really grants it (cluster-wide mode, `helm template`d),
    its ServiceAccount in the test's namespace."""
    rbac = ChartRbac(cluster, build_helm(), namespace, [])
    yield rbac.user
    rbac.remove()


def test_the_chart_operator_account_wires_the_token_without_reading_secrets(cluster, namespace,  # type: ignore[no-untyped-def]
                                                                           chart_operator_account) -> None:
    from noria.deployment import objects
    from noria.deployment.spec import SecretKeyRef
    from noria.settings import Settings

    ref = objects.RolloutRef(name="churn", namespace=namespace, uid="0")
    mv = {"metadata": {"name": "churn-v1"}, "spec": {"pipeline": "churn", "artifact": {"uri": "file:///x",
                                                                                       "digest": "sha256:0"}}}
    deployment = objects.version_deployment(ref, mv, 0, Settings(), feedback_token=SecretKeyRef("churn-feedback"))
    del deployment["metadata"]["ownerReferences"]
    out = cluster.kubectl("create", "--as", chart_operator_account, "-n", namespace, "-f", "-",
                          input=json.dumps(deployment), check=False)
    assert out.returncode == 0, out.stderr
    denied = cluster.kubectl("get", "secret", "churn-feedback", "--as", chart_operator_account, "-n", namespace,
                             check=False)
    assert denied.returncode != 0 and "forbidden" in denied.stderr.lower()


def test_a_rollout_whose_token_secret_is_missing_never_serves_feedback_open(cluster, namespace,  # type: ignore[no-untyped-def]
                                                                           operator_factory, store_claim,
                                                                           prometheus) -> None:
    from rollout_helpers import (
        create_model_version,
        operator_env,
        rollout,
        rollout_status,
        save_model,
        wait_for,
    )

    store_claim(namespace)
    create_model_version(cluster, save_model(cluster.store_dir, namespace, 1))
    operator_factory(namespace, **operator_env(prometheus.url))
    cluster.kubectl("apply", "-f", "-", input=rollout(namespace, {"immediate": {}},
                                                      feedback={"tokenSecretRef": {"name": "no-such-secret"}}))

    def waiting_reasons() -> set[str]:
        pods = json.loads(cluster.kubectl("get", "pods", "-n", namespace, "-o", "json").stdout)["items"]
        return {((s.get("state") or {}).get("waiting") or {}).get("reason", "")
                for p in pods for s in (p.get("status") or {}).get("containerStatuses") or []}

    wait_for("pods held for the missing Secret", lambda: "CreateContainerConfigError" in waiting_reasons(),
             timeout=120, on_timeout=lambda: str(waiting_reasons()))
    time.sleep(3)
    assert rollout_status(cluster, namespace).get("phase") != "Healthy"
    assert "CreateContainerConfigError" in waiting_reasons()
