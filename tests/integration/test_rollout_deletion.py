"""Deleting a Rollout: the user's HTTPRoute gets its own backends back, the versions it served get a
RolloutDeleted history entry, the finalizer goes -- with the operator running, with the operator down
at the time (finalized when it returns), and with the whole namespace deleted while a namespaced
operator was down (it must not stay Terminating). Only Rollouts whose provider changes a user's object
(gatewayAPI, service) carry the finalizer: a router Rollout is deleted at once even with no operator
(its objects are its own and go by garbage collection), and its versions are recorded best effort."""

from __future__ import annotations

import json
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
    wait_for,
)
from test_rollout_gateway_api import gateway_api_crds, http_route, route_state  # noqa: F401 (fixture)

pytestmark = pytest.mark.integration

ROUTE = "churn-route"


def served_then_deleted(cluster, namespace: str, version: str) -> bool:  # noqa: ANN001
    mv = get(cluster, namespace, "modelversion", version) or {}
    history = (mv.get("status") or {}).get("history") or []
    deleted = [h for h in history if h["reason"].startswith("RolloutDeleted")]
    return stage_of(cluster, namespace, version) == "Approved" and len(deleted) == 1


def route_restored(cluster, namespace: str, original: list) -> bool:  # noqa: ANN001
    route = get(cluster, namespace, "httproute", ROUTE)
    annotations = route["metadata"].get("annotations") or {}
    return route["spec"]["rules"] == original and "noria.dev/original-backends" not in annotations


def canary_at_30(cluster, namespace: str, operator_factory, store_claim):  # noqa: ANN001, ANN201
    """A gatewayAPI canary paused at 30% of churn-v2 over churn-v1, as in the issue's finding."""
    store_claim(namespace)
    cluster.kubectl("apply", "-f", "-", input=http_route(namespace))
    original = get(cluster, namespace, "httproute", ROUTE)["spec"]["rules"]  # as the API server defaulted it
    create_model_version(cluster, save_model(cluster.store_dir, namespace, 1))
    operator = operator_factory(namespace, **operator_env("http://127.0.0.1:9"))
    traffic = {"provider": "gatewayAPI", "gatewayAPI": {"httpRoute": ROUTE}}
    cluster.kubectl("apply", "-f", "-", input=rollout(namespace, {"canary": {"steps": [
        {"setWeight": 30}, {"pause": {}}]}}, traffic=traffic))
    wait_for("churn-v1 on the route", lambda: route_state(cluster, namespace)[0] == {"churn-churn-v1": 100},
             timeout=150, on_timeout=lambda: str(rollout_status(cluster, namespace)))
    create_model_version(cluster, save_model(cluster.store_dir, namespace, 2, seed=1))
    wait_for("70/30 on the route", lambda: route_state(cluster, namespace)[0] == {
        "churn-churn-v1": 70, "churn-churn-v2": 30}, timeout=150,
        on_timeout=lambda: str(rollout_status(cluster, namespace)))
    assert stage_of(cluster, namespace, "churn-v2") == "Canary"
    return operator, original


def test_deleting_a_rollout_mid_canary_gives_the_route_back_and_records_both_versions(
        cluster, namespace, operator_factory, store_claim, gateway_api_crds):  # noqa: F811
    _, original = canary_at_30(cluster, namespace, operator_factory, store_claim)
    cluster.kubectl("delete", "rollouts.noria.dev", "churn", "-n", namespace, "--timeout=60s")
    assert route_restored(cluster, namespace, original), (original, get(cluster, namespace, "httproute", ROUTE))
    for version in ("churn-v1", "churn-v2"):
        assert served_then_deleted(cluster, namespace, version), get(cluster, namespace, "modelversion", version)
    # Nothing of the user's was deleted: the route and the ModelVersions are all still there.
    assert get(cluster, namespace, "httproute", ROUTE) and get(cluster, namespace, "modelversion", "churn-v2")


def test_a_rollout_deleted_while_the_operator_was_down_is_finalized_when_it_returns(
        cluster, namespace, operator_factory, store_claim, gateway_api_crds):  # noqa: F811
    operator, original = canary_at_30(cluster, namespace, operator_factory, store_claim)
    operator.kill(9)
    cluster.kubectl("delete", "rollouts.noria.dev", "churn", "-n", namespace, "--wait=false")
    time.sleep(2)
    # Held by the finalizer while nobody can restore the route.
    assert get(cluster, namespace, "rollouts.noria.dev", "churn") is not None
    assert route_state(cluster, namespace)[0] == {"churn-churn-v1": 70, "churn-churn-v2": 30}
    operator.start()
    wait_for("the Rollout is gone", lambda: get(cluster, namespace, "rollouts.noria.dev", "churn") is None,
             timeout=90, on_timeout=lambda: operator.log()[-3000:])
    assert route_restored(cluster, namespace, original), (original, get(cluster, namespace, "httproute", ROUTE))
    for version in ("churn-v1", "churn-v2"):
        assert served_then_deleted(cluster, namespace, version), get(cluster, namespace, "modelversion", version)


