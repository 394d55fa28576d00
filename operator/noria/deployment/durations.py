"""Durations as the deployment code uses them: seconds, as a float.

The grammar (``30s``, ``5m``, ``1h30m``, ``250ms``, ``2w``) and its parser are defined once, in
``noria.api.common`` (the CRD's CEL rule is built from the same regular expression); this module only
converts to seconds and names the field in an error.
"""

from __future__ import annotations

from typing import Any

from noria.api.common import parse_duration as _parse


def seconds(text: str) -> float:
    """``"1h30m"`` -> ``5400.0``. Raises ``ValueError`` naming the text when it is not a duration."""
    return _parse(text).total_seconds()


def parse_duration(value: Any, field: str = "duration") -> float:
    """Seconds in ``value`` (a duration string, or a non-negative number of seconds); ``ValueError``
    naming ``field`` when it is neither."""
    if isinstance(value, bool):
        raise ValueError(f"{field}: expected a duration like 30s, 5m or 1h, got {value!r}")
    if isinstance(value, int | float):
        if value < 0:
            raise ValueError(f"{field}: a duration cannot be negative, got {value!r}")
        return float(value)
    try:
        return seconds(value if isinstance(value, str) else str(value))
    except ValueError:
        raise ValueError(f"{field}: expected a duration like 30s, 5m, 1h30m or 250ms, got {value!r}") from None
