"""Each pod's own network namespace, in miniature: Python imports this module at start-up in every
process the node agent runs (its directory is first on the pod's PYTHONPATH).

In a cluster every pod has its own network namespace, so two replicas of one Deployment may both
listen on 0.0.0.0:8080 (the chart's operator does, for its liveness endpoint and /metrics). Here
all pods share this machine's, each with its own loopback address, so the second replica's bind
would fail with "address in use". A bind to the IPv4 wildcard therefore becomes a bind to the
pod's own address (``NORIA_TESTBED_POD_IP``): the listeners no longer collide, and each is reached
at its pod IP, as probes and Services reach it in a cluster. Nothing else changes.
"""

import os
import socket

_POD_IP = os.environ.get("NORIA_TESTBED_POD_IP", "")

if _POD_IP:
    _bind = socket.socket.bind

    def _bind_in_pod(self: socket.socket, address: object) -> None:
        if self.family == socket.AF_INET and isinstance(address, tuple) and address and address[0] in ("", "0.0.0.0"):
            address = (_POD_IP, *address[1:])
        _bind(self, address)

    socket.socket.bind = _bind_in_pod  # type: ignore[method-assign]
