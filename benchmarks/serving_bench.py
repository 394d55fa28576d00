"""Shared pieces of the serving benchmarks: peer virtualenvs, wrk runs, fixed-rate runs, tables.

Load generator: Debian's ``wrk`` (``apt-get install -y wrk``), POST bodies through a Lua script.
On 2 cores the generator and the server compete, so the generator is pinned to CPU 0 and the
server(s) to CPU 1 with ``taskset`` when it is available.
"""

from __future__ import annotations

import asyncio
import os
import re
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

CACHE = Path(os.environ.get("NORIA_CACHE", Path.home() / ".cache" / "noria"))
MLSERVER_VENV = CACHE / "bench-mlserver"
MLSERVER_PACKAGES = ["mlserver==1.7.1", "mlserver-sklearn==1.7.1", "uvloop<0.22", "httptools"]
KSERVE_VENV = CACHE / "bench-kserve"


def require_wrk() -> str:
    path = shutil.which("wrk")
    if path is None:
        sys.exit("wrk is not installed: run `apt-get install -y wrk` (Debian's wrk 4.x; the PyPI 'wrk' is unrelated)")
    return path


SERVER_CPU = "1"  # every server under test is pinned here (``start``); generators run on CPU 0


def taskset(cpus: str) -> list[str]:
    return ["taskset", "-c", cpus] if shutil.which("taskset") and (os.cpu_count() or 1) >= 2 else []


