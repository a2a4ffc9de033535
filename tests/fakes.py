"""Fake backends for tests: real aiohttp servers on 127.0.0.1:0 that can be
made slow, failing, streaming, huge or rude, and that record what reached them.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import socket
import ssl
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web


@dataclass
class Seen:
    method: str
    path_qs: str
    headers: dict[str, list[str]]
    body_size: int
    body_sha256: str
    body: bytes  # first 64 KiB


@dataclass
class Reply:
    """One scripted answer on the default path; a None field takes the Fake's knob."""

    status: int | None = None
    body: bytes | None = None
    headers: dict[str, str] = field(default_factory=dict)
    delay: float | None = None
    cut: bool = False  # promise more than the body, send the body, then drop the connection
    drop: bool = False  # read the request, then close the connection without a word


@dataclass
class Fake:
    """Knobs apply to every path without a special meaning below. ``script`` is
    consumed one reply per request on the default path; once it is empty the
    plain knobs answer again."""

    name: str
    status: int = 200
    body: bytes = b'{"ok": true}'
    content_type: str = "application/json"
    delay: float = 0.0
    script: list[Reply] = field(default_factory=list)
    seen: list[Seen] = field(default_factory=list)
    arrived: asyncio.Event = field(default_factory=asyncio.Event)
    url: str = ""

    def app(self) -> web.Application:
        app = web.Application(client_max_size=1024**3)
        app.router.add_route("*", "/stream", self._stream)
        app.router.add_route("*", "/download", self._download)
        app.router.add_route("*", "/upload", self._upload)
        app.router.add_route("*", "/cut", self._cut)
        app.router.add_route("*", "/echo", self._echo)
        app.router.add_route("*", "/{tail:.*}", self._default)
        return app

    async def _record(self, request: web.Request) -> Seen:
        digest = hashlib.sha256()
        size = 0
        head = bytearray()
        async for chunk in request.content.iter_any():
            digest.update(chunk)
            size += len(chunk)
            if len(head) < 65536:
                head.extend(chunk[: 65536 - len(head)])
        headers: dict[str, list[str]] = {}
        for k, v in request.headers.items():
            headers.setdefault(k.lower(), []).append(v)
        seen = Seen(
            request.method, request.raw_path, headers, size, digest.hexdigest(), bytes(head)
        )
        self.seen.append(seen)
        self.arrived.set()
        return seen

    async def _default(self, request: web.Request) -> web.StreamResponse:
        await self._record(request)
        if self.script:
            return await self._scripted(request, self.script.pop(0))
        if self.delay:
            await asyncio.sleep(self.delay)
        return web.Response(status=self.status, body=self.body, content_type=self.content_type)

    async def _scripted(self, request: web.Request, reply: Reply) -> web.StreamResponse:
        delay = self.delay if reply.delay is None else reply.delay
        if delay:
            await asyncio.sleep(delay)
        status = self.status if reply.status is None else reply.status
        body = self.body if reply.body is None else reply.body
        headers = {"Content-Type": self.content_type, **reply.headers}
        if reply.drop:
            assert request.transport is not None
            request.transport.close()
            return web.Response()  # never sent: the connection is gone
        if not reply.cut:
            return web.Response(status=status, body=body, headers=headers)
        headers["Content-Length"] = str(len(body) + 1024)
        response = web.StreamResponse(status=status, headers=headers)
        await response.prepare(request)
        await response.write(body)
        assert request.transport is not None
        request.transport.close()
        return response

    async def _echo(self, request: web.Request) -> web.StreamResponse:
        seen = await self._record(request)
        return web.json_response(
            {"backend": self.name, "method": seen.method, "path_qs": seen.path_qs,
             "headers": seen.headers, "body_size": seen.body_size},
            headers={"Set-Cookie": "a=1", "X-Multi": "one"},
        )  # fmt: skip

    async def _stream(self, request: web.Request) -> web.StreamResponse:
        """?chunks=N&gap=S: N chunks S seconds apart (time to first byte matters)."""
        await self._record(request)
        chunks = int(request.query.get("chunks", "5"))
        gap = float(request.query.get("gap", "0.05"))
        response = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await response.prepare(request)
        for i in range(chunks):
            await response.write(f"data: {i}\n\n".encode())
            await asyncio.sleep(gap)
        await response.write_eof()
        return response

    async def _download(self, request: web.Request) -> web.StreamResponse:
        """?mb=N: N MiB of a repeating pattern, streamed with a Content-Length."""
        await self._record(request)
        mib = int(request.query.get("mb", "1"))
        block = bytes(range(256)) * 4096  # 1 MiB
        response = web.StreamResponse(headers={"Content-Length": str(mib * len(block))})
        await response.prepare(request)
        for _ in range(mib if request.method != "HEAD" else 0):
            await response.write(block)
        await response.write_eof()
        return response

    async def _upload(self, request: web.Request) -> web.StreamResponse:
        seen = await self._record(request)
        return web.json_response({"size": seen.body_size, "sha256": seen.body_sha256})

    async def _cut(self, request: web.Request) -> web.StreamResponse:
        """Promise 1 MiB, send 1 KiB, then drop the connection."""
        await self._record(request)
        response = web.StreamResponse(headers={"Content-Length": str(1024 * 1024)})
        await response.prepare(request)
        await response.write(b"x" * 1024)
        assert request.transport is not None
        request.transport.close()
        return response


