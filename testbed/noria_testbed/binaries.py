"""Where the control-plane binaries come from.

``hack/build-control-plane.sh`` builds etcd, kube-apiserver, kube-controller-manager,
kube-scheduler and kubectl from the Go module proxy and caches them by version under
``~/.cache/noria/k8s/``; its last stdout line is the directory. ``KUBEBUILDER_ASSETS`` (the
envtest convention) may point at ready binaries instead; then nothing is built.
"""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

REQUIRED = ("etcd", "kube-apiserver", "kube-controller-manager", "kube-scheduler", "kubectl")
REPO_ROOT = Path(__file__).resolve().parents[2]
BUILD_SCRIPT = REPO_ROOT / "hack" / "build-control-plane.sh"


class BinariesUnavailable(RuntimeError):
    """The control plane can be neither found nor built; the message says why."""


def missing_in(directory: Path) -> list[str]:
    return [name for name in REQUIRED if not os.access(directory / name, os.X_OK)]


def find_binaries(*, build: bool = True) -> Path:
    """The directory holding every binary in REQUIRED, building them when allowed and needed."""
    assets = os.environ.get("KUBEBUILDER_ASSETS")
    if assets and not missing_in(Path(assets)):
        return Path(assets)
    if not BUILD_SCRIPT.exists():
        raise BinariesUnavailable(f"{BUILD_SCRIPT} not found and KUBEBUILDER_ASSETS={assets!r} is incomplete")
    if not build:
        raise BinariesUnavailable("control-plane binaries not cached and building is disabled")
    result = subprocess.run(["bash", str(BUILD_SCRIPT)], capture_output=True, text=True)
    lines = result.stdout.strip().splitlines()
    if result.returncode != 0 or not lines:
        raise BinariesUnavailable(f"{BUILD_SCRIPT} failed (exit {result.returncode}):\n"
                                  + "\n".join(result.stderr.strip().splitlines()[-30:]))
    directory = Path(lines[-1])
    missing = missing_in(directory)
    if missing:
        raise BinariesUnavailable(f"{BUILD_SCRIPT} printed {directory}, which lacks {', '.join(missing)}")
    return directory
