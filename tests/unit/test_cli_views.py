"""The trees and tables of `kubectl noria get/history` (noria.cli.*_view, noria.cli.style): objects in, text out."""

from __future__ import annotations

import datetime as dt
from typing import Any

import pytest
from noria import contracts as ct
from noria.cli import pipeline_view, rollout_view
from noria.cli.style import Node, Style, human_seconds, tree, wants_colour

NOW = dt.datetime(2026, 12, 2, 8, 0, 30, tzinfo=dt.UTC)
PLAIN = Style(colour=False)


def field(text: str, key: str) -> str:
    return next(line.split(":", 1)[1].strip() for line in text.splitlines() if line.startswith(key + ":"))


def labelled(kind: str, name: str, version: str, component: str = ct.COMPONENT_SERVER, **extra: Any) -> dict:
    return {"metadata": {"name": name, "creationTimestamp": "2026-12-02T07:58:00Z",
                         "labels": {ct.LABEL_ROLLOUT: "churn", ct.LABEL_VERSION: version, ct.LABEL_COMPONENT: component}},
            "kind": kind, **extra}


ROLLOUT = {
    "metadata": {"name": "churn", "namespace": "ml", "creationTimestamp": "2026-12-02T07:50:00Z"},
    "spec": {"source": {"pipeline": "churn"}, "strategy": {"canary": {"steps": [
        {"setWeight": 25}, {"pause": {"duration": "1m"}}, {"setWeight": 60}]}},
        "analysis": {"interval": "5s", "checks": [{"builtin": "errorRate", "max": "0.05"},
                                                  {"builtin": "accuracy", "min": "0.8"}]}},
    "status": {"phase": "Progressing", "message": "step 1 of 4: pause 60s", "stableVersion": "churn-v1",
               "canaryVersion": "churn-v2", "currentStep": 1, "stepStartedAt": "2026-12-02T08:00:10Z",
               "weights": {"churn-v1": 75, "churn-v2": 25},
               "analysis": {"passed": 3, "failed": 0, "errors": 0, "inconclusive": 0, "last": {
                   "at": "2026-12-02T08:00:25Z", "outcome": "Waiting", "checks": [
                       {"name": "errorRate", "outcome": "Successful", "value": "0.0000"},
                       {"name": "accuracy", "outcome": "Waiting", "message": "12 of 100 labels"}]}}},
}
MVS = {"churn-v1": {"metadata": {"name": "churn-v1"}, "status": {"stage": "Production", "metric": "f1=0.83"}},
       "churn-v2": {"metadata": {"name": "churn-v2"}, "status": {"stage": "Canary", "metric": "f1=0.85"}}}
DEPLOYMENTS = [
    labelled("Deployment", "churn-churn-v1", "churn-v1", spec={"replicas": 1}, status={"readyReplicas": 1}),
    labelled("Deployment", "churn-churn-v2", "churn-v2", spec={"replicas": 1}, status={"readyReplicas": 0}),
    labelled("Deployment", "churn-router", "", component=ct.COMPONENT_ROUTER, spec={"replicas": 1},
             status={"readyReplicas": 1}),
]
PODS = [
    labelled("Pod", "churn-churn-v1-abc", "churn-v1", spec={"containers": [{}]},
             status={"phase": "Running", "containerStatuses": [{"ready": True}]}),
    labelled("Pod", "churn-churn-v2-def", "churn-v2", spec={"containers": [{}]},
             status={"phase": "Running", "containerStatuses": [{"ready": False}]}),
]


