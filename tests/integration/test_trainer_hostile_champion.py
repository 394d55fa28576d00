"""The real trainer process (``python -m noria_trainer run``) given a hostile champion artifact.

The champion goes through the same loader as the server (noria.artifact). A champion that does not
verify fails the run before any data is read: exit code 6, the refusal kind in the summary's
reason (stdout and the termination log), no version written, no payload run. Failing is chosen
over training on without a comparison: a champion that does not verify means the store was tampered
with, and a contender that skipped the must-beat-the-champion gate must not reach users.
"""

from __future__ import annotations

import json
import subprocess
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
from hostile_artifacts import Case, build_corpus
from noria.artifact import sha256_file
from sklearn.datasets import load_breast_cancer
from training_helpers import start_trainer

EXIT_CHAMPION = 6
# The trainer has imported pandas, pyarrow and scikit-learn before the champion stage (about 240 MB
# here, the "spec" stage's peak); refusing a champion may add at most this much on top of that.
CHAMPION_STAGE_EXTRA_MB = 32


def _spec(source: Path, store: Path, champion: dict) -> dict:
    return {"runId": "cancer-r2", "trigger": "manual", "namespace": "ml", "pipeline": "cancer", "version": 2,
            "champion": champion, "storeRoot": f"file://{store}", "outputUri": f"file://{store}/ml/cancer/v2",
            "trustedDataPrefixes": [f"file://{source.parent}/"],  # the data lies beside the store
            "spec": {"model": {"task": "classification", "estimator": "sklearn.linear_model.LogisticRegression",
                               "target": "target"},
                     "data": {"source": f"file://{source}"}, "evaluation": {"metric": "f1"}}}


def _run_trainer(tmp_path: Path, name: str, spec: dict) -> tuple[int, str, dict, dict[str, float]]:
    """Exit code, stdout, termination-log summary and the peak RSS (MB) of each stage, as the
    trainer prints them from VmHWM (wait4's ru_maxrss would count the pages a child shares with
    this fat test process right after fork)."""
    proc, log = start_trainer(tmp_path, spec, name, stderr=subprocess.DEVNULL)
    stdout, _ = proc.communicate(timeout=600)
    peaks = {line["stage"]: line["peakRssMB"] for line in map(json.loads, stdout.splitlines())
             if line.get("event") == "done" and line.get("peakRssMB")}
    return proc.returncode, stdout, json.loads(log.read_text()), peaks


@pytest.fixture
def cancer_csv(tmp_path: Path) -> Path:
    path = tmp_path / "cancer.csv"
    load_breast_cancer(as_frame=True).frame.to_csv(path, index=False)
    return path


@pytest.fixture
def real_model(tmp_path: Path) -> bytes:
    from noria_server.reference_models import train_and_save

    return Path(train_and_save("logistic", str(tmp_path / "real"), rows=300).artifact_path).read_bytes()


def test_every_hostile_champion_fails_the_run_cleanly(tmp_path: Path, cancer_csv: Path, real_model: bytes) -> None:
    store = tmp_path / "store"
    cases = [c for c in build_corpus(tmp_path, real_model) if c.store_root == f"file://{store}"]

    def run(case: Case) -> dict:
        champion = {"name": "cancer-v1", "artifactUri": case.uri, "digest": case.digest, "profileUri": None}
        code, stdout, summary, peak = _run_trainer(tmp_path, case.name, _spec(cancer_csv, store, champion))
        return {"case": case, "code": code, "stdout": stdout, "summary": summary, "peak": peak}

    with ThreadPoolExecutor(max_workers=3) as pool:
        results = list(pool.map(run, cases))
    wrong = []
    for r in results:
        case, summary = r["case"], r["summary"]
        if r["code"] != EXIT_CHAMPION or summary["status"] != "failed" or summary["failedStage"] != "champion":
            wrong.append(f"{case.name}: exit {r['code']}, {summary}")
        elif f"refused ({case.kind})" not in summary["reason"] or not all(w in summary["reason"] for w in case.words):
            wrong.append(f"{case.name}: reason {summary['reason']!r}, expected {case.kind} {case.words}")
        if json.loads(r["stdout"].splitlines()[-1]) != summary:
            wrong.append(f"{case.name}: stdout and the termination log disagree")
        if case.marker is not None and case.marker.exists():
            wrong.append(f"{case.name}: the payload ran")
        peaks = r["peak"]
        if peaks.get("champion", 0.0) > peaks.get("spec", 0.0) + CHAMPION_STAGE_EXTRA_MB:
            wrong.append(f"{case.name}: peak RSS {peaks} MB")
    assert not wrong, "\n".join(wrong)
    # no half version: neither v2 nor a temporary sibling of it
    pipeline_dir = store / "ml" / "cancer"
    assert not (pipeline_dir.exists() and [p.name for p in pipeline_dir.glob("*v2*")])
    print("\n" + "\n".join(f"{r['case'].name:<45} {r['case'].kind:<22} trainer peak RSS: before the champion "
                           f"{r['peak'].get('spec', 0):6.1f} MB, refusing it {r['peak'].get('champion', 0):6.1f} MB"
                           for r in results))


def test_a_genuine_champion_in_the_store_is_compared(tmp_path: Path, cancer_csv: Path) -> None:
    """The same loader accepts what the trainer itself wrote: v1 is the champion of v2."""
    store = tmp_path / "store"
    first = _spec(cancer_csv, store, None)  # type: ignore[arg-type]
    first.update(runId="cancer-r1", version=1, outputUri=f"file://{store}/ml/cancer/v1")
    code, _, summary, _ = _run_trainer(tmp_path, "first", first)
    assert code == 0, summary
    model = store / "ml/cancer/v1/model.skops"
    champion = {"name": "cancer-v1", "artifactUri": f"file://{model}", "digest": sha256_file(str(model)),
                "profileUri": summary["profileUri"]}
    code, _, summary, _ = _run_trainer(tmp_path, "second", _spec(cancer_csv, store, champion))
    assert code == 0, summary
    assert summary["championMetrics"] and summary["championMetrics"]["f1"]
