"""Fault suite, the API server misbehaves (issue #12 scenario: watch 410 / stall / 5xx / 429 bursts),
on the real test bed: the operator's kubeconfig points at the fault proxy
(testbed/noria_testbed/faultproxy.py), which sits between it and the real kube-apiserver and injects
faults on demand. Users call the real router and model servers throughout.

One canary Rollout lives through every fault in turn; during each fault a person changes something
(a new version, a promote, an abort, a retry) and the operator must carry the change out within a
bound once the fault is over, do it once (stage histories with no repeated entries), send no storm
of its own requests into a 429, and lose no user request.
"""

from __future__ import annotations

import time

import pytest
from fault_helpers import stage_history, status_text
from noria import conditions as c
from noria_testbed.faultproxy import Fault, FaultProxy
from rollout_helpers import (
    condition,
    create_model_version,
    operator_env,
    rollout,
    rollout_status,
    save_model,
    stage_of,
    start_stable,
    wait_for,
)

pytestmark = pytest.mark.integration

RECOVERY_BOUND = 30.0  # seconds from the end of a fault to the change made during it being carried out
POD_START_BOUND = 150.0  # a new model server's pods starting on a loaded 2-core machine (not a fault's doing)


@pytest.fixture
def proxy(cluster, tmp_path):  # noqa: ANN001, ANN201
    started = FaultProxy.for_testbed(cluster, workdir=tmp_path).start()
    yield started
    started.stop()


def annotate(cluster, namespace: str, annotation: str) -> None:  # noqa: ANN001
    cluster.kubectl("annotate", "--overwrite", "rollouts.noria.dev", "churn", "-n", namespace, annotation)


