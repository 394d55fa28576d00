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

# A PodMonitor's job label is "<its namespace>/<its name>"; the test bed names its job as the chart's
# PodMonitor would be named in a release "noria" in namespace "noria-system".
DEFAULT_POD_JOB: Final = "noria-system/noria-models"
# Pods that ended keep their objects for a while; a PodMonitor drops them (its filterRunning default).
_ENDED_POD_PHASES: Final = "(Failed|Succeeded)"


def series_label(pod_label: str) -> str:
    """The series label a pod label becomes (podTargetLabels): every character outside
    [a-zA-Z0-9_] turned into "_", as Prometheus sanitises label names: noria.dev/component ->
    noria_dev_component. The operator's PromQL names pod labels through this."""
    return "".join(ch if ch.isascii() and (ch.isalnum() or ch == "_") else "_" for ch in pod_label)


def pod_relabel_configs(job: str = DEFAULT_POD_JOB) -> list[dict]:
    """The relabelling a Prometheus Operator PodMonitor built from the constants above produces
    (selector: noria.dev/component In SCRAPED_COMPONENTS, podMetricsEndpoints: port POD_PORT_NAME,
    podTargetLabels: POD_TARGET_LABELS), in its order: the labels a user's Prometheus puts on the
    servers' and routers' series, so the test bed's kubernetes_sd job uses exactly these."""
    component = series_label(LABEL_COMPONENT)
    return [
        {"action": "drop", "source_labels": ["__meta_kubernetes_pod_phase"], "regex": _ENDED_POD_PHASES},
        # A label selector "In" needs the label to be present, hence the labelpresent meta label.
        {"action": "keep", "source_labels": [f"__meta_kubernetes_pod_label_{component}",
                                             f"__meta_kubernetes_pod_labelpresent_{component}"],
         "regex": f"({'|'.join(SCRAPED_COMPONENTS)});true"},
        {"action": "keep", "source_labels": ["__meta_kubernetes_pod_container_port_name"], "regex": POD_PORT_NAME},
        {"source_labels": ["__meta_kubernetes_namespace"], "target_label": "namespace"},
        {"source_labels": ["__meta_kubernetes_pod_container_name"], "target_label": "container"},
        {"source_labels": ["__meta_kubernetes_pod_name"], "target_label": "pod"},
        # Only a label the pod has: a missing one is not written as an empty label.
        *({"source_labels": [f"__meta_kubernetes_pod_label_{series_label(label)}"], "regex": "(.+)",
           "replacement": "${1}", "target_label": series_label(label)} for label in POD_TARGET_LABELS),
        {"target_label": "job", "replacement": job},
        {"target_label": "endpoint", "replacement": POD_PORT_NAME},
    ]


def pod_scrape_config(job: str = DEFAULT_POD_JOB, *, kubeconfig_file: str | None = None,
                      scrape_interval: str | None = None) -> dict:
    """A Prometheus scrape_configs entry that finds the servers and routers through Kubernetes pod
    discovery (every namespace) and labels them as the chart's PodMonitor does. ``kubeconfig_file``
    for a Prometheus outside the cluster (the test bed's); in a pod, the in-cluster ServiceAccount.
    Pods are scraped at their pod IP on the named port's number (kubernetes_sd's __address__)."""
    sd: dict = {"role": "pod"}
    if kubeconfig_file is not None:
        sd["kubeconfig_file"] = kubeconfig_file
    config: dict = {"job_name": job, "metrics_path": METRICS_PATH, "kubernetes_sd_configs": [sd],
                    "relabel_configs": pod_relabel_configs(job)}
    if scrape_interval is not None:
        config["scrape_interval"] = scrape_interval
    return config
