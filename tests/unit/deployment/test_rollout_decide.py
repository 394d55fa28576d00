"""The Rollout state machine, table by table: given an observation, what the plan must be."""

from __future__ import annotations

import dataclasses
import datetime as dt

import pytest
from noria import conditions as c
from noria.deployment.analysis import CheckResult
from noria.deployment.decide import (
    ArtifactRefusal,
    Measurement,
    Observation,
    Plan,
    VersionPods,
    analysis_due,
    decide,
)
from noria.deployment.handlers import artifact_refusal
from noria.deployment.objects import RolloutRef
from noria.deployment.spec import parse_rollout_spec

T0 = dt.datetime(2026, 11, 23, 12, 0, 0, tzinfo=dt.UTC)
REF = RolloutRef(name="churn", namespace="ml", uid="u1")
CHECKS = {"interval": "30s", "failureLimit": 1, "checks": [{"builtin": "errorRate", "max": "0.01"}]}
CANARY = {"source": {"pipeline": "churn"}, "replicas": 2, "analysis": CHECKS,
          "strategy": {"canary": {"steps": [{"setWeight": 10}, {"pause": {"duration": "1m"}}, {"setWeight": 50},
                                            {"pause": {}}]}}}


def mv(n: int, stage: str = "Approved", history=None) -> dict:
    return {"metadata": {"name": f"churn-v{n}", "namespace": "ml"},
            "spec": {"pipeline": "churn", "version": n, "artifact": {"uri": "file:///x", "digest": "sha256:" + "0" * 64}},
            "status": {"stage": stage, "history": history or []}}


def ready(version: str, replicas: int = 2, scale_down_at=None) -> VersionPods:
    return VersionPods(version, replicas, replicas, True, scale_down_at)


def observe(spec=CANARY, status=None, mvs=(), pods=(), now=T0, **kw) -> Observation:
    return Observation(rollout=REF, generation=1, spec=parse_rollout_spec(spec), spec_error=None,
                       status=status or {}, model_versions={m["metadata"]["name"]: m for m in mvs},
                       pods={p.version: p for p in pods}, now=now, **kw)


def stages(plan: Plan) -> dict[str, str]:
    return {s.version: s.stage for s in plan.stage_changes}


def mid_canary(step: int, started=T0, **extra) -> dict:
    return {"stableVersion": "churn-v6", "canaryVersion": "churn-v7", "currentStep": step,
            "stepStartedAt": c.now_iso(started), **extra}


def bad_measurement(at=T0) -> Measurement:
    return Measurement("failure", (CheckResult("errorRate", "failure", 0.3, "0.3 above max"),), at)


# --- first deployment -------------------------------------------------------------------------
def test_first_version_waits_for_its_pods_without_traffic():
    plan = decide(observe(mvs=[mv(1)]))
    assert plan.replicas == {"churn-v1": 2} and plan.weights is None
    assert plan.status["phase"] == "Progressing"


def test_first_version_goes_straight_to_production_when_ready():
    plan = decide(observe(mvs=[mv(1)], pods=[ready("churn-v1")], status={"canaryVersion": "churn-v1"}))
    assert plan.weights == {"churn-v1": 100}
    assert plan.status["stableVersion"] == "churn-v1" and plan.status["canaryVersion"] is None
    assert stages(plan)["churn-v1"] == "Production" and plan.status["phase"] == "Healthy"


def test_first_version_sets_traffic_but_is_not_healthy_until_the_router_is_ready():
    first = {"canaryVersion": "churn-v1"}
    plan = decide(observe(mvs=[mv(1)], pods=[ready("churn-v1")], status=first, entry_ready=False))
    assert plan.weights == {"churn-v1": 100}  # the router needs its config to become ready at all
    ready_condition = c.get_condition(plan.status["conditions"], c.READY)
    assert ready_condition["status"] == c.FALSE and ready_condition["reason"] == c.ROLLOUT_WAITING_FOR_ROUTER
    assert plan.status["phase"] == "Progressing"
    later = decide(observe(mvs=[mv(1, "Production")], pods=[ready("churn-v1")], entry_ready=True,
                           status={"stableVersion": "churn-v1", "conditions": plan.status["conditions"]}))
    assert later.status["phase"] == "Healthy"


