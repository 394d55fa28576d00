"""Where a TrainingPipeline's spec.data.source may be read: the same rules and the same scope
function as artifact URIs (noria.artifact_scope), plus the store's shared datasets/ folder and the
glob characters a source may use. The red-team finding: a pipeline in ml2 trained on
ml's logged production features through ``.../ml/churn/predictions/``, ``file:///etc/`` or
``.../ml2/../ml/...``."""

from __future__ import annotations

import pytest
from noria.api import validate_manifest
from noria.api.common import ARTIFACT_URI_RULES, DATA_SOURCE_RULES, data_source_problems
from noria.artifact_scope import (
    TRUSTED_DATA_PREFIXES_ENV,
    ArtifactScope,
    InvalidTrustedPrefix,
    data_source_scope,
)
from noria.settings import Settings
from pydantic import ValidationError

ROOT = "file:///var/lib/noria/store"
SCOPE = data_source_scope(ROOT)
TRUSTING = data_source_scope(ROOT, ("s3://lake/{namespace}/", "file:///mnt/shared-data/"))


@pytest.mark.parametrize(("uri", "namespace", "scope", "refused_because"), [
    # in scope
    (f"{ROOT}/datasets/churn/", "ml2", SCOPE, None),
    (f"{ROOT}/datasets/churn/part-0.parquet", "ml2", SCOPE, None),
    (f"{ROOT}/datasets/churn/month=*/*.parquet", "ml2", SCOPE, None),  # a glob of partitions
    (f"{ROOT}/datasets/churn/day=2026-1[0-2]-*/", "ml2", SCOPE, None),
    (f"{ROOT}/ml2/exports/churn.csv", "ml2", SCOPE, None),  # the namespace's own folder
    # the namespace's own logs (the feedback loop's normal path), of this or another pipeline:
    # all pipelines of one namespace are one tenant
    (f"{ROOT}/ml2/other-pipeline/predictions/", "ml2", SCOPE, None),
    (f"{ROOT}/ml2/other-pipeline/feedback/", "ml2", SCOPE, None),
    ("s3://lake/ml2/churn/", "ml2", TRUSTING, None),
    ("file:///mnt/shared-data/churn.parquet", "ml2", TRUSTING, None),
    # another namespace's store, its logs above all
    (f"{ROOT}/ml/churn/predictions/", "ml2", SCOPE, "outside namespace ml2's store"),
    (f"{ROOT}/ml/churn/feedback/", "ml2", SCOPE, "outside namespace ml2's store"),
    (f"{ROOT}/ml/*/predictions/", "ml2", SCOPE, "outside namespace ml2's store"),
    (f"{ROOT}/ml2x/churn/", "ml2", SCOPE, "outside namespace ml2's store"),  # ml2 is a prefix of ml2x
    (f"{ROOT}/*/churn/predictions/", "ml2", SCOPE, "outside namespace ml2's store"),  # a glob over tenants
    (f"{ROOT}/datasetsx/churn/", "ml2", SCOPE, "outside namespace ml2's store"),
    (f"{ROOT}/", "ml2", SCOPE, "outside namespace ml2's store"),
    ("s3://lake/ml/churn/", "ml2", TRUSTING, "outside namespace ml2's store"),  # {namespace} is ml2's
    ("s3://lake/ml/churn/", "ml2", SCOPE, "none configured (NORIA_TRUSTED_DATA_PREFIXES)"),
    # elsewhere on the file system, other schemes
    ("file:///etc/", "ml2", SCOPE, "outside namespace ml2's store"),
    ("file:///etc/passwd", "ml2", SCOPE, "outside namespace ml2's store"),
    ("http://data.example.com/churn.csv", "ml2", SCOPE, "must be file:///<absolute path> or s3://"),
    ("file://host/var/lib/noria/store/ml2/", "ml2", SCOPE, "must be file:///<absolute path> or s3://"),
    ("s3:///churn/", "ml2", SCOPE, "must be file:///<absolute path> or s3://"),
    ("/var/lib/noria/store/ml2/", "ml2", SCOPE, "must be file:///<absolute path> or s3://"),
    # syntax that could hide where the path leads
    (f"{ROOT}/ml2/../ml/churn/predictions/", "ml2", SCOPE, "'.' or '..' path segments"),
    (f"{ROOT}/datasets/../ml/churn/", "ml2", SCOPE, "'.' or '..' path segments"),
    (f"{ROOT}/ml2/./churn/", "ml2", SCOPE, "'.' or '..' path segments"),
    (f"{ROOT}/ml2/%2e%2e/ml/churn/", "ml2", SCOPE, "may contain only"),
    (f"{ROOT}/ml2//churn/", "ml2", SCOPE, "empty path segment"),
    (f"{ROOT}/ml2/churn/?.parquet", "ml2", SCOPE, "query or a fragment"),
    (f"{ROOT}/ml2/churn#x", "ml2", SCOPE, "query or a fragment"),
    (f"{ROOT}/ml2/chu rn/", "ml2", SCOPE, "may contain only"),
    (f"{ROOT}/ml2/churn\\..\\ml/", "ml2", SCOPE, "may contain only"),
])
def test_data_source_scope(uri: str, namespace: str, scope, refused_because: str | None) -> None:
    why = scope.problem(uri, namespace)
    if refused_because is None:
        assert why is None, why
    else:
        assert why is not None and refused_because in why, why


