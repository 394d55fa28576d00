"""Model artifacts: the one loader every Noria process uses (server, trainer, demo scoring).

Threat model. The store is shared by trainer Jobs, servers and people with write access to the
volume, and a ModelVersion (URI + digest) may be written by someone who also wrote the file: a
matching sha256 proves the file is the one the ModelVersion names, not that it is harmless. So a
hostile file must never (1) run code, (2) exhaust memory, or (3) hang the loader, and every refusal
names its cause with a machine-readable kind (``ArtifactError.kind``) that the server turns into an
exit code and a termination message (``ArtifactVerificationFailed``), and the trainer into a failed
run. The steps, each before the next one reads anything:

1. **Where**: ``file://`` paths (or a bare path) only with no ``..`` segment; inside the store root
   when one is configured, checked on the path as written and again on the path the opened file
   descriptor really has (an intermediate symlink cannot lead out).
2. **What**: a regular file. ``lstat`` first (a device is never opened), then ``open`` with
   ``O_NOFOLLOW | O_NONBLOCK`` (a symlink is refused, a FIFO can never block) and ``fstat`` on the
   descriptor (same inode, still regular). Its size is checked against the cap before a byte is read.
3. **Which**: sha256 streamed in 1 MiB chunks; only on a match is the file read into memory, and
   hashed again on the way, so a swap between the two reads is caught.
4. **Shape**: the zip's central directory is counted by hand before ``zipfile`` parses it; then each
   member's declared size, the total, the compression ratio, ``schema.json``'s size, and the bytes
   the schema asks skops to read (a member named a thousand times is read a thousand times) are
   checked; every member is inflated in bounded chunks to its declared size with its CRC checked,
   and every ``.npy`` header must describe exactly the bytes that follow it.
5. **Types**: every node of ``schema.json`` — wherever it sits — must be a (skops loader, type) pair
   on the exact list in ``noria.trusted_types``, which is what the trainer writes (no module prefix
   is trusted: ``numpy.testing`` and ``sklearn.utils._testing`` hold helpers that start processes).
   Loaders that call a callable named by the file (constructor-from-reduce, partial, method,
   operator getters) are not on the list at all.
6. Only then does skops build the objects, trusting exactly the names step 5 accepted; then every
   index that compiled prediction code follows unchecked (tree children and features, boosting
   category bitsets, KD/ball-tree nodes, libsvm counts) is checked (``noria.artifact_structure``).

An XGBoost model (what a Dask run writes) is one JSON envelope instead of a zip; after steps 1-3
it gets steps 4-6 of its own in ``noria.xgboost_artifact`` (exact booster and objective lists, tree
indices checked) and is never given to skops.

Peak memory while refusing is the process's baseline plus at most 1 MiB for steps 1–3; a file that
passes the digest check costs its size plus, for step 4, ``schema.json`` (≤ ``max_schema_bytes``)
and one inflate buffer. docs/security/artifacts.md has the figures and the kinds.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import re
import stat
import struct
import zipfile
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any, Final

from noria.trusted_types import BIT_GENERATOR_KEY, TRUSTED_TYPES

DIGEST_PATTERN: Final = re.compile(r"^sha256:[0-9a-f]{64}$")
CHUNK: Final = 1 << 20

# --- refusal kinds (CamelCase, machine-readable) and the server's exit code for each -------------
INVALID_DIGEST: Final = "InvalidDigest"  # the expected digest is not sha256:<64 hex>
DIGEST_MISMATCH: Final = "DigestMismatch"  # the file's sha256 differs (or changed while reading)
OUTSIDE_STORE: Final = "OutsideStore"  # not a file:// path, a `..` segment, or outside the store root
NOT_A_REGULAR_FILE: Final = "NotARegularFile"  # symlink, FIFO, device, directory, socket
UNREADABLE: Final = "Unreadable"  # missing, no permission, I/O error
TOO_LARGE: Final = "TooLarge"  # file, member, total, schema.json or bytes the schema reads over a cap
TOO_MANY_MEMBERS: Final = "TooManyMembers"  # more zip members than the cap
SUSPICIOUS_COMPRESSION: Final = "SuspiciousCompression"  # ratio, lying sizes, bad CRC, odd method
NOT_SKOPS: Final = "NotSkops"  # not a zip, no schema.json, encrypted, zip64: not what skops writes
MALFORMED: Final = "Malformed"  # a skops file whose content is inconsistent or cannot be built
UNTRUSTED_TYPE: Final = "UntrustedType"  # a node (loader, type) not on the exact trusted list
UNUSABLE_MODEL: Final = "UnusableModel"  # loaded, but not a model the server can serve

EXIT_CODES: Final[dict[str, int]] = {
    INVALID_DIGEST: 10, DIGEST_MISMATCH: 11, OUTSIDE_STORE: 12, NOT_A_REGULAR_FILE: 13, UNREADABLE: 14,
    TOO_LARGE: 15, TOO_MANY_MEMBERS: 16, SUSPICIOUS_COMPRESSION: 17, NOT_SKOPS: 18, MALFORMED: 19,
    UNTRUSTED_TYPE: 20, UNUSABLE_MODEL: 21,
}
EXIT_REFUSED_GENERIC: Final = 3  # any refusal without a kind of its own


class ArtifactError(Exception):
    """The artifact cannot be used; ``kind`` says why in one word, the message in words."""

    def __init__(self, kind: str, message: str) -> None:
        super().__init__(message)
        self.kind, self.message = kind, message

    @property
    def exit_code(self) -> int:
        return EXIT_CODES.get(self.kind, EXIT_REFUSED_GENERIC)

    def __str__(self) -> str:
        return f"{self.kind}: {self.message}"


@dataclass(frozen=True)
class Limits:
    """Caps applied before the bytes they guard are read. Defaults fit every model the trainer's
    allowed estimators produce with room to spare (the largest in the test matrix is under 1 MiB;
    a 500-tree forest on 100k rows is about 150 MiB) and keep a refused artifact cheap."""

    max_file_bytes: int = 512 << 20
    max_member_bytes: int = 512 << 20  # declared uncompressed size of one member
    max_total_bytes: int = 1 << 30  # sum of uncompressed sizes, and of bytes the schema makes skops read
    max_members: int = 20_000
    max_schema_bytes: int = 32 << 20
    max_ratio: float = 100.0  # uncompressed / compressed, for members above ratio_floor_bytes
    ratio_floor_bytes: int = 1 << 20
    max_nodes: int = 500_000
    max_depth: int = 100
    max_profile_bytes: int = 64 << 20


DEFAULT_LIMITS: Final = Limits()


def sha256_digest(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


def sha256_file(path: str) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(CHUNK), b""):
            h.update(chunk)
    return "sha256:" + h.hexdigest()


def dumps_model(model: Any) -> tuple[bytes, list[str]]:
    """Serialise ``model`` with skops; return the bytes and the types skops would not trust by
    default (recorded in metadata so a reviewer can see what the loader will be asked to accept)."""
    import skops.io as sio

    data = sio.dumps(model)
    return data, sorted(sio.get_untrusted_types(data=data))


def is_trusted(loader: str, name: str) -> bool:
    """Whether a skops node of kind ``loader`` may name ``name`` (``module.class``). Exact match only."""
    return name in TRUSTED_TYPES.get(loader, ())


# --- 1-3: where, what, which -------------------------------------------------------------------
def _local_path(uri: str) -> str | None:
    """The local path of a ``file://`` URI or a bare path; None for any other scheme."""
    if uri.startswith("file://"):
        return uri[len("file://"):]
    if "://" in uri:
        return None
    return uri


