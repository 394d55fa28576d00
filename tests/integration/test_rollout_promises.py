"""Four promises of the Rollout API, kept on the real test bed (API server, operator, router, model
servers, Prometheus): what the unit tables of ``tests/unit/deployment/test_rollout_decide.py`` say,
seen through the objects a user reads.

- ``rollbackWindow``: churn-v2 is promoted to all traffic; inside the window its analysis goes on and
  fails (its live accuracy collapses), so traffic goes back to churn-v1's Deployment, which was kept
  running (same Deployment, same pod): Degraded ``RolledBack``, churn-v2 Rejected, churn-v1 Production
  again, no request lost.
- ``steps[].analysis.count: 3``: the step goes on only after three consecutive successful
  measurements (every status the operator writes is read through a watch); on that promotion the
  ``rollbackWindow`` ends without a failure, and churn-v1, kept until then, is scaled down.
- ``noria.dev/promote`` past an inconclusive analysis at a ``pause: {}`` step goes past that step
  once (``currentStep`` moves on and stays), instead of being swallowed by the pause.
- a Rollout pinned with ``source.modelVersion`` to an imported ModelVersion (Registered, then
  approved) whose digest is wrong: ``ArtifactVerificationFailed`` naming both digests, never "not
  approved", pass after pass; it never serves, and its refused server is scaled down, not restarted.

The steps are the cheapest that show each promise (CI time): one server pod start per version.
One operator watches the module's four namespaces (one per test); each test overrides the
``namespace`` fixture with its own, so the failure report still attaches that namespace's pod logs.
"""

from __future__ import annotations

import json
import secrets
import subprocess
import sys
import threading
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest
from noria import conditions as c
from noria_testbed.processes import ManagedProcess, free_port, wait_until
from rollout_helpers import (
    PIPELINE,
    condition,
    create_model_version,
    get,
    operator_env,
    rollout,
    rollout_status,
    save_model,
    stage_of,
    start_stable,
    wait_for,
    wall_time,
)

pytestmark = pytest.mark.integration

TESTS = ("window", "count", "promote", "digest")  # one namespace each
LEASE_NAMESPACE = "noria-system"
WRONG_DIGEST = "sha256:" + "ab" * 32


class ModuleOperator:
    """``python -m noria`` watching several namespaces (``--namespace`` repeated), with the env of
    conftest's ``operator_factory``; ``log()`` and ``log_path`` as its OperatorProcess, so the
    operator-log section of a failure report works the same."""

    def __init__(self, cluster, namespaces: list[str], env: dict[str, str]) -> None:  # noqa: ANN001
        self.log_path: Path = cluster.log_dir / f"operator-promises-{namespaces[0]}.log"
        lease = f"noria-operator-promises-{secrets.token_hex(3)}"
        self.env = {
            **cluster.env, "PYTHONUNBUFFERED": "1",
            "NORIA_STORE_ROOT": "file:///var/lib/noria/store",
            "NORIA_LOCAL_STORE_ROOT": f"file://{cluster.store_dir}",
            "NORIA_TRAINER_IMAGE": "noria-trainer:test", "NORIA_SERVER_IMAGE": "noria-server:test",
            "NORIA_PROMETHEUS_TIMEOUT": "2", "NORIA_METRICS_PORT": str(free_port()),
            "NORIA_TRAINING_RESYNC_SECONDS": "2", "NORIA_TRIGGER_SETTLE_SECONDS": "1",
            "POD_NAME": lease, "NORIA_LEADER_NAMESPACE": LEASE_NAMESPACE, "NORIA_LEADER_LEASE_NAME": lease,
            **env,
        }
        port = free_port()
        args = [sys.executable, "-m", "noria", "--liveness", f"http://127.0.0.1:{port}/healthz"]
        for ns in namespaces:
            args += ["--namespace", ns]
        self.process = ManagedProcess("operator", args, self.log_path, env=self.env)

        def live() -> bool:
            self.process.check_alive()
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=2) as response:
                return response.status == 200

        wait_until("operator liveness", live, timeout=60, on_timeout=lambda: self.log()[-3000:])

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def stop(self) -> None:
        self.process.stop(grace=20)


