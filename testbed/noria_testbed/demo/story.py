"""The closed-loop story, act by act, against a real (local) cluster: the code behind
``python -m noria_testbed.demo`` and ``tests/e2e/test_closed_loop.py``.

Acts: (1) the churn pipeline trains v1, which is approved and served; users send requests and,
a little later, the truth. (2) The world changes: covariate and concept drift in the live traffic
and in the new data landing in the store; Noria notices (drift, or the F1 drop from feedback),
retrains on the new window plus labelled production traffic, gates the result against v1 and
rolls it out by canary with analysis, waiting for the feedback labels each analysis needs. (3) A
batch with corrupted labels lands and the pipeline's newData trigger retrains on it; the candidate
is refused by the gate or rolled back by the canary analysis, and users stay on the good version.
Finally the record is turned into checks, figures and a report.

The story only reads the cluster and does what the world and a platform team would do: apply the
manifests once, land data in the store, send traffic and its labels. Nobody is on call: the story
writes no annotation and never resumes, promotes or approves anything; every decision after the
``apply`` is the operator's. Every kubectl command it runs is recorded in the timeline, and a check
(``checks.no_person_acted``) fails the demo if any of them acted on a Noria object. It narrates what
it sees as it happens from a poll of the three resources every second.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import datetime as dt
import json
import multiprocessing
import os
import signal
import subprocess
import sys
import time
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import yaml
from noria.contracts import API_VERSION

from noria_testbed.binaries import REPO_ROOT
from noria_testbed.demo import checks as C
from noria_testbed.demo import dataset as D
from noria_testbed.demo import report, scoring
from noria_testbed.demo.timeline import Timeline, read_timeline
from noria_testbed.demo.traffic import ServiceTarget, TrafficGenerator
from noria_testbed.kubeapi import KubeApi
from noria_testbed.processes import free_port

EXAMPLE_DIR = REPO_ROOT / "examples" / "90-closed-loop"
POD_STORE_ROOT = "file:///var/lib/noria/store"
GROUP_PATH = f"/apis/{API_VERSION}"


class StoryError(Exception):
    """An act did not happen in time; the message says what was awaited and what was seen."""


@dataclass
class DemoConfig:
    out_dir: Path
    namespace: str = "noria-demo"
    pipeline: str = "churn"
    rollout: str = "churn"
    # Folder under <store>/datasets/; anything but the pipeline's own name rewrites spec.data.source
    # (tests sharing one store give each story its own data).
    dataset: str = "churn"
    examples: Path = EXAMPLE_DIR
    rate: float = 20.0  # prediction requests per second
    label_delay: float = 2.0  # seconds between an answer and its ground truth
    before_seconds: float = 60.0  # traffic before the drift (the pre-drift accuracy), at least
    # Answers each accuracy figure is measured on, at least (a loaded machine answers slower than
    # `rate`): 800 keeps the standard error of a difference of two accuracies near 1.5 points.
    min_answers: int = 800
    batch_delay: float = 10.0  # the drifted data lands this long after the traffic drifts
    recovered_seconds: float = 60.0  # traffic after the new version reached 100% (the recovered accuracy), at least
    after_bad_seconds: float = 15.0
    # The pipeline's spec.triggers.cooldown, if not the manifest's (3m). It must stay longer than
    # a canary (the retrain's end to its version at 100%: ~57s on the 2-core test bed), or the
    # drift trigger that fires again during the canary runs instead of being dropped. Acts 1 and 3
    # each wait one cooldown: the e2e test shortens it, the demo keeps the manifest's.
    cooldown: str | None = None
    history_rows: int = 5000
    batch_rows: int = 10000
    seed: int = 7
    act_timeout: float = 420.0
    quiet: bool = False
    # The report's backtest of the pipeline over the demo's generated world (demo/backtest.py).
    backtest: bool = True


@dataclass
class StoryResult:
    out_dir: Path
    timeline: Path
    checks: list[C.Check] = field(default_factory=list)
    facts: C.StoryFacts | None = None
    report: Path | None = None
    error: str | None = None
    kubectl_get: str = ""
    events: list[report.Event] = field(default_factory=list)
    wall: dict[str, float] = field(default_factory=dict)

    @property
    def ok(self) -> bool:
        return self.error is None and bool(self.checks) and all(c.ok for c in self.checks)


# --- narration ---------------------------------------------------------------------------------

class Narrator:
    def __init__(self, timeline: Timeline, quiet: bool = False) -> None:
        self.timeline, self.quiet = timeline, quiet
        self.t0 = time.time()

    def say(self, text: str, mark: str = " ") -> None:
        if not self.quiet:
            print(f"[{time.time() - self.t0:6.1f}s] {mark} {text}", flush=True)

    def act(self, name: str, text: str, **fields: Any) -> float:
        record = self.timeline.write("act", act=name, message=text, **fields)
        if not self.quiet:
            print(f"\n[{record['ts'] - self.t0:6.1f}s] ══ {text}", flush=True)
        return record["ts"]


# --- the operator as a process -----------------------------------------------------------------

class OperatorProcess:
    """``python -m noria`` watching the demo namespace, with the settings a Helm install would set,
    adapted to the test bed (store paths as the operator process sees them, Prometheus URL)."""

    def __init__(self, env: dict[str, str], namespace: str, log_path: Path) -> None:
        self.env, self.namespace, self.log_path = env, namespace, log_path
        self.process: subprocess.Popen[bytes] | None = None

    def start(self, timeout: float = 90.0) -> None:
        port = free_port()
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        with open(self.log_path, "ab") as log_file:
            self.process = subprocess.Popen(
                [sys.executable, "-m", "noria", "--namespace", self.namespace,
                 "--liveness", f"http://127.0.0.1:{port}/healthz"],
                env=self.env, stdout=log_file, stderr=subprocess.STDOUT, start_new_session=True)
        deadline = time.monotonic() + timeout
        while True:
            if self.process.poll() is not None:
                raise StoryError(f"the operator exited with {self.process.returncode}: see {self.log_path}")
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=2) as response:
                    if response.status == 200:
                        return
            except OSError:
                pass
            if time.monotonic() > deadline:
                raise StoryError(f"the operator was not live within {timeout:.0f}s: see {self.log_path}")
            time.sleep(0.5)

    def stop(self) -> None:
        if self.process is None or self.process.poll() is not None:
            return
        os.killpg(self.process.pid, signal.SIGTERM)
        try:
            self.process.wait(20)
        except subprocess.TimeoutExpired:
            os.killpg(self.process.pid, signal.SIGKILL)
            self.process.wait()


def operator_env(testbed: Any) -> dict[str, str]:
    return {
        **testbed.env,
        "PYTHONUNBUFFERED": "1",
        "NORIA_STORE_ROOT": POD_STORE_ROOT,
        "NORIA_LOCAL_STORE_ROOT": f"file://{testbed.store_dir}",
        "NORIA_TRAINER_IMAGE": "noria-trainer:demo",
        "NORIA_SERVER_IMAGE": "noria-server:demo",
        "NORIA_PROMETHEUS_URL": testbed.prometheus.url,
        "NORIA_PROMETHEUS_TIMEOUT": "3",
        "NORIA_METRICS_PORT": str(free_port()),
        # The test bed has no cluster DNS: routers reach versions through the ClusterIP proxy.
        "NORIA_ROUTER_BACKEND_URLS": "clusterip",
        # How often idle pipelines are re-observed (drift, feedback); the production default is 30s.
        "NORIA_TRAINING_RESYNC_SECONDS": "3",
        "NORIA_ROLLOUT_INTERVAL_SECONDS": "1",
    }


def local_uri(uri: str, store_dir: Path) -> str:
    """A store URI as pods see it, rewritten to the test bed's store directory."""
    if uri.startswith(POD_STORE_ROOT):
        return f"file://{store_dir}{uri[len(POD_STORE_ROOT):]}"
    return uri


