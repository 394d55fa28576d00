"""Each trigger fires on its condition and only then, against the real control plane, the real
trainer and (for drift and performance) a real Prometheus scraping a test exporter whose counter
rates the test sets.

Every test starts from a pipeline whose initial run registered ``<p>-v1`` (the champion), then
changes one thing in the world and watches which run follows, with which trigger.
"""

from __future__ import annotations

import json
import time

import pytest
from lightkube import Client
from lightkube.types import PatchType
from noria.contracts import COMPONENT_SERVER, LABEL_COMPONENT
from noria.kube import TrainingPipeline
from noria.profile import Profile
from noria.scrape import POD_PORT_NAME
from training_helpers import (
    classification_frame,
    condition,
    finished_runs,
    get,
    jobs,
    pipeline_yaml,
    settle,
    status,
    wait_for,
    write_data,
)

pytestmark = pytest.mark.integration

# A tiny exporter: counters grow at the rates in a JSON file the test rewrites, so the increase
# over a window is whatever distribution the test chose. Prometheus scrapes it every second.
EXPORTER = r'''
import json, sys, time, http.server
path, start, totals, last = sys.argv[1], time.time(), {}, time.time()
class H(http.server.BaseHTTPRequestHandler):
    def do_GET(self):
        global last
        now = time.time()
        try:
            series = json.load(open(path))
        except Exception:
            series = []
        for s in series:
            key = (s["name"], tuple(sorted(s["labels"].items())))
            totals[key] = totals.get(key, 0.0) + s["rate"] * (now - last)
        last = now
        lines = []
        for (name, labels), value in sorted(totals.items()):
            text = ",".join(f'{k}="{v}"' for k, v in labels)
            lines.append(f"{name}{{{text}}} {value}")
        body = ("\n".join(lines) + "\n").encode()
        self.send_response(200)
        self.send_header("Content-Type", "text/plain; version=0.0.4")
        self.end_headers()
        self.wfile.write(body)
    def log_message(self, *a):
        pass
import os
http.server.HTTPServer((os.environ["POD_IP"], 9100), H).serve_forever()
'''


def exporter_pod(namespace: str) -> str:
    return json.dumps({
        # Labelled and named as a model server is, so Prometheus scrapes it as the chart's PodMonitor would.
        "apiVersion": "v1", "kind": "Pod", "metadata": {"name": "exporter", "labels": {
            "app": "exporter", LABEL_COMPONENT: COMPONENT_SERVER}},
        "spec": {
            "automountServiceAccountToken": False,
            "containers": [{
                "name": "exporter", "image": "python:3.11-slim",
                "command": ["python", "-c", EXPORTER, f"/var/lib/noria/store/exporters/{namespace}.json"],
                "env": [{"name": "POD_IP", "valueFrom": {"fieldRef": {"fieldPath": "status.podIP"}}}],
                "ports": [{"name": POD_PORT_NAME, "containerPort": 9100}],
                "volumeMounts": [{"name": "store", "mountPath": "/var/lib/noria/store"}],
            }],
            "volumes": [{"name": "store", "persistentVolumeClaim": {"claimName": "noria-store"}}],
        },
    })


def set_rates(cluster, namespace: str, series: list[dict]) -> None:  # noqa: ANN001
    folder = cluster.store_dir / "exporters"
    folder.mkdir(parents=True, exist_ok=True)
    tmp = folder / f".{namespace}.json.tmp"
    tmp.write_text(json.dumps(series))
    tmp.rename(folder / f"{namespace}.json")


def bin_rates(profile: Profile, model: str, version: str, per_second: float, shifted: bool) -> list[dict]:
    """Live values drawn like the reference (not shifted), or all above the top bin edge (shifted)."""
    out = []
    for feature, fp in profile.features.items():
        for label, fraction in zip(fp.labels, fp.reference, strict=True):
            rate = (per_second if label == "above" else 0.0) if shifted else per_second * float(fraction)
            if rate > 0:
                out.append({"name": "noria_feature_bin_total", "rate": rate,
                            "labels": {"model": model, "version": version, "feature": feature, "bin": label}})
    return out


def feedback_rates(model: str, version: str, per_second: float, error_share: float) -> list[dict]:
    cells = {("1", "1"): 0.5 * (1 - error_share), ("0", "0"): 0.5 * (1 - error_share),
             ("1", "0"): 0.5 * error_share, ("0", "1"): 0.5 * error_share}
    return [{"name": "noria_feedback_total", "rate": per_second * share,
             "labels": {"model": model, "version": version, "actual": a, "predicted": p}}
            for (a, p), share in cells.items() if share > 0]


