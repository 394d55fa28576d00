"""Noria's Argo CD health checks and actions (integrations/argocd/) under real gopher-lua.

Every case of every health_test.yaml and actions/action_test.yaml (Argo CD's fixture format) runs
through hack/luatest, a Go runner built from the module proxy with the gopher-lua Argo CD pins, in the
sandbox Argo CD gives argocd-cm scripts. Around it: the strings the scripts compare and write are the
ones the operator uses (noria.contracts, noria.conditions), and the generated argocd-cm snippet is
the Lua files, verbatim.
"""

from __future__ import annotations

import importlib.util
import json
import re
import shutil
import subprocess
from functools import cache
from pathlib import Path

import pytest
import yaml
from noria import conditions, contracts

ROOT = Path(__file__).resolve().parents[2]
ARGOCD = ROOT / "integrations" / "argocd"
KINDS = ARGOCD / "noria.dev"
# The clock the fixtures' expected outputs were written for (retrain stamps the time).
FIXTURE_NOW = "2026-12-02T09:00:00Z"
HEALTH_STATUSES = {"Healthy", "Progressing", "Degraded", "Suspended", "Missing", "Unknown"}


@cache
def luatest() -> Path:
    if shutil.which("go") is None:
        pytest.fail("Go is needed to build hack/luatest (the gopher-lua runner): install Go 1.26")
    out = subprocess.run(["bash", str(ROOT / "hack" / "build-luatest.sh")], capture_output=True, text=True,
                         check=False, timeout=900)
    assert out.returncode == 0, f"building hack/luatest failed:\n{out.stderr[-3000:]}"
    return Path(out.stdout.strip().splitlines()[-1]) / "luatest"


@cache
def run_all() -> dict[str, dict]:
    out = subprocess.run([str(luatest()), "run", "-now", FIXTURE_NOW, str(ARGOCD)], capture_output=True, text=True,
                         check=False, timeout=300)
    results = [json.loads(line) for line in out.stdout.splitlines() if line.strip()]
    assert results, f"luatest ran nothing:\n{out.stderr}"
    return {r["case"]: r for r in results}


def fixture_cases() -> list[str]:
    """Every case the fixture files declare, named as the runner names them."""
    cases = []
    for health_test in sorted(KINDS.glob("*/health_test.yaml")):
        kind = f"noria.dev/{health_test.parent.name}"
        for t in yaml.safe_load(health_test.read_text())["tests"]:
            cases.append(f"{kind}:health:{t['inputPath']}")
    for action_test in sorted(KINDS.glob("*/actions/action_test.yaml")):
        kind = f"noria.dev/{action_test.parent.parent.name}"
        spec = yaml.safe_load(action_test.read_text())
        cases += [f"{kind}:discovery:{t['inputPath']}" for t in spec.get("discoveryTests") or []]
        cases += [f"{kind}:action/{t['action']}:{t['inputPath']}" for t in spec.get("actionTests") or []]
    return cases


@pytest.mark.parametrize("case", fixture_cases())
def test_fixture_passes_under_gopher_lua(case: str) -> None:
    result = run_all().get(case)
    assert result is not None, f"luatest did not run {case}"
    assert result["ok"], f"{case}: {result.get('detail')}"


def test_the_runner_ran_exactly_the_declared_cases() -> None:
    assert sorted(run_all()) == sorted(fixture_cases())


@pytest.mark.parametrize("kind", ["Rollout", "ModelVersion", "TrainingPipeline"])
def test_every_kind_has_health_and_actions_with_fixtures(kind: str) -> None:
    base = KINDS / kind
    assert (base / "health.lua").is_file() and (base / "health_test.yaml").is_file()
    verdicts = {t["healthStatus"]["status"] for t in yaml.safe_load((base / "health_test.yaml").read_text())["tests"]}
    assert verdicts <= HEALTH_STATUSES
    assert {"Healthy", "Progressing", "Degraded"} <= verdicts, f"{kind}: fixtures miss a health status"
    actions = {p.parent.name for p in (base / "actions").glob("*/action.lua")}
    spec = yaml.safe_load((base / "actions" / "action_test.yaml").read_text())
    for discovery in spec["discoveryTests"]:
        assert {a["name"] for a in discovery["result"]} == actions, f"{kind}: discovery and action folders differ"
    tested = {t["action"] for t in spec["actionTests"] if "expectedOutputPath" in t}
    assert tested == actions, f"{kind}: actions without a fixture of their result: {actions - tested}"
    for name in actions:  # each action is offered by some fixture and refused (disabled) by another
        states = {a["disabled"] for d in spec["discoveryTests"] for a in d["result"] if a["name"] == name}
        assert states == {True, False}, f"{kind}/{name}: discovery never {'disables' if False in states else 'enables'} it"


EXPECTED = {
    "Rollout": {"promote", "promote-full", "abort", "retry", "pause", "resume"},
    "ModelVersion": {"approve", "reject"},
    "TrainingPipeline": {"retrain"},
}


@pytest.mark.parametrize("kind", sorted(EXPECTED))
def test_the_actions_issue_15_asks_for(kind: str) -> None:
    assert {p.parent.name for p in (KINDS / kind / "actions").glob("*/action.lua")} == EXPECTED[kind]


def lua_files() -> list[Path]:
    return sorted(KINDS.rglob("*.lua"))


def literals(path: Path) -> list[str]:
    return re.findall(r'"((?:[^"\\]|\\.)*)"', path.read_text())


