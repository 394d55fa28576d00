"""The backtest's pure parts: the replay clock, the observations built from replayed traffic, the
split of the inputs into store and traffic, the periodic baseline's requests, the CLI's refusals."""

from __future__ import annotations

import datetime as dt
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml
from noria.backtest import cli, clock, observe, replay
from noria.backtest import scenarios as S
from noria.profile import build_profile
from noria.training import triggers

T0 = dt.datetime(2026, 1, 1, tzinfo=dt.UTC)


def stamps(seconds: list[float]) -> np.ndarray:
    return np.array([np.datetime64("2026-01-01T00:00:00", "ns") + np.timedelta64(int(s * 1e9), "ns")
                     for s in seconds])


# --- the clock ------------------------------------------------------------------------------------
@pytest.mark.parametrize(("text", "rows", "seconds"), [
    ("1000rows", 1000, None), ("250 rows", 250, None), ("1 row", 1, None),
    ("1h", None, 3600.0), ("30m", None, 1800.0), ("90s", None, 90.0), ("1d12h", None, 129600.0),
    ("500ms", None, 0.5),
])
def test_slice_sizes_parse_as_rows_or_durations(text, rows, seconds) -> None:
    size = clock.parse_slice(text)
    assert size.rows == rows
    assert (size.duration.total_seconds() if size.duration else None) == seconds


# Durations are the API's (noria.api.common.parse_duration): whole numbers, so "1.5d" is refused
# (it was read as 36 h before the backtest used the API's grammar) and says how to write one.
@pytest.mark.parametrize("text", ["0rows", "0s", "ten rows", "1 hour", "", "-5m", "1.5d", "2 h"])
def test_bad_slice_sizes_are_refused_with_the_option_named(text) -> None:
    with pytest.raises(ValueError, match="--slice") as refused:
        clock.parse_slice(text)
    assert "1000rows" in str(refused.value) or "positive" in str(refused.value)


def test_the_backtest_reads_durations_and_row_counts_as_the_api_does() -> None:
    from noria.api.common import parse_duration
    from noria.api.training_pipeline import parse_window

    for text in ("1h30m", "7d", "2w", "45s"):
        assert clock.parse_slice(text).duration == parse_duration(text) == clock.parse_delay(text)
    assert clock.parse_slice("50000 rows").rows == parse_window("50000 rows")[1] == 50000
    with pytest.raises(ValueError, match="--history '1.5d'"):
        clock.parse_slice("1.5d", "--history")


def test_row_slices_end_at_their_last_row_and_keep_the_remainder() -> None:
    cuts = clock.slices(stamps([0, 1, 2, 3, 4, 10, 11]), clock.parse_slice("3rows"))
    assert [(c.start_row, c.stop_row) for c in cuts] == [(0, 3), (3, 6), (6, 7)]
    assert [c.end for c in cuts] == [T0 + dt.timedelta(seconds=s) for s in (2, 10, 11)]
    assert cuts[1].start == T0 + dt.timedelta(seconds=3) and cuts[1].rows == 3


def test_duration_slices_pass_over_quiet_time_and_a_boundary_row_opens_the_next_slice() -> None:
    cuts = clock.slices(stamps([0, 5, 10, 35, 39]), clock.parse_slice("10s"))
    assert [(c.start_row, c.stop_row) for c in cuts] == [(0, 2), (2, 3), (3, 3), (3, 5)]
    assert [c.end for c in cuts] == [T0 + dt.timedelta(seconds=s) for s in (10, 20, 30, 40)]
    assert sum(c.rows for c in cuts) == 5


def test_traffic_out_of_time_order_is_refused() -> None:
    with pytest.raises(ValueError, match="time order"):
        clock.slices(stamps([0, 2, 1]), clock.parse_slice("2rows"))
    assert clock.slices(stamps([]), clock.parse_slice("2rows")) == []


