"""Real Feast for the tests: the ``.venv-feast`` interpreter (``make feast-venv``: Feast needs
pandas < 3, this venv has pandas 3) and the example repository (examples/feast-churn) applied
into a store folder. Shared by the training tests and, later, the online-lookup ones."""

from __future__ import annotations

import importlib.util
import json
import os
import shutil
import subprocess
from pathlib import Path
from types import ModuleType

import pandas as pd
from unavailable import unavailable

REPO_ROOT = Path(__file__).resolve().parents[2]
FEAST_VENV = REPO_ROOT / ".venv-feast"
FEAST_PYTHON = FEAST_VENV / "bin" / "python"
EXAMPLE = REPO_ROOT / "examples" / "feast-churn"
# One native thread like a trainer Job; Feast's usage reporting off (no network from tests).
ENV = {**os.environ, "PYTHONUNBUFFERED": "1", "NORIA_TRAINER_THREADS": "1", "FEAST_USAGE": "False"}


def feast_python() -> str:
    """The interpreter that has Feast, or skip (fail under CI) naming the make target."""
    if not FEAST_PYTHON.exists():
        unavailable(f"{FEAST_PYTHON} is missing: run `make feast-venv`")
    return str(FEAST_PYTHON)


def example_data() -> ModuleType:
    """examples/feast-churn/make_data.py as a module (its ``write`` makes a learnable data set)."""
    spec = importlib.util.spec_from_file_location("feast_churn_make_data", EXAMPLE / "make_data.py")
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def apply_repository(folder: Path, extra_stats: pd.DataFrame | None = None, customers: int = 200) -> Path:
    """The example repository copied to ``folder`` with its generated data (plus ``extra_stats``
    rows in the feature source), then ``feast apply``: what a user does before a pipeline names it."""
    shutil.copytree(EXAMPLE, folder, ignore=shutil.ignore_patterns("data", "__pycache__", "*.parquet"))
    example_data().write(folder, customers=customers)
    if extra_stats is not None:
        stats_path = folder / "data" / "customer_stats.parquet"
        stats = pd.concat([pd.read_parquet(stats_path), extra_stats], ignore_index=True)
        stats.to_parquet(stats_path, index=False)
    done = subprocess.run(
        [str(FEAST_VENV / "bin" / "feast"), "apply"],
        cwd=folder,
        env=ENV,
        capture_output=True,
        text=True,
        timeout=180,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    return folder


# Run in the Feast venv: the trainer's own join (noria_trainer.feast_source) on an entity file,
# printed as JSON records, so a test in this venv can assert the exact values joined.
_JOIN = """
import json, sys
import pandas as pd
from noria_trainer.feast_source import historical_rows
from noria_trainer.spec import FeastData
repository, entities, ts, service, features = sys.argv[1:6]
wanted = FeastData(repository, service or None, tuple(features.split(",")) if features else None)
rows = historical_rows(pd.read_parquet(entities), ts, wanted)
frame = rows.frame.assign(**{ts: rows.frame[ts].map(lambda t: t.isoformat())})
print(json.dumps({"features": rows.features, "lineage": rows.lineage,
                  "rows": json.loads(frame.to_json(orient="records"))}))
"""


def join_in_feast_venv(
    repository: Path, entities: Path, timestamp_column: str, service: str = "", features: tuple[str, ...] = ()
) -> dict:
    """The trainer's join by a feature service, or by feature references when ``service`` is empty."""
    done = subprocess.run(
        [
            feast_python(),
            "-c",
            _JOIN,
            f"file://{repository}",
            str(entities),
            timestamp_column,
            service,
            ",".join(features),
        ],
        env=ENV,
        capture_output=True,
        text=True,
        timeout=180,
    )
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout.splitlines()[-1])
