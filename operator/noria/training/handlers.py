"""Kopf handlers of continuous training: I/O only.

A pass gathers one frozen observation of a TrainingPipeline (fresh from the API server, not Kopf's
cached body), asks ``pipeline.decide`` what to do, and carries the plan out in the safe order that
``pipeline`` explains. Watch events only wake pipelines up (``wakeups``); the passes run one at a
time per pipeline.

What wakes a pipeline: a new pipeline, a spec change (generation) or a new ``noria.dev/retrain``
value; a Job of its own changing; a ModelVersion of its own changing; its own ``requeue_after``
(a cron tick, a cooldown's end, a ``for`` duration); and a resync every
``NORIA_TRAINING_RESYNC_SECONDS`` (default 30) for the pipelines with a Prometheus or data-source
trigger (drift, performance, newData), which change with nothing to announce it. Any other pipeline
(a cron, the initial trigger, retrain by hand) is changed only by time (its ``requeue_after``) and
by events, so it is passed again only every ``NORIA_TRAINING_IDLE_RESYNC_SECONDS`` (default 600), a
safety net for a missed watch event: at 1,000 pipelines a 30 s resync of all of them was 33 passes a
second (benchmarks/scale.py). The pipeline's own status writes do not wake it, so a pass that changes
status is not a hot loop. ModelVersions come from the watch-fed copy the Rollouts use (``mvcache``),
not a LIST per pass.

Settings (env): besides Settings (NORIA_STORE_ROOT = the store as pods see it,
NORIA_LOCAL_STORE_ROOT = the same store as this process sees it, NORIA_TRAINER_IMAGE,
NORIA_PROMETHEUS_URL, ...): NORIA_TRAINING_RESYNC_SECONDS, NORIA_TRIGGER_SETTLE_SECONDS (quiet time
of the retrain annotation before it fires, default 2), NORIA_TRAINER_BACKOFF_LIMIT (default 2: pod
retries for crashes and out-of-memory kills; see ``runs``), NORIA_TRAINER_DEADLINE_SECONDS (default
21600), NORIA_TRAINER_PULL_POLICY, NORIA_INITIAL_RETRY_SECONDS (default 60: a pipeline with no
ModelVersion retries a failed run after this long, doubling per attempt up to an hour).

A pass that fails (an API error, a quota) sets condition Reconciled=False, reason ReconcileError,
with the cause, and posts one Warning Event on that transition; the next pass that gets through
sets it True again (``pipeline.decide``).
"""

from __future__ import annotations

import asyncio
import datetime as dt
import logging
import os
import time
from collections.abc import Hashable, Mapping
from typing import Any

import kopf
from lightkube.generic_resource import create_namespaced_resource

from noria import conditions as c
from noria import failpoints as fp
from noria import kube, memtrim, metrics, mvcache, opmetrics
from noria.profile import Profile
from noria.prometheus import PrometheusClient, PrometheusError
from noria.settings import Settings
from noria.wakeups import Wakeups

from . import dask_cluster, datasource, gauges, pipeline, results, runs, triggers
from .spec import read_pipeline_spec
from .triggers import MetricObservation

log = logging.getLogger(__name__)

GROUP, VERSION = kube.GROUP, kube.VERSION
# The Dask Kubernetes operator's cluster kind, which dask runs create (dask_cluster).
DaskCluster = create_namespaced_resource(dask_cluster.GROUP, "v1", dask_cluster.KIND, dask_cluster.PLURAL)
TP, MV = "TrainingPipeline", "ModelVersion"


