"""Crash points: an operator that dies right after any side effect of a pass -- on the abort path, the
promotion path, a new version, a spec edit, a deletion -- and starts again leaves the Rollout, its
ModelVersions and its traffic agreeing.

Each cycle: the canary waits at an indefinite pause; the operator is replaced by one started with
``NORIA_FAILPOINT=<point>`` (points fire only after a step that changed something, so it idles until
then); the test does what reaches the point (annotate abort or promote, add a version, edit the
spec, delete the Rollout); the operator exits with 137 there; a clean operator takes over and the
end state is checked. One namespace per path, reset between cycles (retry after an abort, a newer
version after a promotion; a promote lost to a crash is annotated again), so fifteen crashes cost
two setups and four versions.
"""

from __future__ import annotations

import json
import time

import pytest
from noria import failpoints as fp
from rollout_helpers import (
    condition,
    create_model_version,
    get,
    operator_env,
    rollout,
    rollout_status,
    save_model,
    stage_of,
    wait_for,
)

pytestmark = pytest.mark.integration

STEPS = [{"setWeight": 50}, {"pause": {}}]
TRAFFIC = {"provider": "service"}  # no router pod: the entry Service's selector is the traffic


class Bed:
    """One namespace with a canary Rollout, and the operator currently running on it."""

    def __init__(self, cluster, namespace, operator_factory, store_claim, prometheus_url: str,  # noqa: ANN001
                 scale_down_delay: str) -> None:
        self.cluster, self.ns, self.factory = cluster, namespace, operator_factory
        self.env = operator_env(prometheus_url)
        self.operator = None
        self.version = 1
        self.problems: list[str] = []
        store_claim(namespace)
        create_model_version(cluster, save_model(cluster.store_dir, namespace, 1))
        self.start()
        cluster.kubectl("apply", "-f", "-", input=rollout(namespace, {"canary": {"steps": STEPS}}, traffic=TRAFFIC,
                                                          scaleDownDelay=scale_down_delay))
        self.wait("churn-v1 stable", lambda: self.status().get("stableVersion") == "churn-v1"
                  and self.status().get("phase") == "Healthy")

    # --- the operator
    def start(self, failpoint: str | None = None) -> None:
        self.stop()
        env = dict(self.env, **({fp.ENV: failpoint} if failpoint else {}))
        # /healthz answers while the process stands by for its Lease, before any pass can reach the point.
        self.operator = self.factory(self.ns, **env)

    def stop(self) -> None:
        if self.operator is not None:
            self.operator.kill(9)

    def died_at(self, point: str, timeout: float = 45.0) -> bool:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            code = self.operator.process.poll()
            if code is not None:
                return code == fp.EXIT_CODE and f"noria failpoint {point}" in self.operator.log()
            time.sleep(0.2)
        return False

    # --- the cluster
    def status(self) -> dict:
        return rollout_status(self.cluster, self.ns)

    def wait(self, what: str, check, timeout: float = 120.0):  # noqa: ANN001, ANN201
        return wait_for(what, check, timeout=timeout, on_timeout=lambda: json.dumps(self.status())[:3000])

    def annotate(self, key: str, value: str = "true") -> None:
        self.cluster.kubectl("annotate", "rollouts.noria.dev", "churn", "-n", self.ns, f"noria.dev/{key}={value}",
                             "--overwrite")

    def annotations(self) -> dict:
        return (get(self.cluster, self.ns, "rollouts.noria.dev", "churn") or {}).get("metadata", {}).get(
            "annotations") or {}

    def selector(self) -> dict:
        return ((get(self.cluster, self.ns, "service", "churn") or {}).get("spec") or {}).get("selector") or {}

    def new_version(self) -> str:
        self.version += 1
        create_model_version(self.cluster, save_model(self.cluster.store_dir, self.ns, self.version,
                                                      seed=self.version))
        return f"churn-v{self.version}"

    def paused_on(self, cand: str) -> None:
        self.wait(f"{cand} paused at 50%", lambda: self.status().get("canaryVersion") == cand
                  and self.status().get("currentStep") == 1 and condition(self.status(), "Paused").get("status")
                  == "True")

    # --- what must hold after any crash, once a clean operator has had a moment
    def agreeing(self) -> str | None:
        st = self.status()
        stable, cand, weights = st.get("stableVersion"), st.get("canaryVersion"), st.get("weights") or {}
        if stable and stage_of(self.cluster, self.ns, stable) != "Production":
            return f"stable {stable} is {stage_of(self.cluster, self.ns, stable)}"
        if cand and stage_of(self.cluster, self.ns, cand) not in ("Canary", "Approved"):
            return f"candidate {cand} is {stage_of(self.cluster, self.ns, cand)}"
        verdict = st.get("lastVerdict") or {}
        if verdict.get("version") and verdict["version"] not in (stable, cand) and \
                stage_of(self.cluster, self.ns, verdict["version"]) != verdict.get("stage"):
            return f"lastVerdict {verdict} but the ModelVersion is {stage_of(self.cluster, self.ns, verdict['version'])}"
        full = [v for v, w in weights.items() if w == 100]
        if full and self.selector().get("noria.dev/version") != full[0]:
            return f"status weights {weights} but the Service selects {self.selector()}"
        if any(k in self.annotations() for k in ("noria.dev/abort", "noria.dev/promote")):
            return f"annotation left: {self.annotations()}"
        return None

    def check(self, label: str, expect) -> None:  # noqa: ANN001
        try:
            self.wait(f"{label}: Rollout and ModelVersions agree",
                      lambda: self.agreeing() is None and expect(self.status()), timeout=60)
        except Exception as exc:  # noqa: BLE001 - collect every point's failure, report them together
            self.problems.append(f"{label}: {self.agreeing() or 'expected state not reached'} ({exc})"[:1500])

    def crash(self, point: str, action) -> None:  # noqa: ANN001
        """Start an operator armed at ``point``, do ``action``, see it die there, start a clean one."""
        self.start(point)
        action()
        if not self.died_at(point):
            self.problems.append(f"{point}: the operator did not die there (point not reached)")
        self.start()