@pytest.fixture(scope="module")
def promises(cluster, prometheus) -> Iterator[tuple[dict[str, str], ModuleOperator]]:  # noqa: ANN001
    namespaces = {test: f"t-{test}-{secrets.token_hex(3)}" for test in TESTS}
    if cluster.kubectl("get", "namespace", LEASE_NAMESPACE, check=False).returncode != 0:
        cluster.kubectl("create", "namespace", LEASE_NAMESPACE, check=False)
    for ns in namespaces.values():
        cluster.kubectl("create", "namespace", ns)
    for ns in namespaces.values():
        wait_until(f"ServiceAccount default in {ns}", lambda ns=ns: cluster.kubectl(
            "get", "serviceaccount", "default", "-n", ns, check=False).returncode == 0, timeout=30)
    operator = ModuleOperator(cluster, list(namespaces.values()), operator_env(prometheus.url))
    try:
        yield namespaces, operator
    finally:
        operator.stop()
        for ns in namespaces.values():
            cluster.kubectl("delete", "namespace", ns, "--wait=false", check=False)


@pytest.fixture
def namespace(promises, request) -> str:  # noqa: ANN001
    """This test's namespace (overrides conftest's: the module's operator already watches it)."""
    namespaces, operator = promises
    request.node.noria_operators = [operator]  # integration conftest: its log tail on a failure
    return namespaces[request.node.originalname.split("_", 2)[1]]


def running(namespace: str, **env: str) -> None:
    """``start_stable``'s operator factory here: the module's operator watches the namespace already."""


def store_claim(cluster, ns: str) -> None:  # noqa: ANN001
    cluster.kubectl("apply", "-n", ns, "-f", "-", input="""
apiVersion: v1
kind: PersistentVolumeClaim
metadata: {name: noria-store}
spec: {accessModes: [ReadWriteMany], resources: {requests: {storage: 1Gi}}}
""")


def serving(cluster, namespace: str, manifest: str, feedback: bool = False):  # noqa: ANN001, ANN201
    """churn-v1 serving users through the Rollout ``manifest`` (rollout_helpers.start_stable)."""
    _, traffic = start_stable(cluster, namespace, running, lambda ns: store_claim(cluster, ns), {}, manifest,
                              feedback=feedback)
    return traffic


class StatusWatch:
    """Every version of the Rollout's status the API server holds, in order (``kubectl get -w``)."""

    def __init__(self, cluster, namespace: str, name: str = PIPELINE) -> None:  # noqa: ANN001
        self.seen: list[dict] = []
        self.proc = subprocess.Popen(
            [str(cluster.binaries / "kubectl"), "get", "rollouts.noria.dev", name, "-n", namespace, "-o", "json",
             "--watch"], stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True, env=cluster.env)
        self.thread = threading.Thread(target=self._read, daemon=True)
        self.thread.start()

    def _read(self) -> None:
        decoder, buffer = json.JSONDecoder(), ""
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            buffer += line
            try:
                item, end = decoder.raw_decode(buffer.lstrip())
            except json.JSONDecodeError:
                continue
            buffer = buffer.lstrip()[end:]
            self.seen.append(item.get("status") or {})

    def stop(self) -> None:
        self.proc.terminate()
        self.proc.wait(10)


def pod_uids(cluster, namespace: str, version: str) -> dict[str, int]:  # noqa: ANN001
    """{pod uid: restarts} of a version's model-server pods."""
    pods = json.loads(cluster.kubectl("get", "pods", "-n", namespace, "-l", f"noria.dev/version={version}",
                                      "-o", "json").stdout)["items"]
    return {p["metadata"]["uid"]: sum(s.get("restartCount", 0) for s in p["status"].get("containerStatuses") or [])
            for p in pods}


def events_of(cluster, namespace: str, name: str) -> list[dict]:  # noqa: ANN001
    out = cluster.kubectl("get", "events", "-n", namespace, "--field-selector", f"involvedObject.name={name}",
                          "-o", "json")
    return json.loads(out.stdout)["items"]


