"""noria.contracts is the one source of the names processes share: the images, the chart, the pods the
operator creates and the API models all say what it says."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml
from noria import contracts
from noria.api import common, model_version

ROOT = Path(__file__).resolve().parents[2]
DOCKERFILES = ("operator/Dockerfile", "trainer_image/Dockerfile", "server_image/Dockerfile")


def dockerfile_user(path: str) -> str:
    users = [line.split(None, 1)[1].strip() for line in (ROOT / path).read_text().splitlines()
             if line.split(None, 1)[:1] == ["USER"]]
    assert users, f"{path} has no USER"
    return users[-1]


@pytest.mark.parametrize("path", DOCKERFILES)
def test_every_image_runs_as_the_pods_user(path: str) -> None:
    uid = contracts.POD_USER_ID
    assert dockerfile_user(path) == f"{uid}:{uid}", f"{path}: USER must be {uid}:{uid} (noria.contracts.POD_USER_ID)"
    assert f"useradd --uid {uid} " in (ROOT / path).read_text(), f"{path}: the image's user must have uid {uid}"


def test_the_pods_the_operator_creates_run_as_the_images_user() -> None:
    from noria.deployment import objects
    from noria.settings import Settings
    from noria.training import runs

    ref = objects.RolloutRef("churn", "ml", "uid-1")
    mv = {"metadata": {"name": "churn-v1"}, "spec": {"pipeline": "churn", "artifact": {"uri": "file:///x", "digest": ""}}}
    uid = contracts.POD_USER_ID
    for deployment in (objects.version_deployment(ref, mv, 1, Settings()), objects.router_deployment(ref, Settings())):
        pod = deployment["spec"]["template"]["spec"]["securityContext"]
        assert (pod["runAsUser"], pod["runAsGroup"]) == (uid, uid)
    settings = runs.RunSettings(trainer_image="img:1", store_root="file:///s", store_pvc="s", store_mount_path="/s")
    tp = {"metadata": {"name": "churn", "namespace": "ml"}, "spec": {"model": {}, "data": {"source": "file:///s/d"}}}
    spec = runs.run_spec(tp, 1, "manual", None, settings)
    trainer_pod = runs.job(tp, {}, spec, "2026-11-23T12:00:00Z", settings)["spec"]["template"]["spec"]
    assert (trainer_pod["securityContext"]["runAsUser"], trainer_pod["securityContext"]["runAsGroup"]) == (uid, uid)


def test_every_pod_noria_creates_says_its_role_under_one_label_key() -> None:
    """Serving and training once disagreed (noria.dev/component vs app.kubernetes.io/component): one
    selector must find every Noria pod by role."""
    from noria.deployment import objects
    from noria.settings import Settings
    from noria.training import runs

    ref = objects.RolloutRef("churn", "ml", "uid-1")
    mv = {"metadata": {"name": "churn-v1"}, "spec": {"pipeline": "churn", "artifact": {"uri": "file:///x", "digest": ""}}}
    settings = runs.RunSettings(trainer_image="img:1", store_root="file:///s", store_pvc="s", store_mount_path="/s")
    tp = {"metadata": {"name": "churn", "namespace": "ml"}, "spec": {"model": {}, "data": {"source": "file:///s/d"}}}
    pods = {
        contracts.COMPONENT_SERVER: objects.version_deployment(ref, mv, 1, Settings())["spec"]["template"],
        contracts.COMPONENT_ROUTER: objects.router_deployment(ref, Settings())["spec"]["template"],
        contracts.COMPONENT_TRAINER: runs.job(tp, {}, runs.run_spec(tp, 1, "manual", None, settings),
                                              "2026-11-23T12:00:00Z", settings)["spec"]["template"],
    }
    for role, template in pods.items():
        labels = template["metadata"]["labels"]
        assert labels[contracts.LABEL_COMPONENT] == role, (role, labels)
        assert labels[contracts.LABEL_MANAGED_BY] == contracts.MANAGED_BY
        assert "app.kubernetes.io/component" not in labels, (role, labels)


def test_the_chart_runs_the_operator_as_the_images_user() -> None:
    text = (ROOT / "charts/noria/templates/deployment.yaml").read_text()
    uid = contracts.POD_USER_ID
    for key in ("runAsUser", "runAsGroup", "fsGroup"):
        assert f"{key}: {uid}" in text


def test_the_api_reads_group_and_stages_from_the_contracts() -> None:
    assert (common.GROUP, common.VERSION, common.API_VERSION) == (
        contracts.GROUP, contracts.VERSION, contracts.API_VERSION)
    assert model_version.STAGES == contracts.STAGES
    crd = yaml.safe_load((ROOT / "crds/modelversions.noria.dev.yaml").read_text())
    status = crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"]["properties"]["status"]
    assert tuple(status["properties"]["stage"]["enum"]) == contracts.STAGES
    assert set(contracts.APPROVABLE_STAGES) == {contracts.REGISTERED, contracts.CANDIDATE}


def test_the_contracts_module_imports_nothing_of_the_project() -> None:
    """Every image ships it; it must not drag the operator's dependencies in."""
    source = (ROOT / "operator/noria/contracts.py").read_text()
    imports = [line for line in source.splitlines() if line.startswith(("import ", "from "))]
    assert imports == ["from __future__ import annotations", "from typing import Final"]
