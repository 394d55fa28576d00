"""The operator judges spec.data.feast.repository by the rule it judges spec.data.source by: the
trainer reads both (noria.artifact_scope.UriScope.check_data_source; the trainer checks again)."""

from __future__ import annotations

from noria.artifact_scope import FEAST_REPOSITORY_FIELD, data_source_scope

ROOT = "file:///var/lib/noria/store"
SCOPE = data_source_scope(ROOT)


def pipeline(repository: str) -> dict:
    return {"metadata": {"namespace": "ml", "name": "churn"},
            "spec": {"data": {"source": f"{ROOT}/datasets/labels/", "feast": {"repository": repository}}}}


def test_a_repository_in_the_shared_folder_or_the_namespaces_own_is_in_scope() -> None:
    assert SCOPE.check_data_source(pipeline(f"{ROOT}/datasets/feast/churn_repo")) is None
    assert SCOPE.check_data_source(pipeline(f"{ROOT}/ml/feast/churn_repo")) is None


def test_a_repository_of_another_namespace_is_refused_by_its_field() -> None:
    refused = SCOPE.check_data_source(pipeline(f"{ROOT}/other/feast/churn_repo"))
    assert refused is not None and refused.field == FEAST_REPOSITORY_FIELD
    assert refused.message.startswith(f"{FEAST_REPOSITORY_FIELD} '{ROOT}/other/feast/churn_repo' is outside")
