"""Noria's model server vs MLServer 1.7.1 at fixed offered rates (open loop), beside the saturation run.

    .venv/bin/python benchmarks/server_latency.py [--seconds 10 --runs 3 --models logistic,hgb --profile]

For each model (the two of ``server_vs_mlserver.py``, same request, same pinning: generator on
CPU 0, server on CPU 1, one native thread), each server is first driven to saturation with wrk
(16 connections) to find its own maximum; then an open-loop generator offers 25 %, 50 % and 80 % of
that maximum, and one rate both servers sustain (50 % of MLServer's maximum), each for ``--seconds``.
Open loop: requests are sent on a fixed schedule whether or not earlier answers came back, and each
latency counts from the scheduled send time, so a server stall shows in full instead of slowing the
generator down (what a closed-loop wrk run hides: coordinated omission). The generator is
benchmarks/loadgen (Go, 128 keep-alive connections, pinned to CPU 0; built once per source hash
into the cache by its build.sh, so Go must be installed): a Python generator fell behind its own
schedule near 5,000 req/s. It reports how late it sent (``late p99``), which every latency of both
servers includes: a run where it is large measured the generator.
Noria runs with its defaults: drift counting and the prediction log on.

``--runs N`` (3: BENCHMARKS.md's median of three) repeats the whole sequence N times, fresh servers and
their own saturation each time, models interleaved run by run. At the end, per model, a summary of
the medians over runs, and issue 19's goals decided from them (``goal_lines``: rows in, lines out),
each met / NOT met with every run's figure; a row whose generator was late beyond
``LATE_P99_BOUND_MS`` (p99) is left out of the medians and named, and so is a whole model run around which
the servers' CPU did not keep one speed: ``core_probe.py`` samples a fixed piece of work on CPU 1 for
``--probe-seconds`` (5) before and after each model run, servers stopped, and a spread (p90/p10 of its CPU
times) above ``CORE_SPREAD_BOUND`` says the host ran that core at two speeds, so no fixed rate was "80 %".
A ``control`` line per model (``control_lines``) puts MLServer's own 80 % row against the same two ratio
bounds: not a goal, but when the peer misses them in the same runs, those runs speak of the machine.

Per run it prints p50, p99, p99.9 and the server's CPU seconds per 10,000 answered requests (user +
system time of the server process tree from /proc), and ``busy``, those CPU seconds per second of the row
(1.00: the whole core, whatever share of the maximum the rate was meant to be). ``--profile`` adds Noria's GC pauses per generation (count, mean, p99 bucket) after each of its runs,
and its own view of the 80 %
run: its stage, batch-size, loop-lag and GC-pause histograms read from ``/metrics`` (mean and p99
per stage), and, when ``py-spy`` is installed, a sampling profile of that run (top functions).
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import sklearn

sys.path.insert(0, str(Path(__file__).resolve().parent))
import core_probe  # noqa: E402
from noria import metrics as m  # noqa: E402
from noria_server.launch import free_port  # noqa: E402
from noria_server.reference_models import train_and_save  # noqa: E402
from server_vs_mlserver import payload  # noqa: E402
from serving_bench import (  # noqa: E402
    MLSERVER_PACKAGES,
    MLSERVER_VENV,
    SERVER_CPU,
    ensure_venv,
    go_open_loop,
    loadgen_binary,
    measure,
    require_wrk,
    start,
    start_mlserver,
    stop,
    uptime,
    wait_http,
)

FRACTIONS = (0.25, 0.5, 0.8)
SHARED_FRACTION_OF_MLSERVER = 0.5
CLOCK_TICKS = os.sysconf("SC_CLK_TCK")


@dataclass
class RateResult:
    offered: float  # requests per second
    sent: int
    answered: int
    p50_ms: float
    p99_ms: float
    p999_ms: float
    cpu_s_per_10k: float
    errors: int
    late_p99_ms: float  # the generator's own error: how late its sends left (p99), inside every latency

    @property
    def busy(self) -> float:
        """The server's CPU seconds per second of the row: ~1.0 is a whole core, so a rate it cannot
        keep up with for long, whatever share of the maximum it was offered as."""
        return self.cpu_s_per_10k / 10_000 * self.offered * self.answered / max(self.sent, 1)

    def row(self) -> str:
        return (f"{self.offered:8.0f} {self.answered / max(self.sent, 1):7.0%} {self.p50_ms:7.2f} "
                f"{self.p99_ms:7.2f} {self.p999_ms:8.2f} {self.p99_ms / self.p50_ms:6.1f} "
                f"{self.p999_ms / self.p50_ms:7.1f} {self.cpu_s_per_10k:9.2f} {self.busy:5.2f} {self.late_p99_ms:8.2f}"
                + (f"  ({self.errors} errors)" if self.errors else ""))


def cpu_seconds(pid: int) -> float:
    """User + system CPU seconds of ``pid`` and its descendants (MLServer may fork workers)."""
    total = 0.0
    pids = [pid]
    while pids:
        p = pids.pop()
        try:
            fields = Path(f"/proc/{p}/stat").read_text().rsplit(")", 1)[1].split()
            total += (int(fields[11]) + int(fields[12])) / CLOCK_TICKS
            children = Path(f"/proc/{p}/task/{p}/children").read_text().split()
        except (OSError, IndexError, ValueError):
            continue
        pids.extend(int(c) for c in children)
    return total


def run_rate(proc: subprocess.Popen, url: str, rate: float, seconds: float) -> RateResult:
    """One open-loop run of the Go generator (benchmarks/loadgen, pinned to CPU 0) at ``rate``."""
    before = cpu_seconds(proc.pid)
    r = go_open_loop(url, payload(), rate, seconds)
    used = cpu_seconds(proc.pid) - before
    return RateResult(rate, int(r["sent"]), int(r["answered"]), r["p50_ms"], r["p99_ms"], r["p999_ms"],
                      used / max(r["answered"], 1) * 10_000, int(r["errors"]), r["late_p99_ms"])


# --- servers -------------------------------------------------------------------------------------
def start_noria(work: Path, kind: str, saved, source: Path | None = None  # type: ignore[no-untyped-def]
                ) -> tuple[subprocess.Popen, str]:
    """This checkout's server, or the one under ``source`` (another checkout: a baseline)."""
    port = free_port()
    cmd = [sys.executable, "-m", "noria_server", "serve", "--artifact", saved.artifact_uri, "--digest", saved.digest,
           "--profile", saved.profile_uri, "--model", kind, "--version", f"{kind}-v1", "--host", "127.0.0.1",
           "--port", str(port), "--store-root", f"file://{work}/store", "--namespace", "bench", "--pipeline", kind,
           "--pod", f"bench-{port}", "--drain-seconds", "0"]
    env = None if source is None else {
        "PYTHONPATH": os.pathsep.join(filter(None, [str(source / "server_image"), os.environ.get("PYTHONPATH")]))}
    proc = start(cmd, work / f"noria-{kind}-{port}.log", env=env)
    wait_http(f"http://127.0.0.1:{port}/v2/health/ready", 180)
    return proc, f"http://127.0.0.1:{port}/v2/models/{kind}/infer"


