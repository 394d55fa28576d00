"""The serving latency the online lookup adds (issue 18): Noria's model server with every feature in
the request, the same server filling them from Feast, and Feast's feature server alone.

    make feast-venv redis && .venv/bin/python benchmarks/online_lookup.py [--rates 50,100,300] [--seconds 10]

One run brings up the test bed's Redis (noria_testbed.redis) and a copy of examples/feast-churn
(``--customers`` customers, make_data.py), ``feast apply``, ``feast materialize`` into Redis and
``feast serve`` (noria_testbed.feast_server: one worker, never recycled, no access log). A logistic
regression is fitted on the example's features and labels and saved as the trainer saves a model.
Then, at each offered rate, interleaved (the order rotates from one rate to the next, so a change in
the machine's load does not hit one target only), each for ``--seconds``:

- **A direct**: the model server, every request carrying the three features of one customer;
- **B lookup**: the same model in a second server started with ``--feast-url`` etc., every request
  carrying only that customer's ``customer_id`` (the server calls ``feast serve``, which reads Redis);
- **C feast**: ``POST /get-online-features`` straight to ``feast serve`` with the same key and the
  same feature service the server asks for.

Same rows: request *i* of every target is about customer ``keys[i % len(keys)]``, and A's feature
values are the feature server's own answer for that key, so A's and B's model gets the same rows
(checked: B's predictions equal A's on a sample of keys before the runs). Every key is looked up
once before the runs: a key the store has no value for is reported and left out.

Open loop (benchmarks/serving_bench.py): requests leave on a fixed schedule whether or not earlier
answers came back, and each latency counts from its scheduled send. Pinning: this process (the
generator) on CPU 0, both model servers on CPU 1 (one native thread, as in server_latency.py),
``feast serve`` and Redis on ``--feast-cpu`` (default 1: the server side on one core, the generator
alone on the other, and the feature server on the same core in B and C). In B the model server and
``feast serve`` share that core, as they would not in a cluster: at rates the core sustains this
adds little, and the CPU columns say how much each used. ``--feast-cpu 0`` puts the feature server
beside the generator instead (the model server keeps CPU 1 to itself, but the generator is late).
The generator's own lateness (``late p99``) is part of every latency: on a shared CPU 0 it is the
first thing to read when a number looks odd. Load average is printed before and after.

Columns: p50, p99, p99.9 (ms), the share of requests answered 200, CPU seconds per 10,000 requests
of the model server (A, B), of ``feast serve`` (its gunicorn master and worker) and of Redis, per
10,000 keys looked up (B, C), and in B how many calls the server made to the feature server
(requests parsed in the same event-loop turn share one call). Last: added p50/p99 = B - A per rate.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
import urllib.request
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from noria import metrics as m  # noqa: E402
from noria_server.launch import free_port  # noqa: E402
from server_latency import cpu_seconds  # noqa: E402
from serving_bench import open_loop, start, stop, uptime, wait_http  # noqa: E402

FEATURES = ["tenure_months", "monthly_charges", "support_calls"]
FEATURE_SERVICE = "churn_v1"
MODEL = "churn"
EPOCH = "1970-01-01T00:00:00Z"
TARGETS = ("A direct", "B lookup", "C feast")


# --- the feature store ---------------------------------------------------------------------------
def pin_tree(pid: int, cpus: set[int]) -> None:
    """Every thread of ``pid`` and of its descendants onto ``cpus``."""
    pids = [pid]
    while pids:
        p = pids.pop()
        try:
            for task in os.listdir(f"/proc/{p}/task"):
                os.sched_setaffinity(int(task), cpus)
            pids.extend(int(c) for c in Path(f"/proc/{p}/task/{p}/children").read_text().split())
        except (OSError, ValueError):
            continue


def feast_repository(work: Path, customers: int) -> Path:
    """A copy of the example with ``customers`` customers' generated data (make_data.py), applied
    and materialized later; its event times shifted to end yesterday, as the test bed does."""
    from noria_testbed.feast_server import EXAMPLE, FEAST_VENV, shift_to_recent

    repository = work / "feast-churn"
    shutil.copytree(EXAMPLE, repository, ignore=shutil.ignore_patterns("data", "__pycache__", "*.parquet"))
    subprocess.run([str(FEAST_VENV / "bin" / "python"), "-c",
                    f"import make_data, pathlib; make_data.write(pathlib.Path('.'), {customers})"],
                   cwd=repository, check=True)
    shift_to_recent(repository / "data" / "customer_stats.parquet")
    return repository


def online_rows(feature_server, keys: list[int]) -> tuple[dict[int, list[float]], list[int]]:  # type: ignore[no-untyped-def]
    """{key: [feature values in FEATURES order]} as the feature server answers them, and the keys it
    has no value for (a null at the epoch, Feast 0.67's Redis answer for an unknown key, or a non-
    PRESENT status)."""
    rows: dict[int, list[float]] = {}
    misses: list[int] = []
    for start_at in range(0, len(keys), 500):
        chunk = keys[start_at:start_at + 500]
        status, answer = feature_server.get_online_features({"customer_id": chunk}, feature_service=FEATURE_SERVICE)
        if status != 200:
            raise RuntimeError(f"the feature server answered {status}: {answer}")
        columns = dict(zip(answer["metadata"]["feature_names"], answer["results"], strict=True))  # type: ignore[index]
        for i, key in enumerate(chunk):
            values = [columns[f]["values"][i] for f in FEATURES]
            missing = any(v is None or columns[f]["event_timestamps"][i] == EPOCH
                          or columns[f]["statuses"][i] != "PRESENT" for f, v in zip(FEATURES, values, strict=True))
            if missing:
                misses.append(key)
            else:
                rows[key] = [float(v) for v in values]
    return rows, misses


# --- the model -----------------------------------------------------------------------------------
def save_model(repository: Path, directory: Path) -> tuple[str, str, str]:
    """A logistic regression on the example's last snapshot and labels, saved as the trainer saves
    a model (skops artifact, drift profile, metadata); (artifact URI, digest, profile URI)."""
    import pandas as pd
    from noria.artifact import dumps_model, sha256_digest
    from noria.profile import build_profile
    from sklearn.impute import SimpleImputer
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import Pipeline
    from sklearn.preprocessing import StandardScaler

    stats = pd.read_parquet(repository / "data" / "customer_stats.parquet")
    last = stats.sort_values("event_timestamp").groupby("customer_id").tail(1)
    labels = pd.read_parquet(repository / "labels.parquet")
    frame = last.merge(labels, on="customer_id")
    x = frame[FEATURES].astype(float)
    estimator = Pipeline([("impute", SimpleImputer()), ("scale", StandardScaler()),
                          ("model", LogisticRegression(max_iter=500))]).fit(x, frame["churned"])
    data, untrusted = dumps_model(estimator)
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "model.skops").write_bytes(data)
    profile = build_profile({c: x[c].to_numpy() for c in FEATURES}, dict.fromkeys(FEATURES, "numeric"),
                            predictions=list(estimator.predict(x)), prediction_kind="categorical")
    (directory / "profile.json").write_text(profile.to_json())
    (directory / "metadata.json").write_text(json.dumps({"kind": "logistic", "features": FEATURES,
                                                         "untrustedTypes": untrusted}))
    return f"file://{directory}/model.skops", sha256_digest(data), f"file://{directory}/profile.json"


def start_server(work: Path, model: tuple[str, str, str], name: str, feast_url: str | None
                 ) -> tuple[subprocess.Popen, str]:
    """``python -m noria_server serve`` on CPU 1 with its defaults (drift counting, prediction log),
    the Feast flags only for the lookup server; returns the process and its infer URL."""
    artifact, digest, profile = model
    port = free_port()
    cmd = [sys.executable, "-m", "noria_server", "serve", "--artifact", artifact, "--digest", digest,
           "--profile", profile, "--model", MODEL, "--version", f"{MODEL}-v1", "--host", "127.0.0.1",
           "--port", str(port), "--store-root", f"file://{work}/store", "--namespace", "bench",
           "--pipeline", MODEL, "--pod", f"bench-{name}", "--drain-seconds", "0"]
    if feast_url is not None:
        cmd += ["--feast-url", feast_url, "--feast-feature-service", FEATURE_SERVICE,
                "--feast-entity-keys", "customer_id"]
    proc = start(cmd, work / f"noria-{name}.log")
    wait_http(f"http://127.0.0.1:{port}/v2/health/ready", 180)
    return proc, f"http://127.0.0.1:{port}/v2/models/{MODEL}/infer"


def direct_body(rows: list[list[float]]) -> bytes:
    return json.dumps({"inputs": [{"name": f, "shape": [len(rows)], "datatype": "FP64",
                                   "data": [r[i] for r in rows]} for i, f in enumerate(FEATURES)]}).encode()


def key_body(keys: list[int]) -> bytes:
    return json.dumps({"inputs": [{"name": "customer_id", "shape": [len(keys)], "datatype": "INT64",
                                   "data": keys}]}).encode()


def feast_body(key: int) -> bytes:
    return json.dumps({"feature_service": FEATURE_SERVICE, "entities": {"customer_id": [key]},
                       "full_feature_names": False}).encode()


def post(url: str, body: bytes) -> dict:  # type: ignore[type-arg]
    request = urllib.request.Request(url, data=body, headers={"content-type": "application/json"})
    with urllib.request.urlopen(request, timeout=10) as response:
        return json.loads(response.read())


def counter(infer_url: str, name: str) -> dict[str, float]:
    """{series labels: value} of one counter on the model server's /metrics."""
    text = urllib.request.urlopen(infer_url.split("/v2/")[0] + "/metrics", timeout=5).read().decode()
    out = {}
    for line in text.splitlines():
        match = re.match(rf"{name}(\{{.*\}})? ([\d.e+-]+)$", line)
        if match:
            out[match.group(1) or ""] = float(match.group(2))
    return out


