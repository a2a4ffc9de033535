"""The agent path: the agent answers a live request, legacy is the safety net.

Buffered (the default with fallback on): the agent's answer is read whole
(bounded) and checked before the first byte goes out, so even a failure
mid-body falls back cleanly. Streamed: the first byte commits; fallback only
before it. On side-effect-free routes legacy is called alongside: its answer
is the evidence the rollout needs and makes fallback instant. On other routes
only the agent is called, and legacy answers instead only when the agent
never received the request (it may have acted on it).
"""

from __future__ import annotations

import asyncio
import random
import time
from collections.abc import Awaitable, Callable
from time import perf_counter

import structlog
from aiohttp import web
from multidict import CIMultiDict

from proxy.agentmetrics import genai_attributes
from proxy.answer import Accounting, Answer, answered, fetch
from proxy.capture import BodyCapture
from proxy.downstream import ClientGoneError, Downstream, cut_off
from proxy.errors import UpstreamError
from proxy.evidence import Evidence, Exchange
from proxy.fallback import FallbackReason, check, classify_failure
from proxy.headers import REQUEST_ID, lowered, to_client
from proxy.metrics import Metrics
from proxy.replies import failure_response
from proxy.retry import Retry, classify, next_delay, retry_after
from proxy.routes import CompiledRoute
from proxy.routing import RouteRuntime
from proxy.tasks import TaskSet
from proxy.tracecontext import TraceContext
from proxy.tracing import Span, Tracing
from proxy.types import AGENT, LEGACY, Failure, Mode, Observation, ShadowOutcome
from proxy.upstream import Upstream
from proxy.usage import Usage, UsageReader

log = structlog.get_logger("proxy.agent")

SERVED_BY = "X-Served-By"
FALLBACK_REASON = "X-Fallback-Reason"

# Forwards to legacy through the live path: (body, extra response headers).
LegacyForward = Callable[[bytes, CIMultiDict[str]], Awaitable[web.StreamResponse]]


def _respond(answer: Answer, served_by: str, reason: str | None = None) -> web.Response:
    obs = answer.observation
    headers = to_client(answer.headers)
    headers.popall("Content-Length", None)
    headers[SERVED_BY] = served_by
    if reason is not None:
        headers[FALLBACK_REASON] = reason
    return web.Response(status=obs.status, body=obs.body or b"", headers=headers)


