"""Kopf handlers of continuous deployment: observe -> decide -> act, one pass at a time per Rollout.

Scheduling (no per-object daemon, no timer: both put a finalizer on every Rollout that blocks its
namespace's deletion while the operator is down). Watch events only wake a Rollout up
(``noria.wakeups``): its own spec or ``noria.dev/*`` annotations changing, a Deployment or server pod
labelled with its name changing, a ModelVersion it could serve changing. Each pass says when it wants
the next one (``next_pass_in``: the analysis interval, the end of a timed pause, a scale-down
deadline, the progress deadline; while something is in motion at least every
``NORIA_ROLLOUT_INTERVAL_SECONDS``), and a resync every ``NORIA_ROLLOUT_RESYNC_SECONDS`` catches the
rest. Passes of one Rollout never overlap (the deletion handler takes the same per-Rollout lock).

A pass reads the Rollout fresh from the API server, the namespace's ModelVersions from a watch-fed
copy (``mvcache``), the Rollout's Deployments (and, while some version lacks ready pods, its server
pods) by label, takes an analysis measurement from Prometheus only when one is due, calls the pure
``decide.decide`` and carries out its plan in this order, with a crash point (``failpoints``) after
each side effect:

1. consume ``noria.dev/promote`` (before acting: a promote lost to a crash is safe, a doubled one is not;
   one the step cannot act on yet, its pods not ready, stays on the Rollout for a later pass);
2. the provider's own objects (router Deployment, RBAC, Services);
3. per-version Deployments and Services at their pod counts (scale up before traffic moves);
4. traffic: weights and mirror through the provider, the preview Service;
5. scale-down deadlines stamped on replaced Deployments, then deletion of those past their deadline;
6. the Rollout's status -- the durable record of every verdict -- with a resourceVersion
   precondition: a Rollout changed since it was read (a user's edit, another writer, a deposed
   leader's stale view) fails with 409 and the pass is dropped and re-observed, never re-applied;
7. ModelVersion stages, each with its own resourceVersion precondition (decide re-derives them from
   the status on every pass, so one lost here is written by the next pass);
8. Events;
9. consume ``noria.dev/abort`` / ``noria.dev/retry`` (after status: a repeated abort is a no-op).

Steps 1-5 are idempotent (server-side apply, set-if-different), so a crash anywhere repeats them and
changes nothing. A pass that fails sets Degraded with reason ReconcileError naming the cause, with
one Warning Event on the transition; the next successful pass clears it.

Deletion: only Rollouts whose provider changes an object of the user's (``service``, ``gatewayAPI``)
carry the finalizer ``noria.dev/finalizer``; Kopf's ``on.delete`` restores the route and records a
stage-history entry on the versions the Rollout served. A router Rollout carries none (everything it
made is owned by it and garbage-collected), so deleting it never waits for the operator; its served
versions are recorded best effort from its DELETED event, and the deletion sweep (at startup and on
every resync) records any that were missed, and finalizes Rollouts being deleted that Kopf will not be
told about (their namespace was deleted while the operator was down). docs/operations/controller.md
says more.

Metrics (``deployment/metrics.py``): after each pass whose status write succeeded, the Rollout's
phase, step and weights, its new analysis measurements, promotions and aborts; reconcile duration and
errors with ``kind="Rollout"``.

Settings (env): Settings.from_env() (NORIA_SERVER_IMAGE, NORIA_STORE_ROOT, NORIA_STORE_PVC,
NORIA_PROMETHEUS_URL, ...), NORIA_ROLLOUT_INTERVAL_SECONDS (default 2), NORIA_ROLLOUT_RESYNC_SECONDS
(default 60), NORIA_ROLLOUT_CONCURRENCY (passes at once, default 16), NORIA_WATCH_NAMESPACES (the
namespaces to sweep; default the operator's --namespace arguments, else all).
"""

from __future__ import annotations

import asyncio
import dataclasses
import datetime as dt
import json
import logging
import os
import sys
import time
from collections.abc import Hashable, Mapping
from typing import Any

import kopf

from noria import conditions as c
from noria import contracts as ct
from noria import failpoints as fp
from noria import kube, mvcache, opmetrics
from noria.deployment import metrics as rollout_metrics
from noria.deployment import objects, profiles
from noria.deployment.analysis import combine, judge_check
from noria.deployment.checks import CheckContext, Observed, needs_profiles, queries_for, reduce
from noria.deployment.cluster import apply
from noria.deployment.decide import (
    ABORT,
    PROMOTE,
    RETRY,
    ArtifactRefusal,
    Measurement,
    Observation,
    Plan,
    VersionPods,
    analysis_due,
    analysis_next_at,
    analysis_target,
    decide,
    parse_time,
)
from noria.deployment.providers import make_provider
from noria.deployment.providers.router import RouterProvider, forget_service
from noria.deployment.selection import last_history
from noria.deployment.spec import CheckSpec, RolloutSpec, RolloutSpecError, parse_rollout_spec
from noria.deployment.strategies import plan_steps
from noria.prometheus import PrometheusClient, PrometheusError
from noria.settings import Settings
from noria.wakeups import Wakeups

log = logging.getLogger(__name__)

HISTORY_MAX = 100
SERVING_STAGES = frozenset({ct.CANARY, ct.SHADOW, ct.PREVIEW, ct.PRODUCTION})
ROLLOUT_KIND = "Rollout"  # the kind label of the reconcile metrics
CONFLICT_RETRY_SECONDS = 0.2  # a 409 means "re-observe": soon, not at once (the writer that won may go on)