PEOPLE_ANNOTATIONS = {contracts.ANNOTATION_PROMOTE, contracts.ANNOTATION_ABORT, contracts.ANNOTATION_RETRY,
                      contracts.ANNOTATION_APPROVE, contracts.ANNOTATION_REJECT, contracts.ANNOTATION_RETRAIN}


@pytest.mark.parametrize("path", lua_files(), ids=lambda p: str(p.relative_to(KINDS)))
def test_annotation_names_in_lua_are_the_contracts(path: str | Path) -> None:
    path = Path(path)
    named = {s for s in literals(path) if s.startswith(contracts.PREFIX)}
    assert named <= PEOPLE_ANNOTATIONS, f"{path.name}: {named - PEOPLE_ANNOTATIONS} are not in noria.contracts"


def test_promote_values_are_the_contracts() -> None:
    actions = KINDS / "Rollout" / "actions"
    promote = (actions / "promote" / "action.lua").read_text()
    full = (actions / "promote-full" / "action.lua").read_text()
    assert f'["{contracts.ANNOTATION_PROMOTE}"] = "{contracts.PROMOTE_ONCE}"' in promote
    assert f'["{contracts.ANNOTATION_PROMOTE}"] = "{contracts.PROMOTE_FULL}"' in full


def compared_names(path: Path) -> set[str]:
    """Condition types, reasons and stages the script compares with or looks up."""
    text = path.read_text()
    found = set(re.findall(r'(?:==|~=)\s*"([^"]*)"', text)) | set(re.findall(r'condition\("([^"]*)"\)', text))
    return {s for s in found if not s.startswith(contracts.PREFIX)}


KNOWN_NAMES = ({v for k, v in vars(conditions).items() if k.isupper() and isinstance(v, str)}
               | set(contracts.STAGES) | {"full", ""})
# RunRecord.outcome values (operator/noria/api/training_pipeline.py), not condition reasons.
RUN_OUTCOMES = {"Succeeded", "Rejected", "Failed"}


@pytest.mark.parametrize("path", lua_files(), ids=lambda p: str(p.relative_to(KINDS)))
def test_condition_names_and_stages_in_lua_are_the_operators(path: str | Path) -> None:
    path = Path(path)
    unknown = compared_names(path) - KNOWN_NAMES - RUN_OUTCOMES
    assert not unknown, f"{path.name} compares with {unknown}, which noria.conditions/noria.contracts do not define"


def load_generator():  # noqa: ANN201
    spec = importlib.util.spec_from_file_location("generate_argocd_cm", ARGOCD / "generate_argocd_cm.py")
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_argocd_cm_snippet_is_up_to_date() -> None:
    generator = load_generator()
    assert (ARGOCD / "argocd-cm.yaml").read_text() == generator.render(), (
        "integrations/argocd/argocd-cm.yaml is stale: run python integrations/argocd/generate_argocd_cm.py")


def test_argocd_cm_snippet_holds_the_lua_files_verbatim() -> None:
    data = yaml.safe_load((ARGOCD / "argocd-cm.yaml").read_text())["data"]
    for kind in EXPECTED:
        key = f"noria.dev_{kind}"
        assert data[f"resource.customizations.health.{key}"] == (KINDS / kind / "health.lua").read_text()
        actions = yaml.safe_load(data[f"resource.customizations.actions.{key}"])
        assert actions["discovery.lua"] == (KINDS / kind / "actions" / "discovery.lua").read_text()
        assert {d["name"]: d["action.lua"] for d in actions["definitions"]} == {
            name: (KINDS / kind / "actions" / name / "action.lua").read_text() for name in EXPECTED[kind]}


def test_generator_writes_the_given_kubernetes_user_into_approve_and_reject() -> None:
    text = load_generator().render("system:serviceaccount:gitops:argocd-server", "gitops")
    data = yaml.safe_load(text)
    assert data["metadata"]["namespace"] == "gitops"
    actions = yaml.safe_load(data["data"]["resource.customizations.actions.noria.dev_ModelVersion"])
    for definition in actions["definitions"]:
        assert '"system:serviceaccount:gitops:argocd-server"' in definition["action.lua"]
        assert "argocd:argocd-server" not in definition["action.lua"]


def test_generator_refuses_a_user_name_that_would_break_the_lua() -> None:
    with pytest.raises(SystemExit, match="no quotes"):
        load_generator().render('alice" .. os.exit() .. "')


def run_health_script(tmp_path: Path, lua: str) -> subprocess.CompletedProcess[str]:
    """`luatest health` on one script and a minimal Rollout, as Argo CD would run it."""
    script = tmp_path / "health.lua"
    script.write_text(lua)
    obj = tmp_path / "obj.yaml"
    obj.write_text("apiVersion: noria.dev/v1alpha1\nkind: Rollout\nmetadata: {name: x}\n")
    return subprocess.run([str(luatest()), "health", str(script), str(obj)], capture_output=True, text=True,
                          check=False, timeout=60)


def test_sandbox_has_no_string_library_as_in_argo_cd(tmp_path: Path) -> None:
    """Argo CD runs argocd-cm scripts without Lua's string library; a script leaning on it must fail
    here as it would there (every Noria script passes without it)."""
    out = run_health_script(tmp_path, 'return {status = "Healthy", message = string.upper("x")}\n')
    assert out.returncode != 0 and "string" in out.stderr, out


def test_runner_refuses_an_unknown_health_status(tmp_path: Path) -> None:
    out = run_health_script(tmp_path, 'return {status = "Fine", message = "typo"}\n')
    assert out.returncode == 0, out
    assert json.loads(out.stdout) == {"status": "Unknown", "message": "Lua returned an invalid health status"}
