"""What the Noria router costs: latency added at a fixed rate, throughput, and CPU per request, beside nginx.

    .venv/bin/python benchmarks/router_overhead.py   # every goal of issue 17 in one run (~10 min)
    .venv/bin/python benchmarks/router_overhead.py --hot-path   # the router's Python per request, no sockets
    .venv/bin/python benchmarks/router_overhead.py --shadow-only [--mirror-when sent --mirror-when answered]
        # only the shadow pairs (below), without the table (~5 min; ~7 with both router timings)

A default run measures, in the layout "proxy on its own core" (``--layout``, repeatable, for the
other or both): the table below, then the shadow pairs, then prints every goal's verdict from this
run alone, with the load average before and after.

Needs Debian's ``wrk`` and, for the native-code reference, ``nginx`` (``apt-get install -y wrk
nginx-light``; without nginx its rows are left out and the output says so); ``--profile`` needs
``py-spy`` (``.venv/bin/pip install py-spy``). Three model servers (the same LogisticRegression
Pipeline trained with three seeds: v1 the primary, v2 the 10 % of the split, v3 the shadow), a
replayed shadow (v3's answer to the benchmark's body, recorded once at start and then answered by a
bare ``HttpServer`` at next to no CPU: a shadow with its own pods, as in a cluster), four routers
(one backend; 90/10; 90/10 + 100 % mirrored to the replayed shadow; 90/10 + 100 % mirrored to v3)
and one nginx (one worker, upstream keep-alive, ``split_clients`` and ``mirror`` doing the same four
things) run side by side, each measured on the same paths, in one or both of two layouts on the 2-core
machine:

- **proxy on its own core** (how a cluster runs it: the router is its own pod with its own CPU):
  the primary v1 alone on CPU 1; the proxy, v2, the shadow v3 and the load generator on CPU 0, the
  shadow at niceness 19 (a shadow pod has its own CPU: here it gets what the proxy and generator
  leave, and the router drops the mirrors it cannot keep up with);
- **proxy on the server's core** (the earlier layout, kept so nothing is hidden): all three model
  servers and the proxy on CPU 1, the load generator on CPU 0. Here throughput through any proxy is
  bounded by server CPU / (server CPU + proxy CPU) per request, and the shadow's model competes
  with the primary's on one core: it measures the core more than the proxy.

For each path (direct to v1, then through each router and nginx):

- latency at a fixed, open-loop rate (``serving_bench.open_loop``: latencies count from each
  scheduled send, so a stall is not hidden); the paths take turns, ``--runs`` rounds, medians, so a
  change of background load hits every path alike;
- maximum throughput (wrk, 16 connections, median of ``--runs``), with wrk's own p99;
- CPU seconds per 10,000 requests during the throughput runs: of the model servers together, of the
  proxy, and of the generator (wrk); and the load of each CPU (the CPU seconds of the processes
  placed there per wall second: near 1.0 on CPU 0 in the first layout means the generator's core,
  not the server, set the maximum);
- with a shadow: the shadow's answers per request at saturation (the router drops mirrors the shadow
  cannot keep up with, counted in ``noria_router_errors_total{reason="shadow_overload"}``; above
  100 % when mirrors queued during the warm-up are answered within the run). The shadow rows are
  measured at saturation only (throughput, CPU per request): the shadow's cost at the fixed rate is
  decided by the shadow pairs, not by a median of a few rounds in different processes.

The shadow pairs (also alone with ``--shadow-only``): per proxy, the 90/10 split (A) against the split +
100 % replayed shadow (B) in ONE proxy process (a router whose config file is rewritten between
rounds, one per ``--mirror-when``; nginx's two ports), ABBA rounds at the fixed rate with every
latency kept (``PacedClient``), the p99 of all A rounds' samples pooled against all B rounds' with a
95 % interval from resampling round pairs.

Goals (issue 17): added p50 <= 0.3 ms and p99 <= 1 ms at 500 req/s (router, one backend, against
direct, fixed-rate medians); throughput through the router >= 0.7x direct with one backend and with a
90/10 split (wrk medians); a 100 % shadow costs the primary <= 5 % p99 at 500 req/s (the router's
shadow pair, default ``mirror_when``: met when the whole 95 % interval is <= +5 %, NOT met when all of
it is above, else not decided; nginx's pair is printed beside it for reference). On a shared machine
the figures move with other load: the load average is printed, and latency goals are called
unmeasurable when the server's own maximum is close to the fixed rate.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import resource
import select
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections import deque
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from noria.router_config import Backend, RouterConfig  # noqa: E402
from noria_server.launch import free_port  # noqa: E402
from noria_server.reference_models import train_and_save  # noqa: E402
from noria_server.route import MIRROR_ANSWERED, MIRROR_SENT, MIRROR_WHEN  # noqa: E402
from server_latency import cpu_seconds, py_spy_top  # noqa: E402
from serving_bench import (  # noqa: E402
    lua_post,
    open_loop,
    require_wrk,
    start,
    stop,
    uptime,
    wait_http,
    wrk,
)

BODY = json.dumps({"inputs": [{"name": "input-0", "shape": [1, 20], "datatype": "FP64",
                               "data": [[round(0.1 * i - 1.0, 3) for i in range(20)]]}]}).encode()
INFER = "/v2/models/churn/infer"
GOAL_ADDED_P50_MS = 0.3
GOAL_ADDED_P99_MS = 1.0
GOAL_THROUGHPUT_VS_DIRECT = 0.7
GOAL_SHADOW_P99_COST = 0.05
# An offered rate above this share of the direct maximum measures the server's queue, not the router.
SATURATION_SHARE = 0.8
# A direct p50 above this at the fixed rate (one request takes ~0.2 ms on an idle core) says the machine's
# other load, not the path, sets the latencies: sub-millisecond differences are then noise.
LOADED_DIRECT_P50_MS = 2.0
VERSIONS = ("churn-v1", "churn-v2", "churn-v3")  # primary, the split's 10 %, the shadow

DIRECT = "direct to the server"
ROUTER_ONE, ROUTER_SPLIT = "router, one backend", "router, 90/10 split"
ROUTER_REPLAY, ROUTER_SHADOW = "router, + replayed shadow", "router, + shadow model"
NGINX_ONE, NGINX_SPLIT = "nginx, one backend", "nginx, 90/10 split"
NGINX_REPLAY, NGINX_MIRROR = "nginx, + replayed mirror", "nginx, + mirror to model"
REPLAY = "replayed-shadow"  # the process answering the real shadow's recorded answer


@dataclass(frozen=True)
class Layout:
    name: str
    primary_cpu: int  # churn-v1
    others_cpu: int  # churn-v2 (the split's 10 %) and churn-v3 (the shadow)
    proxy_cpu: int
    shadow_nice: int  # the shadow's niceness: 19 gives it only the CPU the proxy and generator leave
    generator_cpu: int = 0


LAYOUTS = (Layout("proxy on its own core", primary_cpu=1, others_cpu=0, proxy_cpu=0, shadow_nice=19),
           Layout("proxy on the server's core", primary_cpu=1, others_cpu=1, proxy_cpu=1, shadow_nice=0))


@dataclass
class Target:
    """One path to the primary: its URL, the proxy process on the way (None: direct)."""

    url: str
    proxy: int | None
    shadow_url: str | None = None  # where this path's mirrors go (their count is read there)


@dataclass
class PathResult:
    p50_ms: float | None  # at the fixed rate (None: a shadow row, measured at saturation only)
    p99_ms: float | None
    rps: float  # at saturation
    sat_p99_ms: float  # wrk's p99 at saturation
    server_cpu_10k: float  # CPU seconds per 10,000 requests at saturation
    proxy_cpu_10k: float
    generator_cpu_10k: float
    cpu_load: dict[int, float] = field(default_factory=dict)  # CPU -> CPU seconds placed there per wall second
    mirrored_share: float | None = None  # shadow answers / requests at saturation
    errors: int = 0


def pin_tree(pid: int, cpu: int, nice: int | None = None) -> None:
    """Move every thread of ``pid`` and of its descendants to ``cpu`` (``taskset -a -p`` for a tree),
    and set their niceness (per thread on Linux) when ``nice`` is given."""
    pids = [pid]
    while pids:
        p = pids.pop()
        try:
            for tid in os.listdir(f"/proc/{p}/task"):
                os.sched_setaffinity(int(tid), {cpu})
                if nice is not None:
                    os.setpriority(os.PRIO_PROCESS, int(tid), nice)
                pids.extend(int(c) for c in Path(f"/proc/{p}/task/{tid}/children").read_text().split())
        except OSError:
            continue


def served(base_url: str) -> float:
    """Requests a model server has answered so far (its ``noria_requests_total``, every series)."""
    with urllib.request.urlopen(base_url + "/metrics", timeout=5) as resp:
        text = resp.read().decode()
    return sum(float(v) for v in re.findall(r"^noria_requests_total\{[^}]*\} (\S+)$", text, re.MULTILINE))


def fixed_rate(url: str, rate: float, seconds: float) -> tuple[float, float, int]:
    """(p50 ms, p99 ms, errors) at an open-loop ``rate``."""
    latencies, errors, _ = open_loop(url, BODY, rate, seconds)
    n = len(latencies)
    return latencies[n // 2] * 1e3, latencies[min(n - 1, int(n * 0.99))] * 1e3, errors


def finite_median(values: list[float]) -> float:
    """The median of the numbers among ``values`` (wrk prints a p99 it cannot give as "-nan", read as
    NaN, which ``statistics.median`` would sort anywhere); NaN when there are none."""
    numbers = [v for v in values if v == v]
    return statistics.median(numbers) if numbers else float("nan")


def children_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


@dataclass
class SaturationRun:
    rps: float
    p99_ms: float
    errors: int
    server_cpu_10k: float
    proxy_cpu_10k: float
    generator_cpu_10k: float
    cpu_load: dict[int, float]
    mirrored_share: float | None


def saturation(target: Target, placed: dict[int, list[int]], servers: list[int],
               args: argparse.Namespace) -> list[SaturationRun]:
    """wrk's maximum through ``target``, ``runs`` times, with the CPU each process used."""
    script = lua_post(BODY)
    runs = []
    try:
        wrk(target.url, script, args.connections, args.warmup)
        for _ in range(args.runs):
            before = {pid: cpu_seconds(pid) for pids in placed.values() for pid in pids}
            mirrored_before = served(target.shadow_url) if target.shadow_url else 0.0
            gen_before, wall_before = children_cpu(), time.monotonic()
            result = wrk(target.url, script, args.connections, args.seconds)
            wall, gen = time.monotonic() - wall_before, children_cpu() - gen_before
            used = {pid: cpu_seconds(pid) - before[pid] for pid in before}
            requests = max(result.rps * args.seconds, 1.0)
            load = {cpu: sum(used[p] for p in pids) / wall for cpu, pids in placed.items()}
            load[0] = load.get(0, 0.0) + gen / wall  # the generator (wrk) runs on CPU 0
            runs.append(SaturationRun(
                result.rps, result.p99_ms, result.errors, sum(used[p] for p in servers) / requests * 1e4,
                (used[target.proxy] / requests * 1e4) if target.proxy else 0.0, gen / requests * 1e4, load,
                ((served(target.shadow_url) - mirrored_before) / requests) if target.shadow_url else None))
    finally:
        os.unlink(script)
    return runs


