"""A real S3 server for the test bed: SeaweedFS (``weed server -filer -s3``), built from its Go module.

``hack/build-seaweedfs.sh`` builds ``weed`` from the Go module proxy and caches it by version under
``~/.cache/noria/seaweedfs/`` (``SEAWEEDFS_BINARY`` may name a ready one). :class:`SeaweedS3` runs one
master, volume server, filer and S3 gateway in one process on loopback ports chosen once, so the
endpoint stays the same across :meth:`SeaweedS3.restart` (tests stop it in the middle of a training
run or a prediction-log flush) and the data directory is kept. Pods are local processes of the node
agent, so they reach the endpoint as the operator and the tests do.

One identity (an access key and a secret made for each server, never written to its log) may do
everything; the bucket :data:`BUCKET` exists once :meth:`SeaweedS3.start` returns. What a process
needs to use it is :meth:`SeaweedS3.client_env` (the standard ``AWS_*`` variables, which botocore and
s3fs read natively) or, for a Kubernetes Secret, :meth:`SeaweedS3.secret_data`.
"""

from __future__ import annotations

import json
import logging
import secrets
import subprocess
import tempfile
import urllib.request
from pathlib import Path

from noria.objectstore import ACCESS_KEY_ENV, DEFAULT_REGION_ENV, ENDPOINT_ENV, REGION_ENV, SECRET_KEY_ENV

from noria_testbed.binaries import REPO_ROOT
from noria_testbed.processes import (
    ManagedProcess,
    free_port,
    start_moving_port_on_clash,
    tail,
    urlopen,
    wait_until,
)

log = logging.getLogger(__name__)

BUILD_SCRIPT = REPO_ROOT / "hack" / "build-seaweedfs.sh"
BUCKET = "noria"
REGION = "us-east-1"
ACCESS_KEY_ID = "noria-testbed"
# Everything the identity may do: bucket and object reads, writes, listings, tags, administration.
ACTIONS = ("Admin", "Read", "List", "Tagging", "Write")
HOST = "127.0.0.1"
READY_TIMEOUT = 90.0
# The ports the one process listens on: HTTP and gRPC of each component (gRPC would otherwise be
# HTTP + 10000, which a free port near the top of the range cannot have).
COMPONENT_PORTS = (
    "master.port",
    "master.port.grpc",
    "volume.port",
    "volume.port.grpc",
    "filer.port",
    "filer.port.grpc",
    "s3.port",
    "s3.port.grpc",
)


class SeaweedUnavailable(RuntimeError):
    """``weed`` can be neither found nor built; the message says why and what to run."""


def find_weed() -> Path:
    """The ``weed`` binary from ``hack/build-seaweedfs.sh`` (which builds it on first use, else
    answers at once from the cache)."""
    result = subprocess.run(["bash", str(BUILD_SCRIPT)], capture_output=True, text=True)
    lines = result.stdout.strip().splitlines()
    if result.returncode != 0 or not lines:
        raise SeaweedUnavailable(
            f"{BUILD_SCRIPT.name} failed (exit {result.returncode}), run `make seaweedfs`: "
            + " | ".join(result.stderr.strip().splitlines()[-5:])
        )
    weed = Path(lines[-1]) / "weed"
    if not weed.is_file():
        raise SeaweedUnavailable(f"{BUILD_SCRIPT.name} printed {lines[-1]}, which has no weed")
    return weed


def identity_config(access_key_id: str, secret_access_key: str) -> dict:
    """The S3 gateway's identities (``-s3.config``): ours only, no anonymous access."""
    return {
        "identities": [
            {
                "name": "noria-testbed",
                "credentials": [{"accessKey": access_key_id, "secretKey": secret_access_key}],
                "actions": list(ACTIONS),
            }
        ]
    }


