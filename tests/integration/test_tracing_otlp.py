"""Span export over OTLP/HTTP to a fake collector: a real aiohttp server on
127.0.0.1 that decodes each POST /v1/traces with opentelemetry-proto."""

from __future__ import annotations

import asyncio
import socket
import sys
import threading
from typing import Any

import pytest
import structlog.testing
from aiohttp import ClientSession, web
from opentelemetry.proto.trace.v1.trace_pb2 import Span as ProtoSpan
from opentelemetry.proto.trace.v1.trace_pb2 import Status
from otlp import Collector
from pydantic import ValidationError

from proxy.errors import ConfigError
from proxy.tracecontext import TraceContext
from proxy.tracing import Span, Tracing, TracingSettings

TRACE = "4bf92f3577b34da6a3ce929d0e0e4736"
PARENT = "00f067aa0ba902b7"


@pytest.fixture
async def upstream(aiohttp_server: Any) -> Any:
    """A backend that records the traceparent of every call it gets."""
    seen: list[str] = []

    async def handle(request: web.Request) -> web.Response:
        seen.append(request.headers["traceparent"])
        return web.Response(text="ok")

    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", handle)
    server = await aiohttp_server(app, host="127.0.0.1", port=0)
    return str(server.make_url("/")), seen


def settings(endpoint: str | None, **more: Any) -> TracingSettings:
    return TracingSettings(otlp_endpoint=endpoint, timeout=2.0, interval=0.05, **more)


def attributes(span: ProtoSpan) -> dict[str, Any]:
    return {a.key: getattr(a.value, a.value.WhichOneof("value")) for a in span.attributes}


async def test_spans_carry_the_callers_trace_and_are_the_parents_upstream_sees(
    collector: Collector, upstream: tuple[str, list[str]]
) -> None:
    """With export on, each span hangs under the caller's span, and its id is the parent id
    the upstream call carried."""
    url, seen = upstream
    tracing = Tracing(settings(collector.url, headers={"authorization": "Bearer collector-token"}))
    trace = tracing.incoming(f"00-{TRACE}-{PARENT}-01", "vendor=opaque")
    async with ClientSession() as client:
        for name, backend in (("live", "legacy"), ("shadow", "agent")):
            span = tracing.span(name, trace, route="api", backend=backend, mode=name)
            async with client.get(url, headers=span.headers()) as response:
                span.set({"gen_ai.usage.input_tokens": 12}, status=response.status)
            span.end()
    with tracing.span("compare", trace, route="api") as compare:
        compare.set(verdict="mismatch", score=0.5, reason=None)
    tracing.span("fallback", trace, route="api", backend="legacy").end(error="timeout")
    await tracing.close()

    assert len(collector.spans()) == 4
    for span in collector.spans():
        assert span.trace_id.hex() == TRACE
        assert span.parent_span_id.hex() == PARENT
        assert span.trace_state == "vendor=opaque"
    live, shadow = collector.span("live"), collector.span("shadow")
    assert seen == [f"00-{TRACE}-{live.span_id.hex()}-01", f"00-{TRACE}-{shadow.span_id.hex()}-01"]
    assert attributes(live) == {
        "shadow_proxy.route": "api",
        "shadow_proxy.backend": "legacy",
        "shadow_proxy.mode": "live",
        "http.response.status_code": 200,
        "gen_ai.usage.input_tokens": 12,
    }
    assert live.kind == ProtoSpan.SPAN_KIND_CLIENT
    assert attributes(collector.span("compare")) == {
        "shadow_proxy.route": "api",
        "shadow_proxy.verdict": "mismatch",
        "shadow_proxy.score": 0.5,
    }
    assert collector.span("compare").kind == ProtoSpan.SPAN_KIND_INTERNAL
    fallback = collector.span("fallback")
    assert (fallback.status.code, fallback.status.message) == (Status.STATUS_CODE_ERROR, "timeout")
    assert collector.services() == {"shadow-proxy"}
    assert {h["Authorization"] for h in collector.headers} == {"Bearer collector-token"}


