"""The live path: what the client sends reaches legacy, and what legacy answers
reaches the client, faithfully, streamed, with clean errors when legacy fails."""

from __future__ import annotations

import asyncio
import hashlib
import time
from collections.abc import AsyncIterator

import aiohttp
import pytest
from conftest import ProxyFactory
from fakes import Fake, RawBackend, dead_url
from multidict import CIMultiDict
from yarl import URL


def backends(legacy: Fake, **legacy_opts: object) -> dict[str, object]:
    return {"backends": {"legacy": {"url": legacy.url, **legacy_opts}}}


async def test_method_path_query_and_headers_reach_legacy_unchanged(
    make_proxy: ProxyFactory, legacy: Fake
) -> None:
    proxy = await make_proxy(**backends(legacy))
    # encoded=True: the client sends these bytes as they are, %2F included
    response = await proxy.client.session.get(
        URL(f"{proxy.client.make_url('/echo')}?b=2&a=1&a=%2F&c=%7e", encoded=True),
        headers={"X-Custom": "kept", "Accept-Encoding": "br"},
        skip_auto_headers={"User-Agent"},
    )
    assert response.status == 200
    seen = legacy.seen[-1]
    assert seen.path_qs == "/echo?b=2&a=1&a=%2F&c=%7e"
    assert seen.headers["x-custom"] == ["kept"]
    assert seen.headers["accept-encoding"] == ["br"]
    assert "user-agent" not in seen.headers  # the proxy adds no identity of its own
    assert seen.headers["host"] == [legacy.url.removeprefix("http://")]
    assert seen.headers["x-forwarded-for"] == ["127.0.0.1"]
    assert seen.headers["x-forwarded-proto"] == ["http"]
    assert seen.headers["x-forwarded-host"] == [f"127.0.0.1:{proxy.client.port}"]


async def test_hop_by_hop_headers_and_those_named_in_connection_are_dropped(
    make_proxy: ProxyFactory, legacy: Fake
) -> None:
    proxy = await make_proxy(**backends(legacy))
    await proxy.client.get(
        "/echo",
        headers={
            "Connection": "keep-alive, X-Private",
            "X-Private": "hop secret",
            "Keep-Alive": "timeout=5",
            "Proxy-Authorization": "Basic abc",
            "TE": "trailers",
            "X-End-To-End": "yes",
        },
    )
    seen = legacy.seen[-1].headers
    for hop in ("x-private", "keep-alive", "proxy-authorization", "te"):
        assert hop not in seen, hop
    assert seen["x-end-to-end"] == ["yes"]


async def test_existing_x_forwarded_for_is_appended_to(
    make_proxy: ProxyFactory, legacy: Fake
) -> None:
    proxy = await make_proxy(**backends(legacy))
    await proxy.client.get("/echo", headers={"X-Forwarded-For": "203.0.113.9"})
    assert legacy.seen[-1].headers["x-forwarded-for"] == ["203.0.113.9, 127.0.0.1"]


async def test_route_with_preserve_host_sends_the_clients_host(
    make_proxy: ProxyFactory, legacy: Fake
) -> None:
    proxy = await make_proxy(
        **backends(legacy),
        routes=[{"name": "keep", "match": {"prefix": "/"}, "preserve_host": True}],
    )
    await proxy.client.get("/echo", headers={"Host": "shop.example"})
    assert legacy.seen[-1].headers["host"] == ["shop.example"]


async def test_status_repeated_headers_and_body_come_back_unchanged(
    make_proxy: ProxyFactory, legacy: Fake
) -> None:
    legacy.status, legacy.body = 418, b'{"teapot": true}'
    proxy = await make_proxy(**backends(legacy))
    response = await proxy.client.get("/anything")
    assert response.status == 418
    assert await response.read() == b'{"teapot": true}'
    assert response.headers["Content-Type"] == "application/json"
    echo = await proxy.client.get("/echo")
    assert echo.headers.getall("Set-Cookie") == ["a=1"]
    assert echo.headers["X-Multi"] == "one"


@pytest.mark.parametrize("method", ["POST", "PUT", "PATCH", "DELETE", "OPTIONS"])
async def test_every_method_is_forwarded_with_its_body(
    make_proxy: ProxyFactory, legacy: Fake, method: str
) -> None:
    proxy = await make_proxy(**backends(legacy))
    response = await proxy.client.request(method, "/upload", data=b"payload-" + method.encode())
    assert response.status == 200
    assert legacy.seen[-1].method == method
    assert legacy.seen[-1].body == b"payload-" + method.encode()


async def test_head_gets_headers_and_no_body(make_proxy: ProxyFactory, legacy: Fake) -> None:
    proxy = await make_proxy(**backends(legacy))
    response = await proxy.client.head("/download?mb=1")
    assert response.status == 200
    assert response.headers["Content-Length"] == str(1024 * 1024)
    assert await response.read() == b""


