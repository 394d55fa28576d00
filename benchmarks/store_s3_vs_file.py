"""One closed-loop run on the file store (a claim) against the same run on s3:// (the test bed's SeaweedFS).

    .venv/bin/python benchmarks/store_s3_vs_file.py [--runs 3] [--rows 5000] [--requests 200] [--json out.json]

Each run, in a fresh namespace of one local test bed, times the phases of the loop as a user sees them:

1. train: the TrainingPipeline applied -> ModelVersion v1 created (data read from the store, the
   artifact set written to it);
2. serve: the Rollout applied -> Healthy with v1 stable (the server pod reads and verifies the artifact);
3. log: ``--requests`` predictions with their labels sent one by one -> every prediction and label row
   readable in the store (the servers' log flushes);
4. retrain: ``noria.dev/retrain`` written -> ModelVersion v2 created (data plus the logged feedback
   read, a second artifact set written).

The same operator, trainer, server, data and requests on both stores; only where the bytes go
differs. Medians over ``--runs``, store by store in alternation. The machine is shared (2 cores),
so the load average is printed alongside; read the figures as a comparison, not as capacities.
"""

from __future__ import annotations

import argparse
import json
import os
import secrets
import statistics
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests" / "integration"))

import fsspec  # noqa: E402
import s3_helpers  # noqa: E402
from noria.contracts import ANNOTATION_RETRAIN, API_VERSION  # noqa: E402
from noria_testbed.processes import free_port, wait_until  # noqa: E402
from noria_testbed.testbed import LocalTestbed  # noqa: E402
from rollout_helpers import rollout_status, service_url  # noqa: E402
from training_helpers import classification_frame, get, pipeline_yaml, write_data  # noqa: E402

PIPELINE = "churn"
FEATURES = ["x1", "x2"]
PHASES = ("train", "serve", "log", "retrain")
CLAIM = (
    "apiVersion: v1\nkind: PersistentVolumeClaim\nmetadata: {name: noria-store}\n"
    "spec: {accessModes: [ReadWriteMany], resources: {requests: {storage: 1Gi}}}\n"
)
FILE_ROOT = "file:///var/lib/noria/store"


@dataclass
class Store:
    """One store as the benchmark drives it: how the namespace is prepared, where data lands, how the
    operator is configured, and the filesystem the benchmark reads the logs through."""

    name: str
    tb: LocalTestbed

    def prepare(self, namespace: str) -> None:
        if self.name == "file":
            self.tb.kubectl("apply", "-n", namespace, "-f", "-", input=CLAIM)
        else:
            s3_helpers.create_secret(self.tb, namespace, self.tb.s3.secret_data())

    def land(self, namespace: str, rows: int) -> str:
        frame = classification_frame(rows)
        if self.name == "file":
            return write_data(self.tb.store_dir, namespace, PIPELINE, frame)
        return s3_helpers.write_data(
            s3_helpers.filesystem(self.tb.s3), self.tb.s3, namespace, PIPELINE, frame
        )

    def operator_env(self) -> dict[str, str]:
        if self.name == "file":
            return {"NORIA_STORE_ROOT": FILE_ROOT, "NORIA_LOCAL_STORE_ROOT": f"file://{self.tb.store_dir}"}
        return s3_helpers.operator_env(self.tb.s3)

    def spec_store(self) -> dict[str, Any]:
        return {} if self.name == "file" else {"store": s3_helpers.store_access(self.tb.s3)}

    def rows_under(self, namespace: str, folder: str) -> int:
        if self.name == "file":
            fs, root = fsspec.filesystem("file"), str(self.tb.store_dir)
        else:
            fs, root = s3_helpers.filesystem(self.tb.s3), self.tb.s3.store_root.removeprefix("s3://")
        keys = [k for k in fs.find(f"{root}/{namespace}/{PIPELINE}/{folder}") if k.endswith(".jsonl")]
        return sum(len([line for line in fs.cat(k).decode().splitlines() if line.strip()]) for k in keys)


def start_operator(tb: LocalTestbed, namespace: str, log: Path, env: dict[str, str]) -> subprocess.Popen:
    port = free_port()
    full = {
        **tb.env,
        "PYTHONUNBUFFERED": "1",
        "NORIA_TRAINER_IMAGE": "noria-trainer:bench",
        "NORIA_SERVER_IMAGE": "noria-server:bench",
        "NORIA_PROMETHEUS_URL": "http://127.0.0.1:9",
        "NORIA_METRICS_PORT": "0",
        "NORIA_TRAINING_RESYNC_SECONDS": "2",
        "NORIA_TRIGGER_SETTLE_SECONDS": "0",
        "NORIA_ROUTER_BACKEND_URLS": "clusterIP",
        "NORIA_LEADER_ELECTION": "false",
        **env,
    }
    with open(log, "ab") as out:
        proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "noria",
                "--namespace",
                namespace,
                "--liveness",
                f"http://127.0.0.1:{port}/healthz",
            ],
            env=full,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    wait_until(
        "operator live",
        lambda: proc.poll() is None and _healthy(port),
        timeout=60,
        on_timeout=lambda: log.read_text()[-2000:],
    )
    return proc


