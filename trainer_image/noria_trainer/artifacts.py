"""Writing the artifact set of one version atomically: all four files or none.

On a local store (``file://``, how the store PVC is mounted) the set is written into a hidden
temporary sibling of ``v<N>`` and renamed onto ``v<N>`` in one step, so a reader (the operator, a
server, a person) never sees a half-written version and a run killed midway leaves no ``v<N>``.

An object store (``s3://``) has no rename, but a PUT or a server-side copy makes one object
appear whole or not at all. So each file is written under a temporary prefix, read back with a
streamed sha256 that must match what was written, and only then copied to its final key, and
``metadata.json`` is copied last: a set is complete exactly when its metadata.json exists, which is
what the output check reads (a pod killed between two copies leaves files without a metadata.json,
which the next pod of the run removes before writing; no ModelVersion can point at them, since one
is registered only from a complete set). The temporary objects are deleted whatever happens.

An existing complete ``v<N>`` is never overwritten: a version number names one model forever, and
its digest is in an immutable ModelVersion spec.
"""

from __future__ import annotations

import os
import secrets
import shutil
from dataclasses import dataclass

from noria import store
from noria.artifact import ArtifactError, sha256_digest, sha256_object
from noria.objectstore import redacted


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

    def exists(self) -> bool:
        """Whether a complete set is at the location (on an object store: its metadata.json, copied last)."""
        fs, _ = store.filesystem(self.uri)
        fs.invalidate_cache()
        return fs.exists(self.path if self.local else f"{self.path}/{store.METADATA_FILE}")

    def preflight(self) -> None:
        """Fail early, before hours of training, when the result could not be written: the version
        exists, or the parent cannot be created or written. Leaves nothing behind."""
        if self.exists():
            raise OutputError(f"output {self.uri} exists already; a version is never overwritten")
        if not self.local:
            self._remove_incomplete_objects()
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

    def _remove_incomplete_objects(self) -> None:
        """What a pod of this run killed while writing left on an object store: temporary objects,
        and final ones of a set that never got its metadata.json (one run per pipeline at a time)."""
        fs, _ = store.filesystem(self.uri)
        parent, name = os.path.dirname(self.path), os.path.basename(self.path)
        try:
            leftovers = fs.glob(f"{parent}/.{name}.tmp-*/*") + fs.glob(f"{self.path}/*")
            if leftovers:
                fs.rm(leftovers)
        except OSError as exc:
            raise OutputError(redacted(f"output {self.uri} is not usable: {exc}")) from None

    def write_atomically(self, files: dict[str, bytes]) -> None:
        if self.exists():
            raise OutputError(f"output {self.uri} exists already; a version is never overwritten")
        parent, name = os.path.dirname(self.path), os.path.basename(self.path)
        temp = f"{parent}/.{name}.tmp-{secrets.token_hex(6)}"
        if self.local:
            self._write_local(temp, parent, files)
        else:
            self._write_objects(temp, files)

    def _write_local(self, temp: str, parent: str, files: dict[str, bytes]) -> None:
        try:
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
        except OSError as exc:
            raise OutputError(f"cannot write the artifact set to {self.uri}: {exc.strerror or exc}") from exc
        finally:
            if os.path.isdir(temp):
                shutil.rmtree(temp, ignore_errors=True)

    def _write_objects(self, temp: str, files: dict[str, bytes]) -> None:
        """Temporary key, streamed digest check, final key (a server-side copy); metadata.json last."""
        fs, _ = store.filesystem(self.uri)
        protocol = self.uri.split("://", 1)[0]
        ordered = sorted(files, key=lambda file_name: file_name == store.METADATA_FILE)
        written: list[str] = []
        try:
            for file_name in ordered:
                key = f"{temp}/{file_name}"
                fs.pipe_file(key, files[file_name])
                written.append(key)
                read_back = sha256_object(f"{protocol}://{key}", max_bytes=len(files[file_name]))
                if read_back != sha256_digest(files[file_name]):
                    raise OutputError(f"{self.uri}/{file_name} read back as {read_back}, not what was written; "
                                      "nothing was published")
            for file_name in ordered:
                fs.copy(f"{temp}/{file_name}", f"{self.path}/{file_name}")
        except ArtifactError as exc:
            raise OutputError(f"cannot verify the artifact set written to {self.uri}: {exc}") from None
        except OSError as exc:
            raise OutputError(redacted(f"cannot write the artifact set to {self.uri}: {exc}")) from None
        finally:
            if written:
                try:
                    fs.rm(written)
                except OSError:
                    pass  # a temporary object left behind is removed by the next run's preflight


def _fsync_dir(path: str) -> None:
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
