"""Blue-green and shadow rollouts through the router, under continuous user traffic."""

from __future__ import annotations

import time

import httpx
import pytest
from noria import conditions as c
from rollout_helpers import (
    PIPELINE,
    condition,
    create_model_version,
    get,
    operator_env,
    rollout,
    rollout_status,
    sample_rows,
    save_model,
    service_url,
    stage_of,
    start_stable,
    wait_for,
    wall_time,
)

pytestmark = pytest.mark.integration


def infer(url: str, row) -> dict:  # noqa: ANN001
    body = {"inputs": [{"name": "input", "shape": [1, len(row)], "datatype": "FP64", "data": [row.tolist()]}]}
    resp = httpx.post(f"{url}/v2/models/{PIPELINE}/infer", json=body, timeout=10)
    resp.raise_for_status()
    return resp.json()


def test_blue_green_previews_then_switches_with_zero_failed_requests(cluster, namespace, operator_factory,
                                                                     store_claim, prometheus):
    manifest = rollout(namespace, {"blueGreen": {"autoPromotionAfter": "8s", "scaleDownDelay": "5s"}})
    _, traffic = start_stable(cluster, namespace, operator_factory, store_claim, operator_env(prometheus.url),
                              manifest)
    try:
        create_model_version(cluster, save_model(cluster.store_dir, namespace, 2, seed=1))
        wait_for("preview", lambda: get(cluster, namespace, "service", "churn-preview") is not None
                 and rollout_status(cluster, namespace).get("currentStep", 0) >= 1, timeout=150,
                 on_timeout=lambda: str(rollout_status(cluster, namespace)))
        assert stage_of(cluster, namespace, "churn-v2") == "Preview"
        rows, _ = sample_rows()
        assert infer(service_url(cluster, namespace, "churn-preview"), rows[0])["model_version"] == "churn-v2"
        t_preview = time.monotonic()
        time.sleep(2)
        assert traffic.share("churn-v1", t_preview)[0] == 1.0, "users reached the preview before the switch"
        st = wait_for("switch", lambda: (s := rollout_status(cluster, namespace)).get("stableVersion") == "churn-v2"
                      and s, timeout=60, on_timeout=lambda: str(rollout_status(cluster, namespace)))
        switched = wall_time(condition(st, c.PROGRESSING)["lastTransitionTime"])
        time.sleep(3)
        t_after = time.monotonic()
        time.sleep(3)
        assert traffic.share("churn-v2", t_after)[0] == 1.0
        # The old version is scaled down after its delay, and the preview Service goes.
        wait_for("churn-v1 gone", lambda: get(cluster, namespace, "deployment", "churn-churn-v1") is None, timeout=60)
        wait_for("preview gone", lambda: get(cluster, namespace, "service", "churn-preview") is None, timeout=30)
        time.sleep(2)
        answers = list(traffic.answers)
        mixed = [a for a in answers if abs(a.wall - switched) < 3]
        assert all(a.status == 200 for a in answers), traffic.failures(switched)
        assert stage_of(cluster, namespace, "churn-v1") == "Retired"
        assert stage_of(cluster, namespace, "churn-v2") == "Production"
        print(f"FIGURE blue-green: {len(answers)} requests, {sum(a.status != 200 for a in answers)} failed, "
              f"{len(mixed)} within 3s of the switch")
    finally:
        traffic.stop()


@pytest.mark.parametrize("agreeing", [True, False], ids=["agreeing", "disagreeing"])
def test_shadow_users_get_stable_answers_and_agreement_decides(cluster, namespace, operator_factory, store_claim,
                                                               prometheus, agreeing):
    manifest = rollout(namespace, {"shadow": {"mirrorPercent": 100, "duration": "6s", "promote": "automatic"}},
                       analysis={"interval": "3s", "checks": [{"builtin": "shadowAgreement", "min": "0.9"}]})
    _, traffic = start_stable(cluster, namespace, operator_factory, store_claim, operator_env(prometheus.url),
                              manifest)
    try:
        # The agreeing shadow is the same model retrained; the disagreeing one learned the opposite labels.
        create_model_version(cluster, save_model(cluster.store_dir, namespace, 2, flip_labels=not agreeing))
        wait_for("mirroring", lambda: (rollout_status(cluster, namespace).get("canaryWeight") or 0) == 100,
                 timeout=150, on_timeout=lambda: str(rollout_status(cluster, namespace)))
        assert stage_of(cluster, namespace, "churn-v2") == "Shadow"
        started = time.monotonic()
        if agreeing:
            st = wait_for("promoted", lambda: (s := rollout_status(cluster, namespace)).get("stableVersion")
                          == "churn-v2" and s, timeout=90, on_timeout=lambda: str(rollout_status(cluster, namespace)))
            agreement = next(ch for ch in st["analysis"]["last"]["checks"] if ch["name"] == "shadowAgreement")
            assert agreement["outcome"] == "Successful" and float(agreement["value"]) >= 0.9
            promoted = wall_time(condition(st, c.PROGRESSING)["lastTransitionTime"])
            before = [a for a in traffic.since(started) if a.wall < promoted - 1]
        else:
            st = wait_for("discarded", lambda: (s := rollout_status(cluster, namespace)).get("phase") == "Degraded"
                          and s, timeout=90, on_timeout=lambda: str(rollout_status(cluster, namespace)))
            assert condition(st, c.DEGRADED)["reason"] == c.ROLLOUT_ANALYSIS_FAILED
            assert stage_of(cluster, namespace, "churn-v2") == "Rejected"
            assert st["stableVersion"] == "churn-v1" and st["weights"] == {"churn-v1": 100}
            before = traffic.since(started)
        assert before and all(a.version == "churn-v1" for a in before), "a user got a shadow answer"
        assert all(a.status == 200 for a in traffic.answers), traffic.failures()
    finally:
        traffic.stop()
