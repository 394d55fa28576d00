"""The chart's generated monitoring files (charts/noria/files/monitoring/) are what
``python -m noria.monitoring`` writes now: a changed metric name, alert or panel fails here until
the files are regenerated and committed."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from noria import monitoring

ROOT = Path(__file__).resolve().parents[2]


def test_committed_monitoring_files_are_up_to_date() -> None:
    stale = [name for name, text in monitoring.generated().items()
             if not (ROOT / monitoring.CHART_FILES / name).exists()
             or (ROOT / monitoring.CHART_FILES / name).read_text() != text]
    assert not stale, f"stale: {stale}; run `python -m noria.monitoring` and commit {monitoring.CHART_FILES}"


def test_the_generator_writes_every_file_into_the_directory_given(tmp_path: Path) -> None:
    run = subprocess.run([sys.executable, "-m", "noria.monitoring", str(tmp_path)], capture_output=True, text=True)
    assert run.returncode == 0, run.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(monitoring.generated())
    again = subprocess.run([sys.executable, "-m", "noria.monitoring", str(tmp_path)], capture_output=True, text=True)
    assert "0 changed" in again.stdout  # idempotent: a second run rewrites nothing


def test_the_generator_refuses_flags_with_its_usage() -> None:
    run = subprocess.run([sys.executable, "-m", "noria.monitoring", "--help"], capture_output=True, text=True)
    assert run.returncode == 2 and "usage: python -m noria.monitoring" in run.stderr