async def test_a_trace_the_proxy_starts_is_exported_under_the_logged_trace_id(
    collector: Collector,
) -> None:
    """Without a caller's traceparent the spans are roots of the trace id the proxy logs."""
    tracing = Tracing(settings(collector.url, service_name="edge"))
    trace = tracing.incoming("not-a-traceparent", "vendor=dropped")
    assert (trace.parent_id, trace.state, trace.sampled) == (None, None, True)
    live = tracing.span("live", trace)
    shadow = tracing.span("shadow", trace)
    headers = [live.headers(), shadow.headers()]
    live.end()
    shadow.end()
    await tracing.close()

    assert headers == [
        {"traceparent": f"00-{trace.trace_id}-{live.span_id}-03"},  # sampled, random trace id
        {"traceparent": f"00-{trace.trace_id}-{shadow.span_id}-03"},
    ]
    assert {span.trace_id.hex() for span in collector.spans()} == {trace.trace_id}
    assert {span.span_id.hex() for span in collector.spans()} == {live.span_id, shadow.span_id}
    assert {span.parent_span_id for span in collector.spans()} == {b""}
    assert collector.services() == {"edge"}


@pytest.mark.parametrize(
    ("ratio", "traceparent", "flags"),
    [
        (1.0, f"00-{TRACE}-{PARENT}-00", "00"),  # the caller did not sample: parent-based
        (0.0, None, "02"),  # a trace the proxy starts, at ratio 0
    ],
)
async def test_an_unsampled_trace_exports_nothing_but_still_propagates(
    collector: Collector, ratio: float, traceparent: str | None, flags: str
) -> None:
    """An unsampled trace sends no span, yet each upstream call still gets its own parent id
    and the unsampled flag."""
    tracing = Tracing(settings(collector.url, sample_ratio=ratio))
    trace = tracing.incoming(traceparent, None)
    spans = [tracing.span("shadow", trace, route="api") for _ in range(3)]
    for span in spans:
        span.set(status=200)
        span.end()
    control = tracing.span("live", TraceContext.incoming(f"00-{TRACE}-{PARENT}-01", None))
    control.end()
    await tracing.close()

    sent = [span.headers()["traceparent"] for span in spans]
    assert len({value.split("-")[2] for value in sent}) == 3
    assert {value.split("-")[3] for value in sent} == {flags}
    assert [span.name for span in collector.spans()] == ["live"]  # only the sampled control