def test_window_a_failure_after_promotion_rolls_back_to_the_running_previous_version(
        cluster, namespace):
    started = time.monotonic()
    # The accuracy check reads a short window so that what happens after the promotion decides it soon.
    analysis = {"interval": "3s", "failureLimit": 0,
                "checks": [{"builtin": "accuracy", "min": "0.7", "minLabels": 3, "window": "6s"}]}
    manifest = rollout(namespace, {"canary": {"steps": [{"setWeight": 50}]}}, analysis=analysis,
                       rollbackWindow="60s")
    traffic = serving(cluster, namespace, manifest, feedback=True)
    true_labels = traffic.labels
    try:
        v1_deployment = get(cluster, namespace, "deployment", "churn-churn-v1")["metadata"]["uid"]
        v1_pods = pod_uids(cluster, namespace, "churn-v1")
        create_model_version(cluster, save_model(cluster.store_dir, namespace, 2, seed=1))  # a good model
        st = wait_for("churn-v2 promoted after a successful canary analysis",
                      lambda: (s := rollout_status(cluster, namespace)).get("stableVersion") == "churn-v2" and s,
                      timeout=150, on_timeout=lambda: str(rollout_status(cluster, namespace)))
        # From now on the labels say churn-v2 is wrong (its world changed after the promotion).
        traffic.labels = 1 - true_labels
        promoted_wall = time.time()
        assert st["previousVersion"] == "churn-v1" and st["rollbackWindowEndsAt"]
        assert st["weights"] == {"churn-v2": 100} and stage_of(cluster, namespace, "churn-v2") == "Production"
        st = wait_for("rolled back inside the rollbackWindow",
                      lambda: (s := rollout_status(cluster, namespace)).get("stableVersion") == "churn-v1" and s,
                      timeout=60, on_timeout=lambda: str(rollout_status(cluster, namespace)))
        rolled_back_after = time.time() - promoted_wall
        degraded = condition(st, c.DEGRADED)
        assert degraded["status"] == c.TRUE and degraded["reason"] == c.ROLLOUT_ROLLED_BACK, degraded
        assert "accuracy" in degraded["message"] and "churn-v1" in degraded["message"]
        assert st["weights"] == {"churn-v1": 100} and not st.get("previousVersion")
        assert st["lastVerdict"]["version"] == "churn-v2" and st["lastVerdict"]["reason"] == c.ROLLOUT_ROLLED_BACK
        assert st["analysis"]["last"]["outcome"] == "Failed"
        mv2 = wait_for("churn-v2 Rejected", lambda: (m := get(cluster, namespace, "modelversion", "churn-v2"))
                       and m["status"]["stage"] == "Rejected" and m, timeout=15)
        assert mv2["status"]["history"][-1]["by"] == f"rollout/{PIPELINE}"
        assert "rolled back to churn-v1" in mv2["status"]["message"]
        mv1 = wait_for("churn-v1 Production again", lambda: (m := get(cluster, namespace, "modelversion", "churn-v1"))
                       and m["status"]["stage"] == "Production" and m, timeout=15)
        assert [h["stage"] for h in mv1["status"]["history"]][-3:] == ["Production", "Retired", "Production"]
        assert ("Warning", c.ROLLOUT_ROLLED_BACK) in {(e["type"], e["reason"])
                                                      for e in events_of(cluster, namespace, PIPELINE)}
        # The same Deployment and the same pod took the traffic back: nothing was started again.
        assert get(cluster, namespace, "deployment", "churn-churn-v1")["metadata"]["uid"] == v1_deployment
        assert pod_uids(cluster, namespace, "churn-v1") == v1_pods
        decided_at = wall_time(st["analysis"]["last"]["at"])
        time.sleep(3)
        late = [a for a in traffic.answers if a.version == "churn-v2" and a.wall > decided_at + 2.0]
        assert not late, f"{len(late)} answers from churn-v2 more than 2 s after the rollback"
        assert all(a.status == 200 for a in traffic.answers), traffic.failures(decided_at)
        print(f"FIGURE rollbackWindow: promotion -> rollback {rolled_back_after:.1f}s; "
              f"test {time.monotonic() - started:.0f}s")
    finally:
        traffic.stop()


