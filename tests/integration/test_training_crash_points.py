"""Crash points of the training side: an operator killed right after any side effect of a
TrainingPipeline pass (a run's status, Events, ConfigMap, Job; its ModelVersion created, staged,
announced; the run recorded; old runs pruned; a failed pass reported and the recovery after it) or
of a ModelVersion's judgement (scope, registration, approval, their Events), then started again,
finishes the run exactly once: one Job, one ModelVersion per run (the run id is deterministic, a
version is never registered twice), status agreeing, no ReconcileError left.

How it stays cheap: one namespace, one data set, one operator at a time. Points are armed per object
(``NORIA_FAILPOINT=<point>@<pipeline or version>``, see noria.failpoints), so pipelines that already
passed their points run on in the background while the next one is armed, and one pass is crashed
at several points in a row (each restarted operator resumes the pass its predecessor died in and is
armed at the next point of that pass). Only one object is armed at a time: a crash elsewhere while
an armed object's write is in flight could land that write without its point firing. The dask
points (DaskCluster created and deleted) are covered by the unit test only
(tests/unit/training/test_training_failpoints.py).
"""

from __future__ import annotations

import json
import time

import pytest
from noria import failpoints as fp
from noria_testbed.processes import ProcessExited
from training_helpers import (
    classification_frame,
    condition,
    get,
    jobs,
    pipeline_yaml,
    status,
    wait_for,
    write_data,
)

pytestmark = pytest.mark.integration

QUOTA = """
apiVersion: v1
kind: ResourceQuota
metadata: {name: no-config-maps}
spec: {hard: {configmaps: "0"}}
"""


class Bed:
    """The namespace, the operator currently running on it, and the problems seen so far."""

    def __init__(self, cluster, namespace: str, operator_factory, request) -> None:  # noqa: ANN001
        self.cluster, self.ns, self.factory, self.request = cluster, namespace, operator_factory, request
        self.operator = None
        self.problems: list[str] = []
        self.crashes = 0
        self.points: set[str] = set()

    def start(self, point: str | None = None) -> None:
        if self.operator is not None:
            self.operator.kill(9)
        env = {fp.ENV: point} if point else {}
        try:
            self.operator = self.factory(self.ns, **env)
        except ProcessExited:  # it reached its point before /healthz answered: fine if it died there
            self.operator = self.request.node.noria_operators[-1]

    def crash(self, point: str, key: str, action=None, timeout: float = 45.0) -> None:  # noqa: ANN001
        """An operator armed at ``point`` for ``key``; ``action`` reaches it; it must die there."""
        self.points.add(point)
        self.start(f"{point}@{key}")
        if action is not None:
            action()
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            code = self.operator.process.poll()
            if code is not None:
                if code != fp.EXIT_CODE or f"noria failpoint {point}@{key}:" not in self.operator.log():
                    self.problems.append(f"{point}@{key}: the operator exited with {code} elsewhere")
                self.crashes += 1
                return
            time.sleep(0.2)
        self.problems.append(f"{point}@{key}: not reached within {timeout:.0f} s")

    def apply(self, manifest: str) -> None:
        self.cluster.kubectl("apply", "-n", self.ns, "-f", "-", input=manifest)


def hand_made_version(version: int, uri: str, **annotations: str) -> str:
    """ModelVersion hand-v<version>, created by hand (no run registered it): its judgement writes
    scope, registration and approval."""
    name = f"hand-v{version}"
    return json.dumps({
        "apiVersion": "noria.dev/v1alpha1", "kind": "ModelVersion",
        "metadata": {"name": name, "annotations": annotations},
        "spec": {"pipeline": "hand", "version": version,
                 "artifact": {"uri": uri, "digest": "sha256:" + "ab" * 32, "format": "skops"},
                 "metrics": {"f1": "0.8"}, "lineage": {"run": "manual-import", "trigger": "manual"}}})


def history(mv: dict) -> list[str]:
    return [h["stage"] for h in (mv.get("status") or {}).get("history") or []]


def pipeline_problem(cluster, namespace: str, name: str, runs: int) -> str | None:  # noqa: ANN001
    """What disagrees with ``runs`` runs done exactly once (None when all agrees)."""
    st = status(cluster, namespace, name)
    own_jobs = sorted(j["metadata"]["name"] for j in jobs(cluster, namespace, name))
    config_maps = sorted(m["metadata"]["name"] for m in get(cluster, namespace, "configmaps",
                                                            selector=f"noria.dev/pipeline={name}") or [])
    versions = {m["metadata"]["name"]: m for m in get(cluster, namespace, "modelversions") or []
                if m["spec"].get("pipeline") == name}
    latest = f"{name}-v{runs}"
    expected_runs = [f"{name}-r{runs}"]  # historyLimit 1 (prune) keeps the last; the others ran once
    if st.get("runCounter") != runs or st.get("currentRun") or st.get("phase") != "Ready":
        return f"{name}: status {json.dumps(st)[:600]}"
    if condition(st, "Reconciled").get("status") == "False":
        return f"{name}: ReconcileError left: {condition(st, 'Reconciled')}"
    if own_jobs != expected_runs or config_maps != expected_runs:
        return f"{name}: Jobs {own_jobs}, ConfigMaps {config_maps}, expected {expected_runs}"
    if sorted(versions) != [f"{name}-v{n}" for n in range(1, runs + 1)]:
        return f"{name}: ModelVersions {sorted(versions)}"
    if any(history(mv) != ["Candidate", "Approved"] for mv in versions.values()):
        return f"{name}: stage histories {[history(mv) for mv in versions.values()]}"
    if st.get("championVersion") != latest or len(st.get("lastRuns") or []) != 1:
        return f"{name}: champion {st.get('championVersion')}, lastRuns {st.get('lastRuns')}"
    return None