def test_the_rollout_tree_shows_versions_weights_the_current_step_and_the_last_analysis() -> None:
    text = rollout_view.render_rollout(ROLLOUT, MVS, DEPLOYMENTS, PODS, NOW, PLAIN)
    assert field(text, "Status") == "◌ Progressing"
    assert field(text, "Stable") == "churn-v1  75%  (Production)"
    assert field(text, "Canary") == "churn-v2  25%  (Canary)"
    assert field(text, "Step") == "1/4  (pause 60s)"
    lines = text.splitlines()
    assert "  ✔  0  setWeight 25" in lines
    assert "  ▶  1  pause 60s  running 20s, 40s left" in lines
    assert "     3  switch (all traffic, promote)" in lines
    assert any(line.split() == ["errorRate", "0.0000", "max", "0.05", "✔", "Successful"] for line in lines), text
    assert any(line.split()[:5] == ["accuracy", "-", "min", "0.8", "◌"] and "12 of 100 labels" in line
               for line in lines), text
    # The tree: Rollout -> versions -> Deployment -> pods, then the router.
    rows = [line for line in lines if "──" in line or line.startswith("⟳")]
    assert rows[0].split()[:4] == ["⟳", "churn", "Rollout", "◌"]
    assert "├──◆ churn-v1" in rows[1] and "stable, weight 75, f1=0.83" in rows[1]
    assert "│  └──⧉ churn-churn-v1" in rows[2] and "ready 1/1" in rows[2]
    assert "│     └──□ churn-churn-v1-abc" in rows[3] and "ready:1/1" in rows[3]
    assert "├──◆ churn-v2" in rows[4] and "canary, weight 25" in rows[4]
    assert "NotReady" in rows[6] and "ready:0/1" in rows[6]
    assert "└──⧉ churn-router" in rows[7]
    assert "\033[" not in text


def test_a_steady_rollout_has_no_step_list() -> None:
    steady = {**ROLLOUT, "status": {"phase": "Healthy", "stableVersion": "churn-v1", "weights": {"churn-v1": 100}}}
    text = rollout_view.render_rollout(steady, MVS, DEPLOYMENTS[:1], PODS[:1], NOW, PLAIN)
    assert "Steps:" not in text and field(text, "Stable") == "churn-v1  100%  (Production)"
    assert rollout_view.rollout_row(steady) == ["ml", "churn", "Healthy", "churn-v1", "", "", ""]


def test_a_paused_rollout_says_how_to_resume() -> None:
    paused = {**ROLLOUT, "spec": {**ROLLOUT["spec"], "paused": True}}
    assert "kubectl noria resume churn" in field(rollout_view.render_rollout(paused, MVS, [], [], NOW, PLAIN), "Paused")


def test_colour_only_on_a_terminal_without_no_color() -> None:
    assert wants_colour(True, {}) and not wants_colour(False, {})
    assert not wants_colour(True, {"NO_COLOR": "1"}) and not wants_colour(True, {"TERM": "dumb"})
    coloured = rollout_view.render_rollout(ROLLOUT, MVS, DEPLOYMENTS, PODS, NOW, Style(colour=True))
    assert "\033[33m◌ Progressing\033[0m" in coloured


def test_every_stage_has_its_symbol() -> None:
    """An unknown word prints bare; a stage added to noria.contracts must get a symbol too."""
    for stage in ct.STAGES:
        assert PLAIN.status(stage) != stage, stage
    assert PLAIN.status(ct.PRODUCTION) == f"✔ {ct.PRODUCTION}" and PLAIN.status(ct.REJECTED) == f"✖ {ct.REJECTED}"


def test_tree_columns_align_with_colour_on() -> None:
    root = Node("a", "Rollout", "Healthy", children=[Node("bb", "Pod", "Degraded", "1m", "x")])
    plain, coloured = tree(root, PLAIN), tree(root, Style(colour=True))
    strip = [line.replace("\033[32m", "").replace("\033[31m", "").replace("\033[90m", "").replace("\033[0m", "")
             for line in coloured]
    assert strip == plain
    assert plain[2].index("1m") == plain[0].index("AGE")


@pytest.mark.parametrize("seconds, text", [(5, "5s"), (65, "1m5s"), (120, "2m"), (3725, "1h2m"), (90000, "1d1h")])
def test_ages_read_like_kubectl(seconds, text) -> None:
    assert human_seconds(seconds) == text