# --- Noria's own view: /metrics histograms and a sampling profile ---------------------------------
def scrape(url: str) -> dict[tuple[str, str], list[tuple[float, float]]]:
    """{(metric, label value): [(le, cumulative count)]} for Noria's latency histograms, plus sums."""
    base = url.split("/v2/")[0]
    text = urllib.request.urlopen(f"{base}/metrics", timeout=5).read().decode()
    out: dict[tuple[str, str], list[tuple[float, float]]] = {}
    names = (m.REQUEST_STAGE_SECONDS, m.BATCH_ROWS, m.EVENT_LOOP_LAG_SECONDS, m.GC_PAUSE_SECONDS)
    for line in text.splitlines():
        for name in names:
            if not line.startswith(name + "_"):
                continue
            series, value = line.rsplit(" ", 1)
            labels = dict(part.split("=", 1) for part in series[series.index("{") + 1:-1].split(","))
            key_label = labels.get(m.LABEL_STAGE, labels.get(m.LABEL_GENERATION, '""')).strip('"')
            if line.startswith(name + "_bucket"):
                le = labels["le"].strip('"')
                out.setdefault((name, key_label), []).append((float("inf") if le == "+Inf" else float(le),
                                                              float(value)))
            elif line.startswith(name + "_sum"):
                out.setdefault((name + "_sum", key_label), []).append((0.0, float(value)))
    return out