# Object-store schemes read through fsspec with the same caps (steps 3-6). Which buckets a namespace
# may use is the operator's scope check (noria.artifact_scope); a local file must be in the store.
REMOTE_SCHEMES: Final = ("s3://",)


def _checked_path(uri: str, store_root: str | None) -> str:
    path = _local_path(uri)
    if path is None:
        raise ArtifactError(OUTSIDE_STORE, f"{uri}: only file:// artifacts on the mounted store, or "
                                           f"{', '.join(REMOTE_SCHEMES)} objects, are loaded")
    if not path.startswith("/"):
        raise ArtifactError(OUTSIDE_STORE, f"{uri}: the path must be absolute")
    if ".." in path.split("/"):
        raise ArtifactError(OUTSIDE_STORE, f"{uri}: a '..' segment is not allowed in an artifact path")
    if store_root:
        root = _store_root_path(store_root)
        if not _within(os.path.normpath(path), root):
            raise ArtifactError(OUTSIDE_STORE, f"{uri} is outside the store root {store_root}")
    return path


def _store_root_path(store_root: str) -> str:
    root = _local_path(store_root)
    if root is None or not root.startswith("/"):
        raise ArtifactError(OUTSIDE_STORE, f"store root {store_root!r} is not a local file:// path")
    return os.path.normpath(root)


