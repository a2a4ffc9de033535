"""Request smuggling, sent as raw bytes: a request two parsers could frame
differently is refused (400) and its connection closed, and legacy — a raw
server that records every byte — never sees it; a request the proxy
understands reaches legacy exactly once, framed by the proxy alone."""

from __future__ import annotations

import pytest
from conftest import ProxyFactory
from fakes import RawClient, RawServer, forwarded
from fakes import raw_request as raw


def post(*headers: str, body: bytes) -> bytes:
    return raw("POST /orders HTTP/1.1", *headers, body=body)


TE = "Transfer-Encoding: chunked"
END = b"0\r\n\r\n"

REFUSED = {
    # Content-Length and Transfer-Encoding together: which one frames the body?
    "cl-then-te": post("Content-Length: 5", TE, body=END),
    "te-then-cl": post(TE, "Content-Length: 5", body=END),
    "te-trailing-space-with-cl": post("Transfer-Encoding: chunked ", "Content-Length: 5", body=END),
    "te-folded-with-cl": post("Transfer-Encoding:\r\n chunked", "Content-Length: 5", body=b"hello"),
    "te-vertical-tab-with-cl": post("Transfer-Encoding:\x0bchunked", "Content-Length: 5", body=END),
    "chunked-trailer-sets-cl": post(TE, body=b"5\r\nhello\r\n0\r\nContent-Length: 99\r\n\r\n"),
    # a coding other than chunked alone: some servers frame by it, others not
    "te-xchunked": post("Transfer-Encoding: xchunked", body=END),
    "te-chunked-identity": post("Transfer-Encoding: chunked, identity", body=END),
    "te-identity-chunked": post("Transfer-Encoding: identity, chunked", body=END),
    "te-gzip-chunked": post("Transfer-Encoding: gzip, chunked", body=END),
    "te-twice": post(TE, TE, body=END),
    "http10-with-te": raw("POST /orders HTTP/1.0", TE, body=END),
    # Content-Length that two parsers could read as two numbers
    "cl-twice-same": post("Content-Length: 5", "Content-Length: 5", body=b"hello"),
    "cl-twice-different": post("Content-Length: 5", "Content-Length: 6", body=b"hello!"),
    "cl-list": post("Content-Length: 5, 5", body=b"hello"),
    "cl-plus-sign": post("Content-Length: +5", body=b"hello"),
    "cl-minus-sign": post("Content-Length: -5", body=b"hello"),
    "cl-hex": post("Content-Length: 0x5", body=b"hello"),
    "cl-overflow": post("Content-Length: 99999999999999999999999", body=b"hello"),
    "cl-space-before-colon": post("Content-Length : 5", body=b"hello"),
    # bad chunks
    "chunk-size-not-hex": post(TE, body=b"zz\r\nhello\r\n" + END),
    "chunk-size-overflow": post(TE, body=b"ffffffffffffffffff1\r\nhello\r\n" + END),
    "chunk-size-0x": post(TE, body=b"0x5\r\nhello\r\n" + END),
    "chunk-size-space": post(TE, body=b"5 \r\nhello\r\n" + END),
    "chunk-missing-crlf": post(TE, body=b"5\r\nhelloXX" + END),
    "chunk-bare-lf": post(TE, body=b"5\nhello\n0\n\n"),
    # header lines a lenient parser would join, split or cut
    "obs-fold-space": raw("GET /orders HTTP/1.1", "X-A: 1", " folded: 2"),
    "obs-fold-tab": raw("GET /orders HTTP/1.1", "X-A: 1", "\tfolded: 2"),
    "bare-lf-everywhere": b"GET /orders HTTP/1.1\nHost: shop.example\n\n",
    "bare-lf-in-headers": raw("GET /orders HTTP/1.1", "X-A: 1\nX-B: 2"),
    "bare-cr-in-headers": raw("GET /orders HTTP/1.1", "X-A: 1\rX-B: 2"),
    "nul-in-value": raw("GET /orders HTTP/1.1", "X-A: a\x00b"),
    "nul-in-name": raw("GET /orders HTTP/1.1", "X-\x00A: b"),
    "space-before-colon": raw("GET /orders HTTP/1.1", "X-A : 1"),
    "two-hosts": raw("GET /orders HTTP/1.1", "Host: evil.example"),
    "no-host": b"GET /orders HTTP/1.1\r\n\r\n",
    # other versions than HTTP/1.x (a downgrade or an HTTP/2 preface)
    "http-1.2": raw("GET /orders HTTP/1.2"),
    "h2-preface": b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n",
}
# RFC 9110 section 15.6.6: a major version the server does not support.
VERSION_REFUSED = {
    "http-0.9": b"GET /orders\r\n\r\n",
    "http-2.0-request-line": raw("GET /orders HTTP/2.0"),
}


