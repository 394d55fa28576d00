"""The demo's report shows the backtest of the demo's own pipeline: examples/90-closed-loop/pipeline.yaml
replayed by ``noria backtest`` over the world ``demo/dataset.py`` generates (real trainer, real decide)."""

from __future__ import annotations

import struct

import pytest
from noria_testbed.binaries import REPO_ROOT
from noria_testbed.demo import backtest, report
from noria_testbed.demo.timeline import Timeline

PIPELINE = REPO_ROOT / "examples" / "90-closed-loop" / "pipeline.yaml"
# the world changes after the demo pipeline's 3m cooldown, as in the story
SMALL = backtest.DemoReplay(history_rows=3000, batch_rows=3000, rate=10.0, before_seconds=200.0, after_seconds=120.0,
                            slice="10s", every=1200)


def test_the_demo_world_replayed_is_the_storys(tmp_path) -> None:
    import datetime as dt

    start = dt.datetime(2026, 1, 1, tzinfo=dt.UTC)
    data, traffic = backtest.inputs(SMALL, start)
    assert len(data) == 6000 and len(traffic) == 3200
    assert data["event_time"].iloc[:3000].max() < start <= traffic["event_time"].min()
    change = start + dt.timedelta(seconds=200)
    assert (data["event_time"].iloc[3000:] >= change).all()  # the batch lands after the change
    before, after = traffic[traffic["event_time"] < change], traffic[traffic["event_time"] >= change]
    assert after["data_usage_gb"].mean() > 1.6 * before["data_usage_gb"].mean()  # the drifted world


@pytest.mark.timeout(1200)
def test_the_report_shows_the_backtest_of_the_demos_pipeline(tmp_path) -> None:
    record = backtest.run(PIPELINE, tmp_path / "work", SMALL)
    spec, never, periodic = record["policies"].values()
    assert record["pipeline"] == "churn" and record["feedbackLoop"] is True
    assert never["summary"]["runs"] == 1 and periodic["summary"]["runs"] >= 3
    assert all(r["outcome"] == "Succeeded" for r in spec["runs"]), spec["runs"]
    retrains = [r for r in spec["runs"] if r["trigger"] != "initial"]
    assert retrains, spec["runs"]  # the change is seen by the demo's triggers
    change = record["demo"]["changeAtSlice"]
    assert all(s["index"] >= change for s in spec["slices"] if s["started"] and s["index"] > 0)
    assert spec["summary"]["served"] > never["summary"]["served"]

    timeline = tmp_path / "timeline.jsonl"
    with Timeline(timeline) as t:
        t.write("act", act="v1", message="start")
    page = report.write_report(tmp_path / "report", report.ReportInput(timeline=timeline, backtest=record))
    text = page.read_text()
    assert "Backtest of this pipeline" in text and "never retrain" in text and retrains[0]["id"] in text
    png = (tmp_path / "report" / "backtest.png").read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n" and struct.unpack(">II", png[16:24])[0] > 600


def test_a_failed_backtest_is_said_in_the_report(tmp_path) -> None:
    timeline = tmp_path / "timeline.jsonl"
    with Timeline(timeline) as t:
        t.write("act", act="v1", message="start")
    page = report.write_report(tmp_path / "r", report.ReportInput(timeline=timeline, backtest_error="OSError: disk full"))
    assert "not run: OSError: disk full" in page.read_text()
    assert not (tmp_path / "r" / "backtest.png").exists()
