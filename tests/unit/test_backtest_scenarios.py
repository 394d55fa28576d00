"""The backtest end to end, through the real decide/triggers, the server's bin counter and the
in-process trainer: stationary data never retrains with the default triggers; a real change does.

Slow-ish (about a minute each on a busy two-core machine): the replays train real models."""

from __future__ import annotations

import numpy as np
import pytest
from noria.backtest import cli, clock
from noria.backtest import scenarios as S
from noria.training import triggers


def test_scenarios_are_deterministic_and_the_worlds_differ_where_they_say() -> None:
    h1, t1 = S.generate("abrupt", 3)
    h2, t2 = S.generate("abrupt", 3)
    assert h1.equals(h2) and t1.equals(t2) and len(t1) == 100_000
    assert len(h1) == S.HISTORY_ROWS and h1[S.TIMESTAMP].max() < t1[S.TIMESTAMP].min()
    before, after = t1.iloc[:50_000], t1.iloc[50_000:]
    assert after["x0"].mean() - before["x0"].mean() > 0.8  # inputs moved
    _, label = S.generate("label", 3)
    a, b = label.iloc[:50_000], label.iloc[50_000:]
    assert abs(b["x0"].mean() - a["x0"].mean()) < 0.05  # inputs did not
    # the concept did: x0 separates the labels one way before and the other way after
    assert np.corrcoef(a["x0"], a["y"])[0, 1] > 0.3 and np.corrcoef(b["x0"], b["y"])[0, 1] < -0.3
    _, recurring = S.generate("recurring", 3)
    means = [recurring["x0"].iloc[i:i + 30_000].mean() for i in (0, 38_000, 70_000)]
    assert means[0] < 0.1 < 0.9 < means[1] and means[2] < 0.1  # A, B, then A again


@pytest.mark.timeout(1200)
def test_noise_only_never_retrains_after_the_initial_run_with_the_default_triggers(tmp_path) -> None:
    history, traffic = S.generate("noise", 0)
    assert len(traffic) == 100_000
    record = cli.backtest(S.pipeline("noise", S.DEFAULT_TRIGGERS), history, traffic,
                          clock.parse_slice(cli.DEFAULT_SLICE), None, tmp_path, baselines=False)
    policy = next(iter(record["policies"].values()))
    assert [(r["trigger"], r["outcome"]) for r in policy["runs"]] == [(triggers.INITIAL, "Succeeded")], policy["runs"]
    assert policy["summary"]["servedRows"] == 100_000 and policy["summary"]["served"] > 0.85
    seen = [s["drift"] for s in policy["slices"]]
    assert sum(v is not None for v in seen) > 90  # the drift trigger did evaluate, pass after pass


@pytest.mark.timeout(1200)
def test_an_abrupt_change_is_caught_and_beats_never_retraining(tmp_path) -> None:
    history, traffic = S.generate("abrupt", 0, rows=60_000)  # the change is at row 50k
    record = cli.backtest(S.pipeline("abrupt", S.DEFAULT_TRIGGERS), history, traffic,
                          clock.parse_slice(cli.DEFAULT_SLICE), None, tmp_path)
    spec, never = record["policies"].values()
    assert all(r["outcome"] == "Succeeded" for r in spec["runs"] + never["runs"]), spec["runs"]
    retrains = [r for r in spec["runs"] if r["trigger"] != triggers.INITIAL]
    change = str(traffic[S.TIMESTAMP].iloc[50_000])[:16].replace(" ", "T")
    assert retrains and all(r["startedAt"] >= change for r in retrains)  # none before the change
    assert {r["trigger"] for r in retrains} <= {triggers.DRIFT, triggers.PERFORMANCE}
    after_change = [s for s in spec["slices"] if s["index"] >= 55]
    assert all(s["version"] != "abrupt-v1" for s in after_change)  # a retrained version serves
    assert spec["summary"]["served"] > never["summary"]["served"]
    late = [s["metrics"]["accuracy"] for s in after_change if s["index"] >= 57]
    late_never = [s["metrics"]["accuracy"] for s in never["slices"] if s["index"] >= 57]
    assert np.mean(late) > 0.7 > 0.4 > np.mean(late_never)  # recovering, where the old model stays wrong
    assert never["summary"]["runs"] == 1