PIPELINE = {
    "metadata": {"name": "churn", "namespace": "ml", "annotations": {ct.ANNOTATION_RETRAIN: "alice x"}},
    "spec": {"model": {"task": "classification", "estimator": "sklearn.linear_model.LogisticRegression"},
             "triggers": {"schedule": "0 2 * * 0", "newData": {"minNewRows": 1000},
                          "drift": {"threshold": "0.2", "for": "10m"},
                          "performance": {"metric": "f1", "below": "0.75", "for": "5m"}, "cooldown": "1h"}},
    "status": {"phase": "Training", "championVersion": "churn-v3", "latestVersion": "churn-v3",
               "cooldownUntil": "2026-12-02T08:10:30Z",
               "currentRun": {"id": "churn-r4", "trigger": "drift", "job": "churn-r4", "version": "churn-v4",
                              "startedAt": "2026-12-02T07:59:30Z", "reason": "psi 0.31 > 0.2 on tenure"},
               "lastRuns": [{"id": "churn-r3", "trigger": "manual", "outcome": "Succeeded", "duration": "41s",
                             "startedAt": "2026-12-02T07:00:00Z", "version": "churn-v3",
                             "reason": "LastRunSucceeded"}],
               "triggers": {
                   "schedule": {"schedule": "0 2 * * 0", "next": "2026-12-06T02:00:00Z"},
                   "newData": {"rows": 5400, "baseline": {"rows": 5000}, "observedAt": "2026-12-02T08:00:20Z"},
                   "drift": {"method": "psi", "state": "Above", "value": "0.3100", "feature": "tenure", "samples": 800,
                             "tested": 2, "drifted": 1, "since": "2026-12-02T07:58:30Z",
                             "features": [{"feature": "tenure", "value": "0.3100", "pValue": "1e-05", "samples": 800,
                                           "drifted": True},
                                          {"feature": "charges", "value": "0.0100", "pValue": "0.8", "samples": 800,
                                           "drifted": False}]},
                   "performance": {"metric": "f1", "state": "Above", "value": "0.8100", "labels": 240},
                   "manual": {"handled": "alice x", "handledAt": "2026-12-02T07:00:00Z"}}},
}


def test_the_pipeline_shows_each_trigger_against_its_threshold() -> None:
    text = pipeline_view.render_pipeline(PIPELINE, list(MVS.values()), NOW, PLAIN)
    assert field(text, "Current run").startswith("churn-r4 (drift), started 1m ago, job churn-r4, will register churn-v4")
    lines = text.splitlines()
    assert "  schedule     '0 2 * * 0': next run 2026-12-06 02:00:00 (in 3d17h)" in lines
    assert "  newData      400 new rows of 1000 needed (5400 in total, observed 10s ago)" in lines
    drift = next(line for line in lines if line.startswith("  drift"))
    assert "psi > 0.2: largest 0.3100 on tenure" in drift and "for 2m of 10m" in drift and "✖ Above" in drift
    assert any(line.split() == ["tenure", "0.3100", "0.2", "1e-05", "800", "yes"] for line in lines)
    assert "  performance  live f1 0.8100 (below 0.75) over 240 labels [✖ Above]" in lines
    assert "  manual       noria.dev/retrain='alice x' handled 1h0m ago" in lines or \
        "  manual       noria.dev/retrain='alice x' handled 1h ago" in lines
    assert "  cooldown     1h: 10m left (until 2026-12-02 08:10:30)" in lines
    assert any(line.split()[:3] == ["churn-r3", "manual", "Succeeded"] for line in lines)


def test_history_lists_every_stage_change_in_time_order() -> None:
    v1 = {"metadata": {"name": "churn-v1"}, "spec": {"version": 1}, "status": {"stage": "Retired", "history": [
        {"stage": "Approved", "at": "2026-12-01T10:00:00Z", "by": "pipeline/churn", "reason": "gate passed"},
        {"stage": "Production", "at": "2026-12-01T10:01:00Z", "by": "rollout/churn", "reason": "first version"},
        {"stage": "Retired", "at": "2026-12-02T07:00:00Z", "by": "rollout/churn", "reason": "churn-v2 promoted"}]}}
    v2 = {"metadata": {"name": "churn-v2"}, "spec": {"version": 2}, "status": {"stage": "Production", "history": [
        {"stage": "Canary", "at": "2026-12-02T06:50:00Z", "by": "rollout/churn", "reason": "canary started"},
        {"stage": "Production", "at": "2026-12-02T07:00:00Z", "by": "rollout/churn", "reason": "promoted"}]}}
    text = pipeline_view.render_pipeline_history(PIPELINE, [v1, v2], NOW, PLAIN)
    table = text.split("Stage history (what served when, and why):\n")[1].splitlines()
    assert [row.split()[2:4] for row in table[1:]] == [
        ["churn-v1", "Approved"], ["churn-v1", "Production"], ["churn-v2", "Canary"],
        ["churn-v1", "Retired"], ["churn-v2", "Production"]]
    versions = text.split("Versions:\n")[1].splitlines()
    assert versions[1].split()[:2] == ["churn-v2", "Production"]  # newest first