class _State:
    def __init__(self) -> None:
        env = os.environ
        self.settings = Settings.from_env()
        self.interval = float(env.get("NORIA_ROLLOUT_INTERVAL_SECONDS", "2"))
        self.resync = float(env.get("NORIA_ROLLOUT_RESYNC_SECONDS", "60"))
        # A Rollout with nothing to serve yet changes only by events; this is its safety-net resync.
        self.idle_resync = max(self.resync, float(env.get("NORIA_ROLLOUT_IDLE_RESYNC_SECONDS", "600")))
        self.model_versions = mvcache.shared().cache  # the process's one copy, the pipelines' too
        self.wakeups = Wakeups(reconcile, self.resync, concurrency=int(env.get("NORIA_ROLLOUT_CONCURRENCY", "16")))
        self.seen: dict[Hashable, tuple[Any, ...]] = {}  # what of each Rollout last woke it (not its status)
        self.sources: dict[str, dict[str, tuple[str | None, str | None]]] = {}  # ns -> name -> (pipeline, pinned)
        self.failures: dict[Hashable, int] = {}
        self.locks: dict[Hashable, asyncio.Lock] = {}
        self.tasks: list[asyncio.Task] = []
        self.swept = False  # the deletion sweep ran once in this process (its first also lists ModelVersions)
        self._prometheus: PrometheusClient | None = None

    @property
    def prometheus(self) -> PrometheusClient:
        if self._prometheus is None:
            self._prometheus = PrometheusClient(self.settings.prometheus_url, self.settings.prometheus_timeout_seconds)
        return self._prometheus

    def lock(self, key: Hashable) -> asyncio.Lock:
        return self.locks.setdefault(key, asyncio.Lock())


_state: _State | None = None


def state() -> _State:
    global _state
    if _state is None:
        _state = _State()
    return _state


def now() -> dt.datetime:
    return dt.datetime.now(dt.UTC).replace(microsecond=0)


# --- observe ----------------------------------------------------------------------------------------
def version_pods(deployment: Mapping[str, Any]) -> VersionPods:
    meta, spec, status = deployment["metadata"], deployment.get("spec") or {}, deployment.get("status") or {}
    replicas = int(spec.get("replicas", 1))
    up_to_date = (int(status.get("observedGeneration") or 0) >= int(meta.get("generation") or 0)
                  and int(status.get("updatedReplicas") or 0) >= replicas)
    return VersionPods(
        version=(meta.get("labels") or {}).get(objects.LABEL_VERSION, ""),
        replicas=replicas,
        ready=int(status.get("readyReplicas") or 0),
        up_to_date=up_to_date or replicas == 0,
        scale_down_at=parse_time((meta.get("annotations") or {}).get(ct.ANNOTATION_SCALE_DOWN_AT)),
    )


def artifact_refusal(pod: Mapping[str, Any]) -> ArtifactRefusal | None:
    """The refusal a server pod reported, from its container's termination message (the server's
    contract: a JSON object ``{"reason": "ArtifactVerificationFailed", "kind": ..., "message": ...}``
    written to its termination-message file before it exits). The current state is read first, then
    the last one (a restarted container keeps the previous exit there); anything else a container
    leaves (a crash's log tail, no message) is not a refusal."""
    for status in (pod.get("status") or {}).get("containerStatuses") or []:
        if status.get("name") != objects.SERVER_CONTAINER:
            continue
        for where in ("state", "lastState"):
            terminated = (status.get(where) or {}).get("terminated") or {}
            try:
                said = json.loads(terminated.get("message") or "")
            except ValueError:
                continue
            if isinstance(said, dict) and said.get("reason") == c.ARTIFACT_VERIFICATION_FAILED:
                code = terminated.get("exitCode")
                return ArtifactRefusal(kind=str(said.get("kind") or "Unknown")[:128],
                                       message=str(said.get("message") or "")[:1024],
                                       exit_code=code if isinstance(code, int) else None,
                                       pod=str((pod.get("metadata") or {}).get("name") or ""))
    return None


def refusals_by_version(pods: list[Mapping[str, Any]]) -> dict[str, ArtifactRefusal]:
    out: dict[str, ArtifactRefusal] = {}
    for pod in sorted(pods, key=lambda p: (p.get("metadata") or {}).get("name") or ""):
        version = ((pod.get("metadata") or {}).get("labels") or {}).get(objects.LABEL_VERSION)
        refusal = artifact_refusal(pod)
        if version and refusal is not None and version not in out:
            out[version] = refusal
    return out


async def model_versions(namespace: str) -> dict[str, dict[str, Any]]:
    """Every ModelVersion of ``namespace`` by name: from the watch-fed copy, listed once per namespace."""
    return await mvcache.shared().get(namespace, _list_model_versions)


async def _list_model_versions(namespace: str) -> list[dict[str, Any]]:
    return await kube.list_objects(ct.API_VERSION, "ModelVersion", namespace)


