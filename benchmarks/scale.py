"""Noria at scale on the test bed: ``python benchmarks/scale.py --pipelines 1000 --rollouts 1000``.

One operator process (``python -m noria --namespace scale``) against the real control plane of the
test bed, with N TrainingPipelines and N Rollouts in one namespace. Prints one table: operator RSS
(max and steady), operator CPU at steady state (CPU seconds per minute), the time until every object
carries its first status, the reaction latency p50/p99 from a spec change to the status patch that
answers it (observedGeneration), API requests per second by verb, and the 429s.

What is real and what is not (docs/operations/scale.md says more):

* Real: kube-apiserver, etcd, controller manager and scheduler of the test bed; the operator with
  its default intervals; watches, lists, status patches, Events. The operator talks to the API
  server as a ServiceAccount (a token, not the test bed's admin certificate), so API Priority and
  Fairness treats it as a workload and can answer 429, as in a real cluster.
* No pod runs: the node agent is stopped after the test bed starts (2 shared cores cannot run
  1,000 trainers or model servers). Nothing should need a pod: every pipeline already has one
  ModelVersion (created by hand, so the ``initial`` trigger does not fire) and a cron trigger that
  fires once a year; every Rollout uses the ``service`` provider (no router Deployment) and waits
  for an approved version of its pipeline, which never comes. The table counts Jobs, Deployments
  and Pods so a run where the operator did create some says so.
* So this measures the control loop (watches, per-object passes, status writes), not serving:
  a Rollout mid-canary also lists its Deployments and queries Prometheus on every analysis.

The reaction sample patches the spec of ``--sample`` Rollouts and ``--sample`` pipelines (one at a
time, ``--sample-gap`` apart) and times, through a watch, the status write whose
``observedGeneration`` reaches the new generation.

``--chart-settings`` runs the operator as the chart deploys it: the worker bound, leader election
and its Lease timings, watch and request time-outs, read from ``charts/noria/templates/deployment.yaml``
and ``values.yaml`` (one source), and a standby replica when ``replicaCount`` > 1 (``--standby`` /
``--no-standby`` decide instead). With leader election on, every phase checks that no replica exited,
the Lease's holder and ``leaseTransitions`` are recorded at each phase's end, and the standby must never
act (its ``noria_operator_leader`` gauge stays 0, its log shows no reconcile activity). Each goal row
says met or NOT MET; the exit code is 1 when a goal is not met.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import json
import os
import re
import ssl
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import psutil
import yaml
from noria.contracts import API_VERSION
from noria_testbed.kubeapi import KubeApi, inform
from noria_testbed.processes import free_port, wait_until
from noria_testbed.testbed import LocalTestbed

NAMESPACE = "scale"
GROUP_PATH = f"/apis/{API_VERSION}/namespaces/{NAMESPACE}"
OPERATOR_ACCOUNT = "noria-operator"
RSS_GOAL_MB, REACTION_P99_GOAL_S = 200, 1.0
YEARLY = "0 0 1 1 *"  # a cron that does not fire during a benchmark
LEASE_PATH = f"/apis/coordination.k8s.io/v1/namespaces/{NAMESPACE}/leases"
DEFAULT_LEASE_NAME = "noria-operator"  # noria.leader's default, and the chart's leaderElection.leaseName
REPLICAS = ("scale-a", "scale-b")  # POD_NAME of the first replica (the leader) and of the standby
# A log line of the operator's reconcile machinery (Kopf, Noria's handlers): a standby has none
# (the same pattern as tests/integration/test_leader_election.py).
ACTIVITY = re.compile(r"^(DEBUG|INFO|WARNING|ERROR|CRITICAL):(kopf|noria\.(deployment|training|kube))", re.M)

# Packages of the dev venv that the operator image (``noria[operator,s3]``, operator/Dockerfile) does not
# have: dask-kubernetes brings them for the test bed's Dask operator. Kopf imports each one it finds
# (kopf/_cogs/helpers/thirdparty.py, intents/piggybacking.py): ~70 MB of RSS (2,900 modules instead of
# 900) that a deployed operator does not carry. The operator process here runs without them
# (``--keep-dev-imports`` keeps them), as ``sys.modules[name] = None`` makes their import fail.
NOT_IN_IMAGE = ("kubernetes", "kubernetes_asyncio", "pykube")
HIDE_ENV = "NORIA_SCALE_HIDE_MODULES"  # read by the launcher below and by scale_tracemalloc.py
LAUNCHER = ("import os, sys; sys.modules.update(dict.fromkeys(filter(None, os.environ.get("
            f"{HIDE_ENV!r}, '').split(',')))); from noria.__main__ import main; main(sys.argv[1:])")

# ---- the chart's settings ---------------------------------------------------------------------------
CHART = Path(__file__).resolve().parents[1] / "charts" / "noria"
# What the chart decides about the operator's behaviour; the rest of its env (images, store, Prometheus,
# ports, identity) is the benchmark's own.
CHART_ENV_PREFIXES = ("NORIA_LEADER_", "NORIA_LEASE_", "NORIA_WORKER_", "NORIA_WATCH_TIMEOUT", "NORIA_REQUEST_TIMEOUT")
CHART_ENV_EXPECTED = {"NORIA_LEADER_ELECTION", "NORIA_LEADER_LEASE_NAME", "NORIA_LEASE_DURATION_SECONDS",
                      "NORIA_LEASE_RENEW_DEADLINE_SECONDS", "NORIA_LEASE_RENEW_PERIOD_SECONDS",
                      "NORIA_LEASE_RETRY_PERIOD_SECONDS", "NORIA_WORKER_LIMIT", "NORIA_WORKER_IDLE_SECONDS",
                      "NORIA_WATCH_TIMEOUT", "NORIA_REQUEST_TIMEOUT"}
_TEMPLATE_ENV = re.compile(r"- name: (NORIA_\w+)\s*\n\s*value: \{\{ \.Values\.([\w.]+) \| quote \}\}")


def chart_settings(chart: Path = CHART) -> tuple[dict[str, str], dict]:
    """The env the chart's Deployment gives the operator for the settings above, as ``helm install``
    with the default values renders it: each ``- name: NORIA_X / value: {{ .Values.a.b | quote }}``
    of the template, its value from values.yaml. Returns (env, values)."""
    values = yaml.safe_load((chart / "values.yaml").read_text())
    template = (chart / "templates" / "deployment.yaml").read_text()
    env = {}
    for name, path in _TEMPLATE_ENV.findall(template):
        if not name.startswith(CHART_ENV_PREFIXES):
            continue
        value = values
        for part in path.split("."):
            value = value[part]
        env[name] = str(value).lower() if isinstance(value, bool) else str(value)  # as Helm's quote renders it
    missing = CHART_ENV_EXPECTED - set(env)
    if missing:  # the template changed shape: say so rather than measure without them
        raise SystemExit(f"--chart-settings: {sorted(missing)} not found in {chart / 'templates/deployment.yaml'}")
    return env, values


# ---- the objects ------------------------------------------------------------------------------------
def pipeline(i: int) -> dict:
    return {"apiVersion": API_VERSION, "kind": "TrainingPipeline", "metadata": {"name": f"p{i:04d}"},
            "spec": {"model": {"task": "regression", "estimator": "sklearn.linear_model.Ridge", "target": "y"},
                     "data": {"source": f"file:///var/lib/noria/store/datasets/p{i:04d}/data.csv", "format": "csv"},
                     "evaluation": {"metric": "rmse", "maxScore": "10"},
                     "triggers": {"schedule": YEARLY}, "historyLimit": 10}}


def model_version(i: int) -> dict:
    """An imported version of pipeline i: the pipeline has a model, so its ``initial`` trigger stays quiet."""
    name = f"p{i:04d}"
    return {"apiVersion": API_VERSION, "kind": "ModelVersion", "metadata": {"name": f"{name}-v1"},
            "spec": {"pipeline": name, "version": 1,
                     "artifact": {"uri": f"file:///var/lib/noria/store/ml/{name}/v1/model.skops",
                                  "digest": "sha256:" + f"{i:064x}", "format": "skops"},
                     "metrics": {"rmse": "1.0", "rows": 1000},
                     "lineage": {"run": "manual-import", "trigger": "manual", "trainedAt": "2026-11-01T12:00:00Z"}}}


def rollout(i: int, pipelines: int) -> dict:
    source = f"p{i % pipelines:04d}" if pipelines else f"none{i:04d}"
    return {"apiVersion": API_VERSION, "kind": "Rollout", "metadata": {"name": f"r{i:04d}"},
            "spec": {"source": {"pipeline": source}, "replicas": 1, "traffic": {"provider": "service"},
                     "strategy": {"canary": {"steps": [{"setWeight": 20}, {"pause": {"duration": "1m"}},
                                                       {"setWeight": 100}]}},
                     "analysis": {"interval": "1m", "checks": [{"builtin": "errorRate", "max": "0.01"}]}}}


# ---- what the benchmark watches -----------------------------------------------------------------
@dataclass
class Tracker:
    """Per object (kind/name): when its first status arrived, and the generation each status answers."""

    created: dict[str, float] = field(default_factory=dict)
    first_status: dict[str, float] = field(default_factory=dict)
    answered: dict[tuple[str, int], float] = field(default_factory=dict)  # (key, generation) → first seen
    phases: dict[str, str] = field(default_factory=dict)  # key → latest status.phase (or its first condition)
    messages: dict[str, str] = field(default_factory=dict)  # key → latest status.message or condition messages
    changed: asyncio.Event = field(default_factory=asyncio.Event)

    def handler(self, kind: str):  # noqa: ANN201
        async def on_event(event: str, obj: dict) -> None:
            if event == "DELETED":
                return
            key, seen = f"{kind}/{obj['metadata']['name']}", time.monotonic()
            observed = (obj.get("status") or {}).get("observedGeneration")
            if observed is None:
                return
            self.first_status.setdefault(key, seen)
            status = obj["status"]
            first_condition = next(iter(status.get("conditions") or []), {})
            self.phases[key] = status.get("phase") or f"{first_condition.get('type')}={first_condition.get('reason')}"
            self.messages[key] = status.get("message") or "; ".join(
                f"{c.get('type')}={c.get('status')} {c.get('reason')}: {c.get('message')}"
                for c in status.get("conditions") or [])
            self.answered.setdefault((key, int(observed)), seen)
            self.changed.set()
        return on_event


class Sampler:
    """The operator's RSS and CPU time, once a second (psutil, process and its children)."""

    def __init__(self, pid: int) -> None:
        self.process = psutil.Process(pid)
        self.samples: list[tuple[float, float, float]] = []  # (monotonic, rss MB, cpu seconds)

    def sample(self) -> None:
        try:
            procs = [self.process, *self.process.children(recursive=True)]
        except psutil.NoSuchProcess:  # it exited: the watchdog says so; nothing to sample
            return
        rss = cpu = 0.0
        for proc in procs:
            try:
                rss += proc.memory_info().rss / 2**20
                times = proc.cpu_times()
                cpu += times.user + times.system
            except psutil.NoSuchProcess:
                continue
        self.samples.append((time.monotonic(), rss, cpu))

    async def run(self) -> None:
        while True:
            self.sample()
            await asyncio.sleep(1.0)

    def between(self, start: float, end: float) -> list[tuple[float, float, float]]:
        return [s for s in self.samples if start <= s[0] <= end]