def start_with_champion(cluster, namespace, store_claim, operator_factory, name: str,  # noqa: ANN001
                        triggers: dict, rows: int = 600, **operator_env: str) -> tuple:
    store_claim(namespace)
    source = write_data(cluster.store_dir, namespace, name, classification_frame(rows))
    op = operator_factory(namespace, **operator_env)
    cluster.kubectl("apply", "-n", namespace, "-f", "-", input=pipeline_yaml(name, source, triggers=triggers))
    wait_for(f"{name}-v1 is champion", lambda: status(cluster, namespace, name).get("championVersion") == f"{name}-v1",
             timeout=180, on_timeout=lambda: json.dumps(status(cluster, namespace, name), indent=1))
    return op, source


def run_triggers(cluster, namespace: str, name: str) -> list[str]:  # noqa: ANN001
    """Triggers of all runs so far, oldest first (finished and current)."""
    st = status(cluster, namespace, name)
    done = [r["trigger"] for r in reversed(st.get("lastRuns") or [])]
    return done + ([st["currentRun"]["trigger"]] if st.get("currentRun") else [])


def annotate_many(namespace: str, name: str, values: list[str]) -> float:
    """Write the retrain annotation once per value, as fast as the API server takes it."""
    client = Client()
    started = time.monotonic()
    for value in values:
        client.patch(TrainingPipeline, name, {"metadata": {"annotations": {"noria.dev/retrain": value}}},
                     namespace=namespace, patch_type=PatchType.MERGE)
    return time.monotonic() - started


def test_manual_burst_is_one_run_and_a_burst_during_a_run_is_one_follow_up(
        cluster, namespace, store_claim, operator_factory):
    tuning = {"tuning": {"strategy": "random", "trials": 15, "space": {"C": [0.01, 10.0]}}}
    store_claim(namespace)
    source = write_data(cluster.store_dir, namespace, "burst", classification_frame(600))
    # A burst is writes less than the settle time apart; on this shared 2-core machine one write can
    # take 200 ms while a trainer runs, so the settle time is generous here.
    settle_seconds = 15
    operator_factory(namespace, NORIA_TRIGGER_SETTLE_SECONDS=str(settle_seconds))
    cluster.kubectl("apply", "-n", namespace, "-f", "-", input=pipeline_yaml("burst", source, extra=tuning))
    wait_for("initial run done", lambda: finished_runs(cluster, namespace, "burst"), timeout=180)

    took = annotate_many(namespace, "burst", [f"a{i}" for i in range(50)])
    assert took < settle_seconds, f"the burst took {took:.2f}s, longer than the settle time"
    wait_for("manual run started", lambda: run_triggers(cluster, namespace, "burst") == ["initial", "manual"],
             timeout=60)
    annotate_many(namespace, "burst", [f"b{i}" for i in range(50)])  # during the run
    wait_for("follow-up finished", lambda: len(finished_runs(cluster, namespace, "burst")) == 3, timeout=300)
    settle(8)
    assert run_triggers(cluster, namespace, "burst") == ["initial", "manual", "manual"]
    assert sorted(j["metadata"]["name"] for j in jobs(cluster, namespace, "burst")) == [
        "burst-r1", "burst-r2", "burst-r3"]
    st = status(cluster, namespace, "burst")
    assert st["triggers"]["manual"]["handled"] == "b49"


def test_schedule_fires_at_the_next_minute_and_shows_it(cluster, namespace, store_claim, operator_factory):
    start_with_champion(cluster, namespace, store_claim, operator_factory, "sched", {"schedule": "* * * * *"})
    st = status(cluster, namespace, "sched")
    due = st["nextScheduledRun"]
    assert due and "NEXT RUN" in cluster.kubectl("get", "tp", "sched", "-n", namespace).stdout
    assert run_triggers(cluster, namespace, "sched")[0] == "initial"

    # On a loaded machine the initial run can outlast a minute: a tick during it is pending and
    # runs after it, before ``due`` was read. The run for the tick shown as ``due`` is awaited.
    def runs_for_due() -> list[dict]:
        st = status(cluster, namespace, "sched")
        runs = ([st["currentRun"]] if st.get("currentRun") else []) + (st.get("lastRuns") or [])
        return [r for r in runs if r["trigger"] == "schedule" and r["startedAt"] >= due]

    wait_for("scheduled run", runs_for_due, timeout=100)  # never early: it starts at or after due
    assert status(cluster, namespace, "sched")["nextScheduledRun"] > due


