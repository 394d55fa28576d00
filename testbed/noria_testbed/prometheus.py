"""A real Prometheus for the test bed, finding pods through Kubernetes service discovery.

The Prometheus built from its Go module (``hack/build-prometheus.sh``, ``binaries.find_prometheus``)
discovers pods with ``kubernetes_sd_configs`` (role pod) against the test bed's API server, under a
read-only identity (ServiceAccount ``kube-system/noria-testbed-prometheus``, allowed to list and watch
pods and nothing else), and relabels them with ``noria.scrape.pod_scrape_config``: the rules a
Prometheus Operator PodMonitor built from ``noria.scrape`` produces, i.e. the chart's. So a model
server's series carry the labels a user's Prometheus gives them (``namespace``, ``pod``,
``container``, ``endpoint``, ``job``, ``noria_dev_rollout``, ``noria_dev_version``, ...), and the
operator's queries are tested against those. Pods keep loopback pod IPs, so the discovered
``podIP:port`` is reachable.

Debian's Prometheus 2.42 (the fallback, or ``NORIA_TESTBED_PROMETHEUS=debian``) has no
``kubernetes_sd_configs``; with it the same relabelling runs on the node agent's ``/sd`` targets
(``http_sd_configs``), which carry the same ``__meta_kubernetes_*`` labels, so series are labelled
alike either way. Which one runs is written to the test bed's log.

Processes outside the cluster (the operator, run as a local process by most tests) are static jobs
(:meth:`PrometheusProcess.scrape`). Scrape interval and SD refresh are 1 s (kubernetes_sd watches, so
a new pod is seen at once), and the scrape manager applies discovered targets every second instead of
every 5 s (:data:`DISCOVERY_RELOAD_INTERVAL`), so tests see a new pod's series within a few seconds.
"""

from __future__ import annotations

import json
import logging
import subprocess
import urllib.parse
import urllib.request
from pathlib import Path
from typing import Any, Protocol

import yaml
from noria import scrape
from noria.contracts import LABEL_COMPONENT

from noria_testbed.binaries import PrometheusBinaries, find_prometheus
from noria_testbed.processes import ManagedProcess, free_port, tail, urlopen, wait_until

log = logging.getLogger(__name__)

SCRAPE_INTERVAL = "1s"
# How often the scrape manager turns discovered targets into scrape pools (Prometheus'
# --scrape.discovery-reload-interval, hidden, default 5 s; accepted by the built 3.x and Debian's 2.42).
# At 5 s a canary pod ready 3 s after creation served requests for up to 8 s before its first scrape, so
# an analysis 3 s into the step found no series (docs/operations/testbed-prometheus.md, "New pods").
DISCOVERY_RELOAD_INTERVAL = "1s"
# The identity the test bed's Prometheus discovers pods with: read-only, pods only.
SERVICE_ACCOUNT_NAMESPACE, SERVICE_ACCOUNT = "kube-system", "noria-testbed-prometheus"
# Outlives any test session or demo (the token is not refreshed while Prometheus runs).
TOKEN_DURATION = "48h"


def kubernetes_sd_scrape_config(kubeconfig_file: str) -> dict:
    """Model servers and routers found through Kubernetes pod discovery: the chart's PodMonitor rules."""
    return scrape.pod_scrape_config(kubeconfig_file=kubeconfig_file)


def http_sd_scrape_config(sd_url: str) -> dict:
    """The fallback for a Prometheus without kubernetes_sd_configs: the node agent's /sd targets, which
    carry kubernetes_sd's ``__meta_kubernetes_*`` labels, through the same PodMonitor rules, so series
    are labelled as with Kubernetes discovery."""
    component = scrape.series_label(LABEL_COMPONENT)
    config = scrape.pod_scrape_config()
    config.pop("kubernetes_sd_configs")
    config["http_sd_configs"] = [{"url": sd_url, "refresh_interval": "1s"}]
    config["relabel_configs"] = [
        # The node agent publishes pod labels but not kubernetes_sd's labelpresent_ companions, which
        # the PodMonitor's selector rule reads.
        {"source_labels": [f"__meta_kubernetes_pod_label_{component}"], "regex": "(.+)",
         "target_label": f"__meta_kubernetes_pod_labelpresent_{component}", "replacement": "true"},
        *config["relabel_configs"],
        # It also publishes ready-made target labels (label_<pod label>) a kubernetes_sd target lacks.
        {"action": "labeldrop", "regex": "label_.+"},
    ]
    return config