def _within(path: str, root: str) -> bool:
    return path == root or path.startswith(root.rstrip("/") + "/")


_FILE_KINDS: Final = ((stat.S_ISLNK, "a symbolic link"), (stat.S_ISFIFO, "a FIFO"), (stat.S_ISCHR, "a character device"),
                      (stat.S_ISBLK, "a block device"), (stat.S_ISDIR, "a directory"), (stat.S_ISSOCK, "a socket"))


def _not_regular(mode: int) -> str | None:
    for test, words in _FILE_KINDS:
        if test(mode):
            return words
    return None if stat.S_ISREG(mode) else "not a regular file"


def _open_regular(uri: str, path: str, store_root: str | None, max_bytes: int) -> tuple[int, int]:
    """An open descriptor on the regular file at ``path`` and its size, or ArtifactError."""
    try:
        before = os.lstat(path)
    except FileNotFoundError:
        raise ArtifactError(UNREADABLE, f"{uri}: no such file") from None
    except OSError as exc:
        raise ArtifactError(UNREADABLE, f"{uri}: {exc.strerror or exc}") from exc
    what = _not_regular(before.st_mode)
    if what:
        target = f" (to {os.readlink(path)})" if stat.S_ISLNK(before.st_mode) else ""
        raise ArtifactError(NOT_A_REGULAR_FILE, f"{uri} is {what}{target}; only a regular file is loaded")
    if before.st_size > max_bytes:
        raise ArtifactError(TOO_LARGE, f"{uri} has {before.st_size} bytes, more than the cap of {max_bytes}")
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC)
    except OSError as exc:
        kind = NOT_A_REGULAR_FILE if exc.errno in (40, 6) else UNREADABLE  # ELOOP, ENXIO: swapped meanwhile
        raise ArtifactError(kind, f"{uri}: {exc.strerror or exc}") from exc
    try:
        now = os.fstat(fd)
        what = _not_regular(now.st_mode)
        if what or (now.st_dev, now.st_ino) != (before.st_dev, before.st_ino):
            raise ArtifactError(NOT_A_REGULAR_FILE, f"{uri} was replaced while opening it ({what or 'another file'})")
        if now.st_size > max_bytes:
            raise ArtifactError(TOO_LARGE, f"{uri} has {now.st_size} bytes, more than the cap of {max_bytes}")
        if store_root:
            real = _fd_path(fd) or os.path.realpath(path)
            real_root = os.path.realpath(_store_root_path(store_root))
            if not _within(real, real_root):
                raise ArtifactError(OUTSIDE_STORE, f"{uri} resolves to {real}, outside the store root {store_root}")
            # The store's first level is the namespace (a tenant): a symlinked directory in ml2/ must
            # not lead into ml/, which the operator's scope check, reading the URI, cannot see.
            top = os.path.relpath(os.path.normpath(path), _store_root_path(store_root)).split("/")[0]
            if not _within(real, os.path.join(real_root, top)):
                raise ArtifactError(OUTSIDE_STORE, f"{uri} resolves to {real}, outside {top}/ of the store root "
                                                   f"{store_root} (a symlinked directory leads elsewhere)")
        return fd, now.st_size
    except BaseException:
        os.close(fd)
        raise


def _fd_path(fd: int) -> str | None:
    try:
        return os.readlink(f"/proc/self/fd/{fd}")
    except OSError:
        return None


