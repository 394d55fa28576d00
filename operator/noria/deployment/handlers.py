"""Kopf handlers of continuous deployment: observe → decide → act, once per pass, per Rollout.

Each Rollout gets one Kopf daemon that runs a pass every ``NORIA_ROLLOUT_INTERVAL_SECONDS``
(default 2). A daemon (not a timer) because Kopf reports every timer run as a Kubernetes Event;
the wait between passes is the daemon's ``stopped.wait``, so stopping the operator is immediate.
A pass reads everything fresh from the API server (the Rollout, the namespace's ModelVersions,
the Rollout's Deployments and their server pods), takes an analysis measurement from Prometheus only when one is due,
calls the pure ``decide.decide`` and carries out its plan in the safe order:

1. consume ``noria.dev/promote`` (before acting: a promote lost to a crash is safe, a doubled one is not);
2. the provider's own objects (router Deployment, RBAC, Services);
3. per-version Deployments and Services at their pod counts (scale up before traffic moves);
4. traffic: weights and mirror through the provider, the preview Service;
5. scale-down deadlines stamped on replaced Deployments, and deletion of those past their deadline;
6. ModelVersion stages and history; Events;
7. the Rollout's status, written once and only when it changed;
8. consume ``noria.dev/abort`` / ``noria.dev/retry`` (after status: a repeated abort is a no-op).

Settings (env): Settings.from_env() (NORIA_SERVER_IMAGE, NORIA_STORE_ROOT, NORIA_STORE_PVC,
NORIA_PROMETHEUS_URL, ...), NORIA_ROLLOUT_INTERVAL_SECONDS.
"""

from __future__ import annotations

import asyncio
import dataclasses
import datetime as dt
import json
import logging
import os
from collections.abc import Mapping
from typing import Any

import kopf

from noria import conditions as c
from noria import kube
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
    decide,
    parse_time,
)
from noria.deployment.providers import make_provider
from noria.deployment.providers.router import RouterProvider, forget_service
from noria.deployment.spec import CheckSpec, RolloutSpec, RolloutSpecError, parse_rollout_spec
from noria.prometheus import PrometheusClient, PrometheusError
from noria.settings import Settings

log = logging.getLogger(__name__)

GROUP, VERSION, API_VERSION = kube.GROUP, kube.VERSION, kube.API_VERSION
ANNOTATION_PREFIX = "noria.dev/"
SCALE_DOWN_ANNOTATION = "noria.dev/scale-down-at"
STATUS_KEYS = ("phase", "message", "stableVersion", "canaryVersion", "currentStep", "stepStartedAt", "canaryWeight",
               "weights", "analysis", "conditions", "observedGeneration")
HISTORY_MAX = 100


