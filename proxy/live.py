"""The live path: match route → admit shadow → forward to legacy → stream back.

The client's response never waits on anything but legacy. Bodies stream in
both directions; a copy is kept (bounded) only when a shadow job needs it,
and the shadow gets the request body the moment the upload ends, so the agent
works while legacy does. Upstream failures become a small JSON 502/504 naming
the backend and the reason, never a stack trace.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable
from time import perf_counter
from typing import Any

import aiohttp
import orjson
import structlog
from aiohttp import web
from multidict import CIMultiDict

from proxy.capture import BodyCapture
from proxy.errors import BodyTooLargeError
from proxy.headers import to_client, to_upstream
from proxy.metrics import Metrics
from proxy.routes import CompiledRoute, RouteTable
from proxy.shadow import Shadow, ShadowJob
from proxy.types import LEGACY, Failure, Mode, Observation, ShadowOutcome
from proxy.upstream import Upstream

log = structlog.get_logger("proxy.live")


def error_response(
    status: int, error: str, reason: str, backend: str | None = None
) -> web.Response:
    payload: dict[str, Any] = {"error": error, "reason": reason}
    if backend is not None:
        payload["backend"] = backend
    return web.Response(status=status, body=orjson.dumps(payload), content_type="application/json")


def failure_response(failure: Failure, backend: str) -> web.Response:
    error = "gateway_timeout" if failure.status == 504 else "bad_gateway"
    return error_response(failure.status, error, failure.reason, backend)


class _ClientGone(Exception):
    """The client closed its connection while the response was streaming."""


class LiveHandler:
    """The aiohttp handler for every proxied request."""

    def __init__(
        self, table: RouteTable, legacy: Upstream, shadow: Shadow | None, metrics: Metrics
    ) -> None:
        self.table = table
        self.legacy = legacy
        self.shadow = shadow
        self.metrics = metrics

    async def __call__(self, request: web.Request) -> web.StreamResponse:
        start = perf_counter()
        method = request.method
        raw_path = request.raw_path
        if not raw_path.startswith("/"):
            return error_response(400, "bad_request", "the request target must be a path")
        route = self.table.match(method, request.path)
        length = request.content_length
        if length is not None and length > route.body_limit:
            return self._too_large(route)
        headers = to_upstream(
            request.headers,
            client_ip=request.remote,
            scheme=request.scheme,
            preserve_host=route.preserve_host,
        )
        job = None
        if route.shadow and self.shadow is not None:
            job = self.shadow.admit(route, method, raw_path, headers, request.query, length)
        body = None
        if request.body_exists:
            body = _request_body(request.content, route.body_limit, job)
        elif job is not None:
            job.body.set_result(b"")
        try:
            return await self._forward(request, route, headers, body, job, start)
        finally:
            if job is not None:
                _abandon(job, "no response from legacy")

    async def _forward(
        self,
        request: web.Request,
        route: CompiledRoute,
        headers: CIMultiDict[str],
        body: AsyncIterator[bytes] | None,
        job: ShadowJob | None,
        start: float,
    ) -> web.StreamResponse:
        name = route.name
        sent = perf_counter()
        response: web.StreamResponse | None = None
        try:
            async with self.legacy.request(request.method, request.raw_path, headers, body) as up:
                received = perf_counter()
                response = web.StreamResponse(status=up.status, reason=up.reason)
                response.headers.extend(to_client(up.headers))
                await _to_client(response.prepare(request))
                self.metrics.overhead(name, (sent - start) + (perf_counter() - received))
                await _pump(up, response, job, sent)
                latency = perf_counter() - sent
                self.metrics.upstream(name, LEGACY, Mode.LIVE, latency)
                self.metrics.request(name, LEGACY, up.status)
                await _to_client(response.write_eof())
                return response
        except BodyTooLargeError:
            self.metrics.rejected(name, "body_too_large")
            if response is None:
                return self._too_large(route, counted=True)
            _cut_off(request)
            return response
        except _ClientGone:
            self.metrics.rejected(name, "client_gone")
            return response or web.Response(status=499)
        except asyncio.CancelledError:  # the client hung up (handler cancellation)
            self.metrics.rejected(name, "client_gone")
            raise
        except (aiohttp.ClientError, TimeoutError, OSError) as exc:
            if _caused_by_limit(exc):
                self.metrics.rejected(name, "body_too_large")
                return self._too_large(route, counted=True)
            failure = self.legacy.failure(exc)
            self.metrics.upstream_error(name, LEGACY, Mode.LIVE, failure.kind)
            if job is not None:
                _abandon(job, failure.reason)
            if response is not None:  # headers already sent: the client must see a cut
                log.warning("legacy_failed_mid_body", route=name, reason=failure.reason)
                _cut_off(request)
                return response
            log.warning("legacy_failed", route=name, reason=failure.reason)
            self.metrics.request(name, LEGACY, failure.status)
            return failure_response(failure, LEGACY)

    def _too_large(self, route: CompiledRoute, *, counted: bool = False) -> web.Response:
        if not counted:
            self.metrics.rejected(route.name, "body_too_large")
        return error_response(
            413, "payload_too_large", f"request body exceeds {route.body_limit} bytes"
        )


async def _request_body(
    content: aiohttp.StreamReader, limit: int, job: ShadowJob | None
) -> AsyncIterator[bytes]:
    """Stream the client's body upstream, enforcing the limit, copying for a shadow."""
    capture = BodyCapture(job.route.capture_limit) if job is not None else None
    size = 0
    async for chunk in content.iter_any():
        size += len(chunk)
        if size > limit:
            raise BodyTooLargeError(limit)
        if capture is not None and job is not None and not capture.feed(chunk):
            _give_body(job, ShadowOutcome.SKIPPED_SIZE)
            capture = None
        yield chunk
    if capture is not None and job is not None:
        _give_body(job, capture.value() or b"")


