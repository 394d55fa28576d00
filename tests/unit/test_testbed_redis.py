"""The test bed's Redis and Feast feature server, without starting them: the redis.conf a server
gets (loopback, no persistence unless asked, the password in the file only), the RESP client, how
find_redis honours NORIA_TESTBED_REDIS, and the `feast serve` command line."""

from __future__ import annotations

import os
import socket
import threading
from pathlib import Path

import pytest
from noria_testbed import binaries, feast_server
from noria_testbed.redis import RedisError, RedisServer, call, config_text, encode


def settings(text: str) -> dict[str, str]:
    return dict(line.split(" ", 1) for line in text.splitlines())


def test_a_default_server_is_loopback_only_in_the_foreground_and_keeps_nothing(tmp_path: Path):
    conf = settings(config_text(port=6399, workdir=tmp_path, password=None, persist=False))
    assert conf["port"] == "6399" and conf["bind"] == "127.0.0.1" and conf["protected-mode"] == "yes"
    assert conf["daemonize"] == "no" and conf["logfile"] == '""'  # stdout: the process log
    assert conf["save"] == '""' and conf["appendonly"] == "no"  # no RDB, no AOF
    assert conf["dir"] == f'"{tmp_path}"'
    assert "requirepass" not in conf and "appendfsync" not in conf


def test_persist_writes_every_command_to_an_append_only_file_and_a_password_goes_in_the_file(tmp_path: Path):
    conf = settings(config_text(port=1, workdir=tmp_path, password="s3cret", persist=True))
    assert conf["appendonly"] == "yes" and conf["appendfsync"] == "always" and conf["save"] == '""'
    assert conf["requirepass"] == "s3cret"
    with pytest.raises(ValueError):
        config_text(port=1, workdir=tmp_path, password="a b", persist=False)


def test_the_server_reads_its_settings_from_a_file_so_no_password_is_in_its_command_line(tmp_path: Path):
    server = RedisServer.with_password(workdir=tmp_path / "r", log_path=tmp_path / "r.log",
                                       binary=Path("/bin/true"))
    assert server.command() == ["/bin/true", str(tmp_path / "r" / "redis.conf")]
    assert server.password and server.password not in " ".join(server.command())
    assert server.feast_connection_string() == f"127.0.0.1:{server.port},password={server.password}"
    plain = RedisServer(workdir=tmp_path, log_path=tmp_path / "l", binary=Path("/bin/true"))
    assert plain.feast_connection_string() == f"127.0.0.1:{plain.port}"


def test_commands_are_resp_arrays_of_bulk_strings():
    assert encode("SET", "k", b"\x00v", 7) == b"*4\r\n$3\r\nSET\r\n$1\r\nk\r\n$2\r\n\x00v\r\n$1\r\n7\r\n"


def fake_redis(replies: list[bytes]) -> tuple[int, list[bytes]]:
    """A one-connection server that answers each command with the next reply; what it got is kept."""
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(1)
    got: list[bytes] = []

    def serve() -> None:
        connection, _ = listener.accept()
        with connection, listener:
            for reply in replies:
                got.append(connection.recv(65536))
                connection.sendall(reply)

    threading.Thread(target=serve, daemon=True).start()
    return listener.getsockname()[1], got


@pytest.mark.parametrize(
    ("reply", "value"),
    [
        (b"+PONG\r\n", "PONG"),
        (b":42\r\n", 42),
        (b"$5\r\nhel\r\n\r\n", b"hel\r\n"),  # a bulk string is read by length, CRLF inside included
        (b"$-1\r\n", None),
        (b"*2\r\n$1\r\na\r\n:1\r\n", [b"a", 1]),
    ],
)
def test_replies_are_decoded_by_type(reply: bytes, value: object):
    port, _ = fake_redis([reply])
    assert call(port, "X") == value


def test_auth_goes_first_and_an_error_reply_raises():
    port, got = fake_redis([b"+OK\r\n", b"-WRONGTYPE Operation against a key\r\n"])
    with pytest.raises(RedisError, match="WRONGTYPE"):
        call(port, "GET", "k", password="pw")
    assert got == [encode("AUTH", "pw"), encode("GET", "k")]


def test_find_redis_takes_an_executable_override_and_refuses_anything_else(tmp_path: Path, monkeypatch):
    server = tmp_path / "redis-server"
    server.write_text("#!/bin/sh\n")
    monkeypatch.setenv(binaries.REDIS_ENV, str(server))
    with pytest.raises(binaries.RedisUnavailable, match="not an executable"):
        binaries.find_redis()
    server.chmod(0o755)
    assert binaries.find_redis() == server


def test_find_redis_says_which_make_target_to_run_when_the_script_fails(tmp_path: Path, monkeypatch):
    failing = tmp_path / "install-redis.sh"
    failing.write_text("echo 'apt-get download failed' >&2; exit 3\n")
    monkeypatch.delenv(binaries.REDIS_ENV, raising=False)
    monkeypatch.setattr(binaries, "REDIS_INSTALL_SCRIPT", failing)
    binaries._installed_redis.cache_clear()
    try:
        with pytest.raises(binaries.RedisUnavailable, match=r"exit 3\), run `make redis`: apt-get download failed"):
            binaries.find_redis()
    finally:
        binaries._installed_redis.cache_clear()


def test_feast_serve_listens_on_loopback_with_one_worker_that_is_never_recycled(monkeypatch, tmp_path: Path):
    cli = tmp_path / "feast"
    cli.write_text("#!/bin/sh\n")
    cli.chmod(0o755)
    monkeypatch.setattr(feast_server, "FEAST_VENV", tmp_path / "venv")
    with pytest.raises(feast_server.FeastUnavailable, match="make feast-venv"):
        feast_server.serve_command(1234)
    (tmp_path / "venv" / "bin").mkdir(parents=True)
    os.symlink(cli, tmp_path / "venv" / "bin" / "feast")
    argv = feast_server.serve_command(1234, registry_ttl_seconds=7)
    assert argv[:3] == [str(tmp_path / "venv" / "bin" / "python"), "-c", feast_server.SERVE_LAUNCHER]
    assert argv[3:6] == ["-f", "feature_store.redis.yaml", "serve"]
    assert argv[-1] == "--no-access-log"
    options = dict(zip(argv[6:-1:2], argv[7:-1:2], strict=True))
    assert options["--host"] == "127.0.0.1" and options["--port"] == "1234"
    assert options["--workers"] == "1" and options["--max-requests"] == "0"
    assert options["--registry_ttl_sec"] == "7"


def test_feast_commands_get_the_store_address_and_no_usage_reporting():
    env = feast_server.feast_env("127.0.0.1:1,password=x", base={"PATH": "/bin"})
    assert env == {"PATH": "/bin", "NORIA_FEAST_REDIS": "127.0.0.1:1,password=x", "FEAST_USAGE": "False",
                   "PYTHONUNBUFFERED": "1"}


def test_the_example_has_a_redis_config_that_reads_the_address_from_the_environment():
    import yaml

    redis_config = yaml.safe_load((feast_server.EXAMPLE / feast_server.REDIS_YAML).read_text())
    training_config = yaml.safe_load((feast_server.EXAMPLE / "feature_store.yaml").read_text())
    assert redis_config["online_store"] == {"type": "redis", "redis_type": "redis",
                                            "connection_string": "${NORIA_FEAST_REDIS}"}
    # Everything training reads is the same: one project, registry and offline store.
    for key in ("project", "provider", "registry", "offline_store", "entity_key_serialization_version"):
        assert redis_config[key] == training_config[key], key