def test_the_refusal_names_every_place_the_data_may_be() -> None:
    why = SCOPE.problem("file:///etc/", "ml2")
    assert why is not None
    assert f"{ROOT}/ml2/" in why and f"{ROOT}/datasets/" in why and TRUSTED_DATA_PREFIXES_ENV in why


def test_datasets_is_shared_for_data_only_never_for_artifacts() -> None:
    uri = f"{ROOT}/datasets/churn/v1/model.skops"
    assert SCOPE.problem(uri, "ml2") is None
    assert ArtifactScope(ROOT).problem(uri, "ml2") is not None


def test_one_rule_list_only_the_characters_differ() -> None:
    """A data source obeys the artifact rules, with glob characters added and nothing else."""
    assert DATA_SOURCE_RULES[:-1] == ARTIFACT_URI_RULES[:-1]
    glob = f"{ROOT}/datasets/churn/*/[ab].parquet"
    assert data_source_problems(glob) == []
    assert ArtifactScope(ROOT).problem(glob, "ml2") is not None  # an artifact is one named file


def check_data_source_of(namespace: str, source: str):
    return SCOPE.check_data_source({"metadata": {"namespace": namespace, "name": "churn"},
                                    "spec": {"data": {"source": source}}})


def test_check_names_the_field() -> None:
    refused = check_data_source_of("ml2", f"{ROOT}/ml/churn/predictions/")
    assert refused is not None and refused.field == "spec.data.source"
    assert refused.message.startswith(f"spec.data.source '{ROOT}/ml/churn/predictions/' is outside")
    assert check_data_source_of("ml2", f"{ROOT}/datasets/churn/") is None
    missing = SCOPE.check_data_source({"metadata": {"namespace": "ml2"}, "spec": {}})
    assert missing is not None and "missing" in missing.message


def test_settings_read_trusted_data_prefixes_apart_from_artifact_prefixes() -> None:
    settings = Settings.from_env({TRUSTED_DATA_PREFIXES_ENV: "s3://lake/{namespace}, file:///mnt/data/",
                                  "NORIA_TRUSTED_ARTIFACT_PREFIXES": "s3://models/"})
    assert settings.trusted_data_prefixes == ("s3://lake/{namespace}/", "file:///mnt/data/")
    assert settings.data_scope().problem("s3://lake/ml2/x.parquet", "ml2") is None
    assert settings.data_scope().problem("s3://models/ml2/x.parquet", "ml2") is not None
    assert settings.artifact_scope().problem("s3://lake/ml2/x.skops", "ml2") is not None


@pytest.mark.parametrize("prefix", ["file:///", "http://lake/", "file:///mnt/../etc/", "s3://lake/a*/"])
def test_an_untrustworthy_data_prefix_stops_the_operator_naming_the_setting(prefix: str) -> None:
    with pytest.raises(InvalidTrustedPrefix, match=TRUSTED_DATA_PREFIXES_ENV):
        Settings.from_env({TRUSTED_DATA_PREFIXES_ENV: prefix})


def pipeline_manifest(source: str) -> dict:
    return {"apiVersion": "noria.dev/v1alpha1", "kind": "TrainingPipeline", "metadata": {"name": "churn"},
            "spec": {"model": {"task": "classification", "estimator": "sklearn.linear_model.LogisticRegression",
                               "target": "churned"}, "data": {"source": source}}}


@pytest.mark.parametrize(("source", "message"), [
    ("file:///var/lib/noria/store/ml2/../ml/churn/predictions/", "must not contain '.' or '..' path segments"),
    ("https://data.example.com/churn.csv", "must be file:///<absolute path> or s3://<bucket>/<key>"),
    ("s3://lake/churn/data.parquet?versionId=3", "must not carry a query or a fragment"),
    ("file:///var/lib/noria/store/datasets//churn/", "must not contain an empty path segment"),
    ("file:///var/lib/noria/store/ml2/%2e%2e/ml/", "may contain only letters, digits and"),
])
def test_pydantic_refuses_a_malformed_source_with_the_api_servers_words(source: str, message: str) -> None:
    with pytest.raises(ValidationError) as caught:
        validate_manifest(pipeline_manifest(source))
    assert message in str(caught.value) and "source" in str(caught.value)


@pytest.mark.parametrize("source", ["file:///var/lib/noria/store/datasets/churn/",
                                    "file:///var/lib/noria/store/datasets/events/month=*/*.parquet",
                                    "s3://lake/churn/"])
def test_pydantic_accepts_well_formed_sources(source: str) -> None:
    validate_manifest(pipeline_manifest(source))