def histogram_delta(before: dict, after: dict) -> list[tuple[str, str, float, float, float]]:  # type: ignore[type-arg]
    """(metric, label, count, mean, p99 upper bucket bound) of what was observed between two scrapes."""
    rows = []
    for (name, label), buckets in after.items():
        if name.endswith("_sum"):
            continue
        prior = dict(before.get((name, label), []))
        delta = [(le, count - prior.get(le, 0.0)) for le, count in buckets]
        total = delta[-1][1] if delta else 0.0
        if total <= 0:
            continue
        total_sum = after[(name + "_sum", label)][0][1] - dict(before.get((name + "_sum", label), [])).get(0.0, 0.0)
        p99 = next(le for le, count in delta if count >= 0.99 * total)
        rows.append((name, label, total, total_sum / total, p99))
    return rows


def gc_pauses(before: dict, after: dict) -> str:  # type: ignore[type-arg]
    """Garbage collections between two scrapes, per generation: count, mean and p99 bucket bound."""
    rows = sorted((label, count, mean, p99) for name, label, count, mean, p99 in histogram_delta(before, after)
                  if name == m.GC_PAUSE_SECONDS)
    return "GC: " + ("; ".join(f"gen {label} n={count:.0f} mean {mean * 1e3:.3f} ms p99 <= {p99 * 1e3:g} ms"
                               for label, count, mean, p99 in rows) or "no collection")


def py_spy_top(pid: int, seconds: float, out: Path) -> str:
    """A py-spy profile of ``pid`` for ``seconds`` (raw collapsed stacks in ``out``), summarised as the
    functions with the most samples; empty if py-spy is not installed."""
    spy = shutil.which("py-spy") or str(Path(sys.executable).parent / "py-spy")
    if not Path(spy).exists():
        return "py-spy not installed (pip install py-spy): no sampling profile"
    subprocess.run([spy, "record", "--pid", str(pid), "--duration", str(int(seconds)), "--rate", "250",
                    "--format", "raw", "--nonblocking", "--output", str(out)], capture_output=True, check=False)
    if not out.exists():
        return "py-spy could not attach (needs ptrace permission)"
    own: dict[str, int] = {}
    total = 0
    for line in out.read_text().splitlines():
        stack, _, count = line.rpartition(" ")
        leaf = stack.split(";")[-1]
        own[leaf] = own.get(leaf, 0) + int(count)
        total += int(count)
    top = sorted(own.items(), key=lambda kv: -kv[1])[:15]
    return "\n".join(f"  {n / total:6.1%}  {name}" for name, n in top)


def profile_noria(kind: str, proc: subprocess.Popen, url: str, rate: float, seconds: float, spy_file: Path) -> None:
    """One more open-loop run at ``rate`` with py-spy attached; Noria's histograms over that run."""
    from concurrent.futures import ThreadPoolExecutor

    before = scrape(url)
    with ThreadPoolExecutor(1) as pool:
        spy = pool.submit(py_spy_top, proc.pid, seconds, spy_file)
        run_rate(proc, url, rate, seconds)
        top = spy.result()
    print(f"[{kind}] Noria at {rate:.0f} req/s: its own histograms over the run (mean, p99 bucket bound)")
    for name, label, count, mean, p99 in histogram_delta(before, scrape(url)):
        unit, scale = ("", 1.0) if name == m.BATCH_ROWS else (" ms", 1e3)
        print(f"  {name:32} {label:10} n={count:8.0f} mean {mean * scale:8.3f}{unit} p99 <= {p99 * scale:g}{unit}")
    print(f"[{kind}] py-spy (own samples by function, same run):\n{top}")