async def observe(rollout: Mapping[str, Any], at: dt.datetime) -> tuple[Observation, dict[str, Any]]:
    meta = rollout["metadata"]
    ns, name = meta["namespace"], meta["name"]
    ref = objects.RolloutRef(name=name, namespace=ns, uid=meta["uid"])
    spec: RolloutSpec | None
    error = None
    try:
        spec = parse_rollout_spec(rollout.get("spec") or {})
    except RolloutSpecError as exc:
        spec, error = None, str(exc)
    mvs = await model_versions(ns)
    deployments = await kube.list_objects("apps/v1", "Deployment", ns, labels={objects.LABEL_ROLLOUT: name})
    def of(component: str) -> list[Mapping[str, Any]]:
        return [d for d in deployments if (d["metadata"].get("labels") or {}).get(objects.LABEL_COMPONENT) == component]

    pods = {p.version: p for p in map(version_pods, of(objects.COMPONENT_SERVER)) if p.version}
    # A server that refused its artifact is never ready: pods are listed only while some version
    # lacks ready pods, so a steady Rollout costs no extra request per pass.
    if any(p.ready < p.replicas for p in pods.values()):
        server_pods = await kube.list_objects("v1", "Pod", ns, labels={
            objects.LABEL_ROLLOUT: name, objects.LABEL_COMPONENT: objects.COMPONENT_SERVER})
        for version, refusal in refusals_by_version(server_pods).items():
            if version in pods:
                pods[version] = dataclasses.replace(pods[version], refusal=refusal)
    scope = state().settings.artifact_scope()
    out_of_scope = {name: found.message for name, mv in mvs.items() if (found := scope.check(mv)) is not None}
    entry_ready = spec is None or spec.provider != RouterProvider.name or any(
        int((d.get("status") or {}).get("readyReplicas") or 0) > 0 for d in of(objects.COMPONENT_ROUTER))
    annotations = meta.get("annotations") or {}
    extra: dict[str, Any] = {}
    if "promote_full" in Observation.__dataclass_fields__:  # noria.dev/promote=full (the decide side reads it)
        extra["promote_full"] = annotations.get(ct.ANNOTATION_PROMOTE) == ct.PROMOTE_FULL
    obs = Observation(
        rollout=ref, generation=int(meta.get("generation") or 0), spec=spec, spec_error=error,
        status=rollout.get("status") or {}, model_versions=mvs, pods=pods, now=at, entry_ready=entry_ready,
        promote=ct.PREFIX + PROMOTE in annotations,
        abort=ct.PREFIX + ABORT in annotations,
        retry=ct.PREFIX + RETRY in annotations,
        out_of_scope=out_of_scope, **extra,
    )
    return obs, mvs


async def _check(prom: PrometheusClient, check: CheckSpec, ctx: CheckContext) -> Observed | Exception:
    try:
        queries = queries_for(check, ctx)
        results = {}
        for part, promql in queries.items():
            results[part] = await prom.query(promql)
        return reduce(check, ctx, results)
    except PrometheusError as exc:
        return exc


async def measure(obs: Observation, prom: PrometheusClient) -> Measurement:
    spec, st = obs.spec, obs.status
    assert spec is not None
    target = analysis_target(dict(st))  # the candidate vs stable; inside a rollbackWindow, the new stable vs previous
    assert target is not None, "analysis_due says yes only when there is something to measure"
    cand, baseline = target
    pipeline = ((obs.model_versions.get(cand) or {}).get("spec") or {}).get("pipeline") or spec.pipeline or ""
    ctx = CheckContext(namespace=obs.rollout.namespace, rollout=obs.rollout.name, pipeline=pipeline, version=cand,
                       stable=baseline, window=spec.analysis.window)
    if any(needs_profiles(check) for check in spec.analysis.checks):  # drift checks: the versions' bins
        def profile_uri(version: str | None) -> str | None:
            return ((obs.model_versions.get(version or "") or {}).get("spec") or {}).get("profileUri")
        ctx = dataclasses.replace(ctx, reference=await profiles.load(state().settings, profile_uri(cand)),
                                  stable_reference=await profiles.load(state().settings, profile_uri(ctx.stable)))
    observed = await asyncio.gather(*(_check(prom, check, ctx) for check in spec.analysis.checks))
    results = tuple(judge_check(check, o) for check, o in zip(spec.analysis.checks, observed, strict=True))
    return Measurement(outcome=combine(results), results=results, at=obs.now)


# --- act --------------------------------------------------------------------------------------------
def _model_name(obs: Observation) -> str:
    st = obs.status
    for version in (st.get("stableVersion"), st.get("canaryVersion")):
        pipeline = ((obs.model_versions.get(version or "") or {}).get("spec") or {}).get("pipeline")
        if pipeline:
            return pipeline
    return (obs.spec.pipeline if obs.spec else None) or obs.rollout.name


async def _consume(rollout: Mapping[str, Any], keys: tuple[str, ...], resource_version: str | None) -> str | None:
    """Remove the annotations ``keys``, only if the Rollout is still at ``resource_version``; the
    Rollout's resourceVersion afterwards."""
    if not keys:
        return resource_version
    meta = rollout["metadata"]
    out = await kube.patch(ct.API_VERSION, "Rollout", meta["name"], meta["namespace"],
                           {"metadata": {"annotations": {ct.PREFIX + k: None for k in keys}}},
                           resource_version=resource_version)
    return (out.get("metadata") or {}).get("resourceVersion")


def stage_patch(mv: Mapping[str, Any], rollout: str, stage: str, reason: str, traffic: int,
                at: dt.datetime) -> dict[str, Any] | None:
    """The ModelVersion status patch moving ``mv`` to ``stage`` with ``traffic``: a history entry
    only when the stage changes; None when there is nothing to write."""
    status = mv.get("status") or {}
    if status.get("stage") == stage and status.get("traffic") == traffic:
        return None
    patch: dict[str, Any] = {"traffic": traffic}
    if status.get("stage") != stage:
        history = list(status.get("history") or [])
        history.append({"stage": stage, "at": c.now_iso(at), "reason": reason[:1000], "by": f"rollout/{rollout}"})
        patch.update(stage=stage, message=reason[:1000], history=history[-HISTORY_MAX:])
    return patch


async def _stage(mv: Mapping[str, Any], rollout: str, stage: str, reason: str, traffic: int,
                 at: dt.datetime) -> bool | None:
    """Write one stage change with the ModelVersion's observed resourceVersion. True: written; None:
    nothing to write; False: it changed since (its fresh copy goes into the cache, and the next pass
    decides again)."""
    patch = stage_patch(mv, rollout, stage, reason, traffic, at)
    if patch is None:
        return None
    meta = mv["metadata"]
    cache = state().model_versions
    try:
        written = await kube.patch_status(ct.API_VERSION, "ModelVersion", meta["name"], meta["namespace"], patch,
                                          resource_version=meta.get("resourceVersion"))
    except kube.Conflict:
        fresh = await kube.get(ct.API_VERSION, "ModelVersion", meta["name"], meta["namespace"])
        if fresh is not None:
            cache.put(fresh)
        log.info("rollout %s/%s: ModelVersion %s changed meanwhile; stage %s on the next pass",
                 meta["namespace"], rollout, meta["name"], stage)
        return False
    cache.put(written)
    return True