def _read_fd(fd: int, size: int, uri: str, keep: bool) -> tuple[str, bytes]:
    """Stream ``size`` bytes from the start of ``fd``: (digest, the bytes if ``keep`` else b"")."""
    os.lseek(fd, 0, os.SEEK_SET)
    h = hashlib.sha256()
    buffer = bytearray(size) if keep else None
    view = memoryview(buffer) if buffer is not None else None
    chunk = bytearray(min(CHUNK, max(size, 1)))
    done = 0
    while done < size:
        want = min(len(chunk), size - done)
        try:
            got = os.readv(fd, [memoryview(chunk)[:want]])
        except BlockingIOError:
            continue
        except OSError as exc:
            raise ArtifactError(UNREADABLE, f"{uri}: {exc.strerror or exc}") from exc
        if got == 0:
            raise ArtifactError(DIGEST_MISMATCH, f"{uri} shrank while reading it ({done} of {size} bytes)")
        h.update(memoryview(chunk)[:got])
        if view is not None:
            view[done:done + got] = memoryview(chunk)[:got]
        done += got
    if os.read(fd, 1):
        raise ArtifactError(DIGEST_MISMATCH, f"{uri} grew while reading it (more than {size} bytes)")
    return "sha256:" + h.hexdigest(), bytes(buffer) if buffer is not None else b""


def _check_digest_form(expected_digest: str) -> None:
    if not DIGEST_PATTERN.match(expected_digest or ""):
        raise ArtifactError(INVALID_DIGEST, f"expected digest {expected_digest!r} is not of the form sha256:<64 hex>")


def read_verified(uri: str, expected_digest: str, store_root: str | None = None,
                  limits: Limits = DEFAULT_LIMITS) -> bytes:
    """The bytes of the regular file (or object) at ``uri`` whose sha256 is ``expected_digest``,
    read with bounds: hashed once as a stream (a mismatch costs no memory), then read again into
    memory and hashed on the way (a swap between the two reads is caught)."""
    _check_digest_form(expected_digest)
    if uri.startswith(REMOTE_SCHEMES):
        first, _ = _remote_read(uri, limits.max_file_bytes, keep=False)
        _check_digest(first, expected_digest, "object")
        second, data = _remote_read(uri, limits.max_file_bytes, keep=True)
        if second != expected_digest:
            raise ArtifactError(DIGEST_MISMATCH, f"digest mismatch: {uri} changed while reading it (now {second})")
        return data
    path = _checked_path(uri, store_root)
    fd, size = _open_regular(uri, path, store_root, limits.max_file_bytes)
    try:
        first, _ = _read_fd(fd, size, uri, keep=False)
        _check_digest(first, expected_digest, "file")
        second, data = _read_fd(fd, size, uri, keep=True)
        if second != expected_digest:
            raise ArtifactError(DIGEST_MISMATCH, f"digest mismatch: {uri} changed while reading it (now {second})")
        return data
    finally:
        os.close(fd)


def _check_digest(actual: str, expected_digest: str, what: str) -> None:
    if actual != expected_digest:
        raise ArtifactError(DIGEST_MISMATCH, f"digest mismatch: the {what} has {actual}, the ModelVersion says "
                                              f"{expected_digest}")


def read_bounded(uri: str, store_root: str | None = None, max_bytes: int = DEFAULT_LIMITS.max_profile_bytes) -> bytes:
    """A companion file (the drift profile) read with the same rules, without a digest to match."""
    if uri.startswith(REMOTE_SCHEMES):
        return _remote_read(uri, max_bytes, keep=True)[1]
    path = _checked_path(uri, store_root)
    fd, size = _open_regular(uri, path, store_root, max_bytes)
    try:
        return _read_fd(fd, size, uri, keep=True)[1]
    finally:
        os.close(fd)


def sha256_object(uri: str, max_bytes: int = DEFAULT_LIMITS.max_file_bytes) -> str:
    """The sha256 of the object at ``uri``, streamed (what the trainer checks a written object with)."""
    return _remote_read(uri, max_bytes, keep=False)[0]


