"""A real Prometheus for the test bed, discovering pods through the node agent.

Debian's ``prometheus`` package (what ``hack/install-prometheus.sh`` installs) is built without
Kubernetes service discovery: ``promtool check config`` refuses ``kubernetes_sd_configs``. It
has ``http_sd_configs``, so the node agent publishes every running pod with a container port
named ``metrics`` or ``http`` (or ``prometheus.io/scrape: "true"`` + ``prometheus.io/port``) at
``/sd``, already carrying the labels a kubernetes_sd job with the usual relabeling would give:
``namespace``, ``pod``, ``container`` and ``label_<pod label>`` (``noria.dev/version`` →
``label_noria_dev_version``). The ``__meta_kubernetes_*`` labels are published too, so the
relabel rules below are the ones a real cluster's config would use.

Scrape interval and SD refresh are 1s so tests see a new pod's series within a few seconds.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import urllib.parse
import urllib.request
from pathlib import Path

import yaml

from noria_testbed.processes import ManagedProcess, free_port, tail, urlopen, wait_until

SCRAPE_INTERVAL = "1s"


def prometheus_config(sd_url: str, *, scrape_interval: str = SCRAPE_INTERVAL,
                      static_jobs: dict[str, list[str]] | None = None) -> dict:
    """The Prometheus configuration: one job fed by the node agent's http_sd endpoint, plus one
    static job per entry of ``static_jobs`` (job name → ``host:port`` targets), for processes
    that run outside the cluster, such as the operator."""
    static = [{"job_name": job, "static_configs": [{"targets": list(targets)}]}
              for job, targets in sorted((static_jobs or {}).items())]
    return {
        "global": {"scrape_interval": scrape_interval, "evaluation_interval": scrape_interval,
                   "scrape_timeout": scrape_interval},
        "scrape_configs": [{
            "job_name": "kubernetes-pods",
            "http_sd_configs": [{"url": sd_url, "refresh_interval": "1s"}],
            "relabel_configs": [
                # Same rules as for kubernetes_sd_configs on a real cluster (they are idempotent
                # here, where the node agent already sets the target labels).
                {"source_labels": ["__meta_kubernetes_namespace"], "target_label": "namespace"},
                {"source_labels": ["__meta_kubernetes_pod_name"], "target_label": "pod"},
                {"action": "labelmap", "regex": "__meta_kubernetes_pod_label_(.+)", "replacement": "label_$1"},
            ],
        }, *static],
    }


def check_config(path: Path) -> subprocess.CompletedProcess[str]:
    """``promtool check config`` on ``path`` (raises FileNotFoundError without promtool)."""
    return subprocess.run(["promtool", "check", "config", str(path)], capture_output=True, text=True)


class PrometheusProcess:
    def __init__(self, *, workdir: Path, sd_url: str, log_path: Path, binary: str | None = None) -> None:
        self.workdir, self.sd_url, self.log_path = workdir, sd_url, log_path
        found = binary or shutil.which("prometheus")
        if found is None:
            raise FileNotFoundError("prometheus is not on PATH (run `make prometheus`)")
        self.binary = found
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.config_path = workdir / "prometheus.yml"
        self.process: ManagedProcess | None = None
        self.static_jobs: dict[str, list[str]] = {}

    def _write_config(self) -> None:
        self.config_path.write_text(yaml.safe_dump(prometheus_config(self.sd_url, static_jobs=self.static_jobs),
                                                   sort_keys=False))

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

    def start(self) -> PrometheusProcess:
        self.workdir.mkdir(parents=True, exist_ok=True)
        self._write_config()
        self.process = ManagedProcess("prometheus", [
            self.binary, f"--config.file={self.config_path}", f"--storage.tsdb.path={self.workdir / 'data'}",
            f"--web.listen-address=127.0.0.1:{self.port}", "--web.enable-lifecycle",
            "--storage.tsdb.retention.time=1d", "--log.level=warn",
        ], self.log_path)
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