async def test_tracing_off_exports_nothing_and_starts_no_thread(
    collector: Collector, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Off by default: OTEL_* variables pointing at a collector do not turn export on, and
    spans still give each upstream call its own parent id."""
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_ENDPOINT", collector.url)
    monkeypatch.setenv("OTEL_TRACES_EXPORTER", "otlp")
    threads = set(threading.enumerate())
    tracing = Tracing()
    trace = tracing.incoming(f"00-{TRACE}-{PARENT}-01", "vendor=opaque")
    spans = [tracing.span(name, trace, route="api") for name in ("live", "shadow", "compare")]
    for span in spans:
        span.set(status=200)
        span.end()
    await tracing.close()

    assert not tracing.enabled
    assert all(type(span) is Span for span in spans)
    assert [span.headers() for span in spans] == [
        {"traceparent": f"00-{TRACE}-{span.span_id}-01", "tracestate": "vendor=opaque"}
        for span in spans
    ]
    assert len({span.span_id for span in spans}) == 3
    assert set(threading.enumerate()) <= threads
    assert collector.requests == []


def _refused_url() -> str:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    return f"http://127.0.0.1:{port}"


@pytest.mark.parametrize("kind", ["refused", "hung"])
async def test_a_dead_collector_neither_raises_nor_holds_up_shutdown(
    collector: Collector, kind: str
) -> None:
    """Spans end at once and close() gives up after its timeout when the collector refuses
    connections or never answers."""
    collector.hang = True
    endpoint = _refused_url() if kind == "refused" else collector.url
    tracing = Tracing(TracingSettings(otlp_endpoint=endpoint, timeout=0.5, interval=0.01))
    trace = tracing.incoming(None, None)
    tracing.span("shadow", trace, route="api").end()
    await asyncio.sleep(0.1)  # the batch thread is now in its (doomed) first export
    for _ in range(50):
        tracing.span("shadow", trace, route="api").end()
    with structlog.testing.capture_logs() as logs:
        async with asyncio.timeout(5):  # generous: close itself waits at most 0.5 s
            await tracing.close()
    assert collector.requests == []
    # Hung: two exports of 0.5 s each would be needed, so close gave up and said so.
    timed_out = [e for e in logs if e["event"] == "tracing_flush_timeout"]
    assert len(timed_out) == (1 if kind == "hung" else 0)


async def test_close_is_safe_to_repeat_and_late_spans_are_ignored(collector: Collector) -> None:
    """After close() a span still yields headers, and another close() is a no-op."""
    tracing = Tracing(settings(collector.url))
    await tracing.close()
    span = tracing.span("live", TraceContext.incoming(f"00-{TRACE}-{PARENT}-01", None))
    span.end()
    span.end()
    await tracing.close()
    assert span.headers()["traceparent"] == f"00-{TRACE}-{span.span_id}-01"
    assert collector.requests == []


def test_missing_opentelemetry_fails_at_startup_naming_the_extra(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Configuring an endpoint without the SDK installed is a config error that names the
    'otel' extra, both when settings load and when tracing is built."""
    monkeypatch.setitem(sys.modules, "opentelemetry.sdk.trace", None)
    with pytest.raises(ValidationError, match=r"shadow-proxy\[otel\]"):
        TracingSettings(otlp_endpoint="http://collector:4318")
    built = TracingSettings.model_construct(otlp_endpoint="http://collector:4318")
    with pytest.raises(ConfigError, match=r"shadow-proxy\[otel\]"):
        Tracing(built)
    assert not Tracing(TracingSettings()).enabled  # off needs nothing


@pytest.mark.parametrize(
    "values",
    [
        {"otlp_endpoint": "ftp://collector:4318"},
        {"otlp_endpoint": "http://collector:4318/?x=1"},
        {"otlp_endpoint": "collector:4318"},
        {"sample_ratio": 1.5},
        {"sample_ratio": -0.1},
        {"service_name": ""},
        {"headers": {"bad name": "x"}},
        {"headers": {"authorization": "Bearer a\nInjected: 1"}},
        {"timeout": 0},
        {"max_queue": 0},
        {"endpoint": "http://collector:4318"},  # unknown field
    ],
)
def test_invalid_tracing_settings_are_rejected(values: dict[str, Any]) -> None:
    """A bad tracing section is refused when the config loads."""
    with pytest.raises(ValidationError):
        TracingSettings(**values)


@pytest.mark.parametrize(
    ("endpoint", "url"),
    [
        (None, None),
        ("http://collector:4318", "http://collector:4318/v1/traces"),
        ("https://collector:4318/", "https://collector:4318/v1/traces"),
        ("http://collector/otlp", "http://collector/otlp/v1/traces"),
        ("http://collector:4318/v1/traces", "http://collector:4318/v1/traces"),
    ],
)
def test_the_traces_path_is_appended_to_a_base_endpoint(
    endpoint: str | None, url: str | None
) -> None:
    """A collector's base URL gets /v1/traces; a full traces URL is kept."""
    assert TracingSettings(otlp_endpoint=endpoint, timeout="2s").traces_url() == url


def test_collector_headers_stay_out_of_the_settings_repr() -> None:
    """The collector's auth header is a secret: it never shows in a repr or a log."""
    configured = TracingSettings(headers={"authorization": "Bearer collector-token"})
    assert "collector-token" not in repr(configured)
