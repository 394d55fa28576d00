"""The artifact store layout (docs/architecture.md §4), one place for every path under the store root.

A store root is a URI: ``file:///var/lib/noria/store`` (a PersistentVolumeClaim mounted by trainer and
server pods) or ``s3://bucket/prefix`` with the optional ``s3`` extra. Paths are built here and
opened through fsspec, so the trainer, the server and the operator agree on where things live.
"""

from __future__ import annotations

import datetime as dt
from typing import Final

import fsspec

DEFAULT_STORE_ROOT: Final = "file:///var/lib/noria/store"

MODEL_FILE: Final = "model.skops"
PROFILE_FILE: Final = "profile.json"
METADATA_FILE: Final = "metadata.json"
REPORT_FILE: Final = "report.json"
ARTIFACT_FILES: Final = (MODEL_FILE, PROFILE_FILE, METADATA_FILE, REPORT_FILE)


def join(root: str, *parts: str) -> str:
    """Join URI path segments with exactly one slash between them."""
    out = root.rstrip("/")
    for part in parts:
        out += "/" + str(part).strip("/")
    return out


def namespace_root(root: str, namespace: str) -> str:
    """``<root>/<namespace>/``: everything of one namespace, and the only part of the store its
    ModelVersions may point at (with a trailing slash, so ``ml`` never matches ``ml2``)."""
    return join(root, namespace) + "/"


def pipeline_root(root: str, namespace: str, pipeline: str) -> str:
    return join(root, namespace, pipeline)


def version_dir(root: str, namespace: str, pipeline: str, version: int) -> str:
    """``<root>/<namespace>/<pipeline>/v<N>``: the artifact set of one ModelVersion."""
    return join(root, namespace, pipeline, f"v{int(version)}")


def predictions_dir(root: str, namespace: str, pipeline: str, model_version: str, day: dt.date | None = None) -> str:
    """``<root>/<ns>/<pipeline>/predictions/<version>[/<date>]``: the server's prediction log."""
    base = join(root, namespace, pipeline, "predictions", model_version)
    return join(base, day.isoformat()) if day else base


def feedback_dir(root: str, namespace: str, pipeline: str, day: dt.date | None = None) -> str:
    """``<root>/<ns>/<pipeline>/feedback[/<date>]``: ground-truth labels sent to the feedback endpoint."""
    base = join(root, namespace, pipeline, "feedback")
    return join(base, day.isoformat()) if day else base


def log_file_name(pod: str, seq: int) -> str:
    """``<pod>-<seq>.jsonl``: one writer per pod, so concurrent replicas never share a file."""
    return f"{pod}-{int(seq):06d}.jsonl"


def filesystem(uri: str) -> tuple[fsspec.AbstractFileSystem, str]:
    """The fsspec filesystem serving ``uri`` and the path inside it."""
    fs, path = fsspec.core.url_to_fs(uri)
    return fs, path
