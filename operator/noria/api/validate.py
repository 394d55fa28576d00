"""Check Noria manifests offline, before they reach Git or a cluster:

    python -m noria.api.validate examples/03-rollout-canary/ my-pipeline.yaml

Every document of group noria.dev is parsed with its model; errors are printed with the field path
spelt as the API server spells it (``spec.strategy.canary.steps[1].setWeight``). Documents of
other groups are skipped. The exit code is 1 when any document is invalid. The API server applies
the same rules (the CRDs are generated from the same models), so this is a fast pre-commit check,
not a second opinion.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Iterable
from pathlib import Path

import yaml

from .common import GROUP
from .resources import field_errors


def _files(paths: Iterable[Path]) -> list[Path]:
    out: list[Path] = []
    for path in paths:
        out += (
            sorted(p for p in path.rglob("*") if p.suffix in (".yaml", ".yml")) if path.is_dir() else [path]
        )
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m noria.api.validate", description=__doc__.split("\n\n")[0]
    )
    parser.add_argument("paths", nargs="+", type=Path, help="YAML files or folders")
    args = parser.parse_args(argv)
    bad = checked = 0
    for file in _files(args.paths):
        try:
            documents = list(yaml.safe_load_all(file.read_text()))
        except (OSError, yaml.YAMLError) as error:
            print(f"{file}: cannot read: {error}")
            bad += 1
            continue
        for index, doc in enumerate(documents):
            if not isinstance(doc, dict) or not str(doc.get("apiVersion", "")).startswith(GROUP + "/"):
                continue
            checked += 1
            name = f"{doc.get('kind')}/{(doc.get('metadata') or {}).get('name', '?')}"
            errors = field_errors(doc)
            for path, message in errors:
                print(f"{file}[{index}] {name}: {path}: {message}")
            bad += bool(errors)
    print(f"{checked} Noria manifest(s) checked, {bad} invalid", file=sys.stderr)
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
