"""The handler tags what it read from Prometheus with the version it asked about, so that
``pipeline.decide`` never judges one version's counts under another's name."""

from __future__ import annotations

import asyncio
from types import SimpleNamespace

from noria import metrics
from noria.prometheus import PrometheusError, Sample
from noria.training import handlers


class FakePrometheus:
    def __init__(self, samples=None, error: str | None = None) -> None:
        self.samples, self.error, self.queries = samples or [], error, []

    async def query(self, promql: str):
        self.queries.append(promql)
        if self.error:
            raise PrometheusError(self.error)
        return self.samples


def run_query(monkeypatch, prometheus: FakePrometheus, version: str):
    monkeypatch.setattr(handlers, "state", lambda: SimpleNamespace(prometheus=prometheus))
    promql = handlers.drift_query("ml", "churn", version, "1h")
    return asyncio.run(handlers._query("drift", promql, (metrics.LABEL_FEATURE, metrics.LABEL_BIN), version))


def test_counts_are_summed_per_key_and_tagged_with_the_version_queried(monkeypatch):
    prom = FakePrometheus([Sample({metrics.LABEL_FEATURE: "age", metrics.LABEL_BIN: "3"}, 5.0),
                           Sample({metrics.LABEL_FEATURE: "age", metrics.LABEL_BIN: "3"}, 2.0)])
    obs = run_query(monkeypatch, prom, "churn-v4")
    assert obs.version == "churn-v4" and obs.counts == {("age", "3"): 7.0}
    assert f'{metrics.LABEL_VERSION}="churn-v4"' in prom.queries[0]


def test_an_error_is_tagged_too(monkeypatch):
    obs = run_query(monkeypatch, FakePrometheus(error="unreachable"), "churn-v4")
    assert obs.version == "churn-v4" and obs.error == "unreachable"
