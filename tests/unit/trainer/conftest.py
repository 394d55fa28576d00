"""Fixtures for trainer runs: a store root, run-spec builder, and an in-process runner."""

from __future__ import annotations

import io
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from noria_trainer.run import run_from_file
from trainer_datasets import NOW, sklearn_frame


@pytest.fixture
def store_root(tmp_path: Path) -> Path:
    root = tmp_path / "store"
    root.mkdir()
    return root


@pytest.fixture
def make_spec(store_root: Path) -> Callable[..., dict[str, Any]]:
    def make(source: str, *, version: int = 1, pipeline: str = "churn", champion: dict | None = None,
             **spec: Any) -> dict[str, Any]:
        return {
            "runId": f"{pipeline}-r{version}", "trigger": "manual", "namespace": "ml", "pipeline": pipeline,
            "version": version, "spec": {"data": {"source": source}, **spec}, "champion": champion,
            "outputUri": f"file://{store_root}/ml/{pipeline}/v{version}", "storeRoot": f"file://{store_root}",
            # The tests write their data beside the store (tmp_path): a location trusted for data,
            # as NORIA_TRUSTED_DATA_PREFIXES would make it. test_trainer_data_scope.py drops it.
            "trustedDataPrefixes": [f"file://{store_root.parent}/"],
            "now": NOW.isoformat(),
        }
    return make


@pytest.fixture
def cancer_csv(tmp_path: Path) -> Path:
    """The breast-cancer data set (binary target ``target``) as a CSV beside the store: a data
    source the spec trusts."""
    path = tmp_path / "data" / "cancer.csv"
    path.parent.mkdir()
    sklearn_frame("breast_cancer").to_csv(path, index=False)
    return path


class RunResult:
    def __init__(self, code: int, stdout: str, termination_log: Path):
        self.code = code
        self.lines = [json.loads(line) for line in stdout.splitlines() if line.strip()]
        self.summary = self.lines[-1]
        self.termination_log = termination_log

    @property
    def progress(self) -> list[dict[str, Any]]:
        return self.lines[:-1]

    def output_dir(self, spec: dict[str, Any]) -> Path:
        return Path(spec["outputUri"].removeprefix("file://"))


@pytest.fixture
def run_trainer(tmp_path: Path) -> Callable[[dict[str, Any]], RunResult]:
    counter = iter(range(1000))

    def run(spec: dict[str, Any]) -> RunResult:
        i = next(counter)
        spec_path = tmp_path / f"spec-{i}.json"
        spec_path.write_text(json.dumps(spec))
        log = tmp_path / f"termination-{i}.log"
        out = io.StringIO()
        code = run_from_file(str(spec_path), str(log), stream=out)
        return RunResult(code, out.getvalue(), log)

    return run




@pytest.fixture(autouse=True)
def one_training_thread(monkeypatch):
    """The test machine is shared: spinning OpenMP pools make HistGradientBoosting 10x slower there."""
    monkeypatch.setenv("NORIA_TRAINER_THREADS", "1")
