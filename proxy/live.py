"""The live path: match route → admit shadow → forward to legacy → stream back.

The client's response never waits on anything but legacy. Bodies stream in
both directions; a copy is kept (bounded) only when a shadow job needs it,
and the shadow job gets it, with legacy's answer, as each ends; the agent is
called only after legacy has answered, so its work never delays a live
exchange. Upstream failures become a small JSON 502/504 naming
the backend and the reason, never a stack trace; a client that leaves or
stops reading is the client's doing, never counted against legacy.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from time import perf_counter

import aiohttp
import structlog
from aiohttp import hdrs, web
from multidict import CIMultiDict

from proxy.agentpath import FALLBACK_REASON, SERVED_BY, AgentPath
from proxy.call import Call
from proxy.downstream import ClientGoneError, Downstream, cut_off
from proxy.errors import BodyTooLargeError, UpstreamError
from proxy.headers import lowered, to_client, to_upstream
from proxy.job import ShadowJob
from proxy.metrics import Metrics
from proxy.replies import error_response, failure_response
from proxy.routes import CompiledRoute, RouteTable
from proxy.routing import RouteRuntime, Routing
from proxy.shadow import Shadow
from proxy.target import refusal, routing_path
from proxy.tracecontext import TraceContext
from proxy.tracing import Tracing
from proxy.types import AGENT, LEGACY, PROXY, Mode, Observation, ShadowOutcome
from proxy.upstream import Upstream

log = structlog.get_logger("proxy.live")


class LiveHandler:
    """The aiohttp handler for every proxied request."""

    def __init__(
        self,
        routing: Routing,
        legacy: Upstream,
        shadow: Shadow | None,
        agent: AgentPath | None,
        metrics: Metrics,
        send_timeout: float,
        force_header: str | None = None,
        tracing: Tracing | None = None,
    ) -> None:
        self.routing = routing  # swapped whole by a config reload
        self.tracing = tracing or Tracing()
        self.legacy = legacy
        self.shadow = shadow
        self.agent = agent
        self.metrics = metrics
        self.send_timeout = send_timeout
        self.force_header = force_header

    async def handle(self, request: web.BaseRequest) -> web.StreamResponse:
        """One request, as an aiohttp application would run it: ``Expect:
        100-continue`` is answered (or refused) first, then it is served."""
        if request.headers.get(hdrs.EXPECT):
            refused = await self.expect(request)
            await request.writer.drain()
            if refused is not None:
                return refused
        return await self(request)

    async def __call__(self, request: web.BaseRequest) -> web.StreamResponse:
        start = perf_counter()
        routing = self.routing
        route = self._admitted(request, routing.table)
        if isinstance(route, web.StreamResponse):
            return route
        method = request.method
        raw_path = request.raw_path
        length = request.content_length
        headers = to_upstream(
            request.headers,
            client_ip=request.remote,
            scheme=request.scheme,
            preserve_host=route.preserve_host,
        )
        incoming = request.headers
        trace = self.tracing.incoming(
            incoming.getall("traceparent", None), incoming.getall("tracestate", None)
        )
        # Every log event of this request, and of the shadow work it spawns, names the trace.
        structlog.contextvars.bind_contextvars(trace_id=trace.trace_id)
        runtime = routing.runtimes.get(route.name)
        forced = self._forced(request)
        if runtime is not None and self._agent_serves(request, runtime, headers, forced):
            return await self._serve_agent(request, route, runtime, headers, trace, start, forced)
        job = None
        if route.shadow and self.shadow is not None:
            job = self.shadow.admit(
                route, method, raw_path, headers, trace, request.query, length, request.remote,
                runtime,
            )  # fmt: skip
        body = None
        if request.body_exists:
            body = _request_body(request.content, route.body_limit, job)
        elif job is not None:
            job.body = b""
        try:
            return await self._forward(request, route, headers, trace, body, job, start)
        finally:
            if job is not None:
                _abandon(job, "the live exchange ended without an answer")
                job.start()  # the client has its answer: the agent's turn

    async def expect(self, request: web.BaseRequest) -> web.StreamResponse | None:
        """``Expect: 100-continue``: a request refused on its head alone (a bad
        target, a body over the route's limit) is refused now, before the client
        sends a body for nothing; else the client is told to go on."""
        admitted = self._admitted(request, self.routing.table)
        if isinstance(admitted, web.StreamResponse):
            admitted.force_close()  # Connection: close: the body is not wanted
            return admitted
        expectation = request.headers.get("Expect", "")
        if request.version == (1, 1):  # as aiohttp's own expect handler
            if expectation.lower() != "100-continue":
                raise web.HTTPExpectationFailed(text=f"Unknown Expect: {expectation}")
            await request.writer.write(b"HTTP/1.1 100 Continue\r\n\r\n")
            request.writer.output_size = 0  # the response proper has not started
        return None

    def _admitted(
        self, request: web.BaseRequest, table: RouteTable
    ) -> CompiledRoute | web.Response:
        """The request's route, or the refusal its head alone earns: a target
        no backend may see, or a declared body over the route's limit."""
        refused = self._refused(request, table)
        if refused is not None:
            return refused
        route = _route(request, table)
        length = request.content_length
        if length is not None and length > route.body_limit:
            return self._too_large(route)
        return route

    def _refused(self, request: web.BaseRequest, table: RouteTable) -> web.Response | None:
        """The proxy's own answer to what no backend may see (proxy/target.py).
        The connection closes after a refusal: what follows on it is not to be
        trusted (and after CONNECT the parser reads no more requests)."""
        route = table.fallback
        if request.method == "OPTIONS" and request.raw_path == "*":  # the server, not a resource
            self.metrics.request(route.name, PROXY, 200)
            return web.Response(status=200)
        refused = refusal(
            request.method,
            request.version,
            request.raw_path,
            request.path,
            request.headers.getall("Transfer-Encoding", ()),
            keep_escaped_slashes=table.keep_escaped_slashes,
        )
        if refused is None:
            return None
        response = self._reject(route, *refused)
        if refused.status == 405:
            response.headers["Allow"] = ""  # no method is allowed a tunnel
        response.force_close()
        return response

    def _agent_serves(
        self,
        request: web.BaseRequest,
        runtime: RouteRuntime,
        headers: CIMultiDict[str],
        forced: str | None,
    ) -> bool:
        """The route's share, sticky by its key; a forcing header wins (for testing)."""
        if self.agent is None or forced == LEGACY:
            return False
        if forced == AGENT:
            return True
        share = runtime.percent
        return share > 0 and runtime.splitter.chosen(share, headers, request.query, request.remote)

    def _forced(self, request: web.BaseRequest) -> str | None:
        if self.force_header is None:
            return None
        value = request.headers.get(self.force_header, "").strip().lower()
        return value if value in (LEGACY, AGENT) else None

    async def _serve_agent(
        self,
        request: web.BaseRequest,
        route: CompiledRoute,
        runtime: RouteRuntime,
        headers: CIMultiDict[str],
        trace: TraceContext,
        start: float,
        forced: str | None,
    ) -> web.StreamResponse:
        """The agent was chosen: its request body is needed whole (bounded), twice."""
        assert self.agent is not None

        async def forward_legacy(
            body: bytes | AsyncIterator[bytes], extra: CIMultiDict[str]
        ) -> web.StreamResponse:
            return await self._forward(
                request, route, headers, trace, body, None, start, extra, "fallback"
            )

        body = b""
        if request.body_exists:
            limit = min(route.body_limit, runtime.max_buffer)
            try:
                body = await _read_whole(request.content, limit)
            except BodyTooLargeError as exc:  # too big to hold: legacy streams it
                rest = _request_body(request.content, route.body_limit - len(exc.prefix), None)
                extra = CIMultiDict({SERVED_BY: LEGACY, FALLBACK_REASON: "too_large"})
                runtime.served(True, time.monotonic(), self.metrics)
                self.metrics.fallback(route.name, "too_large")
                return await forward_legacy(_chain(exc.prefix, rest), extra)
            except ClientGoneError:
                self.metrics.rejected(route.name, "client_gone")
                return web.Response(status=499)
        return await self.agent.serve(
            request, route, runtime, headers, trace, body, forward_legacy, forced == AGENT
        )

    async def _forward(
        self,
        request: web.BaseRequest,
        route: CompiledRoute,
        headers: CIMultiDict[str],
        trace: TraceContext,
        body: bytes | AsyncIterator[bytes] | None,
        job: ShadowJob | None,
        start: float,
        extra: CIMultiDict[str] | None = None,
        span_name: str = "live",
    ) -> web.StreamResponse:
        """Legacy answers, in its own span of the request's trace."""
        if not self.tracing.enabled:  # the hot path: a parent id for legacy, nothing to export
            headers.update(trace.child())
            return await self._exchange(request, route, headers, body, job, start, extra)
        span = self.tracing.span(span_name, trace, route=route.name, backend=LEGACY)
        headers.update(span.headers())
        try:
            response = await self._exchange(request, route, headers, body, job, start, extra)
        except BaseException as exc:
            span.end(type(exc).__name__)
            raise
        span.set(status=response.status)
        span.end(f"status {response.status}" if response.status >= 500 else None)
        return response

    async def _exchange(
        self,
        request: web.BaseRequest,
        route: CompiledRoute,
        headers: CIMultiDict[str],
        body: bytes | AsyncIterator[bytes] | None,
        job: ShadowJob | None,
        start: float,
        extra: CIMultiDict[str] | None,
    ) -> web.StreamResponse:
        name = route.name
        sent = perf_counter()
        client = Downstream(self.send_timeout)
        response: web.StreamResponse | None = None
        try:
            async with self.legacy.request(request.method, request.raw_path, headers, body) as up:
                received = perf_counter()
                whole = up.whole_body()
                head = _response_for(up, whole)
                if extra is not None:
                    head.headers.update(extra)
                await client.head(head.prepare(request))
                response = head  # from here on, the client has seen a status
                self.metrics.overhead(name, (sent - start) + (perf_counter() - received))
                self.metrics.request(name, LEGACY, up.status)
                if whole is None:
                    await _pump(up, response, client, job, sent)
                elif job is not None:
                    _observe(job, up, whole if job.capture().feed(whole) else None, sent)
            # Legacy's connection is back in the pool before the last write to
            # the client, which may wait on a slow reader.
            self.metrics.upstream(name, LEGACY, Mode.LIVE, perf_counter() - sent)
            await client.send(response.write_eof())
            return response
        except asyncio.CancelledError:  # the client hung up (handler cancellation)
            self.metrics.rejected(name, "client_gone")
            raise
        except (
            ClientGoneError,
            BodyTooLargeError,
            UpstreamError,
            TimeoutError,
            OSError,
            ValueError,
        ) as exc:
            if _caused_by(exc, ClientGoneError):
                self.metrics.rejected(name, "client_gone")
                if job is not None:
                    _abandon(job, "the client left")
                return response or web.Response(status=499)
            if _caused_by(exc, BodyTooLargeError):
                if response is None:
                    return self._too_large(route)
                self.metrics.rejected(name, "body_too_large")
                cut_off(request)
                return response
            return self._legacy_failed(request, route, exc, job, response)

    def _legacy_failed(
        self,
        request: web.BaseRequest,
        route: CompiledRoute,
        exc: BaseException,
        job: ShadowJob | None,
        response: web.StreamResponse | None,
    ) -> web.StreamResponse:
        failure = self.legacy.failure(exc)
        self.metrics.upstream_error(route.name, LEGACY, Mode.LIVE, failure.kind)
        if job is not None:
            _abandon(job, failure.reason)
        if response is not None:  # headers already sent: the client must see a cut
            log.warning("legacy_failed_mid_body", route=route.name, detail=failure.detail)
            cut_off(request)
            return response
        log.warning("legacy_failed", route=route.name, detail=failure.detail)
        self.metrics.request(route.name, LEGACY, failure.status)
        return failure_response(failure, LEGACY)

    def _reject(
        self, route: CompiledRoute, status: int, error: str, reason: str, label: str
    ) -> web.Response:
        self.metrics.rejected(route.name, label)
        self.metrics.request(route.name, PROXY, status)
        return error_response(status, error, reason)

    def _too_large(self, route: CompiledRoute) -> web.Response:
        reason = f"request body exceeds {route.body_limit} bytes"
        return self._reject(route, 413, "payload_too_large", reason, "body_too_large")


def _route(request: web.BaseRequest, table: RouteTable) -> CompiledRoute:
    keep = table.keep_escaped_slashes
    return table.match(
        request.method, routing_path(request.raw_path, request.path, keep_escaped_slashes=keep)
    )


def _response_for(up: Call, whole: bytes | None) -> web.StreamResponse:
    """The client's response: whole (head and body in one write) when the body
    has already arrived, else streamed. A header aiohttp will not send is
    legacy's fault."""
    if whole is not None:
        response: web.StreamResponse = web.Response(
            status=up.status, reason=up.reason, headers=to_client(up.headers), body=whole
        )
    else:
        response = web.StreamResponse(status=up.status, reason=up.reason)
        response.headers.extend(to_client(up.headers))
    response.headers[SERVED_BY] = LEGACY
    return response


async def _client_chunks(content: aiohttp.StreamReader) -> AsyncIterator[bytes]:
    """The client's body as it arrives; a client that breaks off is ClientGoneError."""
    while True:
        try:
            chunk = await content.readany()
        except (ConnectionError, aiohttp.ClientPayloadError, asyncio.IncompleteReadError) as exc:
            raise ClientGoneError from exc
        if not chunk:
            return
        yield chunk


async def _read_whole(content: aiohttp.StreamReader, limit: int) -> bytes:
    """The whole body, or BodyTooLargeError carrying what was read so far."""
    chunks: list[bytes] = []
    size = 0
    async for chunk in _client_chunks(content):
        size += len(chunk)
        chunks.append(chunk)
        if size > limit:
            raise BodyTooLargeError(limit, b"".join(chunks))
    return b"".join(chunks)


async def _chain(prefix: bytes, rest: AsyncIterator[bytes]) -> AsyncIterator[bytes]:
    yield prefix
    async for chunk in rest:
        yield chunk


async def _request_body(
    content: aiohttp.StreamReader, limit: int, job: ShadowJob | None
) -> AsyncIterator[bytes]:
    """Stream the client's body upstream, enforcing the limit, copying for a shadow."""
    capture = job.capture() if job is not None else None
    size = 0
    async for chunk in _client_chunks(content):
        size += len(chunk)
        if size > limit:
            raise BodyTooLargeError(limit)
        if capture is not None and job is not None and not capture.feed(chunk):
            _give_body(job, job.too_large())
            job.start()  # nothing to send the agent: the job ends now, not with the upload
            capture = None
        yield chunk
    if capture is not None and job is not None:
        _give_body(job, capture.value() or b"")


async def _pump(
    upstream: Call,
    response: web.StreamResponse,
    client: Downstream,
    job: ShadowJob | None,
    sent: float,
) -> None:
    """Copy the upstream body to the client; keep a bounded copy for the shadow."""
    copy = job.capture() if job is not None else None
    async for chunk in upstream.chunks():
        if job is not None and copy is not None and not copy.feed(chunk):
            copy = None  # too large to compare: the job ends now, not with the stream
            _observe(job, upstream, None, sent)
            if job.body is not None:  # its outcome is known: its slot is given back
                job.start()
        await client.send(response.write(chunk))
    if copy is not None:
        _observe(job, upstream, copy.value(), sent)


def _observe(job: ShadowJob | None, up: Call, body: bytes | None, sent: float) -> None:
    if job is not None and job.live is None:
        job.live = Observation(LEGACY, up.status, lowered(up.headers), body, perf_counter() - sent)


def _give_body(job: ShadowJob, body: bytes | ShadowOutcome) -> None:
    if job.body is None:
        job.body = body


def _abandon(job: ShadowJob, reason: str) -> None:
    """The live exchange ended without an answer to compare against."""
    _give_body(job, ShadowOutcome.CANCELLED)
    if job.live is None:
        job.live = Observation(LEGACY, error=reason)


def _caused_by(exc: BaseException, kind: type[BaseException]) -> bool:
    """An error may wrap the one that caused it (a failed upload, a cut client); look inside."""
    seen: BaseException | None = exc
    while seen is not None:
        if isinstance(seen, kind):
            return True
        seen = seen.__cause__ or seen.__context__
    return False