def merge_patch(old: Any, new: Any) -> Any:
    """RFC 7386 merge patch turning ``old`` into ``new``: maps are merged by the server, so a key that
    disappears (a version leaving ``weights``) must be sent as null; lists and scalars are replaced."""
    if isinstance(old, Mapping) and isinstance(new, Mapping):
        out = {k: None for k in old if k not in new}
        for k, v in new.items():
            if k not in old:
                out[k] = v
            elif old[k] != v:
                out[k] = merge_patch(old[k], v)
        return out
    return new


def status_patch(old: Mapping[str, Any], new: Mapping[str, Any]) -> dict[str, Any]:
    """The merge patch bringing ``old`` status to ``new`` (None deletes); empty when nothing changed.
    Every key decide returns is written (it starts from the whole observed status)."""
    return {k: merge_patch(old.get(k), v) for k, v in new.items() if v != old.get(k)}


@dataclasses.dataclass
class Outcome:
    """What a pass did that its scheduling depends on."""

    plan: Plan | None = None
    stale_model_versions: bool = False  # a stage write met a newer ModelVersion: pass again soon


async def act(rollout: Mapping[str, Any], obs: Observation, plan: Plan, settings: Settings,
              observed_status: Mapping[str, Any] | None = None) -> Outcome:
    """Carry out ``plan`` in the durable order (module docstring). ``kube.Conflict`` from the Rollout
    writes propagates: the caller drops the pass and re-observes."""
    # Each crash point fires only after a step that changed something: an operator started with one
    # armed runs quietly until the pass that does that step for real.
    ref, spec = obs.rollout, obs.spec
    ns = ref.namespace
    rv = rollout["metadata"].get("resourceVersion")
    if plan.consume_first:
        rv = await _consume(rollout, plan.consume_first, rv)
        fp.hit(fp.CONSUMED_FIRST)
    if spec is not None:
        provider = make_provider(ref, spec, _model_name(obs), settings)
        await provider.ensure()
        if int(obs.status.get("observedGeneration") or -1) != obs.generation:
            fp.hit(fp.PROVIDER_ENSURED)  # a new or edited spec: the provider's objects may have changed
        scaled = False
        for version, replicas in plan.replicas.items():
            mv = obs.model_versions.get(version)
            if mv is None:
                continue  # its ModelVersion is gone: keep whatever runs, we cannot describe it anew
            if version in obs.out_of_scope and version not in obs.pods:
                log.warning("rollout %s/%s: not creating %s: %s", ns, ref.name, version, obs.out_of_scope[version])
                continue  # decide never selects it; this guards the one place that starts servers
            await apply(objects.version_deployment(ref, mv, replicas, settings, spec.resources, spec.prediction_log,
                                                    spec.feedback_token, spec.store_access, spec.online_features))
            await apply(objects.version_service(ref, (mv.get("spec") or {}).get("pipeline", ""), version))
            pods = obs.pods.get(version)
            scaled = scaled or pods is None or pods.replicas != replicas
            if pods is not None and pods.scale_down_at is not None:
                await kube.patch("apps/v1", "Deployment", objects.version_object_name(ref.name, version), ns,
                                 {"metadata": {"annotations": {ct.ANNOTATION_SCALE_DOWN_AT: None}}})
                scaled = True
        if scaled:
            fp.hit(fp.REPLICAS_APPLIED)
        if plan.preview:
            pipeline = ((obs.model_versions.get(plan.preview) or {}).get("spec") or {}).get("pipeline", "")
            await apply(objects.preview_service(ref, pipeline, plan.preview))
        elif spec.strategy == "blueGreen":
            await kube.delete("v1", "Service", objects.preview_service_name(ref.name), ns)
        if plan.weights is not None:
            if await provider.set_weights(plan.weights, plan.mirror):
                log.info("rollout %s/%s: traffic %s mirror %s", ns, ref.name, plan.weights, plan.mirror)
                fp.hit(fp.TRAFFIC_SET)
        stamped = False
        for version, deadline in plan.scale_down.items():
            pods = obs.pods.get(version)
            if pods is not None and pods.scale_down_at != deadline:
                await kube.patch("apps/v1", "Deployment", objects.version_object_name(ref.name, version), ns,
                                 {"metadata": {"annotations": {ct.ANNOTATION_SCALE_DOWN_AT: c.now_iso(deadline)}}})
                stamped = True
        if stamped:
            fp.hit(fp.SCALE_DOWN_STAMPED)
        for version in plan.delete:
            await kube.delete("apps/v1", "Deployment", objects.version_object_name(ref.name, version), ns)
            await kube.delete("v1", "Service", objects.version_object_name(ref.name, version), ns)
            forget_service(ns, objects.version_object_name(ref.name, version))
        if plan.delete:
            fp.hit(fp.DELETED)
    # The verdict is durable from here on: status first, then the ModelVersions that follow from it.
    patch = status_patch(obs.status if observed_status is None else observed_status, plan.status)
    if patch:
        written = await kube.patch_status(ct.API_VERSION, "Rollout", ref.name, ns, patch, resource_version=rv)
        rv = (written.get("metadata") or {}).get("resourceVersion")
        fp.hit(fp.STATUS_WRITTEN)
    outcome = Outcome(plan=plan)
    for change in plan.stage_changes:
        mv = obs.model_versions.get(change.version)
        if mv is not None:
            written = await _stage(mv, ref.name, change.stage, change.reason, change.traffic, obs.now)
            if written is False:
                outcome.stale_model_versions = True
            elif written:
                fp.hit(fp.STAGE_WRITTEN)
    for type_, reason, message in plan.events:
        await kube.post_event(rollout, type_, reason, message)
    if plan.events:
        fp.hit(fp.EVENTS_POSTED)
    if plan.consume_last:
        await _consume(rollout, plan.consume_last, rv)
        fp.hit(fp.CONSUMED_LAST)
    return outcome