def place(layout: Layout, procs: dict[str, int]) -> dict[int, list[int]]:
    """Pin every process as ``layout`` says; the pids placed on each CPU."""
    pin_tree(procs["churn-v1"], layout.primary_cpu)
    pin_tree(procs["churn-v2"], layout.others_cpu)
    if "churn-v3" in procs:
        pin_tree(procs["churn-v3"], layout.others_cpu, nice=layout.shadow_nice)
    pin_tree(procs[REPLAY], layout.others_cpu)  # at nice 0: it stands for a shadow with its own CPU
    backends = (*VERSIONS, REPLAY)
    placed: dict[int, list[int]] = {}
    for name, pid in procs.items():
        if name not in backends:
            pin_tree(pid, layout.proxy_cpu)
        cpu = layout.primary_cpu if name == VERSIONS[0] else layout.others_cpu if name in backends else layout.proxy_cpu
        placed.setdefault(cpu, []).append(pid)
    time.sleep(0.5)
    return placed


class PacedClient:
    """An open-loop generator that keeps every latency (the pooled quantiles and their bootstrap need
    the samples; benchmarks/loadgen prints quantiles only): one thread, ``connections`` non-blocking
    keep-alive connections opened once, ``select(2)`` with microsecond timeouts for the schedule
    (uvloop's timers fire on whole milliseconds: the Python ``open_loop`` sent ~1 ms late at p99).
    Each latency counts from its request's scheduled send, whether or not a connection was free
    (no coordinated omission); the collector is off during a run."""

    DRAIN_SECONDS = 5.0

    def __init__(self, url: str, body: bytes, connections: int = 16) -> None:
        from urllib.parse import urlsplit

        parts = urlsplit(url)
        self.address = (parts.hostname or "127.0.0.1", parts.port or 80)
        self.request = (b"POST %s HTTP/1.1\r\nhost: %s:%d\r\ncontent-type: application/json\r\ncontent-length: "
                        b"%d\r\n\r\n" % (parts.path.encode(), self.address[0].encode(), self.address[1], len(body))
                        + body)
        self.sockets = [self._connect() for _ in range(connections)]

    def _connect(self) -> socket.socket:
        sock = socket.create_connection(self.address, timeout=5)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        sock.setblocking(False)
        return sock

    @staticmethod
    def _status(answer: bytearray) -> tuple[int, bool] | None:
        """(status, whether the server closes the connection after it) of the complete answer in
        ``answer``; None while it is incomplete."""
        head_end = answer.find(b"\r\n\r\n")
        if head_end < 0:
            return None
        head = bytes(answer[:head_end]).lower()
        at = head.find(b"\ncontent-length:")
        length = 0 if at < 0 else int(head[at + 16:].split(b"\r", 1)[0])
        if len(answer) < head_end + 4 + length:
            return None
        return int(answer[9:12]), b"\nconnection: close" in head

    def run(self, rate: float, seconds: float) -> tuple[list[float], list[float], int]:
        """(latencies, how late each request was sent, errors), seconds, in send order."""
        import gc

        clock, interval, total = time.perf_counter, 1.0 / rate, int(rate * seconds)
        idle = list(self.sockets)
        busy: dict[socket.socket, tuple[float, bytearray]] = {}
        queued: deque[float] = deque()  # due times waiting for a free connection
        latencies: list[float] = []
        late: list[float] = []
        errors, sent, drain_until = 0, 0, 0.0
        collecting = gc.isenabled()
        gc.disable()
        begin = clock() + 0.005
        try:
            while True:
                now = clock()
                while sent < total and begin + sent * interval <= now:
                    due = begin + sent * interval
                    late.append(now - due)
                    sent += 1
                    if idle:
                        sock = idle.pop()
                        sock.send(self.request)
                        busy[sock] = (due, bytearray())
                    else:
                        queued.append(due)
                if sent >= total:
                    if not busy and not queued:
                        break
                    drain_until = drain_until or now + self.DRAIN_SECONDS
                    if now >= drain_until:
                        errors += len(busy) + len(queued)
                        break
                    wait = drain_until - now
                else:
                    wait = begin + sent * interval - now
                if not busy:
                    time.sleep(max(wait, 0.0))  # clock_nanosleep: not rounded to milliseconds
                    continue
                ready, _, _ = select.select(list(busy), [], [], max(wait, 0.0))
                for sock in ready:
                    due, answer = busy[sock]
                    try:
                        chunk = sock.recv(65536)
                    except BlockingIOError:
                        continue
                    except OSError:
                        chunk = b""
                    if not chunk:  # closed under us: an error, and a new connection in its place
                        errors += 1
                        del busy[sock]
                        sock.close()
                        self.sockets.remove(sock)
                        sock = self._connect()
                        self.sockets.append(sock)
                        idle.append(sock)
                        continue
                    answer += chunk
                    complete = self._status(answer)
                    if complete is None:
                        continue
                    done = clock()
                    del busy[sock]
                    status, closing = complete
                    if status == 200:
                        latencies.append(done - due)
                    else:
                        errors += 1
                    if closing:  # nginx: after keepalive_requests answers on one connection
                        sock.close()
                        self.sockets.remove(sock)
                        sock = self._connect()
                        self.sockets.append(sock)
                    if queued:
                        sock.send(self.request)
                        busy[sock] = (queued.popleft(), bytearray())
                    else:
                        idle.append(sock)
        finally:
            if collecting:
                gc.enable()
        if busy:  # answers still owed would be read as the next run's: start that one afresh
            self.close()
            self.sockets = [self._connect() for _ in range(len(self.sockets))]
        return latencies, late, errors

    def close(self) -> None:
        for sock in self.sockets:
            sock.close()


