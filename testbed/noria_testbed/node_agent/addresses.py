"""Pod addresses: each pod gets its own loopback address, so every server can bind its usual port."""

from __future__ import annotations

import ipaddress


class PodAddresses:
    """Pod addresses from a loopback block (e.g. 127.23.0.0/17); the lowest free one is handed
    out, so addresses are reused. Addresses ending in .0, .1 or .255 are skipped."""

    def __init__(self, cidr: str = "127.0.0.0/17") -> None:
        network = ipaddress.IPv4Network(cidr)
        if not network.is_loopback:
            raise ValueError(f"pod CIDR {cidr} is not in 127.0.0.0/8: pods must stay on this machine")
        self._used: set[int] = set()
        self._first = int(network.network_address) + 2
        self._last = int(network.broadcast_address) - 1
        self.cidr = cidr

    def allocate(self) -> str:
        for value in range(self._first, self._last + 1):
            if value not in self._used and value & 0xFF not in (0, 1, 255):
                self._used.add(value)
                return str(ipaddress.IPv4Address(value))
        raise RuntimeError(f"no free pod address left in {self.cidr}")

    def release(self, address: str) -> None:
        self._used.discard(int(ipaddress.IPv4Address(address)))
