"""A fake OTLP/HTTP collector for the tracing tests: a real aiohttp server on
127.0.0.1 that decodes each POST /v1/traces with opentelemetry-proto."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (
    ExportTraceServiceRequest,
    ExportTraceServiceResponse,
)
from opentelemetry.proto.trace.v1.trace_pb2 import Span as ProtoSpan


@dataclass
class Collector:
    """What arrived; ``hang`` holds every export until ``release`` is set."""

    url: str = ""
    requests: list[ExportTraceServiceRequest] = field(default_factory=list)
    headers: list[dict[str, str]] = field(default_factory=list)
    arrived: asyncio.Event = field(default_factory=asyncio.Event)
    release: asyncio.Event = field(default_factory=asyncio.Event)
    hang: bool = False

    def spans(self) -> list[ProtoSpan]:
        return [
            span
            for request in self.requests
            for resource in request.resource_spans
            for scope in resource.scope_spans
            for span in scope.spans
        ]

    def span(self, name: str) -> ProtoSpan:
        (found,) = [span for span in self.spans() if span.name == name]
        return found

    def services(self) -> set[str]:
        return {
            attribute.value.string_value
            for request in self.requests
            for resource in request.resource_spans
            for attribute in resource.resource.attributes
            if attribute.key == "service.name"
        }

    async def wait(self, count: int, within: float = 10.0) -> list[ProtoSpan]:
        """The spans once ``count`` have arrived (the exporter sends in batches)."""
        async with asyncio.timeout(within):
            while len(self.spans()) < count:
                self.arrived.clear()
                await self.arrived.wait()
        await asyncio.sleep(0.1)  # none more than expected
        return self.spans()

    async def _traces(self, request: web.Request) -> web.Response:
        if self.hang:
            await self.release.wait()
        self.headers.append(dict(request.headers))
        self.requests.append(ExportTraceServiceRequest.FromString(await request.read()))
        self.arrived.set()
        body = ExportTraceServiceResponse().SerializeToString()
        return web.Response(body=body, content_type="application/x-protobuf")


async def start_collector(aiohttp_server: Any) -> Collector:
    collector = Collector()
    app = web.Application()
    app.router.add_post("/v1/traces", collector._traces)
    server = await aiohttp_server(app, host="127.0.0.1", port=0)
    collector.url = str(server.make_url("")).rstrip("/")
    return collector