def _remote_read(uri: str, max_bytes: int, keep: bool) -> tuple[str, bytes]:
    """An object-store object streamed in 1 MiB reads: (its sha256, its bytes if ``keep`` else b"").
    Its size from metadata is checked against the cap before a byte is read, and the stream is cut
    one chunk past the cap should the object hold more than it said. There is no FIFO or device
    behind an object store; which buckets a namespace may read is noria.artifact_scope's check."""
    if ".." in uri.split("/"):
        raise ArtifactError(OUTSIDE_STORE, f"{uri}: a '..' segment is not allowed in an artifact path")
    h, parts, total = hashlib.sha256(), [], 0
    try:
        import fsspec

        fs, path = fsspec.core.url_to_fs(uri)
        size = int(fs.size(path) or 0)
        if size > max_bytes:
            raise ArtifactError(TOO_LARGE, f"{uri} has {size} bytes, more than the cap of {max_bytes}")
        # block_size: s3fs would otherwise buffer 50 MiB ahead of each read
        with fs.open(path, "rb", block_size=CHUNK, cache_type="readahead") as handle:
            while chunk := handle.read(CHUNK):
                total += len(chunk)
                if total > max_bytes:
                    raise ArtifactError(TOO_LARGE, f"{uri} holds more than the cap of {max_bytes} bytes")
                h.update(chunk)
                if keep:
                    parts.append(chunk)
    except ArtifactError:
        raise
    except (OSError, ImportError, ValueError) as exc:
        from noria.objectstore import redacted

        raise ArtifactError(UNREADABLE, redacted(f"{uri}: {exc}")) from None
    return "sha256:" + h.hexdigest(), b"".join(parts)


# --- 4: the archive's shape ---------------------------------------------------------------------
_EOCD: Final = struct.Struct("<4s4H2LH")
_CENTRAL: Final = struct.Struct("<4s4B4HL2L5H2L")
_SKOPS_METHODS: Final = frozenset({zipfile.ZIP_STORED, zipfile.ZIP_DEFLATED})


@dataclass(frozen=True)
class Archive:
    schema: dict[str, Any]
    sizes: dict[str, int]  # member name -> uncompressed bytes (verified by inflating it)


def _central_directory(data: bytes, limits: Limits) -> tuple[int, int]:
    """(offset, size) of the central directory after counting its entries against the cap, so
    ``zipfile`` never builds more than ``max_members`` entries."""
    tail_start = max(0, len(data) - (_EOCD.size + 0xFFFF))
    at = data.rfind(b"PK\x05\x06", tail_start)
    if at < 0 or at + _EOCD.size > len(data):
        raise ArtifactError(NOT_SKOPS, "not a skops artifact: not a zip archive (a skops file is a zip holding "
                                       "schema.json); a pickle or any other format ends here, unread")
    _, disk, cd_disk, _, _, cd_size, cd_offset, _ = _EOCD.unpack_from(data, at)
    if disk or cd_disk or cd_size == 0xFFFFFFFF or cd_offset == 0xFFFFFFFF or data.rfind(b"PK\x06\x07", tail_start) >= 0:
        raise ArtifactError(NOT_SKOPS, "multi-disk or zip64 archive; skops files are neither")
    if cd_offset + cd_size > at:
        raise ArtifactError(NOT_SKOPS, "the zip's central directory lies outside the file (truncated?)")
    count, pos, end = 0, cd_offset, cd_offset + cd_size
    while pos < end:
        if data[pos:pos + 4] != b"PK\x01\x02" or pos + _CENTRAL.size > end:
            raise ArtifactError(NOT_SKOPS, "the zip's central directory is corrupt (truncated?)")
        fields = _CENTRAL.unpack_from(data, pos)
        count += 1
        if count > limits.max_members:
            raise ArtifactError(TOO_MANY_MEMBERS, f"the archive has more than {limits.max_members} members")
        pos += _CENTRAL.size + fields[12] + fields[13] + fields[14]
    return cd_offset, cd_size


