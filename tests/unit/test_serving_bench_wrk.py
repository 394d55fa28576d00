"""benchmarks/serving_bench.py reads wrk's --latency output: the distribution's lines, never the thread
stats' "+/- Stdev" column (which can end in "99%")."""
from __future__ import annotations

import math
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "benchmarks"))

from serving_bench import parse_wrk  # noqa: E402

WRK_OUTPUT = """Running 3s test @ http://127.0.0.1:8080/v2/models/m/infer
  1 threads and 16 connections
  Thread Stats   Avg      Stdev     Max   +/- Stdev
    Latency   610.00us  250.00us   9.00ms   71.99%
    Req/Sec    25.10k     1.20k   27.00k    50.00%
  Latency Distribution
     50%  582.00us
     75%  700.00us
     90%  850.00us
     99%    1.46ms
  75300 requests in 3.00s, 20.00MB read
  Non-2xx or 3xx responses: 3
Requests/sec:  25099.10
Transfer/sec:      6.67MB
"""


def test_the_percentiles_come_from_the_distribution_not_the_stdev_column() -> None:
    result = parse_wrk(WRK_OUTPUT)
    assert math.isclose(result.rps, 25099.10)
    assert math.isclose(result.p50_ms, 0.582)
    assert math.isclose(result.p99_ms, 1.46)
    assert result.errors == 3


def test_a_percentile_wrk_could_not_give_reads_as_nan() -> None:
    result = parse_wrk(WRK_OUTPUT.replace("99%    1.46ms", "99%    -nan"))
    assert math.isnan(result.p99_ms) and math.isclose(result.p50_ms, 0.582)