# --- what the cluster looks like, once a second --------------------------------------------------

@dataclass
class Snapshot:
    tp: dict[str, Any] = field(default_factory=dict)
    mvs: dict[str, dict[str, Any]] = field(default_factory=dict)
    rollout: dict[str, Any] = field(default_factory=dict)
    at: float = 0.0
    router: dict[str, int] = field(default_factory=dict)  # the weights the router was given

    def mv_stage(self, name: str | None) -> str | None:
        return ((self.mvs.get(name or "") or {}).get("status") or {}).get("stage")

    @property
    def tp_status(self) -> dict[str, Any]:
        return self.tp.get("status") or {}

    @property
    def ro_status(self) -> dict[str, Any]:
        return self.rollout.get("status") or {}

    def runs(self) -> list[dict[str, Any]]:
        return list(self.tp_status.get("lastRuns") or [])


def router_weights(config_map: dict[str, Any] | None) -> dict[str, int]:
    """Weights per version in the router's ConfigMap (what actually splits the traffic)."""
    try:
        config = json.loads(((config_map or {}).get("data") or {}).get("config.json") or "{}")
    except ValueError:
        return {}
    return {str(b.get("version")): int(b.get("weight") or 0) for b in config.get("backends") or []}


def summarise(s: Snapshot) -> dict[str, Any]:
    """The part of a snapshot the story and its checks care about (recorded when it changes)."""
    tps, ros = s.tp_status, s.ro_status
    current = tps.get("currentRun") or None
    return {
        "tp": {"phase": tps.get("phase"), "currentRun": current and {k: current.get(k) for k in
                                                                      ("id", "trigger", "startedAt", "reason")},
               "lastRuns": [{k: r.get(k) for k in ("id", "trigger", "outcome", "reason", "version", "startedAt",
                                                  "finishedAt", "duration")} for r in tps.get("lastRuns") or []],
               "pending": [p.get("trigger") for p in tps.get("pendingTriggers") or []],
               "champion": tps.get("championVersion")},
        "mvs": {name: (mv.get("status") or {}).get("stage") for name, mv in sorted(s.mvs.items())},
        "rollout": {"phase": ros.get("phase"), "stable": ros.get("stableVersion"), "canary": ros.get("canaryVersion"),
                    "step": ros.get("currentStep"), "weights": ros.get("weights") or {},
                    "analysis": ((ros.get("analysis") or {}).get("last") or {}).get("outcome"),
                    "router": s.router},
    }


