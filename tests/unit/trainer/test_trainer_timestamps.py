"""The trainer writes timestamps (lineage.trainedAt, timestamps inside its JSON documents) with the
one formatter of the API, ``noria.api.common.format_timestamp``: RFC 3339, UTC, whole seconds, Z."""

from __future__ import annotations

import datetime as dt

import pandas as pd
from noria.api.common import format_timestamp
from noria_trainer import run


def test_timestamps_in_the_trainers_documents_are_the_apis_format():
    naive = pd.Timestamp("2026-01-02 03:04:05.678")  # data timestamps are naive: taken as UTC
    aware = dt.datetime(2026, 1, 2, 5, 4, 5, 678, tzinfo=dt.timezone(dt.timedelta(hours=2)))
    assert run._json_default(naive) == format_timestamp(naive.to_pydatetime()) == "2026-01-02T03:04:05Z"
    assert run._json_default(aware) == format_timestamp(aware) == "2026-01-02T03:04:05Z"


def test_the_trainer_has_no_formatter_of_its_own(monkeypatch):
    written: list[object] = []
    monkeypatch.setattr(run, "format_timestamp", lambda moment=None: written.append(moment) or "from-the-api")
    assert run._json_default(pd.Timestamp("2026-01-02 03:04:05")) == "from-the-api" and len(written) == 1
    assert not hasattr(run, "_rfc3339")
