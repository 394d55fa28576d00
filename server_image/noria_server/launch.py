"""Start ``serve`` / ``route`` as local subprocesses on 127.0.0.1 (tests and benchmarks).

The processes are the real thing (``python -m noria_server ...``); this only picks free ports,
waits for readiness and stops them with SIGTERM (then SIGKILL) so nothing is left behind.
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Sequence
from dataclasses import dataclass, field


def free_port() -> int:
    with contextlib.closing(socket.socket(socket.AF_INET, socket.SOCK_STREAM)) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def get(url: str, timeout: float = 2.0) -> tuple[int, bytes]:
    try:
        with urllib.request.urlopen(url, timeout=timeout) as resp:
            return resp.status, resp.read()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read()


@dataclass
class Process:
    args: list[str]
    port: int
    log_path: str
    env: dict[str, str] = field(default_factory=dict)
    cpus: str | None = None  # taskset CPU list, e.g. "1"
    proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> Process:
        cmd = [sys.executable, "-m", "noria_server", *self.args]
        if self.cpus is not None:
            cmd = ["taskset", "-c", self.cpus, *cmd]
        env = {**os.environ, "NORIA_LOG_LEVEL": "INFO", **self.env}
        log = open(self.log_path, "ab")  # noqa: SIM115 - owned by the child for its whole life
        self.proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=env)
        log.close()
        return self

    def wait_ready(self, timeout: float = 60.0, path: str = "/v2/health/ready") -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc is not None and self.proc.poll() is not None:
                raise RuntimeError(f"{self.args[0]} exited with {self.proc.returncode}: {self.log()[-2000:]}")
            try:
                status, _ = get(self.url + path, timeout=1.0)
                if status == 200:
                    return
            except OSError:
                pass
            time.sleep(0.1)
        raise TimeoutError(f"{self.args[0]} on port {self.port} not ready after {timeout}s: {self.log()[-2000:]}")

    def log(self) -> str:
        try:
            with open(self.log_path, errors="replace") as f:
                return f.read()
        except OSError:
            return ""

    def stop(self, timeout: float = 15.0) -> int | None:
        if self.proc is None:
            return None
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        return self.proc.returncode


def serve(artifact_uri: str, digest: str, model: str, version: str, log_dir: str, profile_uri: str | None = None,
          extra: Sequence[str] = (), env: dict[str, str] | None = None, cpus: str | None = None) -> Process:
    port = free_port()
    args = ["serve", "--artifact", artifact_uri, "--digest", digest, "--model", model, "--version", version,
            "--host", "127.0.0.1", "--port", str(port), "--drain-seconds", "0.2", *extra]
    if profile_uri:
        args += ["--profile", profile_uri]
    return Process(args, port, os.path.join(log_dir, f"serve-{version}-{port}.log"), env or {}, cpus).start()


def route(config_path: str, log_dir: str, extra: Sequence[str] = (), env: dict[str, str] | None = None,
          cpus: str | None = None) -> Process:
    port = free_port()
    args = ["route", "--config", config_path, "--host", "127.0.0.1", "--port", str(port), "--drain-seconds", "0.2",
            *extra]
    return Process(args, port, os.path.join(log_dir, f"route-{port}.log"), env or {}, cpus).start()