async def _to_client(write: Awaitable[Any]) -> None:
    """Writes to the client fail only because the client left; say so, so that
    it is never mistaken for a legacy failure."""
    try:
        await write
    except ConnectionResetError as exc:
        raise _ClientGone from exc


async def _pump(
    upstream: aiohttp.ClientResponse,
    response: web.StreamResponse,
    job: ShadowJob | None,
    sent: float,
) -> None:
    """Copy the upstream body to the client; keep a bounded copy for the shadow."""
    copy = BodyCapture(job.route.capture_limit) if job is not None else None
    async for chunk in upstream.content.iter_any():
        if copy is not None and not copy.feed(chunk):
            copy = None  # too large to compare: free the shadow task now
            _observe(job, upstream, None, sent)
        await _to_client(response.write(chunk))
    if copy is not None:
        _observe(job, upstream, copy.value(), sent)


def _observe(
    job: ShadowJob | None, up: aiohttp.ClientResponse, body: bytes | None, sent: float
) -> None:
    if job is not None and not job.live.done():
        headers = {k.lower(): v for k, v in up.headers.items()}
        job.live.set_result(Observation(LEGACY, up.status, headers, body, perf_counter() - sent))


def _give_body(job: ShadowJob, body: bytes | ShadowOutcome) -> None:
    if not job.body.done():
        job.body.set_result(body)


def _abandon(job: ShadowJob, reason: str) -> None:
    """The live exchange ended without an answer to compare against."""
    _give_body(job, ShadowOutcome.CANCELLED)
    if not job.live.done():
        job.live.set_result(Observation(LEGACY, error=reason))


def _caused_by_limit(exc: BaseException) -> bool:
    """The client session wraps errors raised by the body it sends; look inside."""
    seen: BaseException | None = exc
    while seen is not None:
        if isinstance(seen, BodyTooLargeError):
            return True
        seen = seen.__cause__ or seen.__context__
    return False


def _cut_off(request: web.Request) -> None:
    """Close the client connection so a truncated body cannot pass as complete."""
    if request.transport is not None:
        request.transport.close()