# --- the decision: rows of every run in, summary and goal lines out (pure) --------------------------
LABELS = tuple(f"{f * 100:g} %" for f in FRACTIONS) + ("shared rate",)  # a server's rows, in order, every run
GOAL_ROW = FRACTIONS.index(0.8)
GOAL_P99_OVER_P50 = 3.0  # issue 19, at 80 % of Noria's own maximum, both models
GOAL_P999_OVER_P50 = 10.0
GOAL_SHARED_P99_RATIO = 0.5  # Noria's p99 / MLServer's at a rate both sustain
# A row whose generator sent its requests late by more than this (p99) is left out of the medians: that
# lateness sits inside every latency of the row. Quiet runs of this generator show 0.10-0.25 ms; the noisy
# rows that misled earlier passes 1.47 and 3.12 ms. Noria's p50 at 80 % is 0.37-0.53 ms, so its 3x goal
# allows a p99 of ~1.1-1.6 ms: a generator late by 0.5 ms at its p99 already owns a third of that, and by
# 1 ms most of it, so above 0.5 ms the row measured the generator as much as the server.
LATE_P99_BOUND_MS = 0.5
# A run is left out, too, when the servers' CPU did not keep one speed around it: ``core_probe.spread`` (the
# 90th percentile of a fixed piece of work's CPU time over its 10th, sampled with the servers stopped just
# before and after the run) above this. A steady core gives ~1.0-1.1; the shared machines of 4 December 2026
# gave 1.7-2.0, flipping between two speeds within a second or two, so an "80 %" rate set by a maximum
# measured in a fast moment was ~130 % of the core in a slow one, for any server.
CORE_SPREAD_BOUND = 1.25


@dataclass(frozen=True)
class ModelRun:
    """One run of one model: each server's wrk maximum, and its rows (``LABELS``: 25/50/80 % of its own
    maximum, then the shared rate)."""

    maxima: dict[str, float]
    rows: dict[str, list[RateResult]]
    core_spread: float | None = None  # core_probe.spread around the run; None: not probed


@dataclass(frozen=True)
class Figure:
    """One figure over the runs: every run's value with why it was left out (None: kept), and the median
    of the kept ones (None when none was kept)."""

    per_run: list[tuple[float, str | None]]

    @property
    def median(self) -> float | None:
        kept = [v for v, why in self.per_run if why is None]
        return statistics.median(kept) if kept else None

    def runs(self, why_out: bool = True) -> str:
        """Every run's value, a left-out one marked with its reason (or just ``out``)."""
        return ", ".join(f"{v:.2f}" + ((f" [excluded: {why}]" if why_out else " out") if why else "")
                         for v, why in self.per_run)


def figure(runs: list[ModelRun], servers: tuple[str, ...], row: int,
           value: Callable[..., float]) -> Figure:
    """``value`` of the ``row``-th rows of ``servers`` in every run; a run is left out when the generator was
    late beyond ``LATE_P99_BOUND_MS`` in any of those rows, or when the servers' core changed speed around it
    (``core_spread`` above ``CORE_SPREAD_BOUND``)."""
    per_run = []
    for run in runs:
        rows = [run.rows[s][row] for s in servers]
        why = [f"{s}'s generator late p99 {r.late_p99_ms:.2f} ms > {LATE_P99_BOUND_MS:g} ms" for s, r in zip(servers, rows,
                                                                                            strict=True)
               if r.late_p99_ms > LATE_P99_BOUND_MS]
        if run.core_spread is not None and run.core_spread > CORE_SPREAD_BOUND:
            why.append(f"the servers' core changed speed, spread {run.core_spread:.2f} > {CORE_SPREAD_BOUND:g}")
        per_run.append((value(*rows), "; ".join(why) or None))
    return Figure(per_run)


def _p99_over_p50(r: RateResult) -> float:
    return r.p99_ms / r.p50_ms


def _p999_over_p50(r: RateResult) -> float:
    return r.p999_ms / r.p50_ms


# The 80 % row's two bounds: a name, the ratio of a row, the bound (Noria's goals; MLServer's control).
RATIO_BOUNDS = (("p99/p50", _p99_over_p50, GOAL_P99_OVER_P50), ("p99.9/p50", _p999_over_p50, GOAL_P999_OVER_P50))


def _p99_vs(r: RateResult, peer: RateResult) -> float:
    return r.p99_ms / peer.p99_ms


def _ms(f: Figure) -> str:
    return f"{f.median:8.2f}" if f.median is not None else f"{'-':>8}"