class Observer:
    """Polls the pipeline, its ModelVersions and the Rollout; records and narrates each change."""

    def __init__(self, api: KubeApi, cfg: DemoConfig, timeline: Timeline, narrator: Narrator) -> None:
        self.api, self.cfg, self.timeline, self.say = api, cfg, timeline, narrator.say
        self.latest = Snapshot()
        self._last_summary: dict[str, Any] | None = None
        self._last_drift: tuple[Any, Any] | None = None
        self._stop = asyncio.Event()
        self.changed = asyncio.Event()

    def _ns(self, plural: str, name: str = "") -> str:
        return f"{GROUP_PATH}/namespaces/{self.cfg.namespace}/{plural}" + (f"/{name}" if name else "")

    async def poll(self) -> Snapshot:
        tp = await self.api.get(self._ns("trainingpipelines", self.cfg.pipeline)) or {}
        mv_list = await self.api.get(self._ns("modelversions")) or {}
        rollout = await self.api.get(self._ns("rollouts", self.cfg.rollout)) or {}
        mvs = {mv["metadata"]["name"]: mv for mv in mv_list.get("items") or []}
        router = await self.api.get(f"/api/v1/namespaces/{self.cfg.namespace}/configmaps/{self.cfg.rollout}-router")
        return Snapshot(tp, mvs, rollout, time.time(), router_weights(router))

    async def run(self) -> None:
        while not self._stop.is_set():
            try:
                snapshot = await self.poll()
            except Exception as exc:  # an API hiccup must not end the story; the next poll retries
                self.say(f"(could not read the cluster: {type(exc).__name__}: {exc})", "!")
            else:
                self._record(snapshot)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._stop.wait(), 1.0)

    def stop(self) -> None:
        self._stop.set()

    def _record(self, s: Snapshot) -> None:
        previous, self.latest = self.latest, s
        summary = summarise(s)
        drift = (s.tp_status.get("triggers") or {}).get("drift") or {}
        perf = (s.tp_status.get("triggers") or {}).get("performance") or {}
        if drift.get("value") is not None and (drift.get("value"), drift.get("observedAt")) != self._last_drift:
            self._last_drift = (drift.get("value"), drift.get("observedAt"))
            self.timeline.write("observation", what="drift", value=drift.get("value"), feature=drift.get("feature"),
                                threshold=drift.get("threshold"), state=drift.get("state"), champion=drift.get("champion"))
        if perf.get("value") is not None:
            self.timeline.write("observation", what="performance", value=perf.get("value"), state=perf.get("state"))
        if summary != self._last_summary:
            self.timeline.write("observation", what="state", **summary)
            self.timeline.write("observation", what="weights", weights=s.router)
            self._narrate(previous, s, self._last_summary or summarise(Snapshot()), summary)
            self._last_summary = summary
            self.changed.set()

    def _narrate(self, before: Snapshot, after: Snapshot, old: dict[str, Any], new: dict[str, Any]) -> None:
        cur_old, cur_new = old["tp"]["currentRun"], new["tp"]["currentRun"]
        if cur_new and (not cur_old or cur_old["id"] != cur_new["id"]):
            self.say(f"training run {cur_new['id']} started, trigger {cur_new['trigger']}: {cur_new.get('reason') or ''}",
                     "▶")
        known = {r["id"] for r in old["tp"]["lastRuns"]}
        for run in after.runs():
            if run.get("id") not in known:
                self.say(f"run {run.get('id')} {run.get('outcome')} in {run.get('duration')}"
                         f"{' -> ' + run['version'] if run.get('version') else ''}: {run.get('message') or ''}", "■")
        for p in set(new["tp"]["pending"]) - set(old["tp"]["pending"]):
            self.say(f"trigger {p} fired while a run or the cooldown was going: coalesced into one pending run", "…")
        for name, stage in new["mvs"].items():
            if old["mvs"].get(name) != stage:
                history = ((after.mvs[name].get("status") or {}).get("history") or [{}])[-1]
                metric = ((after.mvs[name].get("status") or {}).get("metric")) or ""
                self.say(f"ModelVersion {name}: {old['mvs'].get(name) or 'new'} -> {stage}"
                         f"{' (' + metric + ')' if metric else ''}"
                         f"{' — ' + str(history.get('reason')) if history.get('reason') else ''}", "◆")
        ro_old, ro_new = old["rollout"], new["rollout"]
        if ro_new["router"] != ro_old["router"]:
            text = " · ".join(f"{v} {w}%" for v, w in sorted(ro_new["router"].items()))
            self.say(f"router weights: {text}", "⇄")
        if ro_new["phase"] != ro_old["phase"]:
            message = after.ro_status.get("message") or ""
            self.say(f"Rollout {self.cfg.rollout}: {ro_old['phase']} -> {ro_new['phase']} {message}", "◆")
        if ro_new["analysis"] != ro_old["analysis"] and ro_new["analysis"]:
            last = ((after.ro_status.get("analysis") or {}).get("last") or {})
            marks = {"Successful": "✓", "Waiting": "…"}  # waiting for labels is not a failure
            self.say(f"analysis: {last.get('outcome')} — {last.get('message') or ''}",
                     marks.get(last.get("outcome") or "", "✗"))

    async def until(self, what: str, predicate: Callable[[Snapshot], Any], timeout: float) -> Any:
        """Wait until ``predicate(latest snapshot)`` is truthy; return its value."""
        deadline = time.monotonic() + timeout
        while True:
            value = predicate(self.latest)
            if value:
                return value
            if time.monotonic() > deadline:
                raise StoryError(f"timed out after {timeout:.0f}s waiting for {what}; last seen: "
                                 f"{json.dumps(summarise(self.latest))[:1500]}")
            self.changed.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.changed.wait(), 1.0)


