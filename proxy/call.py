"""One call to a backend (a request and its response), used as ``async with``.

Entering sends the request (the body streams from a task of its own, so a
backend may answer before the upload ends) and waits for the response head;
the body is read with :meth:`Call.chunks`. One timer bounds the whole
exchange, body included: when it fires the connection is aborted and the
reader gets ``TimeoutError``. Leaving hands the connection back to the pool,
reusable only when the exchange ended cleanly.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from dataclasses import dataclass

from multidict import CIMultiDict, CIMultiDictProxy

from proxy.capture import BodyCapture
from proxy.connection import Connection
from proxy.errors import DisconnectedError
from proxy.pool import Pool

# Methods a client may resend after a reused connection turned out to be
# closed before any answer came back (RFC 9110 section 9.2.2).
IDEMPOTENT = frozenset({"GET", "HEAD", "OPTIONS", "TRACE", "PUT", "DELETE"})

Body = bytes | AsyncIterator[bytes] | None
# Bodies up to this size go out in the same write as the head; larger ones
# are written on their own rather than copied.
_COALESCE = 64 * 1024


@dataclass(frozen=True, slots=True)
class Timeout:
    total: float  # the whole exchange, body included
    connect: float  # the TCP (and TLS) connect


class Call:
    __slots__ = (
        "_body",
        "_chunked",
        "_conn",
        "_head",
        "_method",
        "_pool",
        "_timeout",
        "_timer",
        "_upload",
        "headers",
        "reason",
        "status",
    )

    def __init__(
        self, pool: Pool, method: str, head: bytes, body: Body, chunked: bool, timeout: Timeout
    ) -> None:
        self._pool = pool
        self._method = method
        self._head = head
        self._body = body
        self._chunked = chunked
        self._timeout = timeout
        self._conn: Connection | None = None
        self._timer: asyncio.TimerHandle | None = None
        self._upload: asyncio.Task[None] | None = None
        self.status = 0
        self.reason = ""
        self.headers: CIMultiDictProxy[str] = _EMPTY

    async def __aenter__(self) -> Call:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self._timeout.total
        self._timer = loop.call_at(deadline, self._expire)
        try:
            try:
                await self._send(deadline, fresh=False)
            except DisconnectedError:
                if not self._replayable():
                    raise
                self._release(False)  # a stale keep-alive connection: once more, afresh
                await self._send(deadline, fresh=True)
        except BaseException:
            self._end(False)
            raise
        conn = self._conn
        assert conn is not None
        self.status = conn.status
        self.reason = conn.reason
        self.headers = CIMultiDictProxy(CIMultiDict(conn.headers))
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        self._end(True)

    async def chunks(self) -> AsyncIterator[bytes]:
        """The response body as it arrives."""
        conn = self._conn
        assert conn is not None, "chunks() outside the exchange"
        while chunk := await conn.chunk():
            yield chunk

    def whole_body(self) -> bytes | None:
        """The whole body if it has already arrived, without waiting; else None."""
        conn = self._conn
        assert conn is not None, "whole_body() outside the exchange"
        return conn.whole_body()

    async def read_into(self, copy: BodyCapture) -> bytes | None:
        """Read the body into ``copy``, stopping once it is over its bound
        (the rest is never read: the connection is not reused); its value."""
        async for chunk in self.chunks():
            if not copy.feed(chunk):
                break
        return copy.value()

    async def read(self) -> bytes:
        return b"".join([chunk async for chunk in self.chunks()])

    async def _send(self, deadline: float, fresh: bool) -> None:
        pool = self._pool
        loop = asyncio.get_running_loop()
        conn = None if fresh else pool.take_idle_now(loop.time())
        if conn is None:
            async with asyncio.timeout_at(deadline):
                conn = await pool.acquire(fresh)
        self._conn = conn
        body = self._body
        if isinstance(body, bytes) and len(body) <= _COALESCE:
            conn.begin(self._head + body, self._method == "HEAD")  # one write, one packet
            body = None
        else:
            conn.begin(self._head, self._method == "HEAD")
        if isinstance(body, bytes):
            conn.write(body)
        elif body is not None:
            self._upload = loop.create_task(self._stream(conn, body))
        await conn.head()

    async def _stream(self, conn: Connection, body: AsyncIterator[bytes]) -> None:
        """Upload a streamed body; its failure (the client left) ends the exchange."""
        try:
            async for chunk in body:
                if not chunk:
                    continue
                conn.write(b"%x\r\n%b\r\n" % (len(chunk), chunk) if self._chunked else chunk)
                await conn.drain()
            if self._chunked:
                conn.write(b"0\r\n\r\n")
        except asyncio.CancelledError:
            raise
        except BaseException as exc:
            conn.abort(exc)

    def _replayable(self) -> bool:
        conn = self._conn
        return (
            conn is not None
            and conn.reused
            and not conn.received
            and self._method in IDEMPOTENT
            and not isinstance(self._body, AsyncIterator)
        )

    def _expire(self) -> None:
        if self._conn is not None:
            self._conn.abort(TimeoutError(f"no complete answer within {self._timeout.total:g}s"))

    def _release(self, ok: bool) -> None:
        conn, self._conn = self._conn, None
        if conn is None:
            return
        upload = self._upload
        self._upload = None
        if upload is not None and not upload.done():
            upload.cancel()
            ok = False
        self._pool.release(conn, ok and conn.reusable)

    def _end(self, ok: bool) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        self._release(ok)


_EMPTY: CIMultiDictProxy[str] = CIMultiDictProxy(CIMultiDict())
