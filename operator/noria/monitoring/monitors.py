"""The spec of the chart's PodMonitor and ServiceMonitor endpoints, from ``noria.scrape``.

The chart's templates (charts/noria/templates/monitoring/) read these generated fragments and add
what depends on values (the scrape interval, labels, the release's names), so the pods, port and pod
labels a user's Prometheus scrapes are the ones the test bed's ``kubernetes_sd_configs`` job uses
(``noria.scrape.pod_scrape_config``).
"""

from __future__ import annotations

from typing import Any

from noria.contracts import LABEL_COMPONENT
from noria.scrape import (
    METRICS_PATH,
    OPERATOR_PORT_NAME,
    POD_PORT_NAME,
    POD_TARGET_LABELS,
    SCRAPED_COMPONENTS,
)

# A PodMonitor named <release fullname>-models: its job label is "<namespace>/<name>".
POD_MONITOR_SUFFIX = "models"


def pod_monitor_spec() -> dict[str, Any]:
    """Model servers and routers in every namespace, on their ``http`` port, with the pod labels that
    name their Rollout, version, pipeline and component copied onto every series."""
    return {
        "namespaceSelector": {"any": True},
        "selector": {"matchExpressions": [
            {"key": LABEL_COMPONENT, "operator": "In", "values": list(SCRAPED_COMPONENTS)},
        ]},
        "podTargetLabels": list(POD_TARGET_LABELS),
        "podMetricsEndpoints": [{"port": POD_PORT_NAME, "path": METRICS_PATH}],
    }


def service_monitor_endpoints() -> list[dict[str, Any]]:
    """The operator's metrics Service port. ``honorLabels``: the operator's Rollout and pipeline
    series carry a ``namespace`` label naming the object; without it Prometheus would rename it
    ``exported_namespace`` and set ``namespace`` to the operator's own."""
    return [{"port": OPERATOR_PORT_NAME, "path": METRICS_PATH, "honorLabels": True}]