class RoundTrips:
    """GET latency of one small object with the operator's own credentials, twice a second: how long
    the API server (on this machine, under this load) takes to answer anyone in the operator's shoes."""

    def __init__(self, kubeconfig: Path, path: str) -> None:
        config = yaml.safe_load(kubeconfig.read_text())
        ca = base64.b64decode(config["clusters"][0]["cluster"]["certificate-authority-data"]).decode()
        self.api = httpx.AsyncClient(base_url=config["clusters"][0]["cluster"]["server"], trust_env=False,
                                     verify=ssl.create_default_context(cadata=ca), timeout=30.0,
                                     headers={"Authorization": f"Bearer {config['users'][0]['user']['token']}"})
        self.path = path
        self.samples: list[tuple[float, float]] = []  # (monotonic, seconds)
        self.errors: list[str] = []

    async def run(self) -> None:
        while True:
            began = time.monotonic()
            try:
                response = await self.api.get(self.path)
                response.raise_for_status()
                self.samples.append((began, time.monotonic() - began))
            except httpx.HTTPError as error:  # a 429 or a time-out is a round trip that failed
                self.samples.append((began, float("inf")))
                self.errors.append(str(error)[:200])
            await asyncio.sleep(0.5)

    def between(self, start: float, end: float) -> list[float]:
        return [seconds for at, seconds in self.samples if start <= at <= end]