async def test_a_100_mib_upload_streams_through_intact(
    make_proxy: ProxyFactory, legacy: Fake
) -> None:
    proxy = await make_proxy(**backends(legacy), max_body_size="200MiB")
    block = bytes(range(256)) * 4096
    expected = hashlib.sha256()
    for _ in range(100):
        expected.update(block)

    async def body() -> AsyncIterator[bytes]:
        for _ in range(100):
            yield block

    response = await proxy.client.post("/upload", data=body())
    assert response.status == 200
    assert await response.json() == {"size": 100 * len(block), "sha256": expected.hexdigest()}


async def test_a_100_mib_download_streams_through_intact(
    make_proxy: ProxyFactory, legacy: Fake
) -> None:
    proxy = await make_proxy(**backends(legacy))
    response = await proxy.client.get("/download?mb=100")
    digest, size = hashlib.sha256(), 0
    async for chunk in response.content.iter_chunked(1 << 20):
        digest.update(chunk)
        size += len(chunk)
    block = bytes(range(256)) * 4096
    expected = hashlib.sha256()
    for _ in range(100):
        expected.update(block)
    assert size == 100 * len(block)
    assert digest.hexdigest() == expected.hexdigest()


async def test_streamed_response_reaches_the_client_before_it_ends(
    make_proxy: ProxyFactory, legacy: Fake
) -> None:
    proxy = await make_proxy(**backends(legacy))
    started = time.monotonic()
    response = await proxy.client.get("/stream?chunks=4&gap=0.4")
    first = await response.content.readuntil(b"\n\n")
    first_at = time.monotonic() - started
    rest = await response.read()
    total = time.monotonic() - started
    assert first == b"data: 0\n\n"
    assert rest.count(b"data:") == 3
    assert first_at < total - 1.0  # the first event did not wait for the last


async def test_dead_legacy_gives_502_json_naming_backend_and_reason(
    make_proxy: ProxyFactory,
) -> None:
    proxy = await make_proxy(backends={"legacy": {"url": dead_url()}})
    response = await proxy.client.get("/x")
    assert response.status == 502
    body = await response.json()
    assert body["error"] == "bad_gateway"
    assert body["backend"] == "legacy"
    assert "cannot connect" in body["reason"]
    assert "Traceback" not in await response.text()
    assert proxy.value("shadow_proxy_upstream_errors_total", backend="legacy", kind="connect") == 1
    assert (
        proxy.value(
            "shadow_proxy_requests_total", route="unmatched", backend="legacy", status_class="5xx"
        )
        == 1
    )


async def test_slow_legacy_gives_504_after_the_backend_timeout(
    make_proxy: ProxyFactory, legacy: Fake
) -> None:
    legacy.delay = 3.0
    proxy = await make_proxy(**backends(legacy, timeout="300ms"))
    started = time.monotonic()
    response = await proxy.client.get("/x")
    assert response.status == 504
    assert time.monotonic() - started < 2.5
    body = await response.json()
    assert body == {
        "error": "gateway_timeout",
        "backend": "legacy",
        "reason": "legacy: no complete answer within 0.3s",
    }


async def test_legacy_dying_mid_body_cuts_the_client_off(
    make_proxy: ProxyFactory, legacy: Fake
) -> None:
    proxy = await make_proxy(**backends(legacy))
    response = await proxy.client.get("/cut")
    assert response.status == 200  # the headers were already on their way
    with pytest.raises(aiohttp.ClientPayloadError):
        await response.read()


async def test_body_over_the_route_limit_gets_413_without_reaching_legacy(
    make_proxy: ProxyFactory, legacy: Fake
) -> None:
    proxy = await make_proxy(
        **backends(legacy),
        routes=[{"name": "small", "match": {"prefix": "/small"}, "max_body_size": 1000}],
    )
    response = await proxy.client.post("/small/x", data=b"x" * 1001)
    assert response.status == 413
    assert (await response.json())["error"] == "payload_too_large"
    assert legacy.seen == []
    ok = await proxy.client.post("/small/x", data=b"x" * 1000)
    assert ok.status == 200
    assert (
        proxy.value("shadow_proxy_rejected_requests_total", route="small", reason="body_too_large")
        == 1
    )


async def test_chunked_body_over_the_limit_gets_413(make_proxy: ProxyFactory, legacy: Fake) -> None:
    proxy = await make_proxy(**backends(legacy), max_body_size="64KiB")

    async def body() -> AsyncIterator[bytes]:
        for _ in range(4):
            yield b"y" * 32768

    response = await proxy.client.post("/upload", data=body())
    assert response.status == 413
    assert all(seen.body_size <= 65536 for seen in legacy.seen)  # never the whole body
    assert proxy.value("shadow_proxy_rejected_requests_total", reason="body_too_large") == 1


