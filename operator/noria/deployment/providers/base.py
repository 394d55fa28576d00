"""The traffic-provider protocol (docs/conventions.md, item 6): one small interface, one module per backend.

``ensure`` creates what the provider itself needs (the router's Deployment, nothing for a Service
switch); ``set_weights`` makes the split (and the mirror) true and is a no-op when it already is;
``get_weights`` reads back what the data plane was told; ``finalize`` (the Rollout is deleted) undoes
what the provider changed outside the objects the Rollout owns -- those go by garbage collection --
so that nothing of the user's is left pointing at them.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Protocol


class TrafficProviderError(Exception):
    """The provider cannot carry out a split (missing HTTPRoute, unsupported mirror, ...)."""


class TrafficProvider(Protocol):
    name: str

    async def ensure(self) -> None: ...

    async def set_weights(self, weights: Mapping[str, int], mirror: tuple[str, int] | None) -> bool:
        """Make ``weights`` (version → percent) and the mirror true; return whether anything changed."""
        ...

    async def get_weights(self) -> dict[str, int] | None: ...

    async def finalize(self, stable: str | None) -> None: ...