# --- observations -------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def served_world():
    """Two versions' answers over 100 s, labels coming back 20 s later, and v1's profile."""
    rng = np.random.default_rng(0)
    frame = pd.DataFrame({"x": rng.normal(size=100), "segment": rng.choice(["a", "b", "c"], size=100)})
    profile = build_profile({"x": rng.normal(size=1000), "segment": rng.choice(["a", "b"], size=1000).tolist()},
                            {"x": "numeric", "segment": "categorical"})
    times = stamps(list(range(100)))
    labels = (frame["x"] > 0).astype(int).to_numpy()
    predictions = np.where(np.arange(100) % 4 == 0, 1 - labels, labels)  # every fourth answer wrong
    version = np.where(np.arange(100) < 60, "m-v1", "m-v2")
    served = []
    for v in ("m-v1", "m-v2"):
        keep = version == v
        served.append(observe.Served(v, times[keep], frame[keep].to_numpy(dtype=object), ("x", "segment"),
                                     predictions[keep], labels[keep], times[keep] + np.timedelta64(20, "s")))
    return frame, profile, served, labels, predictions


def test_drift_counts_are_the_servers_bins_of_the_versions_rows_inside_the_window(served_world) -> None:
    frame, profile, served, _, _ = served_world
    now = T0 + dt.timedelta(seconds=49)
    obs = observe.drift_observation(served, "m-v1", profile, now, dt.timedelta(seconds=30))
    inside = frame.iloc[20:50]  # (now - 30 s, now] = seconds 20..49, all answered by m-v1
    for name in ("x", "segment"):
        fp = profile.features[name]
        expected = fp.counts(inside[name].tolist() if fp.kind == "categorical" else inside[name].to_numpy())
        got = np.array([obs.counts[(name, label)] for label in fp.labels])
        assert np.array_equal(got, expected), name
    assert obs.counts[("segment", "other")] == (inside["segment"] == "c").sum()  # unseen in training -> other


def test_drift_counts_belong_to_one_version(served_world) -> None:
    _, profile, served, _, _ = served_world
    now = T0 + dt.timedelta(seconds=99)
    v2 = observe.drift_observation(served, "m-v2", profile, now, dt.timedelta(hours=1))
    assert sum(n for (f, _), n in v2.counts.items() if f == "x") == 40
    assert observe.drift_observation(served, "m-v9", profile, now, dt.timedelta(hours=1)).counts == {}


def test_feedback_counts_hold_the_labels_that_came_back_inside_the_window(served_world) -> None:
    _, _, served, labels, predictions = served_world
    now = T0 + dt.timedelta(seconds=50)  # labels of answers 0..30 are back (20 s delay)
    obs = observe.performance_observation(served, "m-v1", now, dt.timedelta(hours=1))
    assert sum(obs.counts.values()) == 31
    expected: dict[tuple[str, str], float] = {}
    for a, p in zip(labels[:31].tolist(), predictions[:31].tolist(), strict=True):
        expected[(str(a), str(p))] = expected.get((str(a), str(p)), 0.0) + 1
    assert obs.counts == expected
    value, n = triggers.live_metric("accuracy", obs.counts)
    assert n == 31 and value == pytest.approx(23 / 31)  # answers 0, 4, ..., 28 were wrong