def test_nothing_approved_is_degraded_with_a_reason():
    plan = decide(observe(mvs=[mv(1, "Candidate")]))
    assert plan.status["phase"] == "Degraded"
    assert c.get_condition(plan.status["conditions"], c.DEGRADED)["reason"] == c.ROLLOUT_NO_MODEL_VERSION


# --- canary -----------------------------------------------------------------------------------
def test_a_new_version_starts_at_step_zero_with_all_traffic_on_stable():
    plan = decide(observe(status={"stableVersion": "churn-v6"}, mvs=[mv(6, "Production"), mv(7)],
                          pods=[ready("churn-v6")]))
    assert plan.status["canaryVersion"] == "churn-v7" and plan.status["currentStep"] == 0
    assert plan.weights == {"churn-v6": 100} and plan.replicas == {"churn-v6": 2, "churn-v7": 2}
    assert stages(plan)["churn-v7"] == "Canary"


def test_no_weight_moves_before_the_candidate_is_ready():
    plan = decide(observe(status=mid_canary(0), mvs=[mv(6, "Production"), mv(7, "Canary")],
                          pods=[ready("churn-v6"), VersionPods("churn-v7", 2, 1)]))
    assert plan.weights is None and plan.status["currentStep"] == 0


def test_set_weight_applies_and_advances_one_step():
    plan = decide(observe(status=mid_canary(0), mvs=[mv(6, "Production"), mv(7, "Canary")],
                          pods=[ready("churn-v6"), ready("churn-v7")], now=T0 + dt.timedelta(seconds=3)))
    assert plan.weights == {"churn-v6": 90, "churn-v7": 10}
    assert plan.status["currentStep"] == 1 and plan.status["stepStartedAt"] == "2026-11-23T12:00:03Z"


def test_a_timed_pause_holds_then_ends():
    obs = observe(status=mid_canary(1), mvs=[mv(6, "Production"), mv(7, "Canary")],
                  pods=[ready("churn-v6"), ready("churn-v7")], now=T0 + dt.timedelta(seconds=59))
    assert decide(obs).status["currentStep"] == 1
    later = decide(dataclasses.replace(obs, now=T0 + dt.timedelta(seconds=60)))
    assert later.status["currentStep"] == 2 and later.weights == {"churn-v6": 90, "churn-v7": 10}


def test_an_indefinite_pause_waits_for_the_promote_annotation():
    obs = observe(status=mid_canary(3), mvs=[mv(6, "Production"), mv(7, "Canary")],
                  pods=[ready("churn-v6"), ready("churn-v7")], now=T0 + dt.timedelta(hours=5))
    held = decide(obs)
    assert held.status["currentStep"] == 3 and held.status["phase"] == "Paused"
    promoted = decide(dataclasses.replace(obs, promote=True))
    assert promoted.status["currentStep"] == 4 and promoted.consume_first == ("promote",)


def test_the_last_step_promotes_and_retires_the_old_stable_after_a_delay():
    plan = decide(observe(status=mid_canary(4), mvs=[mv(6, "Production"), mv(7, "Canary")],
                          pods=[ready("churn-v6"), ready("churn-v7")]))
    assert plan.weights == {"churn-v7": 100} and plan.status["stableVersion"] == "churn-v7"
    assert stages(plan) == {"churn-v7": "Production", "churn-v6": "Retired"}
    assert plan.scale_down["churn-v6"] > T0 and plan.delete == ()
    assert plan.status["phase"] == "Healthy"