# --- scheduling -------------------------------------------------------------------------------------
def next_pass_in(obs: Observation, plan: Plan, interval: float, resync: float,
                 idle_resync: float | None = None) -> float:
    """Seconds until this Rollout's next pass, from what the plan leaves pending. Watch events wake it
    earlier; this covers what no event announces: time passing. A Rollout with no version at all (no
    stable, no candidate, no pods) waits ``idle_resync``: only an event (a ModelVersion, an edit) can
    change it, and at 1,000 of them a 60 s resync alone was 33 requests/s.

    Every time here is the one decide acts on (the analysis from ``analysis_next_at``, the progress
    deadline from ``noProgressSince``), and a time this pass already reached is no reason to pass again
    at once: decide saw it and did what it does (a first version keeps trying past its deadline, an
    analysis waits for ready pods). Counting one would schedule pass after pass at 0 s."""
    spec, st = obs.spec, plan.status
    if spec is None:
        return resync  # only an edit (an event) can fix the spec
    at = obs.now
    idle = not (obs.pods or st.get("stableVersion") or st.get("canaryVersion") or plan.scale_down)
    due: list[float] = [idle_resync if idle and idle_resync is not None else resync]

    def until(when: dt.datetime | None, extra: float = 0.0) -> None:
        if when is not None and (seconds := (when - at).total_seconds() + extra) > 0:
            due.append(seconds)

    cand = st.get("canaryVersion")
    if cand:
        # In motion: grace periods and the pods' readiness are decide's rules; passing at least every
        # interval bounds how late any of them is noticed.
        due.append(interval)
        started = parse_time(st.get("stepStartedAt"))
        steps = plan_steps(spec)
        step = steps[max(0, min(int(st.get("currentStep") or 0), len(steps) - 1))]
        if step.kind == "pause" and step.duration is not None and not spec.paused:
            until(started, step.duration)
    if not spec.paused:  # spec.paused: the step's clock and the deadline stand still
        until(parse_time(st.get("noProgressSince")), spec.progress_deadline)
    # The measurement the next pass would take, as that pass will see the status this one wrote.
    until(analysis_next_at(dataclasses.replace(obs, status=st, abort=False, measurement=None)))
    ready = c.get_condition(st.get("conditions"), c.READY)
    if (not ready or ready.get("status") != c.TRUE) and (obs.pods or st.get("stableVersion")):
        # Pods or the router are not ready yet: their events may lag a restart. A Rollout with no
        # version at all (no pods, no stable) is not polled: only an event (a ModelVersion, an edit)
        # can change it, and events wake it; polling 1,000 of them cost 50 requests/s.
        due.append(interval)
    until(parse_time(st.get("rollbackWindowEndsAt")))
    for deadline in plan.scale_down.values():
        until(deadline)
    for pods in obs.pods.values():
        until(pods.scale_down_at)
    return min(due)


# --- one pass ---------------------------------------------------------------------------------------
def cleared_reconcile_error(status: Mapping[str, Any], generation: int, at: dt.datetime) -> dict[str, Any]:
    """``status`` as decide should see it after failed passes: Reconciled back to True (this pass got
    through). Rollouts that never failed carry no Reconciled condition at all (no extra writes)."""
    reconciled = c.get_condition(status.get("conditions"), c.RECONCILED)
    if not reconciled or reconciled.get("status") == c.TRUE:
        return dict(status)
    conditions = c.set_condition(status.get("conditions"), c.RECONCILED, c.TRUE, c.RECONCILE_RECOVERED,
                                 "the last pass succeeded", generation, at)
    return {**status, "conditions": conditions}


def reconcile_error_status(status: Mapping[str, Any], error: str, generation: int,
                           at: dt.datetime) -> tuple[dict[str, Any] | None, bool]:
    """The status patch recording a failed pass (Reconciled False, ReconcileError, the cause; phase
    Degraded with the cause as its message, until a pass succeeds), and whether it is a transition --
    the one time a Warning Event goes out. None when status already says exactly this."""
    reconciled = c.get_condition(status.get("conditions"), c.RECONCILED)
    already = bool(reconciled and reconciled.get("status") == c.FALSE)
    if already and reconciled and reconciled.get("message") == error and status.get("message") == error:
        return None, False
    conditions = c.set_condition(status.get("conditions"), c.RECONCILED, c.FALSE, c.RECONCILE_ERROR, error,
                                 generation, at)
    return {"conditions": conditions, "phase": "Degraded", "message": error}, not already


async def report_error(namespace: str, name: str, exc: BaseException) -> None:
    """Put a failed pass on the Rollout (Degraded, ReconcileError, the cause) and post one Warning
    Event on the transition. Best effort: the API may be what failed."""
    error = f"reconcile failed: {kube.describe_error(exc)}"
    try:
        rollout = await kube.get(ct.API_VERSION, "Rollout", name, namespace)
        if rollout is None or rollout["metadata"].get("deletionTimestamp"):
            return
        meta = rollout["metadata"]
        patch, transition = reconcile_error_status(rollout.get("status") or {}, error,
                                                   int(meta.get("generation") or 0), now())
        if patch is None:
            return
        await kube.patch_status(ct.API_VERSION, "Rollout", name, namespace, patch,
                                resource_version=meta.get("resourceVersion"))
        rollout_metrics.set_phase(namespace, name, patch["phase"])
        if transition:
            await kube.post_event(rollout, "Warning", c.RECONCILE_ERROR, error)
    except Exception as again:  # noqa: BLE001 - the original error is logged by the caller
        log.warning("rollout %s/%s: could not record the failed pass: %s", namespace, name, again)