# Every server gets one native (OpenMP/BLAS) thread: each is pinned to one CPU, where a second
# thread only spins against the event loop (Noria's own default; the peers' best setting too).
ONE_THREAD = {"OMP_NUM_THREADS": "1", "OPENBLAS_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}


def start(cmd: list[str], log: Path, env: dict[str, str] | None = None, cwd: str | None = None) -> subprocess.Popen:
    """Start a server on CPU 1 with one native thread, in its own session so ``stop`` ends its whole tree."""
    with open(log, "ab") as f:
        return subprocess.Popen([*taskset(SERVER_CPU), *cmd], stdout=f, stderr=subprocess.STDOUT, cwd=cwd,
                                env={**os.environ, **ONE_THREAD, **(env or {})}, start_new_session=True)


def stop(proc: subprocess.Popen) -> None:
    if proc.poll() is None:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(20)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()


def ensure_venv(venv: Path, packages: list[str], extra: list[str] | None = None) -> Path:
    """Create ``venv`` with ``packages`` once; a stamp file records what was installed."""
    stamp = venv / ".noria-installed"
    wanted = " ".join(packages + (extra or []))
    if stamp.exists() and stamp.read_text() == wanted:
        return venv / "bin" / "python"
    print(f"setting up {venv} with {wanted} ...", flush=True)
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
    subprocess.run([str(venv / "bin" / "pip"), "install", "-q", *packages, *(extra or [])], check=True)
    stamp.write_text(wanted)
    return venv / "bin" / "python"


def lua_post(body: bytes, headers: dict[str, str] | None = None) -> str:
    fd, path = tempfile.mkstemp(suffix=".lua")
    lines = ['wrk.method = "POST"', 'wrk.headers["Content-Type"] = "application/json"']
    for k, v in (headers or {}).items():
        lines.append(f'wrk.headers["{k}"] = "{v}"')
    escaped = body.decode().replace("\\", "\\\\").replace('"', '\\"')
    lines.append(f'wrk.body = "{escaped}"')
    with os.fdopen(fd, "w") as f:
        f.write("\n".join(lines) + "\n")
    return path


@dataclass
class WrkResult:
    rps: float
    p50_ms: float
    p99_ms: float
    errors: int

    def row(self) -> str:
        return f"{self.rps:9.0f} req/s  p50 {self.p50_ms:6.2f} ms  p99 {self.p99_ms:6.2f} ms" + (
            f"  ({self.errors} non-2xx/errors)" if self.errors else "")


def _ms(text: str) -> float:
    match = re.match(r"([\d.]+)(us|ms|s|m|h)$", text)
    if match is None:  # wrk prints e.g. "-nan" when no request completed
        return float("nan")
    value, unit = match.groups()
    return float(value) * {"us": 1e-3, "ms": 1.0, "s": 1e3, "m": 60e3, "h": 3600e3}[unit]


def wrk(url: str, script: str, connections: int, seconds: float, cpus: str = "0") -> WrkResult:
    out = subprocess.run([*taskset(cpus), require_wrk(), "-t1", f"-c{connections}", f"-d{seconds:g}s", "--latency",
                          "-s", script, url], check=True, capture_output=True, text=True).stdout
    return parse_wrk(out)


def parse_wrk(out: str) -> WrkResult:
    """wrk's ``--latency`` output read: req/s, the distribution's 50 % and 99 % lines (anchored at a line's
    start: the thread stats' "+/- Stdev" column, e.g. "71.99%", also ends in "99%"), and the errors."""
    rps_match, p50_match, p99_match = (re.search(r"Requests/sec:\s+([\d.]+)", out),
                                       re.search(r"^\s*50%\s+(\S+)", out, re.MULTILINE),
                                       re.search(r"^\s*99%\s+(\S+)", out, re.MULTILINE))
    if rps_match is None or p50_match is None or p99_match is None:
        raise RuntimeError(f"cannot read wrk's output:\n{out}")
    rps, p50, p99 = float(rps_match.group(1)), _ms(p50_match.group(1)), _ms(p99_match.group(1))
    errors = 0
    for pattern in (r"Non-2xx or 3xx responses:\s+(\d+)", r"Socket errors: connect (\d+), read (\d+), write (\d+), "
                                                          r"timeout (\d+)"):
        match = re.search(pattern, out)
        if match:
            errors += sum(int(g) for g in match.groups())
    return WrkResult(rps, p50, p99, errors)


def measure(url: str, body: bytes, connections: int, warmup: float, seconds: float, runs: int,
            headers: dict[str, str] | None = None) -> WrkResult:
    """Warm up, then the median of ``runs`` measurements (by throughput; latencies are medians too)."""
    script = lua_post(body, headers)
    try:
        wrk(url, script, connections, warmup)
        results = [wrk(url, script, connections, seconds) for _ in range(runs)]
    finally:
        os.unlink(script)
    return WrkResult(statistics.median(r.rps for r in results), statistics.median(r.p50_ms for r in results),
                     statistics.median(r.p99_ms for r in results), sum(r.errors for r in results))


async def _fixed_rate(url: str, body: bytes, rate: float, seconds: float, headers: dict[str, str]) -> list[float]:
    import aiohttp

    latencies: list[float] = []
    errors = 0
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=256)) as session:
        async def one() -> None:
            nonlocal errors
            started = time.perf_counter()
            async with session.post(url, data=body, headers=headers) as resp:
                await resp.read()
                if resp.status != 200:
                    errors += 1
            latencies.append(time.perf_counter() - started)

        tasks = []
        start = time.perf_counter()
        n = int(rate * seconds)
        for i in range(n):  # open loop: send on schedule whether or not earlier answers came back
            delay = start + i / rate - time.perf_counter()
            if delay > 0:
                await asyncio.sleep(delay)
            tasks.append(asyncio.ensure_future(one()))
        await asyncio.gather(*tasks)
    if errors:
        raise RuntimeError(f"{errors} failed requests at {url}")
    return latencies


