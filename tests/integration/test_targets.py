"""Request targets, sent as raw bytes: the proxy is no open proxy (absolute
URLs and CONNECT are refused; Host and X-Forwarded-* never pick the
upstream), and no path matches one route while a backend could read it as
another: each hostile path is refused, or counted under the route its
meaning belongs to and forwarded unchanged."""

from __future__ import annotations

import json

import pytest
from conftest import ProxyFactory
from fakes import Fake, RawClient, RawResponse, RawServer, forwarded

ROUTES = [
    {"name": "public", "match": {"prefix": "/public/"}},
    {"name": "internal", "match": {"prefix": "/internal/"}},
]


async def exchange(port: int, request: str | bytes) -> RawResponse:
    """One request on a connection of its own; the answer."""
    data = request.encode("latin-1") if isinstance(request, str) else request
    async with RawClient.connect(port) as client:
        await client.send(data)
        return await client.response()


def get(target: str, *headers: str, version: str = "1.1") -> str:
    return "\r\n".join((f"GET {target} HTTP/{version}", *headers, "", ""))


# (request line, status): never forwarded, the connection closed after the answer
NOT_A_FORWARD_PROXY = {
    "absolute-form": ("GET http://evil.example/ HTTP/1.1", 400),
    "absolute-form-https": ("GET https://evil.example/public/x HTTP/1.1", 400),
    "absolute-form-naming-legacy": ("GET http://{legacy}/public/x HTTP/1.1", 400),
    # RFC 9110 section 15.5.6: a method no resource here supports; Allow is empty
    "connect": ("CONNECT evil.example:443 HTTP/1.1", 405),
    "connect-origin-form": ("CONNECT /public/x HTTP/1.1", 405),
    "asterisk-form-get": ("GET * HTTP/1.1", 400),
}


@pytest.mark.parametrize(("line", "status"), NOT_A_FORWARD_PROXY.values(), ids=NOT_A_FORWARD_PROXY)
async def test_absolute_urls_and_connect_are_refused_and_never_forwarded(
    make_proxy: ProxyFactory, raw_legacy: RawServer, line: str, status: int
) -> None:
    proxy = await make_proxy(backends={"legacy": {"url": raw_legacy.url}}, routes=ROUTES)
    line = line.format(legacy=raw_legacy.url.removeprefix("http://"))
    async with RawClient.connect(proxy.client.port) as client:
        await client.send(f"{line}\r\nHost: evil.example\r\n\r\n".encode())
        answer = await client.response()
        assert answer.status == status
        assert await client.closed()
    if not line.startswith("GET *"):  # that one the parser refuses before the proxy
        reason = "tunnel" if status == 405 else "bad_path"
        assert proxy.value("shadow_proxy_rejected_requests_total", reason=reason) == 1
    if status == 405:
        assert answer.header("allow") == [""]
        assert json.loads(answer.body)["error"] == "method_not_allowed"
    assert await forwarded(proxy.client.port, raw_legacy) == []


async def test_options_asterisk_is_answered_by_the_proxy_and_the_connection_stays_open(
    make_proxy: ProxyFactory, raw_legacy: RawServer
) -> None:
    """``OPTIONS *`` asks about the server, not a resource: a plain 200."""
    proxy = await make_proxy(backends={"legacy": {"url": raw_legacy.url}})
    async with RawClient.connect(proxy.client.port) as client:
        await client.send(b"OPTIONS * HTTP/1.1\r\nHost: shop.example\r\n\r\n")
        answer = await client.response()
        assert (answer.status, answer.body) == (200, b"")
        await client.send(get("/public/x", "Host: shop.example").encode())
        assert (await client.response()).status == 200
    assert [r.request_line for r in raw_legacy.requests] == ["GET /public/x HTTP/1.1"]


async def test_host_and_forwarding_headers_from_the_client_never_pick_the_upstream(
    make_proxy: ProxyFactory, raw_legacy: RawServer, agent: Fake
) -> None:
    """Legacy is called whatever the client claims; X-Forwarded-Host and -Proto
    are the proxy's own, X-Forwarded-For and Forwarded end with its element."""
    proxy = await make_proxy(
        backends={"legacy": {"url": raw_legacy.url}, "agent": {"url": agent.url}},
        routes=[{**ROUTES[0], "rollout": {"mode": "manual", "percent": 0}}],
    )
    agent_host = agent.url.removeprefix("http://")
    answer = await exchange(
        proxy.client.port,
        get(
            "/public/x",
            f"Host: {agent_host}",
            "X-Forwarded-Host: evil.example",
            "X-Forwarded-Proto: https",
            "X-Forwarded-For: 203.0.113.7",
            'Forwarded: for=203.0.113.7;host="evil.example";proto=https',
            "X-Original-URL: /internal/admin",
            "X-Rewrite-URL: /internal/admin",
        ),
    )
    assert answer.status == 200
    assert answer.header("x-served-by") == ["legacy"]
    assert agent.seen == []
    (seen,) = raw_legacy.requests
    assert seen.header("host") == [raw_legacy.url.removeprefix("http://")]
    assert seen.header("x-forwarded-host") == [agent_host]
    assert seen.header("x-forwarded-proto") == ["http"]
    assert seen.header("x-forwarded-for") == ["203.0.113.7, 127.0.0.1"]
    # Appended to, as X-Forwarded-For: the client's claim stays, ours comes last.
    client_claim = 'for=203.0.113.7;host="evil.example";proto=https'
    ours = f'for=127.0.0.1;host="{agent_host}";proto=http'
    assert seen.header("forwarded") == [f"{client_claim}, {ours}"]
    # Headers some frameworks serve another path from never reach a backend.
    assert seen.header("x-original-url") == seen.header("x-rewrite-url") == []


