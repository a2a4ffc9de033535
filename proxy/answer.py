"""One call to a backend, read whole (bounded) and accounted: the shadow
path's calls, and the agent path's buffered ones.

The call's span and its upstream metrics are closed here, an agent's answer
is read for its usage (a cut one: missing), and every failure is data
(``Answer.failure``), never an exception — like scientist's one ``raised``
sink for the candidate side. Cancellation still propagates.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from time import perf_counter

from multidict import CIMultiDict, CIMultiDictProxy

from proxy.call import Timeout
from proxy.capture import BodyCapture
from proxy.headers import lowered
from proxy.metrics import Metrics
from proxy.routes import CompiledRoute
from proxy.tracing import Span
from proxy.types import Failure, Mode, Observation
from proxy.upstream import Upstream

_NO_HEADERS: CIMultiDictProxy[str] = CIMultiDictProxy(CIMultiDict())


@dataclass(frozen=True, slots=True)
class Answer:
    """A buffered answer: what the comparison sees and what a client would get."""

    observation: Observation
    headers: CIMultiDictProxy[str]
    failure: Failure | None = None  # no answer at all, and why

    @property
    def error_kind(self) -> str | None:  # connect | timeout | disconnect | invalid_response
        return self.failure.kind if self.failure is not None else None


@dataclass(frozen=True, slots=True)
class Accounting:
    """Where a call is counted: its route, live or shadow, and whether it is
    the agent's (read for its usage)."""

    metrics: Metrics
    route: CompiledRoute
    mode: Mode
    agent: bool


async def fetch(
    upstream: Upstream,
    method: str,
    raw_path: str,
    headers: CIMultiDict[str],
    body: bytes,
    capture: BodyCapture,
    limits: Timeout,
    span: Span,
    account: Accounting,
    named: Timeout | None = None,
) -> Answer:
    """One exchange within ``limits``, read into ``capture`` (its value: None
    past the bound). ``named``: the timeout a failure names when ``limits`` is
    what was left of it after retries."""
    start = perf_counter()
    route, mode, metrics = account.route.name, account.mode, account.metrics
    content_type: str | None = None  # set once a head arrived: the body may break off
    try:
        async with upstream.request(
            method, raw_path, headers, body or None, timeout=limits
        ) as response:
            content_type = response.headers.get("Content-Type", "")
            kept = await response.read_into(capture)
            latency = perf_counter() - start
            status, response_headers = response.status, response.headers
    except asyncio.CancelledError:
        span.end("cancelled")
        raise
    except Exception as exc:  # failures are data
        failure = upstream.failure(exc, named or limits)
        latency = perf_counter() - start
        span.end(failure.kind)
        metrics.upstream_error(route, upstream.name, mode, failure.kind)
        if account.agent and content_type is not None:  # it broke off: its usage is missing
            metrics.agent.cut(
                route, mode, account.route.agent, content_type, capture.value(), latency,
                failure.kind,
            )  # fmt: skip
        observation = Observation(upstream.name, latency=latency, error=failure.reason)
        return Answer(observation, _NO_HEADERS, failure)
    observation = Observation(upstream.name, status, lowered(response_headers), kept, latency)
    if account.agent:
        observation = metrics.agent.answer(route, mode, account.route.agent, observation, span)
    metrics.upstream(route, upstream.name, mode, latency)
    answered(span, status)
    return Answer(observation, response_headers)


def answered(span: Span, status: int) -> None:
    """End the span of a call that got an answer: a 5xx marks it failed."""
    span.set(status=status)
    span.end(f"status {status}" if status >= 500 else None)
