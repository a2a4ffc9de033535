"""Oversized requests, sent as raw bytes: headers past the listener's limits
get 400 (aiohttp's parser has no 431) and a body past the route's limit
gets 413, and legacy never receives a whole request of either kind."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import pytest
from conftest import ProxyFactory, metric_value
from fakes import RawClient, RawConn, RawMessage, RawServer, forwarded
from fakes import raw_request as raw

from proxy.app import build_metrics
from proxy.server import ProxyServer
from proxy.settings import settings_from


@pytest.fixture
async def server(raw_legacy: RawServer) -> AsyncIterator[ProxyServer]:
    """A proxy run as the CLI runs it (``ProxyServer``), so the listener's own
    limits and log handling are the ones users get."""
    settings = settings_from(
        {
            "listen": {"host": "127.0.0.1", "port": 0},
            "admin": {"host": "127.0.0.1", "port": 0},
            "backends": {"legacy": {"url": raw_legacy.url}},
        }
    )
    server = ProxyServer(settings, metrics=build_metrics(settings))
    await server.start()
    yield server
    await server.stop()


@pytest.fixture
def served(server: ProxyServer) -> int:
    return int(server.proxy_url.rsplit(":", 1)[1])


HEADS = {
    "header-value-64KiB": (raw("GET /orders HTTP/1.1", "X-Big: " + "a" * 65536), 400),
    "request-line-64KiB": (raw("GET /" + "a" * 65536 + " HTTP/1.1"), 400),
    "10000-headers": (raw("GET /orders HTTP/1.1", *(f"X-{i}: 1" for i in range(10000))), 400),
    "header-value-8000": (raw("GET /orders HTTP/1.1", "X-Big: " + "a" * 8000), 200),
    "100-headers": (raw("GET /orders HTTP/1.1", *(f"X-{i}: 1" for i in range(100))), 200),
}


def own_headers(message: RawMessage) -> list[tuple[str, str]]:
    return [(n, v) for n, v in message.headers if n.startswith("X-") and "Forwarded" not in n]


@pytest.mark.parametrize(("request_bytes", "status"), HEADS.values(), ids=HEADS)
async def test_headers_past_the_listener_limits_get_400_and_never_reach_legacy(
    served: int, raw_legacy: RawServer, request_bytes: bytes, status: int
) -> None:
    async with RawClient.connect(served) as client:
        await client.send(request_bytes)
        answer = await client.response()
        assert answer.status == status
        if status == 400:
            assert await client.closed()
            assert b"Traceback" not in answer.body and b"File " not in answer.body
    seen = await forwarded(served, raw_legacy)
    if status == 400:
        assert seen == []
    else:  # within the limits: every header reached legacy as sent
        (request,) = seen
        sent = RawMessage(request_bytes.removesuffix(b"\r\n\r\n"), b"")
        assert own_headers(request) == own_headers(sent) != []


async def test_a_content_length_over_the_limit_gets_413_and_the_connection_stays_in_step(
    make_proxy: ProxyFactory, raw_legacy: RawServer
) -> None:
    """The body is read past and dropped, never forwarded; the next request on
    the same connection is answered."""
    proxy = await make_proxy(backends={"legacy": {"url": raw_legacy.url}}, max_body_size=1000)
    async with RawClient.connect(proxy.client.port) as client:
        await client.send(raw("POST /orders HTTP/1.1", "Content-Length: 5000", body=b"x" * 5000))
        answer = await client.response()
        assert answer.status == 413
        assert answer.body == (
            b'{"error":"payload_too_large","reason":"request body exceeds 1000 bytes"}'
        )
        await client.send(raw("GET /next HTTP/1.1"))
        assert (await client.response()).status == 200
    assert [r.request_line for r in await forwarded(proxy.client.port, raw_legacy)] == [
        "GET /next HTTP/1.1"
    ]
    assert proxy.value("shadow_proxy_rejected_requests_total", reason="body_too_large") == 1


async def test_expect_100_continue_over_the_limit_gets_413_before_any_body_is_sent(
    make_proxy: ProxyFactory, raw_legacy: RawServer
) -> None:
    proxy = await make_proxy(backends={"legacy": {"url": raw_legacy.url}}, max_body_size=1000)
    async with RawClient.connect(proxy.client.port) as client:
        await client.send(
            raw("POST /orders HTTP/1.1", "Content-Length: 10000000", "Expect: 100-continue")
        )
        answer = await client.response()
        assert answer.status == 413  # not 100 Continue: the body is never sent
        assert answer.header("connection") == ["close"]
    assert await forwarded(proxy.client.port, raw_legacy) == []


async def test_expect_100_continue_within_the_limit_gets_100_then_legacys_answer(
    make_proxy: ProxyFactory, raw_legacy: RawServer
) -> None:
    proxy = await make_proxy(backends={"legacy": {"url": raw_legacy.url}}, max_body_size=1000)
    async with RawClient.connect(proxy.client.port) as client:
        await client.send(raw("POST /orders HTTP/1.1", "Content-Length: 5", "Expect: 100-continue"))
        assert (await client.response()).status == 100
        await client.send(b"hello")
        assert (await client.response()).status == 200
    (seen,) = await forwarded(proxy.client.port, raw_legacy)
    assert seen.body == b"hello"
    assert seen.header("expect") == []


async def test_a_chunked_body_over_the_limit_gets_413_and_legacys_copy_is_cut_short(
    make_proxy: ProxyFactory,
) -> None:
    """Legacy may already have the head and a first chunk; it never gets the
    last chunk, so it never holds a whole (forged) request."""
    received: list[bytes] = []
    cut = asyncio.Event()

    async def until_cut(conn: RawConn) -> None:
        await conn.head_only()
        received.append(await conn.until_closed())
        cut.set()

    async with RawServer(until_cut) as legacy:
        proxy = await make_proxy(backends={"legacy": {"url": legacy.url}}, max_body_size=1000)
        async with RawClient.connect(proxy.client.port) as client:
            await client.send(raw("POST /orders HTTP/1.1", "Transfer-Encoding: chunked"))
            await client.send(b"258\r\n" + b"a" * 600 + b"\r\n")
            async with asyncio.timeout(10):
                await legacy.arrived.wait()
            await client.send(b"258\r\n" + b"b" * 600 + b"\r\n0\r\n\r\n")
            assert (await client.response()).status == 413
        async with asyncio.timeout(10):
            await cut.wait()
    assert [r.request_line for r in legacy.requests] == ["POST /orders HTTP/1.1"]
    assert b"b" not in received[0] and not received[0].endswith(b"0\r\n\r\n")
    assert proxy.value("shadow_proxy_rejected_requests_total", reason="body_too_large") == 1


async def test_an_unparseable_request_is_counted_and_logged_in_one_line_without_traceback(
    server: ProxyServer, served: int, caplog: pytest.LogCaptureFixture
) -> None:
    """aiohttp answers it 400 before our handler runs; its ERROR-with-traceback
    log becomes one info record with the parser's reason, and it is counted."""
    for _ in range(3):
        async with RawClient.connect(served) as client:
            await client.send(raw("GET /orders HTTP/1.1", "Bad Header: x"))
            assert (await client.response()).status == 400
    records = [r for r in caplog.records if r.name == "aiohttp.server"]
    assert [(r.levelname, r.getMessage(), r.exc_info) for r in records] == [
        ("INFO", "malformed_request", None)
    ] * 3
    assert all("header" in r.reason.lower() for r in records)  # type: ignore[attr-defined]
    labels = {"route": "unmatched", "reason": "malformed"}
    assert (
        metric_value(server.metrics.registry, "shadow_proxy_rejected_requests_total", **labels) == 3
    )