def aborted(cand: str, stable: str):  # noqa: ANN201
    return lambda st: (st.get("stableVersion") == stable and not st.get("canaryVersion")
                       and st.get("weights") == {stable: 100} and condition(st, "Degraded").get("status") == "True")


def promoted(version: str):  # noqa: ANN201
    return lambda st: (st.get("stableVersion") == version and not st.get("canaryVersion")
                       and st.get("weights") == {version: 100} and st.get("phase") == "Healthy")


@pytest.mark.timeout(900)
def test_a_crash_after_any_step_of_an_abort_leaves_the_candidate_rejected_and_traffic_on_stable(
        cluster, namespace, operator_factory, store_claim, prometheus):
    # Long enough that an aborted candidate's pods are still there for the retry (no pod restarts).
    bed = Bed(cluster, namespace, operator_factory, store_claim, prometheus.url, scale_down_delay="120s")
    cand = bed.new_version()
    for point in (fp.TRAFFIC_SET, fp.SCALE_DOWN_STAMPED, fp.STATUS_WRITTEN, fp.STAGE_WRITTEN, fp.EVENTS_POSTED,
                  fp.CONSUMED_LAST):
        bed.paused_on(cand)
        bed.crash(point, lambda: bed.annotate("abort"))
        bed.check(point, lambda st: aborted(cand, "churn-v1")(st)
                  and stage_of(cluster, namespace, cand) == "Rejected")
        bed.annotate("retry")  # the same candidate again, for the next point
    # The aborted candidate's Deployment goes after its scale-down delay: crash right after that delete.
    bed.paused_on(cand)
    cluster.kubectl("patch", "rollouts.noria.dev", "churn", "-n", namespace, "--type=merge", "-p",
                    json.dumps({"spec": {"scaleDownDelay": "10s"}}))
    bed.annotate("abort")
    bed.check("abort", aborted(cand, "churn-v1"))
    bed.crash(fp.DELETED, lambda: None)
    bed.check(fp.DELETED, lambda st: get(cluster, namespace, "deployment", f"churn-{cand}") is None)
    assert not bed.problems, "\n".join(bed.problems)


