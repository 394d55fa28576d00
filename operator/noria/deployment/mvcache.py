"""The namespace's ModelVersions as the Rollout passes see them: one LIST per namespace, then watch events.

A pass needs every ModelVersion of its namespace (a pipeline's newest approved version is chosen
among them). Listing them on every pass costs O(Rollouts x ModelVersions) per resync: with 1,000 of
each in one namespace that is a million objects decoded a minute. Instead the first pass in a
namespace lists once, and the ModelVersion watch (which the operator has anyway) keeps the copy
current; the handler's own stage writes go in as they return.

A copy can be a moment behind the API server. That is safe because nothing is decided from it
alone: every ModelVersion write carries the resourceVersion read here (a stale one fails with 409 and
the pass re-observes), and the Rollout status, the durable record, is written with its own
precondition first.
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from typing import Any


def _rv(obj: Mapping[str, Any]) -> int | None:
    try:
        return int((obj.get("metadata") or {}).get("resourceVersion") or "")
    except ValueError:
        return None


class ModelVersionCache:
    def __init__(self, relist_seconds: float = 300.0) -> None:
        # A namespace is listed again after this long: a watch that went quiet without an error
        # (a stalled connection) cannot keep a copy stale for longer.
        self.relist_seconds = relist_seconds
        self._listed_at: dict[str, float] = {}
        self._by_ns: dict[str, dict[str, dict[str, Any]]] = {}
        # Events that arrive while a namespace's LIST is in flight (None: deleted), merged into it.
        self._pending: dict[str, dict[str, dict[str, Any] | None]] = {}

    def warm(self, namespace: str) -> bool:
        """Whether ``namespace`` was listed once (before that, its events alone are not the whole set)."""
        listed = self._listed_at.get(namespace)
        return listed is not None and time.monotonic() - listed < self.relist_seconds

    def begin(self, namespace: str) -> None:
        """A LIST of ``namespace`` starts: events from now on are kept for ``fill``."""
        self._pending.setdefault(namespace, {})

    def abandon(self, namespace: str) -> None:
        """The LIST failed: nothing was filled."""
        self._pending.pop(namespace, None)

    def fill(self, namespace: str, listed: list[dict[str, Any]]) -> None:
        """The result of a LIST; entries that events made newer meanwhile are kept."""
        fresh = {mv["metadata"]["name"]: mv for mv in listed}
        for name, mv in self._pending.pop(namespace, {}).items():
            if mv is None:
                fresh.pop(name, None)
            elif name not in fresh or _newer(mv, fresh[name]):
                fresh[name] = mv
        self._by_ns[namespace] = fresh
        self._listed_at[namespace] = time.monotonic()

    def get(self, namespace: str) -> dict[str, dict[str, Any]]:
        return dict(self._by_ns.get(namespace) or {})

    def put(self, mv: Mapping[str, Any]) -> None:
        """A watch event's (or our own write's) object, unless the copy already holds a newer one."""
        meta = mv["metadata"]
        ns, name = meta["namespace"], meta["name"]
        store = self._by_ns.get(ns)
        if store is None:  # not listed yet: only a LIST in flight needs to hear of it
            if ns in self._pending:
                self._pending[ns][name] = dict(mv)
            return
        if name not in store or _newer(mv, store[name]):
            store[name] = dict(mv)

    def remove(self, namespace: str, name: str) -> None:
        store = self._by_ns.get(namespace)
        if store is None:
            if namespace in self._pending:
                self._pending[namespace][name] = None
        else:
            store.pop(name, None)

    def forget(self, namespace: str) -> None:
        self._listed_at.pop(namespace, None)
        self._by_ns.pop(namespace, None)
        self._pending.pop(namespace, None)


def _newer(a: Mapping[str, Any], b: Mapping[str, Any]) -> bool:
    """Whether ``a`` is at least as new as ``b``. resourceVersions are opaque by contract, but every
    API server backed by etcd makes them increasing integers; when one is not, the later arrival wins."""
    ra, rb = _rv(a), _rv(b)
    return ra is None or rb is None or ra >= rb