# --- inputs -------------------------------------------------------------------------------------
def _frame(seconds: list[int]) -> pd.DataFrame:
    return pd.DataFrame({"ts": pd.to_datetime(T0) + pd.to_timedelta(seconds, unit="s"), "x": range(len(seconds)),
                         "y": [0, 1] * (len(seconds) // 2) + [0] * (len(seconds) % 2)})


def test_without_feedback_the_history_lands_first_and_traffic_lands_when_labelled() -> None:
    data = _frame([0, 1, 2, 3, 4, 5])
    out = replay.prepare(data, None, "ts", clock.parse_slice("2rows"), dt.timedelta(seconds=30))
    assert not out.feedback_log and list(out.traffic["x"]) == [2, 3, 4, 5]
    land = (out.store_rows[replay.LAND_AT] - pd.to_datetime(T0)).dt.total_seconds().tolist()
    assert land == [0, 1, 32, 33, 34, 35]


def test_with_feedback_the_data_lands_at_its_time_and_the_feedback_is_the_traffic() -> None:
    out = replay.prepare(_frame([0, 1]), _frame([5, 6, 7]), "ts", clock.parse_slice("2rows"), dt.timedelta(0))
    assert out.feedback_log and len(out.traffic) == 3 and len(out.store_rows) == 2


@pytest.mark.parametrize(("history", "message"), [("6rows", "nothing is left"), ("1h", "nothing is left")])
def test_a_history_covering_everything_is_refused(history, message) -> None:
    with pytest.raises(ValueError, match=message):
        replay.prepare(_frame([0, 1, 2, 3, 4, 5]), None, "ts", clock.parse_slice(history), dt.timedelta(0))


def test_the_periodic_baseline_asks_for_a_run_each_time_the_served_rows_pass_a_multiple(tmp_path) -> None:
    history, traffic = S.generate("noise", 0, rows=10)
    data = replay.prepare(history, traffic, S.TIMESTAMP, clock.parse_slice("5rows"), dt.timedelta(0))
    r = replay.Replay(S.pipeline("p", S.DEFAULT_TRIGGERS), data, replay.Policy.every(2500),
                      clock.parse_slice("1000rows"), tmp_path)
    assert r.tp["spec"]["triggers"] == {}  # baselines run without the spec's triggers
    seen = []
    for before, after in ((0, 1000), (1000, 2000), (2000, 3000), (3000, 4000), (4000, 5000)):
        r._request_retrain(after, before)
        seen.append(r.tp["metadata"]["annotations"].get(triggers.RETRAIN_ANNOTATION))
    assert seen == [None, None, "rows-1", "rows-1", "rows-2"]


@pytest.mark.parametrize(("task", "labels", "predictions", "expected"), [
    # Macro F1 (noria.scoring): class 1 scores 2·2/(3+2) = 0.8, class 0 scores 2·1/(1+2) = 0.667.
    ("classification", [1, 0, 1, 1], [1, 0, 0, 1], {"accuracy": 0.75, "f1": pytest.approx(0.7333333)}),
    ("classification", [], [], {"accuracy": None, "f1": None}),
    ("regression", [1.0, 2.0], [2.0, 2.0], {"rmse": pytest.approx(0.70710678)}),
])
def test_what_users_got_is_scored_per_slice(task, labels, predictions, expected) -> None:
    assert replay.slice_metrics(task, np.array(labels), np.array(predictions)) == expected


# --- the CLI's refusals ---------------------------------------------------------------------------
def _write(tmp_path: Path, manifest: dict) -> Path:
    path = tmp_path / "p.yaml"
    path.write_text(yaml.safe_dump(manifest))
    return path


def test_a_spec_without_a_timestamp_column_is_refused_naming_the_field(tmp_path, capsys) -> None:
    manifest = S.pipeline("p", S.DEFAULT_TRIGGERS)
    del manifest["spec"]["data"]["timestampColumn"]
    history, _ = S.generate("noise", 0, rows=10)
    history.to_parquet(tmp_path / "d.parquet")
    assert cli.main([str(_write(tmp_path, manifest)), "--data", str(tmp_path / "d.parquet")]) == 2
    assert "spec.data.timestampColumn is required" in capsys.readouterr().err


def test_an_invalid_spec_is_refused_with_the_api_servers_field_path(tmp_path, capsys) -> None:
    manifest = S.pipeline("p", {"drift": {"method": "psi", "threshold": "0.2"}, "cooldown": "soon"})
    assert cli.main([str(_write(tmp_path, manifest)), "--data", str(tmp_path / "none.parquet")]) == 2
    assert "spec.triggers.cooldown" in capsys.readouterr().err


def test_data_lacking_a_column_of_the_spec_is_refused(tmp_path, capsys) -> None:
    history, _ = S.generate("noise", 0, rows=10)
    history.drop(columns=["x3"]).to_parquet(tmp_path / "d.parquet")
    path = _write(tmp_path, S.pipeline("p", S.DEFAULT_TRIGGERS))
    assert cli.main([str(path), "--data", str(tmp_path / "d.parquet"), "--slice", "10rows"]) == 2
    assert "--data" in (err := capsys.readouterr().err) and "x3" in err


def test_python_m_noria_dispatches_backtest_without_starting_the_operator(tmp_path, capsys) -> None:
    from noria.__main__ import main

    with pytest.raises(SystemExit) as stop:
        main(["backtest", str(tmp_path / "missing.yaml"), "--data", "x"])
    assert stop.value.code == 2 and "cannot read" in capsys.readouterr().err


@pytest.mark.parametrize(("text", "seconds"), [("0s", 0.0), ("45s", 45.0), ("2h", 7200.0)])
def test_label_delays_may_be_zero(text, seconds) -> None:
    assert clock.parse_delay(text).total_seconds() == seconds
    with pytest.raises(ValueError, match="--label-delay"):
        clock.parse_delay("soon")
    with pytest.raises(ValueError, match="whole number"):
        clock.parse_delay("0.5s")


def test_observations_are_tagged_with_the_version_they_are_about(served_world) -> None:
    _, profile, served, _, _ = served_world
    now = T0 + dt.timedelta(seconds=99)
    assert observe.drift_observation(served, "m-v2", profile, now, dt.timedelta(hours=1)).version == "m-v2"
    assert observe.performance_observation(served, "m-v1", now, dt.timedelta(hours=1)).version == "m-v1"


@pytest.mark.timeout(900)
def test_the_command_replays_files_and_writes_its_record_and_plot(tmp_path, capsys) -> None:
    """Both ways data reaches training: --feedback traffic, and --data alone (batches landing)."""
    import json

    history, traffic = S.generate("noise", 0, rows=3000)
    history.to_parquet(tmp_path / "history.parquet")
    traffic.to_csv(tmp_path / "traffic.csv", index=False)
    pipeline = _write(tmp_path, S.pipeline("p", S.DEFAULT_TRIGGERS))
    out = tmp_path / "out"
    code = cli.main([str(pipeline), "--data", str(tmp_path / "history.parquet"), "--feedback",
                     str(tmp_path / "traffic.csv"), "--every", "1000", "--out", str(out)])
    printed = capsys.readouterr().out
    assert code == 0 and "every 1000 rows" in printed and "never retrain" in printed
    record = json.loads((out / "backtest.json").read_text())
    assert record["feedbackLoop"] and record["trafficRows"] == 3000
    periodic = record["policies"]["every 1000 rows"]
    assert [r["trigger"] for r in periodic["runs"]] == ["initial", "manual", "manual"]  # none after the last slice
    assert all(r["outcome"] == "Succeeded" for r in periodic["runs"]), periodic["runs"]
    assert (out / "backtest.png").read_bytes()[:4] == b"\x89PNG"

    both = pd.concat([history, traffic], ignore_index=True)
    both.to_parquet(tmp_path / "all.parquet")
    code = cli.main([str(pipeline), "--data", str(tmp_path / "all.parquet"), "--history", "10000rows",
                     "--every", "0", "--no-baselines", "--quiet", "--out", str(tmp_path / "out2")])
    assert code == 0
    record = json.loads((tmp_path / "out2" / "backtest.json").read_text())
    assert not record["feedbackLoop"] and record["trafficRows"] == 3000 and list(record["policies"]) == ["p (spec)"]


@pytest.mark.parametrize(("served", "retrains", "expected"), [
    (0.86, 3, "yes"),
    (0.86, 4, "no: 4 > 9/3 retrains"),
    (0.84, 1, "no: -0.0100"),
    (0.84, 5, "no: -0.0100, 5 > 9/3 retrains"),
])
def test_the_goal_is_periodic_accuracy_with_a_third_of_its_retrains(served, retrains, expected) -> None:
    from noria.backtest.evaluate import goal

    assert goal({"served": served, "retrains": retrains}, {"served": 0.85, "retrains": 9}) == expected
