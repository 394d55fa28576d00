"""noria.contracts is the one source of the names processes share: the images, the chart, the pods the
operator creates and the API models all say what it says."""

from __future__ import annotations

import ast
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
    pod_security = yaml.safe_load((ROOT / "charts/noria/values.yaml").read_text())["podSecurityContext"]
    uid = contracts.POD_USER_ID
    for key in ("runAsUser", "runAsGroup", "fsGroup"):  # the Deployment renders podSecurityContext
        assert pod_security[key] == int(uid)


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


# --- no copies: the literal values of noria.contracts appear nowhere else ---------------------------
# Scanned: every Python file of the product and its tools (not tests: a test may spell a value out to
# check it). noria.api may restate none either, but it imports from contracts (checked above).
SCANNED_TREES = ("operator", "server_image", "trainer_image", "testbed", "benchmarks", "hack")
NOT_SCANNED = ("operator/noria/contracts.py",)
# The product code, where even a stage name written out is a second source. The test bed and the
# benchmarks read stages the way a person reads `kubectl get`, as an outside check of what the
# operator wrote, so a stage name there is an expectation, not a definition.
PRODUCT_TREES = ("operator/", "server_image/", "trainer_image/")
# (file, value): a literal equal to a contract value that means something else. Each says why.
ALLOWED_COPIES = {
    # A condition type (status.conditions[].type "Approved"), not the ModelVersion stage of that name.
    ("operator/noria/conditions.py", "Approved"),
    # A training run's outcome (status.lastRun.outcome), not a ModelVersion stage.
    ("operator/noria/training/pipeline.py", "Rejected"),
    # The row title of `kubectl noria get rollout` for status.canaryVersion (as `kubectl argo rollouts
    # get` titles it), not the ModelVersion stage; the stage it shows next to it is read from status.
    ("operator/noria/cli/rollout_view.py", "Canary"),
}
# Key-like strings under noria.dev that are not a contract of noria.contracts. Each says why.
ALLOWED_NORIA_KEYS = {
    # Schema ids inside files on the store (a profile, a trainer's metadata and report), versioned
    # with the file format and read back by the same module that writes them.
    "noria.dev/profile/v1", "noria.dev/metadata/v1", "noria.dev/report/v1",
    # The test bed's fake nodes: a label of the test bed's own, not of anything Noria creates.
    "noria.dev/node-agent",
}


def _contract_values() -> dict[str, str | int]:
    return {name: value for name, value in vars(contracts).items()
            if name.isupper() and isinstance(value, (str, int)) and not isinstance(value, bool)}


def _distinctive(value: str | int) -> bool:
    """Values no unrelated code would write by chance: keys, the group and version, headers, the uid.
    Plain words ("server", "true", "full") are checked where they are used (the tests above)."""
    if isinstance(value, int):
        return True
    return "/" in value or "." in value or value.startswith("x-noria") or value in contracts.STAGES


def _literals(path: Path) -> list[tuple[int, str | int]]:
    """The str and int literals of a file that are not docstrings (prose may name a key)."""
    tree = ast.parse(path.read_text(), filename=str(path))
    docstrings = set()
    for node in ast.walk(tree):
        body = getattr(node, "body", None)
        if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)) and body \
                and isinstance(body[0], ast.Expr) and isinstance(body[0].value, ast.Constant):
            docstrings.add(id(body[0].value))
    return [(node.lineno, node.value) for node in ast.walk(tree)
            if isinstance(node, ast.Constant) and id(node) not in docstrings
            and isinstance(node.value, (str, int)) and not isinstance(node.value, bool)]


def contract_copies(root: Path) -> list[str]:
    """Every literal under ``root`` that restates a distinctive contract value, as "file:line: why"."""
    values = {value: name for name, value in _contract_values().items() if _distinctive(value)}
    found = []
    for tree in SCANNED_TREES:
        for path in sorted((root / tree).rglob("*.py")):
            rel = path.relative_to(root).as_posix()
            if rel in NOT_SCANNED or rel.startswith("operator/noria/api/") or "/." in rel:
                continue
            for line, literal in _literals(path):
                name = values.get(literal)
                if name is not None:
                    expectation = literal in contracts.STAGES and not rel.startswith(PRODUCT_TREES)
                    if (rel, literal) not in ALLOWED_COPIES and not expectation:
                        found.append(f"{rel}:{line}: {literal!r} is noria.contracts.{name}")
                elif isinstance(literal, str) and contracts.GROUP in literal and literal not in ALLOWED_NORIA_KEYS \
                        and not any(ch.isspace() for ch in literal):  # a key or a path, not a sentence
                    found.append(f"{rel}:{line}: {literal!r} spells out the API group; build it from noria.contracts")
    return found


def test_no_contract_value_is_written_out_twice() -> None:
    copies = contract_copies(ROOT)
    assert not copies, "import these from noria.contracts instead:\n" + "\n".join(copies)


def test_the_scan_finds_a_copy(tmp_path: Path) -> None:
    """The scan itself can fail: a label key, a header, the uid and an f-string path written out."""
    (tmp_path / "operator").mkdir()
    (tmp_path / "operator" / "copy.py").write_text(
        '"""Docstrings may say noria.dev/rollout."""\n'
        'KEY = "noria.dev/rollout"\nHEADER = "x-noria-version"\nUID = 65532\n'
        'STAGE = "Production"\nPATH = f"/apis/noria.dev/v1alpha1/namespaces/{1}"\n')
    copies = contract_copies(tmp_path)
    assert [c.split(":")[1] for c in copies] == ["2", "3", "4", "5", "6"], copies