def prometheus_config(*, kubeconfig_file: str | None = None, sd_url: str | None = None,
                      scrape_interval: str = SCRAPE_INTERVAL, static_jobs: dict[str, list[str]] | None = None) -> dict:
    """The Prometheus configuration: the pod job (Kubernetes discovery with ``kubeconfig_file``, else
    the node agent's http_sd at ``sd_url``), plus one static job per entry of ``static_jobs`` (job name
    → ``host:port`` targets) for processes outside the cluster, such as the operator."""
    if (kubeconfig_file is None) == (sd_url is None):
        raise ValueError("prometheus_config needs exactly one of kubeconfig_file (kubernetes_sd) and sd_url (http_sd)")
    pods = kubernetes_sd_scrape_config(kubeconfig_file) if kubeconfig_file else http_sd_scrape_config(str(sd_url))
    static = [{"job_name": job, "static_configs": [{"targets": list(targets)}]}
              for job, targets in sorted((static_jobs or {}).items())]
    return {
        "global": {"scrape_interval": scrape_interval, "evaluation_interval": scrape_interval,
                   "scrape_timeout": scrape_interval},
        "scrape_configs": [pods, *static],
    }


def check_config(path: Path, promtool: Path | None = None) -> subprocess.CompletedProcess[str]:
    """``promtool check config`` on ``path``, with the test bed's promtool unless one is given."""
    tool = promtool or find_prometheus().promtool
    return subprocess.run([str(tool), "check", "config", str(path)], capture_output=True, text=True)


class Kubectl(Protocol):
    def __call__(self, *args: str, input: str | None = None, check: bool = True,  # noqa: A002 - subprocess's name
                 timeout: float = 120) -> subprocess.CompletedProcess[str]: ...


def read_only_identity(kubectl: Kubectl) -> str:
    """A bearer token for a ServiceAccount that may get, list and watch pods and nothing else: what
    a cluster's Prometheus runs as (idempotent: applying again changes nothing)."""
    name = SERVICE_ACCOUNT
    objects: list[dict[str, Any]] = [
        {"apiVersion": "v1", "kind": "ServiceAccount",
         "metadata": {"name": name, "namespace": SERVICE_ACCOUNT_NAMESPACE}},
        {"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "ClusterRole", "metadata": {"name": name},
         "rules": [{"apiGroups": [""], "resources": ["pods"], "verbs": ["get", "list", "watch"]}]},
        {"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "ClusterRoleBinding", "metadata": {"name": name},
         "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": name},
         "subjects": [{"kind": "ServiceAccount", "name": name, "namespace": SERVICE_ACCOUNT_NAMESPACE}]},
    ]
    kubectl("apply", "-f", "-", input=yaml.safe_dump_all(objects))
    return kubectl("create", "token", name, "-n", SERVICE_ACCOUNT_NAMESPACE,
                   f"--duration={TOKEN_DURATION}").stdout.strip()


def write_kubeconfig(path: Path, *, admin_kubeconfig: Path, token: str) -> Path:
    """``admin_kubeconfig``'s cluster (server, CA) with ``token`` as the only user."""
    admin = yaml.safe_load(admin_kubeconfig.read_text())
    context = next(c for c in admin["contexts"] if c["name"] == admin["current-context"])["context"]
    cluster = next(c for c in admin["clusters"] if c["name"] == context["cluster"])
    config = {
        "apiVersion": "v1", "kind": "Config", "current-context": "prometheus",
        "clusters": [cluster],
        "users": [{"name": SERVICE_ACCOUNT, "user": {"token": token}}],
        "contexts": [{"name": "prometheus", "context": {"cluster": cluster["name"], "user": SERVICE_ACCOUNT}}],
    }
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(yaml.safe_dump(config))
    path.chmod(0o600)
    return path


