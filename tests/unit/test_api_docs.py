"""docs/api.md covers every spec field of the three CRDs, and every test it cites exists: a renamed or
deleted test makes the page fail instead of silently vouching for a field nobody checks."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytest
from noria.api import KINDS, crdgen

ROOT = Path(__file__).resolve().parents[2]
DOC = (ROOT / "docs" / "api.md").read_text()
SUITES = {"U": "unit", "I": "integration", "E": "e2e"}


def spec_fields(node: dict[str, Any], path: str = "spec") -> list[str]:
    out = []
    for name, child in (node.get("properties") or {}).items():
        out.append(f"{path}.{name}")
        out += spec_fields(child, f"{path}.{name}")
        if isinstance(child.get("items"), dict):
            out += spec_fields(child["items"], f"{path}.{name}[]")
    return out


def citations() -> list[tuple[str, str | None]]:
    """``(file under tests/, test name or None)`` for every `U/I/E `file::test`` on the page; a
    ``::name`` after a comma belongs to the file cited before it."""
    out = []
    for match in re.finditer(r"\b([UIE]) `([^`]+)`((?:, `[^`]+`)*)", DOC):
        current = None
        for ref in [match.group(2), *re.findall(r"`([^`]+)`", match.group(3))]:
            if ref.startswith("::"):
                file, test = current, ref[2:]
            else:
                file, _, test = ref.partition("::")
                current = file
            out.append((f"{SUITES[match.group(1)]}/{file}", test or None))
    return out


@pytest.mark.parametrize("kind", KINDS, ids=lambda k: k.kind)
def test_every_spec_field_is_on_the_page(kind: Any) -> None:
    schema = crdgen.crd(kind)["spec"]["versions"][0]["schema"]["openAPIV3Schema"]["properties"]["spec"]
    missing = [f for f in spec_fields(schema) if not re.search(rf"\b{re.escape(f.rsplit('.', 1)[-1])}\b", DOC)]
    assert not missing, f"docs/api.md does not mention {missing}"


def test_every_cited_test_exists() -> None:
    cited = citations()
    assert len(cited) > 100
    for file, test in cited:
        path = ROOT / "tests" / file
        assert path.is_file(), f"docs/api.md cites {file}, which does not exist"
        if test:
            assert re.search(rf"def {re.escape(test)}\(", path.read_text()), f"docs/api.md cites {file}::{test}"


def test_every_cited_invalid_example_exists() -> None:
    for pattern in re.findall(r"`((?:tp|mv|rollout)-[a-z0-9*-]+\.yaml)`", DOC):
        assert list((ROOT / "examples" / "invalid").glob(pattern)), f"docs/api.md cites examples/invalid/{pattern}"
