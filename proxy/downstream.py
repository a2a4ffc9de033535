"""Writing to the client: every write is bounded, and a write that fails or
stalls is the client's doing, never counted against a backend."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable
from time import perf_counter
from typing import Any

from aiohttp import web


class ClientGoneError(Exception):
    """The client closed its connection, or stopped reading, mid-exchange."""


def cut_off(request: web.BaseRequest) -> None:
    """Close the client connection so a truncated body cannot pass as complete."""
    if request.transport is not None:
        request.transport.close()


class Downstream:
    """One response's writes; ``waited`` is the time spent blocked on the client,
    so a backend's latency can be told apart from a slow reader's."""

    __slots__ = ("timeout", "waited")

    def __init__(self, timeout: float) -> None:
        self.timeout = timeout
        self.waited = 0.0

    async def head(self, prepare: Awaitable[Any]) -> None:
        """Send the response head. aiohttp queues it without waiting for the
        client to read, so only a closed connection can fail it: no timer."""
        try:
            await prepare
        except ConnectionError as exc:
            raise ClientGoneError from exc

    async def send(self, write: Awaitable[Any]) -> None:
        started = perf_counter()
        try:
            async with asyncio.timeout(self.timeout):
                await write
        except (ConnectionError, TimeoutError) as exc:
            raise ClientGoneError from exc
        finally:
            self.waited += perf_counter() - started