class SeaweedS3:
    """One SeaweedFS with an S3 gateway on loopback, its data in ``workdir/data``."""

    def __init__(self, *, workdir: Path, log_path: Path, binary: Path | None = None) -> None:
        self.workdir, self.log_path = workdir, log_path
        self.binary = binary or find_weed()
        self.access_key_id = ACCESS_KEY_ID
        self.secret_access_key = secrets.token_urlsafe(30)
        self.ports = {name: free_port() for name in COMPONENT_PORTS}
        self.endpoint = f"http://{HOST}:{self.ports['s3.port']}"
        self.filer_url = f"http://{HOST}:{self.ports['filer.port']}"
        self.config_path = workdir / "s3-identities.json"
        self.process: ManagedProcess | None = None

    @property
    def store_root(self) -> str:
        """The bucket as a store root: ``s3://noria``."""
        return f"s3://{BUCKET}"

    def client_env(self) -> dict[str, str]:
        """What a process (the operator, a test's s3fs, botocore) needs to reach this server."""
        return {
            ENDPOINT_ENV: self.endpoint,
            REGION_ENV: REGION,
            DEFAULT_REGION_ENV: REGION,
            **self.secret_data(),
        }

    def secret_data(self) -> dict[str, str]:
        """The keys of a Secret that ``spec.store.s3.credentialsSecret`` names."""
        return {ACCESS_KEY_ENV: self.access_key_id, SECRET_KEY_ENV: self.secret_access_key}

    def command(self) -> list[str]:
        return [
            str(self.binary),
            "-logtostderr",  # into our log, not glog files in /tmp
            "server",
            f"-dir={self.workdir / 'data'}",
            f"-ip={HOST}",
            f"-ip.bind={HOST}",
            *(f"-{name}={port}" for name, port in self.ports.items()),
            "-filer",
            "-s3",
            # Their local sockets in the workdir, not /tmp.
            f"-filer.localSocket={self.workdir / 'filer.sock'}",
            f"-s3.localSocket={self.workdir / 's3.sock'}",
            f"-s3.config={self.config_path}",
            "-s3.iam=false",
            "-s3.port.iceberg=0",
            "-s3.port.lance=0",  # catalogs nobody here uses, on fixed default ports
            "-master.telemetry=false",
            "-master.volumeSizeLimitMB=64",
            "-volume.max=16",
        ]

    # ---- lifecycle ---------------------------------------------------------------------------------
    def start(self) -> SeaweedS3:
        """Start (or start again, on the same ports and data) and wait until an object can be written;
        the bucket is created on the first start. A port taken meanwhile by another process is
        retried on fresh ports (only before the first successful start: the endpoint never moves)."""
        first = self.process is None
        start_moving_port_on_clash(self._start_once, self.stop, self.log_path, self._move_ports if first else None)
        if first:
            self._create_bucket()
        return self

    def _move_ports(self) -> None:
        self.ports = {name: free_port() for name in COMPONENT_PORTS}
        self.endpoint = f"http://{HOST}:{self.ports['s3.port']}"
        self.filer_url = f"http://{HOST}:{self.ports['filer.port']}"

    def _start_once(self) -> None:
        (self.workdir / "data").mkdir(parents=True, exist_ok=True)
        self.config_path.write_text(json.dumps(identity_config(self.access_key_id, self.secret_access_key)))
        self.config_path.chmod(0o600)
        self.process = ManagedProcess("seaweedfs", self.command(), self.log_path)
        process = self.process

        def ready() -> bool:
            process.check_alive()
            # The whole write path (master assigns, volume stores, filer records), then the gateway.
            request = urllib.request.Request(
                f"{self.filer_url}/.noria-testbed/ready", data=b"ok", method="PUT"
            )
            with urllib.request.build_opener(urllib.request.ProxyHandler({})).open(
                request, timeout=5
            ) as response:
                if response.status >= 300:
                    return False
            with urlopen(f"{self.endpoint}/healthz", timeout=5) as response:
                return response.status == 200

        wait_until(
            "seaweedfs S3 ready", ready, READY_TIMEOUT, interval=0.5, on_timeout=lambda: tail(self.log_path)
        )

    def _create_bucket(self) -> None:
        """The bucket is a directory under the filer's /buckets (mkdir: POST without a content type)."""
        # An empty Content-Type, or urllib would send a form's and the filer would store a file.
        request = urllib.request.Request(
            f"{self.filer_url}/buckets/{BUCKET}/", data=b"", method="POST", headers={"Content-Type": ""}
        )
        with urllib.request.build_opener(urllib.request.ProxyHandler({})).open(
            request, timeout=10
        ) as response:
            if response.status >= 300:
                raise RuntimeError(f"seaweedfs: creating bucket {BUCKET} failed: HTTP {response.status}")

    def stop(self, grace: float = 10.0) -> None:
        """Stop the server (SIGTERM, then SIGKILL after ``grace``); its data stays. Safe to call twice."""
        if self.process is not None:
            self.process.stop(grace=grace)
        # The gRPC sockets weed puts in the temp directory, named by our ports, whatever its flags say.
        for port in self.ports.values():
            for socket_file in Path(tempfile.gettempdir()).glob(f"seaweedfs-*-{port}.sock"):
                socket_file.unlink(missing_ok=True)

    def kill(self) -> None:
        """Stop at once (SIGKILL), as a crashed or evicted server: whatever was in flight is cut."""
        self.stop(grace=0.0)

    def restart(self) -> SeaweedS3:
        self.stop()
        return self.start()

    def alive(self) -> bool:
        return self.process is not None and self.process.alive()