def test_new_data_fires_only_after_min_new_rows(cluster, namespace, store_claim, operator_factory):
    start_with_champion(cluster, namespace, store_claim, operator_factory, "fresh", {"newData": {"minNewRows": 200}})
    wait_for("baseline", lambda: (status(cluster, namespace, "fresh").get("triggers") or {}).get("newData"), timeout=20)
    write_data(cluster.store_dir, namespace, "fresh", classification_frame(120, seed=1), part=1)
    settle(8)
    assert run_triggers(cluster, namespace, "fresh") == ["initial"]
    observed = status(cluster, namespace, "fresh")["triggers"]["newData"]
    assert observed["rows"] == 720 and observed["baseline"]["rows"] == 600
    write_data(cluster.store_dir, namespace, "fresh", classification_frame(100, seed=2), part=2)
    wait_for("newData run", lambda: run_triggers(cluster, namespace, "fresh") == ["initial", "newData"], timeout=30)


def test_drift_fires_on_shifted_inputs_only_and_after_its_for_duration(
        cluster, prometheus, namespace, store_claim, operator_factory):
    drift = {"method": "psi", "threshold": "0.2", "for": "6s", "window": "15s"}
    start_with_champion(cluster, namespace, store_claim, operator_factory, "drifty", {"drift": drift},
                        NORIA_PROMETHEUS_URL=prometheus.url)
    mv = get(cluster, namespace, "modelversion", "drifty-v1")
    profile = Profile.load(f"file://{cluster.store_dir}/{namespace}/drifty/v1/profile.json")
    assert mv["spec"]["profileUri"].endswith("/drifty/v1/profile.json")
    set_rates(cluster, namespace, bin_rates(profile, "drifty", "drifty-v1", 50.0, shifted=False))
    cluster.kubectl("apply", "-n", namespace, "-f", "-", input=exporter_pod(namespace))

    below = wait_for("drift observed below threshold", lambda: (
        (d := (status(cluster, namespace, "drifty").get("triggers") or {}).get("drift") or {}).get("state") == "Below"
        and d), timeout=60)
    assert float(below["value"]) < 0.2 and below["samples"] >= 50
    settle(20)  # no-drift traffic for longer than "for": nothing happens
    assert run_triggers(cluster, namespace, "drifty") == ["initial"]

    shifted_at = time.time()
    set_rates(cluster, namespace, bin_rates(profile, "drifty", "drifty-v1", 50.0, shifted=True))
    wait_for("drift run", lambda: run_triggers(cluster, namespace, "drifty") == ["initial", "drift"], timeout=90)
    assert time.time() - shifted_at >= 6  # held for the "for" duration first
    st = status(cluster, namespace, "drifty")
    reason = (st.get("currentRun") or {}).get("reason") or st["lastRuns"][0].get("message", "")
    assert "psi" in json.dumps(st) and reason
    assert condition(st, "TriggersHealthy")["status"] == "True"


def test_performance_fires_when_live_f1_drops_with_enough_labels(
        cluster, prometheus, namespace, store_claim, operator_factory):
    perf = {"metric": "f1", "below": "0.75", "for": "4s", "minLabels": 40}
    start_with_champion(cluster, namespace, store_claim, operator_factory, "perf", {"performance": perf},
                        NORIA_PROMETHEUS_URL=prometheus.url)
    set_rates(cluster, namespace, feedback_rates("perf", "perf-v1", 10.0, error_share=0.05))
    cluster.kubectl("apply", "-n", namespace, "-f", "-", input=exporter_pod(namespace))
    good = wait_for("live f1 observed", lambda: (
        (p := (status(cluster, namespace, "perf").get("triggers") or {}).get("performance") or {}).get("state")
        == "Above" and p), timeout=90)
    assert float(good["value"]) > 0.75
    settle(10)
    assert run_triggers(cluster, namespace, "perf") == ["initial"]
    set_rates(cluster, namespace, feedback_rates("perf", "perf-v1", 200.0, error_share=0.6))
    wait_for("performance run", lambda: run_triggers(cluster, namespace, "perf") == ["initial", "performance"],
             timeout=120)


def test_prometheus_unreachable_is_unknown_and_starts_nothing(cluster, namespace, store_claim, operator_factory):
    drift = {"method": "psi", "threshold": "0.2", "for": "1s"}
    start_with_champion(cluster, namespace, store_claim, operator_factory, "blind", {"drift": drift})
    st = wait_for("TriggersHealthy Unknown", lambda: condition(s := status(cluster, namespace, "blind"),
                                                                "TriggersHealthy").get("status") == "Unknown" and s,
                  timeout=30)
    assert condition(st, "TriggersHealthy")["reason"] == "PrometheusUnavailable"
    assert "unreachable" in condition(st, "TriggersHealthy")["message"]
    settle(6)
    assert run_triggers(cluster, namespace, "blind") == ["initial"]
