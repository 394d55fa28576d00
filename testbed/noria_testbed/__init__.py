"""Noria's local Kubernetes test bed: a real control plane built from the Go modules, Noria's
node agent (pods as local processes), and Prometheus. See :class:`LocalTestbed`."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from noria_testbed.testbed import LocalTestbed, NodeAgentProcess

__all__ = ["LocalTestbed", "NodeAgentProcess"]


def __getattr__(name: str) -> Any:
    # Imported on first use: `python -m noria_testbed.node_agent` must not import the node agent
    # module twice (once through this package, once as __main__), and noria_testbed.demo stays light.
    if name in __all__:
        from noria_testbed import testbed

        return getattr(testbed, name)
    raise AttributeError(f"module 'noria_testbed' has no attribute {name!r}")
