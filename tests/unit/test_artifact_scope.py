"""Artifact scope: a ModelVersion's files must lie under its namespace's store or a trusted prefix."""

from __future__ import annotations

import pytest
from noria.artifact_scope import ArtifactScope, InvalidTrustedPrefix, parse_trusted_prefixes
from noria.settings import Settings

ROOT = "file:///var/lib/noria/store"
SCOPE = ArtifactScope(ROOT, parse_trusted_prefixes("s3://models/{namespace}/ file:///mnt/registry"))


def mv(uri: str, namespace: str = "ml", profile: str | None = None) -> dict:
    spec: dict = {"pipeline": "churn", "version": 1, "artifact": {"uri": uri, "digest": "sha256:" + "0" * 64}}
    if profile is not None:
        spec["profileUri"] = profile
    return {"metadata": {"name": "churn-v1", "namespace": namespace}, "spec": spec}


@pytest.mark.parametrize("uri", [
    f"{ROOT}/ml/churn/v1/model.skops",
    f"{ROOT}/ml/imported/model.skops",  # another pipeline of the same namespace: same tenant
    "s3://models/ml/churn/v1/model.skops",  # trusted, {namespace} = ml
    "file:///mnt/registry/churn/model.skops",
])
def test_in_scope(uri: str) -> None:
    assert SCOPE.check(mv(uri)) is None


@pytest.mark.parametrize(("uri", "fragment"), [
    (f"{ROOT}/ml2/churn/v1/model.skops", "outside namespace ml's store (file:///var/lib/noria/store/ml/)"),
    (f"{ROOT}/ml", "outside namespace ml's store"),  # the namespace folder itself is not a file in it
    (f"{ROOT}/ml-other/churn/v1/model.skops", "outside namespace ml's store"),  # prefix, not a folder
    ("file:///etc/passwd", "outside namespace ml's store"),
    ("s3://models/ml2/churn/model.skops", "outside namespace"),  # another namespace's trusted folder
    ("file:///mnt/registry2/model.skops", "outside namespace"),
    ("http://models.example.com/model.skops", "must be file:///<absolute path> or s3://<bucket>/<key>"),
    ("s3:///model.skops", "must be file:///<absolute path> or s3://<bucket>/<key>"),
    (f"{ROOT}/ml/../ml2/churn/v1/model.skops", "'..' path segments"),
    (f"{ROOT}/ml/churn/%2e%2e/x", "percent-escapes"),
    (f"{ROOT}/ml/churn/v1/model.skops?x=1", "query"),
])
def test_out_of_scope_names_the_field(uri: str, fragment: str) -> None:
    found = SCOPE.check(mv(uri))
    assert found is not None and found.field == "spec.artifact.uri"
    assert found.message.startswith("spec.artifact.uri ") and fragment in found.message


def test_profile_uri_is_scoped_too() -> None:
    found = SCOPE.check(mv(f"{ROOT}/ml/churn/v1/model.skops", profile=f"{ROOT}/ml2/churn/v1/profile.json"))
    assert found is not None and found.field == "spec.profileUri"


def test_no_trusted_prefix_says_none_is_configured() -> None:
    found = ArtifactScope(ROOT).check(mv("file:///etc/passwd"))
    assert found is not None and "none configured (NORIA_TRUSTED_ARTIFACT_PREFIXES)" in found.message


@pytest.mark.parametrize("text", ["http://registry/models", "file:///", "s3:///x", "file:///a/../b"])
def test_a_trusted_prefix_that_cannot_be_honoured_stops_the_operator(text: str) -> None:
    with pytest.raises(InvalidTrustedPrefix, match="NORIA_TRUSTED_ARTIFACT_PREFIXES"):
        Settings.from_env({"NORIA_TRUSTED_ARTIFACT_PREFIXES": text})


def test_settings_read_the_trusted_prefixes() -> None:
    settings = Settings.from_env({"NORIA_TRUSTED_ARTIFACT_PREFIXES": "s3://models/, file:///mnt/registry/"})
    assert settings.trusted_artifact_prefixes == ("s3://models/", "file:///mnt/registry/")
    assert settings.artifact_scope().check(mv("s3://models/anything/model.skops")) is None