# --- analysis and abort -----------------------------------------------------------------------
def test_failures_beyond_the_limit_abort_in_the_safe_order():
    status = mid_canary(1, analysis={"passed": 1, "failed": 1, "errors": 0, "inconclusive": 0, "consecutiveErrors": 0})
    plan = decide(observe(status=status, mvs=[mv(6, "Production"), mv(7, "Canary")],
                          pods=[ready("churn-v6"), ready("churn-v7")], measurement=bad_measurement()))
    assert plan.weights == {"churn-v6": 100}
    assert "churn-v7" not in plan.replicas and "churn-v7" in plan.scale_down
    assert stages(plan)["churn-v7"] == "Rejected"
    assert plan.status["canaryVersion"] is None and plan.status["phase"] == "Degraded"
    assert c.get_condition(plan.status["conditions"], c.DEGRADED)["reason"] == c.ROLLOUT_ANALYSIS_FAILED
    assert plan.status["analysis"]["failed"] == 2


def test_a_failure_within_the_limit_only_counts():
    plan = decide(observe(status=mid_canary(1), mvs=[mv(6, "Production"), mv(7, "Canary")],
                          pods=[ready("churn-v6"), ready("churn-v7")], measurement=bad_measurement()))
    assert plan.status["canaryVersion"] == "churn-v7" and plan.status["analysis"]["failed"] == 1


def test_inconclusive_pauses_and_never_advances_until_promoted():
    m = Measurement("inconclusive", (CheckResult("errorRate", "inconclusive", None, "no requests"),), T0)
    obs = observe(status=mid_canary(0), mvs=[mv(6, "Production"), mv(7, "Canary")],
                  pods=[ready("churn-v6"), ready("churn-v7")], measurement=m)
    plan = decide(obs)
    assert plan.status["phase"] == "Paused" and plan.status["currentStep"] == 0
    again = decide(dataclasses.replace(obs, status=plan.status, measurement=None, now=T0 + dt.timedelta(hours=1)))
    assert again.status["currentStep"] == 0 and again.status["phase"] == "Paused"
    assert not analysis_due(dataclasses.replace(obs, status=plan.status, measurement=None))
    resumed = decide(dataclasses.replace(obs, status=plan.status, measurement=None, promote=True))
    assert resumed.status["phase"] == "Progressing"


def test_abort_annotation_aborts_and_is_consumed_after_status():
    plan = decide(observe(status=mid_canary(2), mvs=[mv(6, "Production"), mv(7, "Canary")],
                          pods=[ready("churn-v6"), ready("churn-v7")], abort=True))
    assert plan.weights == {"churn-v6": 100} and stages(plan)["churn-v7"] == "Rejected"
    assert plan.consume_last == ("abort",)
    assert c.get_condition(plan.status["conditions"], c.DEGRADED)["reason"] == c.ROLLOUT_ABORTED_BY_USER


def test_after_an_abort_the_rejected_version_is_not_picked_again_until_retry():
    rejected = mv(7, "Rejected", history=[{"stage": "Rejected", "by": "rollout/churn"}])
    status = {"stableVersion": "churn-v6", "conditions": c.set_condition(
        [], c.DEGRADED, c.TRUE, c.ROLLOUT_ANALYSIS_FAILED, "aborted")}
    obs = observe(status=status, mvs=[mv(6, "Production"), rejected], pods=[ready("churn-v6")])
    held = decide(obs)
    assert held.status.get("canaryVersion") is None and held.status["phase"] == "Degraded"
    retried = decide(dataclasses.replace(obs, retry=True))
    assert stages(retried)["churn-v7"] == "Canary" and retried.status["canaryVersion"] == "churn-v7"


def test_analysis_step_needs_a_pass_measured_after_it_began():
    spec = {**CANARY, "strategy": {"canary": {"steps": [{"setWeight": 10}, {"analysis": {}}]}}}
    old_pass = {"passed": 1, "last": {"at": c.now_iso(T0), "outcome": "Successful"}}
    obs = observe(spec=spec, status=mid_canary(1, analysis=old_pass), mvs=[mv(6, "Production"), mv(7, "Canary")],
                  pods=[ready("churn-v6"), ready("churn-v7")], now=T0 + dt.timedelta(seconds=1))
    assert decide(obs).status["currentStep"] == 1
    good = Measurement("success", (CheckResult("errorRate", "success", 0.0),), T0 + dt.timedelta(seconds=31))
    plan = decide(dataclasses.replace(obs, measurement=good, now=T0 + dt.timedelta(seconds=31)))
    assert plan.status["currentStep"] == 2


