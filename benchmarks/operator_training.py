"""Continuous-training operator figures on the local test bed (real control plane, real trainer).

    .venv/bin/python benchmarks/operator_training.py [--runs 10] [--pipelines 100]

1. Trigger -> Job created: the benchmark writes a new ``noria.dev/retrain`` value and times the
   Job's ADDED event on its own watch (client-side clock on both ends; the annotation's settle
   time is set to 0 so the figure is the operator's own latency).
2. Job finished -> ModelVersion created: the Job's Complete event to the ModelVersion's ADDED
   event, on the same watch connection style.
3. Operator memory (RSS) with N pipelines: N TrainingPipelines in one namespace, each with a
   schedule and a newData trigger, and the node cordoned so their initial Jobs stay Pending (N
   trainer processes would not fit on this machine); RSS after every pipeline has been reconciled
   and a few resync periods have passed, compared with the same operator with no pipeline.

Medians over runs; the machine is shared, so the load average is printed alongside.
"""

from __future__ import annotations

import argparse
import json
import os
import queue
import signal
import statistics
import subprocess
import sys
import threading
import time
import urllib.request
from pathlib import Path

import psutil

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests" / "integration"))

from noria.contracts import ANNOTATION_RETRAIN  # noqa: E402
from noria_testbed.processes import free_port, wait_until  # noqa: E402
from noria_testbed.testbed import LocalTestbed  # noqa: E402
from training_helpers import classification_frame, pipeline_yaml, write_data  # noqa: E402

CLAIM = ("apiVersion: v1\nkind: PersistentVolumeClaim\nmetadata: {name: noria-store}\n"
         "spec: {accessModes: [ReadWriteMany], resources: {requests: {storage: 1Gi}}}\n")


def start_operator(tb: LocalTestbed, namespace: str, log: Path, **env: str) -> subprocess.Popen:
    port = free_port()
    full = {**tb.env, "PYTHONUNBUFFERED": "1", "NORIA_STORE_ROOT": "file:///var/lib/noria/store",
            "NORIA_LOCAL_STORE_ROOT": f"file://{tb.store_dir}", "NORIA_TRAINER_IMAGE": "noria-trainer:bench",
            "NORIA_PROMETHEUS_URL": "http://127.0.0.1:9", "NORIA_METRICS_PORT": "0", **env}
    with open(log, "ab") as out:
        proc = subprocess.Popen([sys.executable, "-m", "noria", "--namespace", namespace,
                                 "--liveness", f"http://127.0.0.1:{port}/healthz"],
                                env=full, stdout=out, stderr=subprocess.STDOUT, start_new_session=True)

    def live() -> bool:
        assert proc.poll() is None, log.read_text()[-2000:]
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=2) as r:
            return r.status == 200

    wait_until("operator live", live, timeout=60)
    return proc


def stop(proc: subprocess.Popen) -> None:
    os.killpg(proc.pid, signal.SIGTERM)
    try:
        proc.wait(15)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()


def watch_events(namespace: str, events: queue.Queue) -> None:
    """Job and ModelVersion watch events with the local arrival time, on background threads."""
    from lightkube import Client
    from lightkube.resources.batch_v1 import Job
    from noria.kube import ModelVersion

    def pump(res, kind: str) -> None:  # noqa: ANN001
        try:
            for kind_of_event, obj in Client().watch(res, namespace=namespace):
                events.put((time.monotonic(), kind, kind_of_event, obj.to_dict() if hasattr(obj, "to_dict") else obj))
        except Exception:  # noqa: BLE001 - the test bed stopping under the watch ends it
            return

    for res, kind in ((Job, "Job"), (ModelVersion, "ModelVersion")):
        threading.Thread(target=pump, args=(res, kind), daemon=True).start()


