"""Every query of the Grafana dashboard returns data from the test bed's Prometheus after a short
closed loop: a TrainingPipeline trains churn-v1, a Rollout serves it through its router, users send
predictions and feedback, a retrain makes churn-v2, which rolls out by canary with analysis and is
promoted. The servers and routers are found by the test bed's Kubernetes discovery (relabelled as the
chart's PodMonitor), the operator is scraped as a static job, as the chart's ServiceMonitor would.

Given the dashboard's variables filled in (namespace, pipeline, rollout, window) and the variable
queries answered by Prometheus' label API, each panel query returns at least one finite sample.
"""

from __future__ import annotations

import json
import math
import time
import urllib.parse

import pytest
from noria.monitoring import dashboard
from noria_testbed.processes import urlopen
from rollout_helpers import PIPELINE, Traffic, operator_env, rollout, rollout_status, service_url
from training_helpers import classification_frame, get, pipeline_yaml, status, wait_for, write_data

pytestmark = pytest.mark.integration

WINDOW = "5m"  # longer than the whole run: every counter's increase covers it


def _variables(namespace: str) -> dict[str, str]:
    return {"$namespace": namespace, "$pipeline": PIPELINE, "$rollout": PIPELINE, "$window": WINDOW}


def fill(expr: str, variables: dict[str, str]) -> str:
    for name, value in variables.items():
        expr = expr.replace(name, value)
    return expr


def label_values(prometheus, label: str, match: str) -> list[str]:  # noqa: ANN001
    query = urllib.parse.urlencode({"match[]": match})
    with urlopen(f"{prometheus.url}/api/v1/label/{label}/values?{query}", timeout=10) as response:
        return json.loads(response.read())["data"]


def _stage(cluster, namespace: str, name: str) -> str | None:  # noqa: ANN001
    return ((get(cluster, namespace, "modelversion", name) or {}).get("status") or {}).get("stage")


def _trigger(cluster, namespace: str, kind: str) -> dict:  # noqa: ANN001
    return (status(cluster, namespace, PIPELINE).get("triggers") or {}).get(kind) or {}


def test_every_dashboard_query_returns_data_after_a_closed_loop(cluster, prometheus, namespace, store_claim,
                                                                 operator_factory):
    store_claim(namespace)
    frame = classification_frame(800, seed=3)
    source = write_data(cluster.store_dir, namespace, PIPELINE, frame)
    # Triggers that measure but do not fire during the test (long `for`): their live values are what
    # the drift and live-metric panels show.
    triggers = {"drift": {"method": "psi", "threshold": "0.2", "window": "30s", "minSamples": 20, "for": "1h"},
                "performance": {"metric": "f1", "below": "0.5", "window": "30s", "minLabels": 20, "for": "1h"}}
    operator = operator_factory(namespace, **operator_env(prometheus.url))
    job = f"noria-operator-{namespace}"
    prometheus.scrape(job, operator.metrics_url.removeprefix("http://").removesuffix("/metrics"))
    traffic = None
    try:
        cluster.kubectl("apply", "-n", namespace, "-f", "-", input=pipeline_yaml(PIPELINE, source, triggers=triggers))
        wait_for("churn-v1 approved", lambda: _stage(cluster, namespace, "churn-v1") == "Approved", timeout=120,
                 on_timeout=lambda: str(status(cluster, namespace, PIPELINE)))
        # minLabels: the check waits for the candidate's first labels (its first answers, scraped) instead
        # of calling an empty window inconclusive, which would pause the canary for a person.
        manifest = rollout(namespace, {"canary": {"steps": [{"setWeight": 50}, {"pause": {"duration": "8s"}}]}},
                           analysis={"interval": "3s", "checks": [{"builtin": "errorRate", "max": "0.5",
                                                                   "minLabels": 10}]})
        cluster.kubectl("apply", "-f", "-", input=manifest)
        wait_for("churn-v1 stable", lambda: rollout_status(cluster, namespace).get("stableVersion") == "churn-v1",
                 timeout=120, on_timeout=lambda: str(rollout_status(cluster, namespace)))
        rows = frame[["x1", "x2"]].to_numpy()
        traffic = Traffic(service_url(cluster, namespace, PIPELINE), rows, frame["label"].to_numpy(), rate=25).start()

        cluster.kubectl("annotate", "tp", PIPELINE, "-n", namespace, "noria.dev/retrain=1")
        wait_for("churn-v2 promoted", lambda: rollout_status(cluster, namespace).get("stableVersion") == "churn-v2",
                 timeout=150, on_timeout=lambda: f"{rollout_status(cluster, namespace)} answers {traffic.summary()}")
        wait_for("drift and live metric measured on churn-v2", lambda: (
            _trigger(cluster, namespace, "drift").get("champion") == "churn-v2"
            and _trigger(cluster, namespace, "drift").get("tested")
            and _trigger(cluster, namespace, "performance").get("value")), timeout=90,
            on_timeout=lambda: str(status(cluster, namespace, PIPELINE).get("triggers")))
        time.sleep(3)  # one more scrape of the operator after it set the gauges

        variables = _variables(namespace)
        for name, (label, match) in dashboard.variable_queries().items():
            values = label_values(prometheus, label, fill(match, variables))
            assert variables[f"${name}"] in values, (name, values)
        empty = []
        for panel in dashboard.panels():
            for target in panel.targets:
                expr = fill(target.expr, variables)
                result = prometheus.query(expr)
                finite = [s for s in result if math.isfinite(float(s["value"][1]))]
                if not finite:
                    empty.append(f"{panel.title!r} [{target.legend}]: {expr}\n  -> {result}")
        assert not empty, "dashboard queries without data:\n" + "\n".join(empty)
        # Failed requests are the canary tests' subject (test_rollout_canary.py), not this one's.
        print(f"FIGURE dashboard test: answers {traffic.summary()}, failed requests {len(traffic.failures())}")
    finally:
        if traffic is not None:
            traffic.stop()
        prometheus.scrape(job)
