"""What the HTTP limits cost, what granian's RSGI server would give instead, and memory under attack.

    .venv/bin/python benchmarks/http_hardening.py [--seconds 10 --runs 3 --rate 2000 --rate-seconds 10]
        [--granian-python /tmp/granian-venv/bin/python] [--skip-layer] [--skip-server] [--skip-attacks]

Everything runs in one run on this machine, servers on CPU 1 and the load generators (wrk, and
this process for the fixed-rate and attack clients) on CPU 0:

1. **The HTTP layer alone**: one minimal handler (parse the JSON body with orjson, answer a small
   JSON) on the layer before hardening (``git show d16a0b4:server_image/noria_server/httpserver.py``),
   on the hardened layer with its default limits, and as an RSGI app on granian 2.8.7 (one worker,
   one runtime thread, uvloop; the app checks Content-Length itself since granian has no body
   limit), if ``--granian-python`` points at a venv with granian installed. wrk throughput (16
   connections, median of ``--runs``) and, at a fixed open-loop rate below saturation, p50/p99 and
   the server's CPU seconds per 10,000 requests (user+sys of the server process tree).
2. **The model server**: ``python -m noria_server serve`` as of d16a0b4 (its whole tree, from
   ``git archive``) and as now, same model (LogisticRegression pipeline, 20 features), same
   single-row request, prediction log off on both (no store): the same figures.
3. **Attacks**: each attack of issue #10 against both model servers (default limits now), with the
   server's RSS sampled every 20 ms: peak growth during the attack, growth left 2 s after the
   attacker is gone, and what the attacker saw.

Prints one table per part, the exact configurations, and the machine load.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import psutil

sys.path.insert(0, str(Path(__file__).resolve().parent))
from noria_server.launch import free_port  # noqa: E402
from noria_server.reference_models import train_and_save  # noqa: E402
from serving_bench import (  # noqa: E402
    fixed_rate,
    measure,
    require_wrk,
    start,
    stop,
    uptime,
    wait_http,
)

BEFORE = "d16a0b4"  # main before issue #10's hardening
REPO = Path(__file__).resolve().parent.parent
ROW = [round(0.1 * i - 1.0, 3) for i in range(20)]
BODY = json.dumps({"inputs": [{"name": "input-0", "shape": [1, 20], "datatype": "FP64", "data": [ROW]}]}).encode()

MINI_LAYER = '''
import asyncio, sys
import orjson, uvloop
from noria_server.httpserver import HttpServer, Response

def handler(request):
    payload = orjson.loads(request.body)
    return Response(200, orjson.dumps({"id": payload.get("id", "x"), "outputs": [{"name": "predict", "data": [1]}]}))

async def main(port):
    server = HttpServer(handler)  # the layer's defaults (before: a body limit only; now: every limit)
    await server.start("127.0.0.1", port)
    await asyncio.Event().wait()

uvloop.run(main(int(sys.argv[1])))
'''

MINI_RSGI = '''
import orjson

MAX_BODY = 16 * 1024 * 1024
HEADERS = [("content-type", "application/json")]

async def app(scope, proto):
    length = scope.headers.get("content-length")
    if length is not None and int(length) > MAX_BODY:  # granian has no body limit of its own
        proto.response_bytes(413, HEADERS, b'{"error": "too large"}')
        return
    payload = orjson.loads(await proto())
    proto.response_bytes(200, HEADERS, orjson.dumps({"id": payload.get("id", "x"),
                                                     "outputs": [{"name": "predict", "data": [1]}]}))
'''


# --- processes ---------------------------------------------------------------------------------------
def tree(pid: int) -> list[psutil.Process]:
    root = psutil.Process(pid)
    return [root, *root.children(recursive=True)]


def cpu_seconds(pid: int) -> float:
    total = 0.0
    for p in tree(pid):
        try:
            t = p.cpu_times()
            total += t.user + t.system
        except psutil.NoSuchProcess:
            pass
    return total


def rss(pid: int) -> int:
    total = 0
    for p in tree(pid):
        try:
            total += p.memory_info().rss
        except psutil.NoSuchProcess:
            pass
    return total


def rate_figures(url: str, pid: int, rate: float, seconds: float) -> tuple[float, float, float]:
    """(p50 ms, p99 ms, server CPU seconds per 10,000 requests) at an open-loop fixed rate."""
    fixed_rate(url, BODY, rate, 2.0)  # warm the generator's connections
    before = cpu_seconds(pid)
    p50, p99 = fixed_rate(url, BODY, rate, seconds)
    used = cpu_seconds(pid) - before
    return p50, p99, used / (rate * seconds) * 10_000


def figures(name: str, url: str, pid: int, args: argparse.Namespace) -> dict[str, Any]:
    wrk_result = measure(url, BODY, args.connections, args.warmup, args.seconds, args.runs)
    p50, p99, cpu = rate_figures(url, pid, args.rate, args.rate_seconds)
    row = {"name": name, "rps": wrk_result.rps, "wrk_p50": wrk_result.p50_ms, "wrk_p99": wrk_result.p99_ms,
           "errors": wrk_result.errors, "rate_p50": p50, "rate_p99": p99, "cpu_per_10k": cpu}
    print(f"  {name:<34} {row['rps']:8.0f} req/s  p50 {row['wrk_p50']:6.2f}  p99 {row['wrk_p99']:6.2f} ms | "
          f"@{args.rate:g}/s p50 {p50:5.2f}  p99 {p99:6.2f} ms  CPU {cpu:5.2f} s/10k", flush=True)
    return row


def table(title: str, rows: list[dict[str, Any]], args: argparse.Namespace) -> None:
    print(f"\n## {title}")
    print(f"| server | wrk req/s | wrk p50 ms | wrk p99 ms | p50 ms @{args.rate:g}/s | p99 ms @{args.rate:g}/s "
          f"| CPU-s per 10k @{args.rate:g}/s |")
    print("|---|---:|---:|---:|---:|---:|---:|")
    for r in rows:
        print(f"| {r['name']} | {r['rps']:.0f} | {r['wrk_p50']:.2f} | {r['wrk_p99']:.2f} | {r['rate_p50']:.2f} | "
              f"{r['rate_p99']:.2f} | {r['cpu_per_10k']:.2f} |" + (f" ({r['errors']} errors)" if r["errors"] else ""))


# --- part 1: the layer ----------------------------------------------------------------------------------
def layer_part(work: Path, before_tree: Path, args: argparse.Namespace) -> list[dict[str, Any]]:
    (work / "mini_layer.py").write_text(MINI_LAYER)
    (work / "mini_rsgi.py").write_text(MINI_RSGI)
    rows = []
    candidates: list[tuple[str, list[str], dict[str, str]]] = [
        (f"layer before ({BEFORE})", [sys.executable, str(work / "mini_layer.py")],
         {"PYTHONPATH": str(before_tree / "server_image")}),
        ("layer hardened (now)", [sys.executable, str(work / "mini_layer.py")],
         {"PYTHONPATH": str(REPO / "server_image")}),
    ]
    if args.granian_python and Path(args.granian_python).exists():
        granian = str(Path(args.granian_python).parent / "granian")
        candidates.append(("granian 2.8.7 RSGI", [granian, "--interface", "rsgi", "--host", "127.0.0.1", "--port",
                                                  "{port}", "--workers", "1", "--runtime-threads", "1", "--loop",
                                                  "uvloop", "--http", "1", "--no-ws", "--log-level", "warning",
                                                  "mini_rsgi:app"], {}))
    else:
        print(f"  (granian not measured: no python at {args.granian_python!r})")
    for name, cmd, env in candidates:
        port = free_port()
        cmd = [c.replace("{port}", str(port)) for c in cmd]
        if "mini_layer.py" in cmd[-1]:
            cmd.append(str(port))
        proc = start(cmd, work / f"layer-{port}.log", env, cwd=str(work))
        url = f"http://127.0.0.1:{port}/v2/models/m/infer"
        try:
            wait_http(url, 60, BODY)
            rows.append(figures(name, url, proc.pid, args))
        finally:
            stop(proc)
    return rows


# --- part 2: the model server ---------------------------------------------------------------------------
def start_server(work: Path, saved: Any, pythonpath: str, tag: str) -> tuple[subprocess.Popen, int]:
    port = free_port()
    cmd = [sys.executable, "-m", "noria_server", "serve", "--artifact", saved.artifact_uri, "--digest", saved.digest,
           "--profile", saved.profile_uri, "--model", "m", "--version", "v1", "--host", "127.0.0.1",
           "--port", str(port), "--drain-seconds", "0"]
    proc = start(cmd, work / f"serve-{tag}-{port}.log", {"PYTHONPATH": pythonpath, "NORIA_LOG_LEVEL": "WARNING"})
    wait_http(f"http://127.0.0.1:{port}/v2/health/ready", 300)
    return proc, port


def server_part(work: Path, before_tree: Path, saved: Any, args: argparse.Namespace) -> list[dict[str, Any]]:
    rows = []
    for name, pythonpath, tag in ((f"noria serve before ({BEFORE})",
                                   f"{before_tree / 'operator'}:{before_tree / 'server_image'}", "before"),
                                  ("noria serve hardened (now)", f"{REPO / 'operator'}:{REPO / 'server_image'}", "now")):
        proc, port = start_server(work, saved, pythonpath, tag)
        try:
            rows.append(figures(name, f"http://127.0.0.1:{port}/v2/models/m/infer", proc.pid, args))
        finally:
            stop(proc)
    return rows


# --- part 3: attacks -------------------------------------------------------------------------------------
class RssSampler:
    def __init__(self, pid: int) -> None:
        self.pid, self.peak, self._stop = pid, 0, threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.is_set():
            self.peak = max(self.peak, rss(self.pid))
            time.sleep(0.02)

    def __enter__(self) -> RssSampler:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()


async def _open(port: int) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    return await asyncio.wait_for(asyncio.open_connection("127.0.0.1", port, limit=1 << 20), 5)


async def _send(writer: asyncio.StreamWriter, data: bytes, chunk: int = 1 << 20) -> bool:
    """Write ``data``; False when the server closed on us first."""
    try:
        for i in range(0, len(data), chunk):
            writer.write(data[i:i + chunk])
            await asyncio.wait_for(writer.drain(), 10)
        return True
    except (ConnectionError, TimeoutError, OSError):
        return False


async def _status(reader: asyncio.StreamReader, timeout: float) -> str:
    try:
        line = await asyncio.wait_for(reader.readline(), timeout)
    except (TimeoutError, ConnectionError, ValueError, asyncio.LimitOverrunError):
        return "no answer"
    return line[9:12].decode() if line.startswith(b"HTTP/1.1 ") else ("closed" if not line else "garbled")


def _tally(outcomes: list[str]) -> str:
    counts: dict[str, int] = {}
    for o in outcomes:
        counts[o] = counts.get(o, 0) + 1
    return ", ".join(f"{k}×{v}" for k, v in sorted(counts.items()))


async def _many(port: int, request: bytes, wait: float, count: int) -> str:
    """``count`` connections at once, each sending ``request`` and reading the status within ``wait`` s."""
    async def one() -> str:
        reader, writer = await _open(port)
        await _send(writer, request)
        status = await _status(reader, wait)
        writer.close()
        return status
    return _tally(await asyncio.gather(*(one() for _ in range(count))))


async def attack_long_url(port: int) -> str:
    return await _many(port, b"GET /" + b"a" * (4 << 20), 3, 50)


async def attack_huge_header(port: int) -> str:
    return await _many(port, b"GET / HTTP/1.1\r\nhost: x\r\nx-huge: " + b"h" * (64 << 20) + b"\r\n\r\n", 5, 4)


async def attack_many_headers(port: int) -> str:
    head = b"GET /v2/health/live HTTP/1.1\r\nhost: x\r\n" + b"".join(b"x-h%d: 1\r\n" % i for i in range(20_000))
    return await _many(port, head + b"\r\n", 5, 20)


async def attack_half_sent_bodies(port: int) -> str:
    """200 requests declaring 16 MiB - 1, sending 2 MiB each, then holding the connection 12 s."""
    async def one() -> str:
        reader, writer = await _open(port)
        ok = await _send(writer, b"POST /v2/models/m/infer HTTP/1.1\r\nhost: x\r\ncontent-type: application/json\r\n"
                                 b"content-length: %d\r\n\r\n" % ((16 << 20) - 1) + b" " * (2 << 20))
        status = await _status(reader, 12)
        writer.close()
        return status if status != "no answer" else ("held 12 s" if ok else "cut off")
    return _tally(await asyncio.gather(*(one() for _ in range(200))))


async def attack_expect(port: int) -> str:
    async def one() -> str:
        reader, writer = await _open(port)
        await _send(writer, b"POST /v2/models/m/infer HTTP/1.1\r\nhost: x\r\ncontent-length: %d\r\n"
                            b"expect: 100-continue\r\n\r\n" % (1 << 40))
        status = await _status(reader, 3)
        writer.close()
        return status
    return _tally(await asyncio.gather(*(one() for _ in range(200))))


async def attack_slowloris(port: int) -> str:
    """500 connections sending a header byte every second for 15 s."""
    request = b"POST /v2/models/m/infer HTTP/1.1\r\nhost: x\r\ncontent-type: application/json\r\n"
    async def one() -> str:
        reader, writer = await _open(port)
        started = time.monotonic()
        for i in range(15):
            if not await _send(writer, request[i:i + 1]):
                break
            status = await _status(reader, 1.0)
            if status != "no answer":
                writer.close()
                return f"{status} after ~{int(time.monotonic() - started)} s"
        writer.close()
        return "still open at 15 s"
    return _tally(await asyncio.gather(*(one() for _ in range(500))))


async def attack_connection_flood(port: int) -> str:
    """3,000 idle connections held 3 s."""
    async def one() -> str:
        try:
            reader, writer = await _open(port)
        except (OSError, TimeoutError):
            return "connect failed"
        status = await _status(reader, 3)
        writer.close()
        return {"no answer": "held", "closed": "closed at accept"}.get(status, status)
    return _tally(await asyncio.gather(*(one() for _ in range(3000))))


async def _posts_one_after_another(port: int, extra_headers: bytes, body: bytes, count: int) -> str:
    """``count`` inference POSTs of ``body``, each on its own connection, the next after the answer."""
    request = (b"POST /v2/models/m/infer HTTP/1.1\r\nhost: x\r\n" + extra_headers
               + b"content-length: %d\r\nconnection: close\r\n\r\n" % len(body) + body)
    out = []
    for _ in range(count):
        reader, writer = await _open(port)
        await _send(writer, request)
        out.append(await _status(reader, 5))
        writer.close()
    return _tally(out)


async def attack_big_ids(port: int) -> str:
    """The issue's 20 requests carrying a 1 MiB prediction id each."""
    body = json.dumps({"inputs": [{"name": "input-0", "shape": [1, 20], "datatype": "FP64", "data": [ROW]}],
                       "parameters": {"ids": ["i" * (1 << 20)]}}).encode()
    return await _posts_one_after_another(port, b"content-type: application/json\r\n", body, 20)


