"""The Rollout handlers' pure parts: when the next pass runs, what wakes a Rollout, errors as a
condition (one Warning on the transition), the ModelVersion copy, the route a deletion restores."""

from __future__ import annotations

import datetime as dt

import pytest
from noria import conditions as c
from noria import failpoints, kube
from noria.deployment import handlers
from noria.deployment.decide import Observation, Plan, VersionPods
from noria.deployment.objects import RolloutRef
from noria.deployment.providers.gateway_api import desired_rules, original_backends, restored_rules
from noria.deployment.spec import parse_rollout_spec
from noria.mvcache import ModelVersionCache

NOW = dt.datetime(2026, 1, 1, 12, 0, 0, tzinfo=dt.UTC)
REF = RolloutRef(name="churn", namespace="ml", uid="u")


def spec(**extra):
    return parse_rollout_spec({"source": {"pipeline": "churn"}, "strategy": {"canary": {"steps": [
        {"setWeight": 20}, {"pause": {"duration": "30s"}}, {"setWeight": 50}]}}, **extra})


def obs(status, pods=None, **extra):
    return Observation(rollout=REF, generation=1, spec=spec(**extra), spec_error=None, status=status,
                       model_versions={}, pods=pods or {}, now=NOW)


READY = [{"type": c.READY, "status": c.TRUE, "reason": c.ROLLOUT_STABLE_SERVING, "message": ""}]


def test_a_steady_rollout_waits_for_the_resync_only():
    o = obs({"stableVersion": "v1", "conditions": READY})
    assert handlers.next_pass_in(o, Plan(status=dict(o.status)), interval=2, resync=60) == 60


def test_a_rollout_in_motion_passes_at_least_every_interval():
    st = {"stableVersion": "v1", "canaryVersion": "v2", "currentStep": 0, "stepStartedAt": c.now_iso(NOW),
          "conditions": READY}
    o = obs(st)
    assert handlers.next_pass_in(o, Plan(status=st), interval=2, resync=60) == 2


def test_a_timed_pause_ends_on_time_when_it_is_sooner_than_the_interval():
    started = NOW - dt.timedelta(seconds=29)
    st = {"stableVersion": "v1", "canaryVersion": "v2", "currentStep": 1, "stepStartedAt": c.now_iso(started),
          "conditions": READY}
    assert handlers.next_pass_in(obs(st), Plan(status=st), interval=5, resync=60) == pytest.approx(1)


def test_a_scale_down_deadline_brings_the_next_pass_forward():
    o = obs({"stableVersion": "v1", "conditions": READY},
            pods={"v0": VersionPods("v0", 1, 1, scale_down_at=NOW + dt.timedelta(seconds=7))})
    assert handlers.next_pass_in(o, Plan(status=dict(o.status)), interval=2, resync=60) == 7


def test_a_rollout_not_ready_yet_is_looked_at_every_interval():
    o = obs({"stableVersion": "v1", "conditions": []})
    assert handlers.next_pass_in(o, Plan(status=dict(o.status)), interval=3, resync=60) == 3


def test_an_invalid_spec_waits_for_an_edit():
    o = Observation(rollout=REF, generation=1, spec=None, spec_error="bad", status={}, model_versions={}, pods={},
                    now=NOW)
    assert handlers.next_pass_in(o, Plan(), interval=2, resync=60) == 60


def body(generation=1, annotations=None, status=None, deleting=False):
    meta = {"name": "churn", "namespace": "ml", "generation": generation, "annotations": annotations or {}}
    if deleting:
        meta["deletionTimestamp"] = "2026-01-01T00:00:00Z"
    return {"metadata": meta, "status": status or {}}


def test_the_rollouts_own_status_write_does_not_wake_it_but_an_edit_or_a_promote_does():
    base = handlers.wake_fingerprint(body())
    assert handlers.wake_fingerprint(body(status={"phase": "Healthy"})) == base
    assert handlers.wake_fingerprint(body(annotations={"noria.dev/last-handled-configuration": "x"})) == base
    assert handlers.wake_fingerprint(body(generation=2)) != base
    assert handlers.wake_fingerprint(body(annotations={"noria.dev/promote": "true"})) != base
    assert handlers.wake_fingerprint(body(annotations={"noria.dev/promote": "full"})) != \
        handlers.wake_fingerprint(body(annotations={"noria.dev/promote": "true"}))
    assert handlers.wake_fingerprint(body(deleting=True)) != base


