"""spec.feedback.tokenSecretRef: parsed with the field named, handed to the server and router pods by
the kubelet (secretKeyRef, never a value), and no Secret access for the operator."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml
from noria.api.rollout import Rollout
from noria.deployment import objects
from noria.deployment.providers import make_provider
from noria.deployment.spec import RolloutSpecError, SecretKeyRef, parse_rollout_spec
from noria.settings import Settings
from pydantic import ValidationError

ROOT = Path(__file__).resolve().parents[3]
REF = objects.RolloutRef(name="churn", namespace="ml", uid="u1")
MV = {"metadata": {"name": "churn-v7"},
      "spec": {"pipeline": "churn", "version": 7, "artifact": {"uri": "file:///s/model.skops", "digest": "sha256:0"}}}
BASE = {"source": {"pipeline": "churn"}, "strategy": {"immediate": {}}}


def _env(container: dict) -> dict[str, dict]:
    return {e["name"]: e for e in container["env"]}


def test_the_token_reaches_server_and_router_pods_only_as_a_secret_key_ref() -> None:
    spec = parse_rollout_spec({**BASE, "feedback": {"tokenSecretRef": {"name": "churn-feedback", "key": "tok"}}})
    assert spec.feedback_token == SecretKeyRef("churn-feedback", "tok")
    server = objects.version_deployment(REF, MV, 1, Settings(), feedback_token=spec.feedback_token)
    router = objects.router_deployment(REF, Settings(), feedback_token=spec.feedback_token)
    for deployment in (server, router):
        var = _env(deployment["spec"]["template"]["spec"]["containers"][0])[objects.FEEDBACK_TOKEN_ENV]
        assert var == {"name": "NORIA_FEEDBACK_TOKEN",
                       "valueFrom": {"secretKeyRef": {"name": "churn-feedback", "key": "tok"}}}
        assert "value" not in var  # never the token itself in a manifest
        assert "optional" not in var["valueFrom"]["secretKeyRef"]  # a missing Secret keeps the pod from starting


def test_the_router_provider_passes_the_token_to_its_deployment() -> None:
    spec = parse_rollout_spec({**BASE, "feedback": {"tokenSecretRef": {"name": "churn-feedback"}}})
    provider = make_provider(REF, spec, "churn", Settings())
    assert provider.feedback_token == SecretKeyRef("churn-feedback", "token")  # type: ignore[attr-defined]


def test_without_a_token_no_variable_is_set() -> None:
    spec = parse_rollout_spec(BASE)
    assert spec.feedback_token is None
    server = objects.version_deployment(REF, MV, 1, Settings())
    router = objects.router_deployment(REF, Settings())
    for deployment in (server, router):
        assert objects.FEEDBACK_TOKEN_ENV not in _env(deployment["spec"]["template"]["spec"]["containers"][0])


@pytest.mark.parametrize(("feedback", "words"), [
    ({"tokenSecretRef": {}}, "spec.feedback.tokenSecretRef.name"),
    ({"tokenSecretRef": {"name": "s", "key": "a/b"}}, "spec.feedback.tokenSecretRef.key"),
    ({"tokenSecretRef": {"name": "s", "key": ""}}, "spec.feedback.tokenSecretRef.key"),
])
def test_a_bad_reference_is_refused_naming_the_field(feedback: dict, words: str) -> None:
    with pytest.raises(RolloutSpecError, match=words.replace(".", r"\.")):
        parse_rollout_spec({**BASE, "feedback": feedback})


@pytest.mark.parametrize(("ref", "ok"), [
    ({"name": "churn-feedback"}, True),
    ({"name": "churn-feedback", "key": "feedback.token_1"}, True),
    ({"name": "Churn_Feedback"}, False),
    ({"name": "s", "key": "a b"}, False),
    ({"key": "token"}, False),
])
def test_the_api_model_checks_the_reference(ref: dict, ok: bool) -> None:
    manifest = {"apiVersion": "noria.dev/v1alpha1", "kind": "Rollout", "metadata": {"name": "r"},
                "spec": {**BASE, "feedback": {"tokenSecretRef": ref}}}
    if ok:
        model = Rollout.model_validate(manifest)
        assert model.spec.feedback is not None and model.spec.feedback.token_secret_ref is not None
        assert model.spec.feedback.token_secret_ref.key == ref.get("key", "token")
    else:
        with pytest.raises(ValidationError):
            Rollout.model_validate(manifest)


def test_the_operator_needs_no_right_to_read_secrets() -> None:
    """secretKeyRef is resolved by the kubelet: the chart's rules (a ClusterRole, or a Role per watched
    namespace) grant on Secrets only `get` of the notifications Secret, by name, never a token's."""
    helpers = (ROOT / "charts/noria/templates/_helpers.tpl").read_text()
    body = helpers.split('define "noria.namespacedRules" -}}', 1)[1].split("{{- end -}}", 1)[0]
    rules = yaml.safe_load(body)
    assert any("configmaps" in r["resources"] for r in rules)
    for rule in rules:
        if "secrets" in rule["resources"]:
            assert rule["resourceNames"] == ["noria-notifications"] and rule["verbs"] == ["get"], rule