# ---- API server metrics -------------------------------------------------------------------------
_SAMPLE = re.compile(r'^(\w+)\{(.*)\} ([0-9.eE+-]+)$')
_LABEL = re.compile(r'(\w+)="((?:[^"\\]|\\.)*)"')


def apiserver_counters(testbed: LocalTestbed) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    text = testbed.kubectl("get", "--raw", "/metrics").stdout
    out = {}
    for line in text.splitlines():
        if not line.startswith(("apiserver_request_total{", "apiserver_flowcontrol_dispatched_requests_total{",
                                "apiserver_flowcontrol_rejected_requests_total{",
                                "apiserver_request_duration_seconds_sum{", "apiserver_request_duration_seconds_count{",
                                "apiserver_flowcontrol_request_wait_duration_seconds_sum{",
                                "apiserver_flowcontrol_request_wait_duration_seconds_count{")):
            continue
        match = _SAMPLE.match(line)
        if match:
            out[(match[1], tuple(sorted(_LABEL.findall(match[2]))))] = float(match[3])
    return out


def counter_delta(before: dict, after: dict, name: str, by: tuple[str, ...], where: dict[str, str] | None = None,
                  ) -> Counter:
    totals: Counter = Counter()
    for (metric, labels), value in after.items():
        if metric != name:
            continue
        labelmap = dict(labels)
        if where and any(labelmap.get(k) != v for k, v in where.items()):
            continue
        totals[tuple(labelmap.get(k, "") for k in by)] += value - before.get((metric, labels), 0.0)
    return totals


# ---- set-up ---------------------------------------------------------------------------------------
def operator_kubeconfig(testbed: LocalTestbed, directory: Path) -> Path:
    """A kubeconfig with a ServiceAccount token: the operator is a workload to API Priority and
    Fairness (the test bed's admin certificate is system:masters, which is never throttled).
    The account is bound to cluster-admin here: this measures load, not permissions."""
    testbed.kubectl("create", "serviceaccount", OPERATOR_ACCOUNT, "-n", NAMESPACE)
    testbed.kubectl("create", "clusterrolebinding", f"{OPERATOR_ACCOUNT}-scale", "--clusterrole=cluster-admin",
                    f"--serviceaccount={NAMESPACE}:{OPERATOR_ACCOUNT}")
    token = testbed.kubectl("create", "token", OPERATOR_ACCOUNT, "-n", NAMESPACE, "--duration=24h").stdout.strip()
    admin = yaml.safe_load(testbed.kubeconfig.read_text())
    config = {**admin, "users": [{"name": OPERATOR_ACCOUNT, "user": {"token": token}}],
              "contexts": [{"name": "scale", "context": {"cluster": admin["clusters"][0]["name"],
                                                         "user": OPERATOR_ACCOUNT, "namespace": NAMESPACE}}],
              "current-context": "scale"}
    path = directory / "operator-kubeconfig"
    path.write_text(yaml.safe_dump(config))
    path.chmod(0o600)
    return path


async def create_all(api: KubeApi, objects: list[tuple[str, dict]], concurrency: int = 16) -> None:
    gate = asyncio.Semaphore(concurrency)

    async def create(plural: str, body: dict) -> None:
        async with gate:
            await api.request("POST", f"{GROUP_PATH}/{plural}", body=body)

    await asyncio.gather(*(create(plural, body) for plural, body in objects))


@dataclass
class Replica:
    """One operator process; ``exited`` is filled in by the Watchdog: (return code, phase)."""

    name: str  # its POD_NAME, the Lease's holderIdentity while it leads
    process: subprocess.Popen
    metrics_url: str
    liveness_url: str
    log_path: Path
    exited: tuple[int, str] | None = None

    def live(self) -> bool:
        assert self.process.poll() is None, f"operator {self.name} exited, see {self.log_path}"
        with urllib.request.urlopen(self.liveness_url, timeout=2) as response:
            return response.status == 200

    def leader_gauge(self) -> float | None:
        """Its noria_operator_leader (1 while it leads); None when /metrics does not answer."""
        try:
            with urllib.request.urlopen(self.metrics_url, timeout=5) as response:
                text = response.read().decode()
        except OSError:
            return None
        match = re.search(r"^noria_operator_leader (\S+)$", text, re.M)
        return float(match.group(1)) if match else None

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(20)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(5)