def check_archive(data: bytes, limits: Limits = DEFAULT_LIMITS) -> Archive:
    """Refuse a zip that is too big, too many, too compressed or inconsistent; return its parsed
    ``schema.json`` and verified member sizes. Nothing is inflated past a declared size."""
    _central_directory(data, limits)
    try:
        archive = zipfile.ZipFile(io.BytesIO(data))
    except (zipfile.BadZipFile, ValueError, OSError, EOFError) as exc:
        raise ArtifactError(NOT_SKOPS, f"not a readable zip archive: {exc}") from exc
    with archive:
        infos = archive.infolist()
        _check_declared(infos, limits)
        sizes: dict[str, int] = {}
        schema_bytes = b""
        for info in infos:
            header = _inflate_checked(archive, info, keep_all=info.filename == "schema.json")
            sizes[info.filename] = info.file_size
            if info.filename == "schema.json":
                schema_bytes = header
            elif info.filename.endswith(".npy"):
                _check_npy_header(info.filename, header, info.file_size)
    try:
        schema = json.loads(schema_bytes)
    except (ValueError, RecursionError) as exc:
        raise ArtifactError(MALFORMED, f"schema.json is not JSON: {exc}") from exc
    if not isinstance(schema, dict):
        raise ArtifactError(MALFORMED, "schema.json is not a JSON object")
    return Archive(schema, sizes)


def _check_declared(infos: list[zipfile.ZipInfo], limits: Limits) -> None:
    names = [i.filename for i in infos]
    if len(set(names)) != len(names):
        raise ArtifactError(MALFORMED, "the archive holds two members of the same name")
    if "schema.json" not in names:
        raise ArtifactError(NOT_SKOPS, "the archive has no schema.json: not a skops file")
    total = 0
    for info in infos:
        name, size, packed = info.filename, info.file_size, info.compress_size
        if info.flag_bits & 0x1:
            raise ArtifactError(NOT_SKOPS, f"member {name} is encrypted")
        if info.compress_type not in _SKOPS_METHODS:
            raise ArtifactError(SUSPICIOUS_COMPRESSION, f"member {name} uses compression method "
                                                        f"{info.compress_type}; only stored and deflate are read")
        if info.compress_type == zipfile.ZIP_STORED and size != packed:
            raise ArtifactError(SUSPICIOUS_COMPRESSION, f"stored member {name} declares {size} bytes "
                                                        f"but occupies {packed}")
        if name == "schema.json" and size > limits.max_schema_bytes:
            raise ArtifactError(TOO_LARGE, f"schema.json declares {size} bytes, more than the cap of "
                                           f"{limits.max_schema_bytes}")
        if size > limits.max_member_bytes:
            raise ArtifactError(TOO_LARGE, f"member {name} declares {size} bytes uncompressed, more than the "
                                           f"cap of {limits.max_member_bytes}")
        if size > limits.ratio_floor_bytes and size > limits.max_ratio * max(packed, 1):
            raise ArtifactError(SUSPICIOUS_COMPRESSION, f"member {name} inflates {packed} bytes to {size} "
                                                        f"(ratio {size / max(packed, 1):.0f}, cap {limits.max_ratio:g})")
        total += size
        if total > limits.max_total_bytes:
            raise ArtifactError(TOO_LARGE, f"the members declare more than {limits.max_total_bytes} bytes "
                                           "uncompressed in total")


_NPY_HEADER_PEEK: Final = 16 << 10