# --- runs ----------------------------------------------------------------------------------------
@dataclass
class Run:
    target: str
    offered: float
    sent: int
    ok: int
    p50_ms: float
    p99_ms: float
    p999_ms: float
    server_cpu: float | None  # model server CPU s per 10k requests (A, B)
    feast_cpu: float | None  # feast serve CPU s per 10k keys looked up (B, C)
    redis_cpu: float | None
    calls: int | None  # B: calls to the feature server
    timeouts: int | None  # B: of which unanswered within the server's lookup timeout (504s)
    late_p99_ms: float

    def row(self) -> str:
        def cell(value: float | None, width: int) -> str:
            return f"{'-':>{width}}" if value is None else f"{value:{width}.2f}"
        return (f"  {self.target:9} {self.offered:6.0f} {self.ok / max(self.sent, 1):7.1%} {self.p50_ms:7.2f} "
                f"{self.p99_ms:7.2f} {self.p999_ms:8.2f} {cell(self.server_cpu, 8)} {cell(self.feast_cpu, 8)} "
                f"{cell(self.redis_cpu, 8)} {'-' if self.calls is None else self.calls:>6} "
                f"{'-' if self.timeouts is None else self.timeouts:>5} {self.late_p99_ms:8.2f}")


HEADER = (f"  {'target':9} {'req/s':>6} {'200s':>7} {'p50 ms':>7} {'p99 ms':>7} {'p99.9 ms':>8} {'server':>8} "
          f"{'feast':>8} {'redis':>8} {'calls':>6} {'t/o':>5} {'late p99':>8}")


