"""Child processes of the testbed: started in their own process group, logged to a file, and
always stopped as a group.

Each component runs with ``setsid`` so that stopping it also stops whatever it spawned, and with
``PR_SET_PDEATHSIG`` so that a testbed killed with SIGKILL (a CI timeout, an OOM kill) does not
leave an apiserver or a model server listening on the machine afterwards.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import signal
import socket
import ssl
import subprocess
import time
import urllib.request
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path

_PR_SET_PDEATHSIG = 1


def _libc() -> ctypes.CDLL | None:
    try:
        return ctypes.CDLL("libc.so.6", use_errno=True)
    except OSError:  # not glibc Linux: no parent-death signal, teardown still stops the groups
        return None


_LIBC = _libc()


def detach_and_die_with_parent() -> None:
    """``preexec_fn``: a new session (so the group can be signalled) that dies with its parent."""
    os.setsid()
    if _LIBC is not None:
        _LIBC.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port that is free right now on ``host`` (the kernel picks it)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        return sock.getsockname()[1]


def urlopen(url: str, *, timeout: float, context: ssl.SSLContext | None = None):  # noqa: ANN201
    """``urllib.request.urlopen`` that never goes through an HTTP(S)_PROXY: every testbed
    endpoint is on loopback, and a proxy from the environment would only break the checks."""
    handlers: list[urllib.request.BaseHandler] = [urllib.request.ProxyHandler({})]
    if context is not None:
        handlers.append(urllib.request.HTTPSHandler(context=context))
    return urllib.request.build_opener(*handlers).open(url, timeout=timeout)


def tail(path: Path, lines: int = 40) -> str:
    """The last ``lines`` lines of a text file, or a note that it does not exist."""
    try:
        with open(path, "rb") as handle:
            handle.seek(0, os.SEEK_END)
            size = handle.tell()
            handle.seek(max(0, size - 64 * 1024))
            text = handle.read().decode("utf-8", "replace")
    except FileNotFoundError:
        return f"<{path} does not exist>"
    return "\n".join(text.splitlines()[-lines:])


class ProcessExited(RuntimeError):
    """A component that should be running has exited; waiting longer cannot help."""


def wait_until(what: str, check: Callable[[], bool], timeout: float, interval: float = 0.2,
               on_timeout: Callable[[], str] | None = None) -> None:
    """Poll ``check`` until it returns true; raise TimeoutError naming ``what`` otherwise.
    Exceptions from ``check`` count as "not yet", except ProcessExited, which is raised at once."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            if check():
                return
        except ProcessExited:
            raise
        except Exception:  # noqa: BLE001, S110 - not ready yet (connection refused, 404, ...)
            pass
        if time.monotonic() >= deadline:
            detail = f"\n{on_timeout()}" if on_timeout else ""
            raise TimeoutError(f"{what} not reached within {timeout:.0f}s{detail}")
        time.sleep(interval)


def port_clash(log_path: Path) -> bool:
    """Whether a component's log says it could not bind its port (another process took the
    "free" port between our check and its bind: several test beds may start at once)."""
    return "address already in use" in tail(log_path, 80)


def start_moving_port_on_clash(start_once: Callable[[], None], stop: Callable[[], None], log_path: Path,
                               move_ports: Callable[[], None] | None, attempts: int = 3) -> None:
    """Run ``start_once``; when its process exits because another process took its port, ``stop``,
    ``move_ports`` to fresh ones and try again (at most ``attempts`` times). ``move_ports`` is None
    once a server has started: its address never moves after that, so a clash is then an error."""
    for attempt in range(attempts):
        try:
            start_once()
            return
        except ProcessExited:
            stop()
            if move_ports is None or attempt == attempts - 1 or not port_clash(log_path):
                raise
            move_ports()


class ManagedProcess:
    """One long-running component with its log file."""

    def __init__(self, name: str, argv: Sequence[str], log_path: Path, *,
                 env: Mapping[str, str] | None = None, cwd: Path | None = None) -> None:
        self.name = name
        self.argv = list(argv)
        self.log_path = log_path
        log_path.parent.mkdir(parents=True, exist_ok=True)
        self._log = open(log_path, "ab")  # noqa: SIM115 - closed in stop()
        self._log.write(f"$ {' '.join(self.argv)}\n".encode())
        self._log.flush()
        self.popen = subprocess.Popen(
            self.argv, stdin=subprocess.DEVNULL, stdout=self._log, stderr=subprocess.STDOUT,
            env=dict(env) if env is not None else None, cwd=cwd, preexec_fn=detach_and_die_with_parent,
        )

    @property
    def pid(self) -> int:
        return self.popen.pid

    def alive(self) -> bool:
        return self.popen.poll() is None

    def check_alive(self) -> None:
        """Raise with the log tail when the process has exited (a crash during start-up)."""
        if not self.alive():
            raise ProcessExited(f"{self.name} exited with code {self.popen.returncode}; "
                               f"last lines of {self.log_path}:\n{tail(self.log_path)}")

    def stop(self, grace: float = 5.0) -> None:
        """SIGTERM the process group, SIGKILL it after ``grace`` seconds. Safe to call twice."""
        try:
            if self.alive():
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(self.popen.pid, signal.SIGTERM)
                try:
                    self.popen.wait(grace)
                except subprocess.TimeoutExpired:
                    pass
            # The leader may be gone while children it spawned still hold the group.
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(self.popen.pid, signal.SIGKILL)
            with contextlib.suppress(subprocess.TimeoutExpired):
                self.popen.wait(5)
        finally:
            self._log.close()
