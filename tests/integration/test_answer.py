"""``fetch``: one call read whole, against real backends on 127.0.0.1 and a
fake OTLP collector. Whatever happens, the call's span ends saying how, the
upstream metrics count it, and only cancellation is raised."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
from fakes import Fake, dead_url, start_fake
from multidict import CIMultiDict
from otlp import Collector

from proxy.answer import Accounting, Answer, fetch
from proxy.app import build_metrics
from proxy.capture import BodyCapture
from proxy.metrics import Metrics
from proxy.routes import RouteTable
from proxy.settings import settings_from
from proxy.tracing import Tracing, TracingSettings
from proxy.types import Mode
from proxy.upstream import Upstream

TRACE = "4bf92f3577b34da6a3ce929d0e0e4736"


async def call(url: str, collector: Collector) -> tuple[Answer, Metrics]:
    """``fetch`` from an agent upstream at ``url``, for route ``api``, live."""
    settings = settings_from(
        {
            "backends": {"legacy": {"url": url}, "agent": {"url": url, "timeout": "5s"}},
            "routes": [{"name": "api", "match": {"prefix": "/"}}],
        }
    )
    metrics = build_metrics(settings)
    route = RouteTable.from_settings(settings).routes[0]
    tracing = Tracing(TracingSettings(otlp_endpoint=collector.url, timeout=2.0, interval=0.05))
    span = tracing.span("live", tracing.incoming(f"00-{TRACE}-00f067aa0ba902b7-01", None))
    upstream = Upstream("agent", settings.backends.agent)  # type: ignore[arg-type]
    await upstream.start()
    try:
        answer = await fetch(
            upstream, "POST", "/v1/x", CIMultiDict(), b"{}", BodyCapture(1024),
            upstream.default_timeout, span, Accounting(metrics, route, Mode.LIVE, agent=True),
        )  # fmt: skip
    finally:
        await upstream.close()
        await tracing.close()
    return answer, metrics


def errors(metrics: Metrics, kind: str) -> float | None:
    labels = {"route": "api", "backend": "agent", "mode": "live", "kind": kind}
    return metrics.registry.get_sample_value("shadow_proxy_upstream_errors_total", labels)


async def test_an_answer_keeps_its_body_and_ends_its_span_ok(
    collector: Collector, aiohttp_server: Any
) -> None:
    agent = await start_fake(Fake("agent", body=b'{"answer": 42}'), aiohttp_server)
    answer, metrics = await call(agent.url, collector)
    assert answer.failure is None
    assert (answer.observation.status, answer.observation.body) == (200, b'{"answer": 42}')
    assert answer.headers["Content-Type"].startswith("application/json")
    assert collector.span("live").status.message == ""
    labels = {"route": "api", "backend": "agent", "mode": "live"}
    name = "shadow_proxy_upstream_duration_seconds_count"
    assert metrics.registry.get_sample_value(name, labels) == 1


async def test_a_5xx_is_an_answer_whose_span_is_marked_failed(
    collector: Collector, aiohttp_server: Any
) -> None:
    agent = await start_fake(Fake("agent", status=503), aiohttp_server)
    answer, _ = await call(agent.url, collector)
    assert (answer.failure, answer.observation.status) == (None, 503)
    assert collector.span("live").status.message == "status 503"


async def test_a_dead_backend_is_data_named_in_the_span_and_the_error_count(
    collector: Collector,
) -> None:
    answer, metrics = await call(dead_url(), collector)
    assert answer.failure is not None and answer.error_kind == "connect"
    assert answer.observation.error == answer.failure.reason
    assert "cannot connect" in answer.failure.reason
    assert len(answer.headers) == 0
    assert collector.span("live").status.message == "connect"
    assert errors(metrics, "connect") == 1


async def test_a_cancelled_call_ends_its_span_as_cancelled_and_is_raised(
    collector: Collector, aiohttp_server: Any
) -> None:
    agent = await start_fake(Fake("agent", delay=10), aiohttp_server)
    task = asyncio.create_task(call(agent.url, collector))
    await asyncio.wait_for(agent.arrived.wait(), 5)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert collector.span("live").status.message == "cancelled"