@dataclass
class Arm:
    """One side of a shadow pair: a path through a proxy, the proxy's state it needs (a router's config
    with or without the shadow, written and seen applied before the arm's rounds), and its rounds."""

    name: str
    url: str
    proxy: int  # pid
    config: tuple[Path, str] | None = None  # (the router's config file, the text this arm runs with)
    mirrored: bool = False
    rounds: list[np.ndarray] = field(default_factory=list)  # latencies, seconds, one array per round
    late: list[float] = field(default_factory=list)
    cpu: float = 0.0  # the proxy's CPU seconds over the arm's rounds
    errors: int = 0
    shadow_answers: float = 0.0  # the replayed shadow's answers during the arm's rounds

    def make_current(self) -> None:
        """A router arm: its config written (atomically) and applied, as ``/router/state`` says."""
        if self.config is None:
            return
        path, text = self.config
        if path.read_text() != text:
            temporary = path.with_suffix(".next")
            temporary.write_text(text)
            os.replace(temporary, path)
        state_url = self.url.removesuffix(INFER) + "/router/state"
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            with urllib.request.urlopen(state_url, timeout=2) as resp:
                if (json.loads(resp.read())["shadow"] is not None) == self.mirrored:
                    return
            time.sleep(0.05)
        raise RuntimeError(f"{self.name}: the router did not apply its config within 10 s")


def pooled_quantile(rounds: list[np.ndarray], q: float) -> float:
    """The ``q`` quantile (ms) of every round's samples together (the same index rule as ``FixedRound``)."""
    pooled = np.concatenate(rounds)
    k = min(len(pooled) - 1, int(len(pooled) * q))
    return float(np.partition(pooled, k)[k]) * 1e3


def bootstrap_ratio(a: list[np.ndarray], b: list[np.ndarray], q: float, resamples: int,
                    seed: int = 17) -> tuple[float, float]:
    """95 % interval of pooled-quantile(b) / pooled-quantile(a) - 1, resampling round pairs with
    replacement (round k of ``a`` and of ``b`` ran next to each other: a drift between rounds, the
    noise that matters here, is resampled whole)."""
    rng = np.random.default_rng(seed)
    n = len(a)
    ratios = []
    for _ in range(resamples):
        picked = rng.integers(0, n, n)
        ratios.append(pooled_quantile([b[i] for i in picked], q) / pooled_quantile([a[i] for i in picked], q) - 1)
    low, high = np.percentile(ratios, [2.5, 97.5])
    return float(low), float(high)


def shadow_verdict(low: float, high: float, goal: float = GOAL_SHADOW_P99_COST) -> str:
    """The goal decided by the interval [low, high] of the p99's relative change: met only when all of it
    is <= ``goal``, NOT met when all of it is above, else not decided."""
    return "met" if high <= goal else "NOT met" if low > goal else f"not decided (the interval holds {goal:.0%})"


@dataclass
class PairResult:
    """One shadow pair's outcome: the primary's pooled p99 without (A) and with (B) the 100 % shadow."""

    label: str
    mirror_when: str | None  # None: nginx
    rounds: int
    a_p99_ms: float
    b_p99_ms: float
    low: float  # 95 % interval of b / a - 1
    high: float
    per_round: list[float]  # b / a - 1 of each round pair's own p99s
    p50: float  # pooled p50, b / a - 1
    cpu_10k: float  # the mirror's proxy CPU, seconds per 10,000 requests

    @property
    def pooled(self) -> float:
        return self.b_p99_ms / self.a_p99_ms - 1

    @property
    def verdict(self) -> str:
        return shadow_verdict(self.low, self.high)

    def summary(self) -> str:
        return (f"{self.label} shadow pair (pooled p99 of {self.rounds} ABBA round pairs {self.a_p99_ms:.3f} -> "
                f"{self.b_p99_ms:.3f} ms, {self.pooled:+.1%}, 95% CI {self.low:+.1%}..{self.high:+.1%})")

    @classmethod
    def of(cls, label: str, mirror_when: str | None, a: Arm, b: Arm, resamples: int) -> PairResult:
        low, high = bootstrap_ratio(a.rounds, b.rounds, 0.99, resamples)
        per_round = [pooled_quantile([y], 0.99) / pooled_quantile([x], 0.99) - 1
                     for x, y in zip(a.rounds, b.rounds, strict=True)]
        cpu = (b.cpu / (sum(len(r) for r in b.rounds) or 1) - a.cpu / (sum(len(r) for r in a.rounds) or 1)) * 1e4
        return cls(label, mirror_when, len(a.rounds), pooled_quantile(a.rounds, 0.99),
                   pooled_quantile(b.rounds, 0.99), low, high, per_round,
                   pooled_quantile(b.rounds, 0.5) / pooled_quantile(a.rounds, 0.5) - 1, cpu)


def measure_arm(arm: Arm, args: argparse.Namespace, replay_url: str) -> None:
    """One round of ``arm``: made current, ``--shadow-warmup`` seconds (connections to the shadow, caches), then
    ``--shadow-round-seconds`` at ``--rate`` on fresh generator connections."""
    arm.make_current()
    client = PacedClient(arm.url, BODY)
    try:
        client.run(args.rate, args.shadow_warmup)
        cpu_before, shadow_before = cpu_seconds(arm.proxy), served(replay_url)
        latencies, late, errors = client.run(args.rate, args.shadow_round_seconds)
        arm.cpu += cpu_seconds(arm.proxy) - cpu_before
        arm.shadow_answers += served(replay_url) - shadow_before
    finally:
        client.close()
    arm.rounds.append(np.sort(np.array(latencies)))
    arm.late.extend(late)
    arm.errors += errors


