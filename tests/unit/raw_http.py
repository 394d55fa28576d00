"""Raw HTTP/1.1 on asyncio streams for the router's unit tests: backends that behave (or die) as a test
needs, and a client that opens a fresh connection, so no HTTP library smooths over what happens."""

from __future__ import annotations

import asyncio
import time


async def read_request(reader: asyncio.StreamReader) -> bytes:
    """One request's head and its content-length body from ``reader``; returns the body."""
    head = await reader.readuntil(b"\r\n\r\n")
    length = next(int(line.split(b":")[1]) for line in head.split(b"\r\n") if line.lower().startswith(b"content-length"))
    return await reader.readexactly(length)


async def post_once(port: int) -> tuple[int, float]:
    """One request on a fresh client connection: (status, seconds)."""
    started = time.monotonic()
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        writer.write(b"POST /v2/models/churn/infer HTTP/1.1\r\nhost: r\r\ncontent-type: application/json\r\n"
                     b"content-length: 2\r\n\r\n{}")
        status_line = await asyncio.wait_for(reader.readline(), 10)
        return int(status_line.split()[1]), time.monotonic() - started
    finally:
        writer.close()
