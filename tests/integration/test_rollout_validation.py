"""Invalid Rollouts are refused by the API server itself (CRD schema and CEL rules), with the reason."""

from __future__ import annotations

import json

import pytest

pytestmark = pytest.mark.integration

BASE = {"source": {"pipeline": "churn"}, "replicas": 1}


def manifest(namespace: str, **spec) -> str:  # noqa: ANN003
    return json.dumps({"apiVersion": "noria.dev/v1alpha1", "kind": "Rollout",
                       "metadata": {"name": "bad", "namespace": namespace}, "spec": {**BASE, **spec}})


@pytest.mark.parametrize("spec,expected", [
    ({"strategy": {"canary": {"steps": [{"setWeight": 10}]}, "immediate": {}}}, "exactly one"),
    ({"strategy": {"canary": {"steps": [{"setWeight": 150}]}}}, "150"),
    ({"strategy": {"canary": {"steps": [{"setWeight": 50}, {"setWeight": 10}]}}}, "must not decrease"),
    ({"strategy": {"shadow": {}}, "traffic": {"provider": "service"}}, "cannot mirror"),
], ids=["two-strategies", "weight-150", "decreasing-weights", "shadow-with-service"])
def test_invalid_rollouts_are_refused_by_the_api_server(cluster, namespace, spec, expected):
    out = cluster.kubectl("apply", "-f", "-", input=manifest(namespace, **spec), check=False)
    assert out.returncode != 0, out.stdout
    assert expected in out.stderr, out.stderr


def test_a_valid_canary_is_accepted(cluster, namespace):
    out = cluster.kubectl("apply", "--dry-run=server", "-f", "-", check=False, input=manifest(
        namespace, strategy={"canary": {"steps": [{"setWeight": 10}, {"pause": {}}, {"setWeight": 50}]}}))
    assert out.returncode == 0, out.stderr