async def test_a_client_x_forwarded_host_is_dropped_even_without_a_host_header(
    make_proxy: ProxyFactory, raw_legacy: RawServer
) -> None:
    """HTTP/1.0 needs no Host; the client's X-Forwarded-Host must not stand in for it."""
    proxy = await make_proxy(backends={"legacy": {"url": raw_legacy.url}})
    answer = await exchange(
        proxy.client.port, get("/x", "X-Forwarded-Host: evil.example", version="1.0")
    )
    assert answer.status == 200
    (seen,) = raw_legacy.requests
    assert seen.header("x-forwarded-host") == []
    assert seen.header("forwarded") == ["for=127.0.0.1;proto=http"]


REFUSED = None  # the path gets 400 and reaches no backend
# (listen.escaped_slashes, path as sent, route it is counted under or REFUSED)
PATHS = [
    ("reject", "/public/x", "public"),
    ("reject", "/internal/x", "internal"),
    ("reject", "/public/../internal/x", REFUSED),
    ("reject", "/public/./x", REFUSED),
    ("reject", "/public/%2e%2e/internal/x", REFUSED),
    ("reject", "/public/.%2E/internal/x", REFUSED),
    ("reject", "/public/..;/internal/x", REFUSED),  # Tomcat drops ;parameters
    ("reject", "/public/..%3B/internal/x", REFUSED),
    ("reject", "/public\\..\\internal/x", REFUSED),  # a separator on some servers
    ("reject", "/public/%5C..%5Cinternal/x", REFUSED),
    ("reject", "/public%2F..%2Finternal/x", REFUSED),
    ("reject", "/public/x%2Fy", REFUSED),
    ("reject", "/public/x%2fy", REFUSED),
    ("reject", "/public/x#/../../internal/x", REFUSED),  # a fragment is never sent
    ("reject", "/public/%00/x", REFUSED),
    ("reject", "/public/%0d%0aX-Injected:%201", REFUSED),
    # decoded once (as backends do), %252e%252e is a segment named %2e%2e
    ("reject", "/public/%252e%252e/internal/x", "public"),
    ("reject", "/public/%252F..%252Finternal", "public"),
    # matched as a permissive backend reads it: slashes merged, ;parameters cut
    ("reject", "//internal/x", "internal"),
    ("reject", "/public//internal/x", "public"),
    ("reject", "/internal;jsessionid=1/x", "internal"),
    ("reject", "/internal;/x", "internal"),
    ("reject", "/public/x?next=/../internal/x", "public"),  # the query is no path
    ("reject", "/INTERNAL/x", "unmatched"),  # routes are case-sensitive
    # keep: %2F and %5C are data, never a separator
    ("keep", "/public/x%2Fy", "public"),
    ("keep", "/public/x%2fy", "public"),
    ("keep", "/public/x%5Cy", "public"),
    ("keep", "/public%2Finternal/x", "unmatched"),
    ("keep", "/internal%2Fx", "unmatched"),
    ("keep", "/public/..%2Finternal/x", REFUSED),  # still .. once decoded
    ("keep", "/public%2F..%2Finternal/x", REFUSED),
    ("keep", "/public/%5C..%5Cinternal/x", REFUSED),
]


@pytest.mark.parametrize(
    ("escaped_slashes", "path", "route"), PATHS, ids=[f"{m}:{p}" for m, p, _ in PATHS]
)
async def test_a_hostile_path_is_refused_or_routed_by_its_meaning_and_forwarded_unchanged(
    make_proxy: ProxyFactory,
    raw_legacy: RawServer,
    escaped_slashes: str,
    path: str,
    route: str | None,
) -> None:
    proxy = await make_proxy(
        listen={"escaped_slashes": escaped_slashes},
        backends={"legacy": {"url": raw_legacy.url}},
        routes=ROUTES,
    )
    answer = await exchange(proxy.client.port, get(path, "Host: shop.example"))
    counted = {
        name: proxy.value(
            "shadow_proxy_requests_total", route=name, backend="legacy", status_class="2xx"
        )
        for name in ("public", "internal", "unmatched")
    }
    seen = await forwarded(proxy.client.port, raw_legacy)
    if route is REFUSED:
        assert answer.status == 400
        assert json.loads(answer.body)["error"] == "bad_request"
        assert seen == []
        assert proxy.value("shadow_proxy_rejected_requests_total", reason="bad_path") == 1
    else:
        assert answer.status == 200
        assert [r.request_line for r in seen] == [f"GET {path} HTTP/1.1"]
        assert counted == {name: float(name == route) for name in counted}
