"""What holds the model server's threads in one piece at a fixed offered rate, by their own CPU time.

    .venv/bin/python benchmarks/loop_stalls.py [--models logistic] [--fraction 0.8 | --rate 20000]
        [--seconds 8] [--threshold-ms 0.3] [--py-spy]

A diagnostic, not a latency table: it needs no quiet machine for its main figures, because they are
each thread's own CPU (``time.thread_time``, ``/proc/<pid>/task/*/stat``), which other processes on the
CPU move little. The server (this checkout's, drift counting and prediction log on, as
``server_latency.py`` runs it: CPU 1, one native thread) is started by this file in a hidden
``--child`` mode that wraps, before serving, every entry point the event loop runs (``data_received``:
parse and dispatch; ``_flush``: predict, count, answers, ledger, log offer; connection set-up and
teardown), the writer thread's turns and flushes, the rendering of each logged batch, and every garbage
collection (``gc.callbacks``, on whichever thread), and records each single call that took more than
``--threshold-ms`` of the calling thread's CPU, with what it was: its nested steps (predict, answer
writes, ledger, log offer, a collection inside it), the batch's rows and the queue behind it. The
Go open-loop generator (benchmarks/loadgen, CPU 0) offers ``--rate`` (or ``--fraction`` of a wrk -c16
saturation run) for ``--seconds`` after a warm-up of the same rate; only that window is recorded.
``--plain`` wraps nothing (the wrappers add ~20 % to a request's CPU, enough to push the server past its
capacity near its maximum): then only the generator's latencies, the threads' CPU and ``--perf-sched``.

Printed: per entry point, calls, CPU per call and the calls over the threshold; the longest calls with
their parts; the batch-size distribution; collections by generation and thread; per thread (the loop,
the log writers, others) user and system CPU, time spent runnable but waiting for a CPU (schedstat) and
involuntary switches; what of the loop thread's CPU no wrapped entry point covers (uvloop's own turns,
timers); the writer's turns (from a wake-up or the end of a rest to the next rest: wall and CPU); the
steal time of CPU 1; the server's own stage and loop-lag histograms. Wall times are printed beside CPU
times but mean little on a loaded machine. ``--py-spy`` adds a ``py-spy --threads`` profile of the window
(own samples by function and thread); ``--perf-sched PREFIX`` (root, perf installed) records every
context switch on CPU 1 over the window and prints what ran there besides the loop thread, and how long
the loop thread, preempted or woken, waited for the CPU: stalls that no thread's own CPU time shows.
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter, defaultdict
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent


# --- child: the instrumented server ---------------------------------------------------------------
class Recorder:
    """Per-thread stacks of wrapped calls; aggregates and the long calls while ``on``."""

    def __init__(self, threshold_ns: int) -> None:
        self.on = False
        self.threshold_ns = threshold_ns
        self.local = threading.local()
        self.lock = threading.Lock()
        self.reset()

    def reset(self) -> None:
        self.stats: dict[str, list[int]] = defaultdict(lambda: [0, 0, 0, 0])  # calls, cpu ns, over, max
        self.long: list[dict[str, Any]] = []
        self.batch_rows: Counter[int] = Counter()
        self.pending_at_flush: Counter[int] = Counter()
        self.gc: dict[str, list[float]] = defaultdict(list)

    def stack(self) -> list[list[Any]]:
        s = getattr(self.local, "stack", None)
        if s is None:
            s = self.local.stack = []
        return s

    def enter(self, label: str, detail: dict[str, Any] | None = None) -> None:
        self.stack().append([label, time.thread_time_ns(), time.perf_counter_ns(), defaultdict(int), detail or {}])

    def leave(self) -> None:
        stack = self.stack()
        label, cpu0, wall0, parts, detail = stack.pop()
        cpu = time.thread_time_ns() - cpu0
        wall = time.perf_counter_ns() - wall0
        if not self.on:
            return
        if stack:
            stack[-1][3][label] += cpu
            stack[-1][3][label + "#"] += 1
        key = label if not stack else f"{stack[0][0]}>{label}"
        with self.lock:
            st = self.stats[key]
            st[0] += 1
            st[1] += cpu
            st[3] = max(st[3], cpu)
            if cpu > self.threshold_ns:
                st[2] += 1
                if not stack:
                    self.long.append({"what": label, "cpu_ms": cpu / 1e6, "wall_ms": wall / 1e6,
                                      "thread": threading.current_thread().name,
                                      "parts_ms": {k: (v / 1e6 if not k.endswith("#") else v) for k, v in parts.items()},
                                      **detail})


def wrap(rec: Recorder, owner: Any, name: str, label: str, detail: Any = None) -> None:
    original = getattr(owner, name)

    def wrapper(*args: Any, **kwargs: Any) -> Any:
        rec.enter(label, detail(*args) if detail is not None and rec.on else None)
        try:
            return original(*args, **kwargs)
        finally:
            rec.leave()

    wrapper.__wrapped__ = original  # type: ignore[attr-defined]
    setattr(owner, name, wrapper)


def instrument(rec: Recorder) -> None:
    from noria_server import httpserver, ledger, oip, predlog, serve, telemetry

    conn = httpserver._Connection
    wrap(rec, conn, "data_received", "data_received", lambda self, data: {"bytes": len(data)})
    wrap(rec, conn, "connection_made", "connection_made")
    wrap(rec, conn, "connection_lost", "connection_lost")
    wrap(rec, conn, "_write", "write")

    def flush_detail(server: Any) -> dict[str, Any]:
        rec.pending_at_flush[len(server.pending)] += 1
        return {"pending": len(server.pending), "pending_rows": server.pending_rows}

    wrap(rec, serve.ModelServer, "_flush", "flush", flush_detail)
    wrap(rec, serve.ModelServer, "settle", "settle")  # the answered batches' bookkeeping, in groups
    wrap(rec, serve.ModelServer, "_remember_and_log", "ledger+log")
    original_predict = serve.ModelServer._timed_predict

    def timed_predict(self: Any, model: Any, rows: Any) -> Any:
        if rec.on:
            rec.batch_rows[len(rows)] += 1
        rec.enter("predict")
        try:
            return original_predict(self, model, rows)
        finally:
            rec.leave()

    serve.ModelServer._timed_predict = timed_predict  # type: ignore[method-assign]
    wrap(rec, serve.ModelServer, "_infer", "infer")
    wrap(rec, oip, "infer_response", "serialise")
    wrap(rec, telemetry.FeatureBinCounter, "observe", "bins")
    wrap(rec, telemetry.ServerMetrics, "count_predictions", "classes")
    wrap(rec, ledger.PredictionLedger, "record", "ledger")
    wrap(rec, ledger.PredictionLedger, "_evict", "evict")
    wrap(rec, predlog.JsonlLog, "offer", "offer")
    wrap(rec, predlog.JsonlLog, "_take", "writer.take", lambda self: {"queued": len(self.queue)})
    wrap(rec, predlog.JsonlLog, "_flush", "writer.flush", lambda self, now: {"bytes": self._buffered_bytes})
    wrap(rec, serve, "_render_predictions", "render")
    # The writer's turns: from a wake-up (tick) or the end of a rest to the next rest or sleep, wall and CPU.
    turn_start: dict[int, tuple[int, int]] = {}

    def mark_turn_end(log: Any) -> None:
        began = turn_start.pop(id(log), None)
        if began is not None and rec.on:
            wall, cpu = time.perf_counter_ns() - began[0], time.thread_time_ns() - began[1]
            with rec.lock:
                st = rec.stats["writer.turn (wall)"]
                st[0] += 1
                st[1] += wall
                st[3] = max(st[3], wall)
                st[2] += wall > rec.threshold_ns
                st = rec.stats["writer.turn (cpu)"]
                st[0] += 1
                st[1] += cpu
                st[3] = max(st[3], cpu)
                st[2] += cpu > rec.threshold_ns

    original_rest, original_take = predlog.JsonlLog._rest, predlog.JsonlLog._take

    def rest(self: Any) -> None:
        mark_turn_end(self)
        original_rest(self)
        turn_start[id(self)] = (time.perf_counter_ns(), time.thread_time_ns())

    def take(self: Any) -> None:
        turn_start[id(self)] = (time.perf_counter_ns(), time.thread_time_ns())
        try:
            original_take(self)
        finally:
            mark_turn_end(self)

    predlog.JsonlLog._rest = rest  # type: ignore[method-assign]
    predlog.JsonlLog._take = take  # type: ignore[method-assign]
    wrap(rec, telemetry.ServerMetrics, "exposition", "exposition")

    def on_gc(phase: str, info: dict[str, Any]) -> None:
        label = f"gc{info.get('generation', 0)}"
        if phase == "start":
            rec.enter(label)
            return
        stack = rec.stack()
        if not stack or stack[-1][0] != label:
            return
        cpu = time.thread_time_ns() - stack[-1][1]
        rec.leave()
        if rec.on:
            rec.gc[f"{label} on {threading.current_thread().name}"].append(cpu / 1e6)

    gc.callbacks.insert(0, on_gc)


def child(report: str, threshold_ms: float, serve_argv: list[str]) -> int:
    rec = Recorder(int(threshold_ms * 1e6))
    if threshold_ms > 0:  # 0: --plain, nothing wrapped
        instrument(rec)
    loop_thread = threading.get_native_id()

    def toggle(signum: int, frame: Any) -> None:  # SIGUSR1: start the window, then end it and write the report
        if not rec.on:
            rec.reset()
            rec.on = True
            return
        rec.on = False
        threads = {t.native_id: t.name for t in threading.enumerate()}
        threads[loop_thread] = "loop"
        Path(report).write_text(json.dumps({
            "stats": rec.stats, "long": sorted(rec.long, key=lambda e: -e["cpu_ms"]),
            "batch_rows": rec.batch_rows, "pending_at_flush": rec.pending_at_flush, "gc": rec.gc,
            "threads": {str(k): v for k, v in threads.items()}}))

    signal.signal(signal.SIGUSR1, toggle)
    from noria_server.__main__ import main

    return main(serve_argv)


# --- parent: drive it, read it ---------------------------------------------------------------------
def task_stats(pid: int) -> dict[int, dict[str, float]]:
    """Per thread of ``pid``: user and system CPU s, run-queue wait s (schedstat), switches."""
    out = {}
    tick = os.sysconf("SC_CLK_TCK")
    for task in Path(f"/proc/{pid}/task").iterdir():
        try:
            fields = (task / "stat").read_text().rsplit(")", 1)[1].split()
            run_ns, wait_ns, slices = (int(x) for x in (task / "schedstat").read_text().split())
            status = dict(line.split(":", 1) for line in (task / "status").read_text().splitlines() if ":" in line)
        except (OSError, ValueError):
            continue
        out[int(task.name)] = {"user": int(fields[11]) / tick, "sys": int(fields[12]) / tick, "run": run_ns / 1e9,
                               "minflt": int(fields[7]),
                               "wait": wait_ns / 1e9, "slices": slices,
                               "invol": int(status["nonvoluntary_ctxt_switches"]),
                               "vol": int(status["voluntary_ctxt_switches"])}
    return out


def cpu_steal(cpu: int) -> float:
    """Seconds of steal time of ``cpu`` so far (/proc/stat)."""
    for line in Path("/proc/stat").read_text().splitlines():
        if line.startswith(f"cpu{cpu} "):
            return int(line.split()[8]) / os.sysconf("SC_CLK_TCK")
    return 0.0


def cpu_times(cpu: int) -> tuple[float, float]:
    """(busy, total) seconds of ``cpu`` so far (/proc/stat; idle and iowait are not busy)."""
    for line in Path("/proc/stat").read_text().splitlines():
        if line.startswith(f"cpu{cpu} "):
            ticks = [int(v) for v in line.split()[1:9]]
            tck = os.sysconf("SC_CLK_TCK")
            return (sum(ticks) - ticks[3] - ticks[4]) / tck, sum(ticks) / tck
    return 0.0, 0.0


def py_spy(pid: int, seconds: float, out: Path) -> subprocess.Popen:
    spy = str(Path(sys.executable).parent / "py-spy")
    return subprocess.Popen([spy, "record", "--pid", str(pid), "--duration", str(int(seconds)), "--rate", "500",
                             "--format", "raw", "--threads", "--nonblocking", "--output", str(out)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


def summarise_spy(path: Path) -> str:
    if not path.exists():
        return "  py-spy: no profile"
    by_thread: Counter[str] = Counter()
    leaf: dict[str, Counter[str]] = defaultdict(Counter)
    for line in path.read_text().splitlines():
        stack, _, count = line.rpartition(" ")
        frames = stack.split(";")
        thread = frames[0]
        by_thread[thread] += int(count)
        leaf[thread][frames[-1]] += int(count)
    lines = []
    for thread, n in by_thread.most_common(4):
        lines.append(f"  {thread}: {n} samples")
        lines += [f"    {c / n:6.1%}  {name}" for name, c in leaf[thread].most_common(25)]
    return "\n".join(lines)


def run_one(kind: str, args: argparse.Namespace, work: Path) -> None:
    sys.path.insert(0, str(HERE))
    from noria import metrics as m
    from noria_server.launch import free_port
    from noria_server.reference_models import train_and_save
    from server_latency import histogram_delta, scrape
    from server_vs_mlserver import payload
    from serving_bench import go_open_loop, measure, start, stop, uptime, wait_http

    model_dir = work / "store" / "bench" / kind / "model"
    saved = train_and_save(kind, str(model_dir), rows=5000)  # type: ignore[arg-type]
    port = free_port()
    report = work / f"report-{kind}.json"
    cmd = [sys.executable, str(Path(__file__).resolve()), "--child", str(report), "--threshold-ms",
           "0" if args.plain else str(args.threshold_ms), "--", "serve", "--artifact", saved.artifact_uri, "--digest", saved.digest,
           "--profile", saved.profile_uri, "--model", kind, "--version", f"{kind}-v1", "--host", "127.0.0.1",
           "--port", str(port), "--store-root", f"file://{work}/store", "--namespace", "bench", "--pipeline", kind,
           "--pod", f"bench-{port}", "--drain-seconds", "0"]
    env = None if args.source is None else {
        "PYTHONPATH": os.pathsep.join(filter(None, [str(args.source / "server_image"), os.environ.get("PYTHONPATH")]))}
    proc = start(cmd, work / f"server-{kind}.log", env=env)
    url = f"http://127.0.0.1:{port}/v2/models/{kind}/infer"
    try:
        wait_http(f"http://127.0.0.1:{port}/v2/health/ready", 180)
        rate = args.rate
        if not rate:
            rate = args.fraction * measure(url, payload(), 16, 2, args.saturation_seconds, 1).rps
        print(f"[{kind}] {rate:.0f} req/s for {args.seconds:g} s (warm-up {args.warmup:g} s); {uptime()}", flush=True)
        go_open_loop(url, payload(), rate, args.warmup, args.connections)
        before_metrics = scrape(url)
        before = task_stats(proc.pid)
        steal_before = cpu_steal(1)
        cpus_before = [cpu_times(0), cpu_times(1)]
        os.kill(proc.pid, signal.SIGUSR1)
        spy = py_spy(proc.pid, args.seconds, work / f"spy-{kind}.txt") if args.py_spy else None
        perf = None
        if args.perf_sched:  # every switch on the server's CPU over the window (root; perf installed)
            record = ["record", "-C", "1", "-g", "-F", "2000"] if args.perf_stacks else ["sched", "record", "-C", "1"]
            perf = subprocess.Popen(["perf", *record, "-o", f"{args.perf_sched}-{kind}.data",
                                     "--", "sleep", str(max(1, int(args.seconds) - 1))],
                                    stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        t0 = time.monotonic()
        load = go_open_loop(url, payload(), rate, args.seconds, args.connections)
        elapsed = time.monotonic() - t0
        os.kill(proc.pid, signal.SIGUSR1)
        after = task_stats(proc.pid)
        steal = cpu_steal(1) - steal_before
        cpus = [(a[0] - b[0]) / max(a[1] - b[1], 1e-9) for a, b in zip([cpu_times(0), cpu_times(1)], cpus_before,
                                                                       strict=True)]
        if spy is not None:
            spy.wait(60)
        if perf is not None:
            perf.wait(60)
        for _ in range(100):
            if report.exists():
                break
            time.sleep(0.05)
        after_metrics = scrape(url)
        data = json.loads(report.read_text())
    finally:
        stop(proc)
    answered = max(int(load["answered"]), 1)
    print(f"  generator: sent {load['sent']}, answered {load['answered']}, p50 {load['p50_ms']:.2f} p99 "
          f"{load['p99_ms']:.2f} p99.9 {load['p999_ms']:.2f} ms (wall; late p99 {load['late_p99_ms']:.2f}); {uptime()}")
    print(f"  CPU 1 (the server's): steal {steal:.3f} s over the {elapsed:.1f} s window (time the hypervisor ran "
          f"something else); busy: CPU 0 (the generator's) {cpus[0]:.1%}, CPU 1 {cpus[1]:.1%}")
    names = {int(k): v for k, v in data["threads"].items()}
    print("  threads (CPU s over the window; runnable-but-waiting s; involuntary/voluntary switches):")
    loop_cpu = 0.0
    for tid, a in sorted(after.items(), key=lambda kv: -(kv[1]["user"] + kv[1]["sys"])):
        b = before.get(tid, dict.fromkeys(a, 0))
        cpu = a["user"] + a["sys"] - b["user"] - b["sys"]
        if cpu <= 0 and a["run"] - b["run"] <= 0.001:
            continue
        name = names.get(tid, str(tid))
        if name == "loop":
            loop_cpu = a["run"] - b["run"]
        print(f"    {name:18} user {a['user'] - b['user']:6.2f} sys {a['sys'] - b['sys']:6.2f} "
              f"(run {a['run'] - b['run']:6.3f}, {(a['run'] - b['run']) / elapsed:5.1%} of the window) "
              f"wait {a['wait'] - b['wait']:6.3f}  invol {a['invol'] - b['invol']:6d} vol {a['vol'] - b['vol']:6d}  "
              f"{(a['run'] - b['run']) / answered * 1e6:6.1f} µs/answer, {a['minflt'] - b['minflt']} page faults")
    stats = data["stats"]
    print(f"  entry points and their parts (calls, CPU µs a call, max ms, calls over {args.threshold_ms} ms):")
    covered = 0.0
    for key, (calls, cpu_ns, over, mx) in sorted(stats.items(), key=lambda kv: -kv[1][1]):
        if ">" not in key and key in ("data_received", "flush", "connection_made", "connection_lost", "write"):
            covered += cpu_ns / 1e9
        print(f"    {key:34} {calls:8d} {cpu_ns / max(calls, 1) / 1e3:8.1f} {mx / 1e6:7.3f} {over:6d}")
    if loop_cpu:
        print(f"  loop thread CPU not inside a wrapped entry point (uvloop's turns, socket reads, timers): "
              f"{loop_cpu - covered:.3f} s of {loop_cpu:.3f} s ({(loop_cpu - covered) / answered * 1e6:.1f} µs/answer)")
    rows = Counter({int(k): v for k, v in data["batch_rows"].items()})
    total = sum(rows.values())
    print(f"  batches: {total}, mean {sum(k * v for k, v in rows.items()) / max(total, 1):.1f} rows; rows: "
          + ", ".join(f"{lo}-{hi}: {sum(v for k, v in rows.items() if lo <= k <= hi)}"
                      for lo, hi in ((1, 1), (2, 4), (5, 8), (9, 16), (17, 32), (33, 63), (64, 10**9))))
    pend = Counter({int(k): v for k, v in data["pending_at_flush"].items()})
    print("  requests queued when a flush started: " + ", ".join(
        f"{lo}-{hi}: {sum(v for k, v in pend.items() if lo <= k <= hi)}"
        for lo, hi in ((0, 1), (2, 4), (5, 16), (17, 32), (33, 64), (65, 10**9))))
    for label, values in sorted(data["gc"].items()):
        values.sort()
        print(f"  {label}: {len(values)} x mean {sum(values) / len(values):.3f} ms CPU, max {values[-1]:.3f}")
    print(f"  the {min(args.top, len(data['long']))} longest single calls of {len(data['long'])} over the threshold:")
    for e in data["long"][:args.top]:
        parts = ", ".join(f"{k} {v:.3f}" if not k.endswith("#") else f"{k[:-1]} x{v}"
                          for k, v in sorted(e.pop("parts_ms").items(), key=lambda kv: kv[0].rstrip("#")))
        what = e.pop("what")
        cpu, wall, thread = e.pop("cpu_ms"), e.pop("wall_ms"), e.pop("thread")
        print(f"    {what:14} cpu {cpu:6.3f} wall {wall:6.3f} [{thread}] {e} :: {parts}")
    print("  the server's own histograms over the window (count, mean, p99 bucket):")
    for name, label, count, mean, p99 in histogram_delta(before_metrics, after_metrics):
        if name in (m.REQUEST_STAGE_SECONDS, m.EVENT_LOOP_LAG_SECONDS):
            print(f"    {name:32} {label:10} n={count:8.0f} mean {mean * 1e3:8.3f} ms p99 <= {p99 * 1e3:g} ms")
    if args.py_spy:
        print(summarise_spy(work / f"spy-{kind}.txt"))
    if args.perf_sched and not args.perf_stacks:
        print(summarise_sched(f"{args.perf_sched}-{kind}.data", proc.pid))


def summarise_sched(path: str, pid: int) -> str:
    """From a ``perf sched record`` of CPU 1: what ran there (per task: runs, total and longest ms), and
    how long the server's loop thread waited for the CPU: after being preempted (runnable all along)
    and after being woken (scheduling delay)."""
    try:
        text = subprocess.run(["perf", "sched", "timehist", "--state", "-i", path], capture_output=True, text=True,
                              check=True).stdout
    except (OSError, subprocess.CalledProcessError) as exc:
        return f"  perf sched: {exc}"
    tasks: dict[str, list[float]] = defaultdict(list)
    preempted: list[float] = []
    woken: list[float] = []
    loop = f"python[{pid}]"
    last_state = "S"
    by: dict[str, list[float]] = defaultdict(list)  # the loop's waits after a preemption, by the task that took the CPU
    taker: str | None = None
    for line in text.splitlines()[3:]:
        parts = line.split()
        if len(parts) < 7:
            continue
        try:
            wait, delay, run = float(parts[-4]), float(parts[-3]), float(parts[-2])
        except ValueError:
            continue
        name = " ".join(parts[2:-4])
        if f"[{pid}]" in name or name.endswith(f"/{pid}]"):
            name = "server " + name
        if name == "server " + loop:
            (preempted if last_state == "R" else woken).append(wait if last_state == "R" else delay)
            if last_state == "R" and taker is not None:
                by[taker].append(wait)
            last_state, taker = parts[-1], None
        elif last_state == "R" and taker is None:  # the first task to run on CPU 1 after the loop was preempted
            taker = name
        tasks[name].append(run)
    lines = ["  perf sched on CPU 1 over the window: ms run per task (runs, total, longest), the heaviest first"]
    for name, runs in sorted(tasks.items(), key=lambda kv: -sum(kv[1]))[:14]:
        lines.append(f"    {name[:40]:40} n={len(runs):6d} total {sum(runs):8.2f} longest {max(runs):7.3f}")
    for what, waits in (("preempted, waited for the CPU again", preempted), ("woken, waited for the CPU", woken)):
        if waits:
            waits.sort()
            lines.append(f"  the loop thread {what}: n={len(waits)}, total {sum(waits):.1f} ms, p99 "
                         f"{waits[int(0.99 * len(waits))]:.3f} ms, max {waits[-1]:.3f} ms, "
                         f"{sum(1 for w in waits if w > 0.3)} over 0.3 ms ({sum(w for w in waits if w > 0.3):.1f} ms)")
    if by:
        lines.append("  its preemptions by the task that took CPU 1, the server's own threads first (n, the loop's wait: total and longest ms):")
        for name, waits in sorted(by.items(), key=lambda kv: (not kv[0].startswith("server"), -sum(kv[1])))[:8]:
            lines.append(f"    {name[:40]:40} n={len(waits):6d} total {sum(waits):8.2f} longest {max(waits):7.3f}")
    return "\n".join(lines)


def main() -> None:
    if len(sys.argv) > 2 and sys.argv[1] == "--child":
        split = sys.argv.index("--")
        sys.exit(child(sys.argv[2], float(sys.argv[4]), sys.argv[split + 1:]))
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", default="logistic")
    parser.add_argument("--rate", type=float, default=0.0, help="offered req/s (default: --fraction of wrk's maximum)")
    parser.add_argument("--fraction", type=float, default=0.8)
    parser.add_argument("--saturation-seconds", type=float, default=5)
    parser.add_argument("--seconds", type=float, default=8)
    parser.add_argument("--warmup", type=float, default=3)
    parser.add_argument("--threshold-ms", type=float, default=0.3)
    parser.add_argument("--connections", type=int, default=128,
                        help="the Go generator's keep-alive connections (as server_latency.py's; wrk's maximum is "
                        "found with 16)")
    parser.add_argument("--top", type=int, default=25)
    parser.add_argument("--plain", action="store_true", help="wrap nothing (the wrappers cost ~20 %% more CPU a "
                        "request): the generator's latencies, the threads' CPU and --perf-sched only")
    parser.add_argument("--source", type=Path, help="serve another checkout's server_image (e.g. `git archive <commit> "
                        "server_image | tar -x -C DIR`); with --plain, as the wrappers expect this one's")
    parser.add_argument("--perf-stacks", action="store_true", help="with --perf-sched: sample stacks (perf record "
                        "-g, kernel included) instead of recording switches")
    parser.add_argument("--py-spy", action="store_true")
    parser.add_argument("--perf-sched", help="record the server CPU's scheduling to PREFIX-<model>.data (perf, root)")
    args = parser.parse_args()
    if (os.cpu_count() or 1) >= 2:
        os.sched_setaffinity(0, {0})
    work = Path(tempfile.mkdtemp(prefix="noria-stalls-"))
    try:
        for kind in args.models.split(","):
            run_one(kind, args, work)
    finally:
        subprocess.run(["rm", "-rf", str(work)], check=False)


if __name__ == "__main__":
    main()