# --- the router config: one type, written by the operator, read by the router -----------------------
def test_the_router_reads_back_exactly_what_the_operator_writes() -> None:
    """Before, the operator built a dict by hand and the router parsed it with its own copy of the
    shape; now both use noria.router_config, and a config survives the round trip unchanged."""
    from noria.deployment import objects
    from noria.router_config import CONFIG_KEY, Backend, RouterConfig, parse_config
    from noria_server import router_config as server_side

    assert server_side.parse_config is parse_config and server_side.RouterConfig is RouterConfig
    assert objects.CONFIG_KEY is CONFIG_KEY
    written = objects.router_config("churn", "ml", "churn", {"churn-v7": 10, "churn-v6": 90}, ("churn-v8", 25))
    configmap = objects.router_configmap(objects.RolloutRef("churn", "ml", "u"), written)
    read = parse_config(configmap["data"][CONFIG_KEY])  # the text the router's watch gets
    assert read.to_json() == written
    assert read.backends == (Backend("churn-v6", "churn-churn-v6", objects.SERVER_PORT, 90),
                             Backend("churn-v7", "churn-churn-v7", objects.SERVER_PORT, 10))
    assert read.shadow == Backend("churn-v8", "churn-churn-v8", objects.SERVER_PORT, mirror_percent=25.0)
    assert written["shadow"]["mirrorPercent"] == 25 and isinstance(written["shadow"]["mirrorPercent"], int)


def test_prometheus_answers_are_read_by_a_pure_module() -> None:
    """noria.deployment.checks reads Samples without importing the HTTP client (no import-linter
    exception any more); the client re-exports the same types."""
    from noria import prometheus, samples

    assert prometheus.Sample is samples.Sample and prometheus.PrometheusError is samples.PrometheusError
    vector = {"status": "success", "data": {"resultType": "vector",
                                            "result": [{"metric": {"le": "0.1"}, "value": [0, "3"]}]}}
    assert samples.samples_of(vector, "q") == [samples.Sample({"le": "0.1"}, 3.0)]
    assert samples.samples_of({"status": "success", "data": {"resultType": "scalar", "result": [0, "2"]}}, "q") \
        == [samples.Sample({}, 2.0)]
    with pytest.raises(samples.PrometheusError, match="bad_data: parse error"):
        samples.samples_of({"status": "error", "errorType": "bad_data", "error": "parse error"}, "q")
    with pytest.raises(samples.PrometheusError, match="expected a vector"):
        samples.samples_of({"status": "success", "data": {"resultType": "matrix", "result": []}}, "q")
    pyproject = (ROOT / "pyproject.toml").read_text()
    assert "ignore_imports" not in pyproject and '"noria.samples"' in pyproject


def test_every_variable_the_operator_sets_on_a_serving_pod_is_one_the_server_reads() -> None:
    """The server's settings come from its environment (noria_server.__main__: one variable per flag),
    so a variable renamed on one side only is a setting silently left at its default."""
    from noria.deployment import objects
    from noria.deployment.spec import SecretKeyRef
    from noria.settings import Settings

    ref = objects.RolloutRef("churn", "ml", "uid-1")
    mv = {"metadata": {"name": "churn-v1"}, "spec": {"pipeline": "churn", "artifact": {"uri": "file:///x", "digest": ""}}}
    token = SecretKeyRef("feedback", "token")
    read = {node.value for path in (ROOT / "server_image/noria_server").glob("*.py")
            for node in ast.walk(ast.parse(path.read_text())) if isinstance(node, ast.Constant)}
    for deployment in (objects.version_deployment(ref, mv, 1, Settings(), feedback_token=token),
                       objects.router_deployment(ref, Settings(), feedback_token=token)):
        for container in deployment["spec"]["template"]["spec"]["containers"]:
            names = [env["name"] for env in container.get("env") or []]
            assert names and objects.FEEDBACK_TOKEN_ENV in names
            unread = [n for n in names if n not in read]
            assert not unread, f"{container['name']}: the operator sets {unread}, which noria_server never reads"


def test_the_charts_admission_policy_governs_the_contract_annotations() -> None:
    """A template cannot import Python, so the chart restates the annotation keys: they must be the
    ones in noria.contracts, every annotation a person writes and every one only the operator may."""
    import re

    text = (ROOT / "charts/noria/templates/admission-policy.yaml").read_text()
    # Blank the template: drop the lines that are only a directive, fill the inline ones.
    body = "\n".join(re.sub(r"{{.*?}}", "x", line) for line in text.splitlines()
                     if not re.fullmatch(r"\s*{{.*}}\s*", line))
    (policy,) = [doc for doc in yaml.safe_load_all(body) if doc and doc.get("kind") == "ValidatingAdmissionPolicy"]
    variables = {v["name"]: v["expression"] for v in policy["spec"]["variables"]}

    def keys(expression: str) -> set[str]:
        return set(re.findall(r"'([^']+)'", expression))

    assert keys(variables["governed"]) == {
        contracts.ANNOTATION_APPROVE, contracts.ANNOTATION_REJECT, contracts.ANNOTATION_PROMOTE,
        contracts.ANNOTATION_ABORT, contracts.ANNOTATION_RETRY, contracts.ANNOTATION_RETRAIN}
    assert keys(variables["operatorOnly"]) == {contracts.ANNOTATION_INITIAL_STAGE, contracts.ANNOTATION_INITIAL_REASON}
    assert policy["spec"]["matchConstraints"]["resourceRules"][0]["apiGroups"] == [contracts.GROUP]