def summary_lines(kind: str, runs: list[ModelRun]) -> list[str]:
    """Per server other than MLServer and per row: the medians over the kept runs of p50, p99, p99.9 and the
    two ratios (every run's ratio in brackets), and at the shared rate MLServer's p99 and the ratio to it."""
    servers = list(runs[0].maxima)
    lines = [f"[{kind}] {len(runs)} runs, medians (every run in brackets); saturation (wrk -c16): "
             + ", ".join(f"{s} {statistics.median(r.maxima[s] for r in runs):.0f} req/s "
                         f"({', '.join(f'{r.maxima[s]:.0f}' for r in runs)})" for s in servers),
             f"  {'server':8} {'row':11} {'offered':>8} {'kept':>4} {'p50 ms':>8} {'p99 ms':>8} {'p99.9 ms':>8}  "
             "p99/p50 (runs); p99.9/p50 (runs)"]
    for server in (s for s in servers if s != "MLServer"):
        for i, label in enumerate(LABELS):
            figures = [figure(runs, (server,), i, lambda r, a=attr: getattr(r, a))
                       for attr in ("offered", "p50_ms", "p99_ms", "p999_ms")]
            kept = sum(why is None for _, why in figures[0].per_run)
            r99, r999 = (figure(runs, (server,), i, fn) for fn in (_p99_over_p50, _p999_over_p50))
            line = (f"  {server:8} {label:11} {statistics.median(v for v, _ in figures[0].per_run):8.0f} "
                    f"{kept:>2}/{len(runs)} {_ms(figures[1])} {_ms(figures[2])} {_ms(figures[3])}  "
                    f"{_x(r99)} ({r99.runs(False)}); {_x(r999)} ({r999.runs(False)})")
            if label == "shared rate" and "MLServer" in servers:
                ml = figure(runs, ("MLServer",), i, lambda r: r.p99_ms)
                ratio = figure(runs, (server, "MLServer"), i, _p99_vs)
                line += (f"; MLServer p99 {_ms(ml).strip()} ms, {server}/MLServer p99 {_x(ratio, '')} "
                         f"({ratio.runs(False)})")
            lines.append(line)
    return lines


def _x(f: Figure, unit: str = "x") -> str:
    return f"{f.median:.2f}{unit}" if f.median is not None else "-"


def _verdict(f: Figure, bound: float) -> str:
    if f.median is None:
        return "not decided: every run excluded"
    return "met" if f.median <= bound else "NOT met"


def goal_lines(kind: str, runs: list[ModelRun]) -> list[str]:
    """Issue 19's goals for Noria from the medians of the kept runs: at 80 % of its own maximum p99/p50 <= 3
    and p99.9/p50 <= 10; at the shared rate (when MLServer ran) its p99 at most half of MLServer's. Each is
    the median of the per-run ratios, e.g. Noria's 80 % rows at 2.3x, 3.6x and 2.0x give
    ``goal [hgb] 80 %: p99/p50 2.30x (runs 2.30, 3.60, 2.00) <= 3: met``; a bound is met when equalled."""
    lines = []
    for name, fn, bound in RATIO_BOUNDS:
        f = figure(runs, ("Noria",), GOAL_ROW, fn)
        lines.append(f"goal [{kind}] {LABELS[GOAL_ROW]}: {name} {_x(f)} (runs {f.runs()}) <= {bound:g}: "
                     f"{_verdict(f, bound)}")
    shared = len(LABELS) - 1
    if "MLServer" not in runs[0].rows:
        lines.append(f"goal [{kind}] shared rate: MLServer not run (--skip-mlserver): not decided")
        return lines
    f = figure(runs, ("Noria", "MLServer"), shared, _p99_vs)
    rate = statistics.median(run.rows["Noria"][shared].offered for run in runs)
    lines.append(f"goal [{kind}] shared rate {rate:.0f} req/s: Noria p99 / MLServer p99 {_x(f, '')} "
                 f"(runs {f.runs()}) <= {GOAL_SHARED_P99_RATIO:g}: {_verdict(f, GOAL_SHARED_P99_RATIO)}")
    return lines


def control_lines(kind: str, runs: list[ModelRun]) -> list[str]:
    """MLServer's own 80 % row against the same two ratio bounds, from the same kept runs: not a goal, a
    control. Both servers are offered 80 % of their own wrk maximum on the same core, so when the peer
    misses the bounds in the same runs, those runs say as much about the machine as about Noria (on the
    machines of 5 December 2026 MLServer missed p99/p50 <= 3 in 21 of 22 runs). None without MLServer."""
    if "MLServer" not in runs[0].rows:
        return []
    parts = []
    for name, fn, bound in RATIO_BOUNDS:
        f = figure(runs, ("MLServer",), GOAL_ROW, fn)
        within = sum(v <= bound for v, _ in f.per_run)
        parts.append(f"{name} {_x(f)} (runs {f.runs(False)}; within {bound:g} in {within} of {len(runs)} runs): "
                     f"{_verdict(f, bound)}")
    return [f"control [{kind}] MLServer at {LABELS[GOAL_ROW]} of its own maximum, the same bounds (not a goal): "
            + "; ".join(parts)]