class _State:
    def __init__(self) -> None:
        self.settings = Settings.from_env()
        self.interval = float(os.environ.get("NORIA_ROLLOUT_INTERVAL_SECONDS", "2"))
        self._prometheus: PrometheusClient | None = None

    @property
    def prometheus(self) -> PrometheusClient:
        if self._prometheus is None:
            self._prometheus = PrometheusClient(self.settings.prometheus_url, self.settings.prometheus_timeout_seconds)
        return self._prometheus


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
        scale_down_at=parse_time((meta.get("annotations") or {}).get(SCALE_DOWN_ANNOTATION)),
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
    mvs = {mv["metadata"]["name"]: mv for mv in await kube.list_objects(API_VERSION, "ModelVersion", ns)}
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
    obs = Observation(
        rollout=ref, generation=int(meta.get("generation") or 0), spec=spec, spec_error=error,
        status=rollout.get("status") or {}, model_versions=mvs, pods=pods, now=at, entry_ready=entry_ready,
        promote=ANNOTATION_PREFIX + PROMOTE in annotations,
        abort=ANNOTATION_PREFIX + ABORT in annotations,
        retry=ANNOTATION_PREFIX + RETRY in annotations,
        out_of_scope=out_of_scope,
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
    cand = st["canaryVersion"]
    pipeline = ((obs.model_versions.get(cand) or {}).get("spec") or {}).get("pipeline") or spec.pipeline or ""
    ctx = CheckContext(namespace=obs.rollout.namespace, rollout=obs.rollout.name, pipeline=pipeline, version=cand,
                       stable=st.get("stableVersion"), window=spec.analysis.window)
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


async def _consume(rollout: Mapping[str, Any], keys: tuple[str, ...]) -> None:
    if keys:
        meta = rollout["metadata"]
        await kube.patch(API_VERSION, "Rollout", meta["name"], meta["namespace"],
                         {"metadata": {"annotations": {ANNOTATION_PREFIX + k: None for k in keys}}})


async def _stage(mv: Mapping[str, Any], rollout: str, stage: str, reason: str, traffic: int, at: dt.datetime) -> None:
    status = mv.get("status") or {}
    if status.get("stage") == stage and status.get("traffic") == traffic:
        return
    patch: dict[str, Any] = {"traffic": traffic}
    if status.get("stage") != stage:
        history = list(status.get("history") or [])
        history.append({"stage": stage, "at": at.isoformat().replace("+00:00", "Z"), "reason": reason[:1000],
                        "by": f"rollout/{rollout}"})
        patch.update(stage=stage, message=reason[:1000], history=history[-HISTORY_MAX:])
    meta = mv["metadata"]
    await kube.patch_status(API_VERSION, "ModelVersion", meta["name"], meta["namespace"], patch)


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
    """The merge patch bringing ``old`` status to ``new`` (None deletes); empty when nothing changed."""
    return {k: merge_patch(old.get(k), new.get(k)) for k in STATUS_KEYS
            if k in new and new.get(k) != old.get(k)}


async def act(rollout: Mapping[str, Any], obs: Observation, plan: Plan, settings: Settings) -> None:
    ref, spec = obs.rollout, obs.spec
    ns = ref.namespace
    await _consume(rollout, plan.consume_first)
    if spec is not None:
        provider = make_provider(ref, spec, _model_name(obs), settings)
        await provider.ensure()
        for version, replicas in plan.replicas.items():
            mv = obs.model_versions.get(version)
            if mv is None:
                continue  # its ModelVersion is gone: keep whatever runs, we cannot describe it anew
            if version in obs.out_of_scope and version not in obs.pods:
                log.warning("rollout %s/%s: not creating %s: %s", ns, ref.name, version, obs.out_of_scope[version])
                continue  # decide never selects it; this guards the one place that starts servers
            await apply(objects.version_deployment(ref, mv, replicas, settings, spec.resources, spec.prediction_log,
                                                    spec.feedback_token))
            await apply(objects.version_service(ref, (mv.get("spec") or {}).get("pipeline", ""), version))
            pods = obs.pods.get(version)
            if pods is not None and pods.scale_down_at is not None:
                await kube.patch("apps/v1", "Deployment", objects.version_object_name(ref.name, version), ns,
                                 {"metadata": {"annotations": {SCALE_DOWN_ANNOTATION: None}}})
        if plan.preview:
            pipeline = ((obs.model_versions.get(plan.preview) or {}).get("spec") or {}).get("pipeline", "")
            await apply(objects.preview_service(ref, pipeline, plan.preview))
        elif spec.strategy == "blueGreen":
            await kube.delete("v1", "Service", objects.preview_service_name(ref.name), ns)
        if plan.weights is not None:
            if await provider.set_weights(plan.weights, plan.mirror):
                log.info("rollout %s/%s: traffic %s mirror %s", ns, ref.name, plan.weights, plan.mirror)
        for version, deadline in plan.scale_down.items():
            pods = obs.pods.get(version)
            if pods is not None and pods.scale_down_at != deadline:
                await kube.patch("apps/v1", "Deployment", objects.version_object_name(ref.name, version), ns,
                                 {"metadata": {"annotations": {
                                     SCALE_DOWN_ANNOTATION: deadline.isoformat().replace("+00:00", "Z")}}})
        for version in plan.delete:
            await kube.delete("apps/v1", "Deployment", objects.version_object_name(ref.name, version), ns)
            await kube.delete("v1", "Service", objects.version_object_name(ref.name, version), ns)
            forget_service(ns, objects.version_object_name(ref.name, version))
    for change in plan.stage_changes:
        mv = obs.model_versions.get(change.version)
        if mv is not None:
            await _stage(mv, ref.name, change.stage, change.reason, change.traffic, obs.now)
    for type_, reason, message in plan.events:
        await kube.post_event(rollout, type_, reason, message)
    patch = status_patch(obs.status, plan.status)
    if patch:
        await kube.patch_status(API_VERSION, "Rollout", ref.name, ns, patch)
    await _consume(rollout, plan.consume_last)


async def reconcile_once(namespace: str, name: str) -> Plan | None:
    """One observe → decide → act pass; returns the plan (tests and benchmarks read it)."""
    st = state()
    rollout = await kube.get(API_VERSION, "Rollout", name, namespace)
    if rollout is None or rollout["metadata"].get("deletionTimestamp"):
        return None
    obs, _ = await observe(rollout, now())
    if analysis_due(obs):
        obs = dataclasses.replace(obs, measurement=await measure(obs, st.prometheus))
    plan = decide(obs)
    await act(rollout, obs, plan, st.settings)
    return plan


@kopf.daemon(GROUP, VERSION, "rollouts", id="rollout", cancellation_timeout=10.0)
async def rollout_daemon(name: str, namespace: str, stopped: kopf.DaemonStopped, **_: Any) -> None:
    st = state()
    failures = 0
    while not stopped:
        try:
            await reconcile_once(namespace, name)
            failures = 0
        except Exception:  # one failed pass must not end the Rollout's daemon; the next pass retries
            failures += 1
            log.exception("rollout %s/%s: pass failed (%d in a row)", namespace, name, failures)
        await stopped.wait(st.interval * min(2 ** failures, 15))