async def run_pass(rollout: Mapping[str, Any]) -> tuple[Outcome, Observation]:
    """One observe -> decide -> act pass over a Rollout read just now."""
    st = state()
    obs, _ = await observe(rollout, now())
    observed_status = obs.status
    obs = dataclasses.replace(obs, status=cleared_reconcile_error(obs.status, obs.generation, obs.now))
    if analysis_due(obs):
        obs = dataclasses.replace(obs, measurement=await measure(obs, st.prometheus))
    plan = decide(obs)
    outcome = await act(rollout, obs, plan, st.settings, observed_status=observed_status)
    # Only now that the status is written: a dropped pass counts nothing, its repeat counts once.
    checks = tuple(check.name for check in obs.spec.analysis.checks) if obs.spec is not None else ()
    rollout_metrics.record(obs.rollout.namespace, obs.rollout.name,
                           rollout_metrics.pass_metrics(observed_status, plan.status, checks))
    return outcome, obs


async def reconcile_once(namespace: str, name: str) -> Plan | None:
    """One pass (tests and benchmarks read the plan); None when the Rollout is gone or being deleted."""
    rollout = await kube.get(ct.API_VERSION, "Rollout", name, namespace)
    if rollout is None or rollout["metadata"].get("deletionTimestamp"):
        return None
    outcome, _ = await run_pass(rollout)
    return outcome.plan


async def reconcile(key: Hashable) -> float | None:
    """The pass of Rollout ``key`` = (namespace, name) run by the wake-ups; the delay until the next
    one, or None when the Rollout is gone (its deletion is the delete handler's)."""
    namespace, name = key  # type: ignore[misc]
    st = state()
    async with st.lock(key):
        started = time.perf_counter()
        try:
            rollout = await kube.get(ct.API_VERSION, "Rollout", name, namespace)
            if rollout is None or rollout["metadata"].get("deletionTimestamp"):
                return None
            outcome, obs = await run_pass(rollout)
        except kube.Conflict as exc:  # not an error: someone changed the Rollout, observe it again
            log.info("rollout %s/%s: %s; observing again", namespace, name, exc)
            return CONFLICT_RETRY_SECONDS
        except Exception as exc:  # noqa: BLE001 - the cause goes on the object; the pass is retried
            opmetrics.RECONCILE_ERRORS.labels(ROLLOUT_KIND).inc()
            failures = st.failures[key] = st.failures.get(key, 0) + 1
            log.exception("rollout %s/%s: pass failed (%d in a row)", namespace, name, failures)
            await report_error(namespace, name, exc)
            return min(st.interval * 2 ** min(failures, 10), max(st.resync, st.interval))
        finally:
            opmetrics.RECONCILE_DURATION.labels(ROLLOUT_KIND).observe(time.perf_counter() - started)
        st.failures.pop(key, None)
        assert outcome.plan is not None
        if outcome.stale_model_versions:
            return CONFLICT_RETRY_SECONDS
        return next_pass_in(obs, outcome.plan, st.interval, st.resync, st.idle_resync)


# --- deletion ---------------------------------------------------------------------------------------
def watched_namespaces(argv: list[str] | None = None, env: Mapping[str, str] | None = None) -> list[str] | None:
    """The namespaces this operator serves, for the deletion sweep (None: all). From
    NORIA_WATCH_NAMESPACES (comma-separated) or else the ``--namespace``/``-n`` arguments the process
    was started with: a namespaced operator must never finalize another namespace's Rollouts."""
    env = os.environ if env is None else env
    if env.get("NORIA_WATCH_NAMESPACES"):
        return [n.strip() for n in env["NORIA_WATCH_NAMESPACES"].split(",") if n.strip()]
    args = sys.argv[1:] if argv is None else argv
    found: list[str] = []
    for i, arg in enumerate(args):
        if arg in ("--namespace", "-n") and i + 1 < len(args):
            found.append(args[i + 1])
        elif arg.startswith("--namespace="):
            found.append(arg.split("=", 1)[1])
    return found or None


# Providers that change an object of the user's (gatewayAPI: the HTTPRoute's backendRefs) or may stand in
# for one (service: the entry Service): deleting their Rollout must restore it, so only they carry
# Noria's finalizer. Everything a router Rollout makes is owned by it and goes by garbage collection.
FINALIZED_PROVIDERS = frozenset({"service", "gatewayAPI"})


def needs_finalizer(spec: Mapping[str, Any], **_: Any) -> bool:
    """Kopf's filter of the finalizing delete handler: Kopf adds ``noria.dev/finalizer`` to the Rollouts
    it matches and removes it from those that no longer match (an older operator put it on every one)."""
    provider = ((spec or {}).get("traffic") or {}).get("provider") or "router"
    return provider in FINALIZED_PROVIDERS


def needs_no_finalizer(spec: Mapping[str, Any], **kwargs: Any) -> bool:
    return not needs_finalizer(spec, **kwargs)


def deleted_reason(rollout: str, role: str | None = None) -> str:
    """The history reason of a version whose Rollout was deleted (``role`` when known: the sweep only
    knows which Rollout staged it)."""
    served = f"served it as its {role}" if role else "served it"
    return f"{c.ROLLOUT_DELETED}: Rollout {rollout}, which {served}, was deleted"


async def record_deleted_stage(mv: Mapping[str, Any], rollout: str, reason: str, at: dt.datetime) -> bool:
    """Move a version a deleted Rollout served to Approved with a RolloutDeleted history entry (approved,
    serving nowhere: a Rollout created again picks it up). Conditional on the ModelVersion's
    resourceVersion; False when it changed meanwhile or there was nothing to write."""
    if (mv.get("status") or {}).get("stage") not in SERVING_STAGES:
        return False
    patch = stage_patch(mv, rollout, ct.APPROVED, reason, 0, at)
    if patch is None:
        return False
    meta = mv["metadata"]
    try:
        written = await kube.patch_status(ct.API_VERSION, "ModelVersion", meta["name"], meta["namespace"], patch,
                                          resource_version=meta.get("resourceVersion"))
    except kube.Conflict:
        log.info("ModelVersion %s/%s changed meanwhile; its RolloutDeleted entry waits for the next sweep",
                 meta["namespace"], meta["name"])
        return False
    state().model_versions.put(written)
    return True