# --- main ----------------------------------------------------------------------------------------
HEADER = (f"  {'server':8} {'offered':>8} {'answrd':>7} {'p50 ms':>7} {'p99 ms':>7} {'p99.9 ms':>8} "
          f"{'p99/50':>6} {'p999/50':>7} {'CPU s/10k':>9} {'busy':>5} {'late p99':>8}")


def run_model(kind: str, saved, joblib_path: Path, python: Path | None,  # type: ignore[no-untyped-def]
              work: Path, args: argparse.Namespace, profile_now: bool) -> ModelRun:
    """One run of one model: fresh servers, each one's wrk maximum, then its four open-loop rows (servers
    interleaved row by row, so a change in machine load hits all of them)."""
    servers = {}
    try:
        if python is not None:
            servers["MLServer"] = start_mlserver(python, work, kind, joblib_path)
        servers["Noria"] = start_noria(work, kind, saved)
        if args.baseline is not None:
            servers["Baseline"] = start_noria(work, kind, saved, args.baseline)
        maxima = {name: measure(url, payload(), 16, 2, args.saturation_seconds, 1).rps
                  for name, (_, url) in servers.items()}
        print(f"[{kind}] saturation (wrk -c16): " + ", ".join(f"{n} {v:.0f} req/s" for n, v in maxima.items()))
        print(HEADER)
        rows: dict[str, list[RateResult]] = {}
        shared = SHARED_FRACTION_OF_MLSERVER * maxima.get("MLServer", maxima["Noria"])
        plans = {name: [f * maxima[name] for f in FRACTIONS] + [shared] for name in servers}
        for step in range(len(LABELS)):
            for name, (proc, url) in servers.items():
                gc_before = scrape(url) if args.profile and name != "MLServer" else None
                r = run_rate(proc, url, plans[name][step], args.seconds)
                rows.setdefault(name, []).append(r)
                print(f"  {name:8} {r.row()}", flush=True)
                if gc_before is not None:
                    print(f"  {'':8} {gc_pauses(gc_before, scrape(url))}", flush=True)
        if "MLServer" in rows:
            print(f"  shared rate {shared:.0f} req/s: Noria p99 / MLServer p99 = "
                  f"{_p99_vs(rows['Noria'][-1], rows['MLServer'][-1]):.2f}")
        if profile_now:
            proc, url = servers["Noria"]
            profile_noria(kind, proc, url, 0.8 * maxima["Noria"], args.seconds, work / f"py-spy-{kind}.txt")
        return ModelRun(maxima, rows)
    finally:
        for proc, _ in servers.values():
            stop(proc)


def probe_core(seconds: float, work: Path) -> list[int]:
    """``core_probe`` samples of the servers' CPU (1) over ``seconds``, no server running; none for 0."""
    return core_probe.sample(SERVER_CPU, seconds, work / "core-probe.txt") if seconds > 0 else []