def test_a_model_version_wakes_only_the_rollouts_it_concerns():
    sources = {"a": ("churn", None), "b": ("fraud", None), "c": (None, "churn-v7"), "d": (None, "fraud-v1")}
    mv = {"metadata": {"name": "churn-v7"}, "spec": {"pipeline": "churn"}}
    assert handlers.concerned(sources, mv) == ["a", "c"]


def test_a_failed_pass_is_one_transition_with_one_warning_then_nothing_until_it_changes():
    status = {"phase": "Healthy", "conditions": READY}
    patch, transition = handlers.reconcile_error_status(status, "reconcile failed: 404: HTTPRoute x", 1, NOW)
    assert transition and patch["phase"] == "Degraded"
    cond = c.get_condition(patch["conditions"], c.RECONCILED)
    assert cond["status"] == c.FALSE and cond["reason"] == c.RECONCILE_ERROR and "HTTPRoute x" in cond["message"]
    again, transition = handlers.reconcile_error_status({**status, **patch}, "reconcile failed: 404: HTTPRoute x",
                                                        1, NOW)
    assert again is None and not transition
    other, transition = handlers.reconcile_error_status({**status, **patch}, "reconcile failed: 500", 1, NOW)
    assert other is not None and not transition  # the message follows the cause; no second Warning
    # The verdict conditions (an abort's Degraded) are left as they were.
    assert c.get_condition(patch["conditions"], c.READY) == READY[0]


def test_a_successful_pass_clears_the_error_and_a_rollout_that_never_failed_gets_no_extra_condition():
    failed = {"conditions": [*READY, {"type": c.RECONCILED, "status": c.FALSE, "reason": c.RECONCILE_ERROR,
                                      "message": "x"}]}
    cleared = handlers.cleared_reconcile_error(failed, 1, NOW)
    cond = c.get_condition(cleared["conditions"], c.RECONCILED)
    assert cond["status"] == c.TRUE and cond["reason"] == c.RECONCILE_RECOVERED
    assert handlers.cleared_reconcile_error({"conditions": READY}, 1, NOW) == {"conditions": READY}


def test_status_patch_writes_every_key_decide_returns_including_new_ones():
    old = {"phase": "Progressing", "weights": {"v1": 100}}
    new = {"phase": "Healthy", "weights": {"v1": 100},
           "lastVerdict": {"version": "v2", "stage": "Production", "reason": "Promoted"}}
    assert handlers.status_patch(old, new) == {"phase": "Healthy", "lastVerdict": new["lastVerdict"]}


def test_a_stage_write_adds_history_only_when_the_stage_changes():
    mv = {"metadata": {"name": "v2"}, "status": {"stage": "Canary", "traffic": 20, "history": [{"stage": "Canary"}]}}
    assert handlers.stage_patch(mv, "churn", "Canary", "x", 20, NOW) is None
    assert handlers.stage_patch(mv, "churn", "Canary", "x", 50, NOW) == {"traffic": 50}
    moved = handlers.stage_patch(mv, "churn", "Rejected", "failed", 0, NOW)
    assert moved["stage"] == "Rejected" and moved["history"][-1] == {
        "stage": "Rejected", "at": "2026-01-01T12:00:00Z", "reason": "failed", "by": "rollout/churn"}


def test_the_sweep_serves_only_the_operators_namespaces():
    assert handlers.watched_namespaces(["--namespace", "a", "-n", "b", "--namespace=c"], {}) == ["a", "b", "c"]
    assert handlers.watched_namespaces(["--verbose"], {}) is None
    assert handlers.watched_namespaces(["-n", "a"], {"NORIA_WATCH_NAMESPACES": "x, y"}) == ["x", "y"]


def mv(name, rv, stage="Approved"):
    return {"metadata": {"name": name, "namespace": "ml", "resourceVersion": str(rv)}, "status": {"stage": stage}}


def test_the_model_version_copy_keeps_the_newest_and_hears_of_events_during_its_list():
    cache = ModelVersionCache()
    assert not cache.warm("ml")
    cache.put(mv("early", 1))  # before any LIST: not kept (the LIST will have it)
    cache.begin("ml")
    cache.put(mv("a", 9, "Production"))  # arrives while the LIST is in flight, newer than the LIST's copy
    cache.remove("ml", "gone")
    cache.fill("ml", [mv("a", 5), mv("b", 6), mv("gone", 4)])
    assert cache.warm("ml")
    got = cache.get("ml")
    assert sorted(got) == ["a", "b"] and got["a"]["status"]["stage"] == "Production"
    cache.put(mv("b", 3, "Rejected"))  # an older copy never replaces a newer one
    assert cache.get("ml")["b"]["metadata"]["resourceVersion"] == "6"
    cache.put(mv("b", 7, "Canary"))
    assert cache.get("ml")["b"]["status"]["stage"] == "Canary"