async def record_served_versions(namespace: str, name: str, status: Mapping[str, Any]) -> None:
    """The stable version and the candidate of a deleted Rollout (its last ``status``) go to Approved."""
    at = now()
    for version, role in ((status.get("canaryVersion"), "candidate"), (status.get("stableVersion"), "stable version")):
        mv = await kube.get(ct.API_VERSION, "ModelVersion", version, namespace) if version else None
        if mv is not None:
            await record_deleted_stage(mv, name, deleted_reason(name, role), at)


async def finalize(namespace: str, name: str) -> dict[str, Any] | None:
    """Undo what a deleted Rollout did outside the objects it owns (those go by garbage collection):
    the provider restores the user's route, and the versions it served get a history entry and stage
    Approved. Idempotent. The Rollout as read, or None when it is gone."""
    rollout = await kube.get(ct.API_VERSION, "Rollout", name, namespace)
    if rollout is None:
        return None
    meta, st = rollout["metadata"], rollout.get("status") or {}
    try:
        spec: RolloutSpec | None = parse_rollout_spec(rollout.get("spec") or {})
    except RolloutSpecError:
        spec = None  # an invalid spec never reached a provider
    if spec is not None:
        ref = objects.RolloutRef(name=name, namespace=namespace, uid=meta["uid"])
        await make_provider(ref, spec, spec.pipeline or name, state().settings).finalize(st.get("stableVersion"))
    await record_served_versions(namespace, name, st)
    fp.hit(fp.FINALIZED)
    return rollout


def orphaned(mvs: list[Mapping[str, Any]], rollouts: set[str]) -> list[tuple[Mapping[str, Any], str]]:
    """ModelVersions of one namespace left in a serving stage by a Rollout that no longer exists (a
    Rollout without finalizer deleted while the operator was down, or whose DELETED event was missed):
    (ModelVersion, Rollout name). ``mvs`` must be read before ``rollouts`` is listed: a version staged
    by a Rollout names one that existed then, so one missing from the later list was deleted."""
    out = []
    for mv in mvs:
        by = str(last_history(mv).get("by") or "")
        if (mv.get("status") or {}).get("stage") in SERVING_STAGES and by.startswith("rollout/"):
            rollout = by.removeprefix("rollout/")
            if rollout not in rollouts:
                out.append((mv, rollout))
    return out


async def _model_versions_to_sweep(first: bool) -> dict[str, list[dict[str, Any]]]:
    """The ModelVersions the orphan check looks at, by namespace: on the first sweep of the process
    one LIST of the served namespaces (Rollouts deleted while it was down left no other trace); later,
    the watch-fed copies of the namespaces where it has seen Rollouts (no request while warm)."""
    st = state()
    out: dict[str, list[dict[str, Any]]] = {}
    if first:
        for namespace in watched_namespaces() or [None]:
            for mv in await _list_model_versions(namespace):  # type: ignore[arg-type]
                out.setdefault(mv["metadata"]["namespace"], []).append(mv)
        return out
    for namespace in list(st.sources):
        out[namespace] = list((await model_versions(namespace)).values())
        if not st.sources.get(namespace):
            st.sources.pop(namespace, None)  # no Rollout left there: checked once more, now dropped
    return out


async def release(rollout: Mapping[str, Any]) -> None:
    """Remove Noria's finalizer (only if the Rollout is unchanged since it was finalized)."""
    meta = rollout["metadata"]
    finalizers = list(meta.get("finalizers") or [])
    if ct.FINALIZER not in finalizers:
        return
    try:
        await kube.patch(ct.API_VERSION, "Rollout", meta["name"], meta["namespace"],
                         {"metadata": {"finalizers": [f for f in finalizers if f != ct.FINALIZER]}},
                         resource_version=meta.get("resourceVersion"))
    except kube.HTTPError as exc:
        if not kube.is_status(exc, 404):
            raise


async def sweep_deleted() -> int:
    """Finalize and release every Rollout being deleted in the served namespaces. Kopf is not told
    about them when their namespace was deleted while the operator was down, and a namespace stays
    Terminating while any of them holds the finalizer. The number released."""
    st = state()
    released = 0
    mvs = await _model_versions_to_sweep(first=not st.swept)  # before the Rollouts: see orphaned()
    names: dict[str, set[str]] = {}
    for namespace in watched_namespaces() or [None]:
        for item in await kube.list_objects(ct.API_VERSION, "Rollout", namespace):
            meta = item["metadata"]
            names.setdefault(meta["namespace"], set()).add(meta["name"])
            if not meta.get("deletionTimestamp") or ct.FINALIZER not in (meta.get("finalizers") or []):
                continue
            key = (meta["namespace"], meta["name"])
            async with st.lock(key):
                rollout = await finalize(*key)
                if rollout is not None:
                    await release(rollout)
                    released += 1
            forget(key)
            log.info("rollout %s/%s: finalized by the deletion sweep", *key)
    at = now()
    for namespace, found in mvs.items():
        for mv, rollout in orphaned(found, names.get(namespace, set())):
            if await record_deleted_stage(mv, rollout, deleted_reason(rollout), at):
                log.info("ModelVersion %s/%s: Rollout %s is gone; recorded by the deletion sweep",
                         namespace, mv["metadata"]["name"], rollout)
    st.swept = True
    return released


async def _sweep_loop() -> None:
    st = state()
    while True:
        try:
            await sweep_deleted()
        except asyncio.CancelledError:
            raise
        except Exception:  # noqa: BLE001 - the next sweep tries again
            log.exception("deletion sweep failed")
        await asyncio.sleep(st.resync)