def percentile(values: list[float], q: float) -> float:
    return values[min(len(values) - 1, int(q * len(values)))] * 1e3 if values else float("nan")


def run(target: str, url: str, bodies: list[bytes], rate: float, seconds: float, server_pid: int | None,
        feast_pid: int | None, redis_pid: int | None) -> Run:
    lookups_before = counter(url, m.ONLINE_LOOKUPS_TOTAL) if target == TARGETS[1] else {}
    before = {pid: cpu_seconds(pid) for pid in (server_pid, feast_pid, redis_pid) if pid is not None}
    late: list[float] = []
    latencies, errors, sent = open_loop(url, bodies, rate, seconds, late)
    used = {pid: (cpu_seconds(pid) - cpu) / max(len(latencies), 1) * 10_000 for pid, cpu in before.items()}
    calls = timeouts = None
    if target == TARGETS[1]:
        delta = {k: v - lookups_before.get(k, 0.0) for k, v in counter(url, m.ONLINE_LOOKUPS_TOTAL).items()}
        calls = int(sum(delta.values()))
        timeouts = int(sum(v for k, v in delta.items() if f'outcome="{m.LOOKUP_TIMEOUT}"' in k))
    return Run(target, rate, sent, len(latencies) - errors, percentile(latencies, 0.5), percentile(latencies, 0.99),
               percentile(latencies, 0.999), used.get(server_pid), used.get(feast_pid), used.get(redis_pid),  # type: ignore[arg-type]
               calls, timeouts, percentile(sorted(late), 0.99))