async def attack_wrong_types(port: int) -> str:
    body = json.dumps({"inputs": [{"name": "input-0", "shape": [1, 20], "datatype": 7, "data": [ROW]}]}).encode()
    return await _posts_one_after_another(port, b"", body, 50)


ATTACKS: list[tuple[str, Callable[[int], Awaitable[str]]]] = [
    ("4 MiB request line ×50", attack_long_url),
    ("64 MiB header ×4", attack_huge_header),
    ("20,000 headers ×20", attack_many_headers),
    ("2 MiB of 16 MiB bodies held ×200", attack_half_sent_bodies),
    ("Expect: 100-continue, 1 TiB ×200", attack_expect),
    ("slowloris ×500 (1 byte/s, 15 s)", attack_slowloris),
    ("idle connection flood ×3000", attack_connection_flood),
    ("1 MiB parameters.ids ×20", attack_big_ids),
    ("datatype a number ×50", attack_wrong_types),
]


def attack_part(work: Path, before_tree: Path, saved: Any, only: str = "") -> list[tuple[str, str, str, str]]:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (min(hard, 20_000), hard))
    results: dict[str, dict[str, str]] = {}
    for name, pythonpath, tag in ((f"before ({BEFORE})", f"{before_tree / 'operator'}:{before_tree / 'server_image'}",
                                   "before"),
                                  ("now", f"{REPO / 'operator'}:{REPO / 'server_image'}", "now")):
        for attack_name, attack in ATTACKS:
            if only not in attack_name:
                continue
            proc, port = start_server(work, saved, pythonpath, f"{tag}-attack")  # a fresh server per attack
            try:
                for _ in range(200):
                    wait_http(f"http://127.0.0.1:{port}/v2/models/m/infer", 60, BODY)
                base = rss(proc.pid)
                with RssSampler(proc.pid) as sampler:
                    outcome = asyncio.run(attack(port))
                time.sleep(2.0)
                settled = rss(proc.pid)
                alive = proc.poll() is None
                results.setdefault(attack_name, {})[tag] = (
                    f"{(sampler.peak - base) / 2**20:+.0f} / {(settled - base) / 2**20:+.0f} MiB; {outcome}"
                    + ("" if alive else "; SERVER DIED"))
                print(f"  {name:<16} {attack_name:<36} {results[attack_name][tag]}", flush=True)
            finally:
                stop(proc)
    return [(a, results[a].get("before", "-"), results[a].get("now", "-"), "") for a, _ in ATTACKS if a in results]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=10)
    parser.add_argument("--warmup", type=float, default=5)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--connections", type=int, default=16)
    parser.add_argument("--rate", type=float, default=2000, help="fixed open-loop rate for the CPU figures")
    parser.add_argument("--rate-seconds", type=float, default=10)
    parser.add_argument("--granian-python", default="/tmp/granian-venv/bin/python",
                        help="python of a venv with granian==2.8.7 (kept out of Noria's own venv)")
    parser.add_argument("--skip-layer", action="store_true")
    parser.add_argument("--skip-server", action="store_true")
    parser.add_argument("--skip-attacks", action="store_true")
    parser.add_argument("--attack", default="", help="only the attacks whose name contains this")
    args = parser.parse_args()
    require_wrk()
    if len(os.sched_getaffinity(0)) > 1:
        os.sched_setaffinity(0, {0})  # this process generates load: keep it off the servers' CPU
    print(f"machine: {uptime()}", flush=True)
    work = Path(tempfile.mkdtemp(prefix="noria-http-bench-"))
    try:
        before_tree = work / "before"
        before_tree.mkdir()
        archive = subprocess.run(["git", "-C", str(REPO), "archive", BEFORE, "operator/noria", "server_image"],
                                 check=True, capture_output=True).stdout
        subprocess.run(["tar", "-x", "-C", str(before_tree)], input=archive, check=True)
        layer_rows = [] if args.skip_layer else layer_part(work, before_tree, args)
        saved = train_and_save("logistic", str(work / "model"), rows=2000, seed=0)
        server_rows = [] if args.skip_server else server_part(work, before_tree, saved, args)
        attack_rows = [] if args.skip_attacks else attack_part(work, before_tree, saved, args.attack)
        print(f"\nmachine after: {uptime()}")
        if layer_rows:
            table("HTTP layer alone, one minimal JSON handler", layer_rows, args)
        if server_rows:
            table("Model server, single-row OIP v2 infer (LogisticRegression pipeline, 20 features)", server_rows,
                  args)
        if layer_rows or server_rows:
            print(f"\nwrk 4 -t1 -c{args.connections}, taskset -c 0, {args.warmup:g} s warm-up then median of "
                  f"{args.runs} × {args.seconds:g} s; fixed rate: open-loop aiohttp generator in this process "
                  f"(CPU 0), {args.rate:g} req/s for {args.rate_seconds:g} s; servers on CPU 1, one native thread. "
                  f"CPU-s per 10k = user+sys of the server's process tree during the fixed-rate run.")
        if attack_rows:
            print("\n## Server RSS under attack (peak growth during / growth left 2 s after; what the attacker saw)")
            print(f"| attack | before ({BEFORE}) | hardened (now, default limits) |")
            print("|---|---|---|")
            for attack_name, before, now, _ in attack_rows:
                print(f"| {attack_name} | {before} | {now} |")
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
