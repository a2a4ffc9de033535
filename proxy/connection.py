"""One keep-alive HTTP/1.1 connection to a backend.

aiohttp's client spent three quarters of the proxy's time per request (it
builds a request object, a response object, a timer context and a stream
reader for every exchange); this connection does only what a proxy needs. The
response is parsed by llhttp (through httptools), the parser Node.js and
aiohttp themselves use; this module only keeps the state of one exchange:
the head, the body chunks with flow control, and whether the connection can
serve another request.
"""

from __future__ import annotations

import asyncio
import threading
from collections import deque
from typing import cast

import httptools

from proxy.errors import DisconnectedError, InvalidResponseError

# Body bytes buffered before reading from the backend pauses; it resumes
# below the low mark. A slow client therefore slows the backend, and the
# proxy never holds more than this per exchange.
HIGH_WATER = 64 * 1024
LOW_WATER = HIGH_WATER // 4
# The response head's size limit (status line plus headers), like nginx's
# proxy buffer: a backend sending more is broken, not something to forward.
MAX_HEAD = 64 * 1024
# One read from a socket, at most. The parser copies what it keeps out of the
# buffer at once, so all connections of a thread read into the same one. The
# transports' own reads are 256 KiB, each a new object: 32 connections
# streaming 1 MB answers then held 7 MB more at their peak; at 64 KiB reads
# the same answers went a fifth slower.
READ_SIZE = 128 * 1024
_buffers = threading.local()


def _read_buffer() -> memoryview:
    buffer: memoryview | None = getattr(_buffers, "view", None)
    if buffer is None:
        buffer = _buffers.view = memoryview(bytearray(READ_SIZE))
    return buffer


class _HeadOnly(Exception):
    """Raised inside the parser to stop it after the head of a HEAD response."""


