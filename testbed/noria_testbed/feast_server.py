"""Feast's HTTP feature server (``feast serve``) for the test bed, reading a Redis online store.

The model server's online lookup (issue 18 item 2) calls this: ``POST /get-online-features`` with
``{"feature_service": name}`` or ``{"features": ["view:feature", ...]}`` and
``{"entities": {"customer_id": [1, 2]}}``. It is Feast's own serving component, run from
``.venv-feast`` (Feast needs pandas < 3; ``make feast-venv``), on a loopback port chosen once, over a
feature repository whose ``feature_store.redis.yaml`` names the online store through
``NORIA_FEAST_REDIS`` (``examples/feast-churn``; docs/training-feast.md, "Online store in the test
bed").

:func:`run_feast` runs one ``feast -f <yaml> ...`` command in a repository (``apply``,
``materialize``); :class:`FeastFeatureServer` starts, waits for and stops the server;
``python -m noria_testbed.feast_server`` brings up Redis and a served copy of the example by hand.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Mapping
from datetime import datetime
from pathlib import Path

from noria_testbed.binaries import REPO_ROOT
from noria_testbed.processes import (
    ManagedProcess,
    free_port,
    start_moving_port_on_clash,
    tail,
    wait_until,
)

HOST = "127.0.0.1"
FEAST_VENV = REPO_ROOT / ".venv-feast"
EXAMPLE = REPO_ROOT / "examples" / "feast-churn"
REDIS_YAML = "feature_store.redis.yaml"  # the example's config with the Redis online store
REDIS_ENV = "NORIA_FEAST_REDIS"  # what REDIS_YAML's connection_string expands
# `import feast` alone is ~10 s of CPU; on a loaded 2-core machine start-up takes several times that.
READY_TIMEOUT = 120.0
COMMAND_TIMEOUT = 300.0


class FeastUnavailable(RuntimeError):
    """The Feast CLI is missing; the message says what to run."""


def feast_cli() -> Path:
    """``.venv-feast/bin/feast``, or raise naming ``make feast-venv``."""
    feast = FEAST_VENV / "bin" / "feast"
    if not os.access(feast, os.X_OK):
        raise FeastUnavailable(f"{feast} is missing: run `make feast-venv`")
    return feast


def feast_env(redis_connection: str, base: Mapping[str, str] | None = None) -> dict[str, str]:
    """The environment of a Feast command over REDIS_YAML: the store's address, no usage reporting
    (no network), unbuffered output for the log."""
    env = dict(os.environ if base is None else base)
    env.update({REDIS_ENV: redis_connection, "FEAST_USAGE": "False", "PYTHONUNBUFFERED": "1"})
    return env


def run_feast(repository: Path, *args: str, redis_connection: str, yaml_name: str = REDIS_YAML,
              timeout: float = COMMAND_TIMEOUT) -> str:
    """``feast -f <yaml_name> <args>`` in ``repository``; its output, or RuntimeError with it."""
    done = subprocess.run(
        [str(feast_cli()), "-f", yaml_name, *args], cwd=repository, env=feast_env(redis_connection),
        capture_output=True, text=True, timeout=timeout,
    )
    if done.returncode != 0:
        raise RuntimeError(f"feast {' '.join(args)} failed (exit {done.returncode}):\n"
                           f"{done.stdout[-3000:]}{done.stderr[-3000:]}")
    return done.stdout + done.stderr


def materialize(repository: Path, start: datetime, end: datetime, *, redis_connection: str) -> str:
    """Copy the newest value of every entity with a feature row in ``[start, end]`` into the online
    store (``feast materialize``; explicit bounds, so data older than the views' ttl before now, as
    the example's, is materialized too)."""
    return run_feast(repository, "materialize", start.isoformat(), end.isoformat(),
                     redis_connection=redis_connection)


# Feast's own CLI (what .venv-feast/bin/feast runs), with one addition: every process it forks gets
# SIGKILL when its parent dies. `feast serve` is a gunicorn master that forks a uvicorn worker; the
# master dies with the test bed (processes.detach_and_die_with_parent), but a forked child does not
# inherit that, and the uvicorn worker never checks for a vanished master: after a test bed killed with
# SIGKILL it would keep the port, orphaned, for good.
SERVE_LAUNCHER = """
import ctypes, os, signal, sys
libc = ctypes.CDLL("libc.so.6", use_errno=True)
os.register_at_fork(after_in_child=lambda: libc.prctl(1, signal.SIGKILL, 0, 0, 0))  # PR_SET_PDEATHSIG
from feast.cli.cli import cli
sys.argv[0] = "feast"
sys.exit(cli())
"""


def serve_command(port: int, yaml_name: str = REDIS_YAML, registry_ttl_seconds: int = 5) -> list[str]:
    """``feast serve`` on ``127.0.0.1:port`` (through SERVE_LAUNCHER): one gunicorn worker that is never
    recycled (``--max-requests 0``: Feast's default restarts it every ~1000 requests, a latency spike
    a benchmark would measure), no access log, the registry re-read every ``registry_ttl_seconds``."""
    python = feast_cli().parent / "python"
    return [
        str(python), "-c", SERVE_LAUNCHER, "-f", yaml_name, "serve",
        "--host", HOST, "--port", str(port),
        "--workers", "1", "--max-requests", "0",
        "--registry_ttl_sec", str(registry_ttl_seconds),
        "--no-access-log",
    ]


class FeastFeatureServer:
    """One ``feast serve`` over ``repository`` (its online store: REDIS_YAML with ``redis_connection``)."""

    def __init__(self, *, repository: Path, redis_connection: str, log_path: Path,
                 yaml_name: str = REDIS_YAML) -> None:
        self.repository, self.redis_connection, self.log_path = repository, redis_connection, log_path
        self.yaml_name = yaml_name
        self.port = free_port()
        self.process: ManagedProcess | None = None

    @property
    def url(self) -> str:
        return f"http://{HOST}:{self.port}"

    def start(self, timeout: float = READY_TIMEOUT) -> FeastFeatureServer:
        """Start (again, on the same port after the first start) and wait until ``/health`` is 200."""
        first = self.process is None
        start_moving_port_on_clash(lambda: self._start_once(timeout), self.stop, self.log_path, self._move_port if first else None)
        return self

    def _move_port(self) -> None:
        self.port = free_port()

    def _start_once(self, timeout: float) -> None:
        self.process = ManagedProcess(
            "feast-serve", serve_command(self.port, self.yaml_name), self.log_path,
            env=feast_env(self.redis_connection), cwd=self.repository,
        )
        process = self.process

        def ready() -> bool:
            process.check_alive()
            return self.request("GET", "/health", timeout=2)[0] == 200

        wait_until("feast serve /health", ready, timeout, interval=0.5, on_timeout=lambda: tail(self.log_path))

    def request(self, method: str, path: str, body: object = None, *, timeout: float = 10.0) -> tuple[int, bytes]:
        """One HTTP request (no proxy); the status and raw body, also for 4xx/5xx answers."""
        data = None if body is None else json.dumps(body).encode()
        request = urllib.request.Request(self.url + path, data=data, method=method,
                                         headers={"Content-Type": "application/json"})
        opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
        try:
            with opener.open(request, timeout=timeout) as response:
                return response.status, response.read()
        except urllib.error.HTTPError as error:
            return error.code, error.read()

    def get_online_features(self, entities: Mapping[str, list], *, feature_service: str | None = None,
                            features: list[str] | None = None, timeout: float = 10.0) -> tuple[int, object]:
        """``POST /get-online-features``: the status and the decoded JSON body (a string when the
        body is not JSON)."""
        body: dict[str, object] = {"entities": dict(entities)}
        if feature_service is not None:
            body["feature_service"] = feature_service
        if features is not None:
            body["features"] = list(features)
        status, raw = self.request("POST", "/get-online-features", body, timeout=timeout)
        try:
            return status, json.loads(raw)
        except ValueError:
            return status, raw.decode("utf-8", "replace")

    def stop(self, grace: float = 10.0) -> None:
        """SIGTERM the gunicorn master and its worker, SIGKILL after ``grace``. Safe to call twice."""
        if self.process is not None:
            self.process.stop(grace=grace)

    def alive(self) -> bool:
        return self.process is not None and self.process.alive()


def shift_to_recent(stats_path: Path) -> None:
    """Move a feature source's event times so its newest is a day old: the feature server answers
    values older than a view's ttl (the example's are from early 2026, ttl 90 days) with status
    OUTSIDE_MAX_AGE."""
    import pandas as pd

    stats = pd.read_parquet(stats_path)
    newest = stats["event_timestamp"].max()
    stats["event_timestamp"] += pd.Timestamp.now(tz="UTC").floor("D") - pd.Timedelta(days=1) - newest
    stats.to_parquet(stats_path, index=False)


def main(argv: list[str] | None = None) -> int:
    """By hand: Redis, a copy of the example repository with its generated data, ``feast apply``,
    ``feast materialize`` and ``feast serve``; prints the URLs and runs until Ctrl-C."""
    from noria_testbed.redis import RedisServer

    parser = argparse.ArgumentParser(prog="python -m noria_testbed.feast_server", description=main.__doc__)
    parser.add_argument("--workdir", type=Path, help="where the repository copy, logs and Redis files go "
                        "(default: a new temporary directory)")
    parser.add_argument("--customers", type=int, default=500)
    args = parser.parse_args(argv)
    signal.signal(signal.SIGTERM, signal.default_int_handler)  # `kill` stops both too, like Ctrl-C
    workdir = args.workdir or Path(tempfile.mkdtemp(prefix="noria-feast-"))
    repository = workdir / "feast-churn"
    if not repository.exists():
        shutil.copytree(EXAMPLE, repository, ignore=shutil.ignore_patterns("data", "__pycache__", "*.parquet"))
        subprocess.run([str(FEAST_VENV / "bin" / "python"), "make_data.py"], cwd=repository, check=True)
        shift_to_recent(repository / "data" / "customer_stats.parquet")
    redis = RedisServer(workdir=workdir / "redis", log_path=workdir / "redis.log").start()
    server: FeastFeatureServer | None = None
    try:
        run_feast(repository, "apply", redis_connection=redis.feast_connection_string())
        materialize(repository, datetime(2000, 1, 1), datetime.now(), redis_connection=redis.feast_connection_string())
        server = FeastFeatureServer(repository=repository, redis_connection=redis.feast_connection_string(),
                                    log_path=workdir / "feast-serve.log").start()
        print(f"redis {redis.address}\nfeature server {server.url}\nrepository {repository}\n"
              f"logs {workdir}\nCtrl-C stops both", flush=True)
        while server.alive() and redis.alive():
            time.sleep(1)
        print("a process exited; see the logs", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 0
    finally:
        if server is not None:
            server.stop()
        redis.stop()


if __name__ == "__main__":
    sys.exit(main())