def test_the_model_version_copy_is_listed_again_after_its_relist_time():
    cache = ModelVersionCache(relist_seconds=0.0)
    cache.begin("ml")
    cache.fill("ml", [])
    assert not cache.warm("ml")


def test_a_write_with_a_resource_version_carries_it_as_a_precondition():
    assert kube.with_precondition({"status": {"a": 1}}, "42") == {"status": {"a": 1},
                                                                   "metadata": {"resourceVersion": "42"}}
    assert kube.with_precondition({"metadata": {"annotations": {"x": None}}}, "7")["metadata"] == {
        "annotations": {"x": None}, "resourceVersion": "7"}
    assert kube.with_precondition({"status": {}}, None) == {"status": {}}


def test_deletion_gives_the_route_back_its_own_backends_and_drops_the_mirror():
    user = [{"matches": [{"path": {"value": "/v2"}}], "backendRefs": [{"name": "placeholder", "port": 8080}],
             "filters": [{"type": "RequestHeaderModifier"}]}]
    recorded = original_backends(user, "churn")
    ours = desired_rules(user, "churn", {"v1": 70, "v2": 30}, ("v2", 40))
    assert [r["name"] for r in ours[0]["backendRefs"]] == ["churn-v1", "churn-v2"]
    assert restored_rules(ours, "churn", recorded) == user
    # No record (a route adopted before the operator kept one): only the user's own refs remain.
    assert restored_rules(ours, "churn", None)[0]["backendRefs"] == []
    assert restored_rules(ours, "churn", [[], []])[0]["backendRefs"] == []  # a record that no longer fits


def test_an_unarmed_failpoint_does_nothing_and_every_name_is_distinct():
    failpoints.arm(None)
    for name in failpoints.NAMES:
        failpoints.hit(name)
    assert len(set(failpoints.NAMES)) == len(failpoints.NAMES)


def test_an_error_is_described_in_the_api_servers_own_words():
    from lightkube.core.exceptions import ApiError

    class Response:
        status_code = 422

        def json(self):
            return {"kind": "Status", "code": 422, "reason": "Invalid",
                    "message": 'Deployment.apps "x" is invalid: metadata.name: Invalid value'}

    described = kube.describe_error(ApiError(response=Response()))
    assert described.startswith("422 Invalid") and "metadata.name" in described
    assert kube.describe_error(RuntimeError("boom")) == "RuntimeError: boom"


def test_a_rollout_with_no_version_yet_waits_for_an_event_not_the_interval():
    # Found by benchmarks/scale.py: 1,000 Rollouts waiting for their first approved version were
    # passed every 2 s each (a GET and a LIST of Deployments), though only an event can change them.
    o = obs({"conditions": [], "message": "pipeline p has no approved ModelVersion yet"})
    assert handlers.next_pass_in(o, Plan(status=dict(o.status)), interval=2, resync=60) == 60
    # and at 1,000 of them the 60 s resync alone is 33 requests/s: the idle resync is its safety net
    assert handlers.next_pass_in(o, Plan(status=dict(o.status)), interval=2, resync=60, idle_resync=600) == 600
    serving = obs({"stableVersion": "v1", "conditions": READY})
    assert handlers.next_pass_in(serving, Plan(status=dict(serving.status)), interval=2, resync=60,
                                 idle_resync=600) == 60


def test_a_relist_hears_of_writes_made_while_it_was_in_flight():
    # A relist's result may predate a registration or a stage write put into the copy meanwhile.
    cache = ModelVersionCache()
    cache.begin("ml")
    cache.fill("ml", [mv("a", 5)])
    cache.begin("ml")  # the relist starts
    cache.put(mv("new", 8))
    cache.put(mv("a", 9, "Production"))
    cache.fill("ml", [mv("a", 5)])  # its result, read before those writes
    got = cache.get("ml")
    assert sorted(got) == ["a", "new"] and got["a"]["status"]["stage"] == "Production"
