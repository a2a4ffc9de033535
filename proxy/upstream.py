"""One pooled client per backend, and the one place where client errors map
to what a proxy answers (502 or 504) — like httpx's ``map_httpcore_exceptions``.
"""

from __future__ import annotations

import asyncio
from typing import Any

import aiohttp
from multidict import CIMultiDict
from yarl import URL

from proxy.settings import Backend
from proxy.types import Failure

# Headers the client session would otherwise invent; the proxy forwards only
# what the client sent.
_NO_AUTO_HEADERS = frozenset({"User-Agent", "Accept", "Accept-Encoding", "Content-Type"})


class Upstream:
    """A backend reached through its own connection pool."""

    def __init__(self, name: str, config: Backend) -> None:
        self.name = name
        self.config = config
        self._base = config.url
        self._session: aiohttp.ClientSession | None = None
        self.default_timeout = self.timeout(config.timeout)

    async def start(self) -> None:
        connector = aiohttp.TCPConnector(
            limit=self.config.max_connections,
            limit_per_host=0,
            ttl_dns_cache=60,
            enable_cleanup_closed=False,
        )
        self._session = aiohttp.ClientSession(
            connector=connector,
            timeout=self.default_timeout,
            auto_decompress=False,
            cookie_jar=aiohttp.DummyCookieJar(),
            skip_auto_headers=_NO_AUTO_HEADERS,
            trust_env=False,
        )

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None

    def timeout(self, total: float) -> aiohttp.ClientTimeout:
        return aiohttp.ClientTimeout(total=total, sock_connect=self.config.connect_timeout)

    def url(self, raw_path: str) -> URL:
        return URL(self._base + raw_path, encoded=True)

    def request(
        self,
        method: str,
        raw_path: str,
        headers: CIMultiDict[str],
        data: Any = None,
        *,
        timeout: aiohttp.ClientTimeout | None = None,
    ) -> Any:
        """``async with upstream.request(...) as response`` — no redirects, no cookies."""
        assert self._session is not None, "Upstream.start() was not awaited"
        return self._session.request(
            method,
            self.url(raw_path),
            headers=headers,
            data=data,
            allow_redirects=False,
            timeout=timeout or self.default_timeout,
            compress=False,
        )

    def failure(self, exc: BaseException, timeout: aiohttp.ClientTimeout | None = None) -> Failure:
        return failure_of(exc, self.name, timeout or self.default_timeout)


def failure_of(exc: BaseException, backend: str, timeout: aiohttp.ClientTimeout) -> Failure:
    """Name what went wrong in words an operator understands.

    ``reason`` goes to the client, so it never carries URLs or raw bytes from
    the backend; ``detail`` (bounded) is for logs.
    """
    detail = _short(repr(exc))
    if isinstance(exc, aiohttp.ConnectionTimeoutError):
        # kind "connect": like a refused connection, nothing was sent, so a
        # retry or a fallback cannot do anything twice.
        reason = f"{backend}: connect timed out after {timeout.sock_connect:g}s"
        return Failure("connect", 504, reason, detail)
    if isinstance(exc, asyncio.TimeoutError | aiohttp.ServerTimeoutError):
        reason = f"{backend}: no complete answer within {timeout.total:g}s"
        return Failure("timeout", 504, reason, detail)
    if isinstance(exc, aiohttp.ClientConnectorError):
        cause = (exc.os_error.strerror or type(exc.os_error).__name__).lower()
        return Failure("connect", 502, f"{backend}: cannot connect: {cause}", detail)
    if isinstance(exc, aiohttp.ServerDisconnectedError | aiohttp.ClientPayloadError):
        reason = f"{backend}: connection closed before the answer ended"
        return Failure("disconnect", 502, reason, detail)
    if isinstance(exc, aiohttp.ClientResponseError | ValueError):
        return Failure("invalid_response", 502, f"{backend}: invalid HTTP response", detail)
    if isinstance(exc, OSError) and exc.strerror:
        reason = f"{backend}: connection error: {exc.strerror.lower()}"
        return Failure("disconnect", 502, reason, detail)
    return Failure("disconnect", 502, f"{backend}: connection error", detail)


def _short(text: str, limit: int = 300) -> str:
    return text if len(text) <= limit else text[:limit] + "…"
