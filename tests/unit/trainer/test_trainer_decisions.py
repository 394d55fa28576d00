"""Pure parts of the trainer: spec parsing, the gate, tuning spaces, summaries, the atomic writer."""

from __future__ import annotations

import datetime as dt
import json

import pytest
from noria_trainer.artifacts import OutputError, OutputLocation
from noria_trainer.run import fit_summary
from noria_trainer.spec import SpecError, parse_pipeline_spec, parse_run_spec, window_of
from noria_trainer.training import decide_gate, sample_space

BASE = {"model": {"task": "classification", "estimator": "sklearn.ensemble.RandomForestClassifier",
                  "target": "y"}, "data": {"source": "file:///d/"}}


@pytest.mark.parametrize("metric,contender,champion,min_score,max_score,beat_by,verdict,words", [
    ("f1", 0.83, None, 0.70, None, 0.0, "passed", "f1 0.8300 meets minScore 0.7 and no champion to compare with"),
    ("f1", 0.65, None, 0.70, None, 0.0, "rejected", "f1 0.6500 is below minScore 0.7"),
    ("f1", 0.80, 0.82, 0.70, None, 0.0, "rejected", "does not beat champion churn-v6 has 0.8200"),
    ("f1", 0.83, 0.82, None, None, 0.02, "rejected", "the difference is +0.0100"),
    ("f1", 0.85, 0.82, None, None, 0.02, "passed", "beats champion churn-v6"),
    # a tie keeps the champion unless the margin is negative (defect 6: "0.5943 beats 0.5943")
    ("f1", 0.5943, 0.5943, None, None, 0.0, "rejected", "the difference is +0.0000 (a tie keeps the champion)"),
    ("accuracy", 0.7, 0.7, None, None, 0.0, "rejected", "a tie keeps the champion"),
    ("rmse", 12.5, 12.5, None, None, 0.0, "rejected", "a tie keeps the champion"),
    ("f1", 0.5943, 0.5943, None, None, -0.01, "passed", "the gain must be more than -0.01"),
    ("f1", 0.83, 0.82, None, None, 0.01, "rejected", "the difference is +0.0100"),  # must be MORE than the margin
    ("f1", 0.8301, 0.82, None, None, 0.01, "passed", "beats champion churn-v6"),
    # mustBeatChampionBy unset: the champion is scored and reported, not compared (the CRD's words; defect 7)
    ("f1", 0.60, 0.82, None, None, None, "passed", "not compared: mustBeatChampionBy is unset"),
    ("f1", 0.60, 0.82, 0.70, None, None, "rejected", "below minScore"),
    ("rmse", 80.0, 60.0, None, None, None, "passed", "champion churn-v6 has 60.0000 on the same holdout"),
    ("rmse", 55.0, 60.0, None, 70.0, 1.0, "passed", "rmse 55.0000 is within maxScore 70 and beats champion"),
    ("rmse", 75.0, None, None, 70.0, 0.0, "rejected", "rmse 75.0000 is above maxScore 70"),
    ("rmse", 59.5, 60.0, None, None, 1.0, "rejected", "lower is better"),
    ("f1", float("nan"), None, None, None, 0.0, "rejected", "could not be computed"),
])
def test_gate_decisions(metric, contender, champion, min_score, max_score, beat_by, verdict, words):
    decision = decide_gate(metric, contender, champion, "churn-v6" if champion is not None else None,
                           min_score, max_score, beat_by)
    assert decision.verdict == verdict
    assert words in decision.reason


def test_gate_quotes_thresholds_as_the_user_wrote_them():
    decision = decide_gate("f1", 0.6, None, None, 0.7, None, 0.0, {"minScore": "0.70"})
    assert decision.reason == "f1 0.6000 is below minScore 0.70"


def test_thresholds_are_decimal_strings_or_integers_as_the_api_says():
    as_strings = parse_pipeline_spec({**BASE, "evaluation": {"minScore": "0.70", "holdoutFraction": "0.25",
                                                             "mustBeatChampionBy": "0.01"}})
    assert as_strings.min_score == 0.7 and as_strings.holdout_fraction == 0.25
    assert as_strings.must_beat_champion_by == 0.01
    assert as_strings.thresholds_as_written == {"minScore": "0.70", "mustBeatChampionBy": "0.01"}
    assert parse_pipeline_spec({**BASE, "evaluation": {"mustBeatChampionBy": 0}}).must_beat_champion_by == 0.0
    # The API server refuses a float (its schema is int-or-string); the trainer reads the spec
    # through the same model, so it refuses it too, and says what to write instead.
    with pytest.raises(SpecError) as refused:
        parse_pipeline_spec({**BASE, "evaluation": {"minScore": 0.7, "holdoutFraction": 0.25}})
    assert str(refused.value) == (
        'spec.evaluation.holdoutFraction: 0.25 is a float: write it as a decimal string such as "0.25" (no floats:'
        ' quote the number); spec.evaluation.minScore: 0.7 is a float: write it as a decimal string such as "0.7"'
        " (no floats: quote the number)")


