"""Durations as Rollouts write them: ``30s``, ``5m``, ``1h``, ``250ms``, ``1h30m``, or a number of seconds."""

from __future__ import annotations

import re
from typing import Any

_UNIT_SECONDS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0, "w": 604800.0}
_PART = re.compile(r"(\d+(?:\.\d+)?)(ms|s|m|h|d|w)")


def parse_duration(value: Any, field: str = "duration") -> float:
    """Seconds in ``value``; raise ValueError naming ``field`` when it is not a duration."""
    if isinstance(value, bool):
        raise ValueError(f"{field}: expected a duration like 30s, 5m or 1h, got {value!r}")
    if isinstance(value, int | float):
        if value < 0:
            raise ValueError(f"{field}: a duration cannot be negative, got {value!r}")
        return float(value)
    text = str(value).strip()
    if re.fullmatch(r"\d+(?:\.\d+)?", text):
        return float(text)
    pos, total = 0, 0.0
    for match in _PART.finditer(text):
        if match.start() != pos:
            break
        total += float(match.group(1)) * _UNIT_SECONDS[match.group(2)]
        pos = match.end()
    if pos != len(text) or not text:
        raise ValueError(f"{field}: expected a duration like 30s, 5m, 1h30m or 250ms, got {value!r}")
    return total