class AgentPath:
    def __init__(
        self,
        agent: Upstream,
        legacy: Upstream,
        evidence: Evidence,
        metrics: Metrics,
        tasks: TaskSet,
        send_timeout: float,
        max_parallel: int,
        rng: random.Random | None = None,
        tracing: Tracing | None = None,
    ) -> None:
        self.agent = agent
        self._tracing = tracing or Tracing()
        self.legacy = legacy
        self.send_timeout = send_timeout
        self._evidence = evidence
        self._metrics = metrics
        self._tasks = tasks
        self._rng = rng or random.Random()
        self._parallel = 0
        self.max_parallel = max_parallel  # legacy calls alongside the agent, all routes

    async def serve(
        self,
        request: web.BaseRequest,
        route: CompiledRoute,
        rt: RouteRuntime,
        headers: CIMultiDict[str],
        trace: TraceContext,
        body: bytes,
        forward_legacy: LegacyForward,
        forced: bool,
    ) -> web.StreamResponse:
        now = time.monotonic()
        if not forced and not rt.agent_allowed(now):
            return await self._fall_back(
                route, rt, FallbackReason.BREAKER_OPEN, "circuit open", body, forward_legacy
            )
        safe = route.may_mirror(request.method)
        headers.setdefault(REQUEST_ID, f"{random.getrandbits(64):016x}")
        if not rt.streamed:  # the answer is read and checked here: it must be readable
            headers["Accept-Encoding"] = "identity"
        legacy_call = self._alongside(route, rt, request, headers, trace, body) if safe else None
        try:
            if rt.streamed:
                return await self._streamed(
                    request, route, rt, headers, trace, body, legacy_call, forward_legacy, safe
                )
            answer = await self._call_agent(route, rt, request, headers, trace, body, safe)
        except asyncio.CancelledError:  # the client left while the agent was working
            rt.agent_cancelled(time.monotonic())
            if legacy_call is not None:
                legacy_call.cancel()
            raise
        obs = answer.observation
        ok = obs.error is None and obs.status < 500
        rt.agent_result(ok, obs.latency, time.monotonic(), Mode.LIVE, self._metrics)
        verdict = self._verdict(rt, answer)
        if verdict is not None and not safe and answer.error_kind != "connect":
            # The agent received a request that is not side-effect free; calling
            # legacy too could do the same thing twice. Its answer stands.
            reason, detail = verdict
            log.warning("fallback_unsafe", route=route.name, reason=reason.value, detail=detail)
            verdict = None
        if verdict is None or not rt.fallback_enabled or rt.autonomous:
            rt.served(False, now, self._metrics)
            self._later(route, rt, request, headers, trace, body, legacy_call, answer, AGENT)
            if answer.failure is not None:
                self._metrics.request(route.name, AGENT, answer.failure.status)
                return _agent_failed(answer.failure)
            self._metrics.request(route.name, AGENT, obs.status)
            return _respond(answer, AGENT)
        reason, detail = verdict
        if legacy_call is not None:
            self._later(route, rt, request, headers, trace, body, legacy_call, answer, LEGACY)
        return await self._fall_back(route, rt, reason, detail, body, forward_legacy, legacy_call)

    def _alongside(
        self,
        route: CompiledRoute,
        rt: RouteRuntime,
        request: web.BaseRequest,
        headers: CIMultiDict[str],
        trace: TraceContext,
        body: bytes,
    ) -> asyncio.Task[Answer] | None:
        """Legacy's answer to the same request, for evidence and instant fallback.
        Bounded like shadow work: at the bound, the request goes without it."""
        if rt.autonomous:
            return None
        if self._parallel >= self.max_parallel:
            self._metrics.shadow(route.name, ShadowOutcome.DROPPED_INFLIGHT)
            return None
        self._parallel += 1
        task = self._tasks.spawn(
            self._buffered(self.legacy, route, request, headers, trace, body, route.capture_limit),
            name=f"alongside:{route.name}",
        )
        task.add_done_callback(self._alongside_done)
        return task

    def _alongside_done(self, task: asyncio.Task[Answer]) -> None:
        self._parallel -= 1

    def _verdict(self, rt: RouteRuntime, answer: Answer) -> tuple[FallbackReason, str] | None:
        obs = answer.observation
        if obs.error is not None:
            kind = answer.error_kind or "error"
            return (classify_failure(kind), obs.error) if rt.fallback.on_error else None
        return check(obs.status, obs.headers, obs.body, rt.fallback)

    async def _fall_back(
        self,
        route: CompiledRoute,
        rt: RouteRuntime,
        reason: FallbackReason,
        detail: str,
        body: bytes,
        forward_legacy: LegacyForward,
        legacy_call: asyncio.Task[Answer] | None = None,
    ) -> web.StreamResponse:
        rt.served(True, time.monotonic(), self._metrics)
        self._metrics.fallback(route.name, reason.value)
        log.info("fallback", route=route.name, reason=reason.value, detail=detail)
        if legacy_call is not None:
            answer = await asyncio.shield(legacy_call)
            obs = answer.observation
            if answer.failure is not None:  # legacy already failed once: say so, don't retry
                self._metrics.request(route.name, LEGACY, answer.failure.status)
                response = failure_response(answer.failure, LEGACY)
                response.headers.update({SERVED_BY: LEGACY, FALLBACK_REASON: reason.value})
                return response
            if obs.body is not None:
                self._metrics.request(route.name, LEGACY, obs.status)
                return _respond(answer, LEGACY, reason.value)
            # legacy's answer was too large to hold: ask again, streaming this time
        extra = CIMultiDict({SERVED_BY: LEGACY, FALLBACK_REASON: reason.value})
        return await forward_legacy(body, extra)

    async def _call_agent(
        self,
        route: CompiledRoute,
        rt: RouteRuntime,
        request: web.BaseRequest,
        headers: CIMultiDict[str],
        trace: TraceContext,
        body: bytes,
        safe: bool,
    ) -> Answer:
        """The agent's buffered answer, retried on transient failures within the deadline;
        each attempt is its own span."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.agent.config.timeout
        attempt = 1
        while True:
            answer = await self._buffered(
                self.agent, route, request, headers, trace, body, rt.max_buffer,
                deadline - loop.time(), attempt,
            )  # fmt: skip
            obs = answer.observation
            kind = answer.error_kind
            verdict = classify(None if kind else obs.status, kind)
            wait = retry_after(answer.headers.get("Retry-After"), time.time()) if not kind else None
            delay = next_delay(
                attempt,
                rt.retry,
                verdict,
                wait,
                deadline - loop.time(),
                sent_body=kind != "connect",
                side_effect_free=safe,
                rng=self._rng,
            )
            if delay is None or verdict is not Retry.TRANSIENT:
                return answer
            self._metrics.retry(route.name)
            await asyncio.sleep(delay)
            attempt += 1

    async def _buffered(
        self,
        upstream: Upstream,
        route: CompiledRoute,
        request: web.BaseRequest,
        headers: CIMultiDict[str],
        trace: TraceContext,
        body: bytes,
        limit: int,
        budget: float | None = None,
        attempt: int = 1,
    ) -> Answer:
        """One exchange, read whole up to ``limit`` (body None past it), in its
        own span; errors are data. An agent's answer is read for its usage."""
        limits = upstream.timeout(budget) if budget is not None else upstream.default_timeout
        span = self._tracing.span(
            "live", trace, route=route.name, backend=upstream.name, attempt=attempt
        )
        headers = CIMultiDict(headers)  # legacy's call runs alongside: each its own parent id
        headers.update(span.headers())
        account = Accounting(self._metrics, route, Mode.LIVE, agent=upstream is self.agent)
        # A failure names the configured timeout, not what was left of it after retries.
        return await fetch(
            upstream, request.method, request.raw_path, headers, body, BodyCapture(limit), limits,
            span, account, named=upstream.default_timeout,
        )  # fmt: skip

    async def _streamed(
        self,
        request: web.BaseRequest,
        route: CompiledRoute,
        rt: RouteRuntime,
        headers: CIMultiDict[str],
        trace: TraceContext,
        body: bytes,
        legacy_call: asyncio.Task[Answer] | None,
        forward_legacy: LegacyForward,
        safe: bool,
    ) -> web.StreamResponse:
        """The first byte commits: fallback only on an error or a status before it,
        and on a route with side effects only when the agent never got the request."""
        start = perf_counter()
        policy = rt.fallback
        client = Downstream(self.send_timeout)
        response: web.StreamResponse | None = None
        span = self._tracing.span("live", trace, route=route.name, backend=AGENT)
        headers.update(span.headers())
        reader: UsageReader | None = None
        try:
            async with self.agent.request(
                request.method, request.raw_path, headers, body or None
            ) as up:
                status_bad = (up.status >= 500 and policy.on_5xx) or up.status in policy.statuses
                if status_bad and rt.fallback_enabled and safe:
                    answered(span, up.status)
                    rt.agent_result(
                        up.status < 500, None, time.monotonic(), Mode.LIVE, self._metrics
                    )
                    detail = f"agent answered {up.status}"
                    return await self._fall_back(
                        route, rt, FallbackReason.STATUS, detail, body, forward_legacy, legacy_call
                    )
                head = web.StreamResponse(status=up.status, reason=up.reason)
                head.headers.extend(to_client(up.headers))
                head.headers[SERVED_BY] = AGENT
                await client.head(head.prepare(request))
                response = head  # committed: no fallback from here on
                self._metrics.request(route.name, AGENT, up.status)
                rt.served(False, time.monotonic(), self._metrics)
                copy = BodyCapture(route.capture_limit)
                # Usage is read from a copy of each chunk as it passes, past the capture limit too.
                reader = UsageReader(route.agent, up.headers.get("Content-Type"))
                async for chunk in up.chunks():
                    copy.feed(chunk)
                    reader.feed(chunk)
                    await client.send(response.write(chunk))
                await client.send(response.write_eof())
                latency = perf_counter() - start - client.waited  # the agent's time, not ours
                self._metrics.upstream(route.name, AGENT, Mode.LIVE, latency)
                rt.agent_result(
                    up.status < 500, latency, time.monotonic(), Mode.LIVE, self._metrics
                )
                usage = self._usage(route, reader, True, latency, up.status, span)
                obs = Observation(
                    AGENT, up.status, lowered(up.headers), copy.value(), latency, usage=usage
                )
                answered(span, up.status)
                answer = Answer(obs, up.headers)
                self._later(route, rt, request, headers, trace, body, legacy_call, answer, AGENT)
                return response
        except ClientGoneError:
            span.end("client_gone")
            self._metrics.rejected(route.name, "client_gone")
            rt.agent_cancelled(time.monotonic())
            if legacy_call is not None:
                legacy_call.cancel()
            return response or web.Response(status=499)
        except (UpstreamError, TimeoutError, OSError, ValueError) as exc:
            failure = self.agent.failure(exc)
            if reader is not None:  # a stream cut short: its usage is missing, not zero
                seconds = perf_counter() - start - client.waited
                self._usage(route, reader, False, seconds, 0, span, failure.kind)
            span.end(failure.kind)
            if response is not None and failure.kind == "timeout" and client.waited >= 1.0:
                # The agent's clock ran while a slow client held us up: not its failure.
                self._metrics.rejected(route.name, "client_gone")
                rt.agent_cancelled(time.monotonic())
                cut_off(request)
                return response
            self._metrics.upstream_error(route.name, AGENT, Mode.LIVE, failure.kind)
            rt.agent_result(False, None, time.monotonic(), Mode.LIVE, self._metrics)
            if response is not None:  # mid-body: the client must see a cut, not a short answer
                log.warning("agent_failed_mid_body", route=route.name, detail=failure.detail)
                cut_off(request)
                return response
            received = failure.kind != "connect"  # the agent may have acted on it
            if not rt.fallback_enabled or not policy.on_error or (received and not safe):
                if legacy_call is not None:
                    legacy_call.cancel()
                rt.served(False, time.monotonic(), self._metrics)
                self._metrics.request(route.name, AGENT, failure.status)
                return _agent_failed(failure)
            reason = classify_failure(failure.kind)
            return await self._fall_back(
                route, rt, reason, failure.reason, body, forward_legacy, legacy_call
            )

    def _usage(
        self,
        route: CompiledRoute,
        reader: UsageReader,
        complete: bool,
        seconds: float,
        status: int,
        span: Span,
        error: str | None = None,
    ) -> Usage | None:
        """What a streamed answer said of its usage, counted (a cut stream: missing)."""
        usage = reader.finish(complete)
        if usage is not None:
            self._metrics.agent.usage(route.name, Mode.LIVE, usage, seconds, status, error)
            span.set(genai_attributes(usage))
        return usage

    def _later(
        self,
        route: CompiledRoute,
        rt: RouteRuntime,
        request: web.BaseRequest,
        headers: CIMultiDict[str],
        trace: TraceContext,
        body: bytes,
        legacy_call: asyncio.Task[Answer] | None,
        agent: Answer,
        served_by: str,
    ) -> None:
        """Compare with legacy's parallel answer off the client's clock."""
        if legacy_call is None:
            return
        exchange = Exchange(
            route.name,
            headers.get(REQUEST_ID, ""),
            trace.trace_id,
            request.method,
            request.raw_path,
            served_by,
            headers,
            body,
            trace,
        )

        async def judge() -> None:
            legacy = (await legacy_call).observation
            if legacy.error is None:
                rt.window.legacy_call(legacy.latency, time.monotonic())
            await self._evidence.record(exchange, route, legacy, agent.observation, rt.window)

        self._tasks.spawn(judge(), name=f"evidence:{route.name}")


def _agent_failed(failure: Failure) -> web.Response:
    response = failure_response(failure, AGENT)
    response.headers[SERVED_BY] = AGENT
    return response
