"""A Noria model server (``noria_server.serve.ModelServer``) on a real loopback port, with an HTTP
client for it: the unit and the integration tests of online features use it the same way."""

from __future__ import annotations

from typing import Any

import httpx
from noria_server.serve import ModelServer


class Served:
    """``async with Served(server) as s``: the server listens, ``s.client`` talks to it; on leaving,
    the client, the server and its feature lookup (if it made one) are closed."""

    def __init__(self, server: ModelServer, timeout: float = 10) -> None:
        self.server = server
        self.timeout = timeout

    async def __aenter__(self) -> Served:
        port = await self.server.http.start("127.0.0.1", 0)
        self.client = httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}", timeout=self.timeout)
        return self

    async def __aexit__(self, *exc: Any) -> None:
        await self.client.aclose()
        await self.server.http.close()
        if self.server.lookup is not None:
            self.server.lookup.close()
