"""spec.onlineFeatures.feast: what the API accepts, and that the model-server pods get it in a form the
server's own flag parser reads back as the same settings (the operator and the image agree)."""

from __future__ import annotations

from typing import Any

import pytest
from noria.api import rollout as api
from noria.deployment import objects
from noria.deployment.spec import parse_rollout_spec
from noria.settings import Settings
from noria_server import online
from noria_server.__main__ import parser, serve_settings
from pydantic import ValidationError

REF = objects.RolloutRef("churn", "ml", "uid-1")
MV = {"metadata": {"name": "churn-v1"}, "spec": {"pipeline": "churn", "artifact": {"uri": "file:///x", "digest": ""}}}
FEAST = {"url": "http://feast.features:6566", "featureService": "churn_v1", "entityKeys": ["customer_id"]}


def spec(feast: dict[str, Any] | None) -> dict[str, Any]:
    doc: dict[str, Any] = {"source": {"pipeline": "churn"}, "strategy": {"immediate": {}}}
    if feast is not None:
        doc["onlineFeatures"] = {"feast": feast}
    return doc


def server_env(feast: dict[str, Any] | None) -> dict[str, str]:
    read = parse_rollout_spec(spec(feast))
    deployment = objects.version_deployment(REF, MV, 1, Settings(), read.resources, read.prediction_log,
                                            read.feedback_token, read.store_access, read.online_features)
    (container,) = deployment["spec"]["template"]["spec"]["containers"]
    return {e["name"]: e["value"] for e in container["env"] if "value" in e}


def as_server_reads_it(env: dict[str, str], monkeypatch: pytest.MonkeyPatch) -> online.OnlineFeatureSettings | None:
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    settings = serve_settings(parser().parse_args(["serve"]), None)
    if settings.online_features is not None:
        settings.online_features.validate()
    return settings.online_features


@pytest.mark.parametrize(("feast", "expected"), [
    (FEAST, online.OnlineFeatureSettings(url="http://feast.features:6566", entity_keys=("customer_id",),
                                         feature_service="churn_v1", timeout=0.1, on_missing="reject")),
    ({"url": "https://10.0.0.7:6566/feast", "features": ["customer_stats:tenure_months", "customer_stats:plan"],
      "entityKeys": ["customer_id", "region"], "timeout": "2s", "onMissing": "asMissing"},
     online.OnlineFeatureSettings(url="https://10.0.0.7:6566/feast", entity_keys=("customer_id", "region"),
                                  features=("customer_stats:tenure_months", "customer_stats:plan"), timeout=2.0,
                                  on_missing="asMissing")),
], ids=["service-defaults", "features-and-settings"])
def test_the_spec_reaches_the_server_as_the_same_settings(feast: dict[str, Any], expected: Any,
                                                          monkeypatch: pytest.MonkeyPatch) -> None:
    assert as_server_reads_it(server_env(feast), monkeypatch) == expected


def test_without_online_features_the_server_gets_no_feast_setting(monkeypatch: pytest.MonkeyPatch) -> None:
    env = server_env(None)
    assert not [name for name in env if name.startswith("NORIA_FEAST_")]
    assert as_server_reads_it(env, monkeypatch) is None


@pytest.mark.parametrize(("change", "fragment"), [
    ({"features": ["customer_stats:tenure_months"]}, api.ONLINE_FEAST_ONE_MESSAGE),
    ({"featureService": None}, api.ONLINE_FEAST_ONE_MESSAGE),
    ({"url": "ftp://feast.features:6566"}, "must be http(s)://"),
    ({"url": "http://feast:6566?x=1"}, "must be http(s)://"),
    ({"url": "http://user@feast:6566"}, "must be http(s)://"),
    ({"timeout": "11s"}, "1ms to 9999ms or 1s to 10s"),
    ({"timeout": "0ms"}, "1ms to 9999ms or 1s to 10s"),
    ({"timeout": "1m"}, "1ms to 9999ms or 1s to 10s"),
    ({"entityKeys": []}, "at least 1 item"),
    ({"entityKeys": ["customer id"]}, "an entity key is a join key name"),
    ({"onMissing": "ignore"}, "'reject' or 'asMissing'"),
])
def test_the_api_refuses(change: dict[str, Any], fragment: str) -> None:
    feast = {k: v for k, v in {**FEAST, **change}.items() if v is not None}
    with pytest.raises(ValidationError, match="onlineFeatures") as caught:
        api.RolloutSpec.model_validate(spec(feast))
    assert fragment in str(caught.value)


@pytest.mark.parametrize("timeout", ["1ms", "100ms", "9999ms", "1s", "10s"])
def test_the_timeout_bounds_are_inclusive(timeout: str) -> None:
    read = parse_rollout_spec(spec({**FEAST, "timeout": timeout}))
    assert read.online_features is not None and read.online_features.timeout == timeout