def shadow_pairs(layout: Layout, pairs: list[tuple[str, str | None, Arm, Arm]], procs: dict[str, int],
                 replay_url: str, args: argparse.Namespace) -> list[PairResult]:
    """The 100 % shadow's cost to the primary: for each proxy, the 90/10 split (A) and the split + replayed
    shadow (B) in ONE proxy process (a router's config toggled between rounds, nginx's two ports),
    never both at once: ABBA rounds (A B, B A, A B, ...) of ``--shadow-round-seconds``, so a drift hits
    both alike and no process slot favours one arm. Per pair: the p99 of all A rounds' samples pooled
    against all B rounds', with a 95 % round-bootstrap interval, beside the median (min..max) of the
    per-round ratios; the proxy's CPU per 10,000 requests in each arm."""
    place(layout, procs)
    print(f"\n[{layout.name}] shadow pairs: {args.shadow_rounds} ABBA rounds x {args.shadow_round_seconds:g}s at "
          f"{args.rate:g} req/s per arm (+{args.shadow_warmup:g} s warm-up each), one proxy process per pair ...", flush=True)
    for k in range(args.shadow_rounds):
        for _, _, a, b in pairs:
            for arm in ((a, b) if k % 2 == 0 else (b, a)):
                measure_arm(arm, args, replay_url)
        print(f"  round {k + 1}: " + "; ".join(
            f"{label} p99 {pooled_quantile(a.rounds[-1:], 0.99):.2f} / {pooled_quantile(b.rounds[-1:], 0.99):.2f} ms"
            for label, _, a, b in pairs), flush=True)
    samples = int(args.rate * args.shadow_round_seconds)
    print(f"\n## shadow's cost to the primary, {layout.name}: {args.rate:g} req/s open loop, {args.shadow_rounds} "
          f"ABBA rounds x {args.shadow_round_seconds:g}s (~{samples} samples per round and arm, "
          f"{samples * args.shadow_rounds} pooled)")
    print(f"{'arm':38} {'p50 ms':>7} {'p99 ms':>7} {'p99.9':>6} {'round p99 min..max':>18} {'late p99':>8} "
          f"{'proxy cpu':>9} {'mirrored':>8} {'errors':>6}")
    for _, _, a, b in pairs:
        for arm in (a, b):
            p99s = [pooled_quantile([r], 0.99) for r in arm.rounds]
            requests = sum(len(r) for r in arm.rounds) + arm.errors or 1
            late = np.sort(np.array(arm.late))
            print(f"{arm.name:38} {pooled_quantile(arm.rounds, 0.5):7.3f} {pooled_quantile(arm.rounds, 0.99):7.3f} "
                  f"{pooled_quantile(arm.rounds, 0.999):6.2f} {min(p99s):8.3f}..{max(p99s):<8.3f} "
                  f"{late[min(len(late) - 1, int(len(late) * 0.99))] * 1e3:8.3f} {arm.cpu / requests * 1e4:9.2f} "
                  f"{arm.shadow_answers / requests:8.0%} {arm.errors:6d}")
    print("(p50/p99/p99.9: of every round's samples pooled; round p99: each round's own; late p99: how late the "
          "generator itself sent, ms; proxy cpu: CPU seconds of the proxy process per 10,000 requests at the fixed "
          "rate, /proc ticks of 10 ms; mirrored: the replayed shadow's answers per request)")
    results = []
    for label, when, a, b in pairs:
        r = PairResult.of(label, when, a, b, args.bootstrap)
        results.append(r)
        print(f"  {label}: 100% replayed shadow on the 90/10 split: primary pooled p99 {r.a_p99_ms:.3f} -> "
              f"{r.b_p99_ms:.3f} ms, {r.pooled:+.1%} (95% CI {r.low:+.1%}..{r.high:+.1%}, {args.bootstrap} round-pair "
              f"resamples); per-round median {statistics.median(r.per_round):+.1%} (min..max "
              f"{min(r.per_round):+.1%}..{max(r.per_round):+.1%}); pooled p50 {r.p50:+.1%}; the mirror's proxy CPU "
              f"{r.cpu_10k:+.2f} s per 10,000 requests; goal <= {GOAL_SHADOW_P99_COST:.0%}: {r.verdict}")
    return results


def measure_layout(layout: Layout, paths: dict[str, Target], procs: dict[str, int], urls: dict[str, str],
                   args: argparse.Namespace) -> dict[str, PathResult]:
    """Place the processes for ``layout``, then fixed-rate rounds over every path, then saturation per path."""
    placed = place(layout, procs)
    servers = [procs[v] for v in (*VERSIONS, REPLAY)]
    at_rate = {name: path for name, path in paths.items() if path.shadow_url is None}  # the shadow: in pairs
    print(f"\n[{layout.name}] fixed rate, {args.runs} rounds over {len(at_rate)} paths ...", flush=True)
    for path in at_rate.values():
        fixed_rate(path.url, args.rate, 2)  # warm-up: connections, caches
    fixed: dict[str, list[tuple[float, float, int]]] = {name: [] for name in at_rate}
    for _ in range(args.runs):
        for name, path in at_rate.items():
            fixed[name].append(fixed_rate(path.url, args.rate, args.rate_seconds))
    results = {}
    for name, path in paths.items():
        print(f"[{layout.name}] saturation: {name} ...", flush=True)
        runs = saturation(path, placed, servers, args)
        mirrored = [r.mirrored_share for r in runs if r.mirrored_share is not None]
        rounds = fixed.get(name, [])
        results[name] = PathResult(
            statistics.median(f[0] for f in rounds) if rounds else None,
            statistics.median(f[1] for f in rounds) if rounds else None,
            statistics.median(r.rps for r in runs), finite_median([r.p99_ms for r in runs]),
            statistics.median(r.server_cpu_10k for r in runs), statistics.median(r.proxy_cpu_10k for r in runs),
            statistics.median(r.generator_cpu_10k for r in runs),
            {cpu: statistics.median(r.cpu_load.get(cpu, 0.0) for r in runs) for cpu in (0, 1)},
            statistics.median(mirrored) if mirrored else None,
            sum(f[2] for f in rounds) + sum(r.errors for r in runs))
    return results


def router_config(urls: dict[str, str], weights: dict[str, int], shadow: str | None) -> dict:
    """The router's config (noria.router_config, the type the operator writes) with direct URLs."""
    backends = tuple(Backend(v, None, 8080, weight=w, url=urls[v]) for v, w in weights.items())
    mirrored = None if shadow is None else Backend(shadow, None, 8080, url=urls[shadow], mirror_percent=100)
    return RouterConfig("churn", "bench", backends, mirrored).to_json()