async def start_fake(fake: Fake, aiohttp_server: Any) -> Fake:
    server = await aiohttp_server(fake.app(), host="127.0.0.1")
    fake.url = str(server.make_url("")).rstrip("/")
    return fake


def dead_url() -> str:
    """A loopback URL where nothing listens (a port just released)."""
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    return f"http://127.0.0.1:{port}"


class RawBackend:
    """A TCP server that answers every request with fixed raw bytes: for
    responses no well-behaved HTTP library would produce."""

    def __init__(self, response: bytes) -> None:
        self.response = response
        self.url = ""
        self._server: asyncio.Server | None = None

    async def __aenter__(self) -> RawBackend:
        self._server = await asyncio.start_server(self._answer, "127.0.0.1", 0)
        port = self._server.sockets[0].getsockname()[1]
        self.url = f"http://127.0.0.1:{port}"
        return self

    async def __aexit__(self, *exc: object) -> None:
        assert self._server is not None
        self._server.close()
        await self._server.wait_closed()

    async def _answer(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.readuntil(b"\r\n\r\n")
        writer.write(self.response)
        await writer.drain()
        writer.close()


@contextlib.asynccontextmanager
async def stalled_client(port: int, path: str) -> AsyncIterator[None]:
    """A client that GETs ``path`` and then never reads: a tiny receive
    buffer, so the proxy's writes stall almost at once."""
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    sock.setblocking(False)
    await asyncio.get_running_loop().sock_connect(sock, ("127.0.0.1", port))
    _reader, writer = await asyncio.open_connection(sock=sock)
    writer.write(f"GET {path} HTTP/1.1\r\nHost: x\r\n\r\n".encode())
    await writer.drain()
    try:
        yield
    finally:
        writer.close()


@dataclass
class RawMessage:
    head: bytes  # start line and headers, without the blank line
    body: bytes

    @property
    def headers(self) -> list[tuple[str, str]]:
        lines = self.head.decode("latin-1").split("\r\n")[1:]
        return [(n, v.strip()) for n, _, v in (line.partition(":") for line in lines)]

    def header(self, name: str) -> list[str]:
        return [v for n, v in self.headers if n.lower() == name.lower()]


@dataclass
class RawRequest(RawMessage):
    """One request as it reached a :class:`RawServer`, its body de-chunked."""

    chunked: bool  # the body came with Transfer-Encoding: chunked
    connection: int  # which accepted connection (0, 1, ...) carried it

    @property
    def request_line(self) -> str:
        return self.head.split(b"\r\n", 1)[0].decode()


class RawConn:
    """The server's side of one accepted connection, for a handler to script."""

    def __init__(
        self, server: RawServer, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> None:
        self.server = server
        self.index = len(server.connections)
        self.reader = reader
        self.writer = writer
        self.client_closed = asyncio.Event()  # the client closed its side

    async def request(self) -> RawRequest | None:
        """The next request, body included; None once the client closed."""
        try:
            head = (await self.reader.readuntil(b"\r\n\r\n"))[:-4]
        except (asyncio.IncompleteReadError, ConnectionError):
            self.client_closed.set()
            return None
        request = RawRequest(head, b"", False, self.index)
        if request.header("transfer-encoding"):
            request.chunked = True
            request.body = await self._chunked()
        elif length := request.header("content-length"):
            request.body = await self.reader.readexactly(int(length[0]))
        self.server.requests.append(request)
        self.server.arrived.set()
        return request

    async def head_only(self) -> RawRequest:
        """The next request's head, leaving its body unread."""
        head = (await self.reader.readuntil(b"\r\n\r\n"))[:-4]
        request = RawRequest(head, b"", False, self.index)
        self.server.requests.append(request)
        self.server.arrived.set()
        return request

    async def until_closed(self) -> bytes:
        """Read (and return) whatever else comes until the client closes."""
        rest = bytearray()
        with contextlib.suppress(ConnectionError):
            while data := await self.reader.read(65536):
                rest += data
        self.client_closed.set()
        return bytes(rest)

    async def send(self, data: bytes) -> None:
        self.writer.write(data)
        await self.writer.drain()

    def close(self) -> None:
        self.writer.close()

    async def _chunked(self) -> bytes:
        body = bytearray()
        while size := int((await self.reader.readuntil(b"\r\n"))[:-2], 16):
            body += await self.reader.readexactly(size)
            await self.reader.readexactly(2)
        await self.reader.readexactly(2)  # no trailers: the last CRLF
        return bytes(body)


Handler = Callable[[RawConn], Awaitable[None]]


class RawServer:
    """A TCP server on 127.0.0.1:0 that runs ``handler`` once per accepted
    connection and closes it when the handler returns: for exact bytes no
    well-behaved HTTP library would send, and to count connections."""

    def __init__(self, handler: Handler, tls: ssl.SSLContext | None = None) -> None:
        self.handler = handler
        self.tls = tls
        self.url = ""
        self.port = 0
        self.connections: list[RawConn] = []
        self.requests: list[RawRequest] = []
        self.arrived = asyncio.Event()
        self._server: asyncio.Server | None = None
        self._tasks: set[asyncio.Task[None]] = set()

    async def __aenter__(self) -> RawServer:
        self._server = await asyncio.start_server(self._accept, "127.0.0.1", 0, ssl=self.tls)
        self.port = self._server.sockets[0].getsockname()[1]
        self.url = f"{'https' if self.tls else 'http'}://127.0.0.1:{self.port}"
        return self

    async def __aexit__(self, *exc: object) -> None:
        assert self._server is not None
        self._server.close()
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        for conn in self.connections:
            conn.writer.close()
        await self._server.wait_closed()

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        conn = RawConn(self, reader, writer)
        self.connections.append(conn)
        task = asyncio.current_task()
        assert task is not None
        self._tasks.add(task)
        try:
            await self.handler(conn)
        except (ConnectionError, asyncio.CancelledError):
            pass  # the top of the server's task: asyncio logs a cancelled one as an error
        finally:
            writer.close()
            self._tasks.discard(task)


async def answer_ok(conn: RawConn) -> None:
    """A :class:`RawServer` handler: ``200 ok`` to every whole request. A body
    cut off midway ends the connection unrecorded, so ``RawServer.requests``
    holds complete requests only."""
    with contextlib.suppress(asyncio.IncompleteReadError):
        while await conn.request() is not None:
            await conn.send(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")


@dataclass
class RawResponse(RawMessage):
    """One answer as a :class:`RawClient` read it."""

    @property
    def status_line(self) -> str:
        return self.head.split(b"\r\n", 1)[0].decode("latin-1")

    @property
    def status(self) -> int:
        return int(self.status_line.split(" ", 2)[1])


class RawClient:
    """A client connection that sends exact bytes (no HTTP library would send
    most of them) and reads the answers one by one."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader = reader
        self.writer = writer

    @classmethod
    @contextlib.asynccontextmanager
    async def connect(cls, port: int) -> AsyncIterator[RawClient]:
        client = cls(*await asyncio.open_connection("127.0.0.1", port))
        try:
            yield client
        finally:
            client.writer.close()

    async def send(self, data: bytes) -> None:
        self.writer.write(data)
        await self.writer.drain()

    async def response(self, within: float = 10.0) -> RawResponse:
        """The next answer (a 1xx too), its body read by Content-Length."""
        async with asyncio.timeout(within):
            head = (await self.reader.readuntil(b"\r\n\r\n"))[:-4]
            answer = RawResponse(head, b"")
            if length := answer.header("content-length"):
                answer.body = await self.reader.readexactly(int(length[0]))
        return answer

    async def closed(self, within: float = 10.0) -> bool:
        """True once the proxy closed the connection (nothing more came)."""
        try:
            async with asyncio.timeout(within):
                return await self.reader.read(1) == b""
        except ConnectionError:
            return True
        except TimeoutError:
            return False


def raw_request(request_line: str, *headers: str, body: bytes = b"") -> bytes:
    """A request from its lines, joined with CRLF: whatever else a case needs
    (a bare LF, a fold, a NUL) is written inside the lines themselves."""
    head = "\r\n".join((request_line, "Host: shop.example", *headers))
    return head.encode("latin-1") + b"\r\n\r\n" + body


async def forwarded(port: int, backend: RawServer) -> list[RawRequest]:
    """The requests that reached ``backend`` through the proxy on ``port``
    before a canary sent now: once the canary is answered, anything the
    exchange under test was going to forward has arrived."""
    async with RawClient.connect(port) as canary:
        await canary.send(b"GET /canary HTTP/1.1\r\nHost: canary.example\r\n\r\n")
        assert (await canary.response()).status == 200
    *before, last = backend.requests
    assert last.request_line == "GET /canary HTTP/1.1"
    return before