def test_count_three_successes_before_the_step_goes_on_then_the_window_retires_the_previous_version(
        cluster, namespace):
    """``analysis.count: 3``; and, on the same promotion (no failure this time), ``rollbackWindow``
    keeps churn-v1's Deployment until the window ends, then scales it down."""
    started = time.monotonic()
    # inconclusive: fail, tolerated: an early measurement that races Prometheus's first scrapes of the
    # candidate restarts the count instead of pausing the test for a person.
    analysis = {"interval": "2s", "failureLimit": 20, "inconclusive": "fail",
                "checks": [{"builtin": "errorRate", "max": "0.05"}]}
    steps = [{"setWeight": 50}, {"analysis": {"count": 3}}]
    manifest = rollout(namespace, {"canary": {"steps": steps}}, analysis=analysis, rollbackWindow="8s")
    traffic = serving(cluster, namespace, manifest)
    watch = StatusWatch(cluster, namespace)
    try:
        v1_pods = pod_uids(cluster, namespace, "churn-v1")
        create_model_version(cluster, save_model(cluster.store_dir, namespace, 2, seed=1))
        st = wait_for("churn-v2 promoted", lambda: (s := rollout_status(cluster, namespace)).get(
            "stableVersion") == "churn-v2" and s, timeout=150, on_timeout=lambda: str(rollout_status(cluster, namespace)))
        ends = wall_time(st["rollbackWindowEndsAt"])
        time.sleep(0.5)  # the watch has the writes up to the promotion
        seen = list(watch.seen)
        at_step = [s for s in seen if s.get("canaryVersion") == "churn-v2" and s.get("currentStep") == 1]
        assert at_step, [(s.get("currentStep"), s.get("analysis")) for s in seen]
        streaks = [s["analysis"]["consecutiveSuccesses"] for s in at_step]
        # One and two successes were each written while the step held; it never went on with fewer than 3.
        assert {1, 2} <= set(streaks) and max(streaks) < 3, streaks
        messages = [condition(s, c.PROGRESSING).get("message", "") for s in at_step]
        assert any("1 of 3 consecutive successful measurements" in m for m in messages), messages
        assert any("2 of 3 consecutive successful measurements" in m for m in messages), messages
        # The status that left the step (or, if that write was coalesced, the promotion) counts three
        # successes in a row, each a distinct measurement taken since the step began.
        step_began = wall_time(at_step[0]["stepStartedAt"])
        left = next(s for s in seen if (s.get("canaryVersion") == "churn-v2" and s.get("currentStep") == 2)
                    or s.get("stableVersion") == "churn-v2")
        assert left["analysis"]["consecutiveSuccesses"] >= 3, left["analysis"]
        successes = {s["analysis"]["last"]["at"] for s in [*at_step, left]
                     if (s["analysis"].get("last") or {}).get("outcome") == "Successful"
                     and wall_time(s["analysis"]["last"]["at"]) >= step_began}
        assert len(successes) >= 3, (successes, streaks)

        # The rollbackWindow: churn-v1 keeps its Deployment and its pod while the analysis of churn-v2 goes on.
        assert st["previousVersion"] == "churn-v1"
        while time.time() < ends - 1.5:
            assert get(cluster, namespace, "deployment", "churn-churn-v1") is not None
            assert rollout_status(cluster, namespace).get("previousVersion") == "churn-v1"
            time.sleep(1)
        assert pod_uids(cluster, namespace, "churn-v1") == v1_pods
        wait_for("churn-v1 scaled down after the window",
                 lambda: get(cluster, namespace, "deployment", "churn-churn-v1") is None, timeout=30)
        gone_after = time.time() - ends
        st = rollout_status(cluster, namespace)
        assert st["stableVersion"] == "churn-v2" and not st.get("previousVersion")
        assert not st.get("rollbackWindowEndsAt") and st["phase"] == "Healthy"
        assert st["analysis"]["passed"] >= 1  # tallies restart at the promotion: measured inside the window
        assert stage_of(cluster, namespace, "churn-v1") == "Retired"
        assert any("rollbackWindow over" in e["message"] for e in events_of(cluster, namespace, PIPELINE))
        print(f"FIGURE count: streaks seen at the analysis step {streaks}; window end -> previous Deployment "
              f"deleted {gone_after:+.1f}s; test {time.monotonic() - started:.0f}s")
    finally:
        watch.stop()
        traffic.stop()


