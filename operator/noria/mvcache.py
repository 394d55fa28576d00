"""The namespace's ModelVersions as the operator's passes see them: one LIST per namespace, then watch events.

Both sides need every ModelVersion of a namespace: a Rollout pass chooses its pipeline's newest
approved version among them, a pipeline pass its champion and its own versions. Listing them on
every pass costs O(objects x ModelVersions) per resync: with 1,000 of each in one namespace that is
a million objects decoded a minute (benchmarks/scale.py measured a pipeline pass at 6.7 s, mostly
that LIST). Instead the first pass in a namespace lists once, and the ModelVersion watch (which the
operator has anyway) keeps the copy current; the handlers' own writes (a registration, a stage) go
in as they return, so the next pass of the same object sees its own write even before its event.

A copy can be a moment behind the API server. That is safe because nothing is decided from it
alone: every ModelVersion write carries the resourceVersion read here (a stale one fails with 409 and
the pass re-observes), a registration is a create (AlreadyExists = registered before), and the
Rollout status, the durable record, is written with its own precondition first.

One copy per process (``shared()``), fed by ``record`` from the ModelVersion event handlers.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable, Mapping
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
        if ns in self._pending:  # a LIST in flight (the first or a relist) must hear of it: it may predate it
            held = self._pending[ns].get(name)
            if held is None or _newer(mv, held):
                self._pending[ns][name] = dict(mv)
        store = self._by_ns.get(ns)
        if store is not None and (name not in store or _newer(mv, store[name])):
            store[name] = dict(mv)

    def remove(self, namespace: str, name: str) -> None:
        if namespace in self._pending:
            self._pending[namespace][name] = None
        store = self._by_ns.get(namespace)
        if store is not None:
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


class SharedModelVersions:
    """The process's copy with its LIST: one LIST per namespace at a time, whoever asks first."""

    def __init__(self, relist_seconds: float = 300.0) -> None:
        self.cache = ModelVersionCache(relist_seconds)
        self._list_locks: dict[str, asyncio.Lock] = {}

    async def get(self, namespace: str,
                  list_all: Callable[[str], Awaitable[list[dict[str, Any]]]]) -> dict[str, dict[str, Any]]:
        """Every ModelVersion of ``namespace`` by name; ``list_all`` lists them when the copy is cold."""
        cache = self.cache
        if not cache.warm(namespace):
            async with self._list_locks.setdefault(namespace, asyncio.Lock()):
                if not cache.warm(namespace):
                    cache.begin(namespace)
                    try:
                        listed = await list_all(namespace)
                    except BaseException:
                        cache.abandon(namespace)
                        raise
                    cache.fill(namespace, listed)
        return cache.get(namespace)

    def record(self, event_type: str | None, body: Mapping[str, Any]) -> None:
        """A ModelVersion watch event."""
        meta = body["metadata"]
        if event_type == "DELETED":
            self.cache.remove(meta["namespace"], meta["name"])
        else:
            self.cache.put(body)


_shared: SharedModelVersions | None = None


def shared() -> SharedModelVersions:
    global _shared
    if _shared is None:
        _shared = SharedModelVersions()
    return _shared
