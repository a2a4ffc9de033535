"""The request head the upstream client writes: what the backend reads, byte for byte."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest
from multidict import CIMultiDict

from proxy.settings import Backend
from proxy.upstream import Upstream

Headers = list[tuple[str, str]]


async def _stream() -> AsyncIterator[bytes]:
    yield b"streamed"


def head(
    method: str,
    path: str = "/x",
    headers: Headers | None = None,
    data: bytes | AsyncIterator[bytes] | None = None,
    url: str = "http://backend:8080",
) -> tuple[str, bool]:
    upstream = Upstream("agent", Backend(url=url))
    raw, chunked = upstream._head(method, path, CIMultiDict(headers or []), data)
    return raw.decode("utf-8", "surrogateescape"), chunked


def test_a_get_without_headers_names_only_the_backends_host() -> None:
    assert head("GET") == ("GET /x HTTP/1.1\r\nHost: backend:8080\r\n\r\n", False)


def test_the_backends_host_comes_first_and_the_callers_headers_follow_in_order() -> None:
    text, _ = head("GET", headers=[("X-B", "1"), ("x-a", "2"), ("X-B", "3")])
    assert text == "GET /x HTTP/1.1\r\nHost: backend:8080\r\nX-B: 1\r\nx-a: 2\r\nX-B: 3\r\n\r\n"


def test_a_host_from_the_caller_is_kept_where_it_was_and_not_doubled() -> None:
    text, _ = head("GET", headers=[("Accept", "*/*"), ("host", "public.example")])
    assert text == "GET /x HTTP/1.1\r\nAccept: */*\r\nhost: public.example\r\n\r\n"


@pytest.mark.parametrize(
    ("url", "host"),
    [
        ("http://backend", "backend"),
        ("http://backend:80", "backend"),
        ("https://backend", "backend"),
        ("https://backend:8443", "backend:8443"),
        ("http://[::1]:8080", "[::1]:8080"),
    ],
)
def test_the_host_header_leaves_out_the_default_port(url: str, host: str) -> None:
    assert f"\r\nHost: {host}\r\n" in head("GET", url=url)[0]


@pytest.mark.parametrize("url", ["http://backend:8080/base", "http://backend:8080/base/"])
def test_the_base_path_prefixes_the_raw_path_and_query(url: str) -> None:
    text, _ = head("GET", "/a%2Fb?q=1&q=2", url=url)
    assert text.startswith("GET /base/a%2Fb?q=1&q=2 HTTP/1.1\r\n")


@pytest.mark.parametrize(
    ("method", "data", "framing", "chunked"),
    [
        ("GET", None, "", False),
        ("GET", b"", "", False),
        ("DELETE", None, "", False),
        ("POST", None, "Content-Length: 0\r\n", False),
        ("POST", b"", "Content-Length: 0\r\n", False),
        ("PUT", b"hello", "Content-Length: 5\r\n", False),
        ("GET", b"odd", "Content-Length: 3\r\n", False),
        ("POST", "stream", "Transfer-Encoding: chunked\r\n", True),
    ],
)
def test_the_framing_follows_the_body_actually_sent(
    method: str, data: bytes | str | None, framing: str, chunked: bool
) -> None:
    body = _stream() if data == "stream" else data
    assert not isinstance(body, str)
    text, is_chunked = head(method, data=body)
    assert text == f"{method} /x HTTP/1.1\r\nHost: backend:8080\r\n{framing}\r\n"
    assert is_chunked is chunked


def test_the_callers_framing_is_replaced_by_the_length_of_a_bytes_body() -> None:
    headers = [("Content-Length", "999"), ("Transfer-Encoding", "chunked"), ("X-A", "1")]
    text, chunked = head("POST", headers=headers, data=b"four")
    assert text == "POST /x HTTP/1.1\r\nHost: backend:8080\r\nX-A: 1\r\nContent-Length: 4\r\n\r\n"
    assert not chunked


def test_a_streamed_body_keeps_the_callers_content_length_and_is_not_chunked() -> None:
    text, chunked = head("PUT", headers=[("content-length", "8")], data=_stream())
    assert text == "PUT /x HTTP/1.1\r\nHost: backend:8080\r\nContent-Length: 8\r\n\r\n"
    assert not chunked


@pytest.mark.parametrize("length", ["", "8 ", "-8", "8,8", "eight"])
def test_a_streamed_body_with_an_unusable_length_goes_chunked(length: str) -> None:
    text, chunked = head("POST", headers=[("Content-Length", length)], data=_stream())
    assert text.endswith("Host: backend:8080\r\nTransfer-Encoding: chunked\r\n\r\n")
    assert chunked


def test_a_streamed_body_sent_chunked_by_the_client_says_chunked_once() -> None:
    text, chunked = head("POST", headers=[("Transfer-Encoding", "chunked")], data=_stream())
    assert text.count("Transfer-Encoding") == 1
    assert chunked


def test_a_non_ascii_header_value_goes_out_as_its_utf8_bytes() -> None:
    upstream = Upstream("agent", Backend(url="http://backend"))
    raw, _ = upstream._head("GET", "/", CIMultiDict({"X-Name": "Zoë"}), None)
    assert b"\r\nX-Name: Zo\xc3\xab\r\n" in raw


@pytest.mark.parametrize(
    ("path", "headers"),
    [
        ("/x", [("X-Evil", "a\r\nX-Injected: 1")]),
        ("/x", [("X-Evil", "a\nb")]),
        ("/x", [("X-Evil", "a\rb")]),
        ("/x", [("X-Evil\r\nX-Injected", "1")]),
        ("/x HTTP/1.1\r\nX-Injected: 1\r\n", []),
    ],
    ids=["crlf-value", "lf-value", "cr-value", "crlf-name", "crlf-path"],
)
def test_a_line_break_anywhere_in_the_head_is_refused(path: str, headers: Headers) -> None:
    with pytest.raises(ValueError, match="line break"):
        head("GET", path, headers)
