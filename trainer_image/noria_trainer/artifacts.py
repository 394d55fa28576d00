"""Writing the artifact set of one version atomically: all four files or none.

The set is written into a hidden temporary sibling of ``v<N>`` and renamed onto ``v<N>`` in one
step, so a reader (the operator, a server, a person) never sees a half-written version and a run
killed midway leaves no ``v<N>``. An existing ``v<N>`` is never overwritten: a version number
names one model forever, and its digest is in an immutable ModelVersion spec.

Only local paths (``file://``, which is how the store PVC is mounted) get a true atomic rename;
object stores have none, so for them the files are written under the temporary prefix and moved.
"""

from __future__ import annotations

import os
import secrets
import shutil
from dataclasses import dataclass

from noria import store


class OutputError(Exception):
    """The output location is not usable: it exists already, or it cannot be written."""


@dataclass(frozen=True)
class OutputLocation:
    uri: str
    path: str
    local: bool

    @classmethod
    def of(cls, uri: str) -> OutputLocation:
        fs, path = store.filesystem(uri)
        protocol = fs.protocol if isinstance(fs.protocol, str) else fs.protocol[0]
        return cls(uri=uri.rstrip("/"), path=path.rstrip("/"), local=protocol in ("file", "local"))

    def file_uri(self, name: str) -> str:
        return store.join(self.uri, name)

    def preflight(self) -> None:
        """Fail early, before hours of training, when the result could not be written: the version
        exists, or the parent cannot be created or written. Leaves nothing behind."""
        fs, _ = store.filesystem(self.uri)
        if fs.exists(self.path):
            raise OutputError(f"output {self.uri} exists already; a version is never overwritten")
        if not self.local:
            return
        parent = os.path.dirname(self.path)
        try:
            os.makedirs(parent, exist_ok=True)
            # a run of this same version killed while writing left its temporary set behind: only one
            # run per pipeline runs at a time, so it is ours to remove
            stale_prefix = f".{os.path.basename(self.path)}.tmp-"
            for entry in os.listdir(parent):
                if entry.startswith(stale_prefix):
                    shutil.rmtree(os.path.join(parent, entry), ignore_errors=True)
            probe = os.path.join(parent, f".{os.path.basename(self.path)}.probe-{secrets.token_hex(4)}")
            os.mkdir(probe)
            os.rmdir(probe)
        except OSError as exc:
            raise OutputError(f"output {self.uri} is not writable: {exc.strerror or exc}") from exc

    def write_atomically(self, files: dict[str, bytes]) -> None:
        fs, _ = store.filesystem(self.uri)
        if fs.exists(self.path):
            raise OutputError(f"output {self.uri} exists already; a version is never overwritten")
        parent, name = os.path.dirname(self.path), os.path.basename(self.path)
        temp = f"{parent}/.{name}.tmp-{secrets.token_hex(6)}"
        try:
            if self.local:
                os.makedirs(temp)
                for file_name, data in files.items():
                    with open(os.path.join(temp, file_name), "wb") as handle:
                        handle.write(data)
                        handle.flush()
                        os.fsync(handle.fileno())
                # rename(2) onto an *empty* directory would succeed, so check again right before it;
                # a non-empty one fails with ENOTEMPTY and is reported as "exists" below.
                if os.path.exists(self.path):
                    raise OutputError(f"output {self.uri} appeared while writing; a version is never overwritten")
                os.rename(temp, self.path)
                _fsync_dir(parent)
            else:
                for file_name, data in files.items():
                    with fs.open(f"{temp}/{file_name}", "wb") as handle:
                        handle.write(data)
                fs.mv(temp, self.path, recursive=True)
        except OutputError:
            raise
        except OSError as exc:
            raise OutputError(f"cannot write the artifact set to {self.uri}: {exc.strerror or exc}") from exc
        finally:
            if self.local and os.path.isdir(temp):
                shutil.rmtree(temp, ignore_errors=True)
            elif not self.local and fs.exists(temp):
                fs.rm(temp, recursive=True)


def _fsync_dir(path: str) -> None:
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