async def test_unmatched_requests_go_to_legacy_under_the_unmatched_label(
    make_proxy: ProxyFactory, legacy: Fake, agent: Fake
) -> None:
    proxy = await make_proxy(
        backends={"legacy": {"url": legacy.url}, "agent": {"url": agent.url}},
        routes=[{"name": "api", "match": {"prefix": "/api/"}, "shadow": {"enabled": True}}],
    )
    response = await proxy.client.get("/other")
    assert response.status == 200
    assert (
        proxy.value(
            "shadow_proxy_requests_total", route="unmatched", backend="legacy", status_class="2xx"
        )
        == 1
    )
    assert proxy.value("shadow_proxy_shadow_requests_total", route="api", outcome="sent") == 0
    assert agent.seen == []


async def test_overhead_and_upstream_latency_are_observed_per_route(
    make_proxy: ProxyFactory, legacy: Fake
) -> None:
    proxy = await make_proxy(**backends(legacy))
    for _ in range(3):
        await (await proxy.client.get("/x")).read()
    assert proxy.value("shadow_proxy_overhead_seconds_count", route="unmatched") == 3
    assert proxy.value(
        "shadow_proxy_upstream_duration_seconds_count",
        route="unmatched", backend="legacy", mode="live",
    ) == 3  # fmt: skip


async def test_a_client_leaving_mid_stream_is_not_a_legacy_failure(
    make_proxy: ProxyFactory, legacy: Fake
) -> None:
    proxy = await make_proxy(**backends(legacy))
    async with aiohttp.ClientSession() as session:
        response = await session.get(proxy.client.make_url("/stream?chunks=20&gap=0.05"))
        assert await response.content.readuntil(b"\n\n") == b"data: 0\n\n"
        response.close()  # hang up with 19 events still to come
    await asyncio.sleep(0.5)
    assert proxy.value("shadow_proxy_rejected_requests_total", reason="client_gone") == 1
    assert proxy.value("shadow_proxy_upstream_errors_total", backend="legacy") == 0


async def test_expect_and_a_client_supplied_shadow_marker_never_reach_legacy(
    make_proxy: ProxyFactory, legacy: Fake
) -> None:
    """The proxy answers 100-continue itself; only the proxy marks shadows."""
    proxy = await make_proxy(**backends(legacy))
    response = await proxy.client.post(
        "/upload", data=b"x" * 5000, expect100=True, headers={"X-Shadow-Request": "1"}
    )
    assert response.status == 200
    assert "expect" not in legacy.seen[-1].headers
    assert "x-shadow-request" not in legacy.seen[-1].headers


async def test_every_x_forwarded_for_line_is_kept(make_proxy: ProxyFactory, legacy: Fake) -> None:
    proxy = await make_proxy(**backends(legacy))
    headers = CIMultiDict([("X-Forwarded-For", "203.0.113.1"), ("X-Forwarded-For", "10.0.0.2")])
    await proxy.client.get("/echo", headers=headers)
    assert legacy.seen[-1].headers["x-forwarded-for"] == ["203.0.113.1, 10.0.0.2, 127.0.0.1"]


@pytest.mark.parametrize("path", ["/public/../admin/delete", "/public/%2e%2e/admin", "/a/./b"])
async def test_dot_segments_get_400_and_never_reach_legacy(
    make_proxy: ProxyFactory, legacy: Fake, path: str
) -> None:
    proxy = await make_proxy(**backends(legacy))
    response = await proxy.client.session.get(
        URL(f"{proxy.client.make_url('/')}".rstrip("/") + path, encoded=True)
    )
    assert response.status == 400
    assert (await response.json())["error"] == "bad_request"
    assert legacy.seen == []
    assert proxy.value("shadow_proxy_rejected_requests_total", reason="bad_path") == 1


async def test_a_response_header_aiohttp_cannot_send_is_a_502_not_a_500(
    make_proxy: ProxyFactory,
) -> None:
    raw = b"HTTP/1.1 200 OK\r\nX-Odd: a\x7fb\r\nContent-Length: 2\r\n\r\nok"
    async with RawBackend(raw) as odd:
        proxy = await make_proxy(backends={"legacy": {"url": odd.url}})
        response = await proxy.client.get("/x")
        assert response.status == 502
        assert await response.json() == {
            "error": "bad_gateway",
            "reason": "legacy: invalid HTTP response",
            "backend": "legacy",
        }


async def test_error_reasons_never_show_the_backend_address(
    make_proxy: ProxyFactory,
) -> None:
    async with RawBackend(b"NOT HTTP AT ALL\r\n\r\n") as garbage:
        proxy = await make_proxy(backends={"legacy": {"url": garbage.url}})
        response = await proxy.client.get("/x")
        assert response.status == 502
        text = await response.text()
        assert "127.0.0.1" not in text and "NOT HTTP" not in text