def test_background_analysis_is_due_once_per_interval_while_the_canary_has_traffic():
    base = observe(status=mid_canary(1, canaryWeight=10), mvs=[mv(6, "Production"), mv(7, "Canary")],
                   pods=[ready("churn-v6"), ready("churn-v7")], now=T0 + dt.timedelta(seconds=30))
    assert not analysis_due(dataclasses.replace(base, now=T0 + dt.timedelta(seconds=29)))  # first: one interval in
    assert analysis_due(base)
    measured = dataclasses.replace(base, status=mid_canary(1, canaryWeight=10, analysis={"last": {"at": c.now_iso(T0)}}),
                                   now=T0 + dt.timedelta(seconds=29))
    assert not analysis_due(measured)
    assert analysis_due(dataclasses.replace(measured, now=T0 + dt.timedelta(seconds=30)))
    # Step 0's weight is not applied yet (canaryWeight 0): nothing to measure.
    assert not analysis_due(dataclasses.replace(base, status=mid_canary(0, canaryWeight=0)))


# --- new versions, rollback, scale-down ---------------------------------------------------------
def test_a_newer_version_mid_rollout_supersedes_the_candidate():
    plan = decide(observe(status=mid_canary(2), mvs=[mv(6, "Production"), mv(7, "Canary"), mv(8)],
                          pods=[ready("churn-v6"), ready("churn-v7")]))
    assert plan.weights == {"churn-v6": 100} and plan.status["canaryVersion"] == "churn-v8"
    assert plan.status["currentStep"] == 0 and "churn-v7" in plan.scale_down
    assert stages(plan)["churn-v7"] == "Approved"


def test_pinning_back_to_a_still_running_version_rolls_back_at_once():
    spec = {**CANARY, "source": {"modelVersion": "churn-v6"}, "rollbackWindow": "10m"}
    plan = decide(observe(spec=spec, status={"stableVersion": "churn-v7"},
                          mvs=[mv(6, "Retired"), mv(7, "Production")],
                          pods=[ready("churn-v7"), ready("churn-v6", scale_down_at=T0 + dt.timedelta(minutes=5))]))
    assert plan.weights == {"churn-v6": 100} and plan.status["stableVersion"] == "churn-v6"
    assert stages(plan)["churn-v7"] == "Retired"
    assert plan.scale_down["churn-v7"] >= T0 + dt.timedelta(minutes=10)


def test_replaced_versions_are_deleted_only_after_their_deadline():
    pods = [ready("churn-v7"), ready("churn-v6", scale_down_at=T0 + dt.timedelta(seconds=10)), ready("churn-v5")]
    obs = observe(status={"stableVersion": "churn-v7"}, mvs=[mv(7, "Production")], pods=pods)
    plan = decide(obs)
    assert plan.delete == () and set(plan.scale_down) == {"churn-v5"}
    assert decide(dataclasses.replace(obs, now=T0 + dt.timedelta(seconds=10))).delete == ("churn-v6",)


def test_a_restarted_pass_with_the_same_status_repeats_nothing():
    obs = observe(status=mid_canary(0), mvs=[mv(6, "Production"), mv(7, "Canary")],
                  pods=[ready("churn-v6"), ready("churn-v7")])
    first = decide(obs)
    second = decide(dataclasses.replace(obs, status=first.status))
    assert second.status["currentStep"] == 1 and second.weights == first.weights  # pause: no skip, no repeat


def test_invalid_spec_is_degraded_and_touches_nothing():
    obs = dataclasses.replace(observe(), spec=None, spec_error="spec.strategy: set exactly one")
    plan = decide(obs)
    assert plan.status["phase"] == "Degraded" and plan.replicas == {} and plan.weights is None


def test_a_retried_version_whose_pods_still_run_walks_the_steps_again():
    rejected = mv(7, "Rejected", history=[{"stage": "Rejected", "by": "rollout/churn"}])
    pods = [ready("churn-v6"), ready("churn-v7", scale_down_at=T0 + dt.timedelta(seconds=20))]
    plan = decide(observe(status={"stableVersion": "churn-v6"}, mvs=[mv(6, "Production"), rejected], pods=pods,
                          retry=True))
    assert plan.weights == {"churn-v6": 100} and plan.status["canaryVersion"] == "churn-v7"
    assert plan.status["currentStep"] == 0


