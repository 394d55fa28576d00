"""SIGKILL safety: the operator killed at each phase of a canary and restarted finishes the rollout as
if nothing happened — every step once, in order, none skipped or repeated, no duplicate objects."""

from __future__ import annotations

import signal
import threading
import time

import pytest
from rollout_helpers import (
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


class StepRecorder:
    """Polls the Rollout's status and keeps every distinct (currentStep, stepStartedAt) it sees."""

    def __init__(self, cluster, namespace: str) -> None:  # noqa: ANN001
        self.cluster, self.namespace = cluster, namespace
        self.seen: list[tuple[int, str]] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.is_set():
            st = rollout_status(self.cluster, self.namespace)
            if st.get("canaryVersion") == "churn-v2" and st.get("currentStep") is not None:
                key = (st["currentStep"], st.get("stepStartedAt"))
                if not self.seen or self.seen[-1] != key:
                    self.seen.append(key)
            self._stop.wait(0.2)

    def __enter__(self) -> StepRecorder:
        self._thread.start()
        return self

    def __exit__(self, *_: object) -> None:
        self._stop.set()
        self._thread.join(5)


def test_operator_sigkilled_at_every_phase_of_a_canary_finishes_it_exactly_once(cluster, namespace, operator_factory,
                                                                                 store_claim, prometheus):
    steps = [{"setWeight": 20}, {"pause": {"duration": "8s"}}, {"setWeight": 50}, {"pause": {"duration": "8s"}}]
    manifest = rollout(namespace, {"canary": {"steps": steps}},
                       analysis={"interval": "5s", "checks": [{"builtin": "errorRate", "max": "0.05"}]})
    operator, traffic = start_stable(cluster, namespace, operator_factory, store_claim, operator_env(prometheus.url),
                                     manifest)
    kills: list[float] = []
    try:
        with StepRecorder(cluster, namespace) as recorder:
            create_model_version(cluster, save_model(cluster.store_dir, namespace, 2, seed=1))
            for step in (0, 1, 2, 3, 4):
                wait_for(f"step {step}", lambda step=step: (rollout_status(cluster, namespace).get("currentStep") or 0)
                         >= step or rollout_status(cluster, namespace).get("stableVersion") == "churn-v2",
                         timeout=150, on_timeout=lambda: str(rollout_status(cluster, namespace)))
                operator.kill(signal.SIGKILL)
                kills.append(time.time())
                time.sleep(1.0)
                operator.start()
            wait_for("churn-v2 promoted", lambda: rollout_status(cluster, namespace).get("stableVersion") == "churn-v2",
                     timeout=150, on_timeout=lambda: str(rollout_status(cluster, namespace)))
        st = rollout_status(cluster, namespace)
        assert st["phase"] == "Healthy" and st["weights"] == {"churn-v2": 100}
        indices = [i for i, _ in recorder.seen]
        assert indices == sorted(indices), f"a step went backwards: {recorder.seen}"
        assert len(set(indices)) == len(indices), f"a step was started twice: {recorder.seen}"
        # Each pause lasted its full duration despite the kills (its start time survived in status).
        started = dict(recorder.seen)
        for pause_step in (1, 3):
            if pause_step in started and pause_step + 1 in started:
                assert wall_time(started[pause_step + 1]) - wall_time(started[pause_step]) >= 8
        history = [h["stage"] for h in get(cluster, namespace, "modelversion", "churn-v2")["status"]["history"]]
        assert history.count("Canary") == 1 and history.count("Production") == 1, history
        assert stage_of(cluster, namespace, "churn-v1") == "Retired"
        names = cluster.kubectl("get", "deployments", "-n", namespace, "-o",
                                "jsonpath={.items[*].metadata.name}").stdout.split()
        assert sorted(n for n in names if n != "churn-churn-v1") == ["churn-churn-v2", "churn-router"], names
        assert all(a.status == 200 for a in traffic.answers), (traffic.failures(), "kills at", kills,
                                                               "steps", recorder.seen)
        assert len(kills) == 5
    finally:
        traffic.stop()
