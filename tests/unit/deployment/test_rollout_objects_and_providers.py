"""Manifests for a version (restricted, no token, readiness, env contract) and the providers' pure parts."""

from __future__ import annotations

from noria.deployment import objects
from noria.deployment.providers.gateway_api import desired_rules, mirror_of, weights_of
from noria.deployment.providers.service import selector_for
from noria.settings import Settings

REF = objects.RolloutRef(name="churn", namespace="ml", uid="u1")
MV = {"metadata": {"name": "churn-v7"},
      "spec": {"pipeline": "churn", "version": 7, "profileUri": "file:///s/p.json",
               "artifact": {"uri": "file:///s/model.skops", "digest": "sha256:" + "a" * 64}}}


def test_version_deployment_is_restricted_and_has_no_token():
    dep = objects.version_deployment(REF, MV, 3, Settings())
    pod = dep["spec"]["template"]["spec"]
    assert dep["metadata"]["name"] == "churn-churn-v7" and dep["spec"]["replicas"] == 3
    assert pod["automountServiceAccountToken"] is False
    assert pod["securityContext"]["runAsNonRoot"] is True
    container = pod["containers"][0]
    sc = container["securityContext"]
    assert sc["allowPrivilegeEscalation"] is False and sc["capabilities"] == {"drop": ["ALL"]}
    assert sc["seccompProfile"] == {"type": "RuntimeDefault"} and sc["readOnlyRootFilesystem"] is True
    assert container["readinessProbe"]["httpGet"]["path"] == "/v2/health/ready"
    assert dep["metadata"]["ownerReferences"][0]["uid"] == "u1"
    store = next(m for m in container["volumeMounts"] if m["name"] == "store")
    assert store["readOnly"] is True


def test_version_env_follows_the_contract():
    env = {e["name"]: e for e in objects.version_deployment(REF, MV, 1, Settings())["spec"]["template"]["spec"]
           ["containers"][0]["env"]}
    assert env["NORIA_ARTIFACT_URI"]["value"] == "file:///s/model.skops"
    assert env["NORIA_DIGEST"]["value"].startswith("sha256:")
    assert env["NORIA_MODEL"]["value"] == "churn" and env["NORIA_VERSION"]["value"] == "churn-v7"
    assert env["NORIA_HOST"]["valueFrom"]["fieldRef"]["fieldPath"] == "status.podIP"
    assert env["POD_NAME"]["valueFrom"]["fieldRef"]["fieldPath"] == "metadata.name"


def test_router_gets_a_token_limited_to_its_configmap_and_endpointslices():
    sa, role, binding = objects.router_rbac(REF)
    assert role["rules"][0]["resourceNames"] == ["churn-router"]
    assert {v for r in role["rules"] for v in r["verbs"]} == {"get", "list", "watch"}
    assert binding["subjects"][0]["name"] == sa["metadata"]["name"] == "churn-router"
    assert "automountServiceAccountToken" not in objects.router_deployment(REF, Settings())["spec"]["template"]["spec"]


def test_router_config_lists_backends_and_shadow():
    cfg = objects.router_config("churn", "ml", "churn", {"churn-v6": 90, "churn-v7": 10}, ("churn-v8", 50))
    assert [(b["version"], b["service"], b["weight"]) for b in cfg["backends"]] == [
        ("churn-v6", "churn-churn-v6", 90), ("churn-v7", "churn-churn-v7", 10)]
    assert cfg["shadow"]["mirrorPercent"] == 50 and cfg["shadow"]["service"] == "churn-churn-v8"


def test_gateway_rules_get_weights_and_a_mirror_and_keep_other_filters():
    header = {"type": "RequestHeaderModifier", "requestHeaderModifier": {"add": [{"name": "x", "value": "y"}]}}
    rules = [{"matches": [{"path": {"type": "PathPrefix", "value": "/"}}], "filters": [header]}]
    out = desired_rules(rules, "churn", {"churn-v6": 100, "churn-v7": 0}, ("churn-v7", 50))
    route = {"spec": {"rules": out}}
    assert weights_of(route, "churn") == {"churn-v6": 100, "churn-v7": 0}
    assert mirror_of(route, "churn") == ("churn-v7", 50)
    assert out[0]["matches"] == rules[0]["matches"] and header in out[0]["filters"]
    cleared = desired_rules(out, "churn", {"churn-v7": 100}, None)
    assert mirror_of({"spec": {"rules": cleared}}, "churn") is None and cleared[0]["filters"] == [header]


def test_service_selector_switches_whole_or_selects_both_for_a_split():
    assert selector_for("churn", {"churn-v6": 0, "churn-v7": 100})["noria.dev/version"] == "churn-v7"
    assert selector_for("churn", {"churn-v6": 100, "churn-v7": 0})["noria.dev/version"] == "churn-v6"
    assert "noria.dev/version" not in selector_for("churn", {"churn-v6": 80, "churn-v7": 20})