def settle(pids: list[int], timeout: float = 30.0) -> None:
    """Wait until ``pids`` are idle (under 5 % CPU over 0.5 s): a feature server still working off
    lookups the model server gave up on (504) must not run into the next target's run."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        before = sum(cpu_seconds(p) for p in pids)
        time.sleep(0.5)
        if sum(cpu_seconds(p) for p in pids) - before < 0.025:
            return


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rates", default="50,100,300", help="offered rates, req/s (comma-separated)")
    parser.add_argument("--seconds", type=float, default=10, help="per target and rate")
    parser.add_argument("--customers", type=int, default=500, help="customers in the example (all used as keys)")
    parser.add_argument("--feast-cpu", type=int, default=1, help="CPU of feast serve and Redis (default 1)")
    parser.add_argument("--keep", action="store_true", help="keep the work directory (logs)")
    args = parser.parse_args()
    from noria_testbed.feast_server import FeastFeatureServer, materialize, run_feast
    from noria_testbed.redis import RedisServer

    rates = [float(r) for r in args.rates.split(",")]
    two_cpus = (os.cpu_count() or 1) >= 2
    if two_cpus:
        os.sched_setaffinity(0, {0})  # the generator; model servers on CPU 1 (serving_bench.start)
    load_before = uptime()
    work = Path(tempfile.mkdtemp(prefix="noria-online-lookup-"))
    redis = feature_server = None
    servers: list[subprocess.Popen] = []
    try:
        started = time.monotonic()
        repository = feast_repository(work, args.customers)
        redis = RedisServer(workdir=work / "redis", log_path=work / "redis.log").start()
        connection = redis.feast_connection_string()
        run_feast(repository, "apply", redis_connection=connection)
        materialize(repository, datetime(2000, 1, 1, tzinfo=UTC), datetime.now(UTC) + timedelta(minutes=1),
                    redis_connection=connection)
        feature_server = FeastFeatureServer(repository=repository, redis_connection=connection,
                                            log_path=work / "feast-serve.log").start()
        if two_cpus:
            pin_tree(redis.process.pid, {args.feast_cpu})  # type: ignore[union-attr]
            pin_tree(feature_server.process.pid, {args.feast_cpu})  # type: ignore[union-attr]
        keys_all = list(range(args.customers))
        rows, misses = online_rows(feature_server, keys_all)
        keys = [k for k in keys_all if k in rows]
        if not keys:
            raise SystemExit(f"the feature store has no value for any of {len(keys_all)} keys")
        model = save_model(repository, work / "store" / "bench" / MODEL / "model")
        direct, server_a = start_server(work, model, "direct", None)
        lookup, server_b = start_server(work, model, "lookup", feature_server.url)
        servers = [direct, lookup]
        print(f"set-up (data, Redis, feast apply/materialize/serve, model, 2 servers): {time.monotonic() - started:.0f}s; "
              f"keys {len(keys)} of {len(keys_all)} found, misses {len(misses)}" + (f": {misses[:10]}" if misses else ""),
              flush=True)

        sample = keys[:: max(1, len(keys) // 20)]
        a = post(server_a, direct_body([rows[k] for k in sample]))["outputs"][0]["data"]
        b = post(server_b, key_body(sample))["outputs"][0]["data"]
        if a != b:
            raise SystemExit(f"B's predictions differ from A's on the same rows: {a} vs {b}")
        print(f"B's predictions equal A's on {len(sample)} keys", flush=True)

        targets = {
            TARGETS[0]: (server_a, [direct_body([rows[k]]) for k in keys], direct.pid, None, None),
            TARGETS[1]: (server_b, [key_body([k]) for k in keys], lookup.pid, feature_server.process.pid,  # type: ignore[union-attr]
                         redis.process.pid),  # type: ignore[union-attr]
            TARGETS[2]: (feature_server.url + "/get-online-features", [feast_body(k) for k in keys], None,
                         feature_server.process.pid, redis.process.pid),  # type: ignore[union-attr]
        }
        for url, bodies, *_ in targets.values():  # warm-up: connections, first-call paths
            open_loop(url, bodies, 100, 1, [])
        misses_before = counter(server_b, m.ONLINE_MISSES_TOTAL)
        results: list[Run] = []
        print(HEADER, flush=True)
        order = list(TARGETS)
        busy = [direct.pid, lookup.pid, feature_server.process.pid, redis.process.pid]  # type: ignore[union-attr]
        for rate in rates:
            for name in order:
                url, bodies, server_pid, feast_pid, redis_pid = targets[name]
                settle(busy)
                results.append(run(name, url, bodies, rate, args.seconds, server_pid, feast_pid, redis_pid))
                print(results[-1].row(), flush=True)
            order = order[1:] + order[:1]  # rotate: no target always first after a pause
        lookup_misses = sum(counter(server_b, m.ONLINE_MISSES_TOTAL).values()) - sum(misses_before.values())
        print_summary(results, rates, args, load_before, len(keys), misses, lookup_misses)
    finally:
        for proc in servers:
            stop(proc)
        if feature_server is not None:
            feature_server.stop()
        if redis is not None:
            redis.stop()
        if args.keep:
            print(f"work directory kept: {work}")
        else:
            shutil.rmtree(work, ignore_errors=True)


def print_summary(results: list[Run], rates: list[float], args: argparse.Namespace, load_before: str,
                  keys: int, misses: list[int], lookup_misses: float) -> None:
    print(f"\n## Online lookup: added latency at fixed offered rates ({args.seconds:g}s each, open loop, "
          f"{keys} customers' keys in turn)")
    print(HEADER)
    for r in sorted(results, key=lambda r: (r.offered, r.target)):
        print(r.row())
    for rate in rates:
        by = {r.target: r for r in results if r.offered == rate}
        a, b = by[TARGETS[0]], by[TARGETS[1]]
        print(f"  {rate:4.0f} req/s: added p50 = B - A = {b.p50_ms - a.p50_ms:+.2f} ms, added p99 = "
              f"{b.p99_ms - a.p99_ms:+.2f} ms (feast alone: p50 {by[TARGETS[2]].p50_ms:.2f}, "
              f"p99 {by[TARGETS[2]].p99_ms:.2f} ms)")
    print(f"  keys the store had no value for: {len(misses)} before the runs; misses counted by the lookup "
          f"server during the runs: {lookup_misses:.0f}")
    print("  columns: offered req/s, share answered 200, latency from the scheduled send (ms), CPU s per "
          "10,000 requests of the model server / feast serve (master + worker) / Redis, calls from the "
          "model server to feast serve (B) and of those unanswered within its 100 ms timeout (504), p99 of how late the generator sent (ms, inside every latency)")
    print(f"  pinning: generator CPU 0, model servers CPU 1, feast serve + Redis CPU {args.feast_cpu}; "
          "model servers with defaults (drift counting, prediction log), one native thread; "
          "feast serve: 1 worker, --max-requests 0, no access log")
    print(f"  Load before: {load_before}")
    print(f"  Load after:  {uptime()}")


if __name__ == "__main__":
    main()