# --- artifacts: out of scope, refused by the server (issue #10) --------------------------------
REFUSAL = ArtifactRefusal("DigestMismatch", "sha256 of model.skops is 3f.., the ModelVersion says 00..", 3, "p-1")
OUT = {"churn-v7": "spec.artifact.uri 'file:///etc/passwd' is outside namespace ml's store (...)"}
PINNED_V7 = {**CANARY, "source": {"modelVersion": "churn-v7"}}


def crashed(version: str, refusal: ArtifactRefusal = REFUSAL) -> VersionPods:
    return VersionPods(version, 2, 0, True, None, refusal)


def degraded(plan: Plan) -> tuple[str, str]:
    cond = c.get_condition(plan.status["conditions"], c.DEGRADED)
    return cond["status"], cond["reason"]


@pytest.mark.parametrize(("given", "weights", "replicas", "stage", "reason"), [
    pytest.param(dict(status=mid_canary(2), mvs=[mv(6, "Production"), mv(7, "Canary")],
                      pods=[ready("churn-v6"), crashed("churn-v7")]),
                 {"churn-v6": 100}, {"churn-v6": 2}, "Rejected", c.ARTIFACT_VERIFICATION_FAILED,
                 id="canary refused mid-way: traffic back to stable, candidate rejected"),
    pytest.param(dict(status=mid_canary(0), mvs=[mv(6, "Production"), mv(7, "Canary")],
                      pods=[ready("churn-v6"), crashed("churn-v7")]),
                 {"churn-v6": 100}, {"churn-v6": 2}, "Rejected", c.ARTIFACT_VERIFICATION_FAILED,
                 id="canary refused before any weight moved"),
    pytest.param(dict(status={"canaryVersion": "churn-v1"}, mvs=[mv(1)], pods=[crashed("churn-v1")]),
                 {}, {}, "Rejected", c.ARTIFACT_VERIFICATION_FAILED,
                 id="first deployment refused: nothing serves, Degraded"),
    pytest.param(dict(status={"stableVersion": "churn-v6"}, mvs=[mv(6, "Production"), mv(7)],
                      pods=[ready("churn-v6")], out_of_scope=OUT),
                 {"churn-v6": 100}, {"churn-v6": 2}, None, c.ARTIFACT_OUT_OF_SCOPE,
                 id="newest version out of scope: never started, stable serves"),
    pytest.param(dict(spec=PINNED_V7, status={"stableVersion": "churn-v6"}, mvs=[mv(6, "Production"), mv(7)],
                      pods=[ready("churn-v6")], out_of_scope=OUT),
                 {"churn-v6": 100}, {"churn-v6": 2}, None, c.ARTIFACT_OUT_OF_SCOPE,
                 id="pinned version out of scope: refused, stable serves"),
    pytest.param(dict(mvs=[mv(7)], out_of_scope=OUT), None, {}, None, c.ARTIFACT_OUT_OF_SCOPE,
                 id="first deployment out of scope: no Deployment at all"),
    pytest.param(dict(status=mid_canary(2), mvs=[mv(6, "Production"), mv(7, "Canary")],
                      pods=[ready("churn-v6"), ready("churn-v7")], out_of_scope=OUT),
                 {"churn-v6": 100}, {"churn-v6": 2}, "Approved", c.ARTIFACT_OUT_OF_SCOPE,
                 id="candidate found out of scope mid-way (trust withdrawn): dropped, stable serves"),
])
def test_artifact_trust(given, weights, replicas, stage, reason):
    plan = decide(observe(**given))
    assert plan.weights == weights
    assert plan.replicas == replicas  # the refused or out-of-scope version never gets pods asked for
    assert stages(plan).get("churn-v7" if "churn-v7" in {m["metadata"]["name"] for m in given["mvs"]}
                         else "churn-v1") == stage
    assert degraded(plan) == (c.TRUE, reason) and plan.status["phase"] == "Degraded"
    assert plan.status.get("canaryVersion") is None