def latency_runs(tb: LocalTestbed, runs: int) -> tuple[list[float], list[float]]:
    from lightkube import Client
    from lightkube.types import PatchType
    from noria.kube import TrainingPipeline

    ns = "bench-latency"
    tb.kubectl("create", "namespace", ns)
    wait_until("default SA", lambda: tb.kubectl("get", "sa", "default", "-n", ns, check=False).returncode == 0, 30)
    tb.kubectl("apply", "-n", ns, "-f", "-", input=CLAIM)
    source = write_data(tb.store_dir, ns, "lat", classification_frame(400))
    proc = start_operator(tb, ns, tb.log_dir / "bench-operator-latency.log",
                          NORIA_TRIGGER_SETTLE_SECONDS="0", NORIA_TRAINING_RESYNC_SECONDS="30")
    events: queue.Queue = queue.Queue()
    watch_events(ns, events)
    client = Client()
    to_job, to_mv = [], []
    try:
        tb.kubectl("apply", "-n", ns, "-f", "-", input=pipeline_yaml("lat", source))
        for n in range(1, runs + 2):  # run 1 is the initial run (no manual trigger to time): not counted
            job_name, mv_name = f"lat-r{n}", f"lat-v{n}"
            triggered = None
            if n > 1:
                triggered = time.monotonic()
                client.patch(TrainingPipeline, "lat", {"metadata": {"annotations": {ANNOTATION_RETRAIN: str(n)}}},
                             namespace=ns, patch_type=PatchType.MERGE)
            created = completed = registered = None
            deadline = time.monotonic() + 180
            while registered is None and time.monotonic() < deadline:
                try:
                    at, kind, _type, obj = events.get(timeout=1)
                except queue.Empty:
                    continue
                name = obj["metadata"]["name"]
                if kind == "Job" and name == job_name:
                    created = created or at
                    conds = (obj.get("status") or {}).get("conditions") or []
                    if any(c["type"] == "Complete" and c["status"] == "True" for c in conds):
                        completed = completed or at
                    if any(c["type"] == "Failed" and c["status"] == "True" for c in conds):
                        raise RuntimeError(f"{job_name} failed; see the pod log")
                if kind == "ModelVersion" and name == mv_name:
                    registered = at
            if registered is None or created is None or completed is None:
                raise RuntimeError(f"run {n} did not complete in time")
            if triggered is not None:
                to_job.append(created - triggered)
                to_mv.append(registered - completed)
                print(f"run {n}: trigger->Job {1000 * (created - triggered):.0f} ms, "
                      f"Job done->MV {1000 * (registered - completed):.0f} ms", flush=True)
            # let the run's status settle before the next trigger (one run at a time)
            wait_until("run recorded", lambda n=n: json.loads(tb.kubectl(
                "get", "tp", "lat", "-n", ns, "-o", "json").stdout)["status"].get("runCounter") == n
                and not json.loads(tb.kubectl("get", "tp", "lat", "-n", ns, "-o", "json").stdout)["status"].get(
                    "currentRun"), 30)
    finally:
        stop(proc)
    return to_job, to_mv


def memory(tb: LocalTestbed, pipelines: int) -> tuple[float, float]:
    ns = "bench-memory"
    tb.kubectl("create", "namespace", ns)
    wait_until("default SA", lambda: tb.kubectl("get", "sa", "default", "-n", ns, check=False).returncode == 0, 30)
    tb.kubectl("cordon", "noria-local")
    source = write_data(tb.store_dir, ns, "mem", classification_frame(200))
    proc = start_operator(tb, ns, tb.log_dir / "bench-operator-memory.log", NORIA_TRAINING_RESYNC_SECONDS="5")
    try:
        time.sleep(5)
        idle = psutil.Process(proc.pid).memory_info().rss / 2**20
        docs = [pipeline_yaml(f"p{i:03d}", source, triggers={"schedule": "0 3 * * *", "newData": {"minNewRows": 1000}})
                for i in range(pipelines)]
        tb.kubectl("apply", "-n", ns, "-f", "-", input="\n---\n".join(docs))
        wait_until(f"{pipelines} Jobs created", lambda: len(json.loads(tb.kubectl(
            "get", "jobs", "-n", ns, "-o", "json").stdout)["items"]) >= pipelines, 300)
        time.sleep(20)  # a few resync periods over every pipeline
        loaded = psutil.Process(proc.pid).memory_info().rss / 2**20
    finally:
        stop(proc)
        tb.kubectl("uncordon", "noria-local")
    return idle, loaded


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", type=int, default=10)
    parser.add_argument("--pipelines", type=int, default=100)
    args = parser.parse_args()
    with LocalTestbed() as tb:
        os.environ["KUBECONFIG"] = str(tb.kubeconfig)
        to_job, to_mv = latency_runs(tb, args.runs)
        idle, loaded = memory(tb, args.pipelines)
    load = os.getloadavg()
    print("\n| figure | median | min | max | n |\n|---|---|---|---|---|")
    for label, values in (("trigger -> Job created", to_job), ("Job finished -> ModelVersion created", to_mv)):
        print(f"| {label} | {1000 * statistics.median(values):.0f} ms | {1000 * min(values):.0f} ms | "
              f"{1000 * max(values):.0f} ms | {len(values)} |")
    print(f"| operator RSS, 0 pipelines | {idle:.0f} MiB | | | |")
    print(f"| operator RSS, {args.pipelines} pipelines | {loaded:.0f} MiB | | | |")
    print(f"load average (1/5/15 min): {load[0]:.2f} {load[1]:.2f} {load[2]:.2f}")


if __name__ == "__main__":
    main()