class Connection(asyncio.BufferedProtocol):
    """The protocol object of one connection; at most one exchange at a time."""

    def __init__(self) -> None:
        self.transport: asyncio.Transport | None = None
        self.reused = False  # served an exchange before this one
        self.idle_since = 0.0
        self.lost = False
        self._parser = httptools.HttpResponseParser(self)
        self._loop = asyncio.get_running_loop()
        self._buffer = _read_buffer()
        self._write_paused = False
        self._drain: asyncio.Future[None] | None = None
        self._reset(False)

    def _reset(self, head_only: bool) -> None:
        self.status = 0
        self.reason = ""
        self.headers: list[tuple[str, str]] = []
        self.complete = False
        self.received = False  # any response byte arrived for this exchange
        self._keep_alive = False  # read with the head: llhttp forgets it at the end
        self._head_only = head_only
        self._head_size = 0
        self._head_bytes = 0  # raw bytes received while the head is still pending
        self._head_done: asyncio.Future[None] | None = None
        self._framed = False  # Content-Length or chunked: EOF before the end is a cut
        self._error: BaseException | None = None
        self._chunks: deque[bytes] = deque()
        self._buffered = 0
        self._read_paused = False
        self._waiter: asyncio.Future[None] | None = None

    # -- the exchange, as the client drives it ---------------------------

    def begin(self, head: bytes, head_only: bool) -> None:
        """Send a request head; the response that follows belongs to it."""
        self._reset(head_only)
        self._head_done = self._loop.create_future()
        self.write(head)

    def write(self, data: bytes) -> None:
        if self.transport is not None and not self.lost:
            self.transport.write(data)

    async def drain(self) -> None:
        """Wait while the backend is slower to read than the body arrives."""
        if self._error is not None:
            raise self._error
        if self._write_paused:
            self._drain = self._loop.create_future()
            await self._drain

    async def head(self) -> None:
        """Wait for the response head (status and headers)."""
        assert self._head_done is not None
        await self._head_done

    async def chunk(self) -> bytes:
        """The next piece of the body; ``b""`` once it has ended."""
        while True:
            if self._chunks:
                data = self._chunks.popleft()
                self._buffered -= len(data)
                if self._read_paused and self._buffered <= LOW_WATER:
                    self._read_paused = False
                    if self.transport is not None:
                        self.transport.resume_reading()
                return data
            if self.complete:
                return b""
            if self._error is not None:
                raise self._error
            self._waiter = self._loop.create_future()
            await self._waiter

    def whole_body(self) -> bytes | None:
        """The body, if all of it has arrived already (no wait); else None.

        Small answers usually come in the same packet as their head: the
        proxy then answers its client in one write instead of streaming.
        """
        if not self.complete or self._error is not None:
            return None
        chunks = self._chunks
        body = chunks[0] if len(chunks) == 1 else b"".join(chunks)
        chunks.clear()
        self._buffered = 0
        return body

    @property
    def reusable(self) -> bool:
        """The exchange ended cleanly and both sides want to keep the connection."""
        return (
            self.complete
            and self._error is None
            and not self.lost
            and self._keep_alive
            and self.transport is not None
            and not self.transport.is_closing()  # lost is only reported a turn later
        )

    def abort(self, error: BaseException) -> None:
        """End the exchange with ``error`` (a timeout, a failed upload) and close."""
        self._fail(error)
        if self.transport is not None:
            self.transport.abort()

    def close(self) -> None:
        """Close after a complete answer (FIN); otherwise drop at once, so a
        backend that stopped reading cannot keep the socket and its unsent
        bytes alive outside the pool's count."""
        if self.transport is not None:
            if self.complete and not self.transport.get_write_buffer_size():
                self.transport.close()
            else:
                self.transport.abort()

    # -- asyncio.Protocol --------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)  # uvloop's is not a subclass

    def get_buffer(self, sizehint: int) -> memoryview:
        return self._buffer

    def buffer_updated(self, nbytes: int) -> None:
        self.data_received(self._buffer[:nbytes])

    def data_received(self, data: bytes | memoryview) -> None:
        if self._head_done is None or self.complete:
            # Bytes nobody asked for: the backend is confused. Never reuse.
            self._fail(InvalidResponseError("data after the response ended"))
            self.close()
            return
        self.received = True
        head_pending = not self._head_done.done()
        if head_pending:
            self._head_bytes += len(data)
        try:
            self._parser.feed_data(data)
        except httptools.HttpParserCallbackError as exc:
            if not isinstance(exc.__context__, _HeadOnly):
                self._fail(self._error or InvalidResponseError(str(exc)))
                self.close()
        except httptools.HttpParserUpgrade:
            self._fail(InvalidResponseError("the backend switched protocols unasked"))
            self.close()
        except httptools.HttpParserError as exc:
            self._fail(InvalidResponseError(f"invalid HTTP response: {exc}"))
            self.close()
        if head_pending and self._head_bytes > MAX_HEAD and not self._head_done.done():
            # llhttp hands over a header only once it ends: bound the unfinished one here
            self._fail(InvalidResponseError(f"response head larger than {MAX_HEAD} bytes"))
            self.close()

    def connection_lost(self, exc: Exception | None) -> None:
        self.lost = True
        if self._head_done is not None and not self.complete:
            head_seen = self._head_done.done() and self._error is None
            if head_seen and not self._framed and exc is None:
                self._finish()  # the body was delimited by the close (a reset is a cut)
            else:
                self._fail(DisconnectedError("connection closed before the answer ended"))
        if self._drain is not None and not self._drain.done():
            self._drain.set_exception(DisconnectedError("connection closed while sending"))

    def pause_writing(self) -> None:
        self._write_paused = True

    def resume_writing(self) -> None:
        self._write_paused = False
        if self._drain is not None and not self._drain.done():
            self._drain.set_result(None)

    # -- httptools callbacks ------------------------------------------------

    def on_message_begin(self) -> None:
        if self.complete:  # a second answer in the same packet: nobody asked for it
            raise InvalidResponseError("data after the response ended")

    def on_status(self, reason: bytes) -> None:
        self._grow(len(reason))
        self.reason = reason.decode("latin-1")

    def on_header(self, name: bytes, value: bytes) -> None:
        self._grow(len(name) + len(value) + 4)  # trailers count too: no endless ones
        if self.status:
            return  # a chunked trailer: the head has gone to the caller already
        self.headers.append((name.decode("latin-1"), value.decode("utf-8", "surrogateescape")))

    def on_headers_complete(self) -> None:
        status = self._parser.get_status_code()
        if 100 <= status < 200:
            return  # an interim answer (103 Early Hints): the real one follows
        self.status = status
        self._keep_alive = self._parser.should_keep_alive()
        framing = {k.lower() for k, _ in self.headers} & {"content-length", "transfer-encoding"}
        self._framed = bool(framing) or status in (204, 304)
        assert self._head_done is not None
        if not self._head_done.done():
            self._head_done.set_result(None)
        if self._head_only:
            self._finish()
            self._parser = httptools.HttpResponseParser(self)
            raise _HeadOnly

    def on_body(self, body: bytes) -> None:
        self._chunks.append(body)
        self._buffered += len(body)
        if self._buffered > HIGH_WATER and not self._read_paused and self.transport is not None:
            self._read_paused = True
            self.transport.pause_reading()
        self._wake()

    def on_message_complete(self) -> None:
        if 100 <= self._parser.get_status_code() < 200:
            self.headers = []  # the interim answer's headers are not the response's
            self._head_size = 0
            return
        self._finish()
        if self._read_paused and self.transport is not None:
            # All of it is here: listen again, so a close or stray bytes are noticed
            # while the answer is read and while the connection idles in the pool.
            self._read_paused = False
            self.transport.resume_reading()

    # -- internals -----------------------------------------------------------

    def _grow(self, size: int) -> None:
        self._head_size += size
        if self._head_size > MAX_HEAD:
            self._error = InvalidResponseError(f"response head larger than {MAX_HEAD} bytes")
            raise self._error

    def _finish(self) -> None:
        self.complete = True
        self._wake()

    def _fail(self, error: BaseException) -> None:
        if self._error is None and not self.complete:
            self._error = error
        if self._head_done is not None and not self._head_done.done():
            self._head_done.set_exception(error)
            self._head_done.exception()  # retrieved: a caller may have left already
        self._wake()

    def _wake(self) -> None:
        waiter = self._waiter
        if waiter is not None:
            self._waiter = None
            if not waiter.done():
                waiter.set_result(None)