def test_a_refused_candidate_says_why_everywhere():
    plan = decide(observe(status=mid_canary(2), mvs=[mv(6, "Production"), mv(7, "Canary")],
                          pods=[ready("churn-v6"), crashed("churn-v7")]))
    (change,) = [s for s in plan.stage_changes if s.version == "churn-v7"]
    assert "DigestMismatch" in change.reason and change.traffic == 0
    assert "churn-v7" in plan.scale_down  # scaled down after traffic left it, not deleted at once
    assert any(t == "Warning" and r == c.ARTIFACT_VERIFICATION_FAILED and "DigestMismatch" in m
               for t, r, m in plan.events)
    assert "DigestMismatch" in c.get_condition(plan.status["conditions"], c.DEGRADED)["message"]


def test_after_a_refused_first_deployment_the_reason_stays_until_something_serves():
    first = decide(observe(status={"canaryVersion": "churn-v1"}, mvs=[mv(1)], pods=[crashed("churn-v1")]))
    rejected = mv(1, "Rejected", history=[{"stage": "Rejected", "by": "rollout/churn"}])
    later = decide(observe(status=first.status, mvs=[rejected], pods=[crashed("churn-v1")]))
    assert degraded(later) == (c.TRUE, c.ARTIFACT_VERIFICATION_FAILED)
    assert later.replicas == {}


def test_out_of_scope_message_names_the_field():
    plan = decide(observe(spec=PINNED_V7, mvs=[mv(7)], out_of_scope=OUT))
    assert "spec.artifact.uri" in c.get_condition(plan.status["conditions"], c.DEGRADED)["message"]


def test_a_stable_version_that_refuses_its_artifact_is_not_ready_and_says_why():
    plan = decide(observe(status={"stableVersion": "churn-v6"}, mvs=[mv(6, "Production")],
                          pods=[crashed("churn-v6")]))
    ready_condition = c.get_condition(plan.status["conditions"], c.READY)
    assert ready_condition["status"] == c.FALSE and ready_condition["reason"] == c.ARTIFACT_VERIFICATION_FAILED
    assert degraded(plan) == (c.TRUE, c.ARTIFACT_VERIFICATION_FAILED)
    assert plan.replicas == {"churn-v6": 2}  # nothing to fall back to: what runs keeps running


def server_pod(state=None, last=None, name="server") -> dict:
    status = {"name": name, "state": state or {"waiting": {"reason": "CrashLoopBackOff"}}, "lastState": last or {}}
    return {"metadata": {"name": "churn-churn-v7-abc", "labels": {"noria.dev/version": "churn-v7"}},
            "status": {"containerStatuses": [status]}}


REFUSED = {"terminated": {"exitCode": 3, "message": '{"reason": "ArtifactVerificationFailed", "kind": "UntrustedType",'
                                                    ' "message": "os.system is not a trusted type"}'}}


@pytest.mark.parametrize(("pod", "kind"), [
    (server_pod(last=REFUSED), "UntrustedType"),  # restarted: the refusal is in lastState
    (server_pod(state=REFUSED), "UntrustedType"),  # just exited
    (server_pod(state={"running": {}}, last=REFUSED), "UntrustedType"),  # running again, still refused before
    (server_pod(last={"terminated": {"exitCode": 137, "message": "Traceback ...\nMemoryError"}}), None),  # a crash
    (server_pod(last={"terminated": {"exitCode": 1, "message": '{"reason": "Other"}'}}), None),
    (server_pod(last={"terminated": {"exitCode": 3}}), None),  # no message: not a refusal by contract
    (server_pod(last=REFUSED, name="sidecar"), None),  # only the server container speaks for the artifact
])
def test_artifact_refusal_is_read_from_the_server_termination_message(pod, kind):
    found = artifact_refusal(pod)
    assert (found.kind if found else None) == kind
    if found:
        assert found.exit_code == 3 and found.pod == "churn-churn-v7-abc" and "os.system" in found.message