class PrometheusProcess:
    """One Prometheus on a free port. Pods are found through Kubernetes discovery with ``kubeconfig``
    when the binary has it, else through the node agent's http_sd at ``sd_url``; at least one of the
    two must be given for the binary found (``binaries.find_prometheus`` unless ``binaries``)."""

    def __init__(self, *, workdir: Path, log_path: Path, sd_url: str | None = None, kubeconfig: Path | None = None,
                 binaries: PrometheusBinaries | None = None) -> None:
        self.workdir, self.sd_url, self.log_path, self.kubeconfig = workdir, sd_url, log_path, kubeconfig
        self.binaries = binaries or find_prometheus()
        self.binary = str(self.binaries.prometheus)
        self.kubernetes_sd = self.binaries.kubernetes_sd and kubeconfig is not None
        if not self.kubernetes_sd and sd_url is None:
            raise ValueError(f"{self.binaries.origin}: it needs the node agent's sd_url (no kubeconfig given, "
                             "or this Prometheus has no kubernetes_sd_configs)")
        self.discovery = "kubernetes_sd_configs" if self.kubernetes_sd else "the node agent's http_sd"
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.config_path = workdir / "prometheus.yml"
        self.process: ManagedProcess | None = None
        self.static_jobs: dict[str, list[str]] = {}

    def config(self) -> dict:
        if self.kubernetes_sd:
            return prometheus_config(kubeconfig_file=str(self.kubeconfig), static_jobs=self.static_jobs)
        return prometheus_config(sd_url=self.sd_url, static_jobs=self.static_jobs)

    def _write_config(self) -> None:
        self.config_path.write_text(yaml.safe_dump(self.config(), sort_keys=False))

    def scrape(self, job: str, *targets: str) -> None:
        """Also scrape ``targets`` (``host:port``, path /metrics) as ``job``, e.g. the operator's
        own metrics; the configuration is reloaded in place. No targets removes the job."""
        if targets:
            self.static_jobs[job] = list(targets)
        else:
            self.static_jobs.pop(job, None)
        self._write_config()
        request = urllib.request.Request(f"{self.url}/-/reload", method="POST")
        with urllib.request.build_opener(urllib.request.ProxyHandler({})).open(request, timeout=10) as response:
            if response.status != 200:
                raise RuntimeError(f"prometheus reload failed: HTTP {response.status}")

    def command(self) -> list[str]:
        return [
            self.binary, f"--config.file={self.config_path}", f"--storage.tsdb.path={self.workdir / 'data'}",
            f"--web.listen-address=127.0.0.1:{self.port}", "--web.enable-lifecycle",
            f"--scrape.discovery-reload-interval={DISCOVERY_RELOAD_INTERVAL}",
            "--storage.tsdb.retention.time=1d", "--log.level=warn",
        ]

    def start(self) -> PrometheusProcess:
        self.workdir.mkdir(parents=True, exist_ok=True)
        self._write_config()
        # Which Prometheus runs, and why, where a person looking at a failure reads first.
        choice = f"test bed Prometheus: {self.binaries.origin}; pods found through {self.discovery}"
        log.info(choice)
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        with self.log_path.open("a") as out:
            out.write(f"# {choice}\n")
        self.process = ManagedProcess("prometheus", self.command(), self.log_path)
        process = self.process

        def ready() -> bool:
            process.check_alive()
            with urlopen(f"{self.url}/-/ready", timeout=2) as response:
                return response.status == 200

        wait_until("prometheus ready", ready, 60, on_timeout=lambda: tail(self.log_path))
        return self

    def query(self, promql: str) -> list[dict]:
        """An instant query's result vector (raises on a Prometheus error)."""
        url = f"{self.url}/api/v1/query?{urllib.parse.urlencode({'query': promql})}"
        with urlopen(url, timeout=10) as response:
            body = json.loads(response.read())
        if body.get("status") != "success":
            raise RuntimeError(f"prometheus query {promql!r} failed: {body}")
        return body["data"]["result"]

    def stop(self) -> None:
        if self.process is not None:
            self.process.stop()