def test_promote_goes_past_a_pause_step_held_by_an_inconclusive_analysis(cluster, namespace):
    started = time.monotonic()
    steps = [{"setWeight": 20}, {"pause": {}}, {"setWeight": 50}, {"pause": {}}]
    manifest = rollout(namespace, {"canary": {"steps": steps}},
                       analysis={"interval": "2s", "inconclusive": "pause",
                                 "checks": [{"builtin": "errorRate", "max": "0.05"}]})
    traffic = serving(cluster, namespace, manifest)
    traffic.stop()  # nobody calls the model: every measurement of churn-v2 is inconclusive
    create_model_version(cluster, save_model(cluster.store_dir, namespace, 2, seed=1))
    st = wait_for("paused at step 1 on an inconclusive analysis",
                  lambda: (s := rollout_status(cluster, namespace)).get("currentStep") == 1
                  and condition(s, c.PAUSED).get("reason") == c.ROLLOUT_ANALYSIS_INCONCLUSIVE and s, timeout=150,
                  on_timeout=lambda: str(rollout_status(cluster, namespace)))
    assert st["weights"] == {"churn-v1": 80, "churn-v2": 20}
    watch = StatusWatch(cluster, namespace)
    try:
        cluster.kubectl("annotate", "rollouts.noria.dev", PIPELINE, "-n", namespace, "noria.dev/promote=true")
        # Past the pause at step 1, with the raise to 50% the next step asks for; then held again by the
        # analysis, still inconclusive, at step 2 or at the next gate (the pause at step 3): one gate only.
        wait_for("past the pause", lambda: (rollout_status(cluster, namespace).get("currentStep") or 0) >= 2,
                 timeout=20, on_timeout=lambda: str(rollout_status(cluster, namespace)))
        time.sleep(4)  # two intervals: the promote was not swallowed by the next inconclusive measurement
        st = rollout_status(cluster, namespace)
        assert st["currentStep"] in (2, 3) and st["canaryVersion"] == "churn-v2", st
        assert st["weights"] == {"churn-v1": 50, "churn-v2": 50} and st["stableVersion"] == "churn-v1"
        assert condition(st, c.PAUSED).get("status") == c.TRUE
        annotations = get(cluster, namespace, "rollouts.noria.dev", PIPELINE)["metadata"].get("annotations") or {}
        assert "noria.dev/promote" not in annotations  # consumed once, by the pass that acted on it
        steps_seen = [s.get("currentStep") for s in watch.seen if s.get("canaryVersion") == "churn-v2"]
        past = next(i for i, step in enumerate(steps_seen) if (step or 0) >= 2)
        assert 1 not in steps_seen[past:], steps_seen  # never back at the step it was promoted past
        assert stage_of(cluster, namespace, "churn-v2") == "Canary"
        assert any("promoted past step 1" in e["message"] for e in events_of(cluster, namespace, PIPELINE))
        print(f"FIGURE promote past inconclusive: steps seen {steps_seen}; test {time.monotonic() - started:.0f}s")
    finally:
        watch.stop()


def test_digest_a_pinned_imported_version_with_a_wrong_digest_says_so_and_never_serves(cluster, namespace):
    started = time.monotonic()
    store_claim(cluster, namespace)
    # Imported by hand, as examples/02-model-version-import: no stage; the operator registers it.
    imported = save_model(cluster.store_dir, namespace, 1)
    actual = imported["spec"]["artifact"]["digest"]
    imported["spec"]["artifact"]["digest"] = WRONG_DIGEST  # the file on disk is not what the version claims
    cluster.kubectl("apply", "-f", "-", input=json.dumps(imported))
    wait_for("churn-v1 Registered", lambda: stage_of(cluster, namespace, "churn-v1") == "Registered", timeout=30)
    cluster.kubectl("annotate", "-n", namespace, "modelversion", "churn-v1", "noria.dev/approve=alice")
    pinned = json.loads(rollout(namespace, {"canary": {"steps": [{"setWeight": 50}]}}))
    pinned["spec"]["source"] = {"modelVersion": "churn-v1"}
    cluster.kubectl("apply", "-f", "-", input=json.dumps(pinned))
    watch = StatusWatch(cluster, namespace)
    try:
        st = wait_for("ArtifactVerificationFailed",
                      lambda: (s := rollout_status(cluster, namespace)) and condition(s, c.DEGRADED).get("reason")
                      == c.ARTIFACT_VERIFICATION_FAILED and s, timeout=180,
                      on_timeout=lambda: json.dumps(rollout_status(cluster, namespace))[:3000])
        message = condition(st, c.DEGRADED)["message"]
        assert WRONG_DIGEST in message and actual in message and "not approved" not in message, message
        wait_for("churn-v1 Rejected", lambda: stage_of(cluster, namespace, "churn-v1") == "Rejected", timeout=15)
        # Passes later, with the pin unchanged, the Rollout still names the digest, never "not approved",
        # and the refused server is not restarted in a loop: its Deployment goes.
        wait_for("churn-v1 scaled down", lambda: get(cluster, namespace, "deployment", "churn-churn-v1") is None,
                 timeout=60)
        time.sleep(1)
        st = rollout_status(cluster, namespace)
        said = [condition(st, t).get("message", "") for t in (c.DEGRADED, c.PROGRESSING, c.READY)] + [st["message"]]
        assert WRONG_DIGEST in said[0] and WRONG_DIGEST in said[1], said
        assert not any("not approved" in m for m in said), said
        assert condition(st, c.DEGRADED)["reason"] == c.ARTIFACT_VERIFICATION_FAILED and st["phase"] == "Degraded"
        # Never served: no status the operator ever wrote gave it traffic or made it stable.
        assert watch.seen and not any(s.get("stableVersion") or (s.get("weights") or {}).get("churn-v1")
                                      for s in watch.seen), watch.seen[-1]
        print(f"FIGURE pinned bad digest: test {time.monotonic() - started:.0f}s")
    finally:
        watch.stop()