@pytest.mark.parametrize("value,rows,seconds", [
    ("180d", None, 180 * 86400), ("12h", None, 43200), ("50000 rows", 50000, None), ("2w", None, 14 * 86400),
    ("1 rows", 1, None), ("1h30m", None, 5400),
])
def test_window_forms(value, rows, seconds):
    spec = parse_pipeline_spec({**BASE, "data": {"source": "file:///d/", "timestampColumn": "t",
                                                 "window": {"last": value}}})
    assert spec.window == window_of(value)
    assert spec.window.rows == rows and spec.window.label == value
    assert (spec.window.duration.total_seconds() if spec.window.duration else None) == seconds


@pytest.mark.parametrize("spec,words", [
    ({**BASE, "model": {**BASE["model"], "task": "ranking"}},
     "spec.model.task: must be 'classification' or 'regression'"),
    ({**BASE, "model": {"task": "classification", "estimator": "x.Y"}}, "spec.model.target: required"),
    ({**BASE, "data": {"source": "file:///d/", "window": {"last": "soon"}}}, "spec.data.window.last: window must be"),
    ({**BASE, "data": {"source": "file:///d/", "window": {"last": 5000}}},
     "spec.data.window.last: expected string, got 5000"),
    ({**BASE, "data": {"source": "file:///d/", "window": {"last": "30d"}}},
     "spec.data: timestampColumn is required when a window is a duration"),
    ({**BASE, "data": {"source": "file:///d/", "window": {"last": "9 rows", "candidates": ["3 rows"]}}},
     "spec.data.window: set exactly one of last or candidates"),
    ({**BASE, "model": {**BASE["model"], "features": ["a", "a"]}}, "spec.model.features: a column is listed twice"),
    ({**BASE, "data": {"source": "file:///d/", "window": {"candidates": []}}},
     "spec.data.window.candidates: List should have at least 1 item"),
    ({**BASE, "data": {"source": "file:///d/", "format": "xlsx"}}, "spec.data.format: must be 'csv' or 'parquet'"),
    ({**BASE, "tuning": {"strategy": "random"}}, "spec.tuning.space: tuning strategy random needs a search space"),
    ({**BASE, "tuning": {"strategy": "bayes", "space": {"a": [1, 2]}}},
     "spec.tuning.strategy: must be 'none', 'grid' or 'random'"),
    ({**BASE, "evaluation": {"metric": "rmse"}}, "spec.evaluation.metric: metric does not fit the task"),
    ({**BASE, "evaluation": {"holdoutFraction": "0.95"}}, "spec.evaluation.holdoutFraction: '0.95' must be between"),
    ({**BASE, "model": {**BASE["model"], "features": ["a", "y"]}}, "the target column cannot also be a feature"),
    ({**BASE, "validation": {"columns": {"a": "complex"}}}, "spec.validation.columns.a: must be 'numeric'"),
    ({**BASE, "validation": {"schema": "exact"}}, "spec.validation.schema: must be 'strict' or 'lenient'"),
    ({**BASE, "validation": {"minRows": "1000"}}, "spec.validation.minRows: expected integer, got '1000'"),
    ({**BASE, "data": {"source": "file:///d/", "feedback": {"enable": True}}},
     "spec.data.feedback.enable: unknown field (known: enabled, idColumn)"),
    ({**BASE, "data": {"source": "file:///d/", "feedback": {"enabled": True, "idColumn": 7}}},
     "spec.data.feedback.idColumn: expected string, got 7"),
    ({**BASE, "data": {"source": "file:///d/../e/"}}, "spec.data.source: must not contain '.' or '..' path segments"),
    ({**BASE, "evaluation": {"minScore": "seventy"}},
     'spec.evaluation.minScore: must be an integer or a decimal string such as "0.05"'),
])
def test_bad_pipeline_specs_name_the_field(spec, words):
    with pytest.raises(SpecError) as refused:
        parse_pipeline_spec(spec)
    assert words in str(refused.value)


