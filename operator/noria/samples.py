"""What a Prometheus instant query answers, as plain values: the pure half of ``noria.prometheus``.

The checks that judge a rollout (``noria.deployment.checks``) and the training triggers read these
values; only ``noria.prometheus`` holds the HTTP client. Keeping the value type and the reading of an
answer here lets the pure modules import them without importing httpx (``make lint`` forbids it).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any


class PrometheusError(Exception):
    """Prometheus could not answer: unreachable, timed out, or refused the query."""


@dataclass(frozen=True)
class Sample:
    """One element of an instant vector: its labels and its value."""

    labels: dict[str, str]
    value: float


def samples_of(body: Any, promql: str) -> list[Sample]:
    """The vector of an ``/api/v1/query`` answer (empty when there is no data; a scalar is one sample
    without labels), or PrometheusError saying what was wrong with it."""
    if not isinstance(body, dict) or body.get("status") != "success":
        got = body if not isinstance(body, dict) else f"{body.get('errorType')}: {body.get('error')}"
        raise PrometheusError(f"Prometheus refused the query {promql!r}: {got}")
    data = body["data"]
    if data["resultType"] == "scalar":
        return [Sample({}, float(data["result"][1]))]
    if data["resultType"] != "vector":
        raise PrometheusError(f"expected a vector from {promql!r}, got {data['resultType']}")
    return [Sample(dict(r["metric"]), float(r["value"][1])) for r in data["result"]]
