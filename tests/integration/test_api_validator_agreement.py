"""``python -m noria.api.validate`` and the API server give the same verdict on every example.

Every Noria document (apiVersion ``noria.dev/...``) of every YAML file under examples/, at any
depth (examples/invalid/, examples/feast-churn/, ...), is checked twice: offline by the validator
(the pydantic models, through the same ``field_errors`` the command prints), and by the real
kube-apiserver with a server-side dry run under strict field validation (the CRD schema and its CEL
rules, generated from those models). A file one of them accepts and the other refuses is a rule
written twice and different: the validator would be a second opinion instead of a fast copy of the
first. The ``*.original.yaml`` files are the "before" of a transition rule; alone, they are ordinary
manifests and are checked like the rest.
"""

from __future__ import annotations

import json
import secrets
from pathlib import Path
from typing import Any

import pytest
import yaml
from noria.api import GROUP, KINDS, field_errors

pytestmark = pytest.mark.integration

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"
FILES = sorted(EXAMPLES.rglob("*.yaml"))
DRY_RUN = ("apply", "--server-side", "--dry-run=server", "--validate=strict", "--field-manager=noria-tests")


def noria_documents(path: Path) -> list[tuple[int, dict[str, Any]]]:
    return [(i, doc) for i, doc in enumerate(yaml.safe_load_all(path.read_text()))
            if isinstance(doc, dict) and str(doc.get("apiVersion", "")).startswith(GROUP + "/")]


CASES = [pytest.param(path, index, doc, id=f"{path.parent.name}/{path.name}[{index}]")
         for path in FILES for index, doc in noria_documents(path)]


@pytest.fixture(scope="module")
def dry_run_namespace(cluster: Any) -> Any:
    """Nothing is stored by a dry run, so one namespace serves every file."""
    name = f"t-agree-{secrets.token_hex(3)}"
    cluster.kubectl("create", "namespace", name)
    yield name
    cluster.kubectl("delete", "namespace", name, "--wait=false", check=False)


def test_every_example_is_checked() -> None:
    """No Noria document under examples/ escapes the comparison (a narrower glob once missed
    examples/feast-churn/pipeline.yaml), and files without one (a Feast repo, kind patches) add none."""
    checked = {(path, index) for path, index, _ in (case.values for case in CASES)}
    everywhere = {(path, index) for path in EXAMPLES.rglob("*.y*ml") for index, _ in noria_documents(path)}
    assert checked == everywhere
    folders = {path.parent.name for path, _ in checked}
    assert {"invalid", "feast-churn", "01-training-pipeline", "90-closed-loop"} <= folders
    assert {doc["kind"] for _, _, doc in (case.values for case in CASES)} == {k.kind for k in KINDS}
    assert len(CASES) >= 60


@pytest.mark.parametrize(("path", "index", "doc"), CASES)
def test_validator_and_api_server_agree(cluster: Any, dry_run_namespace: str, path: Path, index: int,
                                        doc: dict[str, Any]) -> None:
    offline = field_errors(doc)
    server = cluster.kubectl(*DRY_RUN, "-n", dry_run_namespace, "-f", "-", input=json.dumps(doc), check=False)
    server_accepts = server.returncode == 0
    assert server_accepts == (not offline), (
        f"{path.name}[{index}]: the API server {'accepts' if server_accepts else 'refuses'} it"
        f" ({server.stderr.strip() or 'no error'}), the validator says {offline or 'valid'}"
    )