class _State:
    """Process-wide state of the training handlers, built at operator startup."""

    def __init__(self) -> None:
        self.settings = Settings.from_env()
        env = os.environ
        self.resync = float(env.get("NORIA_TRAINING_RESYNC_SECONDS", "30"))
        self.idle_resync = max(self.resync, float(env.get("NORIA_TRAINING_IDLE_RESYNC_SECONDS", "600")))
        self.settle = float(env.get("NORIA_TRIGGER_SETTLE_SECONDS", str(triggers.DEFAULT_SETTLE_SECONDS)))
        self.initial_retry = float(env.get("NORIA_INITIAL_RETRY_SECONDS", str(triggers.DEFAULT_INITIAL_RETRY_SECONDS)))
        self.run_settings = runs.RunSettings(
            trainer_image=self.settings.trainer_image,
            trainer_feast_image=self.settings.trainer_feast_image,
            store_root=self.settings.store_root,
            store_pvc=self.settings.store_pvc,
            store_mount_path=self.settings.store_mount_path,
            image_pull_policy=env.get("NORIA_TRAINER_PULL_POLICY", "IfNotPresent"),
            backoff_limit=int(env.get("NORIA_TRAINER_BACKOFF_LIMIT", str(runs.DEFAULT_BACKOFF_LIMIT))),
            active_deadline_seconds=int(env.get("NORIA_TRAINER_DEADLINE_SECONDS",
                                                str(runs.DEFAULT_ACTIVE_DEADLINE_SECONDS))),
            local_store_root=self.settings.local_store_root,
            trusted_data_prefixes=self.settings.trusted_data_prefixes,
            s3_endpoint=self.settings.s3_endpoint,
            s3_region=self.settings.s3_region,
        )
        self.prometheus = PrometheusClient(self.settings.prometheus_url, self.settings.prometheus_timeout_seconds)
        self.profiles: dict[str, Profile] = {}  # by URI; a profile never changes (the spec is immutable)
        self.seen: dict[Hashable, tuple[Any, Any]] = {}  # (generation, retrain annotation) per pipeline
        self.wakeups = Wakeups(reconcile, self.resync)
        self.retries: set[asyncio.Task] = set()
        self.loop_task: asyncio.Task | None = None
        self.trim_task: asyncio.Task | None = None


_state: _State | None = None


def state() -> _State:
    global _state
    if _state is None:
        _state = _State()
    return _state


# --- observation --------------------------------------------------------------------------------
async def _query(purpose: str, promql: str, keys: tuple[str, str], version: str) -> MetricObservation:
    """The counts of one version's series, tagged with that version (see MetricObservation)."""
    try:
        samples = await state().prometheus.query(promql)
    except PrometheusError as exc:
        opmetrics.PROMETHEUS_QUERY_ERRORS.labels(purpose).inc()
        return MetricObservation(error=str(exc), version=version)
    counts: dict[tuple[str, str], float] = {}
    for s in samples:
        key = (s.labels.get(keys[0], ""), s.labels.get(keys[1], ""))
        counts[key] = counts.get(key, 0.0) + s.value
    return MetricObservation(counts=counts, version=version)


def _selector(namespace: str, pipeline_name: str, version: str) -> str:
    return (f'{{namespace="{namespace}", {metrics.LABEL_MODEL}="{pipeline_name}", '
            f'{metrics.LABEL_VERSION}="{version}"}}')


def drift_query(namespace: str, pipeline_name: str, version: str, window: str) -> str:
    return (f"sum by ({metrics.LABEL_FEATURE}, {metrics.LABEL_BIN}) "
            f"(increase({metrics.FEATURE_BIN_TOTAL}{_selector(namespace, pipeline_name, version)}[{window}]))")


def performance_query(namespace: str, pipeline_name: str, version: str, window: str) -> str:
    return (f"sum by ({metrics.LABEL_ACTUAL}, {metrics.LABEL_PREDICTED}) "
            f"(increase({metrics.FEEDBACK_TOTAL}{_selector(namespace, pipeline_name, version)}[{window}]))")


async def _profile(uri: str | None) -> Profile | None:
    if not uri:
        return None
    st = state()
    if uri not in st.profiles:
        try:
            st.profiles[uri] = await asyncio.to_thread(Profile.load, st.settings.local_uri(uri))
        except (OSError, ValueError, KeyError) as exc:
            log.warning("cannot read drift profile %s: %s", uri, exc)
            return None
    return st.profiles[uri]


