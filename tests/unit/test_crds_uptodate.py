"""crds/ (and the chart's copy) must be exactly what the models generate: `make crds` after a change."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml
from noria.api import KINDS, crdgen

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.parametrize("directory", ["crds", "charts/noria/crds"])
def test_generated_crds_match_the_committed_files(tmp_path: Path, directory: str) -> None:
    crdgen.write(tmp_path)
    expected = {p.name: p.read_text() for p in tmp_path.glob("*.yaml")}
    committed = {p.name: p.read_text() for p in (ROOT / directory).glob("*.yaml")}
    assert sorted(committed) == sorted(expected), f"{directory}/ holds other files than the generator writes"
    stale = [name for name in expected if committed[name] != expected[name]]
    assert not stale, f"{directory}/{stale} differ from the models: run `make crds` and commit the result"


def test_generator_writes_one_crd_per_kind_with_names_and_columns(tmp_path: Path) -> None:
    crdgen.main([str(tmp_path / "crds"), "--chart", str(tmp_path / "chart-crds")])
    for kind in KINDS:
        for folder in ("crds", "chart-crds"):
            doc = yaml.safe_load((tmp_path / folder / f"{kind.plural}.noria.dev.yaml").read_text())
            names = doc["spec"]["names"]
            assert names["kind"] == kind.kind
            assert names["categories"] == ["noria"]
            assert names["shortNames"] == list(kind.short_names)
            version = doc["spec"]["versions"][0]
            assert version["subresources"] == {"status": {}}
            assert [c["name"] for c in version["additionalPrinterColumns"]][-1] == "Age"