def test_fault_the_operator_rides_out_watch_410s_stalls_resets_and_5xx_429_bursts(
        cluster, namespace, operator_factory, store_claim, prometheus, proxy):
    manifest = rollout(namespace, {"canary": {"steps": [{"setWeight": 50}, {"pause": {}}]}})
    # Lease timings longer than the longest fault: this test is about the API server's faults, not
    # about leadership (a leader that cannot renew through a long stall stops and restarts as a
    # standby, which test_leader_election.py covers; no kubelet restarts it here).
    env = {**operator_env(prometheus.url), "KUBECONFIG": str(proxy.kubeconfig), "NORIA_REQUEST_TIMEOUT": "5",
           "NORIA_WATCH_TIMEOUT": "20", "NORIA_LEASE_DURATION_SECONDS": "90",
           "NORIA_LEASE_RENEW_DEADLINE_SECONDS": "60"}
    _, traffic = start_stable(cluster, namespace, operator_factory, store_claim, env, manifest)
    figures: dict[str, float] = {}

    def carried_out(what: str, check, fault_over: float, name: str) -> dict:  # noqa: ANN001
        st = wait_for(what, lambda: (s := rollout_status(cluster, namespace)) and check(s) and s,
                      timeout=RECOVERY_BOUND + max(0.0, fault_over - time.monotonic()),
                      on_timeout=lambda: status_text(cluster, namespace))
        figures[name] = round(time.monotonic() - fault_over, 1)
        return st

    def at_50(version: str) -> None:
        wait_for(f"{version} at 50%", lambda: (rollout_status(cluster, namespace).get("weights") or {}).get(version)
                 == 50, timeout=POD_START_BOUND, on_timeout=lambda: status_text(cluster, namespace))

    try:
        assert proxy.seen(), "the operator does not go through the proxy"
        quiet = time.monotonic()
        time.sleep(5)
        baseline = len(proxy.seen(quiet, watch=False)) / 5.0

        # 1. Every open watch ends with ERROR 410 and the next re-watches are refused the same way.
        assert proxy.expire_watches() > 0
        proxy.inject(Fault.gone(), count=6)
        create_model_version(cluster, save_model(cluster.store_dir, namespace, 2, seed=1))
        carried_out("churn-v2 picked after the 410s", lambda s: s.get("canaryVersion") == "churn-v2",
                    time.monotonic(), "410 -> canary picked")
        at_50("churn-v2")
        assert proxy.seen(outcome="gone"), "no watch met the injected 410"

        # 2. A burst of 503s on every request; the promote made during it is carried out after it.
        burst = 6.0
        proxy.inject(Fault.status(503), duration=burst)
        began = time.monotonic()
        annotate(cluster, namespace, "noria.dev/promote=true")
        carried_out("churn-v2 promoted after the 503 burst", lambda s: s.get("stableVersion") == "churn-v2"
                    and s.get("phase") == "Healthy", began + burst, "503 burst -> promoted")
        assert proxy.seen(began, outcome="status"), "no request met the injected 503s"

        # 3. A burst of 429s with Retry-After: the operator backs off, no storm of its own.
        proxy.inject(Fault.status(429, retry_after=1), duration=burst)
        began = time.monotonic()
        create_model_version(cluster, save_model(cluster.store_dir, namespace, 3, seed=2))
        time.sleep(burst)
        during = len(proxy.seen(began, watch=False)) / burst
        figures["request rate: quiet /s"], figures["request rate: during 429s /s"] = baseline, round(during, 1)
        assert during <= 3 * baseline + 5, f"{during:.1f} requests/s into a 429 burst (quiet: {baseline:.1f}/s)"
        carried_out("churn-v3 picked after the 429 burst", lambda s: s.get("canaryVersion") == "churn-v3",
                    began + burst, "429 burst -> canary picked")
        at_50("churn-v3")

        # 4. A stall: connections accepted, never answered; open watches go silent. An abort meanwhile.
        stall = 10.0
        proxy.inject(Fault.stall(), duration=stall)
        began = time.monotonic()
        annotate(cluster, namespace, "noria.dev/abort=true")
        time.sleep(stall)
        assert not [s for s in proxy.seen(began, outcome="passed") if s.at < began + stall - 0.2], (
            "requests passed through the stall")
        st = carried_out("the abort after the stall", lambda s: s.get("phase") == "Degraded",
                         began + stall, "stall -> aborted")
        assert condition(st, c.DEGRADED)["reason"] == c.ROLLOUT_ABORTED_BY_USER
        assert st["weights"] == {"churn-v2": 100}
        wait_for("churn-v3 Rejected", lambda: stage_of(cluster, namespace, "churn-v3") == "Rejected", timeout=30)

        # 5. Connections reset: the open watches, then the next requests.
        proxy.reset_connections()
        proxy.inject(Fault.reset(), count=15)
        began = time.monotonic()
        annotate(cluster, namespace, "noria.dev/retry=true")
        carried_out("churn-v3 retried after the resets", lambda s: s.get("canaryVersion") == "churn-v3",
                    began, "resets -> retried")
        at_50("churn-v3")

        # 6. Watches silent (the connection stays open, nothing arrives) while a promote is made:
        #    the controller does not depend on a live watch to carry it out.
        silence = RECOVERY_BOUND + 10
        proxy.inject(Fault.stall(only="watch"), duration=silence)
        began = time.monotonic()
        annotate(cluster, namespace, "noria.dev/promote=true")
        st = wait_for("churn-v3 promoted while the watches are silent", lambda: (s := rollout_status(
            cluster, namespace)).get("stableVersion") == "churn-v3" and s, timeout=RECOVERY_BOUND,
            on_timeout=lambda: status_text(cluster, namespace))
        figures["silent watches -> promoted"] = round(time.monotonic() - began, 1)
        proxy.clear()

        # Each action once: no repeated stage entries, Events not multiplied by the faults.
        assert stage_history(cluster, namespace, "churn-v2").count("Production") == 1
        assert stage_history(cluster, namespace, "churn-v2").count("Canary") == 1
        history_v3 = stage_history(cluster, namespace, "churn-v3")
        assert history_v3.count("Rejected") == 1 and history_v3.count("Production") == 1, history_v3
        assert history_v3.count("Canary") == 2, history_v3  # first rollout, and the retry
        assert stage_of(cluster, namespace, "churn-v1") == "Retired"
        time.sleep(1)
        assert all(a.status == 200 for a in traffic.answers), traffic.failures()
        print(f"FIGURE api-server faults: {figures}; requests through the proxy {len(proxy.seen())}, "
              f"injected {sum(s.outcome != 'passed' for s in proxy.seen())}; user requests {len(traffic.answers)}, "
              f"failed {sum(a.status != 200 for a in traffic.answers)}")
    finally:
        traffic.stop()
