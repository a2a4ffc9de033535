"""Optional OpenTelemetry span export over OTLP (HTTP/protobuf); off by default.

Off, a span is a tiny object that only makes the span id an upstream call
carries in its ``traceparent``: no OpenTelemetry import, no thread, no queue.
On (``tracing.otlp_endpoint`` set, the ``otel`` extra installed), spans come
from the official SDK, started with the caller's remote context as parent, so
the span id *is* the parent id the upstream sees and the agent's spans hang
under the proxy's. Finished spans go to a ``BatchSpanProcessor``: a bounded
queue (full: the span is dropped, never waited for) drained by the SDK's own
thread, so neither export nor a dead collector ever touches the event loop.

Span names: ``live`` (the client-facing upstream call), ``shadow`` (the agent
call in shadow), ``fallback``, ``compare``. Short attribute names map to
namespaced ones (``route`` -> ``shadow_proxy.route``, ``status`` ->
``http.response.status_code``, see ``ALIASES``); any other name, such as the
GenAI ``gen_ai.usage.input_tokens``, is set as given. None values are skipped.
"""

from __future__ import annotations

import asyncio
import contextlib
import importlib
import threading
from collections.abc import Mapping, Sequence
from contextvars import ContextVar
from dataclasses import replace
from types import TracebackType
from typing import TYPE_CHECKING

import structlog
from pydantic import BaseModel, ConfigDict, Field, SecretStr, field_validator

from proxy.errors import ConfigError
from proxy.headers import invalid_header
from proxy.tracecontext import SAMPLED, Header, TraceContext, new_span_id
from proxy.units import HttpUrl, PositiveDuration

if TYPE_CHECKING:
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import SpanExporter
    from opentelemetry.sdk.trace.sampling import Sampler
    from opentelemetry.trace import Span as OtelSpan
    from opentelemetry.trace import Tracer, TraceState

log = structlog.get_logger("proxy.tracing")

EXTRA = "otel"
INSTALL_HINT = f"install the '{EXTRA}' extra: pip install 'shadow-proxy[{EXTRA}]'"
TRACES_PATH = "/v1/traces"
ALIASES = {
    "route": "shadow_proxy.route",
    "backend": "shadow_proxy.backend",
    "mode": "shadow_proxy.mode",
    "verdict": "shadow_proxy.verdict",
    "score": "shadow_proxy.score",
    "reason": "shadow_proxy.reason",
    "attempt": "shadow_proxy.attempt",
    "request_id": "shadow_proxy.request_id",
    "status": "http.response.status_code",
    "method": "http.request.method",
}
_CLIENT_SPANS = frozenset({"live", "shadow", "fallback"})  # calls to a backend

AttributeValue = str | bool | int | float | Sequence[str] | Sequence[int] | Sequence[float]

# The trace id a root span must carry: the one the proxy already logged, not
# one the SDK would invent. Set only around ``start_span``.
_ROOT_TRACE_ID: ContextVar[int | None] = ContextVar("shadow_proxy_root_trace_id", default=None)


