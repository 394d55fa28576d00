"""spec.onlineFeatures.feast.feedbackPushSource: the API's rule for the name, and that the model-server
pods get it in a form the server's own flag parser reads back as the sink's settings."""

from __future__ import annotations

from typing import Any

import pytest
from noria.api import rollout as api
from noria.deployment import objects
from noria.deployment.spec import parse_rollout_spec
from noria.settings import Settings
from noria_server import feast_sink
from noria_server.__main__ import parser, serve_settings
from pydantic import ValidationError

REF = objects.RolloutRef("churn", "ml", "uid-1")
MV = {"metadata": {"name": "churn-v1"}, "spec": {"pipeline": "churn", "artifact": {"uri": "file:///x", "digest": ""}}}
FEAST = {"url": "http://feast.features:6566", "featureService": "churn_v1", "entityKeys": ["customer_id"]}


def spec(feast: dict[str, Any]) -> dict[str, Any]:
    return {"source": {"pipeline": "churn"}, "strategy": {"immediate": {}}, "onlineFeatures": {"feast": feast}}


def server_settings(feast: dict[str, Any], monkeypatch: pytest.MonkeyPatch) -> Any:
    read = parse_rollout_spec(spec(feast))
    deployment = objects.version_deployment(REF, MV, 1, Settings(), read.resources, read.prediction_log,
                                            read.feedback_token, read.store_access, read.online_features)
    (container,) = deployment["spec"]["template"]["spec"]["containers"]
    for e in container["env"]:
        if "value" in e:
            monkeypatch.setenv(e["name"], e["value"])
    settings = serve_settings(parser().parse_args(["serve"]), None)
    return settings


def test_the_push_source_reaches_the_server_as_its_sink(monkeypatch: pytest.MonkeyPatch) -> None:
    settings = server_settings({**FEAST, "feedbackPushSource": "churn_feedback"}, monkeypatch)
    assert settings.feedback_sink == feast_sink.SinkSettings(push_source="churn_feedback")
    settings.feedback_sink.validate()


def test_without_it_nothing_is_pushed(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(objects.FEAST_FEEDBACK_PUSH_SOURCE_ENV, raising=False)
    settings = server_settings(FEAST, monkeypatch)
    assert settings.feedback_sink is None and settings.online_features is not None


@pytest.mark.parametrize("name", ["churn feedback", "", "-x", "a" * 64, "churn/feedback"])
def test_the_api_refuses_a_name_feast_would_not_have(name: str) -> None:
    with pytest.raises(ValidationError, match="onlineFeatures") as caught:
        api.RolloutSpec.model_validate(spec({**FEAST, "feedbackPushSource": name}))
    assert "feedbackPushSource is the name of a Feast push source" in str(caught.value)