@pytest.mark.parametrize(
    ("request_bytes", "status"),
    [pytest.param(r, 400, id=name) for name, r in REFUSED.items()]
    + [pytest.param(r, 505, id=name) for name, r in VERSION_REFUSED.items()],
)
async def test_an_ambiguous_request_is_refused_closed_and_never_reaches_legacy(
    make_proxy: ProxyFactory, raw_legacy: RawServer, request_bytes: bytes, status: int
) -> None:
    proxy = await make_proxy(backends={"legacy": {"url": raw_legacy.url}})
    async with RawClient.connect(proxy.client.port) as client:
        await client.send(request_bytes)
        answer = await client.response()
        assert answer.status == status
        assert await client.closed()
    assert b"Traceback" not in answer.body and b"File " not in answer.body
    assert raw_legacy.url.removeprefix("http://").encode() not in answer.body
    if status == 505:  # the parser accepted the line; the proxy refused the version
        assert proxy.value("shadow_proxy_rejected_requests_total", reason="bad_version") == 1
    assert await forwarded(proxy.client.port, raw_legacy) == []


async def test_the_proxys_own_framing_refusals_are_counted(
    make_proxy: ProxyFactory, raw_legacy: RawServer
) -> None:
    """The parser refuses most framings before the proxy sees them; what the
    proxy refuses itself is counted, with a JSON reason."""
    proxy = await make_proxy(backends={"legacy": {"url": raw_legacy.url}})
    async with RawClient.connect(proxy.client.port) as client:
        await client.send(REFUSED["te-identity-chunked"])
        answer = await client.response()
    assert answer.body == b'{"error":"bad_request","reason":"a transfer coding other than chunked"}'
    assert proxy.value("shadow_proxy_rejected_requests_total", reason="bad_framing") == 1


HIDDEN = b"GET /admin HTTP/1.1\r\nHost: shop.example\r\n\r\n"
CHUNKED_HIDDEN = b"0\r\n\r\n" + HIDDEN
# (what the client sends, [(request line, body) legacy must see, in order])
NORMALIZED = {
    "te-upper-case": (
        post("Transfer-Encoding: CHUNKED", body=b"5\r\nhello\r\n" + END),
        [("POST /orders HTTP/1.1", b"hello")],
    ),
    "two-spaces-in-request-line": (
        raw("GET  /orders HTTP/1.1"),
        [("GET /orders HTTP/1.1", b"")],
    ),
    "get-with-a-body": (
        raw("GET /orders HTTP/1.1", "Content-Length: 5", body=b"hello"),
        [("GET /orders HTTP/1.1", b"hello")],
    ),
    "request-hidden-in-a-content-length-body": (
        post(f"Content-Length: {len(HIDDEN)}", body=HIDDEN),
        [("POST /orders HTTP/1.1", HIDDEN)],
    ),
    "request-hidden-in-a-chunk": (
        post(TE, body=b"%x\r\n" % len(CHUNKED_HIDDEN) + CHUNKED_HIDDEN + b"\r\n" + END),
        [("POST /orders HTTP/1.1", CHUNKED_HIDDEN)],
    ),
    "pipelined-after-a-short-content-length": (
        post("Content-Length: 4", body=b"abcd" + HIDDEN),
        [("POST /orders HTTP/1.1", b"abcd"), ("GET /admin HTTP/1.1", b"")],
    ),
}


@pytest.mark.parametrize(("request_bytes", "expected"), NORMALIZED.values(), ids=NORMALIZED)
async def test_a_request_the_proxy_understands_reaches_legacy_once_with_one_framing(
    make_proxy: ProxyFactory,
    raw_legacy: RawServer,
    request_bytes: bytes,
    expected: list[tuple[str, bytes]],
) -> None:
    proxy = await make_proxy(backends={"legacy": {"url": raw_legacy.url}})
    async with RawClient.connect(proxy.client.port) as client:
        await client.send(request_bytes)
        for _ in expected:
            assert (await client.response()).status == 200
        seen = await forwarded(proxy.client.port, raw_legacy)
        assert [(r.request_line, r.body) for r in seen] == expected
        for request in seen:
            framing = request.header("content-length") + request.header("transfer-encoding")
            assert len(framing) == (1 if request.body else 0), request.head
        await client.send(raw("GET /again HTTP/1.1"))  # the connection is still in step
        assert (await client.response()).status == 200
    assert raw_legacy.requests[-1].request_line == "GET /again HTTP/1.1"