class TracingSettings(BaseModel):
    """The ``tracing:`` config section; export is on when ``otlp_endpoint`` is set."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    otlp_endpoint: HttpUrl | None = Field(
        None,
        description="OTLP/HTTP collector, e.g. http://otel-collector:4318 "
        f"({TRACES_PATH} is appended unless present); unset: no export",
    )
    service_name: str = Field("shadow-proxy", min_length=1, description="resource service.name")
    sample_ratio: float = Field(
        1.0,
        ge=0.0,
        le=1.0,
        description="share of traces the proxy starts that are sampled; a caller's "
        "traceparent decides for its own traces (parent-based)",
    )
    headers: dict[str, SecretStr] = Field(
        default_factory=dict, description="sent with every export, e.g. authorization"
    )
    timeout: PositiveDuration = Field(
        10.0, description="longest one export (with its retries) and the flush at shutdown take"
    )
    interval: PositiveDuration = Field(5.0, description="longest a finished span waits for export")
    max_queue: int = Field(2048, ge=1, description="finished spans held; more are dropped")

    @field_validator("headers")
    @classmethod
    def _valid_headers(cls, value: dict[str, SecretStr]) -> dict[str, SecretStr]:
        for name, secret in value.items():
            if problem := invalid_header(name, secret.get_secret_value()):
                raise ValueError(problem)
        return value

    @field_validator("otlp_endpoint")
    @classmethod
    def _sdk_installed(cls, value: str | None) -> str | None:
        """Fail when the config is loaded, not at the first span."""
        if value is not None:
            _require_sdk()
        return value

    @property
    def enabled(self) -> bool:
        return self.otlp_endpoint is not None

    def traces_url(self) -> str | None:
        url = self.otlp_endpoint
        if url is None or url.endswith(TRACES_PATH):
            return url
        return url + TRACES_PATH


def _require_sdk() -> None:
    try:
        importlib.import_module("opentelemetry.sdk.trace")
        importlib.import_module("opentelemetry.exporter.otlp.proto.http.trace_exporter")
    except ImportError as exc:
        raise ValueError(
            f"span export needs OpenTelemetry ({exc.name} is missing): {INSTALL_HINT}"
        ) from exc


def _attributes(
    attributes: Mapping[str, AttributeValue | None],
) -> dict[str, AttributeValue]:
    return {ALIASES.get(k, k): v for k, v in attributes.items() if v is not None}


class Span:
    """One upstream call or comparison. This base class is the no-op span used
    when export is off: it still owns the span id sent upstream."""

    __slots__ = ("span_id", "trace")

    def __init__(self, trace: TraceContext, span_id: str | None = None) -> None:
        self.trace = trace
        self.span_id = span_id or new_span_id()

    def headers(self) -> dict[str, str]:
        """``traceparent`` (and ``tracestate``) for the upstream call this span covers."""
        return self.trace.child(self.span_id)

    def set(
        self,
        attributes: Mapping[str, AttributeValue | None] | None = None,
        /,
        **more: AttributeValue | None,
    ) -> None:
        """Add attributes (a mapping for dotted names, keywords for short ones)."""

    def end(self, error: str | None = None) -> None:
        """Finish the span; ``error`` marks it failed with that description."""

    def __enter__(self) -> Span:
        return self

    def __exit__(
        self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.end(None if kind is None else kind.__name__)


class _ExportedSpan(Span):
    __slots__ = ("_ended", "_span")

    def __init__(self, trace: TraceContext, span: OtelSpan) -> None:
        context = span.get_span_context()
        flags = int(context.trace_flags) & 0x03  # the sampler's decision is what goes upstream
        trace = trace if flags == trace.flags else replace(trace, flags=flags)
        super().__init__(trace, f"{context.span_id:016x}")
        self._span = span
        self._ended = False

    def set(
        self,
        attributes: Mapping[str, AttributeValue | None] | None = None,
        /,
        **more: AttributeValue | None,
    ) -> None:
        if self._ended or not self._span.is_recording():
            return
        if attributes:
            self._span.set_attributes(_attributes(attributes))
        if more:
            self._span.set_attributes(_attributes(more))

    def end(self, error: str | None = None) -> None:
        if self._ended:
            return
        self._ended = True
        if error is not None and self._span.is_recording():
            from opentelemetry.trace import Status, StatusCode

            self._span.set_status(Status(StatusCode.ERROR, error))
        self._span.end()


class _Exporter:
    """The SDK pieces: provider, sampler, batch processor, OTLP exporter."""

    def __init__(self, settings: TracingSettings) -> None:
        try:
            from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
            from opentelemetry.sdk.resources import Resource
            from opentelemetry.sdk.trace import TracerProvider
            from opentelemetry.sdk.trace.export import BatchSpanProcessor
            from opentelemetry.sdk.trace.id_generator import RandomIdGenerator
            from opentelemetry.sdk.trace.sampling import ParentBased, TraceIdRatioBased
        except ImportError as exc:
            problem = (
                f"tracing.otlp_endpoint: OpenTelemetry is missing ({exc.name}): {INSTALL_HINT}"
            )
            raise ConfigError("tracing", [problem]) from exc

        class _Ids(RandomIdGenerator):
            def generate_trace_id(self) -> int:
                forced = _ROOT_TRACE_ID.get()
                return super().generate_trace_id() if forced is None else forced

            def is_trace_id_random(self) -> bool:
                return True  # ours come from TraceContext.new, random throughout

        self.timeout = settings.timeout
        self.root_sampler: Sampler = TraceIdRatioBased(settings.sample_ratio)
        self.exporter: SpanExporter = OTLPSpanExporter(
            endpoint=settings.traces_url(),
            headers={k: v.get_secret_value() for k, v in settings.headers.items()},
            timeout=settings.timeout,
        )
        self.provider: TracerProvider = TracerProvider(
            sampler=ParentBased(self.root_sampler),
            resource=Resource.create({"service.name": settings.service_name}),
            id_generator=_Ids(),
            shutdown_on_exit=False,  # close() flushes, bounded; atexit could wait 30 s
        )
        self.provider.add_span_processor(
            BatchSpanProcessor(
                self.exporter,
                max_queue_size=settings.max_queue,
                max_export_batch_size=min(512, settings.max_queue),
                schedule_delay_millis=settings.interval * 1000,
            )
        )
        self.tracer: Tracer = self.provider.get_tracer("shadow-proxy")

    def root_sampled(self, trace_id: str) -> bool:
        from opentelemetry.context import Context
        from opentelemetry.sdk.trace.sampling import Decision

        result = self.root_sampler.should_sample(Context(), int(trace_id, 16), "request")
        return result.decision is Decision.RECORD_AND_SAMPLE

    def start(self, name: str, trace: TraceContext, attributes: dict[str, AttributeValue]) -> Span:
        from opentelemetry.context import Context
        from opentelemetry.trace import (
            NonRecordingSpan,
            SpanContext,
            SpanKind,
            TraceFlags,
            set_span_in_context,
        )

        kind = SpanKind.CLIENT if name in _CLIENT_SPANS else SpanKind.INTERNAL
        if trace.parent_id is None:
            token = _ROOT_TRACE_ID.set(int(trace.trace_id, 16))
            try:
                span = self.tracer.start_span(name, Context(), kind, attributes)
            finally:
                _ROOT_TRACE_ID.reset(token)
            return _ExportedSpan(trace, span)
        remote = SpanContext(
            int(trace.trace_id, 16),
            int(trace.parent_id, 16),
            is_remote=True,
            trace_flags=TraceFlags(trace.flags),
            trace_state=_trace_state(trace.state),
        )
        context = set_span_in_context(NonRecordingSpan(remote), Context())
        return _ExportedSpan(trace, self.tracer.start_span(name, context, kind, attributes))

    async def close(self) -> None:
        """Flush and stop on a thread of its own, waiting at most the timeout: a
        collector that is down or hangs costs shutdown that long, never more."""
        loop = asyncio.get_running_loop()
        done: asyncio.Future[None] = loop.create_future()

        def finished() -> None:
            if not done.done():
                done.set_result(None)

        def shutdown() -> None:
            try:
                self.provider.shutdown()
            except Exception as exc:  # the SDK's own failure: log it, shutdown goes on
                log.warning("tracing_shutdown_failed", error=repr(exc))
            finally:
                with contextlib.suppress(RuntimeError):  # the loop may be gone by now
                    loop.call_soon_threadsafe(finished)

        threading.Thread(target=shutdown, name="shadow-proxy-otel-close", daemon=True).start()
        try:
            async with asyncio.timeout(self.timeout):
                await done
        except TimeoutError:
            log.warning("tracing_flush_timeout", timeout=self.timeout)
            self.exporter.shutdown()  # stops retry back-off; unsent spans are lost


def _trace_state(state: str | None) -> TraceState | None:
    if not state:
        return None
    from opentelemetry.trace import TraceState

    return TraceState.from_header([state])


class Tracing:
    """Built once by the app; ``close()`` flushes at shutdown."""

    def __init__(self, settings: TracingSettings | None = None) -> None:
        self.settings = settings or TracingSettings()
        self._exporter = _Exporter(self.settings) if self.settings.enabled else None
        self._closed = False

    @property
    def enabled(self) -> bool:
        return self._exporter is not None

    def incoming(self, traceparent: Header, tracestate: Header = None) -> TraceContext:
        """The request's trace (see ``TraceContext.incoming``); a trace the proxy
        starts is sampled by ``sample_ratio`` when export is on, always when off."""
        trace = TraceContext.incoming(traceparent, tracestate)
        if self._exporter is None or trace.parent_id is not None:
            return trace
        if self._exporter.root_sampled(trace.trace_id):
            return trace
        return replace(trace, flags=trace.flags & ~SAMPLED)

    def span(self, name: str, trace: TraceContext, **attributes: AttributeValue | None) -> Span:
        """A span started now, child of the caller's span (or a root of ``trace``)."""
        if self._exporter is None:
            return Span(trace)
        return self._exporter.start(name, trace, _attributes(attributes))

    async def close(self) -> None:
        if self._exporter is None or self._closed:
            return
        self._closed = True
        await self._exporter.close()