def forget(key: Hashable) -> None:
    st = state()
    st.wakeups.forget(key)
    st.seen.pop(key, None)
    st.failures.pop(key, None)
    lock = st.locks.get(key)
    if lock is not None and not lock.locked():
        del st.locks[key]
    namespace, name = key  # type: ignore[misc]
    st.sources.get(namespace, {}).pop(name, None)
    rollout_metrics.forget(namespace, name)


# --- Kopf wiring ------------------------------------------------------------------------------------
WAKE_ANNOTATIONS = tuple(ct.PREFIX + a for a in (PROMOTE, ABORT, RETRY))


def wake_fingerprint(body: Mapping[str, Any]) -> tuple[Any, ...]:
    """What of a Rollout, when it changes, asks for a pass: its spec (generation), the user's
    annotations, its deletion. Not its status: the pass's own write must not wake it again."""
    meta = body["metadata"]
    annotations = meta.get("annotations") or {}
    return (meta.get("generation"), tuple(annotations.get(a) for a in WAKE_ANNOTATIONS),
            bool(meta.get("deletionTimestamp")))


def concerned(sources: Mapping[str, tuple[str | None, str | None]], mv: Mapping[str, Any]) -> list[str]:
    """The Rollouts (by name) a ModelVersion event concerns: those of its pipeline, or pinned to it."""
    name, pipeline = mv["metadata"]["name"], (mv.get("spec") or {}).get("pipeline")
    return sorted(r for r, (p, pinned) in sources.items() if (pipeline and p == pipeline) or pinned == name)


@kopf.on.startup()
async def start_rollouts(**_: Any) -> None:
    st = state()
    st.tasks = [asyncio.create_task(st.wakeups.run()), asyncio.create_task(_sweep_loop())]


@kopf.on.cleanup()
async def stop_rollouts(**_: Any) -> None:
    st = state()
    for task in st.tasks:
        task.cancel()
    await asyncio.gather(*st.tasks, return_exceptions=True)
    await st.wakeups.stop()
    if st._prometheus is not None:
        await st._prometheus.aclose()


@kopf.on.event(ct.GROUP, ct.VERSION, "rollouts")
async def rollout_event(event: Mapping[str, Any], body: Mapping[str, Any], **_: Any) -> None:
    st = state()
    meta = body["metadata"]
    key = (meta["namespace"], meta["name"])
    if event.get("type") == "DELETED":
        if not needs_finalizer(body.get("spec") or {}):  # finalized ones recorded this in the delete handler
            try:
                async with st.lock(key):
                    await record_served_versions(*key, body.get("status") or {})
            except Exception:  # noqa: BLE001 - best effort: the deletion sweep records what is missed here
                log.exception("rollout %s/%s: recording the versions it served failed", *key)
        forget(key)
        return
    source = (body.get("spec") or {}).get("source") or {}
    st.sources.setdefault(meta["namespace"], {})[meta["name"]] = (source.get("pipeline"), source.get("modelVersion"))
    fingerprint = wake_fingerprint(body)
    if st.seen.get(key) != fingerprint:
        st.seen[key] = fingerprint
        st.wakeups.wake(key)


@kopf.on.delete(ct.GROUP, ct.VERSION, "rollouts", id="rollout-finalize", when=needs_finalizer)
async def rollout_deleted(namespace: str, name: str, **_: Any) -> None:
    """Restore the route and record the served versions' stages before Kopf releases the finalizer
    (providers service and gatewayAPI only: ``needs_finalizer``)."""
    key = (namespace, name)
    try:
        async with state().lock(key):
            await finalize(namespace, name)
    except Exception as exc:
        raise kopf.TemporaryError(f"finalizing Rollout {namespace}/{name} failed: {kube.describe_error(exc)}",
                                  delay=5) from exc
    forget(key)


@kopf.on.delete(ct.GROUP, ct.VERSION, "rollouts", id="rollout-record-deleted", optional=True,
                when=needs_no_finalizer)
async def rollout_deleted_unfinalized(namespace: str, name: str, status: Mapping[str, Any], **_: Any) -> None:
    """A router Rollout carries no finalizer: this runs only when something else holds its deletion
    (a foreground deletion, another controller's finalizer). Best effort, as the DELETED event's record."""
    async with state().lock((namespace, name)):
        await record_served_versions(namespace, name, status or {})


@kopf.on.event("apps", "v1", "deployments", labels={objects.LABEL_ROLLOUT: kopf.PRESENT})
async def deployment_event(body: Mapping[str, Any], **_: Any) -> None:
    meta = body["metadata"]
    state().wakeups.wake((meta["namespace"], meta["labels"][objects.LABEL_ROLLOUT]), delay=0.1)


@kopf.on.event("v1", "pods", labels={objects.LABEL_ROLLOUT: kopf.PRESENT,
                                     objects.LABEL_COMPONENT: objects.COMPONENT_SERVER})
async def server_pod_event(body: Mapping[str, Any], **_: Any) -> None:
    """A server container that exited may have refused its artifact: its Deployment's status does not
    change while it restarts, so the pod's own event is what tells."""
    statuses = (body.get("status") or {}).get("containerStatuses") or []
    if any((s.get(w) or {}).get("terminated") for s in statuses for w in ("state", "lastState")):
        meta = body["metadata"]
        state().wakeups.wake((meta["namespace"], meta["labels"][objects.LABEL_ROLLOUT]), delay=0.5)


@kopf.on.event(ct.GROUP, ct.VERSION, "modelversions")
async def model_version_event(event: Mapping[str, Any], body: Mapping[str, Any], **_: Any) -> None:
    st = state()
    meta = body["metadata"]
    mvcache.shared().record(event.get("type"), body)  # before the wake-ups: the passes read the copy
    for name in concerned(st.sources.get(meta["namespace"], {}), body):
        st.wakeups.wake((meta["namespace"], name), delay=0.1)