def _inflate_checked(archive: zipfile.ZipFile, info: zipfile.ZipInfo, keep_all: bool) -> bytes:
    """Inflate one member in bounded chunks up to its declared size (zipfile stops there and
    checks the CRC); return all of it when ``keep_all``, else its first bytes."""
    kept = bytearray()
    seen = 0
    try:
        with archive.open(info) as member:
            while True:
                chunk = member.read(CHUNK)
                if not chunk:
                    break
                seen += len(chunk)
                if seen > info.file_size:  # zipfile never hands out more; kept as a second fence
                    raise ArtifactError(SUSPICIOUS_COMPRESSION, f"member {info.filename} inflates past its "
                                                                f"declared {info.file_size} bytes")
                if keep_all or len(kept) < _NPY_HEADER_PEEK:
                    kept += chunk if keep_all else chunk[:_NPY_HEADER_PEEK - len(kept)]
    except ArtifactError:
        raise
    except (zipfile.BadZipFile, EOFError, OSError, ValueError) as exc:  # zlib.error is an Exception, below
        raise ArtifactError(SUSPICIOUS_COMPRESSION, f"member {info.filename} does not inflate to what its "
                                                    f"header declares: {exc}") from exc
    except Exception as exc:
        raise ArtifactError(SUSPICIOUS_COMPRESSION, f"member {info.filename} is corrupt: {exc}") from exc
    if seen != info.file_size:
        raise ArtifactError(SUSPICIOUS_COMPRESSION, f"member {info.filename} declares {info.file_size} bytes "
                                                    f"but holds {seen}")
    return bytes(kept)


def _check_npy_header(name: str, head: bytes, size: int) -> None:
    """A ``.npy`` member must describe exactly the bytes that follow its header, with no objects,
    so numpy never allocates for a shape the file does not hold."""
    from numpy.lib import format as npy

    buffer = io.BytesIO(head)
    try:
        version = npy.read_magic(buffer)
        if version == (1, 0):
            shape, _, dtype = npy.read_array_header_1_0(buffer)
        elif version == (2, 0):
            shape, _, dtype = npy.read_array_header_2_0(buffer)
        else:
            raise ValueError(f"npy format version {version} is not read")
    except (ValueError, OSError, EOFError, SyntaxError) as exc:
        raise ArtifactError(MALFORMED, f"member {name} is not an npy array: {exc}") from exc
    if dtype.hasobject:
        raise ArtifactError(MALFORMED, f"member {name} holds Python objects (dtype {dtype}); skops never writes those")
    count = 1
    for dim in shape:
        count *= int(dim)
    if buffer.tell() + count * dtype.itemsize != size:
        raise ArtifactError(MALFORMED, f"member {name} declares shape {shape} of {dtype} "
                                       f"({count * dtype.itemsize} bytes) but holds {size - buffer.tell()}")


# --- 5: exact trust -----------------------------------------------------------------------------
def bit_generator_name(node: dict[str, Any]) -> str | None:
    """The bit generator class a ``RandomGeneratorNode`` makes skops call, read from its raw state."""
    try:
        raw = node["content"]["bit_generator"]["content"]["bit_generator"]["content"]
        name = json.loads(raw)
    except (KeyError, TypeError, ValueError):
        return None
    return name if isinstance(name, str) else None


def _nodes(schema: dict[str, Any], limits: Limits) -> Iterator[tuple[dict[str, Any], int]]:
    """Every node dict in the schema with its node depth, however deep it hides, within the caps."""
    stack: list[tuple[Any, int]] = [(schema, 0)]
    count = 0
    while stack:
        item, depth = stack.pop()
        if isinstance(item, dict):
            if "__loader__" in item or "__class__" in item or "__module__" in item:
                count += 1
                depth += 1
                if count > limits.max_nodes:
                    raise ArtifactError(TOO_LARGE, f"schema.json has more than {limits.max_nodes} nodes")
                if depth > limits.max_depth:
                    raise ArtifactError(MALFORMED, f"schema.json nests nodes deeper than {limits.max_depth}")
                yield item, depth
            stack.extend((value, depth) for value in item.values())
        elif isinstance(item, list):
            stack.extend((value, depth) for value in item)