@pytest.mark.timeout(600)
def test_a_crash_after_any_side_effect_of_training_finishes_each_run_exactly_once(
        cluster, namespace, store_claim, operator_factory, request):
    started = time.monotonic()
    store_claim(namespace)
    source = write_data(cluster.store_dir, namespace, "shared", classification_frame(300))
    bed = Bed(cluster, namespace, operator_factory, request)

    # A failed pass (the run's ConfigMap refused by a quota) is reported; then the quota goes and
    # the next pass gets through and says so.
    bed.apply(QUOTA)
    wait_for("quota in force", lambda: (get(cluster, namespace, "resourcequota", "no-config-maps") or {}).get(
        "status", {}).get("hard"), timeout=30)
    bed.crash(fp.TRAINING_ERROR_REPORTED, "errors", lambda: bed.apply(pipeline_yaml("errors", source)))
    cluster.kubectl("delete", "resourcequota", "no-config-maps", "-n", namespace)
    bed.crash(fp.TRAINING_RECOVERED, "errors")

    # Runs in the background (no point armed for it) until its second run, which prunes the first.
    bed.apply(pipeline_yaml("prune", source, extra={"historyLimit": 1}))

    # One run crashed at each of its writes in turn: the start pass, then the finish pass.
    bed.crash(fp.TRAINING_STATUS_WRITTEN, "chain", lambda: bed.apply(pipeline_yaml("chain", source)))
    for point in (fp.TRAINING_CONFIG_MAP_CREATED, fp.TRAINING_JOB_CREATED):
        bed.crash(point, "chain")
    bed.crash(fp.TRAINING_VERSION_CREATED, "chain", timeout=150)  # the trainer runs meanwhile
    for point in (fp.TRAINING_VERSION_STAGED, fp.TRAINING_RUN_RECORDED):
        bed.crash(point, "chain")

    # Another run crashed after its first Event, after its version's Event, and after the Events of
    # the pass that records it (each crash point above is past the Events of its pass).
    bed.crash(fp.TRAINING_EVENTS_POSTED, "events", lambda: bed.apply(pipeline_yaml("events", source)))
    bed.crash(fp.TRAINING_VERSION_EVENT, "events", timeout=150)
    bed.crash(fp.TRAINING_EVENTS_POSTED, "events")

    # ModelVersions made by hand: out of scope (another namespace's store folder); registered, then
    # approved; the Event of a registration.
    store = "file:///var/lib/noria/store"
    outside, imported, noted = "hand-v1", "hand-v2", "hand-v3"
    bed.crash(fp.VERSION_SCOPE_WRITTEN, outside,
              lambda: bed.apply(hand_made_version(1, f"{store}/{namespace}-other/hand/v1/model.skops")))
    bed.crash(fp.VERSION_REGISTRATION_WRITTEN, imported, lambda: bed.apply(hand_made_version(
        2, f"{store}/{namespace}/hand/v2/model.skops", **{"noria.dev/approve": "alice"})))
    bed.crash(fp.VERSION_APPROVAL_WRITTEN, imported)
    bed.crash(fp.VERSION_EVENT_POSTED, noted,
              lambda: bed.apply(hand_made_version(3, f"{store}/{namespace}/hand/v3/model.skops")))

    # The second run of "prune" deletes the first run's Job (then its ConfigMap, after the crash).
    wait_for("prune-v1", lambda: status(cluster, namespace, "prune").get("championVersion") == "prune-v1",
             timeout=120, on_timeout=lambda: json.dumps(status(cluster, namespace, "prune"))[:2000])
    bed.crash(fp.TRAINING_PRUNED, "prune", lambda: cluster.kubectl(
        "annotate", "trainingpipeline", "prune", "-n", namespace, "noria.dev/retrain=again"), timeout=150)

    # A clean operator: every run done once, every version judged once.
    bed.start()
    for name, runs in (("errors", 1), ("chain", 1), ("events", 1), ("prune", 2)):
        try:
            wait_for(f"{name} agrees", lambda name=name, runs=runs: pipeline_problem(cluster, namespace, name, runs)
                     is None, timeout=90)
        except TimeoutError:
            bed.problems.append(pipeline_problem(cluster, namespace, name, runs) or f"{name}: timed out")
    versions = {name: get(cluster, namespace, "modelversion", name) for name in (outside, imported, noted)}
    wait_for("hand-made versions judged", lambda: all(
        (get(cluster, namespace, "modelversion", n).get("status") or {}).get("stage") for n in versions), timeout=30)
    versions = {name: get(cluster, namespace, "modelversion", name) for name in versions}
    expected = {outside: ["Registered"], imported: ["Registered", "Approved"], noted: ["Registered"]}
    for name, mv in versions.items():
        if history(mv) != expected[name]:
            bed.problems.append(f"{name}: history {history(mv)}, expected {expected[name]}")
    if condition(versions[outside]["status"], "Degraded").get("reason") != "ArtifactOutOfScope":
        bed.problems.append(f"{outside}: conditions {versions[outside]['status'].get('conditions')}")
    assert not bed.problems, "\n".join(bed.problems)
    assert bed.crashes == 16
    # Every training point but the dask ones (no Dask operator on the test bed: unit test only).
    assert bed.points == set(fp.TRAINING_NAMES) - {fp.TRAINING_DASK_CLUSTER_CREATED, fp.TRAINING_DASK_CLUSTER_DELETED}
    print(f"\n{bed.crashes} crashes, {time.monotonic() - started:.0f} s")
