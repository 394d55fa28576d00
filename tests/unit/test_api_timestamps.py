"""One reader of status timestamps (noria.api.common.parse_timestamp) beside the one writer
(format_timestamp); the operator's modules and the trainer read them through it."""

from __future__ import annotations

import datetime as dt

import pytest
from noria.api.common import format_timestamp, parse_timestamp
from noria.deployment import observation
from noria.training import pipeline, triggers
from noria_trainer import spec as trainer_spec

T = dt.datetime(2026, 11, 20, 10, 0, 0, tzinfo=dt.UTC)


@pytest.mark.parametrize("text", [
    "2026-11-20T10:00:00Z",
    "2026-11-20T10:00:00+00:00",
    "2026-11-20T11:00:00+01:00",  # an offset is converted to UTC
    "2026-11-20T10:00:00",  # no offset: UTC, as format_timestamp takes a naive datetime
    " 2026-11-20T10:00:00Z ",
])
def test_every_reader_gives_the_same_aware_utc_instant(text):
    readers = [parse_timestamp, triggers._ts, pipeline._ts, observation.parse_time,
               lambda t: trainer_spec.parse_time(t, "now")]
    for read in readers:
        moment = read(text)
        assert moment == T and moment.utcoffset() == dt.timedelta(0), (read, moment)
    assert (T - parse_timestamp(text)).total_seconds() == 0  # comparable with an aware now


def test_what_the_writer_writes_reads_back():
    moment = dt.datetime(2026, 1, 2, 3, 4, 5, 678_000, tzinfo=dt.UTC)
    assert parse_timestamp(format_timestamp(moment)) == moment.replace(microsecond=0)
    assert parse_timestamp("2026-01-02T03:04:05.678Z") == moment


def test_a_bad_timestamp_is_named_and_unset_ones_are_none():
    with pytest.raises(ValueError, match="'soon' is not an RFC 3339 timestamp"):
        parse_timestamp("soon")
    with pytest.raises(ValueError):
        triggers._ts("soon")
    assert observation.parse_time("soon") is None  # a Rollout pass treats it as unset
    assert triggers._ts(None) is None and pipeline._ts("") is None and observation.parse_time(None) is None


@pytest.mark.parametrize("text", ["2026-11-20T10:00:00Z", "2026-11-20T11:00:00+01:00", "2026-11-20T10:00:00"])
def test_the_demos_readers_give_the_same_instant_as_epoch_seconds(text, monkeypatch):
    """The demo's checks and report read status timestamps through parse_timestamp too: a time
    without offset is UTC there as well, not the local time of the machine running the demo."""
    import time

    from noria_testbed.demo import checks, report

    monkeypatch.setenv("TZ", "America/New_York")
    time.tzset()
    try:
        assert checks.parse_time(text) == report._ts(text) == T.timestamp()
    finally:
        monkeypatch.delenv("TZ")
        time.tzset()
    assert checks.parse_time(None) is None and report._ts("") is None and report._ts("soon") is None
    with pytest.raises(ValueError, match="'soon' is not an RFC 3339 timestamp"):
        checks.parse_time("soon")