async def observe(tp: Mapping[str, Any], now: dt.datetime) -> pipeline.Observation:
    st = state()
    meta, spec = tp["metadata"], tp["spec"]
    ns, name = meta["namespace"], meta["name"]
    status = tp.get("status") or {}
    tspec = spec.get("triggers") or {}
    selector = {runs.LABEL_PIPELINE: name}

    all_mvs = await mvcache.shared().get(ns, _list_model_versions)
    mvs = [mv for _, mv in sorted(all_mvs.items()) if (mv.get("spec") or {}).get("pipeline") == name]
    jobs = await kube.list_objects("batch/v1", "Job", ns, selector)
    cms = await kube.list_objects("v1", "ConfigMap", ns, selector)

    job_outcome: runs.JobOutcome | None = None
    current = status.get("currentRun")
    if current:
        job = next((j for j in jobs if j["metadata"]["name"] == current.get("job", current["id"])), None)
        pods: list[dict[str, Any]] = []
        if job is not None and runs.job_outcome(job, []).state != runs.RUNNING:
            pods = await kube.list_objects("v1", "Pod", ns, {"job-name": job["metadata"]["name"]})
        job_outcome = runs.job_outcome(job, pods)

    cluster, cluster_names = await _observe_dask(tp, current)

    # The scope of spec.data.source is judged before anything reads it: the operator must not
    # count rows of another namespace's logs (or of /etc) for the newData trigger either.
    refused = st.settings.data_scope().check_data_source(tp)
    data = None
    if (tspec.get("newData") or {}).get("minNewRows"):
        if refused is not None:
            data = triggers.DataObservation(error=f"not read: {c.DATA_SOURCE_OUT_OF_SCOPE}")
        else:
            source = st.settings.local_uri(spec["data"]["source"])
            data = await asyncio.to_thread(datasource.observe, source, spec["data"].get("format", "parquet"))

    # Only the champion's own series: each server counts inputs into its own version's profile bins
    # (bin "3" of one version is another interval than bin "3" of the next), so counts of other
    # versions cannot be compared with the champion's profile.
    champion = results.champion(mvs)
    drift = performance = None
    profile = None
    if champion is not None:
        champ = champion["metadata"]["name"]
        if tspec.get("drift"):
            profile = await _profile(champion["spec"].get("profileUri"))
            window = tspec["drift"]["window"]  # the spec as read by the model (spec.py): defaulted
            drift = await _query("drift", drift_query(ns, name, champ, window),
                                 (metrics.LABEL_FEATURE, metrics.LABEL_BIN), champ)
        if tspec.get("performance"):
            window = tspec["performance"]["window"]
            performance = await _query("performance", performance_query(ns, name, champ, window),
                                       (metrics.LABEL_ACTUAL, metrics.LABEL_PREDICTED), champ)

    return pipeline.Observation(
        pipeline=tp, now=now, model_versions=mvs, job=job_outcome, data=data, drift=drift,
        performance=performance, profile=profile,
        job_names=[j["metadata"]["name"] for j in jobs], config_map_names=[m["metadata"]["name"] for m in cms],
        run_settings=st.run_settings, settle_seconds=st.settle,
        data_source_refused=refused.message if refused else None,
        initial_retry_seconds=st.initial_retry,
        dask_cluster=cluster, dask_cluster_names=cluster_names,
    )


