"""Helpers of the rollout integration tests: real models in the store, ModelVersions, Rollout
manifests, and a traffic generator that records which version answered each request."""

from __future__ import annotations

import json
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import numpy as np
from noria_server import oip
from noria_testbed.processes import wait_until

POD_STORE = "/var/lib/noria/store"
PIPELINE = "churn"


@dataclass
class Model:
    version: str
    rows: np.ndarray  # feature rows to send
    labels: np.ndarray  # the true labels of those rows


def save_model(store_dir: Path, namespace: str, n: int, *, flip_labels: bool = False, seed: int = 0) -> dict:
    """Train a small logistic model (labels flipped for a deliberately bad one), save it as the trainer
    would under ``<store>/<ns>/churn/v<n>/``, and return the ModelVersion manifest (stage set later)."""
    from noria.artifact import dumps_model, sha256_digest
    from noria.profile import build_profile
    from noria_server.reference_models import dataset, estimator_for

    frame, target = dataset("logistic", rows=1500, seed=seed)
    fitted = estimator_for("logistic").fit(frame, 1 - target if flip_labels else target)
    data, _ = dumps_model(fitted)
    directory = store_dir / namespace / PIPELINE / f"v{n}"
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "model.skops").write_bytes(data)
    profile = build_profile({c: frame[c].to_numpy() for c in frame.columns}, dict.fromkeys(frame.columns, "numeric"),
                            predictions=list(fitted.predict(frame)), prediction_kind="categorical")
    (directory / "profile.json").write_text(profile.to_json())
    uri = f"file://{POD_STORE}/{namespace}/{PIPELINE}/v{n}"
    return {
        "apiVersion": "noria.dev/v1alpha1", "kind": "ModelVersion",
        "metadata": {"name": f"{PIPELINE}-v{n}", "namespace": namespace},
        "spec": {"pipeline": PIPELINE, "version": n,
                 "artifact": {"uri": f"{uri}/model.skops", "digest": sha256_digest(data), "format": "skops"},
                 "profileUri": f"{uri}/profile.json"},
    }


def create_model_version(cluster, manifest: dict, stage: str = "Approved") -> None:  # noqa: ANN001
    cluster.kubectl("apply", "-f", "-", input=json.dumps(manifest))
    ns, name = manifest["metadata"]["namespace"], manifest["metadata"]["name"]
    cluster.kubectl("patch", "modelversion", name, "-n", ns, "--subresource=status", "--type=merge",
                    "-p", json.dumps({"status": {"stage": stage}}))


def get(cluster, namespace: str, kind: str, name: str) -> dict | None:  # noqa: ANN001
    out = cluster.kubectl("get", kind, name, "-n", namespace, "-o", "json", check=False)
    return json.loads(out.stdout) if out.returncode == 0 else None


def rollout_status(cluster, namespace: str, name: str = PIPELINE) -> dict:  # noqa: ANN001
    return (get(cluster, namespace, "rollouts.noria.dev", name) or {}).get("status") or {}


def stage_of(cluster, namespace: str, version: str) -> str | None:  # noqa: ANN001
    return ((get(cluster, namespace, "modelversion", version) or {}).get("status") or {}).get("stage")


def condition(status: dict, type_: str) -> dict:
    return next((c for c in status.get("conditions") or [] if c["type"] == type_), {})


def rollout(namespace: str, strategy: dict, *, analysis: dict | None = None, name: str = PIPELINE,
            replicas: int = 1, **extra: Any) -> str:
    spec: dict[str, Any] = {"source": {"pipeline": PIPELINE}, "replicas": replicas, "strategy": strategy,
                            "scaleDownDelay": "3s", **extra}
    if analysis:
        spec["analysis"] = analysis
    return json.dumps({"apiVersion": "noria.dev/v1alpha1", "kind": "Rollout",
                       "metadata": {"name": name, "namespace": namespace}, "spec": spec})


def wait_for(what: str, check, timeout: float = 120.0, on_timeout=None):  # noqa: ANN001, ANN201
    box: dict[str, Any] = {}

    def probe() -> bool:
        box["value"] = check()
        return bool(box["value"])

    wait_until(what, probe, timeout=timeout, interval=0.3, on_timeout=on_timeout)
    return box["value"]


def service_url(cluster, namespace: str, service: str) -> str:  # noqa: ANN001
    svc = wait_for(f"Service {service}", lambda: get(cluster, namespace, "service", service))
    return f"http://{svc['spec']['clusterIP']}:{svc['spec']['ports'][0]['port']}"


@dataclass
class Answer:
    at: float
    status: int
    version: str | None
    detail: str = ""
    wall: float = 0.0  # time.time() of the answer, to compare with timestamps in status