def probed(kind: str, run: ModelRun, samples: list[int]) -> ModelRun:
    """``run`` with the spread of the probe's ``samples`` around it, printed."""
    spread = core_probe.spread(samples)
    if spread is None:
        return run
    deciles = statistics.quantiles(samples, n=10)
    verdict = (f"> {CORE_SPREAD_BOUND:g}: this run is left out of the medians" if spread > CORE_SPREAD_BOUND
               else f"<= {CORE_SPREAD_BOUND:g}: steady")
    print(f"[{kind}] the servers' CPU around this run (core_probe.py, servers stopped, {len(samples)} samples of the "
          f"same work): p10 {deciles[0] / 1e6:.2f} ms, p90 {deciles[-1] / 1e6:.2f} ms, spread {spread:.2f} {verdict}",
          flush=True)
    return dataclasses.replace(run, core_spread=spread)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=10, help="per offered rate")
    parser.add_argument("--saturation-seconds", type=float, default=8)
    parser.add_argument("--runs", type=int, default=3, help="whole runs (each its own saturation and rates, "
                        "models interleaved run by run); the goals are decided from the medians")
    parser.add_argument("--models", default="logistic,hgb")
    parser.add_argument("--skip-mlserver", action="store_true")
    parser.add_argument("--probe-seconds", type=float, default=5, help="sample the servers' CPU speed this long "
                        "before and after each model run (core_probe.py; 0: no probe, no run left out for it)")
    parser.add_argument("--profile", action="store_true", help="Noria's stage histograms (+ py-spy) at 80 %% "
                        "in the last run, and its GC pauses per generation at every rate")
    parser.add_argument("--baseline", type=Path, help="also run the server of another checkout (e.g. `git archive "
                        "<commit> server_image | tar -x -C DIR`) as 'Baseline', interleaved with this one")
    args = parser.parse_args()
    require_wrk()
    loadgen_binary()  # built (or found in the cache) before anything is timed
    if (os.cpu_count() or 1) >= 2:
        os.sched_setaffinity(0, {0})  # the open-loop generator runs here: CPU 0, as wrk does; servers on CPU 1
    load_before = uptime()
    python = None if args.skip_mlserver else ensure_venv(MLSERVER_VENV, MLSERVER_PACKAGES,
                                                         [f"scikit-learn=={sklearn.__version__}"])
    work = Path(tempfile.mkdtemp(prefix="noria-latency-"))
    kinds = args.models.split(",")
    runs: dict[str, list[ModelRun]] = {kind: [] for kind in kinds}
    try:
        import joblib

        models = {}
        for kind in kinds:  # trained once, before anything is timed
            model_dir = work / "store" / "bench" / kind / "model"
            saved = train_and_save(kind, str(model_dir), rows=5000)  # type: ignore[arg-type]
            joblib.dump(saved.estimator, model_dir / "model.joblib")
            models[kind] = (saved, model_dir / "model.joblib")
        for n in range(args.runs):
            for kind in kinds:
                print(f"\n# run {n + 1}/{args.runs}, {kind} ({uptime()})", flush=True)
                before = probe_core(args.probe_seconds, work)
                run = run_model(kind, *models[kind], python, work, args, args.profile and n == args.runs - 1)
                runs[kind].append(probed(kind, run, before + probe_core(args.probe_seconds, work)))
        print_summary(runs, args, load_before)
    finally:
        shutil.rmtree(work, ignore_errors=True)


def print_summary(runs: dict[str, list[ModelRun]], args: argparse.Namespace, load_before: str) -> None:
    print(f"\n## Open-loop latency at fixed offered rates ({args.seconds:g}s each, {args.runs} runs), "
          "generator CPU 0, server CPU 1")
    for kind, model_runs in runs.items():
        for n, run in enumerate(model_runs, 1):
            print(f"[{kind}] run {n}, saturation: " + ", ".join(f"{s} {v:.0f} req/s" for s, v in run.maxima.items()))
            for name, rows in run.rows.items():
                for label, r in zip(LABELS, rows, strict=True):
                    print(f"  {name:8} {label:16} {r.row()}")
    print("  columns: offered req/s, answered share, p50, p99, p99.9 (ms from the scheduled send), "
          "p99/p50, p99.9/p50, server CPU s per 10,000 answers, busy = server CPU s per second (1.00: a whole "
          "core), p99 of how late the generator sent (ms; "
          "part of every latency, so a run where it is large says the generator, not the server, was slow)")
    print(f"\n## Summary: medians over the runs; a row whose generator late p99 > {LATE_P99_BOUND_MS:g} ms, or "
          f"a run whose servers' CPU spread > {CORE_SPREAD_BOUND:g}, is left out of them (kept = runs counted)")
    for kind, model_runs in runs.items():
        print("\n".join(summary_lines(kind, model_runs)))
    print("\n## Issue 19's goals (Noria, from the medians above)")
    for kind, model_runs in runs.items():
        print("\n".join(goal_lines(kind, model_runs)))
        for line in control_lines(kind, model_runs):
            print(line)
    print("  Noria: defaults (drift counting on, prediction log on to a local store); MLServer 1.7.1 "
          "parallel_workers 0; both taskset -c 1, one native thread")
    print(f"  Load before: {load_before}")
    print(f"  Load after:  {uptime()}")


if __name__ == "__main__":
    main()
