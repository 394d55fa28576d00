"""What every part of the node agent shares: the node's identity, its limits, timestamps."""

from __future__ import annotations

import datetime as dt
from typing import Any

Json = dict[str, Any]
NODE_NAME = "noria-local"
HOST_IP = "127.0.0.1"
GRACE_CAP = 5.0  # seconds: terminationGracePeriodSeconds is capped so tests do not wait 30 s per pod
STORE_CLAIM = "noria-store"
RUN_MARKER_ENV = "NORIA_TESTBED_RUN"  # set on every pod process so teardown can find strays
LOGGER_NAME = "noria_testbed.node_agent"  # one logger for the whole agent: its log reads as one story


def now() -> str:
    return dt.datetime.now(dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def micro_now() -> str:
    return dt.datetime.now(dt.UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")