def audit_schema(archive: Archive, limits: Limits = DEFAULT_LIMITS) -> list[str]:
    """Refuse any node not on the trusted list and any schema that would make skops read more
    than the caps; return the type names skops must be told to trust."""
    refused: set[str] = set()
    accepted: set[str] = set()
    reads: dict[tuple[Any, str], int] = {}
    for node, _ in _nodes(archive.schema, limits):
        loader, module, cls = node.get("__loader__"), node.get("__module__"), node.get("__class__")
        if not all(isinstance(v, str) and v for v in (loader, module, cls)):
            raise ArtifactError(MALFORMED, f"a schema node lacks a string loader, module or class: "
                                           f"{_short(node)}")
        name = f"{module}.{cls}"
        if not is_trusted(loader, name):  # type: ignore[arg-type]
            refused.add(f"{name} (as {loader})")
            continue
        accepted.add(name)
        if loader == "RandomGeneratorNode":
            generator = f"numpy.random.{bit_generator_name(node)}"
            if not is_trusted(BIT_GENERATOR_KEY, generator):
                refused.add(f"{generator} (bit generator)")
            accepted.add(generator)
        member = node.get("file")
        if member is not None:
            if not isinstance(member, str) or member not in archive.sizes:
                raise ArtifactError(MALFORMED, f"a {loader} node names member {member!r}, which the archive lacks")
            reads[(_memo_key(node), member)] = archive.sizes[member]
    if refused:
        listed = sorted(refused)
        more = f" and {len(listed) - 20} more" if len(listed) > 20 else ""
        raise ArtifactError(UNTRUSTED_TYPE, "untrusted types: the artifact names types Noria never writes: "
                                            + ", ".join(listed[:20]) + more)
    total_reads = sum(reads.values())
    if total_reads > limits.max_total_bytes:
        raise ArtifactError(TOO_LARGE, f"schema.json makes the loader read {total_reads} bytes of members, more "
                                       f"than the cap of {limits.max_total_bytes}")
    return sorted(accepted)


def _memo_key(node: dict[str, Any]) -> Any:
    """The key skops memoises a node under (a truthy ``__id__``; equal ids are built once and
    read their member once), or a key of its own for a node skops builds every time."""
    saved = node.get("__id__")
    if saved and isinstance(saved, (int, float, str)):
        return saved
    return ("unmemoised", id(node))


def _short(node: dict[str, Any]) -> str:
    text = json.dumps({k: node[k] for k in list(node)[:4]}, default=str)
    return text if len(text) <= 200 else text[:199] + "…"


# --- 6: build ----------------------------------------------------------------------------------
def loads_verified(data: bytes, expected_digest: str, limits: Limits = DEFAULT_LIMITS) -> Any:
    """Check the digest, the archive and every type, then let skops build the object."""
    _check_digest_form(expected_digest)
    actual = sha256_digest(data)
    if actual != expected_digest:
        raise ArtifactError(DIGEST_MISMATCH, f"digest mismatch: the file has {actual}, the ModelVersion says "
                                              f"{expected_digest}")
    return _build(data, limits)


def _build(data: bytes, limits: Limits) -> Any:
    if len(data) > limits.max_file_bytes:
        raise ArtifactError(TOO_LARGE, f"the artifact has {len(data)} bytes, more than the cap of "
                                       f"{limits.max_file_bytes}")
    from noria import xgboost_artifact

    if xgboost_artifact.is_envelope(data):  # a Dask run's XGBoost model: its own checks, no skops
        return xgboost_artifact.loads(data, limits)
    archive = check_archive(data, limits)
    trusted = audit_schema(archive, limits)
    import skops.io as sio

    try:
        model = sio.loads(data, trusted=trusted)
    except Exception as exc:  # anything skops or numpy raise while building is a malformed file
        raise ArtifactError(MALFORMED, f"skops could not build the model: {type(exc).__name__}: "
                                       f"{str(exc)[:300]}") from exc
    from noria.artifact_structure import StructureError, check_model_structure

    try:
        check_model_structure(model)
    except StructureError as exc:
        raise ArtifactError(MALFORMED, f"an index a prediction would follow is out of range: {exc}") from exc
    except (AttributeError, TypeError, ValueError, IndexError, KeyError) as exc:
        raise ArtifactError(MALFORMED, f"the model's arrays are not what scikit-learn builds: "
                                       f"{type(exc).__name__}: {str(exc)[:300]}") from exc
    return model


def load_verified(uri: str, expected_digest: str, store_root: str | None = None,
                  limits: Limits = DEFAULT_LIMITS) -> Any:
    """The model at ``uri`` (a ``file://`` path) if every check passes; else ArtifactError."""
    return _build(read_verified(uri, expected_digest, store_root, limits), limits)
