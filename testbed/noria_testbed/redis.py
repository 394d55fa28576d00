"""A real Redis for the test bed: Debian's ``redis-server``, the Feast online store (issue 18).

``hack/install-redis.sh`` fetches Debian's redis-server and redis-tools with ``apt-get download``
and unpacks them (never installs them: no system service) into ``~/.cache/noria/redis/<version>/``;
:func:`binaries.find_redis` finds it there (``NORIA_TESTBED_REDIS`` may name a ready
``redis-server``). :class:`RedisServer` runs one server on a loopback port chosen once, so the
address stays the same across :meth:`RedisServer.restart` (tests kill the store under a Feast
feature server and start it again). Its settings are in a config file in its workdir (mode 0600:
the password never appears in a command line or a log):

- ``persist=False`` (default): no RDB snapshots, no append-only file; a restart starts empty.
- ``persist=True``: an append-only file in the workdir, fsynced on every write, so the data
  survives :meth:`RedisServer.kill` (SIGKILL) and a restart: an online store that crashed and came
  back with what was materialized into it.

:func:`call` is a minimal RESP client (one command per connection) for readiness checks and tests;
Feast itself talks to the server through redis-py with :meth:`RedisServer.feast_connection_string`.
"""

from __future__ import annotations

import logging
import secrets
import socket
from pathlib import Path

from noria_testbed.binaries import find_redis
from noria_testbed.processes import (
    ManagedProcess,
    free_port,
    start_moving_port_on_clash,
    tail,
    wait_until,
)

log = logging.getLogger(__name__)

HOST = "127.0.0.1"
READY_TIMEOUT = 30.0


class RedisError(RuntimeError):
    """An error reply from Redis (``-ERR ...``, ``-NOAUTH ...``)."""


def config_text(*, port: int, workdir: Path, password: str | None, persist: bool) -> str:
    """The redis.conf of one test-bed server: loopback only, in the foreground, logging to stdout
    (the process log), its files in ``workdir``; persistence only when asked."""
    lines = [
        f"port {port}",
        f"bind {HOST}",
        "protected-mode yes",
        "daemonize no",
        'logfile ""',
        f'dir "{workdir}"',
        'save ""',  # no RDB snapshots, also not on shutdown
        f"appendonly {'yes' if persist else 'no'}",
    ]
    if persist:
        lines.append("appendfsync always")  # tiny test data: every write on disk before the reply
    if password is not None:
        if any(c.isspace() or c in "\"'\\" for c in password):
            raise ValueError("a test-bed Redis password has no spaces, quotes or backslashes")
        lines.append(f"requirepass {password}")
    return "\n".join(lines) + "\n"


def encode(*args: str | bytes | int) -> bytes:
    """One command as a RESP array of bulk strings."""
    parts = [f"*{len(args)}\r\n".encode()]
    for arg in args:
        data = arg if isinstance(arg, bytes) else str(arg).encode()
        parts.append(b"$%d\r\n%s\r\n" % (len(data), data))
    return b"".join(parts)


class _Reader:
    def __init__(self, sock: socket.socket) -> None:
        self.sock, self.buffer = sock, b""

    def _fill(self) -> None:
        chunk = self.sock.recv(65536)
        if not chunk:
            raise ConnectionError("redis closed the connection")
        self.buffer += chunk

    def line(self) -> bytes:
        while b"\r\n" not in self.buffer:
            self._fill()
        line, self.buffer = self.buffer.split(b"\r\n", 1)
        return line

    def exact(self, size: int) -> bytes:
        while len(self.buffer) < size + 2:
            self._fill()
        data, self.buffer = self.buffer[:size], self.buffer[size + 2 :]
        return data

    def reply(self) -> object:
        line = self.line()
        kind, rest = line[:1], line[1:]
        if kind == b"+":
            return rest.decode()
        if kind == b"-":
            raise RedisError(rest.decode())
        if kind == b":":
            return int(rest)
        if kind == b"$":
            return None if int(rest) < 0 else self.exact(int(rest))
        if kind == b"*":
            return None if int(rest) < 0 else [self.reply() for _ in range(int(rest))]
        raise RedisError(f"unexpected reply {line[:80]!r}")


def call(port: int, *args: str | bytes | int, password: str | None = None, host: str = HOST,
         timeout: float = 5.0) -> object:
    """Send one command (after AUTH when ``password`` is given) and return its reply: ``str`` for a
    status, ``bytes`` for a bulk string, ``int``, ``list`` or ``None``; an error reply raises
    :class:`RedisError`, a refused connection ``ConnectionError``."""
    with socket.create_connection((host, port), timeout=timeout) as sock:
        reader = _Reader(sock)
        if password is not None:
            sock.sendall(encode("AUTH", password))
            reader.reply()
        sock.sendall(encode(*args))
        return reader.reply()


class RedisServer:
    """One redis-server on ``127.0.0.1:port``, its config, log and (when persisting) data in ``workdir``."""

    def __init__(self, *, workdir: Path, log_path: Path, binary: Path | None = None,
                 password: str | None = None, persist: bool = False) -> None:
        self.workdir, self.log_path, self.persist = workdir, log_path, persist
        self.binary = binary or find_redis()
        self.password = password
        self.port = free_port()
        self.config_path = workdir / "redis.conf"
        self.process: ManagedProcess | None = None

    @classmethod
    def with_password(cls, **kwargs) -> RedisServer:  # noqa: ANN003
        return cls(password=secrets.token_hex(16), **kwargs)

    @property
    def address(self) -> str:
        return f"{HOST}:{self.port}"

    def feast_connection_string(self) -> str:
        """``online_store.connection_string`` of a Feast ``type: redis`` online store."""
        return self.address + (f",password={self.password}" if self.password is not None else "")

    def command(self) -> list[str]:
        return [str(self.binary), str(self.config_path)]

    def call(self, *args: str | bytes | int, timeout: float = 5.0) -> object:
        return call(self.port, *args, password=self.password, timeout=timeout)

    # ---- lifecycle ---------------------------------------------------------------------------------
    def start(self) -> RedisServer:
        """Start (or start again, on the same port) and wait for PING. A port taken by another
        process before the first start is retried on a fresh one; after it the address never moves."""
        first = self.process is None
        start_moving_port_on_clash(self._start_once, self.stop, self.log_path, self._move_port if first else None)
        return self

    def _move_port(self) -> None:
        self.port = free_port()

    def _start_once(self) -> None:
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.config_path.write_text(
            config_text(port=self.port, workdir=self.workdir, password=self.password, persist=self.persist)
        )
        self.config_path.chmod(0o600)
        self.process = ManagedProcess("redis", self.command(), self.log_path)
        process = self.process

        def ready() -> bool:
            process.check_alive()
            return self.call("PING", timeout=2) == "PONG"

        wait_until("redis PING", ready, READY_TIMEOUT, interval=0.1, on_timeout=lambda: tail(self.log_path))
        log.info("redis on %s (%s)", self.address, self.binary)

    def stop(self, grace: float = 5.0) -> None:
        """SIGTERM (Redis shuts down cleanly), SIGKILL after ``grace``. Safe to call twice."""
        if self.process is not None:
            self.process.stop(grace=grace)

    def kill(self) -> None:
        """Stop at once (SIGKILL), as a crashed store: connections are cut, nothing is flushed."""
        self.stop(grace=0.0)

    def restart(self) -> RedisServer:
        self.stop()
        return self.start()

    def alive(self) -> bool:
        return self.process is not None and self.process.alive()