async def _observe_dask(tp: Mapping[str, Any], current: Mapping[str, Any] | None
                        ) -> tuple[dask_cluster.ClusterObservation | None, list[str]]:
    """The current dask run's cluster (its DaskCluster, scheduler Service and scheduler pods) and the
    names of the pipeline's DaskClusters. Nothing for a single pipeline (no LIST per pass; a cluster
    left by a pipeline switched to single mid-run goes with the pipeline, its owner); a missing
    DaskCluster CRD reads as no cluster."""
    meta = tp["metadata"]
    ns, name = meta["namespace"], meta["name"]
    if not dask_cluster.is_dask(tp["spec"]):
        return None, []
    try:
        clusters = await kube.list_objects(dask_cluster.API_VERSION, dask_cluster.KIND, ns, {runs.LABEL_PIPELINE: name})
    except kube.HTTPError as exc:
        if kube.is_status(exc, 404):  # the Dask operator's CRDs are not installed
            return None, []
        raise
    names = [obj["metadata"]["name"] for obj in clusters]
    if not current:
        return None, names
    run = current["id"]
    found = next((obj for obj in clusters if obj["metadata"]["name"] == run), None)
    if found is None:
        return dask_cluster.observe(None, None, []), names
    service = await kube.get("v1", "Service", dask_cluster.scheduler_service_name(run), ns)
    pods = await kube.list_objects("v1", "Pod", ns, {dask_cluster.LABEL_CLUSTER_NAME: run,
                                                    dask_cluster.LABEL_DASK_COMPONENT: dask_cluster.DASK_SCHEDULER})
    return dask_cluster.observe(found, service, pods), names


async def _list_model_versions(namespace: str) -> list[dict[str, Any]]:
    return await kube.list_objects(kube.API_VERSION, MV, namespace)


# --- scheduling ---------------------------------------------------------------------------------
POLLED_TRIGGERS = ("drift", "performance", "newData")  # they change with no event to announce it


def next_pass_in(spec: Mapping[str, Any], requeue_after: float | None, resync: float, idle_resync: float) -> float:
    """Seconds until a pipeline's next pass: its own ``requeue_after`` (a cron tick, a cooldown, a
    running Job), bounded by the resync its triggers need. Events wake it earlier."""
    tspec = spec.get("triggers") or {}
    bound = resync if any(tspec.get(kind) for kind in POLLED_TRIGGERS) else idle_resync
    return bound if requeue_after is None else min(requeue_after, bound)


