"""Observing a data source for the newData trigger: how many rows it holds and a fingerprint.

Blocking file I/O (call it in a thread). Counting rows must stay cheap even for large data, so a
parquet file is counted from its footer (no data read) and every file's count is cached under its
(path, size, mtime): an unchanged partition is never read twice. CSV files are counted by lines.

On ``s3://`` the same code lists with the operator's own AWS credentials: one listing (1,000
objects a request) with sizes and times, no request per file, and at most ``MAX_FILES`` files, past
which the observation is an error that says so rather than a pass that grows with the bucket.
"""

from __future__ import annotations

import hashlib
from typing import Final

from noria import store
from noria.objectstore import redacted

from .triggers import DataObservation

_HIDDEN: Final = (".", "_")  # Spark/Hive markers such as _SUCCESS and editor temp files
_row_cache: dict[tuple[str, int, float], int] = {}
_CACHE_MAX: Final = 20_000


MAX_FILES: Final = 10_000
_READ_BLOCK: Final = 1 << 20  # s3fs would otherwise buffer 50 MiB ahead of each read


def _files(fs, path: str, fmt: str) -> list[dict]:
    pattern = any(ch in path for ch in "*?[")
    folder = not pattern and fs.isdir(path)
    if pattern:
        infos = list(fs.glob(path, detail=True).values())
    elif folder:
        infos = list(fs.find(path, detail=True).values())
    else:
        infos = [fs.info(path)]
    out = []
    for info in infos:
        name = info["name"].rstrip("/").rsplit("/", 1)[-1]
        if info.get("type") == "directory" or name.startswith(_HIDDEN):
            continue
        if folder and not name.endswith(f".{fmt}") and not name.endswith(f".{fmt}.gz"):
            continue
        out.append(info)
    if len(out) > MAX_FILES:
        raise ValueError(f"more than {MAX_FILES} {fmt} files; point spec.data.source at fewer partitions")
    return sorted(out, key=lambda i: i["name"])


def _modified(info: dict) -> float:
    """A file's modification time as a number: local mtime, or an object's LastModified."""
    value = info.get("mtime") or info.get("LastModified") or info.get("created") or 0
    return value.timestamp() if hasattr(value, "timestamp") else float(value)


def _count(fs, info: dict, fmt: str) -> int:
    key = (info["name"], int(info.get("size") or 0), _modified(info))
    if key in _row_cache:
        return _row_cache[key]
    if fmt == "parquet":
        import pyarrow.parquet as pq

        with fs.open(info["name"], "rb", block_size=_READ_BLOCK) as f:
            rows = pq.ParquetFile(f).metadata.num_rows
    else:
        with fs.open(info["name"], "rb", compression="infer", block_size=_READ_BLOCK) as f:
            lines = sum(chunk.count(b"\n") for chunk in iter(lambda: f.read(1 << 20), b""))
        rows = max(0, lines - 1)  # the header
    if len(_row_cache) >= _CACHE_MAX:
        _row_cache.clear()
    _row_cache[key] = rows
    return rows


def observe(uri: str, fmt: str = "parquet") -> DataObservation:
    """Rows and fingerprint of the data at ``uri`` (a file, a folder or a glob), as the operator
    process sees it. Errors come back in the observation, never raised."""
    try:
        fs, path = store.filesystem(uri)
        infos = _files(fs, path, fmt)
        if not infos:
            return DataObservation(error=f"no {fmt} files at {uri}")
        digest = hashlib.sha256()
        for info in infos:
            digest.update(f"{info['name']}\0{info.get('size')}\0{_modified(info)}\n".encode())
        rows: int | None
        try:
            rows = sum(_count(fs, info, fmt) for info in infos)
        except Exception:  # noqa: BLE001 - an unreadable file still lets the fingerprint speak
            rows = None
        return DataObservation(rows=rows, fingerprint="sha256:" + digest.hexdigest())
    except (OSError, ValueError) as exc:
        return DataObservation(error=redacted(f"{type(exc).__name__}: {exc}"))  # it goes into status