# --- the story -----------------------------------------------------------------------------------

class Story:
    def __init__(self, testbed: Any, cfg: DemoConfig) -> None:
        self.tb, self.cfg = testbed, cfg
        cfg.out_dir.mkdir(parents=True, exist_ok=True)
        self.timeline_path = cfg.out_dir / "timeline.jsonl"
        self.timeline = Timeline(self.timeline_path)
        self.narrator = Narrator(self.timeline, cfg.quiet)
        self.say = self.narrator.say
        self.rng = np.random.default_rng(cfg.seed)
        self.result = StoryResult(cfg.out_dir, self.timeline_path)
        self.operator: OperatorProcess | None = None
        self.traffic: TrafficGenerator | None = None
        self._next_id = 0
        self._ticker_task: asyncio.Task[None] | None = None
        self._replay: concurrent.futures.Future[dict[str, Any]] | None = None
        self._replay_began = 0.0

    # -- user actions --
    def kubectl(self, *args: str, input: str | None = None) -> str:  # noqa: A002 - subprocess's name
        """Run kubectl as the story's user, recorded in the timeline (``checks.no_person_acted`` reads it)."""
        self.timeline.write(C.KIND_COMMAND, args=["kubectl", *args])
        return self.tb.kubectl(*args, input=input).stdout

    def land_batch(self, name: str, world: D.World, rows: int, start: dt.datetime, end: dt.datetime,
                   corrupt: bool = False) -> Path:
        frame = D.generate(rows, world, self.rng, start, end, id_offset=self._next_id)
        self._next_id += rows
        if corrupt:
            frame = D.corrupt_labels(frame)
        return D.write_partition(self.tb.store_dir, self.cfg.dataset, frame, name)

    async def run(self) -> StoryResult:
        began = time.monotonic()
        api = KubeApi(self.tb.kubeconfig)
        observer = Observer(api, self.cfg, self.timeline, self.narrator)
        watch: asyncio.Task[None] | None = None
        traffic_task: asyncio.Task[None] | None = None
        try:
            self.setup()
            watch = asyncio.create_task(observer.run())
            traffic_task = await self.act_v1(observer, api)
            await self.act_drift(observer)
            await self.act_bad_batch(observer)
        except StoryError as exc:
            self.result.error = str(exc)
            self.say(f"the story stopped: {exc}", "✗")
        finally:
            if self._ticker_task is not None:
                self._ticker_task.cancel()
            if self.traffic is not None:
                self.traffic.stop()
            if traffic_task is not None:
                with contextlib.suppress(Exception):
                    await asyncio.wait_for(traffic_task, 30)
            observer.stop()
            if watch is not None:
                await asyncio.gather(watch, return_exceptions=True)
            try:
                final = await observer.poll()
                await self.finale(final, api)
            finally:
                await api.close()
                self.timeline.close()
                if self.operator is not None:
                    self.operator.stop()
        self.result.wall["story_s"] = time.monotonic() - began
        return self.result

    def setup(self) -> None:
        cfg = self.cfg
        self.narrator.act("setup", f"Setting the scene in namespace {cfg.namespace}")
        self.kubectl("create", "namespace", cfg.namespace)
        self._wait_service_account()
        self.kubectl("apply", "-n", cfg.namespace, "-f", str(cfg.examples / "store.yaml"))
        now = dt.datetime.now(dt.UTC)
        path = self.land_batch("part-0001-history", D.REFERENCE_WORLD, cfg.history_rows,
                               now - dt.timedelta(days=90), now - dt.timedelta(seconds=1))
        self.say(f"{cfg.history_rows} labelled customers of the last 90 days written to {path}", "•")
        self.operator = OperatorProcess(operator_env(self.tb), cfg.namespace, cfg.out_dir / "operator.log")
        self.operator.start()
        self.say(f"the Noria operator is running (python -m noria); log: {self.operator.log_path}", "•")

    def _wait_service_account(self) -> None:
        deadline = time.monotonic() + 60
        while self.tb.kubectl("get", "serviceaccount", "default", "-n", self.cfg.namespace, check=False).returncode:
            if time.monotonic() > deadline:
                raise StoryError(f"no default ServiceAccount in {self.cfg.namespace} after 60s")
            time.sleep(0.5)

    async def act_v1(self, observer: Observer, api: KubeApi) -> asyncio.Task[None]:
        cfg = self.cfg
        self.narrator.act("v1", "Act 1 — a churn model is trained, approved and served")
        pipeline = yaml.safe_load((cfg.examples / "pipeline.yaml").read_text())
        if cfg.dataset != pipeline["metadata"]["name"]:
            pipeline["spec"]["data"]["source"] = f"{POD_STORE_ROOT}/datasets/{cfg.dataset}/"
        if cfg.cooldown is not None:
            pipeline["spec"]["triggers"]["cooldown"] = cfg.cooldown
        self.kubectl("apply", "--server-side", "-n", cfg.namespace, "-f", "-", input=yaml.safe_dump(pipeline))
        self.kubectl("apply", "--server-side", "-n", cfg.namespace, "-f", str(cfg.examples / "rollout.yaml"))
        self.say("applied TrainingPipeline churn and Rollout churn (examples/90-closed-loop)", "•")
        v1 = await observer.until("the first ModelVersion to serve 100% of traffic", lambda s: next(
            (name for name, w in (s.ro_status.get("weights") or {}).items()
             if w == 100 and s.mv_stage(name) == "Production" and s.ro_status.get("stableVersion") == name), None),
            cfg.act_timeout)
        target = ServiceTarget(api, cfg.namespace, cfg.rollout)
        deadline = time.monotonic() + 60
        while not await target.base_urls():
            if time.monotonic() > deadline:
                raise StoryError(f"Service {cfg.rollout} has no ready endpoint 60s after {v1} went to Production")
            await asyncio.sleep(1)
        self.say(f"{v1} serves 100% behind Service {cfg.rollout} ({(await target.base_urls())[0]})", "✓")
        self._start_backtest()  # while the story waits out the cooldown below
        # The first run's cooldown holds any retrain until it ends. Users arrive `before_seconds`
        # before that, so the pre-drift traffic is a baseline, not hours of old-world feedback that
        # the retrain would learn from (the trainer merges all labelled traffic, whatever the window).
        until = C.parse_time(observer.latest.tp_status.get("cooldownUntil"))
        if until is not None and until - cfg.before_seconds > time.time():
            wait = until - cfg.before_seconds - time.time()
            self.say(f"the pipeline cools down for {wait + cfg.before_seconds:.0f}s after its first run; "
                     f"users arrive in {wait:.0f}s", "…")
            await asyncio.sleep(wait)
        self.traffic = TrafficGenerator(target, cfg.pipeline, self.timeline, rate=cfg.rate,
                                        label_delay=cfg.label_delay, world=D.REFERENCE_WORLD,
                                        phase=C.PHASE_BEFORE, seed=cfg.seed)
        task = asyncio.create_task(self.traffic.run())
        self._ticker_task = asyncio.create_task(self._ticker())
        self.say(f"users send {cfg.rate:g} predictions/s; each true outcome follows {cfg.label_delay:g}s later "
                 "as feedback", "•")
        await self._answers_for(C.PHASE_BEFORE, cfg.before_seconds, observer)
        return task

    async def _traffic_for(self, seconds: float) -> None:
        await asyncio.sleep(seconds)

    async def _answers_for(self, phase: str, seconds: float, observer: Observer | None = None) -> None:
        """Let traffic flow for at least ``seconds`` and ``min_answers`` labelled answers in ``phase``;
        with ``observer``, also until the pipeline's cooldown is over (so the change that follows
        is acted on as soon as it is seen, not when the cooldown of the first run ends)."""
        assert self.traffic is not None
        began = time.monotonic()
        said = False
        while True:
            answered = self.traffic.answered.get(phase, 0)
            cooling = False
            if observer is not None:
                until = C.parse_time(observer.latest.tp_status.get("cooldownUntil"))
                cooling = until is not None and until > time.time()
            if time.monotonic() - began >= seconds and answered >= self.cfg.min_answers and not cooling:
                return
            if cooling and not said and time.monotonic() - began >= seconds:
                self.say("waiting for the pipeline's cooldown to end before the world changes", "…")
                said = True
            if time.monotonic() - began > self.cfg.act_timeout:
                raise StoryError(f"only {answered} answers in phase {phase} after {self.cfg.act_timeout:.0f}s")
            await asyncio.sleep(1.0)

    async def _ticker(self, every: float = 15.0) -> None:
        """While traffic flows, say every ``every`` seconds how the answers went."""
        while True:
            await asyncio.sleep(every)
            if self.traffic is None:
                continue
            frame = self.traffic.recent_frame(every)
            s = scoring.score(frame["label"], frame["prediction"])
            versions = ", ".join(f"{v} {n}" for v, n in sorted(frame["version"].value_counts().items()))
            failed = int((frame["status"] != 200).sum())
            self.say(f"last {every:.0f}s: {s.text()}; answered by {versions or 'nobody'}; {failed} failed", "~")

    async def act_drift(self, observer: Observer) -> None:
        cfg = self.cfg
        assert self.traffic is not None
        drift_at = self.narrator.act(C.ACT_DRIFT, "Act 2 — the world changes: a competitor's cheap unlimited-data "
                                     "plan (covariate + concept drift)")
        self.traffic.world = D.DRIFTED_WORLD
        self.traffic.phase = C.PHASE_DRIFTED
        self.say("live traffic now comes from the changed world: higher prices, heavier data use, younger, "
                 "more month-to-month — and different reasons to churn", "•")
        await self._traffic_for(cfg.batch_delay)
        start = dt.datetime.fromtimestamp(drift_at, dt.UTC)
        path = self.land_batch("part-0002-after-change", D.DRIFTED_WORLD, cfg.batch_rows, start,
                               dt.datetime.now(dt.UTC))
        self.say(f"{cfg.batch_rows} newly labelled customers since the change landed in {path}", "•")
        run = await observer.until("a drift- or performance-triggered training run", lambda s: next(
            (r for r in ([s.tp_status.get("currentRun")] + s.runs()) if r and r.get("trigger") in C.RETRAIN_TRIGGERS
             and (C.parse_time(r.get("startedAt")) or 0) >= drift_at - 1), None), cfg.act_timeout)
        run_id = run["id"]
        finished = await observer.until(f"run {run_id} to finish", lambda s: next(
            (r for r in s.runs() if r.get("id") == run_id), None), cfg.act_timeout)
        if finished.get("outcome") != "Succeeded":
            raise StoryError(f"the retrain {run_id} did not produce an approved model: {finished}")
        # Drift against v1 persists while the new version trains and rolls out, so the operator may
        # queue a follow-up run (coalesced: at most one at a time). Wait until Noria has settled: a
        # version trained after the change serves everything and nothing is running or pending.
        v2 = await observer.until("a version trained after the change to serve 100% with the pipeline idle",
                                  lambda s: self._settled_after(s, drift_at), cfg.act_timeout * 2)
        self.narrator.act("recovered", f"{v2} serves all users; measuring the recovered accuracy", version=v2)
        # Answers from here on, by the recovered version, are what "accuracy after recovery" is
        # measured on; the next act starts at once (its run waits for the pipeline's cooldown).
        self.traffic.phase = C.PHASE_RECOVERED

    @staticmethod
    def _settled_after(s: Snapshot, since: float) -> str | None:
        """The stable version if it was trained by a run started after ``since``, serves 100%, no
        canary is going and the pipeline has no run in progress (a pending one may wait for the
        cooldown: the next act's data will be what it trains on)."""
        stable = s.ro_status.get("stableVersion")
        run = next((r for r in s.runs() if r.get("version") == stable), None)
        if not stable or run is None or (C.parse_time(run.get("startedAt")) or 0) < since - 1:
            return None
        if (s.ro_status.get("weights") or {}).get(stable) != 100 or s.ro_status.get("canaryVersion"):
            return None
        if s.tp_status.get("currentRun") or s.mv_stage(stable) != "Production":
            return None
        return stable

    async def act_bad_batch(self, observer: Observer) -> None:
        cfg = self.cfg
        assert self.traffic is not None
        bad_at = self.narrator.act(C.ACT_BAD_BATCH, "Act 3 — an ETL bug: a batch lands with every label inverted")
        start = dt.datetime.fromtimestamp(bad_at, dt.UTC)
        path = self.land_batch("part-0003-corrupted", D.DRIFTED_WORLD, cfg.batch_rows, start,
                               start + dt.timedelta(seconds=1), corrupt=True)
        self.say(f"{cfg.batch_rows} customers with inverted churn labels written to {path}; with the batch of "
                 "act 2 that is enough new rows for the pipeline's newData trigger (after its cooldown)", "•")
        run = await observer.until("the retrain on the corrupted batch", lambda s: next(
            (r for r in ([s.tp_status.get("currentRun")] + s.runs()) if r and C.is_bad_batch_run(r, bad_at)), None),
            cfg.act_timeout)
        run_id = run["id"]
        finished = await observer.until(f"run {run_id} to finish", lambda s: next(
            (r for r in s.runs() if r.get("id") == run_id), None), cfg.act_timeout)
        candidate = finished.get("version")
        if finished.get("outcome") == "Succeeded" and candidate:
            self.say(f"{candidate} passed the gate (its holdout has the same corrupted labels); the canary "
                     "analysis on real feedback has to catch it", "!")
            await observer.until(f"{candidate} to be rejected or promoted", lambda s: (
                s.mv_stage(candidate) in ("Rejected", "Production", "Retired")
                and s.ro_status.get("canaryVersion") in (None, "")), cfg.act_timeout)
        else:
            self.say(f"run {run_id} ended {finished.get('outcome')}: {finished.get('message') or ''}", "✓")
        await self._traffic_for(cfg.after_bad_seconds)
        await self._answers_for(C.PHASE_RECOVERED, cfg.recovered_seconds)

    async def finale(self, final: Snapshot, api: KubeApi) -> None:
        cfg = self.cfg
        self.narrator.act("finale", "The record")
        self.timeline.write("observation", what="weights", weights=final.router)
        self.result.kubectl_get = self.tb.kubectl("get", "tp,mv,mro", "-n", cfg.namespace, check=False).stdout
        k8s_events = (await api.get(f"/api/v1/namespaces/{cfg.namespace}/events") or {}).get("items") or []
        self.result.events = report.events_from_objects(final.tp, final.mvs, final.rollout, k8s_events)
        # The objects as they ended, next to the timeline: the checks can be re-run from the two.
        (cfg.out_dir / "objects.json").write_text(json.dumps(
            {"trainingPipeline": final.tp, "modelVersions": final.mvs, "rollout": final.rollout,
             "events": k8s_events}, indent=1, default=str))
        records = list(read_timeline(self.timeline_path))
        counterfactual = profile = None
        facts = C.find_facts(records, final.tp, final.mvs, final.rollout)
        v1 = final.mvs.get(facts.v1 or "")
        if v1:
            spec = v1["spec"]
            try:
                counterfactual = scoring.load_model(local_uri(spec["artifact"]["uri"], self.tb.store_dir),
                                                    spec["artifact"]["digest"])
                if spec.get("profileUri"):
                    from noria.profile import Profile

                    profile = Profile.load(local_uri(spec["profileUri"], self.tb.store_dir))
            except Exception as exc:
                self.say(f"cannot load {facts.v1} for the counterfactual: {exc}", "!")
        frame = C.scoring_frame(records)
        cf_predictions = (pd.Series(scoring.predict_rows(counterfactual, frame))
                          if counterfactual is not None and not frame.empty else None)
        checks, facts = C.evaluate(records, final.tp, final.mvs, final.rollout, cf_predictions, k8s_events)
        self.result.checks, self.result.facts = checks, facts
        drift_spec = ((final.tp.get("spec") or {}).get("triggers") or {}).get("drift") or {}
        summary = {name.replace("_", " "): (f"{value:.3f}" if isinstance(value, float) else "n/a")
                   for name, value in facts.figures.items()}
        summary["story"] = "all checks held" if self.result.ok else (self.result.error or "some checks failed")
        replayed, replay_error = await self._backtest() if cfg.backtest else (None, None)
        try:
            self.result.report = report.write_report(cfg.out_dir, report.ReportInput(
                timeline=self.timeline_path, events=self.result.events, counterfactual_model=counterfactual,
                counterfactual_name=facts.v1 or "v1", reference_profile=profile,
                drift_threshold=float(drift_spec["threshold"]) if drift_spec.get("threshold") else None,
                summary=summary, title="Noria closed loop: churn under drift", backtest=replayed,
                backtest_error=replay_error))
        except ValueError as exc:
            self.say(f"no report: {exc}", "!")

    def _start_backtest(self) -> None:
        """Start ``noria backtest`` of the demo's pipeline over the demo's world, for the report, in a
        process of its own: it depends on the config only, not on what the cluster did, so it runs
        while the story waits (the first run's cooldown) instead of after it (~40s of one core)."""
        if not self.cfg.backtest or self._replay is not None:
            return
        from noria_testbed.demo import backtest

        cfg = self.cfg
        self.say("replaying the pipeline over the demo's world (noria backtest) for the report, "
                 "in the background ...", "…")
        replay = backtest.DemoReplay(history_rows=cfg.history_rows, batch_rows=cfg.batch_rows, rate=cfg.rate,
                                     label_delay=cfg.label_delay, seed=cfg.seed)
        # spawn, not fork: this process runs threads (the event loop's, pytest's)
        pool = concurrent.futures.ProcessPoolExecutor(1, mp_context=multiprocessing.get_context("spawn"))
        self._replay_began = time.monotonic()
        self._replay = pool.submit(backtest.run, cfg.examples / "pipeline.yaml", cfg.out_dir / "backtest", replay)
        pool.shutdown(wait=False)  # the worker exits once the job is done

    async def _backtest(self) -> tuple[dict[str, Any] | None, str | None]:
        """The backtest started by ``_start_backtest`` (started here if the story ended before it)."""
        self._start_backtest()
        assert self._replay is not None
        try:
            record = await asyncio.wrap_future(self._replay)
        except Exception as exc:  # the story's own checks stand; the report says why the backtest is missing
            self.say(f"no backtest: {type(exc).__name__}: {exc}", "!")
            return None, f"{type(exc).__name__}: {exc}"
        for name, policy in record["policies"].items():
            s = policy["summary"]
            self.say(f"backtest, {name}: served {s['metric']} {s['served']} with {s['runs']} run(s)", "•")
        self.result.wall["backtest_s"] = time.monotonic() - self._replay_began  # its start to the finale
        return record, None
