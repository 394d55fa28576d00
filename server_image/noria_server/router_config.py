"""The router's configuration and its pure decisions: which version answers a request, whether to
mirror it, how two answers compare.

The config itself (its JSON shape, parsing and checks) is typed once in ``noria.router_config``,
which the operator writes with; it is re-exported here. This module adds what only the router needs.
"""

from __future__ import annotations

import math
from typing import Any

import orjson
from noria.router_config import Backend, ConfigError, RouterConfig, parse_config

__all__ = ["Backend", "ConfigError", "RouterConfig", "compare", "parse_config", "predictions_of"]


# --- comparing a shadow's answer with the primary's -------------------------------------------
def predictions_of(body: bytes) -> list[Any] | None:
    """The ``predict`` output's data of an OIP v2 answer, or None when there is none."""
    try:
        payload = orjson.loads(body)
    except orjson.JSONDecodeError:
        return None
    if not isinstance(payload, dict):
        return None
    for output in payload.get("outputs") or ():
        if isinstance(output, dict) and output.get("name") == "predict" and isinstance(output.get("data"), list):
            return output["data"]
    return None


def compare(primary: list[Any], shadow: list[Any], rel_tol: float = 1e-6) -> tuple[int, int]:
    """(agreeing rows, disagreeing rows). Numbers agree within ``rel_tol`` (regressors rarely match
    to the last bit across versions); everything else must be equal. A length mismatch makes every
    row of the longer answer disagree."""
    agree = 0
    for p, s in zip(primary, shadow, strict=False):
        if isinstance(p, float) or isinstance(s, float):
            try:
                same = math.isclose(float(p), float(s), rel_tol=rel_tol, abs_tol=1e-12)
            except (TypeError, ValueError):
                same = False
        else:
            same = p == s
        agree += same
    return agree, max(len(primary), len(shadow)) - agree