def fixed_rate(url: str, body: bytes, rate: float, seconds: float,
               headers: dict[str, str] | None = None) -> tuple[float, float]:
    """(p50, p99) in ms at an open-loop fixed rate (the generator runs in this process)."""
    try:
        import uvloop

        lat = uvloop.run(_fixed_rate(url, body, rate, seconds, headers or {}))
    except ImportError:
        lat = asyncio.run(_fixed_rate(url, body, rate, seconds, headers or {}))
    lat.sort()
    return lat[len(lat) // 2] * 1e3, lat[int(len(lat) * 0.99)] * 1e3


# Connections the open-loop generator may hold: enough that a stall of a few tens of ms at the
# highest rate does not run out of them (a request due while all are busy waits, and its wait counts).
GENERATOR_CONNECTIONS = 128
_CONTENT_LENGTH = re.compile(rb"content-length:\s*(\d+)")


# --- open-loop generator --------------------------------------------------------------------------
class _Client(asyncio.Protocol):
    """One keep-alive connection, one request at a time; answers read by content-length."""

    def __init__(self, done: asyncio.Queue[_Client]) -> None:
        self.done = done
        self.transport: asyncio.Transport | None = None
        self.buffer = bytearray()
        self.due = 0.0
        self.latencies: list[float] = []
        self.errors = 0

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def send(self, request: bytes, due: float) -> None:
        self.due = due
        assert self.transport is not None
        self.transport.write(request)

    def data_received(self, data: bytes) -> None:
        self.buffer += data
        head_end = self.buffer.find(b"\r\n\r\n")
        if head_end < 0:
            return
        head = bytes(self.buffer[:head_end]).lower()
        match = _CONTENT_LENGTH.search(head)
        length = int(match.group(1)) if match else 0
        if len(self.buffer) < head_end + 4 + length:
            return
        if not head.startswith(b"http/1.1 200"):
            self.errors += 1
        del self.buffer[:head_end + 4 + length]
        self.latencies.append(time.perf_counter() - self.due)
        self.done.put_nowait(self)


async def _open_loop(host: str, port: int, path: str, bodies: list[bytes], rate: float, seconds: float,
                     late: list[float]) -> tuple[list[float], int, int]:
    """Latencies (s, sorted, from each scheduled send), non-200 answers, requests sent; request ``i``
    carries ``bodies[i % len(bodies)]``; how late each request left (s) is appended to ``late``."""
    loop = asyncio.get_running_loop()
    idle: asyncio.Queue[_Client] = asyncio.Queue()
    clients = []
    for _ in range(GENERATOR_CONNECTIONS):
        _, client = await loop.create_connection(lambda: _Client(idle), host, port)
        clients.append(client)
        idle.put_nowait(client)
    requests = [(f"POST {path} HTTP/1.1\r\nhost: {host}\r\ncontent-type: application/json\r\n"
                 f"content-length: {len(body)}\r\n\r\n").encode() + body for body in bodies]
    total = int(rate * seconds)
    begin = time.perf_counter() + 0.05
    clock = time.perf_counter
    for i in range(total):
        due = begin + i / rate
        delay = due - clock()
        # uvloop's timers fire on whole milliseconds, so a send leaves up to ~1 ms late (both servers
        # alike; reported through ``late``). Yielding the loop until the due time instead made the
        # generator a busy loop, which on a shared CPU 0 fell hundreds of ms behind at 1,000 req/s.
        if delay > 0.0005:
            await asyncio.sleep(delay)
        client = await idle.get()  # all connections busy: this request waits, and its wait counts
        late.append(clock() - due)
        client.send(requests[i % len(requests)], due)
    deadline = time.perf_counter() + 30
    while idle.qsize() < len(clients) and time.perf_counter() < deadline:
        await asyncio.sleep(0.01)
    for c in clients:
        if c.transport is not None:
            c.transport.close()
    latencies = sorted(x for c in clients for x in c.latencies)
    return latencies, sum(c.errors for c in clients), total


def open_loop(url: str, body: bytes | list[bytes], rate: float, seconds: float,
              late: list[float] | None = None) -> tuple[list[float], int, int]:
    """POST ``body`` (or request ``i`` the ``i % len``-th of a list of bodies) to ``url`` at ``rate``
    per second for ``seconds``, on a fixed schedule whether or
    not earlier answers came back; each latency counts from its scheduled send (no coordinated
    omission). Returns latencies (s, sorted), non-200 answers and requests sent; ``late`` receives
    how late each request was sent (the generator's own error: a busy CPU 0 shows here, not as the
    server's latency)."""
    from urllib.parse import urlsplit

    parts = urlsplit(url)
    bodies = body if isinstance(body, list) else [body]
    generator = _open_loop(parts.hostname or "127.0.0.1", parts.port or 80, parts.path, bodies, rate, seconds,
                           late if late is not None else [])
    try:
        import uvloop
    except ImportError:
        return asyncio.run(generator)
    return uvloop.run(generator)


# --- open-loop generator in Go (benchmarks/loadgen) ------------------------------------------------
_LOADGEN: list[str] = []


def loadgen_binary() -> str:
    """benchmarks/loadgen built once per source hash into the cache (``go build``; Go must be installed)."""
    if not _LOADGEN:
        script = Path(__file__).resolve().parent / "loadgen" / "build.sh"
        out = subprocess.run(["bash", str(script)], capture_output=True, text=True)
        if out.returncode != 0:
            raise RuntimeError(f"building benchmarks/loadgen failed (is Go installed?):\n{out.stderr[-3000:]}")
        _LOADGEN.append(out.stdout.strip().splitlines()[-1])
    return _LOADGEN[0]


def go_open_loop(url: str, body: bytes, rate: float, seconds: float, connections: int = GENERATOR_CONNECTIONS,
                 cpus: str = "0") -> dict[str, float]:
    """``open_loop`` by the Go generator, pinned to ``cpus``: POST ``body`` at ``rate`` per second for
    ``seconds`` over ``connections`` keep-alive connections; returns its JSON (``sent``, ``answered``,
    ``errors``, ``p50_ms``, ``p99_ms``, ``p999_ms``, ``max_ms`` from each request's scheduled send;
    ``late_p99_ms``: how late the generator itself sent; ``wait_p99_ms``: due time to the write on a
    connection, i.e. waiting for a free connection)."""
    import json

    fd, path = tempfile.mkstemp(suffix=".json")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(body)
        out = subprocess.run([*taskset(cpus), loadgen_binary(), "-url", url, "-body", path, "-rate", f"{rate:.3f}",
                              "-seconds", f"{seconds:g}", "-connections", str(connections)],
                             capture_output=True, text=True, check=True)
    finally:
        os.unlink(path)
    return json.loads(out.stdout)


def uptime() -> str:
    try:
        return subprocess.run(["uptime"], capture_output=True, text=True).stdout.strip()
    except OSError:
        return "uptime unavailable"


def wait_http(url: str, timeout: float = 120.0, body: bytes | None = None) -> None:
    """Poll ``url`` until it answers 200: a GET, or a JSON POST of ``body`` when one is given."""
    import urllib.request

    headers = {"content-type": "application/json"} if body is not None else {}
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            req = urllib.request.Request(url, data=body, headers=headers)
            with urllib.request.urlopen(req, timeout=1) as resp:
                if resp.status == 200:
                    return
        except OSError:
            pass
        time.sleep(0.2)
    raise TimeoutError(f"{url} not ready after {timeout}s")


def start_mlserver(python: Path, work: Path, kind: str, joblib_path: Path) -> tuple[subprocess.Popen, str]:
    """MLServer of the venv of ``python`` serving the scikit-learn model at ``joblib_path`` as ``kind``
    (one process: parallel_workers 0), ready; returns the process and its infer URL."""
    import json

    from noria_server.launch import free_port

    root = work / f"mlserver-{kind}"
    model_dir = root / kind
    model_dir.mkdir(parents=True, exist_ok=True)
    shutil.copy(joblib_path, model_dir / "model.joblib")
    (model_dir / "model-settings.json").write_text(json.dumps({
        "name": kind, "implementation": "mlserver_sklearn.SKLearnModel",
        "parameters": {"uri": "./model.joblib", "version": "v1"}}))
    http_port = free_port()
    (root / "settings.json").write_text(json.dumps({
        "parallel_workers": 0, "http_port": http_port, "grpc_port": free_port(), "metrics_port": free_port(),
        "debug": False}))
    proc = start([str(python.parent / "mlserver"), "start", str(root)], work / f"mlserver-{kind}.log")
    try:
        wait_http(f"http://127.0.0.1:{http_port}/v2/models/{kind}/ready", 180)
    except BaseException:
        stop(proc)
        raise
    return proc, f"http://127.0.0.1:{http_port}/v2/models/{kind}/infer"
