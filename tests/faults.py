"""Fault backends for :class:`~fakes.RawServer`: each reads one request, then
misbehaves in one exact way no HTTP library would. Plus :func:`burst`, the live
traffic that flows while a fault runs.

The handlers that leave their connection open after the fault (``hang``,
``garbage``, ``malformed``) wait for the proxy to close it: a proxy that keeps
a broken connection leaves their task running, which the leak checks see.
"""

from __future__ import annotations

import asyncio
import socket
import struct
from typing import Any

import aiohttp
from conftest import Proxy
from fakes import Handler, RawConn

# The faulty backend's timeout: short where the fault is being too slow, long
# (never reached) for every other fault, which must not turn into a timeout
# when a busy machine makes a 20 MiB answer or a crowded burst slow.
TIMEOUT = 1.0
PATIENT = 30.0
SLOW = TIMEOUT + 1.0  # a slow backend answers, but after the timeout
TIMED = frozenset({"slow", "hang"})


def timeout(fault: str) -> float:
    return TIMEOUT if fault in TIMED else PATIENT


HUGE = 20 * 1024 * 1024  # far over the capture limit and the fallback buffer (1 MiB)
BLOCK = b"h" * 65536
BODY = b'{"from": "fault"}'


def head(status: int, length: int, reason: str = "X") -> bytes:
    return (
        f"HTTP/1.1 {status} {reason}\r\nContent-Type: application/json\r\n"
        f"Content-Length: {length}\r\n\r\n"
    ).encode()


def reset(conn: RawConn) -> None:
    """Drop the connection with a TCP reset (SO_LINGER 0), not a FIN."""
    sock = conn.writer.get_extra_info("socket")
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    conn.writer.transport.abort()


async def slow(conn: RawConn) -> None:
    if await conn.request() is not None:
        await asyncio.sleep(SLOW)
        await conn.send(head(200, len(BODY)) + BODY)


async def hang(conn: RawConn) -> None:
    """Read the request, never answer."""
    if await conn.request() is not None:
        await conn.until_closed()


async def reset_early(conn: RawConn) -> None:
    """Read the request, then reset before a single byte of answer."""
    if await conn.request() is not None:
        reset(conn)


async def reset_mid_body(conn: RawConn) -> None:
    """Promise 100,000 bytes, send 1,000, then reset."""
    if await conn.request() is not None:
        await conn.send(head(200, 100_000) + b"{" + b" " * 999)
        reset(conn)


async def garbage(conn: RawConn) -> None:
    if await conn.request() is not None:
        await conn.send(b"\x00\xff\xfe this is not HTTP at all\r\n\r\n")
        await conn.until_closed()


async def malformed(conn: RawConn) -> None:
    """A status line, then a header line without a colon."""
    if await conn.request() is not None:
        await conn.send(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nNo colon here\r\n\r\n{}")
        await conn.until_closed()


async def close_early(conn: RawConn) -> None:
    """Read the request, then close (FIN) before a single byte of answer."""
    await conn.request()


async def storm(conn: RawConn) -> None:
    """Every answer a 5xx (500 and 503 in turn), on a keep-alive connection."""
    n = 0
    while await conn.request() is not None:
        status = (500, 503)[n % 2]
        n += 1
        await conn.send(head(status, len(BODY)) + BODY)


class Huge:
    """Promise and stream a HUGE body in 64 KiB writes (so the fake itself holds
    little); ``sent`` counts the bytes the kernel took, over all connections."""

    def __init__(self) -> None:
        self.sent = 0

    async def __call__(self, conn: RawConn) -> None:
        if await conn.request() is None:
            return
        await conn.send(head(200, HUGE))
        for _ in range(HUGE // len(BLOCK)):
            await conn.send(BLOCK)  # raises once the proxy has stopped reading and closed
            self.sent += len(BLOCK)


_HANDLERS: dict[str, Handler] = {
    "slow": slow,
    "hang": hang,
    "reset_before_answer": reset_early,
    "reset_mid_body": reset_mid_body,
    "garbage": garbage,
    "malformed_headers": malformed,
    "close_before_answer": close_early,
    "5xx_storm": storm,
}


def backend(name: str) -> Handler:
    """A fresh handler for the named fault (``huge_body`` keeps a count of its own)."""
    return Huge() if name == "huge_body" else _HANDLERS[name]


Answer = tuple[int, Any, bytes | aiohttp.ClientPayloadError]


async def burst(proxy: Proxy, n: int, path: str = "/api/x", within: float = 30.0) -> list[Answer]:
    """``n`` concurrent requests; each answer's status, headers and body, or the
    error a cut body raised. Bounded: a hung request fails the test."""

    async def one(i: int) -> Answer:
        async with proxy.client.get(f"{path}?i={i}") as response:
            try:
                body: bytes | aiohttp.ClientPayloadError = await response.read()
            except aiohttp.ClientPayloadError as exc:
                body = exc
            return response.status, response.headers.copy(), body

    async with asyncio.timeout(within):
        return await asyncio.gather(*(one(i) for i in range(n)))