def start_operator(testbed: LocalTestbed, kubeconfig: Path, log_path: Path, settings: dict[str, str],
                   name: str = REPLICAS[0], tracemalloc_out: Path | None = None,
                   hide: tuple[str, ...] = NOT_IN_IMAGE) -> Replica:
    """Spawn one replica (not waiting for it: ``Replica.live``). ``settings``: the env that decides its
    behaviour (leader election, the chart's settings), over the caller's env."""
    metrics_port, liveness_port = free_port(), free_port()
    env = {**testbed.env, "KUBECONFIG": str(kubeconfig), "PYTHONUNBUFFERED": "1",
           "NORIA_STORE_ROOT": "file:///var/lib/noria/store", "NORIA_LOCAL_STORE_ROOT": f"file://{testbed.store_dir}",
           "NORIA_TRAINER_IMAGE": "noria-trainer:scale", "NORIA_SERVER_IMAGE": "noria-server:scale",
           "NORIA_PROMETHEUS_URL": "http://127.0.0.1:9", "NORIA_PROMETHEUS_TIMEOUT": "2",
           "NORIA_METRICS_PORT": str(metrics_port), "NORIA_LEADER_NAMESPACE": NAMESPACE, "POD_NAME": name,
           HIDE_ENV: ",".join(hide), **settings}
    noria_args = ["--namespace", NAMESPACE, "--liveness", f"http://127.0.0.1:{liveness_port}/healthz"]
    command = [sys.executable, "-c", LAUNCHER, *noria_args]  # python -m noria, less the modules in ``hide``
    if tracemalloc_out is not None:
        command = [sys.executable, str(Path(__file__).with_name("scale_tracemalloc.py")), str(tracemalloc_out), "--",
                   *noria_args]
    with open(log_path, "ab") as log_file:
        process = subprocess.Popen(command, env=env, stdout=log_file, stderr=subprocess.STDOUT,
                                   start_new_session=True)
    return Replica(name, process, f"http://127.0.0.1:{metrics_port}/metrics",
                   f"http://127.0.0.1:{liveness_port}/healthz", log_path)


def operator_settings(args: argparse.Namespace) -> dict[str, str]:
    """The env that decides the operator's behaviour in this run."""
    if args.chart_settings:
        env, _ = chart_settings()
    else:
        # Kopf's worker bound passed through when the caller sets it (the chart sets 100 / 1).
        env = {k: os.environ[k] for k in ("NORIA_WORKER_LIMIT", "NORIA_WORKER_IDLE_SECONDS") if k in os.environ}
    if args.leader_election:
        env["NORIA_LEADER_ELECTION"] = "true"
    # Without election one process acts at once, holding no Lease.
    env.setdefault("NORIA_LEADER_ELECTION", "false")
    return env


PHASES = ("start", "reconcile", "settle", "steady", "reaction", "end")


class Watchdog:
    """Every replica's exit, with the phase it happened in: an operator that exits in any phase (start,
    reconcile, settle, steady, reaction, end) fails the run; with a standby the run goes on and says so."""

    def __init__(self) -> None:
        self.replicas: list[Replica] = []
        self.phase = "start"
        self.exits: list[dict] = []

    def check(self) -> None:
        for replica in self.replicas:
            if replica.exited is None and replica.process.poll() is not None:
                replica.exited = (replica.process.returncode, self.phase)
                self.exits.append({"replica": replica.name, "code": replica.process.returncode, "phase": self.phase,
                                   "log": str(replica.log_path)})

    def any_alive(self) -> bool:
        self.check()
        return any(r.exited is None for r in self.replicas)

    async def run(self) -> None:
        while True:
            self.check()
            await asyncio.sleep(0.5)


class OperatorGone(RuntimeError):
    """No replica is left to measure; ``partial`` holds the figures taken so far."""

    def __init__(self, message: str, partial: dict) -> None:
        super().__init__(message)
        self.partial = partial


def give_priority(testbed: LocalTestbed, operator_pid: int, niceness: int) -> list[str]:
    """Renice the control plane and the operator (``--nice``): on a machine shared with other work,
    as if they had CPU of their own (a cluster's control plane has its machines, and a CPU request
    gives the operator its share). Returns what was reniced."""
    reniced = []
    for name, process in testbed.control_plane.processes.items():
        os.setpriority(os.PRIO_PROCESS, process.popen.pid, niceness)
        reniced.append(name)
    for proc in [psutil.Process(operator_pid), *psutil.Process(operator_pid).children(recursive=True)]:
        os.setpriority(os.PRIO_PROCESS, proc.pid, niceness)
    return [*reniced, "operator"]


# ---- the run ------------------------------------------------------------------------------------------
def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, round(q * len(ordered)) - 1))] if ordered else float("nan")


async def react(api: KubeApi, tracker: Tracker, kind: str, plural: str, names: list[str], patch: dict,
                gap: float, timeout: float) -> list[float]:
    """Patch each object's spec, then time the status that answers its new generation."""
    latencies: list[float] = []
    pending: list[tuple[str, int, float]] = []
    for name in names:
        sent = time.monotonic()
        updated = await api.patch(f"{GROUP_PATH}/{plural}/{name}", patch(name) if callable(patch) else patch)
        pending.append((f"{kind}/{name}", int(updated["metadata"]["generation"]), sent))
        await asyncio.sleep(gap)
    deadline = time.monotonic() + timeout
    while pending and time.monotonic() < deadline:
        still = []
        for key, generation, sent in pending:
            at = min((t for (k, g), t in tracker.answered.items() if k == key and g >= generation), default=None)
            if at is None:
                still.append((key, generation, sent))
            else:
                latencies.append(at - sent)
        pending = still
        tracker.changed.clear()
        if pending:
            try:
                await asyncio.wait_for(tracker.changed.wait(), 1.0)
            except TimeoutError:
                pass
    latencies += [float("inf")] * len(pending)  # never answered within the timeout
    return latencies


