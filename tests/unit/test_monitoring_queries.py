"""The alert rules and dashboard name only series that exist: every metric in their PromQL is one the
servers, routers or operator export (noria.metrics, noria.opmetrics) or a Prometheus/kube-state-metrics
series; every alert has its runbook section in docs/operations/alerts.md and a severity."""

from __future__ import annotations

import re
from pathlib import Path

from noria import metrics as m
from noria import opmetrics
from noria.monitoring import alerts, dashboard

ROOT = Path(__file__).resolve().parents[2]
EXTERNAL = {"up", "kube_pod_status_ready"}
# PromQL words that look like metric names.
KEYWORDS = {"sum", "max", "min", "avg", "by", "on", "and", "or", "unless", "rate", "increase", "changes",
            "absent", "offset", "bool", "group_left", "group_right", "label_replace", "histogram_quantile",
            "min_over_time", "abs", "le"}


def exported_names() -> set[str]:
    names = {v for k, v in vars(m).items() if k.isupper() and isinstance(v, str) and v.startswith("noria_")}
    for metric in opmetrics.REGISTRY.collect():
        for sample in metric.samples:
            names.add(sample.name)
        names.add(metric.name + ("_total" if metric.type == "counter" else ""))
    for name in list(names):
        names |= {name + "_bucket", name + "_count", name + "_sum"}
    return names


def metric_names(expr: str) -> set[str]:
    without_strings = re.sub(r'"[^"]*"', '""', expr)
    without_labels = re.sub(r"\{[^}]*\}", "", without_strings)
    without_by = re.sub(r"\b(by|on|without|group_left|group_right)\s*\([^)]*\)", "", without_labels)
    without_ranges = re.sub(r"\[[^\]]*\]", "", without_by)
    words = set(re.findall(r"\b[a-zA-Z_:][a-zA-Z0-9_:]*\b", without_ranges))
    return {w for w in words if w not in KEYWORDS and not re.fullmatch(r"\d.*", w)}


def test_every_series_the_alerts_and_dashboard_read_is_exported() -> None:
    known = exported_names() | EXTERNAL
    exprs = [a.expr for a in alerts.ALERTS] + [t.expr for p in dashboard.panels() for t in p.targets]
    unknown = {name for expr in exprs for name in metric_names(expr)} - known
    assert not unknown, f"series nobody exports: {sorted(unknown)}"


def test_the_name_check_catches_a_misspelt_metric() -> None:
    assert metric_names("sum by (version) (rate(noria_request_total{a=\"b\"}[5m]))") == {"noria_request_total"}
    assert "noria_request_total" not in exported_names()


def test_every_alert_has_a_runbook_section_a_severity_and_its_texts() -> None:
    page = (ROOT / alerts.RUNBOOK_PAGE).read_text()
    anchors = {re.sub(r"[^a-z0-9 -]", "", h.strip().lower()).replace(" ", "-")
               for h in re.findall(r"^#+ (.+)$", page, flags=re.M)}
    for alert in alerts.ALERTS:
        assert alert.anchor in anchors, f"{alerts.RUNBOOK_PAGE} has no section '## {alert.name}'"
        assert alert.severity in (alerts.CRITICAL, alerts.WARNING, alerts.INFO)
        assert alert.summary and alert.description and alert.runbook


def test_dashboard_queries_use_only_its_variables() -> None:
    allowed = {f"${v}" for v in dashboard.VARIABLES}
    for panel in dashboard.panels():
        for target in panel.targets:
            used = set(re.findall(r"\$[a-z_]+", target.expr)) - {"$1"}
            assert used <= allowed, (panel.title, used - allowed)
