"""Where the control-plane binaries come from.

``hack/build-control-plane.sh`` builds etcd, kube-apiserver, kube-controller-manager,
kube-scheduler and kubectl from the Go module proxy and caches them by version under
``~/.cache/noria/k8s/``; its last stdout line is the directory. ``KUBEBUILDER_ASSETS`` (the
envtest convention) may point at ready binaries instead; then nothing is built.
"""

from __future__ import annotations

import functools
import os
import shutil
import subprocess
from dataclasses import dataclass
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


# ---- Prometheus ------------------------------------------------------------------------------------
# hack/build-prometheus.sh builds prometheus + promtool (3.x, with Kubernetes discovery) from the Go
# module proxy into ~/.cache/noria/prometheus/<version>/. Debian's package (hack/install-prometheus.sh,
# 2.42) is the fallback: it has no kubernetes_sd_configs, so with it the test bed's Prometheus reads the
# node agent's http_sd targets instead.
PROMETHEUS_BUILD_SCRIPT = REPO_ROOT / "hack" / "build-prometheus.sh"
# "built" insists on the built one, "debian" forces Debian's; unset: built if it can be had, else Debian's.
PROMETHEUS_CHOICE_ENV = "NORIA_TESTBED_PROMETHEUS"
PROMETHEUS_BUILT, PROMETHEUS_DEBIAN = "built", "debian"


class PrometheusUnavailable(RuntimeError):
    """Neither the built Prometheus nor Debian's can be had; the message says why and what to run."""


@dataclass(frozen=True)
class PrometheusBinaries:
    prometheus: Path
    promtool: Path
    kubernetes_sd: bool  # False: Debian's, without kubernetes_sd_configs (the node agent's http_sd is used)
    origin: str  # one line for the log: which Prometheus and why


def find_prometheus() -> PrometheusBinaries:
    """The Prometheus the test bed runs, chosen by NORIA_TESTBED_PROMETHEUS (see above), building
    it on first use when not cached; the same answer for the whole process (a failed build is not
    retried for every Prometheus started)."""
    return _find_prometheus(os.environ.get(PROMETHEUS_CHOICE_ENV, "").strip().lower())


@functools.cache
def _find_prometheus(choice: str) -> PrometheusBinaries:
    if choice not in ("", PROMETHEUS_BUILT, PROMETHEUS_DEBIAN):
        raise PrometheusUnavailable(f"{PROMETHEUS_CHOICE_ENV}={choice!r}: use {PROMETHEUS_BUILT!r}, "
                                    f"{PROMETHEUS_DEBIAN!r}, or leave it unset")
    if choice == PROMETHEUS_DEBIAN:
        return _debian_prometheus(f"{PROMETHEUS_CHOICE_ENV}={PROMETHEUS_DEBIAN}")
    try:
        return _built_prometheus()
    except PrometheusUnavailable as error:
        if choice == PROMETHEUS_BUILT:
            raise
        return _debian_prometheus(f"the built one is unavailable: {error}")


def _built_prometheus() -> PrometheusBinaries:
    result = subprocess.run(["bash", str(PROMETHEUS_BUILD_SCRIPT)], capture_output=True, text=True)
    lines = result.stdout.strip().splitlines()
    if result.returncode != 0 or not lines:
        raise PrometheusUnavailable(f"{PROMETHEUS_BUILD_SCRIPT.name} failed (exit {result.returncode}): "
                                    + " | ".join(result.stderr.strip().splitlines()[-5:]))
    directory = Path(lines[-1])
    prometheus, promtool = directory / "prometheus", directory / "promtool"
    if not (os.access(prometheus, os.X_OK) and os.access(promtool, os.X_OK)):
        raise PrometheusUnavailable(f"{PROMETHEUS_BUILD_SCRIPT.name} printed {directory}, which lacks "
                                    "prometheus or promtool")
    return PrometheusBinaries(prometheus, promtool, kubernetes_sd=True,
                              origin=f"Prometheus built from the Go module ({directory})")


def _debian_prometheus(why: str) -> PrometheusBinaries:
    prometheus, promtool = shutil.which("prometheus"), shutil.which("promtool")
    if prometheus is None or promtool is None:
        raise PrometheusUnavailable(f"no Prometheus: {why}; and prometheus/promtool are not on PATH "
                                    "(run `make prometheus`, or `make prometheus-debian` for the fallback)")
    return PrometheusBinaries(Path(prometheus), Path(promtool), kubernetes_sd=False,
                              origin=f"Debian's Prometheus on PATH ({prometheus}), because {why}")


# ---- Redis (the Feast online store) ----------------------------------------------------------------
# hack/install-redis.sh unpacks Debian's redis-server (apt-get download + dpkg -x, never installed
# system-wide) into ~/.cache/noria/redis/<version>/ and prints that directory; its redis-server there is
# a wrapper that points the loader at the libraries unpacked with it.
REDIS_INSTALL_SCRIPT = REPO_ROOT / "hack" / "install-redis.sh"
REDIS_ENV = "NORIA_TESTBED_REDIS"  # a ready redis-server to run instead; then nothing is fetched


class RedisUnavailable(RuntimeError):
    """No redis-server can be had; the message says why and what to run."""


def find_redis() -> Path:
    """The redis-server the test bed runs: ``NORIA_TESTBED_REDIS`` when it names an executable, else
    the one ``hack/install-redis.sh`` unpacks (at once from its cache after the first time)."""
    override = os.environ.get(REDIS_ENV, "").strip()
    if override:
        if not os.access(override, os.X_OK):
            raise RedisUnavailable(f"{REDIS_ENV}={override!r} is not an executable")
        return Path(override)
    return _installed_redis()


@functools.cache
def _installed_redis() -> Path:
    result = subprocess.run(["bash", str(REDIS_INSTALL_SCRIPT)], capture_output=True, text=True)
    lines = result.stdout.strip().splitlines()
    if result.returncode != 0 or not lines:
        raise RedisUnavailable(f"{REDIS_INSTALL_SCRIPT.name} failed (exit {result.returncode}), run `make redis`: "
                               + " | ".join(result.stderr.strip().splitlines()[-5:]))
    server = Path(lines[-1]) / "redis-server"
    if not os.access(server, os.X_OK):
        raise RedisUnavailable(f"{REDIS_INSTALL_SCRIPT.name} printed {lines[-1]}, which has no redis-server")
    return server