def nginx_conf(work: Path, ports: dict[str, int], listen: dict[str, int]) -> Path:
    """One worker, keep-alive upstreams; ``listen`` ports for one backend, the split, the split + mirror to
    the shadow model (churn-v3) and the split + mirror to the replayed shadow."""
    upstreams = "\n".join(f"  upstream {v.replace('-', '_')} {{ server 127.0.0.1:{p}; keepalive 64; }}"
                          for v, p in ports.items())
    proxy = "proxy_http_version 1.1; proxy_set_header Connection \"\";"
    conf = f"""
worker_processes 1;
daemon off;
pid {work}/nginx.pid;
error_log {work}/nginx-error.log warn;
events {{ worker_connections 4096; }}
http {{
  access_log off;
  client_body_temp_path {work}/nginx-body;
  proxy_temp_path {work}/nginx-proxy;
  fastcgi_temp_path {work}/nginx-fastcgi;
  uwsgi_temp_path {work}/nginx-uwsgi;
  scgi_temp_path {work}/nginx-scgi;
{upstreams}
  split_clients "${{request_id}}" $backend {{ 90% churn_v1; * churn_v2; }}
  server {{
    listen 127.0.0.1:{listen["one"]};
    location / {{ proxy_pass http://churn_v1; {proxy} }}
  }}
  server {{
    listen 127.0.0.1:{listen["split"]};
    location / {{ proxy_pass http://$backend; {proxy} }}
  }}
  server {{
    listen 127.0.0.1:{listen["mirror"]};
    location / {{ mirror /mirror; mirror_request_body on; proxy_pass http://$backend; {proxy} }}
    location = /mirror {{ internal; proxy_pass http://churn_v3$request_uri; {proxy} }}
  }}
  server {{
    listen 127.0.0.1:{listen["replay"]};
    location / {{ mirror /mirror; mirror_request_body on; proxy_pass http://$backend; {proxy} }}
    location = /mirror {{ internal; proxy_pass http://{REPLAY.replace('-', '_')}$request_uri; {proxy} }}
  }}
}}
"""
    path = work / "nginx.conf"
    path.write_text(conf)
    return path


def pair_arms(args: argparse.Namespace, work: Path, started: list[subprocess.Popen], urls: dict[str, str],
              procs: dict[str, int], nginx: tuple[int, dict[str, int]] | None) -> list[tuple[str, str | None, Arm, Arm]]:
    """The shadow pairs' arms: per ``--mirror-when`` one new ``noria_server route`` process whose config
    file is rewritten between its two arms (the 90/10 split, then the same + the 100 % replayed shadow),
    and nginx's split and split + mirror ports (``nginx``: its pid and listen ports)."""
    split = {"churn-v1": 90, "churn-v2": 10}
    texts = (json.dumps(router_config(urls, split, None)), json.dumps(router_config(urls, split, REPLAY)))
    pairs: list[tuple[str, str | None, Arm, Arm]] = []
    for when in dict.fromkeys(args.mirror_when or [MIRROR_WHEN]):
        config = work / f"router-{when}.json"
        config.write_text(texts[0])
        port = free_port()
        proc = start([sys.executable, "-m", "noria_server", "route", "--config", str(config), "--host", "127.0.0.1",
                      "--port", str(port), "--drain-seconds", "0", "--mirror-when", when], work / f"router-{when}.log")
        started.append(proc)
        name = f"router {when}"
        procs[name], urls[name] = proc.pid, f"http://127.0.0.1:{port}"
        url = urls[name] + INFER
        label = f"router (mirror_when {when})"
        pairs.append((label, when, Arm(f"{label}, split", url, proc.pid, (config, texts[0])),
                      Arm(f"{label}, + shadow", url, proc.pid, (config, texts[1]), mirrored=True)))
    if nginx:
        pid, listen = nginx
        pairs.append(("nginx", None, Arm("nginx, split", f"http://127.0.0.1:{listen['split']}{INFER}", pid),
                      Arm("nginx, + mirror", f"http://127.0.0.1:{listen['replay']}{INFER}", pid, mirrored=True)))
    for url in [urls[REPLAY] + INFER] + [arm.url for _, _, a, b in pairs for arm in (a, b)]:
        wait_http(url.removesuffix(INFER) + "/v2/health/ready", 180)
    return pairs


