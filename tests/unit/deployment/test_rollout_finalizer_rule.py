"""Which Rollouts carry noria.dev/finalizer (only those whose deletion must restore a user's object),
and which ModelVersions the deletion sweep records as left behind by a Rollout that is gone."""

from __future__ import annotations

import pytest
from noria.deployment.handlers import needs_finalizer, needs_no_finalizer, orphaned


@pytest.mark.parametrize(("spec", "expect"), [
    pytest.param({}, False, id="no traffic block: router, owned objects only"),
    pytest.param({"traffic": {"provider": "router"}}, False, id="router"),
    pytest.param({"traffic": {"provider": "gatewayAPI", "gatewayAPI": {"httpRoute": "r"}}}, True,
                 id="gatewayAPI: the user's HTTPRoute is restored"),
    pytest.param({"traffic": {"provider": "service"}}, True, id="service"),
    pytest.param(None, False, id="no spec at all"),
])
def test_finalizer_only_where_deletion_restores_a_users_object(spec, expect):
    assert needs_finalizer(spec) is expect
    assert needs_no_finalizer(spec) is not expect


def mv(name: str, stage: str, by: str) -> dict:
    return {"metadata": {"name": name, "namespace": "ml"},
            "status": {"stage": stage, "history": [{"stage": stage, "by": by, "reason": "x"}]}}


@pytest.mark.parametrize(("mvs", "rollouts", "expect"), [
    pytest.param([mv("churn-v1", "Production", "rollout/churn")], {"churn"}, [], id="its Rollout exists"),
    pytest.param([mv("churn-v1", "Production", "rollout/churn")], set(), [("churn-v1", "churn")],
                 id="Production by a Rollout that is gone"),
    pytest.param([mv("churn-v2", "Canary", "rollout/churn")], {"other"}, [("churn-v2", "churn")],
                 id="a candidate stage too"),
    pytest.param([mv("churn-v1", "Approved", "rollout/churn")], set(), [],
                 id="already recorded (Approved): nothing"),
    pytest.param([mv("churn-v1", "Rejected", "rollout/churn")], set(), [], id="Rejected stays Rejected"),
    pytest.param([mv("churn-v1", "Production", "pipeline/churn")], set(), [], id="not staged by a Rollout"),
    pytest.param([{"metadata": {"name": "bare", "namespace": "ml"}}], set(), [], id="no status"),
])
def test_orphaned_versions(mvs, rollouts, expect):
    assert [(m["metadata"]["name"], r) for m, r in orphaned(mvs, rollouts)] == expect

