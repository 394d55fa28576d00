"""How Prometheus finds Noria's pods: the one source for the chart's monitors and the test bed's scrape config.

The operator's PromQL (deployment/checks.py, training/triggers.py) selects series by the ``namespace``
target label and by the ``model``/``version`` labels the servers export themselves. A Prometheus
Operator PodMonitor sets ``namespace``, ``pod``, ``container`` and ``endpoint`` on every target; the
chart's PodMonitor (templates/monitoring/) selects the pods below on the port below and copies the pod
labels below onto the series; the test bed's Prometheus uses ``kubernetes_sd_configs`` with the same
rules, so the labels the operator's queries rely on are those users get.
"""

from __future__ import annotations

from typing import Final

from noria.contracts import (
    COMPONENT_ROUTER,
    COMPONENT_SERVER,
    LABEL_COMPONENT,
    LABEL_PIPELINE,
    LABEL_ROLLOUT,
    LABEL_VERSION,
)

# Model servers and routers: the pods the operator creates that export metrics.
SCRAPED_COMPONENTS: Final = (COMPONENT_SERVER, COMPONENT_ROUTER)
# Their container port (objects.py names it so); /metrics on it.
POD_PORT_NAME: Final = "http"
METRICS_PATH: Final = "/metrics"
# Pod labels copied onto every series (a PodMonitor's podTargetLabels): sanitised as Prometheus does,
# noria.dev/rollout -> noria_dev_rollout.
POD_TARGET_LABELS: Final = (LABEL_ROLLOUT, LABEL_VERSION, LABEL_PIPELINE, LABEL_COMPONENT)
# The operator's own /metrics: its container port and Service port name in the chart.
OPERATOR_PORT_NAME: Final = "metrics"
