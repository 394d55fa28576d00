"""docs/api.md covers every spec field of the three CRDs by its full path, in its own kind's table, and
every test it cites exists: a renamed or deleted test makes the page fail instead of silently vouching
for a field nobody checks. Rows may group fields with braces (``store.s3.{endpoint,region}``)."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytest
from noria.api import KINDS, crdgen

ROOT = Path(__file__).resolve().parents[2]
DOC = (ROOT / "docs" / "api.md").read_text()
SUITES = {"U": "unit", "I": "integration", "E": "e2e"}


def spec_paths(node: dict[str, Any], path: str = "") -> tuple[set[str], set[str]]:
    """``(leaves, every path)`` of a spec schema, full and without the ``spec.`` prefix: ``x[]`` is an
    item of array ``x``; a leaf is a field with no sub-fields (a scalar, a list of scalars, a map such as
    ``resources.requests`` or a free-form object such as ``model.params``)."""
    leaves, every = set(), set()
    props = node.get("properties") or {}
    items = node.get("items") if isinstance(node.get("items"), dict) else None
    if props:
        for name, child in props.items():
            sub = f"{path}.{name}" if path else name
            every.add(sub)
            child_leaves, child_every = spec_paths(child, sub)
            leaves |= child_leaves
            every |= child_every
    elif items and items.get("properties"):
        every.add(f"{path}[]")
        leaves, child_every = spec_paths(items, f"{path}[]")
        every |= child_every
    else:
        leaves.add(path)
    return leaves, every


def expand(text: str) -> list[str]:
    """Brace expansion as the page writes it: ``a.{b,c.{d,e}}`` is ``a.b``, ``a.c.d``, ``a.c.e``."""
    start = text.find("{")
    if start < 0:
        return [text]
    depth, parts, last = 0, [], start + 1
    for i in range(start, len(text)):
        depth += {"{": 1, "}": -1}.get(text[i], 0)
        if depth == 1 and text[i] == ",":
            parts.append(text[last:i])
            last = i + 1
        elif depth == 0:
            parts.append(text[last:i])
            return [out for part in parts for out in expand(text[:start] + part + text[i + 1:])]
    raise ValueError(f"unbalanced braces in {text!r}")


def section(kind: str) -> str:
    """The part of the page under ``## <Kind> (``, up to the next ``## `` heading."""
    match = re.search(rf"^## {kind} \(.*?(?=^## |\Z)", DOC, re.M | re.S)
    assert match, f"docs/api.md has no section '## {kind} ('"
    return match.group(0)


def documented(kind: str) -> set[str]:
    """The full field paths named in the first cell of each row of the kind's table."""
    out = set()
    for row in re.findall(r"^\| (`.*?) \|", section(kind), re.M):
        for code in re.findall(r"`([^`]+)`", row):
            out.update(expand(code))
    return out


def test_brace_expansion_and_paths() -> None:
    assert expand("lineage.{run,data.{source,feast.{repository}},parent}") == [
        "lineage.run", "lineage.data.source", "lineage.data.feast.repository", "lineage.parent"]
    leaves, every = spec_paths({"properties": {
        "a": {"type": "array", "items": {"type": "object", "properties": {"b": {"type": "integer"}}}},
        "r": {"properties": {"limits": {"type": "object", "additionalProperties": {"type": "string"}}}},
        "tags": {"type": "array", "items": {"type": "string"}}}})
    assert leaves == {"a[].b", "r.limits", "tags"}
    assert every == {"a", "a[]", "a[].b", "r", "r.limits", "tags"}


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
    """Each leaf field of the kind's spec (from the CRD the models generate) has a row of its own kind's
    table that names its full path, and each path a row names is a field of that kind: a field added,
    renamed or moved without its row fails here (a bare leaf name such as ``count`` or ``window`` that
    some other row happens to contain does not count)."""
    schema = crdgen.crd(kind)["spec"]["versions"][0]["schema"]["openAPIV3Schema"]["properties"]["spec"]
    leaves, every = spec_paths(schema)
    named = documented(kind.kind)
    assert len(leaves) > 15
    assert not sorted(leaves - named), f"docs/api.md, section {kind.kind}, has no row for {sorted(leaves - named)}"
    assert not sorted(named - every), f"docs/api.md, section {kind.kind}, names no such field: {sorted(named - every)}"


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
