"""Noria's model server vs Seldon MLServer 1.7.1 on the same model, payload, load and machine.

    .venv/bin/python benchmarks/server_vs_mlserver.py [--seconds 10 --runs 3 --connections 16]

For each model (a LogisticRegression Pipeline on 20 features, a HistGradientBoostingClassifier),
trained once and saved twice from the same fitted object (skops for Noria, joblib for MLServer's
sklearn runtime), both servers get the same single-row OIP v2 request from wrk (16 connections,
generator on CPU 0, server on CPU 1): warm-up, then the median of N runs. MLServer runs in its own
virtualenv (~/.cache/noria/bench-mlserver: mlserver 1.7.1, mlserver-sklearn 1.7.1, uvloop<0.22,
httptools, and this venv's scikit-learn version so the pickle loads) with its best configuration
seen here, ``parallel_workers: 0``. Noria runs with its defaults (drift counting and prediction
log on), and again with drift counting off to show what counting costs.
Prints one table with ratios and the exact configurations, and the machine load.
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import sklearn

sys.path.insert(0, str(Path(__file__).resolve().parent))
from noria_server.launch import free_port  # noqa: E402
from noria_server.reference_models import train_and_save  # noqa: E402
from serving_bench import (  # noqa: E402
    KSERVE_VENV,
    MLSERVER_PACKAGES,
    MLSERVER_VENV,
    WrkResult,
    ensure_venv,
    measure,
    require_wrk,
    start,
    start_mlserver,
    stop,
    uptime,
    wait_http,
)

MODELS = {"logistic": "Pipeline(SimpleImputer, StandardScaler, LogisticRegression), 20 features",
          "hgb": "HistGradientBoostingClassifier(max_iter=100), 20 features"}
ROW = [round(0.1 * i - 1.0, 3) for i in range(20)]


def payload() -> bytes:
    return json.dumps({"inputs": [{"name": "input-0", "shape": [1, 20], "datatype": "FP64", "data": [ROW]}]}).encode()


def run_mlserver(python: Path, work: Path, kind: str, joblib_path: Path, args: argparse.Namespace) -> WrkResult:
    proc, url = start_mlserver(python, work, kind, joblib_path)
    try:
        return measure(url, payload(), args.connections, args.warmup, args.seconds, args.runs)
    finally:
        stop(proc)


def kserve_venv_python() -> Path | None:
    """KServe runs only if its venv already installed cleanly (``benchmarks/setup_kserve_venv.sh``)."""
    python = KSERVE_VENV / "bin" / "python"
    if not python.exists() or subprocess.run([str(python), "-c", "import kserve, sklearn, joblib"],
                                             capture_output=True).returncode != 0:
        print(f"KServe skipped: no working venv at {KSERVE_VENV} (benchmarks/setup_kserve_venv.sh)")
        return None
    return python


def run_kserve(python: Path, work: Path, kind: str, joblib_path: Path, args: argparse.Namespace) -> WrkResult:
    port = free_port()
    peer = Path(__file__).resolve().parent / "kserve_sklearn_peer.py"
    proc = start([str(python), str(peer), "--model_name", kind, "--model_path", str(joblib_path), "--http_port",
                  str(port), "--grpc_port", str(free_port()), "--workers", "1"], work / f"kserve-{kind}.log")
    try:
        wait_http(f"http://127.0.0.1:{port}/v2/models/{kind}/ready", 180)
        return measure(f"http://127.0.0.1:{port}/v2/models/{kind}/infer", payload(), args.connections,
                       args.warmup, args.seconds, args.runs)
    finally:
        stop(proc)


def run_noria(work: Path, kind: str, saved, counting: bool, args: argparse.Namespace) -> WrkResult:  # type: ignore[no-untyped-def]
    port = free_port()
    cmd = [sys.executable, "-m", "noria_server", "serve", "--artifact", saved.artifact_uri, "--digest", saved.digest,
           "--profile", saved.profile_uri, "--model", kind, "--version", f"{kind}-v1", "--host", "127.0.0.1",
           "--port", str(port), "--store-root", f"file://{work}/store", "--namespace", "bench", "--pipeline", kind,
           "--pod", f"bench-{port}", "--feature-counting", "on" if counting else "off", "--drain-seconds", "0"]
    proc = start(cmd, work / f"noria-{kind}-{port}.log")
    try:
        wait_http(f"http://127.0.0.1:{port}/v2/health/ready", 180)
        return measure(f"http://127.0.0.1:{port}/v2/models/{kind}/infer", payload(), args.connections, args.warmup,
                       args.seconds, args.runs)
    finally:
        stop(proc)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=10)
    parser.add_argument("--warmup", type=float, default=5)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--connections", type=int, default=16)
    parser.add_argument("--models", default="logistic,hgb")
    parser.add_argument("--skip-mlserver", action="store_true")
    parser.add_argument("--skip-kserve", action="store_true")
    args = parser.parse_args()
    require_wrk()
    load_before = uptime()
    python = None if args.skip_mlserver else ensure_venv(MLSERVER_VENV, MLSERVER_PACKAGES,
                                                         [f"scikit-learn=={sklearn.__version__}"])
    kserve_python = None if args.skip_kserve else kserve_venv_python()
    work = Path(tempfile.mkdtemp(prefix="noria-bench-"))
    rows = []
    for kind in args.models.split(","):
        # Inside the store root Noria is given: the server loads artifacts only from under it.
        model_dir = work / "store" / "bench" / kind / "model"
        saved = train_and_save(kind, str(model_dir), rows=5000)  # type: ignore[arg-type]
        import joblib

        joblib_path = model_dir / "model.joblib"
        joblib.dump(saved.estimator, joblib_path)
        print(f"[{kind}] measuring ...", flush=True)
        results: dict[str, WrkResult | None] = {}

        def record(name: str, result: WrkResult, kind: str = kind, results: dict = results) -> None:
            results[name] = result
            print(f"[{kind}] {name}: {result.row()}", flush=True)

        if python is not None:
            record("MLServer 1.7.1 (parallel_workers 0)", run_mlserver(python, work, kind, joblib_path, args))
        if kserve_python is not None:
            record("KServe 0.21 sklearn model (1 worker)", run_kserve(kserve_python, work, kind, joblib_path, args))
        record("Noria (defaults)", run_noria(work, kind, saved, True, args))
        record("Noria, drift counting off", run_noria(work, kind, saved, False, args))
        rows.append((kind, results))

    print("\n## Model server: Noria vs MLServer 1.7.1 (and KServe), single-row OIP v2 infer, wrk "
          f"-t1 -c{args.connections}, {args.warmup:g}s warm-up + median of {args.runs} x {args.seconds:g}s")
    print(f"{'model':9} {'server':34} {'req/s':>8} {'p50 ms':>7} {'p99 ms':>7} {'thrpt/MLServer':>15} "
          f"{'p99/MLServer':>13}")
    for kind, results in rows:
        ml = results.get("MLServer 1.7.1 (parallel_workers 0)")
        for name, r in results.items():
            if r is None:
                continue
            vs = f"{r.rps / ml.rps:14.2f}x" if ml else f"{'-':>15}"
            p99 = f"{r.p99_ms / ml.p99_ms:13.2f}" if ml else f"{'-':>13}"
            print(f"{kind:9} {name:34} {r.rps:8.0f} {r.p50_ms:7.2f} {r.p99_ms:7.2f} {vs} {p99}"
                  + (f"  ({r.errors} errors)" if r.errors else ""))
        on, off = results["Noria (defaults)"], results["Noria, drift counting off"]
        print(f"{kind:9} drift counting cost: {(off.rps - on.rps) / off.rps * 100:+.1f}% throughput "
              f"({off.rps:.0f} -> {on.rps:.0f} req/s)")
    print("\nConfigurations:")
    for kind, text in MODELS.items():
        print(f"  model {kind}: {text}, trained on 5000 rows, one fitted object saved as skops and joblib")
    print("  MLServer: mlserver 1.7.1 + mlserver-sklearn 1.7.1 + httptools + uvloop<0.22, settings.json "
          "parallel_workers=0 (one process), scikit-learn " + sklearn.__version__ + ", taskset -c 1")
    print("  KServe: kserve 0.21.0 SDK from PyPI, benchmarks/kserve_sklearn_peer.py (KServe's sklearnserver "
          "model class: joblib + predict on the decoded tensor), kserve.ModelServer --workers 1, taskset -c 1")
    print("  Noria: python -m noria_server serve, defaults (max batch 64, no batch wait, drift counting on, "
          "prediction log on to a local store), taskset -c 1; 'counting off' = --feature-counting off")
    print("  All servers: OMP_NUM_THREADS=OPENBLAS_NUM_THREADS=MKL_NUM_THREADS=1 (pinned to one CPU)")
    print("  Load: wrk 4 (Debian), 1 thread, taskset -c 0, same JSON body: one row [1, 20] FP64 'input-0'")
    print(f"  Load before: {load_before}")
    print(f"  Load after:  {uptime()}")
    shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
