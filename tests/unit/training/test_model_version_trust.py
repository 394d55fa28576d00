"""A ModelVersion's trust: who approved or rejected it (from the annotation value), and whether its
artifact is in scope (a Degraded condition naming the field; never a champion)."""

from __future__ import annotations

import datetime as dt

import pytest
from noria import conditions as c
from noria.artifact_scope import ArtifactScope
from noria.training import results

NOW = dt.datetime(2026, 12, 1, 12, 0, tzinfo=dt.UTC)
SCOPE = ArtifactScope("file:///var/lib/noria/store")


def mv(stage="Candidate", annotations=None, uri="file:///var/lib/noria/store/ml/churn/v7/model.skops", n=7,
       conditions=None) -> dict:
    return {"metadata": {"name": f"churn-v{n}", "namespace": "ml", "annotations": annotations or {}},
            "spec": {"pipeline": "churn", "version": n, "artifact": {"uri": uri, "digest": "sha256:" + "0" * 64}},
            "status": {"stage": stage, "history": [{"stage": "Candidate"}], "conditions": conditions or []}}


@pytest.mark.parametrize(("annotations", "stage", "by", "reason"), [
    ({"noria.dev/approve": "alice"}, "Approved", "user/alice", c.MANUALLY_APPROVED),
    ({"noria.dev/reject": "bob"}, "Rejected", "user/bob", c.MANUALLY_REJECTED),
    ({"noria.dev/approve": "alice", "noria.dev/reject": "bob"}, "Rejected", "user/bob", c.MANUALLY_REJECTED),
    ({"noria.dev/approve": "system:serviceaccount:ci:release"}, "Approved",
     "user/system:serviceaccount:ci:release", c.MANUALLY_APPROVED),
])
def test_a_manual_decision_records_the_person_named_in_the_annotation(annotations, stage, by, reason):
    patch = results.approval(mv(annotations=annotations), NOW)
    assert patch["stage"] == stage and patch["history"][-1]["by"] == by
    assert c.get_condition(patch["conditions"], c.APPROVED)["reason"] == reason
    assert by in patch["message"]


@pytest.mark.parametrize("stage", ["Approved", "Rejected", "Production"])
def test_only_a_candidate_is_decided_by_annotation(stage):
    assert results.approval(mv(stage, {"noria.dev/reject": "bob"}), NOW) is None


def test_out_of_scope_is_a_degraded_condition_once_then_nothing():
    bad = mv(uri="file:///var/lib/noria/store/ml2/churn/v1/model.skops")
    patch = results.scope_status(bad, SCOPE.check(bad), NOW)
    cond = c.get_condition(patch["conditions"], c.DEGRADED)
    assert (cond["status"], cond["reason"]) == (c.TRUE, c.ARTIFACT_OUT_OF_SCOPE)
    assert cond["message"].startswith("spec.artifact.uri ")
    marked = {**bad, "status": {**bad["status"], **patch}}
    assert results.scope_status(marked, SCOPE.check(marked), NOW) is None  # no second write, no second Event
    assert results.champion([marked]) is None  # never loaded by the trainer as the champion
    trusted = ArtifactScope("file:///var/lib/noria/store", ("file:///var/lib/noria/store/ml2/",))
    cleared = results.scope_status(marked, trusted.check(marked), NOW)
    assert c.get_condition(cleared["conditions"], c.DEGRADED)["reason"] == c.ARTIFACT_IN_SCOPE


def test_an_in_scope_version_gets_no_condition():
    good = mv()
    assert results.scope_status(good, SCOPE.check(good), NOW) is None


def test_champion_skips_an_out_of_scope_production_version():
    marked = mv("Production", n=8, conditions=[{"type": c.DEGRADED, "status": c.TRUE,
                                                "reason": c.ARTIFACT_OUT_OF_SCOPE, "message": "x"}])
    assert results.champion([mv("Approved", n=6), marked])["metadata"]["name"] == "churn-v6"


def test_a_version_created_first_by_someone_else_is_not_adopted_by_the_run():
    ours = mv()
    assert results.same_artifact(ours, ours)  # a re-run after a crash finds its own object
    theirs = mv(uri="file:///var/lib/noria/store/ml/churn/v7/other.skops")
    assert not results.same_artifact(theirs, ours)
    other_digest = mv()
    other_digest["spec"]["artifact"]["digest"] = "sha256:" + "1" * 64
    assert not results.same_artifact(other_digest, ours)