def test_a_namespace_deleted_while_its_namespaced_operator_was_down_finishes_deleting(
        cluster, namespace, operator_factory, store_claim):
    store_claim(namespace)
    create_model_version(cluster, save_model(cluster.store_dir, namespace, 1))
    # The Lease lives outside the namespace being deleted (a terminating namespace refuses new objects),
    # as in a real installation, where it is in the operator's own namespace.
    env = {**operator_env("http://127.0.0.1:9"), "NORIA_LEADER_NAMESPACE": "default",
           "NORIA_LEADER_LEASE_NAME": f"noria-{namespace}"}
    operator = operator_factory(namespace, **env)
    cluster.kubectl("apply", "-f", "-", input=rollout(namespace, {"canary": {"steps": [{"setWeight": 50}]}},
                                                      traffic={"provider": "service"}))
    wait_for("the Rollout holds Noria's finalizer and has a status", lambda: "noria.dev/finalizer" in (
        (get(cluster, namespace, "rollouts.noria.dev", "churn") or {}).get("metadata", {}).get("finalizers") or [])
        and rollout_status(cluster, namespace).get("observedGeneration"), timeout=60)
    operator.kill(9)
    cluster.kubectl("delete", "namespace", namespace, "--wait=false")
    time.sleep(3)
    phase = json.loads(cluster.kubectl("get", "namespace", namespace, "-o", "json").stdout)["status"]["phase"]
    assert phase == "Terminating"  # held by the Rollout's finalizer while the operator is down
    operator.start()
    wait_for("the namespace is gone", lambda: cluster.kubectl(
        "get", "namespace", namespace, check=False).returncode != 0, timeout=120,
        on_timeout=lambda: operator.log()[-3000:] + cluster.kubectl(
            "get", "rollouts.noria.dev", "-n", namespace, "-o", "yaml", check=False).stdout[-2000:])


def finalizers(cluster, namespace: str) -> list[str] | None:  # noqa: ANN001
    found = get(cluster, namespace, "rollouts.noria.dev", "churn")
    return None if found is None else found["metadata"].get("finalizers") or []


def router_rollout_serving_v1(cluster, namespace: str, operator_factory, store_claim):  # noqa: ANN001, ANN201
    store_claim(namespace)
    create_model_version(cluster, save_model(cluster.store_dir, namespace, 1))
    operator = operator_factory(namespace, **operator_env("http://127.0.0.1:9"))
    cluster.kubectl("apply", "-f", "-", input=rollout(namespace, {"canary": {"steps": [{"setWeight": 50}]}}))
    wait_for("churn-v1 serving", lambda: stage_of(cluster, namespace, "churn-v1") == "Production"
             and rollout_status(cluster, namespace).get("stableVersion") == "churn-v1", timeout=120,
             on_timeout=lambda: str(rollout_status(cluster, namespace)))
    return operator


def test_a_router_rollout_carries_no_finalizer_and_loses_one_an_older_operator_left(
        cluster, namespace, operator_factory, store_claim):
    router_rollout_serving_v1(cluster, namespace, operator_factory, store_claim)
    assert finalizers(cluster, namespace) == []
    # As every Rollout had it before: the operator takes it off (Kopf: no handler needs it).
    cluster.kubectl("patch", "rollouts.noria.dev", "churn", "-n", namespace, "--type=merge",
                    "-p", json.dumps({"metadata": {"finalizers": ["noria.dev/finalizer"]}}))
    wait_for("the finalizer taken off", lambda: finalizers(cluster, namespace) == [], timeout=30)
    cluster.kubectl("delete", "rollouts.noria.dev", "churn", "-n", namespace, "--timeout=10s")
    wait_for("churn-v1 recorded as served by a deleted Rollout",
             lambda: served_then_deleted(cluster, namespace, "churn-v1"), timeout=30,
             on_timeout=lambda: str(get(cluster, namespace, "modelversion", "churn-v1")))


def test_a_router_rollout_deleted_with_no_operator_goes_at_once_and_is_recorded_when_it_returns(
        cluster, namespace, operator_factory, store_claim):
    operator = router_rollout_serving_v1(cluster, namespace, operator_factory, store_claim)
    operator.kill(9)
    started = time.monotonic()
    cluster.kubectl("delete", "rollouts.noria.dev", "churn", "-n", namespace, "--timeout=10s")
    assert get(cluster, namespace, "rollouts.noria.dev", "churn") is None and time.monotonic() - started < 10
    wait_for("its Deployments garbage-collected", lambda: not json.loads(cluster.kubectl(
        "get", "deployments", "-n", namespace, "-l", "noria.dev/rollout=churn", "-o", "json").stdout)["items"],
        timeout=60)
    assert stage_of(cluster, namespace, "churn-v1") == "Production"  # nobody could record it yet
    operator.start()
    wait_for("the deletion sweep records churn-v1", lambda: served_then_deleted(cluster, namespace, "churn-v1"),
             timeout=60, on_timeout=lambda: operator.log()[-3000:])
