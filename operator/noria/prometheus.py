"""A small Prometheus HTTP API client (instant queries) with timeouts and errors a person can read.

Used by the training operator (drift and performance triggers) and the deployment operator
(rollout analysis). The distinction that matters to both: *error* (Prometheus unreachable or the
query refused: say Unknown, decide nothing rash) versus *no data* (an empty vector: inconclusive).
"""

from __future__ import annotations

from typing import Any

import httpx

# The value types and the reading of an answer are pure (noria.samples); re-exported for callers.
from noria.samples import PrometheusError as PrometheusError
from noria.samples import Sample as Sample
from noria.samples import samples_of


class PrometheusClient:
    def __init__(self, url: str, timeout: float = 5.0) -> None:
        self.url = url.rstrip("/")
        self._client = httpx.AsyncClient(base_url=self.url, timeout=httpx.Timeout(timeout))

    async def query(self, promql: str) -> list[Sample]:
        """Evaluate an instant query; return its vector (empty when there is no data)."""
        try:
            resp = await self._client.get("/api/v1/query", params={"query": promql})
        except httpx.HTTPError as exc:
            raise PrometheusError(f"Prometheus at {self.url} is unreachable: {type(exc).__name__}: {exc}") from exc
        try:
            body: dict[str, Any] = resp.json()
        except ValueError as exc:
            raise PrometheusError(f"Prometheus at {self.url} answered HTTP {resp.status_code} without JSON") from exc
        return samples_of(body, promql)

    async def is_online(self) -> bool:
        try:
            resp = await self._client.get("/-/ready")
            return resp.status_code == 200
        except httpx.HTTPError:
            return False

    async def aclose(self) -> None:
        await self._client.aclose()
