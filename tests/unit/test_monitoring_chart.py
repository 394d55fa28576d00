"""The chart's monitoring objects as real Helm renders them (helm from hack/build-helm.sh): off by
default; the PodMonitor selects, scrapes and labels exactly what noria.scrape says (the test bed's
kubernetes_sd job is built from the same module, so the two cannot drift); the ServiceMonitor only
when the operator serves metrics; the PrometheusRule is the promtool-tested rule file; the dashboard
ConfigMap carries the Grafana sidecar's label."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import chart_render
import pytest
import yaml
from noria import monitoring, scrape
from noria.contracts import LABEL_COMPONENT
from noria.monitoring import alerts, dashboard

ROOT = Path(__file__).resolve().parents[2]
RELEASE, NAMESPACE = "noria", "noria-system"
MONITORING_KINDS = {"PodMonitor", "ServiceMonitor", "PrometheusRule"}


@pytest.fixture(scope="module")
def helm() -> Path:
    return chart_render.helm_binary()


def render(helm: Path, *sets: str) -> list[dict[str, Any]]:
    """The chart rendered with each of ``sets`` as a ``--set``."""
    return chart_render.render(helm, *(arg for s in sets for arg in ("--set", s)), namespace=NAMESPACE, release=RELEASE)


def monitoring_objects(docs: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    out = {d["kind"]: d for d in docs if d["kind"] in MONITORING_KINDS}
    for d in docs:
        if d["kind"] == "ConfigMap" and d["metadata"]["name"].endswith("-dashboard"):
            out["Dashboard"] = d
    return out


def test_monitoring_is_off_by_default(helm: Path) -> None:
    assert monitoring_objects(render(helm)) == {}


def test_the_pod_monitor_scrapes_what_noria_scrape_says(helm: Path) -> None:
    pm = monitoring_objects(render(helm, "monitoring.enabled=true", "monitoring.interval=7s"))["PodMonitor"]
    spec = pm["spec"]
    assert spec["namespaceSelector"] == {"any": True}
    assert spec["selector"] == {"matchExpressions": [
        {"key": LABEL_COMPONENT, "operator": "In", "values": list(scrape.SCRAPED_COMPONENTS)}]}
    assert spec["podTargetLabels"] == list(scrape.POD_TARGET_LABELS)
    assert spec["podMetricsEndpoints"] == [{"port": scrape.POD_PORT_NAME, "path": scrape.METRICS_PATH,
                                            "interval": "7s"}]
    # The Prometheus Operator names the job "<namespace>/<name>": the test bed's job has that name.
    assert f"{pm['metadata']['namespace']}/{pm['metadata']['name']}" == scrape.DEFAULT_POD_JOB


def test_the_test_beds_discovery_keeps_and_labels_as_the_pod_monitor(helm: Path) -> None:
    """The relabelling of noria.scrape.pod_scrape_config (the test bed's kubernetes_sd job) keeps the
    PodMonitor's components and port and writes its podTargetLabels as series labels."""
    spec = monitoring_objects(render(helm, "monitoring.enabled=true"))["PodMonitor"]["spec"]
    rules = scrape.pod_relabel_configs()
    keep = [r for r in rules if r.get("action") == "keep"]
    components = spec["selector"]["matchExpressions"][0]["values"]
    assert any(all(c in r["regex"] for c in components) for r in keep)
    assert any(r["regex"] == spec["podMetricsEndpoints"][0]["port"] for r in keep)
    written = {r.get("target_label") for r in rules}
    assert {scrape.series_label(label) for label in spec["podTargetLabels"]} <= written


def test_the_service_monitor_scrapes_the_operator_metrics_service(helm: Path) -> None:
    docs = render(helm, "monitoring.enabled=true")
    sm = monitoring_objects(docs)["ServiceMonitor"]
    service = next(d for d in docs if d["kind"] == "Service" and any(
        p["name"] == scrape.OPERATOR_PORT_NAME for p in d["spec"]["ports"]))
    labels = service["metadata"]["labels"]
    assert all(labels.get(k) == v for k, v in sm["spec"]["selector"]["matchLabels"].items())
    assert sm["spec"]["namespaceSelector"] == {"matchNames": [NAMESPACE]}
    assert sm["spec"]["endpoints"] == [{"port": scrape.OPERATOR_PORT_NAME, "path": scrape.METRICS_PATH,
                                        "honorLabels": True, "interval": "15s"}]


def test_no_service_monitor_when_the_operator_serves_no_metrics(helm: Path) -> None:
    objects = monitoring_objects(render(helm, "monitoring.enabled=true", "operator.metricsPort=0"))
    assert "ServiceMonitor" not in objects and "PodMonitor" in objects


@pytest.mark.parametrize("part, kind", [("podMonitor", "PodMonitor"), ("serviceMonitor", "ServiceMonitor"),
                                        ("prometheusRule", "PrometheusRule"), ("dashboard", "Dashboard")])
def test_each_part_can_be_left_out(helm: Path, part: str, kind: str) -> None:
    objects = monitoring_objects(render(helm, "monitoring.enabled=true", f"monitoring.{part}.enabled=false"))
    assert kind not in objects and len(objects) == 3


def test_the_prometheus_rule_is_the_tested_rule_file(helm: Path) -> None:
    rule = monitoring_objects(render(helm, "monitoring.enabled=true", "monitoring.labels.release=kps"))["PrometheusRule"]
    assert rule["spec"] == alerts.rules_file()
    assert rule["metadata"]["labels"]["release"] == "kps"
    tested = yaml.safe_load((ROOT / monitoring.CHART_FILES / "alerts.yaml").read_text())
    assert rule["spec"] == tested


def test_runbook_base_url_points_every_alert_at_its_anchor(helm: Path) -> None:
    base = "https://runbooks.example.com/noria/"
    rule = monitoring_objects(render(helm, "monitoring.enabled=true",
                                     f"monitoring.prometheusRule.runbookBaseUrl={base}"))["PrometheusRule"]
    assert rule["spec"] == alerts.rules_file(base)
    urls = [r["annotations"]["runbook_url"] for r in rule["spec"]["groups"][0]["rules"]]
    assert urls[0] == "https://runbooks.example.com/noria#noriatrainingrunfailed"


def test_the_dashboard_config_map_is_found_by_the_grafana_sidecar(helm: Path) -> None:
    cm = monitoring_objects(render(helm, "monitoring.enabled=true", "monitoring.dashboard.label=grafana_dash",
                                   "monitoring.dashboard.labelValue=yes"))["Dashboard"]
    assert cm["metadata"]["labels"]["grafana_dash"] == "yes"
    assert json.loads(cm["data"]["noria.json"]) == dashboard.dashboard()
