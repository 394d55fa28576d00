"""The router's configuration, typed once for both ends: the operator writes it
(``noria.deployment.objects.router_config`` into the ConfigMap ``<rollout>-router``, key
``config.json``) and the router reads it (``noria_server.router_config``, which re-exports this).
Contract in docs/contracts.md.

Config JSON (or a file given to the router)::

    {"model": "churn", "namespace": "ml",
     "backends": [{"version": "churn-v6", "service": "churn-churn-v6", "port": 8080, "weight": 90, "url": null},
                  {"version": "churn-v7", "service": "churn-churn-v7", "port": 8080, "weight": 10, "url": null}],
     "shadow": {"version": "churn-v8", "service": "churn-churn-v8", "port": 8080, "mirrorPercent": 100,
                "url": null} | null}

``url`` (e.g. ``http://127.0.0.1:9001``) bypasses endpoint discovery. Weights are non-negative
integers; at least one must be positive for the router to take it (the operator writes an empty list
first, before any version is ready: the router refuses that one and answers 503 "no config yet", or
keeps its last good config).

Pure and standard-library only: the server image and the operator both import it, and a config is
parsed once per change, so the stdlib ``json`` is fast enough.
"""

from __future__ import annotations

import json
import math
from bisect import bisect_right
from dataclasses import dataclass, field
from itertools import accumulate
from typing import Any

CONFIG_KEY = "config.json"  # the ConfigMap key the router reads


class ConfigError(ValueError):
    """The router config is unusable; the message names the field."""


@dataclass(frozen=True)
class Backend:
    version: str
    service: str | None
    port: int
    weight: int = 0
    url: str | None = None
    mirror_percent: float = 0.0  # shadow only

    def to_json(self, shadow: bool = False) -> dict[str, Any]:
        out: dict[str, Any] = {"version": self.version, "service": self.service, "port": self.port, "url": self.url}
        if shadow:
            mirror = self.mirror_percent
            out["mirrorPercent"] = int(mirror) if float(mirror).is_integer() else mirror
        else:
            out["weight"] = self.weight
        return out


@dataclass(frozen=True)
class RouterConfig:
    model: str
    namespace: str | None
    backends: tuple[Backend, ...]
    shadow: Backend | None = None
    _cumulative: tuple[int, ...] = field(default=(), init=False, compare=False, repr=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "_cumulative", tuple(accumulate(b.weight for b in self.backends)))

    def to_json(self) -> dict[str, Any]:
        """The JSON object the operator writes (the inverse of ``parse_config``)."""
        return {"model": self.model, "namespace": self.namespace,
                "backends": [b.to_json() for b in self.backends],
                "shadow": self.shadow.to_json(shadow=True) if self.shadow is not None else None}

    @property
    def total_weight(self) -> int:
        return self._cumulative[-1] if self._cumulative else 0

    def pick(self, draw: float) -> Backend:
        """The backend for a uniform ``draw`` in [0, 1): version i answers with probability
        ``weight_i / sum(weights)``."""
        target = draw * self.total_weight
        return self.backends[min(bisect_right(self._cumulative, target), len(self.backends) - 1)]

    def by_version(self, version: str) -> Backend | None:
        for b in self.backends:
            if b.version == version:
                return b
        if self.shadow is not None and self.shadow.version == version:
            return self.shadow
        return None

    def mirrors(self, draw: float) -> bool:
        return self.shadow is not None and draw * 100.0 < self.shadow.mirror_percent

    def all_backends(self) -> list[Backend]:
        return list(self.backends) + ([self.shadow] if self.shadow is not None else [])


def _backend(raw: Any, where: str, shadow: bool) -> Backend:
    if not isinstance(raw, dict):
        raise ConfigError(f"{where} must be an object")
    version = raw.get("version")
    if not isinstance(version, str) or not version:
        raise ConfigError(f"{where}.version must be a non-empty string")
    url = raw.get("url")
    service = raw.get("service")
    if url is not None and (not isinstance(url, str) or not url.startswith(("http://", "https://"))):
        raise ConfigError(f"{where}.url must be an http(s) URL or null, got {url!r}")
    if url is None and (not isinstance(service, str) or not service):
        raise ConfigError(f"{where}: give a service name (discovered through EndpointSlices) or a url")
    port = raw.get("port", 8080)
    if not isinstance(port, int) or isinstance(port, bool) or not 0 < port < 65536:
        raise ConfigError(f"{where}.port must be a TCP port number, got {port!r}")
    weight, mirror = 0, 0.0
    if shadow:
        mirror = raw.get("mirrorPercent", 100)
        if not isinstance(mirror, (int, float)) or isinstance(mirror, bool) or not 0 <= mirror <= 100 \
                or math.isnan(mirror):
            raise ConfigError(f"{where}.mirrorPercent must be a number from 0 to 100, got {mirror!r}")
    else:
        weight = raw.get("weight", 0)
        if not isinstance(weight, int) or isinstance(weight, bool) or weight < 0:
            raise ConfigError(f"{where}.weight must be a non-negative integer, got {weight!r}")
    return Backend(version, service, port, weight, url.rstrip("/") if url else None, float(mirror))


def parse_config(data: bytes | str | dict[str, Any]) -> RouterConfig:
    """A config the router can serve with, or ConfigError naming the field."""
    if isinstance(data, dict):
        raw = data
    else:
        try:
            raw = json.loads(data)
        except ValueError as exc:  # JSONDecodeError, or bytes that are not UTF-8
            raise ConfigError(f"router config is not valid JSON: {exc}") from None
    if not isinstance(raw, dict):
        raise ConfigError("router config must be a JSON object")
    model = raw.get("model")
    if not isinstance(model, str) or not model:
        raise ConfigError("model must be a non-empty string (the pipeline name)")
    namespace = raw.get("namespace")
    if namespace is not None and not isinstance(namespace, str):
        raise ConfigError("namespace must be a string")
    backends_raw = raw.get("backends")
    if not isinstance(backends_raw, list) or not backends_raw:
        raise ConfigError("backends must be a non-empty list")
    backends = tuple(_backend(b, f"backends[{i}]", shadow=False) for i, b in enumerate(backends_raw))
    versions = [b.version for b in backends]
    if len(set(versions)) != len(versions):
        raise ConfigError(f"backends list a version twice: {versions}")
    if sum(b.weight for b in backends) <= 0:
        raise ConfigError("backends: at least one weight must be positive")
    shadow = _backend(raw["shadow"], "shadow", shadow=True) if raw.get("shadow") is not None else None
    return RouterConfig(model, namespace, backends, shadow)
