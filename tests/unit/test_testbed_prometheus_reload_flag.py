"""The test bed's Prometheus applies discovered targets every second, not every 5 s: a canary pod ready
3 s after creation was otherwise first scraped 8-9 s after creation, after it had served requests, and
the first analysis measurement found no series (docs/operations/testbed-prometheus.md, "New pods").
The built Prometheus must accept the flag, or the test bed would not start (Debian's 2.42, the
fallback, accepts it too: checked by hand, it is not on every CI machine)."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest
from noria_testbed import binaries
from noria_testbed.prometheus import DISCOVERY_RELOAD_INTERVAL, PrometheusProcess

FLAG = f"--scrape.discovery-reload-interval={DISCOVERY_RELOAD_INTERVAL}"


def _process(tmp_path: Path, found: binaries.PrometheusBinaries) -> PrometheusProcess:
    return PrometheusProcess(workdir=tmp_path, log_path=tmp_path / "prometheus.log", binaries=found,
                             kubeconfig=tmp_path / "kubeconfig", sd_url="http://127.0.0.1:1/sd")


def _accepts(command: list[str]) -> subprocess.CompletedProcess[str]:
    # Flags are parsed (an unknown one exits 1) before --version answers and exits 0: nothing starts.
    return subprocess.run([*command, "--version"], capture_output=True, text=True, timeout=60)


@pytest.fixture(scope="module")
def built() -> binaries.PrometheusBinaries:
    try:
        return binaries._built_prometheus()
    except binaries.PrometheusUnavailable as error:
        reason = f"built Prometheus unavailable (run `make prometheus`): {error}"
        if os.environ.get("CI"):
            pytest.fail(f"{reason} (CI is set, so this fails instead of skipping)")
        pytest.skip(reason)


def test_the_reload_interval_is_the_scrape_interval(tmp_path):
    fake = binaries.PrometheusBinaries(Path("/nonexistent/prometheus"), Path("/nonexistent/promtool"),
                                       kubernetes_sd=True, origin="test")
    assert DISCOVERY_RELOAD_INTERVAL == "1s"
    assert FLAG in _process(tmp_path, fake).command()


def test_the_built_prometheus_accepts_the_command_line(built, tmp_path):
    result = _accepts(_process(tmp_path, built).command())
    assert result.returncode == 0, result.stderr


def test_an_unknown_flag_is_refused_so_the_check_above_can_fail(built, tmp_path):
    result = _accepts([*_process(tmp_path, built).command(), "--scrape.no-such-flag=1s"])
    assert result.returncode != 0