# --- one pass -----------------------------------------------------------------------------------
async def execute(tp: Mapping[str, Any], plan: pipeline.Plan, now: dt.datetime) -> str | None:
    """Carry ``plan`` out; the pipeline's resourceVersion after it (its status write moves it on).
    Every status write is conditional on the resourceVersion it was decided from: ``kube.Conflict``
    means the object changed since the pass read it (an edit, or another replica's write) and the
    pass is dropped, to be observed again; it never overwrites. A crash point (``failpoints``) follows
    every write that happened (tests/integration/test_training_crash_points.py)."""
    meta = tp["metadata"]
    ns, name = meta["namespace"], meta["name"]
    resource_version = meta.get("resourceVersion")
    # 1. Register the result before status forgets the run (AlreadyExists = registered before).
    if plan.register is not None:
        mv, created = await kube.create(plan.register)
        mvcache.shared().cache.put(mv)  # the next pass must see it, whether or not its event came yet
        if created:
            fp.hit(fp.TRAINING_VERSION_CREATED, name)
        foreign = not created and not results.same_artifact(mv, plan.register)
        if foreign:  # someone created the name first with another model: never stage theirs as ours
            message = (f"ModelVersion {mv['metadata']['name']} already exists with another artifact than run"
                       f" output {plan.register['spec']['artifact']['uri']}; it is not staged")
            log.warning("%s/%s: %s", ns, name, message)
            await kube.post_event(tp, "Warning", c.MODEL_VERSION_CONFLICT, message)
        first = None if foreign else results.initial_status(mv, now)
        if first:
            staged = await kube.patch_status(kube.API_VERSION, MV, mv["metadata"]["name"], ns, first,
                                             resource_version=mv["metadata"].get("resourceVersion"))
            mvcache.shared().cache.put(staged)
            fp.hit(fp.TRAINING_VERSION_STAGED, name)
            await kube.post_event(mv, *results.initial_stage_event(mv, first))  # approved/rejected: one Event
            fp.hit(fp.TRAINING_VERSION_EVENT, name)
        log.info("%s %s", "registered" if created else "found registered", mv["metadata"]["name"])
    # 2. Status, once, only if it changed; a new run's number is persisted here, before its Job.
    if plan.status:
        written = await kube.patch_status(kube.API_VERSION, TP, name, ns, plan.status,
                                          resource_version=resource_version)
        resource_version = written["metadata"].get("resourceVersion")
        fp.hit(fp.TRAINING_RUN_RECORDED if plan.finished else fp.TRAINING_STATUS_WRITTEN, name)
    for event in plan.events:
        await kube.post_event(tp, event.type, event.reason, event.message)
        fp.hit(fp.TRAINING_EVENTS_POSTED, name)
    # 3. The run's objects: the ConfigMap first, so the Job's pod never waits for its volume. A dask run
    # creates its DaskCluster first and its Job once the scheduler is ready (a later pass).
    if plan.dask_objects is not None:
        for obj in plan.dask_objects:
            _, created = await kube.create(obj)
            if created:
                fp.hit(fp.TRAINING_CONFIG_MAP_CREATED if obj["kind"] == "ConfigMap" else fp.TRAINING_DASK_CLUSTER_CREATED,
                       name)
    if plan.run_objects is not None:
        cm, job = plan.run_objects
        if (await kube.create(cm))[1]:
            fp.hit(fp.TRAINING_CONFIG_MAP_CREATED, name)
        if (await kube.create(job))[1]:
            fp.hit(fp.TRAINING_JOB_CREATED, name)
    # 4. History.
    for job_name in plan.prune_jobs:
        if await kube.delete("batch/v1", "Job", job_name, ns):
            fp.hit(fp.TRAINING_PRUNED, name)
    for cm_name in plan.prune_config_maps:
        if await kube.delete("v1", "ConfigMap", cm_name, ns):
            fp.hit(fp.TRAINING_PRUNED, name)
    for cluster_name in plan.delete_dask_clusters:  # a cluster lives only while its run does
        if await kube.delete(dask_cluster.API_VERSION, dask_cluster.KIND, cluster_name, ns):
            fp.hit(fp.TRAINING_DASK_CLUSTER_DELETED, name)
    return resource_version


def _count(namespace: str, name: str, plan: pipeline.Plan) -> None:
    gauges.record(namespace, name, plan.evaluations)
    for result in plan.evaluations:
        outcome = "unknown" if result.health == triggers.UNKNOWN else "fired" if result.fired else "quiet"
        opmetrics.TRIGGER_EVALUATIONS.labels(result.kind, outcome).inc()
    if plan.started:
        opmetrics.RUNS.labels(namespace, name, plan.started, "started").inc()
        # Its outcomes exist at 0 from now: increase() ignores a series' first sample, so a counter born
        # at the run's failure would never show that failure to an alert rule.
        for outcome in (pipeline.OUTCOME_SUCCEEDED, pipeline.OUTCOME_REJECTED, pipeline.OUTCOME_FAILED):
            opmetrics.RUNS.labels(namespace, name, plan.started, outcome)
    if plan.finished:
        opmetrics.RUNS.labels(namespace, name, *plan.finished).inc()


def reconcile_error_status(status: Mapping[str, Any], error: str, generation: int | None,
                           now: dt.datetime) -> tuple[dict[str, Any] | None, bool]:
    """The status patch recording a failed pass (Reconciled=False, ReconcileError, the cause) and
    whether it is a transition, the one time a Warning Event goes out; None when status already
    says exactly this. A separate condition from Degraded, so an error never overwrites a run's
    verdict."""
    reconciled = c.get_condition(status.get("conditions"), c.RECONCILED)
    already = bool(reconciled and reconciled.get("status") == c.FALSE)
    if already and reconciled and reconciled.get("message") == error:
        return None, False
    conditions = c.set_condition(status.get("conditions"), c.RECONCILED, c.FALSE, c.RECONCILE_ERROR, error,
                                 generation, now)
    return {"conditions": conditions}, not already


