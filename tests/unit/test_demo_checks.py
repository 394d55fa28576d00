"""The story's checks, decided from a recorded story: a good record passes, and each way the story
can go wrong fails exactly the check that names it."""

from __future__ import annotations

import copy
import datetime as dt

import pandas as pd
import pytest
from noria_testbed.demo import checks as C

T0 = 1_800_000_000.0


def iso(t: float) -> str:
    return dt.datetime.fromtimestamp(t, dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


# Who changes stages in a story without a person: the pipeline approves, the Rollout does the rest.
BY_NORIA = {"Approved": "pipeline/churn", "Candidate": "pipeline/churn", "Rejected": "rollout/churn"}


def mv(name: str, *stages: tuple[str, float]) -> dict:
    return {"metadata": {"name": name}, "spec": {"metrics": {"f1": "0.85"}},
            "status": {"stage": stages[-1][0], "history": [
                {"stage": s, "at": iso(t), "reason": s, "by": BY_NORIA.get(s, "rollout/churn")} for s, t in stages]}}


def command(t: float, *args: str) -> dict:
    return {"kind": C.KIND_COMMAND, "ts": t, "args": ["kubectl", *args]}


def requests(phase: str, start: float, n: int, version: str, correct: float, status: int = 200,
             step: float = 0.1) -> list[dict]:
    out = []
    for i in range(n):
        right = (i % 100) < correct * 100
        out.append({"kind": "request", "ts": start + i * step, "phase": phase, "status": status, "version": version,
                    "prediction": 1 if right else 0, "label": 1, "features": {}})
    return out


def state(t: float, weights: dict) -> dict:
    return {"kind": "observation", "what": "state", "ts": t, "rollout": {"weights": weights, "router": weights}}


@pytest.fixture
def story() -> dict:
    records = [
        command(T0 - 10, "create", "namespace", "demo"),
        command(T0 - 5, "apply", "--server-side", "-n", "demo", "-f", "-"),
        *requests(C.PHASE_BEFORE, T0 + 100, 500, "churn-v1", 0.90),
        {"kind": "act", "act": C.ACT_DRIFT, "ts": T0 + 200},
        *requests(C.PHASE_DRIFTED, T0 + 200, 500, "churn-v1", 0.60),
        state(T0 + 90, {"churn-v1": 100}),
        state(T0 + 300, {"churn-v1": 80, "churn-v2": 20}),
        state(T0 + 320, {"churn-v1": 50, "churn-v2": 50}),
        state(T0 + 340, {"churn-v2": 100}),
        {"kind": "act", "act": C.ACT_RECOVERED, "ts": T0 + 350, "version": "churn-v2"},
        *requests(C.PHASE_RECOVERED, T0 + 350, 500, "churn-v2", 0.90),
        {"kind": "act", "act": C.ACT_BAD_BATCH, "ts": T0 + 420},
        state(T0 + 470, {"churn-v2": 80, "churn-v3": 20}),
        *requests("bad-batch", T0 + 470, 80, "churn-v2", 0.9),
        *requests("bad-batch", T0 + 470.05, 20, "churn-v3", 0.1, step=0.4),
        state(T0 + 490, {"churn-v2": 100}),
    ]
    tp = {"metadata": {"name": "churn"}, "status": {"lastRuns": [
        {"id": "churn-r3", "trigger": "newData", "outcome": "Succeeded", "version": "churn-v3",
         "startedAt": iso(T0 + 421), "finishedAt": iso(T0 + 460)},
        {"id": "churn-r2", "trigger": "drift", "outcome": "Succeeded", "version": "churn-v2",
         "startedAt": iso(T0 + 240), "finishedAt": iso(T0 + 280), "message": "psi 0.7 > 0.2"},
        {"id": "churn-r1", "trigger": "initial", "outcome": "Succeeded", "version": "churn-v1",
         "startedAt": iso(T0), "finishedAt": iso(T0 + 60)},
    ]}}
    mvs = {
        "churn-v1": mv("churn-v1", ("Approved", T0 + 60), ("Production", T0 + 90), ("Retired", T0 + 340)),
        "churn-v2": mv("churn-v2", ("Approved", T0 + 280), ("Canary", T0 + 281), ("Production", T0 + 340)),
        "churn-v3": mv("churn-v3", ("Approved", T0 + 460), ("Canary", T0 + 461), ("Rejected", T0 + 490)),
    }
    rollout = {"metadata": {"name": "churn"}, "spec": {"strategy": {"canary": {"steps": [{"setWeight": 20}, {"pause": {}}]}}},
               "status": {"stableVersion": "churn-v2", "weights": {"churn-v2": 100}}}
    return {"records": records, "tp": tp, "mvs": mvs, "rollout": rollout}


def run(story: dict, counterfactual: pd.Series | None = None) -> dict[str, C.Check]:
    checks, _ = C.evaluate(story["records"], story["tp"], story["mvs"], story["rollout"], counterfactual)
    return {c.name: c for c in checks}


def failing(story: dict) -> set[str]:
    return {name for name, c in run(story).items() if not c.ok}


def test_a_good_story_passes_every_check_and_finds_its_versions(story) -> None:
    checks, facts = C.evaluate(story["records"], story["tp"], story["mvs"], story["rollout"])
    assert [c.name for c in checks if not c.ok] == []
    assert (facts.v1, facts.v2, facts.bad, facts.canary_share) == ("churn-v1", "churn-v2", "churn-v3", 20)
    assert facts.figures["accuracy_before_drift"] == pytest.approx(0.90)
    assert facts.figures["accuracy_after_drift_v1"] == pytest.approx(0.60)
    assert facts.figures["drift_to_retrain_start_s"] == pytest.approx(40, abs=1)


def test_the_counterfactual_must_stay_degraded(story) -> None:
    frame = C.scoring_frame(story["records"])
    as_if_v1 = pd.Series(frame["label"].to_numpy())  # v1 always right: not degraded at all
    assert not run(story, as_if_v1)["the counterfactual 'v1 kept serving' stays degraded"].ok
    wrong = pd.Series(1 - frame["label"].to_numpy())
    assert run(story, wrong)["the counterfactual 'v1 kept serving' stays degraded"].ok


def test_a_failed_request_during_a_rollout_fails_the_story(story) -> None:
    story["records"].append({**story["records"][-3], "status": 502, "error": "bad gateway", "version": None})
    assert failing(story) == {"no prediction request failed during the rollouts"}


def test_no_recovery_within_two_points_fails(story) -> None:
    story["records"] = [r for r in story["records"] if r.get("phase") != C.PHASE_RECOVERED]
    story["records"] += requests(C.PHASE_RECOVERED, T0 + 350, 500, "churn-v2", 0.87)
    assert failing(story) == {"accuracy after recovery within 2 points of its pre-drift level"}


def test_a_retrain_that_was_not_caused_by_drift_or_performance_fails(story) -> None:
    story["tp"]["status"]["lastRuns"][1]["trigger"] = "schedule"
    assert "drift or F1 drop detected after the drift was injected, and a retrain started for it" in failing(story)


def test_a_bad_candidate_above_its_canary_share_fails(story) -> None:
    story["records"].append(state(T0 + 480, {"churn-v2": 50, "churn-v3": 50}))
    assert failing(story) == {"the bad candidate never got more than its canary share"}


def test_a_bad_candidate_that_answered_far_more_than_its_weight_fails(story) -> None:
    story["records"] += requests("bad-batch", T0 + 470.02, 40, "churn-v3", 0.1, step=0.2)
    assert failing(story) == {"the bad candidate never got more than its canary share"}


def test_a_bad_candidate_promoted_to_production_fails(story) -> None:
    bad = copy.deepcopy(story)
    bad["mvs"]["churn-v3"] = mv("churn-v3", ("Approved", T0 + 460), ("Canary", T0 + 461), ("Production", T0 + 490))
    bad["rollout"]["status"] = {"stableVersion": "churn-v3", "weights": {"churn-v3": 100}}
    assert {"the candidate trained on corrupted labels was refused", "users stay on the good version",
            "no request answered by the bad candidate after it was rejected"} <= failing(bad)


def test_a_candidate_refused_by_the_gate_never_served(story) -> None:
    story["tp"]["status"]["lastRuns"][0]["outcome"] = "Rejected"
    story["mvs"]["churn-v3"] = mv("churn-v3", ("Rejected", T0 + 460))
    story["records"] = [r for r in story["records"] if r.get("version") != "churn-v3"
                        and "churn-v3" not in ((r.get("rollout") or {}).get("weights") or {})]
    checks = run(story)
    assert all(c.ok for c in checks.values()), [c for c in checks.values() if not c.ok]
    assert "refused by the gate" in checks["the candidate trained on corrupted labels was refused"].detail


def test_a_canary_that_jumped_straight_to_100_fails(story) -> None:
    story["records"] = [r for r in story["records"] if not (r.get("what") == "state"
                        and 0 < ((r.get("rollout") or {}).get("weights") or {}).get("churn-v2", 0) < 100)]
    assert failing(story) == {"the canary moved traffic to the new version in steps, ending at 100%"}


def test_an_answer_from_the_bad_candidate_after_the_router_dropped_it_fails(story) -> None:
    story["records"] += requests("bad-batch", T0 + 491.5, 1, "churn-v3", 0.1)  # router dropped it at T0 + 490
    assert failing(story) == {"no request answered by the bad candidate after it was rejected"}


def test_answers_in_flight_while_the_router_switches_are_allowed(story) -> None:
    story["records"] += requests("bad-batch", T0 + 490.5, 1, "churn-v3", 0.1)
    assert "no request answered by the bad candidate after it was rejected" not in failing(story)


NOBODY = "no person acted: no annotation, every stage change by Noria"


@pytest.mark.parametrize("args", [
    ("annotate", "-n", "demo", "--overwrite", "rollouts.noria.dev/churn", "noria.dev/promote=true"),
    ("annotate", "-n", "demo", "trainingpipeline/churn", "noria.dev/retrain=2026-12-02T04:00:00Z"),
    ("patch", "modelversion", "churn-v2", "--type=merge", "-p", "{}"),
])
def test_a_command_that_acts_on_an_object_after_setup_fails_the_story(story, args) -> None:
    story["records"].append(command(T0 + 300, *args))
    assert failing(story) == {NOBODY}
    assert args[0] in run(story)[NOBODY].detail


def test_a_stage_change_by_a_person_fails_the_story(story) -> None:
    story["mvs"]["churn-v2"]["status"]["history"][0]["by"] = "alice"  # kubectl annotate mv noria.dev/approve=alice
    assert failing(story) == {NOBODY}
    assert "churn-v2 Approved by alice" in run(story)[NOBODY].detail


@pytest.mark.parametrize("record", [
    {"kind": "act", "act": "on-call", "ts": T0 + 300, "message": "resumed churn-v2 after an inconclusive analysis"},
])
def test_an_on_call_act_fails_the_story(story, record) -> None:
    story["records"].append(record)
    assert failing(story) == {NOBODY}


def test_an_event_only_a_person_causes_fails_the_story(story) -> None:
    events = [{"reason": "ResumedByUser", "message": "noria.dev/promote"}]
    checks, _ = C.evaluate(story["records"], story["tp"], story["mvs"], story["rollout"], None, events)
    assert [c.name for c in checks if not c.ok] == [NOBODY]


def test_the_bad_batch_run_is_the_first_after_the_batch_whatever_its_trigger(story) -> None:
    story["tp"]["status"]["lastRuns"][0]["trigger"] = "drift"  # a pending drift would name the coalesced run
    _, facts = C.evaluate(story["records"], story["tp"], story["mvs"], story["rollout"])
    assert facts.bad == "churn-v3"