async def benchmark(args: argparse.Namespace, testbed: LocalTestbed, workdir: Path) -> dict:
    api = KubeApi(testbed.kubeconfig)
    tracker = Tracker()
    result: dict = {"pipelines": args.pipelines, "rollouts": args.rollouts, "nice": args.nice}
    watchdog = Watchdog()
    try:
        testbed.kubectl("create", "namespace", NAMESPACE)
        wait_until("ServiceAccount default", lambda: testbed.kubectl(
            "get", "serviceaccount", "default", "-n", NAMESPACE, check=False).returncode == 0, timeout=60)
        kubeconfig = operator_kubeconfig(testbed, workdir)
        began = time.monotonic()
        await create_all(api, [("modelversions", model_version(i)) for i in range(args.pipelines)])
        await create_all(api, [("trainingpipelines", pipeline(i)) for i in range(args.pipelines)]
                         + [("rollouts", rollout(i, args.pipelines)) for i in range(args.rollouts)])
        result["create_seconds"] = time.monotonic() - began
        watches = [asyncio.create_task(inform(api, f"{GROUP_PATH}/trainingpipelines", tracker.handler("tp"))),
                   asyncio.create_task(inform(api, f"{GROUP_PATH}/rollouts", tracker.handler("ro")))]
        counters_at_start = apiserver_counters(testbed)
        settings = operator_settings(args)
        electing = settings["NORIA_LEADER_ELECTION"] == "true"
        lease_name = settings.get("NORIA_LEADER_LEASE_NAME", DEFAULT_LEASE_NAME)
        result["settings"] = settings
        result["standby"] = args.standby
        watching = asyncio.create_task(watchdog.run())
        hide = () if args.keep_dev_imports else NOT_IN_IMAGE
        result["hidden_modules"] = list(hide)
        operator = start_operator(testbed, kubeconfig, workdir / "operator.log", settings,
                                  tracemalloc_out=workdir / "tracemalloc.txt" if args.tracemalloc else None, hide=hide)
        watchdog.replicas.append(operator)
        wait_until("operator liveness", operator.live, timeout=120)
        round_trips = RoundTrips(kubeconfig, f"{GROUP_PATH}/rollouts/r0000" if args.rollouts
                                 else f"{GROUP_PATH}/trainingpipelines/p0000")
        probing = asyncio.create_task(round_trips.run())
        started = time.monotonic()
        result["reniced"] = give_priority(testbed, operator.process.pid, args.nice) if args.nice else []
        sampler = Sampler(operator.process.pid)
        sampling = asyncio.create_task(sampler.run())
        checkpoints: list[dict] = []
        result["checkpoints"] = checkpoints

        async def lease() -> dict:
            if not electing:
                return {}
            return (await api.get(f"{LEASE_PATH}/{lease_name}") or {}).get("spec") or {}

        async def checkpoint(phase: str) -> None:
            """The end of a phase: every replica still running, who holds the Lease, the standby's gauge."""
            watchdog.check()
            spec = await lease()
            point = {"phase": phase, "at_s": round(time.monotonic() - started, 1), "exits": len(watchdog.exits),
                     "holder": spec.get("holderIdentity"), "transitions": spec.get("leaseTransitions")}
            if standby is not None:
                point["standby_leader_gauge"] = await asyncio.to_thread(standby.leader_gauge)
            checkpoints.append(point)
            if not watchdog.any_alive():
                raise OperatorGone(f"no operator replica left after phase {phase}: {watchdog.exits}", result)
            watchdog.phase = PHASES[min(PHASES.index(phase) + 1, len(PHASES) - 1)]  # an exit from now on is the next's

        standby: Replica | None = None
        standby_sampler: Sampler | None = None
        if electing:
            # The first replica creates the Lease at once; the standby starts only once it holds it, so
            # which one leads is known. Awaited, not blocking: the watches keep timestamping statuses.
            for _ in range(240):
                if (await lease()).get("holderIdentity") == operator.name:
                    break
                await asyncio.sleep(0.25)
            else:
                raise OperatorGone(f"{operator.name} did not take the Lease within 60 s", result)
            if args.standby:
                standby = start_operator(testbed, kubeconfig, workdir / "operator-standby.log", settings,
                                         name=REPLICAS[1], hide=hide)
                watchdog.replicas.append(standby)
                await asyncio.to_thread(wait_until, "standby liveness", standby.live, timeout=120)
                if args.nice:
                    give_priority(testbed, standby.process.pid, args.nice)
                standby_sampler = Sampler(standby.process.pid)
                sampling_standby = asyncio.create_task(standby_sampler.run())
        await checkpoint("start")
        total = args.pipelines + args.rollouts
        deadline = started + args.reconcile_timeout
        while len(tracker.first_status) < total and time.monotonic() < deadline:
            tracker.changed.clear()
            with_timeout = asyncio.wait_for(tracker.changed.wait(), 1.0)
            try:
                await with_timeout
            except TimeoutError:
                pass
            if not watchdog.any_alive():
                raise OperatorGone(f"the operator exited: {watchdog.exits}", result)
        result["reconciled"] = len(tracker.first_status)
        result["reconcile_seconds"] = (max(tracker.first_status.values()) - started) if tracker.first_status else None
        result["all_reconciled"] = len(tracker.first_status) == total
        await checkpoint("reconcile")
        await asyncio.sleep(args.settle)
        await checkpoint("settle")

        # Steady state: nothing changes; whatever the operator does now, it does all the time.
        counters_before = apiserver_counters(testbed)
        steady_start = time.monotonic()
        await asyncio.sleep(args.steady)
        steady_end = time.monotonic()
        counters_after = apiserver_counters(testbed)
        window = sampler.between(steady_start, steady_end)
        seconds = steady_end - steady_start
        result["steady_seconds"] = seconds
        if len(window) < 2:  # the first replica exited (the watchdog has it): no steady figures of it
            window = [(steady_start, float("nan"), float("nan")), (steady_end, float("nan"), float("nan"))]
        result["rss_steady_mb"] = statistics.median(s[1] for s in window)
        result["cpu_seconds_per_minute"] = (window[-1][2] - window[0][2]) / (window[-1][0] - window[0][0]) * 60
        by_verb = counter_delta(counters_before, counters_after, "apiserver_request_total", ("verb",))
        result["requests_per_second_by_verb"] = {v[0]: round(n / seconds, 2) for v, n in by_verb.most_common() if n}
        by_resource = counter_delta(counters_before, counters_after, "apiserver_request_total",
                                    ("verb", "resource", "subresource"))
        # How long the API server itself took (mean, steady window): a slow pass with fast answers waits
        # inside the operator; slow answers are the server's (or this machine's) share.
        server_sum = counter_delta(counters_before, counters_after, "apiserver_request_duration_seconds_sum",
                                   ("verb", "resource"))
        server_count = counter_delta(counters_before, counters_after, "apiserver_request_duration_seconds_count",
                                     ("verb", "resource"))
        result["server_ms_per_request"] = {"/".join(k): round(server_sum[k] / n * 1000, 1)
                                           for k, n in server_count.most_common(6) if n and k[0] != "WATCH"}
        queue_sum = counter_delta(counters_before, counters_after,
                                  "apiserver_flowcontrol_request_wait_duration_seconds_sum", ("flow_schema",))
        queue_count = counter_delta(counters_before, counters_after,
                                    "apiserver_flowcontrol_request_wait_duration_seconds_count", ("flow_schema",))
        waited = queue_count[("service-accounts",)]
        result["apf_queue_ms_operator"] = (round(queue_sum[("service-accounts",)] / waited * 1000, 1)
                                           if waited else None)
        result["top_requests_per_second"] = {"/".join(filter(None, k)): round(n / seconds, 2)
                                             for k, n in by_resource.most_common(8) if n}
        operator_flow = counter_delta(counters_before, counters_after,
                                      "apiserver_flowcontrol_dispatched_requests_total", ("flow_schema",))
        result["operator_requests_per_second"] = round(operator_flow[("service-accounts",)] / seconds, 2)
        # Operator CPU per request: independent of how many CPUs this machine lends the operator.
        operator_requests = operator_flow[("service-accounts",)] - len(round_trips.between(steady_start, steady_end))
        result["cpu_ms_per_request"] = (result["cpu_seconds_per_minute"] / 60 * seconds * 1000 / operator_requests
                                        if operator_requests > 0 else None)
        steady_round_trips = round_trips.between(steady_start, steady_end)
        result["get_round_trip_p50_s"] = percentile(steady_round_trips, 0.5)
        result["get_round_trip_p99_s"] = percentile(steady_round_trips, 0.99)
        result["load_average_steady"] = os.getloadavg()[0]
        await checkpoint("steady")

        # Reactions: one spec change at a time, each answered by a status write.
        sample_rollouts = [f"r{i:04d}" for i in range(0, args.rollouts, max(1, args.rollouts // args.sample))][
            :args.sample]
        sample_pipelines = [f"p{i:04d}" for i in range(0, args.pipelines, max(1, args.pipelines // args.sample))][
            :args.sample]
        rollout_latencies = await react(api, tracker, "ro", "rollouts", sample_rollouts, {"spec": {"replicas": 2}},
                                        args.sample_gap, args.reaction_timeout)
        pipeline_latencies = await react(api, tracker, "tp", "trainingpipelines", sample_pipelines,
                                         {"spec": {"historyLimit": 11}}, args.sample_gap, args.reaction_timeout)
        for label, values in (("rollout", rollout_latencies), ("pipeline", pipeline_latencies)):
            result[f"{label}_reaction_p50_s"] = percentile(values, 0.5)
            result[f"{label}_reaction_p99_s"] = percentile(values, 0.99)
            result[f"{label}_reaction_unanswered"] = sum(1 for v in values if v == float("inf"))
        result["samples"] = {"rollouts": len(sample_rollouts), "pipelines": len(sample_pipelines)}
        await checkpoint("reaction")

        counters_end = apiserver_counters(testbed)
        throttled = counter_delta(counters_at_start, counters_end, "apiserver_request_total", ("code",))
        rejected = counter_delta(counters_at_start, counters_end, "apiserver_flowcontrol_rejected_requests_total",
                                 ("flow_schema", "reason"))
        result["http_429"] = int(throttled[("429",)])
        result["apf_rejected"] = {"/".join(k): int(v) for k, v in rejected.items() if v}
        result["rss_max_mb"] = max(s[1] for s in sampler.samples)
        if standby_sampler is not None and standby_sampler.samples:
            result["standby_rss_max_mb"] = max(s[1] for s in standby_sampler.samples)
        result["example_status"] = {key: tracker.messages.get(key) for key in ("ro/r0000", "tp/p0000")}
        result["states"] = dict(Counter(f"{key.split('/')[0]}: {phase}" for key, phase in tracker.phases.items()))
        for replica in watchdog.replicas:
            try:
                with urllib.request.urlopen(replica.metrics_url, timeout=5) as response:
                    (workdir / f"operator-metrics-{replica.name}.txt").write_bytes(response.read())
            except OSError:
                pass
        for kind, path in (("jobs", f"/apis/batch/v1/namespaces/{NAMESPACE}/jobs"),
                           ("deployments", f"/apis/apps/v1/namespaces/{NAMESPACE}/deployments"),
                           ("pods", f"/api/v1/namespaces/{NAMESPACE}/pods")):
            listing = await api.request("GET", path)
            result[f"{kind}_created"] = len(listing.get("items", []))
        await checkpoint("end")
        result["operator_exits"] = watchdog.exits
        if electing:
            first, last = checkpoints[0], checkpoints[-1]
            result["lease"] = {"name": f"{NAMESPACE}/{lease_name}", "holder_start": first["holder"],
                               "holder_end": last["holder"], "transitions_start": first["transitions"],
                               "transitions_end": last["transitions"],
                               "changed_hands": len({p["holder"] for p in checkpoints}) > 1
                               or first["transitions"] != last["transitions"]}
        if standby is not None:
            gauges = [p["standby_leader_gauge"] for p in checkpoints]
            activity = ACTIVITY.findall(standby.log())
            result["standby_check"] = {"replica": standby.name, "leader_gauge": gauges,
                                       "reconcile_log_lines": len(activity),
                                       "acted": any(g != 0 for g in gauges) or bool(activity)}
        sampling.cancel()
        if standby is not None:
            sampling_standby.cancel()
        probing.cancel()
        watching.cancel()
        await round_trips.api.aclose()
        result["round_trip_errors"] = sorted(set(round_trips.errors))[:5]
        for task in watches:
            task.cancel()
        return result
    finally:
        # The standby first: the leader's stop releases the Lease, and a standby still running would take it.
        for replica in reversed(watchdog.replicas):
            replica.stop()
        await api.close()


def goals(result: dict) -> dict[str, bool]:
    """Issue #12's goals (RSS, reaction p99, no 429s) and what makes a run count: every object
    reconciled, no pod, no replica exited, the Lease kept by one holder, the standby idle."""
    def p99_met(label: str) -> bool:
        return result[f"{label}_reaction_p99_s"] < REACTION_P99_GOAL_S and not result[f"{label}_reaction_unanswered"]

    met = {"all reconciled": bool(result["all_reconciled"]),
           "RSS": result["rss_max_mb"] <= RSS_GOAL_MB,
           "Rollout reaction p99": p99_met("rollout"),
           "pipeline reaction p99": p99_met("pipeline"),
           "no 429s": result["http_429"] == 0 and not result["apf_rejected"],
           "no Jobs, Deployments, Pods": not (result["jobs_created"] or result["deployments_created"]
                                              or result["pods_created"]),
           "operator never exited": not result["operator_exits"]}
    if "lease" in result:
        met["Lease never changed hands"] = not result["lease"]["changed_hands"]
    if "standby_check" in result:
        met["standby never acted"] = not result["standby_check"]["acted"]
    return met


def table(result: dict) -> str:
    met = result["goals"]

    def mark(goal: str) -> str:
        return " -- met" if met[goal] else " -- NOT MET"

    def seconds(value: float | None) -> str:
        if value is None or value != value:
            return "n/a"
        return "never" if value == float("inf") else f"{value:.3f} s"

    rows = [
        ("objects", f"{result['pipelines']} TrainingPipelines + {result['rollouts']} Rollouts (+ {result['pipelines']}"
                    " ModelVersions)"),
        ("operator RSS max / steady", f"{result['rss_max_mb']:.0f} MB / {result['rss_steady_mb']:.0f} MB "
                                      f"(goal <= {RSS_GOAL_MB} MB)" + mark("RSS")),
        ("operator CPU, steady", f"{result['cpu_seconds_per_minute']:.1f} CPU s per minute"
                                 + (f" ({result['cpu_ms_per_request']:.1f} ms per API request it makes)"
                                    if result["cpu_ms_per_request"] else "")),
        ("all reconciled (first status)", f"{seconds(result['reconcile_seconds'])} "
                                          f"({result['reconciled']}/{result['pipelines'] + result['rollouts']})"
                                          + mark("all reconciled")),
        ("reaction Rollout p50 / p99", f"{seconds(result['rollout_reaction_p50_s'])} / "
                                       f"{seconds(result['rollout_reaction_p99_s'])} "
                                       f"(n={result['samples']['rollouts']}, "
                                       f"{result['rollout_reaction_unanswered']} unanswered, "
                                       f"goal p99 < {REACTION_P99_GOAL_S} s)" + mark("Rollout reaction p99")),
        ("reaction pipeline p50 / p99", f"{seconds(result['pipeline_reaction_p50_s'])} / "
                                        f"{seconds(result['pipeline_reaction_p99_s'])} "
                                        f"(n={result['samples']['pipelines']}, "
                                        f"{result['pipeline_reaction_unanswered']} unanswered, "
                                        f"goal p99 < {REACTION_P99_GOAL_S} s)" + mark("pipeline reaction p99")),
        ("API GET round trip p50 / p99", f"{seconds(result['get_round_trip_p50_s'])} / "
                                         f"{seconds(result['get_round_trip_p99_s'])} (operator's credentials, "
                                         f"steady; 1-min load average {result['load_average_steady']:.1f} "
                                         f"on {os.cpu_count()} CPUs)"),
        ("reniced", f"{', '.join(result['reniced'])} to {result['nice']}" if result["reniced"] else "nothing"),
        ("imports hidden (not in the image)", ", ".join(result["hidden_modules"]) or "none (--keep-dev-imports)"),
        ("API requests/s, operator", f"{result['operator_requests_per_second']}"),
        ("API requests/s by verb (all)", ", ".join(f"{k} {v}" for k, v in result["requests_per_second_by_verb"].items())),
        ("top requests/s (all)", ", ".join(f"{k} {v}" for k, v in result["top_requests_per_second"].items())),
        ("API server time per request", ", ".join(f"{k} {v} ms" for k, v in result["server_ms_per_request"].items())
                                        + f"; operator's APF queue wait {result['apf_queue_ms_operator']} ms"),
        ("429s / APF rejections", f"{result['http_429']} / {result['apf_rejected'] or 0} (goal 0)"
                                  + mark("no 429s")),
        ("objects' state at the end", ", ".join(f"{k} x{v}" for k, v in sorted(result["states"].items()))),
        ("example status (r0000, p0000)", " | ".join(str(v)[:160] for v in result["example_status"].values())),
        ("Jobs / Deployments / Pods created", f"{result['jobs_created']} / {result['deployments_created']} / "
                                              f"{result['pods_created']}" + mark("no Jobs, Deployments, Pods")),
        ("operator settings", " ".join(f"{k.removeprefix('NORIA_')}={v}" for k, v in sorted(result["settings"].items()))
                              + (" (the chart's)" if result.get("chart_settings") else "")),
        ("operator exits (any phase)", (", ".join(f"{e['replica']} code {e['code']} during {e['phase']}"
                                                  for e in result["operator_exits"]) or "none")
                                       + mark("operator never exited")),
    ]
    if "lease" in result:
        lease = result["lease"]
        rows.append(("Lease holder start / end", f"{lease['holder_start']} / {lease['holder_end']}, leaseTransitions "
                                                 f"{lease['transitions_start']} / {lease['transitions_end']} "
                                                 f"({lease['name']})" + mark("Lease never changed hands")))
    if "standby_check" in result:
        check = result["standby_check"]
        rows.append(("standby replica", f"{check['replica']}: noria_operator_leader "
                                        f"{'/'.join(str(g) for g in check['leader_gauge'])} at each phase's end, "
                                        f"{check['reconcile_log_lines']} reconcile log lines, RSS max "
                                        f"{result.get('standby_rss_max_mb', float('nan')):.0f} MB"
                                        + mark("standby never acted")))
    missed = [goal for goal, ok in met.items() if not ok]
    rows.append(("goals", "all met" if not missed else f"NOT MET: {', '.join(missed)}"))
    width = max(len(r[0]) for r in rows)
    return "\n".join(f"{name:<{width}}  {value}" for name, value in rows)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--pipelines", type=int, default=100)
    parser.add_argument("--rollouts", type=int, default=100)
    parser.add_argument("--sample", type=int, default=50, help="objects of each kind whose spec is changed")
    parser.add_argument("--sample-gap", type=float, default=0.2, help="seconds between two spec changes")
    parser.add_argument("--steady", type=float, default=60.0, help="seconds of steady state measured")
    parser.add_argument("--settle", type=float, default=10.0, help="seconds after the last first status")
    parser.add_argument("--reconcile-timeout", type=float, default=900.0)
    parser.add_argument("--reaction-timeout", type=float, default=120.0)
    parser.add_argument("--json", type=Path, help="also write the figures here")
    parser.add_argument("--nice", type=int, default=0,
                        help="renice the control plane and the operator to this (e.g. -10) on a busy machine")
    parser.add_argument("--leader-election", action="store_true", help="run the operator with leader election on")
    parser.add_argument("--chart-settings", action="store_true",
                        help="run the operator with the chart's settings (worker bound, leader election and its "
                             "Lease timings, time-outs) read from charts/noria, and its replicaCount (a standby)")
    parser.add_argument("--standby", action=argparse.BooleanOptionalAction, default=None,
                        help="start a second replica that must stand by throughout (needs leader election; "
                             "default: with --chart-settings when replicaCount > 1, else no)")
    parser.add_argument("--tracemalloc", action="store_true",
                        help="run the operator under tracemalloc (memory breakdown in <workdir>/tracemalloc.txt; "
                             "its CPU and latency figures are then meaningless)")
    parser.add_argument("--keep", action="store_true", help="keep the test bed's workdir (logs)")
    parser.add_argument("--keep-dev-imports", action="store_true",
                        help=f"let the operator import {', '.join(NOT_IN_IMAGE)} (in the dev venv, not in the "
                             "operator image; Kopf imports them when present: ~70 MB more RSS)")
    args = parser.parse_args()
    if args.standby is None:
        args.standby = bool(args.chart_settings and int(chart_settings()[1].get("replicaCount", 1)) > 1)
    if args.standby and operator_settings(args)["NORIA_LEADER_ELECTION"] != "true":
        parser.error("--standby needs leader election (--leader-election or --chart-settings): both would act")
    workdir = Path(tempfile.mkdtemp(prefix="noria-scale-"))
    testbed = LocalTestbed(workdir / "testbed", keep_workdir=args.keep)
    testbed.start()
    try:
        assert testbed.node_agent is not None
        testbed.node_agent.stop()  # no pod runs: see the module docstring
        testbed.node_agent = None
        result = asyncio.run(benchmark(args, testbed, workdir))
    except OperatorGone as gone:
        print(f"ABORTED: {gone}\n{json.dumps(gone.partial, indent=2, default=str)}")
        print(f"# operator logs: {workdir}")
        if args.json:
            args.json.write_text(json.dumps({**gone.partial, "aborted": str(gone)}, indent=2, default=str))
        sys.exit(2)
    finally:
        testbed.stop()
    result["chart_settings"] = args.chart_settings
    result["goals"] = goals(result)
    print(table(result))
    print(f"# operator log and metrics: {workdir}")
    if args.json:
        args.json.write_text(json.dumps(result, indent=2, default=str))
    if not all(result["goals"].values()):
        sys.exit(1)


if __name__ == "__main__":
    main()