def reconcile_recovered_status(status: Mapping[str, Any], generation: int | None,
                               now: dt.datetime) -> dict[str, Any] | None:
    """The status patch setting Reconciled back to True once a whole pass (its writes included)
    got through after failed ones; None when it is not False. Written after the pass's own writes,
    never by ``decide``: a pass that fails on its last write must not clear the error first."""
    reconciled = c.get_condition(status.get("conditions"), c.RECONCILED)
    if not reconciled or reconciled.get("status") == c.TRUE:
        return None
    return {"conditions": c.set_condition(status.get("conditions"), c.RECONCILED, c.TRUE, c.RECONCILE_RECOVERED,
                                          "the last pass succeeded", generation, now)}


def _describe(exc: BaseException) -> str:
    """An API error's status message (what the API server said), or the exception in words."""
    response = getattr(exc, "response", None)
    if response is not None:
        try:
            body = response.json()
            return f"HTTP {response.status_code}: {body.get('message') or body}"[:1000]
        except Exception:  # noqa: BLE001 - any unreadable body: fall back to the exception
            pass
    return f"{type(exc).__name__}: {exc}"[:1000]


async def _report_error(tp: Mapping[str, Any], exc: BaseException) -> None:
    """Put a failed pass on the pipeline; best effort (the API may be what failed). Decided from a
    fresh read (the pass may have written status before it failed) and conditional on it."""
    meta = tp["metadata"]
    error = f"reconcile failed: {_describe(exc)}"
    try:
        tp = await kube.get(kube.API_VERSION, TP, meta["name"], meta["namespace"]) or tp
        meta = tp["metadata"]
        patch, transition = reconcile_error_status(tp.get("status") or {}, error, meta.get("generation"),
                                                   dt.datetime.now(dt.UTC))
        if patch is not None:
            await kube.patch_status(kube.API_VERSION, TP, meta["name"], meta["namespace"], patch,
                                    resource_version=meta.get("resourceVersion"))
            fp.hit(fp.TRAINING_ERROR_REPORTED, meta["name"])
        if transition:
            await kube.post_event(tp, "Warning", c.RECONCILE_ERROR, error)
            fp.hit(fp.TRAINING_EVENTS_POSTED, meta["name"])
    except Exception as again:  # noqa: BLE001 - the original error is raised to the caller
        log.warning("pipeline %s/%s: could not record the failed pass: %s", meta["namespace"], meta["name"], again)


CONFLICT_RETRY_SECONDS = 0.2  # a 409 means "re-observe": soon, not at once (the writer that won may go on)


async def reconcile(key: Hashable) -> float | None:
    """One pass over pipeline ``key`` = (namespace, name); the delay until the next one, or None
    when the pipeline is gone."""
    ns, name = key  # type: ignore[misc]
    started = time.perf_counter()
    tp: Mapping[str, Any] | None = None
    try:
        tp = await kube.get(kube.API_VERSION, TP, name, ns)
        if tp is None or tp["metadata"].get("deletionTimestamp"):
            gauges.forget(ns, name)
            return None
        tp = {**tp, "spec": read_pipeline_spec(tp["spec"])}  # one reader: the API model, defaults filled in
        now = dt.datetime.now(dt.UTC)
        plan = pipeline.decide(await observe(tp, now))
        resource_version = await execute(tp, plan, now)
        after = pipeline.apply_merge_patch(tp.get("status") or {}, plan.status or {})
        recovered = reconcile_recovered_status(after, tp["metadata"].get("generation"), now)
        if recovered is not None:
            await kube.patch_status(kube.API_VERSION, TP, name, ns, recovered, resource_version=resource_version)
            fp.hit(fp.TRAINING_RECOVERED, name)
        _count(ns, name, plan)
        return next_pass_in(tp["spec"], plan.requeue_after, state().resync, state().idle_resync)
    except kube.Conflict as exc:  # not an error: the pipeline or a version changed since it was read
        log.info("pipeline %s/%s: %s; observing again", ns, name, exc)
        return CONFLICT_RETRY_SECONDS
    except Exception as exc:
        opmetrics.RECONCILE_ERRORS.labels(TP).inc()
        if tp is not None:
            await _report_error(tp, exc)
        raise
    finally:
        opmetrics.RECONCILE_DURATION.labels(TP).observe(time.perf_counter() - started)


