"""One pooled client per backend, and the one place where client errors map
to what a proxy answers (502 or 504) — like httpx's ``map_httpcore_exceptions``.
"""

from __future__ import annotations

import asyncio
import errno
import os
import ssl

from multidict import CIMultiDict
from yarl import URL

from proxy.call import Body, Call, Timeout
from proxy.errors import (
    ConnectError,
    ConnectTimeoutError,
    DisconnectedError,
    InvalidResponseError,
)
from proxy.pool import Pool
from proxy.settings import Backend
from proxy.types import Failure

# Framing is the proxy's to set from the body it actually sends.
_FRAMING = frozenset({"content-length", "transfer-encoding"})
# Methods whose requests carry no body, so an empty one needs no Content-Length.
_BODILESS = frozenset({"GET", "HEAD", "OPTIONS", "TRACE", "DELETE", "CONNECT"})


class Upstream:
    """A backend reached through its own pool of keep-alive connections."""

    def __init__(self, name: str, config: Backend) -> None:
        self.name = name
        self.config = config
        url = URL(config.url)
        self._host = url.raw_host or ""
        self._port = url.port or (443 if url.scheme == "https" else 80)
        self._tls = url.scheme == "https"
        self._host_header = url.host_port_subcomponent or self._host
        self._prefix = url.raw_path.rstrip("/")
        self._pool: Pool | None = None
        self.default_timeout = self.timeout(config.timeout)

    async def start(self) -> None:
        self._pool = Pool(
            self._host,
            self._port,
            tls=ssl.create_default_context() if self._tls else None,
            limit=self.config.max_connections,
            connect_timeout=self.config.connect_timeout,
        )

    async def close(self) -> None:
        if self._pool is not None:
            self._pool.close()
            self._pool = None
            await asyncio.sleep(0)  # let the transports close

    @property
    def pool(self) -> Pool:
        assert self._pool is not None, "Upstream.start() was not awaited"
        return self._pool

    def timeout(self, total: float) -> Timeout:
        return Timeout(total=total, connect=self.config.connect_timeout)

    def request(
        self,
        method: str,
        raw_path: str,
        headers: CIMultiDict[str],
        data: Body = None,
        *,
        timeout: Timeout | None = None,
    ) -> Call:
        """``async with upstream.request(...) as response`` — one exchange, as sent."""
        head, chunked = self._head(method, raw_path, headers, data)
        return Call(self.pool, method, head, data, chunked, timeout or self.default_timeout)

    def failure(self, exc: BaseException, timeout: Timeout | None = None) -> Failure:
        return failure_of(exc, self.name, timeout or self.default_timeout)

    def _head(
        self, method: str, raw_path: str, headers: CIMultiDict[str], data: Body
    ) -> tuple[bytes, bool]:
        """The request head as bytes, and whether the body goes chunked.

        Headers keep the client's order and spelling; ``Host`` is the
        backend's unless the caller set one; the framing follows the body.
        """
        lines = [f"{method} {self._prefix}{raw_path} HTTP/1.1\r\n"]
        host = None
        length = None
        for name, value in headers.items():
            lower = name.lower()
            if lower in _FRAMING:
                if lower == "content-length":
                    length = value
                continue
            if lower == "host":
                host = value
            lines.append(f"{name}: {value}\r\n")
        if host is None:
            lines.insert(1, f"Host: {self._host_header}\r\n")
        chunked = False
        if isinstance(data, bytes):
            if data or method not in _BODILESS:
                lines.append(f"Content-Length: {len(data)}\r\n")
        elif data is not None:
            if length is not None and length.isascii() and length.isdigit():
                lines.append(f"Content-Length: {length}\r\n")
            else:
                lines.append("Transfer-Encoding: chunked\r\n")
                chunked = True
        elif method not in _BODILESS:
            lines.append("Content-Length: 0\r\n")
        lines.append("\r\n")
        text = "".join(lines)
        if text.count("\n") != len(lines) or text.count("\r") != len(lines):
            raise ValueError("a request header carries a line break")
        return text.encode("utf-8", "surrogateescape"), chunked


def failure_of(exc: BaseException, backend: str, timeout: Timeout) -> Failure:
    """Name what went wrong in words an operator understands.

    ``reason`` goes to the client, so it never carries URLs or raw bytes from
    the backend; ``detail`` (bounded) is for logs.
    """
    detail = _short(repr(exc))
    if isinstance(exc, ConnectTimeoutError):
        # kind "connect": like a refused connection, nothing was sent, so a
        # retry or a fallback cannot do anything twice.
        reason = f"{backend}: connect timed out after {timeout.connect:g}s"
        return Failure("connect", 504, reason, detail)
    if isinstance(exc, TimeoutError):
        reason = f"{backend}: no complete answer within {timeout.total:g}s"
        return Failure("timeout", 504, reason, detail)
    if isinstance(exc, ConnectError):
        error, code = exc.os_error, exc.os_error.errno
        cause = error.strerror or type(error).__name__
        if code is not None and code in errno.errorcode and not isinstance(error, ssl.SSLError):
            cause = os.strerror(code)  # asyncio's own strerror names the address
        cause = cause.lower()
        return Failure("connect", 502, f"{backend}: cannot connect: {cause}", detail)
    if isinstance(exc, DisconnectedError):
        reason = f"{backend}: connection closed before the answer ended"
        return Failure("disconnect", 502, reason, detail)
    if isinstance(exc, InvalidResponseError | ValueError):
        return Failure("invalid_response", 502, f"{backend}: invalid HTTP response", detail)
    if isinstance(exc, OSError) and exc.strerror:
        reason = f"{backend}: connection error: {exc.strerror.lower()}"
        return Failure("disconnect", 502, reason, detail)
    return Failure("disconnect", 502, f"{backend}: connection error", detail)


def _short(text: str, limit: int = 300) -> str:
    return text if len(text) <= limit else text[:limit] + "…"