@pytest.mark.timeout(900)
def test_a_crash_after_any_step_of_a_promotion_a_new_version_an_edit_or_a_deletion_is_repaired(
        cluster, namespace, operator_factory, store_claim, prometheus):
    # Long enough that an operator armed at "delete" is up before an old stable's Deployment goes.
    bed = Bed(cluster, namespace, operator_factory, store_claim, prometheus.url, scale_down_delay="12s")
    # A new version's Deployment created, then the crash.
    bed.start(fp.REPLICAS_APPLIED)
    cand = bed.new_version()
    if not bed.died_at(fp.REPLICAS_APPLIED):
        bed.problems.append(f"{fp.REPLICAS_APPLIED}: the operator did not die there")
    bed.start()
    bed.paused_on(cand)
    # A crash after the promote was consumed but before the status recorded the promotion loses the
    # promote (safe; the user annotates again): never applied twice, and traffic goes back to what
    # status says even if it had moved.
    for point in (fp.CONSUMED_FIRST, fp.TRAFFIC_SET, fp.SCALE_DOWN_STAMPED):
        bed.paused_on(cand)
        bed.crash(point, lambda: bed.annotate("promote"))
        bed.check(point, lambda st, cand=cand: st.get("canaryVersion") == cand and st.get("currentStep") == 1
                  and st.get("weights") == {"churn-v1": 50, cand: 50}
                  and bed.selector().get("noria.dev/version") is None)
    # After the status write the promotion stands: crash after the first stage write, then again
    # right after the old stable's Deployment is deleted; each operator resumes what the last left.
    bed.paused_on(cand)
    bed.start(fp.STAGE_WRITTEN)
    bed.annotate("promote")
    if not bed.died_at(fp.STAGE_WRITTEN):
        bed.problems.append(f"{fp.STAGE_WRITTEN}: the operator did not die there (point not reached)")
    bed.start(fp.DELETED)
    if not bed.died_at(fp.DELETED):
        bed.problems.append(f"{fp.DELETED}: the operator did not die there (point not reached)")
    bed.start()
    bed.check("promotion", lambda st: promoted(cand)(st) and stage_of(cluster, namespace, "churn-v1") == "Retired"
              and get(cluster, namespace, "deployment", "churn-churn-v1") is None)
    # The next version: the promote pass crashed right after its status write.
    stable, cand = cand, bed.new_version()
    bed.paused_on(cand)
    bed.crash(fp.STATUS_WRITTEN, lambda: bed.annotate("promote"))
    bed.check(fp.STATUS_WRITTEN, lambda st: promoted(cand)(st) and stage_of(cluster, namespace, stable) == "Retired")
    # A spec edit (the provider's objects may change), then the crash.
    stable, cand = cand, bed.new_version()
    bed.paused_on(cand)
    bed.crash(fp.PROVIDER_ENSURED, lambda: cluster.kubectl(
        "patch", "rollouts.noria.dev", "churn", "-n", namespace, "--type=merge", "-p",
        json.dumps({"spec": {"scaleDownDelay": "4s"}})))
    bed.check(fp.PROVIDER_ENSURED, lambda st: st.get("observedGeneration") == 2 and st.get("canaryVersion") == cand)
    # Deleted mid-canary: the versions it served are recorded once, then the finalizer goes.
    bed.crash(fp.FINALIZED, lambda: cluster.kubectl("delete", "rollouts.noria.dev", "churn", "-n", namespace,
                                                    "--wait=false"))
    wait_for("the Rollout is gone", lambda: get(cluster, namespace, "rollouts.noria.dev", "churn") is None,
             timeout=60)
    for version in (stable, cand):
        history = get(cluster, namespace, "modelversion", version)["status"]["history"]
        deleted = [h for h in history if h["reason"].startswith("RolloutDeleted")]
        if stage_of(cluster, namespace, version) != "Approved" or len(deleted) != 1:
            bed.problems.append(f"{fp.FINALIZED}: {version} is {stage_of(cluster, namespace, version)} with "
                                f"{len(deleted)} RolloutDeleted entries")
    assert not bed.problems, "\n".join(bed.problems)
