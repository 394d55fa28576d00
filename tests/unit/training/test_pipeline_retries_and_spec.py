"""Decisions about failure: a first run that dies is retried without a person, an out-of-memory
run says what to raise, the cooldown follows the spec as it is now, an invalid schedule is a
condition with one Event, and only a whole pass that got through clears Reconciled=False."""

from __future__ import annotations

import copy

from noria import conditions as c
from noria.training import runs
from test_pipeline import World, at, new_pipeline, ok


def _fail(w: World, run: str, when: float, **outcome) -> None:  # noqa: ANN003
    w.jobs[run] = runs.JobOutcome(runs.FAILED, None, outcome.pop("reason", "BackoffLimitExceeded"),
                                  "Job has reached the specified backoff limit", at(when).isoformat(), **outcome)


def test_a_first_run_that_dies_is_retried_later_with_a_doubling_back_off():
    w = World(new_pipeline())
    w.step(at(0))
    _fail(w, "churn-r1", when=10)
    plan = w.step(at(11))
    assert w.status["lastRuns"][0]["outcome"] == "Failed" and w.created_jobs == ["churn-r1"]
    assert plan.requeue_after <= 59  # woken up for the retry at 10 + 60 s
    w.step(at(69))
    assert w.created_jobs == ["churn-r1"]
    w.step(at(70))
    assert w.created_jobs == ["churn-r1", "churn-r2"] and w.status["currentRun"]["trigger"] == "initial"
    _fail(w, "churn-r2", when=80)
    w.step(at(81))
    w.step(at(199))
    assert w.created_jobs == ["churn-r1", "churn-r2"]
    w.step(at(200))  # 80 + 120 s
    assert w.created_jobs == ["churn-r1", "churn-r2", "churn-r3"]
    w.finish("churn-r3", ok("churn-r3", 3), when=at(210))
    for s in range(211, 5000, 200):
        w.step(at(s))
    assert w.created_jobs == ["churn-r1", "churn-r2", "churn-r3"]  # a version exists: no more retries


def test_an_out_of_memory_run_names_the_limit_to_raise():
    w = World(new_pipeline())
    w.step(at(0))
    _fail(w, "churn-r1", when=10, oom_killed=3, memory_limit="256Mi")
    plan = w.step(at(11))
    degraded = c.get_condition(w.status["conditions"], c.DEGRADED)
    assert degraded["status"] == c.TRUE and degraded["reason"] == c.TRAINER_OOM_KILLED
    assert "OOMKilled) in 3 pod(s), its memory limit is 256Mi" in degraded["message"]
    assert "spec.resources.limits.memory" in degraded["message"]
    assert [e.reason for e in plan.events] == [c.TRAINER_OOM_KILLED]


def test_lowering_the_cooldown_shortens_a_cooldown_already_running():
    w = World(new_pipeline({"cooldown": "1h"}))
    w.step(at(0))
    w.finish("churn-r1", ok("churn-r1", 1), when=at(10))
    w.step(at(11))
    w.retrain("again")
    w.step(at(20))
    assert w.created_jobs == ["churn-r1"] and w.status["cooldownUntil"] == "2026-11-23T13:00:10Z"
    w.tp = copy.deepcopy(w.tp)
    w.tp["spec"]["triggers"]["cooldown"] = "1m"
    w.tp["metadata"]["generation"] = 2
    w.step(at(69))
    assert w.created_jobs == ["churn-r1"] and w.status["cooldownUntil"] == "2026-11-23T12:01:10Z"
    w.step(at(71))
    assert w.created_jobs == ["churn-r1", "churn-r2"]


def test_an_impossible_schedule_is_invalid_spec_with_one_event_and_no_run_until_fixed():
    w = World(new_pipeline({"schedule": "0 2 31 2 *"}))
    first = w.step(at(0))
    degraded = c.get_condition(w.status["conditions"], c.DEGRADED)
    assert degraded["status"] == c.TRUE and degraded["reason"] == c.INVALID_SPEC
    assert "spec.triggers.schedule '0 2 31 2 *'" in degraded["message"]
    assert w.status["phase"] == "Degraded" and w.created_jobs == []
    assert [e.reason for e in first.events] == [c.INVALID_SPEC] and first.events[0].type == "Warning"
    training = c.get_condition(w.status["conditions"], c.TRAINING)
    assert training["reason"] == c.INVALID_SPEC and "initial waiting" in training["message"]
    for s in range(1, 20):
        assert w.step(at(s)).events == []  # one Event on the transition, never one per pass
    w.tp = copy.deepcopy(w.tp)
    w.tp["spec"]["triggers"]["schedule"] = "0 2 * * *"
    w.step(at(30))
    degraded = c.get_condition(w.status["conditions"], c.DEGRADED)
    assert degraded["status"] == c.FALSE and degraded["reason"] == c.SPEC_VALID
    assert w.created_jobs == ["churn-r1"]


def test_a_pass_that_succeeds_after_a_reconcile_error_sets_reconciled_true():
    from noria.training.handlers import reconcile_recovered_status

    failed = {"conditions": c.set_condition(None, c.RECONCILED, c.FALSE, c.RECONCILE_ERROR, "boom", now=at(0))}
    w = World(new_pipeline())
    w.tp["status"] = failed
    w.step(at(1))  # decide leaves Reconciled alone: the pass's writes may still fail
    assert c.get_condition(w.status["conditions"], c.RECONCILED)["status"] == c.FALSE
    patch = reconcile_recovered_status(w.status, 1, at(1))
    reconciled = c.get_condition(patch["conditions"], c.RECONCILED)
    assert reconciled["status"] == c.TRUE and reconciled["reason"] == c.RECONCILE_RECOVERED
    assert reconcile_recovered_status({**w.status, **patch}, 1, at(2)) is None
    assert reconcile_recovered_status({}, 1, at(2)) is None  # never failed: no condition, no write
