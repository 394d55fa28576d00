"""Noria's local Kubernetes test bed: a real control plane built from the Go modules, Noria's
node agent (pods as local processes), and Prometheus. See :class:`LocalTestbed`."""

from noria_testbed.testbed import LocalTestbed, NodeAgentProcess

__all__ = ["LocalTestbed", "NodeAgentProcess"]