def test_run_spec_champion_digest_is_checked_for_shape():
    raw = {"runId": "churn-r2", "namespace": "ml", "pipeline": "churn", "version": 2, "spec": BASE,
           "outputUri": "file:///s/ml/churn/v2",
           "champion": {"name": "churn-v1", "artifactUri": "file:///m", "digest": "md5:abc"}}
    with pytest.raises(SpecError, match="champion.digest"):
        parse_run_spec(raw)


def test_run_spec_now_anchors_windows():
    raw = {"runId": "r", "namespace": "ml", "pipeline": "p", "version": 1, "spec": BASE, "outputUri": "file:///o",
           "now": "2026-01-02T03:04:05Z"}
    assert parse_run_spec(raw).now == dt.datetime(2026, 1, 2, 3, 4, 5, tzinfo=dt.UTC)


def test_random_space_keeps_integers_and_samples_wide_ranges_on_a_log_scale():
    sets = sample_space({"max_depth": [2, 8], "learning_rate": [0.001, 1.0], "loss": ["a", "b"]}, "random", 200, 0)
    assert all(isinstance(s["max_depth"], int) and 2 <= s["max_depth"] <= 8 for s in sets)
    rates = sorted(s["learning_rate"] for s in sets)
    assert rates[len(rates) // 2] < 0.1  # log-uniform median ≈ 0.03; uniform would be ≈ 0.5
    assert {s["loss"] for s in sets} == {"a", "b"}
    assert sample_space({"max_depth": [2, 8]}, "random", 5, 0) == sample_space({"max_depth": [2, 8]}, "random", 5, 0)


def test_grid_space_is_every_combination_up_to_the_trial_limit():
    grid = sample_space({"a": [1, 2, 3], "b": ["x", "y"]}, "grid", 4, 0)
    assert grid == [{"a": 1, "b": "x"}, {"a": 1, "b": "y"}, {"a": 2, "b": "x"}, {"a": 2, "b": "y"}]


def test_summary_fits_in_4_kib_even_with_a_huge_reason():
    summary = {"status": "failed", "runId": "r", "reason": "x" * 10_000, "metrics": {"f1": "0.9"},
               "championMetrics": None}
    text = fit_summary(summary)
    assert len(text.encode()) <= 4096
    assert json.loads(text)["reason"].startswith("xxx")


def test_atomic_writer_writes_all_files_and_refuses_to_overwrite(tmp_path):
    location = OutputLocation.of(f"file://{tmp_path}/ml/p/v3")
    location.preflight()
    location.write_atomically({"a.json": b"{}", "b.bin": b"\x00"})
    assert sorted(p.name for p in (tmp_path / "ml/p/v3").iterdir()) == ["a.json", "b.bin"]
    assert [p.name for p in (tmp_path / "ml/p").iterdir()] == ["v3"]
    with pytest.raises(OutputError, match="exists already"):
        location.write_atomically({"a.json": b"[]"})
    with pytest.raises(OutputError, match="exists already"):
        location.preflight()
    assert (tmp_path / "ml/p/v3/a.json").read_bytes() == b"{}"


def test_atomic_writer_refuses_even_an_empty_existing_directory(tmp_path):
    (tmp_path / "v4").mkdir()
    with pytest.raises(OutputError, match="exists already"):
        OutputLocation.of(f"file://{tmp_path}/v4").write_atomically({"a": b"1"})


def test_thread_limit_comes_from_the_environment(monkeypatch, capsys):
    from noria_trainer.run import thread_limit

    monkeypatch.setenv("NORIA_TRAINER_THREADS", "2")
    assert thread_limit() == 2
    monkeypatch.setenv("NORIA_TRAINER_THREADS", "many")
    assert thread_limit() is None and "not an integer" in capsys.readouterr().err
    monkeypatch.delenv("NORIA_TRAINER_THREADS")
    assert thread_limit() is None


def test_trainer_imports_nothing_outside_the_trainer_extra():
    """The image installs only the `trainer` extra: importing the trainer must not need kopf & co."""
    import subprocess
    import sys

    code = ("import sys, noria_trainer.__main__, noria_trainer.run; "
            "print(sorted(m for m in ('kopf', 'lightkube', 'httpx', 'prometheus_client', 'aiohttp', 'croniter')"
            " if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"