@dataclass
class Traffic:
    """Sends one-row inference requests in a loop (and the true label as feedback), recording every answer."""

    url: str
    rows: np.ndarray
    labels: np.ndarray
    feedback: bool = True
    rate: float = 40.0  # requests per second
    answers: list[Answer] = field(default_factory=list)
    feedback_failures: list[str] = field(default_factory=list)
    _stop: threading.Event = field(default_factory=threading.Event)
    _thread: threading.Thread | None = None

    def start(self) -> Traffic:
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        if self._thread:
            self._thread.join(10)

    def _run(self) -> None:
        i = 0
        with httpx.Client(timeout=5.0) as client:
            while not self._stop.is_set():
                row = self.rows[i % len(self.rows)]
                body = {"inputs": [{"name": "input", "shape": [1, len(row)], "datatype": "FP64",
                                    "data": [row.tolist()]}]}
                try:
                    resp = client.post(f"{self.url}/v2/models/{PIPELINE}/infer", json=body)
                    version = None
                    if resp.status_code == 200:
                        payload = resp.json()
                        version = payload.get("model_version")
                        if self.feedback:
                            try:
                                [prediction_id] = oip.row_ids(payload)  # one row sent, one id
                                fb = client.post(f"{self.url}/v2/models/{PIPELINE}/feedback",
                                                 json={"id": prediction_id,
                                                       "label": int(self.labels[i % len(self.labels)])})
                                if fb.status_code >= 300:
                                    self.feedback_failures.append(f"{time.time():.2f} HTTP {fb.status_code}")
                            except (httpx.HTTPError, ValueError) as exc:  # ValueError: an answer without its id
                                self.feedback_failures.append(f"{time.time():.2f} {type(exc).__name__}")
                    detail = "" if resp.status_code == 200 else resp.text[:300]
                    self.answers.append(Answer(time.monotonic(), resp.status_code, version, detail, time.time()))
                except httpx.HTTPError as exc:
                    self.answers.append(Answer(time.monotonic(), 0, None, f"{type(exc).__name__}: {exc}"[:200],
                                               time.time()))
                i += 1
                self._stop.wait(1.0 / self.rate)

    def summary(self) -> dict[tuple[int, str], int]:
        out: dict[tuple[int, str], int] = {}
        for a in list(self.answers):
            out[(a.status, a.version or a.detail[:200])] = out.get((a.status, a.version or a.detail[:200]), 0) + 1
        return out

    def failures(self, reference_wall: float = 0.0) -> list[tuple[float, int, str]]:
        """(seconds relative to ``reference_wall``, status, detail) of every failed request."""
        return [(round(a.wall - reference_wall, 2), a.status, a.detail) for a in list(self.answers) if a.status != 200]

    def since(self, t: float) -> list[Answer]:
        return [a for a in list(self.answers) if a.at >= t]

    def share(self, version: str, since: float) -> tuple[float, int]:
        window = [a for a in self.since(since) if a.status == 200]
        return (sum(a.version == version for a in window) / len(window) if window else 0.0), len(window)


def sample_rows(seed: int = 7, n: int = 500) -> tuple[np.ndarray, np.ndarray]:
    from noria_server.reference_models import dataset

    frame, target = dataset("logistic", rows=n, seed=seed)
    return frame.to_numpy(), np.asarray(target)


def operator_env(prometheus_url: str) -> dict[str, str]:
    """Operator env for rollout tests: fast passes, router backends by ClusterIP (the test bed has no
    EndpointSlices for loopback pod addresses; its node agent proxies ClusterIPs)."""
    return {"NORIA_PROMETHEUS_URL": prometheus_url, "NORIA_ROLLOUT_INTERVAL_SECONDS": "0.5",
            "NORIA_ROUTER_BACKEND_URLS": "clusterIP"}


def start_stable(cluster, namespace, operator_factory, store_claim, env, manifest: str,  # noqa: ANN001, ANN201
                 feedback: bool = False):
    """A Rollout serving churn-v1 as stable through its router, with user traffic flowing."""
    store_claim(namespace)
    create_model_version(cluster, save_model(cluster.store_dir, namespace, 1))
    operator = operator_factory(namespace, **env)
    cluster.kubectl("apply", "-f", "-", input=manifest)
    wait_for("churn-v1 stable and Healthy", lambda: rollout_status(cluster, namespace).get("phase") == "Healthy"
             and rollout_status(cluster, namespace).get("stableVersion") == "churn-v1", timeout=120,
             on_timeout=lambda: str(rollout_status(cluster, namespace)))
    rows, labels = sample_rows()
    traffic = Traffic(service_url(cluster, namespace, PIPELINE), rows, labels, feedback=feedback).start()
    wait_for("traffic answered by churn-v1", lambda: traffic.share("churn-v1", time.monotonic() - 2)[1] > 5,
             timeout=60, on_timeout=lambda: f"answers: {traffic.summary()}")
    return operator, traffic


def wall_time(timestamp: str) -> float:
    """time.time() of an RFC 3339 timestamp written by the operator (second resolution)."""
    import datetime as dt

    return dt.datetime.fromisoformat(timestamp.replace("Z", "+00:00")).timestamp()