def _healthy(port: int) -> bool:
    import urllib.request

    with urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=2) as response:
        return response.status == 200


def one_run(store: Store, rows: int, requests: int, log_dir: Path) -> dict[str, float]:
    tb = store.tb
    namespace = f"bench-{store.name}-{secrets.token_hex(3)}"
    tb.kubectl("create", "namespace", namespace)
    wait_until(
        "default ServiceAccount",
        lambda: tb.kubectl("get", "sa", "default", "-n", namespace, check=False).returncode == 0,
        timeout=30,
    )
    store.prepare(namespace)
    source = store.land(namespace, rows)
    operator = start_operator(tb, namespace, log_dir / f"operator-{namespace}.log", store.operator_env())
    timings: dict[str, float] = {}
    try:
        data = {"source": source, "format": "parquet", "feedback": {"enabled": True}}
        began = time.monotonic()
        tb.kubectl(
            "apply",
            "-n",
            namespace,
            "-f",
            "-",
            input=pipeline_yaml(PIPELINE, source, extra={"data": data, **store.spec_store()}),
        )
        wait_until(
            "v1", lambda: get(tb, namespace, "modelversion", f"{PIPELINE}-v1"), timeout=600, interval=0.2
        )
        timings["train"] = time.monotonic() - began

        began = time.monotonic()
        rollout = {
            "apiVersion": API_VERSION,
            "kind": "Rollout",
            "metadata": {"name": PIPELINE},
            "spec": {
                "source": {"pipeline": PIPELINE},
                "replicas": 1,
                "strategy": {"immediate": {}},
                "scaleDownDelay": "3s",
                **store.spec_store(),
            },
        }
        tb.kubectl("apply", "-n", namespace, "-f", "-", input=json.dumps(rollout))
        wait_until(
            "Healthy",
            lambda: (
                rollout_status(tb, namespace, PIPELINE).get("stableVersion") == f"{PIPELINE}-v1"
                and rollout_status(tb, namespace, PIPELINE).get("phase") == "Healthy"
            ),
            timeout=600,
            interval=0.2,
        )
        timings["serve"] = time.monotonic() - began

        traffic = classification_frame(requests, seed=11)
        began = time.monotonic()
        answered, labelled = s3_helpers.infer_and_label(
            service_url(tb, namespace, PIPELINE), PIPELINE, traffic, FEATURES
        )
        wait_until(
            "logs in the store",
            lambda: (
                store.rows_under(namespace, "predictions") >= answered
                and store.rows_under(namespace, "feedback") >= labelled
            ),
            timeout=300,
            interval=0.2,
        )
        timings["log"] = time.monotonic() - began

        began = time.monotonic()
        tb.kubectl("annotate", "trainingpipeline", PIPELINE, "-n", namespace, f"{ANNOTATION_RETRAIN}=bench")
        wait_until(
            "v2", lambda: get(tb, namespace, "modelversion", f"{PIPELINE}-v2"), timeout=600, interval=0.2
        )
        timings["retrain"] = time.monotonic() - began
        timings["total"] = sum(timings[p] for p in PHASES)
        return timings
    finally:
        os.killpg(operator.pid, 15)
        operator.wait(30)
        tb.kubectl("delete", "namespace", namespace, "--wait=false", check=False)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--rows", type=int, default=5000)
    parser.add_argument("--requests", type=int, default=200)
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()

    results: dict[str, list[dict[str, float]]] = {"file": [], "s3": []}
    with LocalTestbed() as tb:
        tb.start_s3()
        stores = [Store("file", tb), Store("s3", tb)]
        for run in range(args.runs):
            for store in stores:
                timings = one_run(store, args.rows, args.requests, tb.log_dir)
                results[store.name].append(timings)
                print(
                    f"run {run + 1} {store.name:4}: "
                    + "  ".join(f"{k} {v:6.2f}s" for k, v in timings.items()),
                    f"(load {os.getloadavg()[0]:.1f})",
                    flush=True,
                )

    print(
        f"\nmedian of {args.runs} runs, seconds ({args.rows} data rows, {args.requests} requests; 2 shared cores)"
    )
    print(f"{'phase':8} {'file':>8} {'s3':>8} {'s3/file':>8}")
    summary = {}
    for phase in (*PHASES, "total"):
        file_s = statistics.median(r[phase] for r in results["file"])
        s3_s = statistics.median(r[phase] for r in results["s3"])
        summary[phase] = {"file": round(file_s, 2), "s3": round(s3_s, 2)}
        print(f"{phase:8} {file_s:8.2f} {s3_s:8.2f} {s3_s / file_s:8.2f}")
    if args.json:
        args.json.write_text(
            json.dumps(
                {"args": vars(args) | {"json": str(args.json)}, "runs": results, "median": summary}, indent=1
            )
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