def find_nginx() -> str | None:
    return shutil.which("nginx") or ("/usr/sbin/nginx" if os.path.exists("/usr/sbin/nginx") else None)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rate", type=float, default=500)
    parser.add_argument("--rate-seconds", type=float, default=8, help="seconds per fixed-rate round and path")
    parser.add_argument("--seconds", type=int, default=3, help="seconds per saturation run (wrk: whole seconds)")
    parser.add_argument("--warmup", type=int, default=1, help="wrk's warm-up per path, whole seconds")
    parser.add_argument("--runs", type=int, default=3, help="fixed-rate rounds and saturation runs per path")
    parser.add_argument("--connections", type=int, default=16)
    parser.add_argument("--layout", choices=[layout.name for layout in LAYOUTS], action="append",
                        help=f"measure this layout (repeatable; default: {LAYOUTS[0].name}); the shadow pairs run "
                             "in the first")
    parser.add_argument("--quiet-load", type=float, default=1.5,
                        help="wait until the 1-minute load average is below this before measuring (0: don't)")
    parser.add_argument("--quiet-wait", type=float, default=240,
                        help="wait at most this many seconds for --quiet-load, then measure anyway (said so)")
    parser.add_argument("--hot-path", action="store_true",
                        help="only the router's own Python + event-loop time per request, without sockets "
                             "(fake transports; best of 7 rounds, hardly moved by other load)")
    parser.add_argument("--profile", action="store_true",
                        help="one more saturation run through the router (one backend) with py-spy attached, and "
                             "one more fixed-rate round through the first shadow pair's router + replayed shadow")
    parser.add_argument("--shadow-only", action="store_true",
                        help="only the shadow pairs, without the table (the latency and throughput goals are then "
                             "not decided)")
    parser.add_argument("--mirror-when", choices=(MIRROR_SENT, MIRROR_ANSWERED), action="append",
                        help="the shadow pairs' router mirror_when, one router process and pair each (repeatable; "
                             f"default: {MIRROR_WHEN}, the router's default, which decides the goal)")
    parser.add_argument("--shadow-rounds", type=int, default=12, help="ABBA rounds per arm of each shadow pair")
    parser.add_argument("--shadow-round-seconds", type=float, default=5,
                        help="seconds per shadow round and arm")
    parser.add_argument("--shadow-warmup", type=float, default=0.5,
                        help="seconds at the rate before each shadow round, not counted")
    parser.add_argument("--bootstrap", type=int, default=2000, help="the shadow pairs' bootstrap resamples")
    parser.add_argument("--replay-backend", type=int, metavar="PORT", help=argparse.SUPPRESS)  # the benchmark's own
    parser.add_argument("--replay-answer", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.replay_backend:
        replay_backend(args.replay_backend, Path(args.replay_answer))
        return
    if args.hot_path:
        print(f"router hot path (Python + event loop, no sockets; thread CPU time, best of 7 x 20,000 requests): "
              f"{hot_path_cost():.1f} us per request; with a 100% shadow: "
              f"{hot_path_cost(mirrored=True, mirror_when=MIRROR_ANSWERED):.1f} us (mirror_when answered), "
              f"{hot_path_cost(mirrored=True, mirror_when=MIRROR_SENT):.1f} us (sent)", flush=True)
        return
    require_wrk()
    if (os.cpu_count() or 1) < 2 or not hasattr(os, "sched_setaffinity"):
        sys.exit("router_overhead needs 2 CPUs and sched_setaffinity (Linux): it places processes on CPUs 0 and 1")
    nginx = find_nginx()
    if nginx is None:
        print("nginx not found: its rows are left out (`apt-get install -y nginx-light` for the native-code "
              "reference)", flush=True)
    if args.profile and not (shutil.which("py-spy") or (Path(sys.executable).parent / "py-spy").exists()):
        sys.exit("--profile needs py-spy: `.venv/bin/pip install py-spy`")
    os.sched_setaffinity(0, {0})  # the fixed-rate generator runs in this process
    wait_for_quiet(args.quiet_load, args.quiet_wait)
    load_before = uptime()
    work = Path(tempfile.mkdtemp(prefix="noria-router-bench-"))
    started: list[subprocess.Popen] = []

    def terminated(*_: object) -> None:
        # Stopped by `timeout` or kill: stop the servers, routers and nginx and leave at once (SIGTERM's
        # default action left them running; an exception raised here would be caught by the event loop).
        for proc in reversed(started):
            stop(proc)
        shutil.rmtree(work, ignore_errors=True)
        os._exit(1)

    signal.signal(signal.SIGTERM, terminated)
    try:
        urls, ports, procs = {}, {}, {}
        for i, version in enumerate(VERSIONS):
            saved = train_and_save("logistic", str(work / version), rows=3000, seed=i)
            port = ports[version] = free_port()
            urls[version] = f"http://127.0.0.1:{port}"
            proc = start([sys.executable, "-m", "noria_server", "serve", "--artifact", saved.artifact_uri,
                          "--digest", saved.digest, "--profile", saved.profile_uri, "--model", "churn",
                          "--version", version, "--host", "127.0.0.1", "--port", str(port),
                          "--drain-seconds", "0"], work / f"{version}.log")
            started.append(proc)
            procs[version] = proc.pid
        # The replayed shadow: the real shadow model's answer to BODY, recorded once, then answered
        # by a bare HttpServer at next to no CPU (a cluster's shadow has its own pods; here a third
        # model would compete for the 2 cores with the proxy and the generator).
        wait_http(urls["churn-v3"] + "/v2/health/ready", 180)
        recorded = work / "shadow-answer.json"
        recorded.write_bytes(record_answer(urls["churn-v3"] + INFER))
        port = ports[REPLAY] = free_port()
        urls[REPLAY] = f"http://127.0.0.1:{port}"
        proc = start([sys.executable, __file__, "--replay-backend", str(port), "--replay-answer", str(recorded)],
                     work / "replay.log")
        started.append(proc)
        procs[REPLAY] = proc.pid
        nginx_ports = None
        if nginx:
            listen = {"one": free_port(), "split": free_port(), "replay": free_port(), "mirror": free_port()}
            proc = start([nginx, "-p", str(work), "-c", str(nginx_conf(work, ports, listen))], work / "nginx.log")
            started.append(proc)
            procs["nginx"] = proc.pid
            nginx_ports = (proc.pid, listen)
        layouts = [layout for layout in LAYOUTS if layout.name in (args.layout or [LAYOUTS[0].name])]
        tables: dict[str, tuple[Layout, dict[str, PathResult]]] = {}
        if not args.shadow_only:
            paths = {DIRECT: Target(urls["churn-v1"] + INFER, None)}
            for name, weights, shadow in ((ROUTER_ONE, {"churn-v1": 100}, None),
                                          (ROUTER_SPLIT, {"churn-v1": 90, "churn-v2": 10}, None),
                                          (ROUTER_REPLAY, {"churn-v1": 90, "churn-v2": 10}, REPLAY),
                                          (ROUTER_SHADOW, {"churn-v1": 90, "churn-v2": 10}, "churn-v3")):
                config = work / f"router-{len(paths)}.json"
                config.write_text(json.dumps(router_config(urls, weights, shadow)))
                port = free_port()
                proc = start([sys.executable, "-m", "noria_server", "route", "--config", str(config), "--host",
                              "127.0.0.1", "--port", str(port), "--drain-seconds", "0"],
                             work / f"router-{len(paths)}.log")
                started.append(proc)
                procs[name] = proc.pid
                paths[name] = Target(f"http://127.0.0.1:{port}{INFER}", proc.pid, shadow and urls[shadow])
            if nginx_ports:
                for name, key, shadow in ((NGINX_ONE, "one", None), (NGINX_SPLIT, "split", None),
                                          (NGINX_REPLAY, "replay", REPLAY), (NGINX_MIRROR, "mirror", "churn-v3")):
                    paths[name] = Target(f"http://127.0.0.1:{nginx_ports[1][key]}{INFER}", nginx_ports[0],
                                         shadow and urls[shadow])
            for path in paths.values():
                wait_http(path.url.removesuffix(INFER) + "/v2/health/ready", 180)
            for layout in layouts:
                tables[layout.name] = (layout, measure_layout(layout, paths, procs, urls, args))
                print_table(layout, tables[layout.name][1], args)
                if args.profile and layout is LAYOUTS[0]:
                    profile_router(paths[ROUTER_ONE].url, procs[ROUTER_ONE], args, work)
        arms = pair_arms(args, work, started, urls, procs, nginx_ports)
        pairs = shadow_pairs(layouts[0], arms, procs, urls[REPLAY], args)
        if args.profile:  # the first router with its shadow
            mirrored = arms[0][3]
            mirrored.make_current()
            profile_at_rate(mirrored.url, mirrored.proxy, args, work)
        print(f"\n## Every goal of issue 17, from this run (table: {' and '.join(tables) or 'not measured'}; "
              f"shadow pairs: {layouts[0].name})")
        for line in goal_lines(tables, pairs, layouts[0].name, args.rate):
            print(line)
        print(f"Load before: {load_before}")
        print(f"Load after:  {uptime()}")
    finally:
        for proc in reversed(started):
            stop(proc)
        shutil.rmtree(work, ignore_errors=True)


def record_answer(infer_url: str) -> bytes:
    """The answer of the model server at ``infer_url`` to BODY (mirrored requests carry an x-request-id)."""
    request = urllib.request.Request(infer_url, data=BODY, headers={"content-type": "application/json",
                                                                    "x-request-id": "bench-replayed"})
    with urllib.request.urlopen(request, timeout=10) as resp:
        if resp.status != 200:
            raise RuntimeError(f"the shadow model answered {resp.status}")
        return resp.read()


def replay_backend(port: int, answer_file: Path) -> None:
    """Serve ``answer_file``'s bytes to every request (a recorded model answer, at next to no CPU),
    with the health and ``noria_requests_total`` a model server has, so the benchmark treats it as one."""
    import asyncio

    import uvloop
    from noria_server.httpserver import HttpServer, Response

    answer = answer_file.read_bytes()
    answered = 0

    def handle(request):  # noqa: ANN001, ANN202
        nonlocal answered
        if request.path == "/metrics":
            return Response(200, b"noria_requests_total{} %d\n" % answered, b"text/plain")
        if request.path.startswith("/v2/health/"):
            return Response(200, b'{"ready":true}')
        answered += 1
        return Response(200, answer)

    async def serve() -> None:
        await HttpServer(handle).start("127.0.0.1", port)
        await asyncio.Event().wait()

    uvloop.run(serve())


class _FakeTransport:
    """Enough of a transport for one HTTP connection of the router's, without a socket."""

    def __init__(self, on_write) -> None:  # noqa: ANN001
        self.on_write = on_write
        self.closing = False

    def write(self, data: bytes) -> None:
        self.on_write(data)

    def is_closing(self) -> bool:
        return self.closing

    def close(self) -> None:
        self.closing = True

    abort = close

    def get_extra_info(self, name: str, default: object = None) -> object:
        return ("127.0.0.1", 1) if name == "peername" else default

    def pause_reading(self) -> None:
        pass

    resume_reading = pause_reading

    def can_write_eof(self) -> bool:
        return True

    def write_eof(self) -> None:
        pass


def hot_path_cost(requests: int = 20000, rounds: int = 7, mirrored: bool = False,
                  mirror_when: str = MIRROR_WHEN) -> float:
    """The router's own Python and event-loop time per request, in microseconds, without sockets
    (CPU time of the thread, best of ``rounds``, so other load on the machine hardly moves it): the benchmark's request is fed
    to one of the router's HTTP connections, the upstream request it writes is answered by feeding a
    fixed OIP answer to its upstream connection, and the answer it writes back is counted. The four
    socket calls and the kernel's work, which a native proxy pays too, are not in it. ``mirrored``: every
    request also mirrored to a shadow, whose answer differs from the primary's in ``model_version``
    only (as two versions' answers to one request do), and compared; ``mirror_when``: the mirror's timing."""
    import asyncio

    import uvloop
    from noria_server import httpserver
    from noria_server.route import Router, RouterSettings

    request = (b"POST %s HTTP/1.1\r\nhost: r\r\ncontent-type: application/json\r\ncontent-length: %d\r\n\r\n"
               % (INFER.encode(), len(BODY))) + BODY
    answers = {}
    for port, version in ((9, b"churn-v1"), (10, b"churn-v3")):
        body = (b'{"model_name":"churn","model_version":"%s","id":"r-1","parameters":{"ids":"[\\"r-1-0\\"]"},'
                b'"outputs":[{"name":"predict","shape":[1],"datatype":"INT64","data":[1]}]}' % version)
        answers[port] = (b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: %d\r\n\r\n"
                         % len(body)) + body

    async def main() -> float:
        # Mirrors sent on the loop's next turn, one per batch: each mirror's whole cost, none shared.
        router = Router(RouterSettings(host="127.0.0.1", port=0, drain_seconds=0, mirror_delay=0,
                                       mirror_when=mirror_when))
        router.apply_config(RouterConfig("churn", "bench", (Backend("v1", None, 8080, weight=100,
                                                                    url="http://127.0.0.1:9"),),
                                         Backend("v3", None, 8080, url="http://127.0.0.1:10", mirror_percent=100)
                                         if mirrored else None))
        loop = asyncio.get_running_loop()
        written: list[object] = []
        upstream: list[Any] = []

        async def connect(factory, host, port, ssl=None):  # noqa: ANN001, ANN202
            conn = factory()
            conn.connection_made(_FakeTransport(lambda data, c=conn: upstream.append(c)))
            return _FakeTransport(None), conn

        loop.create_connection = connect  # type: ignore[method-assign]
        await router.http.start("127.0.0.1", 0)
        client = httpserver._Connection(router.http)
        client.connection_made(_FakeTransport(written.append))
        best = float("inf")
        for _ in range(rounds):
            started, target = time.thread_time(), len(written) + requests
            while len(written) < target:
                client.data_received(request)
                while client.busy or upstream or router.shadow_in_flight:
                    if upstream:
                        conn = upstream.pop()
                        conn.data_received(answers[conn.pool.port])
                    else:
                        await asyncio.sleep(0)
            best = min(best, (time.thread_time() - started) / requests)
        await router.http.close()
        return best * 1e6

    return uvloop.run(main())


def wait_for_quiet(below: float, at_most: float) -> None:
    """Wait until the 1-minute load average is under ``below`` (other work on a shared machine sets
    every latency otherwise), at most ``at_most`` seconds; print what it was."""
    if below <= 0:
        return
    until = time.monotonic() + at_most
    while (load := os.getloadavg()[0]) >= below and time.monotonic() < until:
        time.sleep(5)
    verdict = "quiet enough" if load < below else f"NOT quiet after {at_most:g}s: measuring anyway, read with care"
    print(f"1-minute load {load:.2f} (wanted < {below:g}): {verdict}", flush=True)


def profile_router(url: str, pid: int, args: argparse.Namespace, work: Path) -> None:
    """Where the router's time goes at saturation: py-spy's own samples by function (the event loop's C
    side, syscalls included, shows as ``Runner.run``)."""
    from concurrent.futures import ThreadPoolExecutor

    script = lua_post(BODY)
    try:
        with ThreadPoolExecutor(1) as pool:
            spy = pool.submit(py_spy_top, pid, args.seconds, work / "router-spy.txt")
            wrk(url, script, args.connections, args.seconds)
            print(f"router at saturation, py-spy (own samples by function):\n{spy.result()}", flush=True)
    finally:
        os.unlink(script)


def profile_at_rate(url: str, pid: int, args: argparse.Namespace, work: Path) -> None:
    """Where the router's time goes at the fixed rate with the 100 % replayed shadow (py-spy's own
    samples by function, idle time left out)."""
    from concurrent.futures import ThreadPoolExecutor

    with ThreadPoolExecutor(1) as pool:
        spy = pool.submit(py_spy_top, pid, args.shadow_round_seconds, work / "router-shadow-spy.txt")
        fixed_rate(url, args.rate, args.shadow_round_seconds)
        print(f"router + replayed shadow at {args.rate:g} req/s, py-spy (own samples by function):\n{spy.result()}",
              flush=True)


def _ms(value: float | None, width: int) -> str:
    return f"{'-':>{width}}" if value is None else f"{value:{width}.2f}"


def print_table(layout: Layout, results: dict[str, PathResult], args: argparse.Namespace) -> None:
    direct = results[DIRECT]
    assert direct.p50_ms is not None and direct.p99_ms is not None
    print(f"\n## {layout.name}: v1 on CPU {layout.primary_cpu}, v2, shadow v3 (nice {layout.shadow_nice}) and the "
          f"replayed shadow on CPU {layout.others_cpu}, proxy on CPU {layout.proxy_cpu}, generator on CPU "
          f"{layout.generator_cpu}")
    print(f"{args.rate:g} req/s open loop ({args.rate_seconds:g}s x {args.runs} rounds), then saturation "
          f"(wrk -t1 -c{args.connections}, {args.seconds:g}s); medians of {args.runs}")
    print(f"{'path':26} {'p50 ms':>7} {'p99 ms':>7} {'+p50':>6} {'+p99':>6} {'req/s':>7} {'vs dir':>7} "
          f"{'sat p99':>7} {'srv cpu':>7} {'proxy':>6} {'wrk':>5} {'cpu0':>5} {'cpu1':>5} {'mirrored':>8}")
    for name, r in results.items():
        mirrored = f"{r.mirrored_share:8.0%}" if r.mirrored_share is not None else f"{'':8}"
        added_p50 = None if r.p50_ms is None else r.p50_ms - direct.p50_ms
        added_p99 = None if r.p99_ms is None else r.p99_ms - direct.p99_ms
        print(f"{name:26} {_ms(r.p50_ms, 7)} {_ms(r.p99_ms, 7)} {_ms(added_p50, 6)} {_ms(added_p99, 6)} "
              f"{r.rps:7.0f} {r.rps / direct.rps:6.2f}x {r.sat_p99_ms:7.2f} "
              f"{r.server_cpu_10k:7.2f} {r.proxy_cpu_10k:6.2f} {r.generator_cpu_10k:5.2f} "
              f"{r.cpu_load.get(0, 0):5.2f} {r.cpu_load.get(1, 0):5.2f} {mirrored}"
              + (f"  ({r.errors} errors)" if r.errors else ""))
    print("(+p50/+p99: added to direct at the fixed rate, ms; sat p99: wrk's at saturation, ms; srv cpu / proxy / "
          "wrk: CPU seconds per 10,000 requests at saturation, the model servers and the replayed shadow "
          "together / the proxy / the generator; cpu0/cpu1: CPU seconds of the processes placed on that CPU per "
          "wall second at saturation; mirrored: shadow answers per request at saturation)")
    print("(+ replayed shadow / mirror: the 90/10 split, every /infer also sent to a process replaying the real shadow "
          "model's recorded answer at next to no CPU, as a shadow with its own pods: the proxy's own cost of "
          "mirroring; + shadow model / mirror to model: to the real shadow model server, on the proxy's CPU at nice "
          f"{layout.shadow_nice}. Shadow rows at saturation only: their cost at {args.rate:g} req/s is the shadow "
          "pairs' below)")
    for proxy, without, with_shadow, kind in (
            ("router", ROUTER_SPLIT, ROUTER_REPLAY, "replayed shadow"), ("router", ROUTER_SPLIT, ROUTER_SHADOW,
                                                                        "shadow model on the proxy's CPU"),
            ("nginx", NGINX_SPLIT, NGINX_REPLAY, "replayed shadow"), ("nginx", NGINX_SPLIT, NGINX_MIRROR,
                                                                     "shadow model on the proxy's CPU")):
        if with_shadow in results:
            a, b = results[without], results[with_shadow]
            print(f"  {proxy}: a 100% {kind} on the 90/10 split, at saturation: req/s {b.rps / a.rps - 1:+.0%}, "
                  f"p99 {b.sat_p99_ms / a.sat_p99_ms - 1:+.0%}, proxy CPU per 10k {b.proxy_cpu_10k - a.proxy_cpu_10k:+.2f} s")
    print("Configurations: 3 x `python -m noria_server serve` (LogisticRegression Pipeline, 20 features, defaults, no "
          "store), the replayed shadow (noria_server.httpserver answering v3's recorded answer), 4 x `python -m "
          "noria_server route --config`; nginx (Debian) 1 worker, upstream keepalive 64, split_clients and mirror. "
          "Same single-row OIP v2 body.")


def latency_unmeasurable(direct: PathResult, rate: float) -> bool:
    """Whether the fixed rate measures a queue rather than a path: the rate over ``SATURATION_SHARE``
    of the server's own maximum, or a direct p50 that says other load sets the latencies."""
    return direct.rps < rate / SATURATION_SHARE or (direct.p50_ms or 0.0) > LOADED_DIRECT_P50_MS


def table_goals(direct: PathResult, one: PathResult, split: PathResult, rate: float) -> list[tuple[str, str]]:
    """(goal, verdict) of the table's four goals: the router with one backend against direct at the
    fixed rate (p50, p99 added), its throughput and the split's against direct's."""
    assert None not in (direct.p50_ms, direct.p99_ms, one.p50_ms, one.p99_ms)
    queueing = latency_unmeasurable(direct, rate)
    added_p50 = one.p50_ms - direct.p50_ms  # type: ignore[operator]
    added_p99 = one.p99_ms - direct.p99_ms  # type: ignore[operator]

    def verdict(met: bool, latency: bool) -> str:
        return "not measurable here (see NOTE)" if queueing and latency else "met" if met else "NOT met"

    return [
        (f"added p50 <= {GOAL_ADDED_P50_MS} ms at {rate:g} req/s, router one backend (here {added_p50:+.2f} ms)",
         verdict(added_p50 <= GOAL_ADDED_P50_MS, True)),
        (f"added p99 <= {GOAL_ADDED_P99_MS} ms at {rate:g} req/s, router one backend (here {added_p99:+.2f} ms)",
         verdict(added_p99 <= GOAL_ADDED_P99_MS, True)),
        (f"router one backend >= {GOAL_THROUGHPUT_VS_DIRECT}x direct's req/s (here {one.rps / direct.rps:.2f}x)",
         verdict(one.rps / direct.rps >= GOAL_THROUGHPUT_VS_DIRECT, False)),
        (f"router 90/10 split >= {GOAL_THROUGHPUT_VS_DIRECT}x direct's req/s (here {split.rps / direct.rps:.2f}x)",
         verdict(split.rps / direct.rps >= GOAL_THROUGHPUT_VS_DIRECT, False)),
    ]


def table_notes(layout: Layout, results: dict[str, PathResult], rate: float) -> list[str]:
    """What limits the table's verdicts here: a fixed rate near the server's maximum, a loaded machine,
    a generator's core busier than the server's."""
    direct, one = results[DIRECT], results[ROUTER_ONE]
    notes = []
    if direct.rps < rate / SATURATION_SHARE:
        notes.append(f"NOTE: {rate:g} req/s is over {SATURATION_SHARE:.0%} of the server's own maximum here "
                     f"({direct.rps:.0f} req/s): the fixed-rate latencies are mostly queueing, not the router's "
                     "cost (a loaded machine; rerun with a lower --rate)")
    elif latency_unmeasurable(direct, rate):
        notes.append(f"NOTE: direct p50 is {direct.p50_ms:.1f} ms at {rate:g} req/s (over {LOADED_DIRECT_P50_MS:g} "
                     "ms): the machine's other load sets the latencies, so the latency goals cannot be judged "
                     "here; rerun on a quiet machine")
    if layout.proxy_cpu == layout.generator_cpu and one.cpu_load.get(0, 0) > 0.9 > one.cpu_load.get(1, 0):
        notes.append("NOTE: CPU 0 (generator + proxy) was busier than CPU 1 through the router: the generator's "
                     "core, not the server, may have set the maximum")
    return notes


def deciding_pair(pairs: list[PairResult]) -> PairResult | None:
    """The pair that decides the shadow goal: the router with its default ``mirror_when`` (else the first
    router); nginx's and the other timing's are for reference."""
    routers = [p for p in pairs if p.mirror_when is not None]
    return next((p for p in routers if p.mirror_when == MIRROR_WHEN), routers[0] if routers else None)


def shadow_goal(pair: PairResult, rate: float) -> tuple[str, str]:
    """(goal, verdict) of the shadow goal as ``pair`` measured it."""
    return (f"a 100% shadow costs the primary <= {GOAL_SHADOW_P99_COST:.0%} p99 at {rate:g} req/s, "
            f"{pair.summary()}", pair.verdict)


def goal_lines(tables: dict[str, tuple[Layout, dict[str, PathResult]]], pairs: list[PairResult],
               pairs_layout: str | None, rate: float) -> list[str]:
    """Every goal's line from one run: the table's four per measured layout, then the shadow's from
    the pairs (the deciding router pair; nginx's and other router timings' for reference)."""
    lines = []
    for name, (layout, results) in tables.items():
        lines.append(f"[{name}] table:")
        lines += [f"  goal {goal}: {verdict}" for goal, verdict in
                  table_goals(results[DIRECT], results[ROUTER_ONE], results[ROUTER_SPLIT], rate)]
        lines += [f"  {note}" for note in table_notes(layout, results, rate)]
    if not tables:
        lines.append("table: not measured (--shadow-only): the latency and throughput goals are not decided here")
    decider = deciding_pair(pairs)
    if decider is None:
        lines.append("shadow: no router pair measured: the shadow goal is not decided here")
        return lines
    lines.append(f"[{pairs_layout}] shadow pairs:")
    goal, verdict = shadow_goal(decider, rate)
    lines.append(f"  goal {goal}: {verdict}")
    for pair in pairs:
        if pair is not decider:
            lines.append(f"  for reference, not the goal's: {pair.summary()}: {pair.verdict}")
    return lines


if __name__ == "__main__":
    main()
