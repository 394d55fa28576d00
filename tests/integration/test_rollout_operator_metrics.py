"""The operator's /metrics during a real canary (real Prometheus, router and servers): the weight per
version and the step move with the rollout, each analysis measurement is counted once (the counter
equals the tallies in status, although passes run every 0.5 s), the promotion is counted once, the
reconcile metrics carry kind="Rollout", and a deleted Rollout's series go."""

from __future__ import annotations

import threading
import time
import urllib.request

import pytest
from prometheus_client.parser import text_string_to_metric_families
from rollout_helpers import (
    create_model_version,
    operator_env,
    rollout,
    rollout_status,
    save_model,
    start_stable,
    wait_for,
)

pytestmark = pytest.mark.integration


def scrape(url: str) -> list[tuple[str, dict[str, str], float]]:
    with urllib.request.urlopen(url, timeout=5) as response:
        text = response.read().decode()
    return [(s.name, s.labels, s.value) for family in text_string_to_metric_families(text) for s in family.samples]


def value(samples, name: str, **labels: str) -> float | None:  # noqa: ANN001
    return next((v for n, ls, v in samples if n == name and all(ls.get(k) == x for k, x in labels.items())), None)


class Recorder:
    """Scrapes the operator every 0.3 s: (step, churn-v2's weight) seen over the rollout."""

    def __init__(self, url: str, namespace: str) -> None:
        self.url, self.at = url, dict(namespace=namespace, rollout="churn")
        self.seen: set[tuple[float | None, float | None]] = set()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self) -> Recorder:
        self._thread.start()
        return self

    def __exit__(self, *_: object) -> None:
        self._stop.set()
        self._thread.join(5)

    def _run(self) -> None:
        while not self._stop.wait(0.3):
            try:
                samples = scrape(self.url)
            except OSError:
                continue
            self.seen.add((value(samples, "noria_operator_rollout_step", **self.at),
                           value(samples, "noria_operator_rollout_weight", **self.at, version="churn-v2")))


def test_operator_metrics_follow_a_canary_and_count_each_measurement_once(
        cluster, namespace, operator_factory, store_claim, prometheus):
    # The first measurement comes one interval after traffic reaches the canary, and must find its series:
    # a new pod becomes a scrape target up to ~7 s after creation (discovery throttling, docs/analysis.md
    # "The first measurement"), and a canary can be ready 2.5 s after creation. At 3 s the first
    # measurement read "no requests" in 2 of 2 runs; 5 s, two per 12 s pause, keeps 4 measurements.
    manifest = rollout(namespace, {"canary": {"steps": [
        {"setWeight": 30}, {"pause": {"duration": "12s"}}, {"setWeight": 60}, {"pause": {"duration": "12s"}}]}},
        analysis={"interval": "5s", "failureLimit": 1, "checks": [{"builtin": "errorRate", "max": "0.05"}]})
    operator, traffic = start_stable(cluster, namespace, operator_factory, store_claim,
                                     operator_env(prometheus.url), manifest)
    at = dict(namespace=namespace, rollout="churn")
    try:
        with Recorder(operator.metrics_url, namespace) as recorder:
            create_model_version(cluster, save_model(cluster.store_dir, namespace, 2, seed=1))
            wait_for("churn-v2 promoted", lambda: rollout_status(cluster, namespace).get("stableVersion") == "churn-v2",
                     timeout=150, on_timeout=lambda: str(rollout_status(cluster, namespace)))
            time.sleep(1.5)  # the recorder's last scrapes, after the promotion pass
        st = rollout_status(cluster, namespace)
        samples = scrape(operator.metrics_url)
    finally:
        traffic.stop()

    assert {(1.0, 30.0), (3.0, 60.0), (-1.0, 100.0)} <= recorder.seen, sorted(recorder.seen, key=str)
    assert value(samples, "noria_operator_rollout_phase", **at, phase="Healthy") == 1
    assert value(samples, "noria_operator_rollout_phase", **at, phase="Progressing") == 0
    assert value(samples, "noria_operator_rollout_weight", **at, version="churn-v2") == 100
    assert value(samples, "noria_operator_rollout_weight", **at, version="churn-v1") is None  # left the weights
    assert value(samples, "noria_operator_rollout_promotions_total", **at) == 1
    tallies = st["analysis"]
    recorded = tallies["passed"] + tallies["failed"] + tallies["errors"] + tallies["inconclusive"]
    counted = sum(v for n, ls, v in samples if n == "noria_operator_analysis_measurements_total"
                  and ls.get("namespace") == namespace and ls.get("check") == "errorRate")
    # 24 s of pauses at a 5 s interval: several measurements, each counted once (passes ran every 0.5 s).
    assert recorded >= 4 and counted == recorded, (counted, tallies)
    assert value(samples, "noria_operator_analysis_measurements_total", **at, check="errorRate",
                 outcome="Successful") == tallies["passed"]
    # Every outcome's series exists from the first pass (at 0 if none), so increase() sees a first failure.
    assert value(samples, "noria_operator_analysis_measurements_total", **at, check="errorRate",
                 outcome="Failed") == tallies["failed"]
    rollout_passes = value(samples, "noria_operator_reconcile_duration_seconds_count", kind="Rollout") or 0
    assert rollout_passes > 10
    print(f"FIGURE {counted:.0f} measurements counted = {recorded} recorded in status, over {rollout_passes:.0f} "
          f"Rollout passes; (step, churn-v2 weight) seen: {sorted(recorder.seen, key=str)}")

    cluster.kubectl("delete", "rollouts.noria.dev", "churn", "-n", namespace, "--timeout=30s")
    wait_for("the deleted Rollout's series gone", lambda: not [
        n for n, ls, _ in scrape(operator.metrics_url) if ls.get("namespace") == namespace
        and ls.get("rollout") == "churn"], timeout=30)