# --- Kopf wiring --------------------------------------------------------------------------------
@kopf.on.startup()
async def start_training(**_: Any) -> None:
    for noisy in ("httpx", "httpx2"):  # one INFO line per API request drowns the operator's own log
        logging.getLogger(noisy).setLevel(logging.WARNING)
    st = state()
    opmetrics.serve(st.settings.metrics_port)
    st.loop_task = asyncio.create_task(st.wakeups.run())
    st.trim_task = asyncio.create_task(memtrim.trim_forever())  # the whole process's, started once here


@kopf.on.cleanup()
async def stop_training(**_: Any) -> None:
    st = state()
    for task in (st.loop_task, st.trim_task):
        if task is not None:
            task.cancel()
    await st.wakeups.stop()
    for task in list(st.retries):
        task.cancel()
    await asyncio.gather(*st.retries, return_exceptions=True)
    await st.prometheus.aclose()


@kopf.on.event(GROUP, VERSION, "trainingpipelines")
async def pipeline_event(event: Mapping[str, Any], body: Mapping[str, Any], **_: Any) -> None:
    st = state()
    meta = body["metadata"]
    key = (meta["namespace"], meta["name"])
    if event.get("type") == "DELETED":
        st.wakeups.forget(key)
        st.seen.pop(key, None)
        return
    fingerprint = (meta.get("generation"), (meta.get("annotations") or {}).get(triggers.RETRAIN_ANNOTATION))
    if st.seen.get(key) != fingerprint:  # new, edited, or asked to retrain; our own status writes are not
        st.seen[key] = fingerprint
        st.wakeups.wake(key)


@kopf.on.event("batch", "v1", "jobs", labels={runs.LABEL_PIPELINE: kopf.PRESENT})
async def job_event(body: Mapping[str, Any], **_: Any) -> None:
    meta = body["metadata"]
    if runs.job_outcome(body, []).state != runs.RUNNING:
        state().wakeups.wake((meta["namespace"], meta["labels"][runs.LABEL_PIPELINE]))


MV_RETRY_SECONDS = (2.0, 4.0, 8.0, 16.0, 32.0)  # a failed judgement (a 429, a time-out) is tried again


@kopf.on.event(GROUP, VERSION, "modelversions")
async def model_version_event(event: Mapping[str, Any], body: Mapping[str, Any], **_: Any) -> None:
    meta, spec = body["metadata"], body.get("spec") or {}
    # The Rollout handler records it too (the copy keeps the newer of two, so twice is harmless):
    # each side's wake-up must find the event in the copy whatever order Kopf runs the two in.
    mvcache.shared().record(event.get("type"), body)
    if event.get("type") != "DELETED":
        await _judge_model_version_or_retry(body, attempt=0)
    if spec.get("pipeline"):  # the champion may have changed
        state().wakeups.wake((meta["namespace"], spec["pipeline"]), delay=0.5)


