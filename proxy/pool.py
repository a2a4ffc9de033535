"""Keep-alive connections to one backend, bounded.

At most ``limit`` connections are open, idle or busy; a request that finds
none free waits its turn (within its own deadline). Idle connections are
reused newest first, so a quiet period lets the oldest age out, and one idle
longer than ``keepalive`` is closed rather than risked: a backend may have
dropped it already.
"""

from __future__ import annotations

import asyncio
import ssl
from collections import deque

from proxy.connection import Connection
from proxy.errors import ConnectError, ConnectTimeoutError

KEEPALIVE = 15.0  # seconds an idle connection is kept; nginx keeps 75, Node 5


class Pool:
    def __init__(
        self,
        host: str,
        port: int,
        *,
        tls: ssl.SSLContext | None,
        limit: int,
        connect_timeout: float,
        keepalive: float = KEEPALIVE,
    ) -> None:
        self.host = host
        self.port = port
        self.tls = tls
        self.limit = limit
        self.connect_timeout = connect_timeout
        self.keepalive = keepalive
        self._idle: list[Connection] = []
        self._busy = 0
        self._waiters: deque[asyncio.Future[None]] = deque()
        self._woken = 0  # waiters given their turn that have not run yet
        self._closed = False

    @property
    def open(self) -> int:
        return self._busy + len(self._idle)

    @property
    def idle(self) -> int:
        return len(self._idle)

    def take_idle_now(self, now: float) -> Connection | None:
        """An idle connection without waiting, unless others queue for one first
        (or were given their turn and have not run yet)."""
        return None if self._waiters or self._woken else self.take_idle(now)

    def take_idle(self, now: float) -> Connection | None:
        """A live idle connection, if there is one; stale ones are closed on the way."""
        idle = self._idle
        while idle:
            conn = idle.pop()
            if not conn.lost and now - conn.idle_since < self.keepalive:
                self._busy += 1
                return conn
            conn.close()
        return None

    async def acquire(self, fresh: bool = False) -> Connection:
        """A connection for one exchange: idle, new, or the next one released.

        ``fresh`` skips idle connections (a retry after a stale one failed).
        The caller bounds the wait; cancelled, it leaves the queue cleanly.
        """
        loop = asyncio.get_running_loop()
        woken = False  # once woken, this request is first in line
        while True:
            take = self.take_idle if woken else self.take_idle_now
            if not fresh and (conn := take(loop.time())) is not None:
                return conn
            if self.open < self.limit:
                return await self._connect()
            if fresh and self._idle:  # make room: the oldest idle one goes
                self._idle.pop(0).close()
                continue
            waiter = loop.create_future()
            self._waiters.append(waiter)
            try:
                await waiter
            except BaseException:
                if waiter in self._waiters:
                    self._waiters.remove(waiter)
                elif waiter.done() and not waiter.cancelled():
                    self._woken -= 1
                    self._wake()  # our turn was given to us and we left: pass it on
                raise
            self._woken -= 1
            woken = True

    def release(self, conn: Connection, reusable: bool) -> None:
        self._busy -= 1
        if reusable and not self._closed:
            conn.reused = True
            conn.idle_since = asyncio.get_running_loop().time()
            self._idle.append(conn)
        else:
            conn.close()
        self._wake()

    def close(self) -> None:
        self._closed = True
        for conn in self._idle:
            conn.close()
        self._idle.clear()

    async def _connect(self) -> Connection:
        self._busy += 1
        loop = asyncio.get_running_loop()
        try:
            async with asyncio.timeout(self.connect_timeout):
                _, conn = await loop.create_connection(
                    Connection,
                    self.host,
                    self.port,
                    ssl=self.tls,
                    server_hostname=self.host if self.tls else None,
                )
        except TimeoutError:
            self._busy -= 1
            self._wake()
            raise ConnectTimeoutError(self.connect_timeout) from None
        except OSError as exc:
            self._busy -= 1
            self._wake()
            raise ConnectError(exc) from exc
        except BaseException:
            self._busy -= 1
            self._wake()
            raise
        return conn

    def _wake(self) -> None:
        while self._waiters:
            waiter = self._waiters.popleft()
            if not waiter.done():
                waiter.set_result(None)
                self._woken += 1
                return