async def _judge_model_version_or_retry(body: Mapping[str, Any], attempt: int) -> None:
    """Judge a ModelVersion; a failure is retried on a fresh read (Kopf drops a failed event
    handler's work: a version would stay unregistered until its next event). benchmarks/scale.py
    lost 8 of 1,000 registrations to 429s before this. (Bounding these writes to 8 at once was
    tried: at 1,000 new versions the queue outlived the start-up by minutes and starved the passes.)"""
    st = state()
    meta = body["metadata"]
    try:
        await _judge_model_version(body)
        return
    except Exception as exc:  # noqa: BLE001 - retried below, then given up loudly
        if attempt >= len(MV_RETRY_SECONDS):
            log.error("ModelVersion %s/%s: giving up after %d tries: %s", meta["namespace"], meta["name"],
                      attempt + 1, kube.describe_error(exc))
            return
        log.warning("ModelVersion %s/%s: %s; trying again in %.0f s", meta["namespace"], meta["name"],
                    kube.describe_error(exc), MV_RETRY_SECONDS[attempt])

    async def again() -> None:
        await asyncio.sleep(MV_RETRY_SECONDS[attempt])
        fresh = await kube.get(kube.API_VERSION, MV, meta["name"], meta["namespace"])
        if fresh is not None and not fresh["metadata"].get("deletionTimestamp"):
            await _judge_model_version_or_retry(fresh, attempt + 1)

    task = asyncio.create_task(again())
    st.retries.add(task)
    task.add_done_callback(st.retries.discard)


async def _judge_model_version(body: Mapping[str, Any]) -> None:
    """Scope, registration and approval of one ModelVersion, each written once, each only onto the
    object as seen (its resourceVersion): a stage set since (an import's approval, a Rollout's
    promotion) must stand. On a conflict the newer version's own event decides again."""
    try:
        await _judge_model_version_as_seen(body)
    except kube.Conflict as exc:
        log.info("ModelVersion %s/%s: %s; its newer version decides again", body["metadata"]["namespace"],
                 body["metadata"]["name"], exc)


async def _write_model_version_status(mv: Mapping[str, Any], patch: Mapping[str, Any]) -> dict[str, Any]:
    """``patch`` onto ``mv`` as seen; the written object (the next write is conditional on it)."""
    meta = mv["metadata"]
    written = await kube.patch_status(kube.API_VERSION, MV, meta["name"], meta["namespace"], patch,
                                      resource_version=meta.get("resourceVersion"))
    mvcache.shared().cache.put(written)
    return written


async def _post_model_version_event(mv: Mapping[str, Any], type_: str, reason: str, message: str) -> None:
    await kube.post_event(dict(mv), type_, reason, message)
    fp.hit(fp.VERSION_EVENT_POSTED, mv["metadata"]["name"])


async def _judge_model_version_as_seen(body: Mapping[str, Any]) -> None:
    now = dt.datetime.now(dt.UTC)
    refused = state().settings.artifact_scope().check(body)
    scope = results.scope_status(body, refused, now)
    name = body["metadata"]["name"]
    if scope is not None:
        body = await _write_model_version_status(body, scope)
        fp.hit(fp.VERSION_SCOPE_WRITTEN, name)
        if refused is not None:
            await _post_model_version_event(body, "Warning", c.ARTIFACT_OUT_OF_SCOPE, refused.message)
    # A version created by hand (no run registered it) is Registered until a person approves it.
    registered = results.registration(body, now)
    if registered is not None:
        body = await _write_model_version_status(body, registered)
        fp.hit(fp.VERSION_REGISTRATION_WRITTEN, name)
        await _post_model_version_event(body, "Normal", c.MODEL_VERSION_REGISTERED, registered["message"])
    # An out-of-scope version is not approved: no Rollout would serve it, and the trainer must
    # never load it as a champion. The Degraded condition says why.
    patch = results.approval(body, now) if refused is None else None
    if patch is not None:
        body = await _write_model_version_status(body, patch)
        fp.hit(fp.VERSION_APPROVAL_WRITTEN, name)
        reason = c.MANUALLY_APPROVED if patch["stage"] == results.APPROVED else c.MANUALLY_REJECTED
        await _post_model_version_event(body, "Normal", reason, patch["message"])
