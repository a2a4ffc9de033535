"""Request targets and forwarding headers as tables (the integration tests in
test_targets.py send the same paths through a running proxy)."""

from __future__ import annotations

from urllib.parse import unquote

import pytest
from multidict import CIMultiDict

from proxy.headers import to_upstream
from proxy.target import path_refusal, routing_path


@pytest.mark.parametrize(
    ("raw_path", "decoded", "keep", "matched"),
    [
        ("/a/b?x=%2F", "/a/b", False, "/a/b"),
        ("//a///b", "//a///b", False, "/a/b"),
        ("/a;v=1/b;c", "/a;v=1/b;c", False, "/a/b"),
        ("/a/;x/b", "/a/;x/b", False, "/a/b"),  # cut first, then merged
        ("/a%2Fb%2fc%5Cd", "/a/b/c\\d", True, "/a%2Fb%2Fc%5Cd"),
        ("/%61%2F%62?q=%2F", "/a/b", True, "/a%2Fb"),
        ("/a%252Fb", "/a%2Fb", True, "/a%2Fb"),  # a literal %2F after one decoding
    ],
)
def test_routes_match_the_path_a_permissive_backend_would_read(
    raw_path: str, decoded: str, keep: bool, matched: str
) -> None:
    assert routing_path(raw_path, decoded, keep_escaped_slashes=keep) == matched


@pytest.mark.parametrize(
    ("raw_path", "refused"),
    [
        ("/public/%u002e%u002e/internal/x", "malformed percent-escape"),  # IIS %u
        ("/a/100%", "malformed percent-escape"),
        ("/a/%zz", "malformed percent-escape"),
        ("/public/%c0%ae%c0%ae/internal/x", "overlong UTF-8"),  # a lenient decoder reads ".."
        ("/public/%e0%80%ae/x", "overlong UTF-8"),
        ("/public/..%20/internal/x", ". or .. segment"),  # Windows drops trailing spaces
        ("/public/.../internal/x", ". or .. segment"),  # ...and trailing dots
        ("/public/%c0%af/x", "overlong UTF-8"),  # "/"
        ("/caf%C0/%C1", None),  # Latin-1 bytes a legacy path may carry: not a separator
        ("/a/b.json", None),
        ("/.well-known/openid-configuration", None),
        ("/a/.hidden/..b/b..", None),
        ("/caf%C3%A9/%E0%A4%A4%20x?q=100%", None),  # valid UTF-8; the query is not the path
    ],
)
def test_paths_that_some_backend_reads_as_dot_segments_are_refused(
    raw_path: str, refused: str | None
) -> None:
    decoded = unquote(raw_path.partition("?")[0])
    problem = path_refusal(raw_path, decoded, keep_escaped_slashes=False)
    assert (problem is None) if refused is None else (refused in (problem or "")), problem


@pytest.mark.parametrize(
    ("client_ip", "host", "forwarded"),
    [
        ("10.0.0.9", "shop.example", "for=10.0.0.9;host=shop.example;proto=https"),
        ("2001:db8::1", "a.example:8443", 'for="[2001:db8::1]";host="a.example:8443";proto=https'),
        (None, 'a"b\\c', 'host="a\\"b\\\\c";proto=https'),
    ],
)  # fmt: skip
def test_forwarded_gets_the_proxys_own_element_last_quoted_as_rfc_7239_says(
    client_ip: str | None, host: str, forwarded: str
) -> None:
    client = CIMultiDict(
        [("Host", host), ("Forwarded", "for=evil;host=evil;proto=http"), ("X-Forwarded-Host", "x")]
    )
    out = to_upstream(client, client_ip=client_ip, scheme="https", preserve_host=False)
    # appended to, like X-Forwarded-For: the last element is the proxy's own
    assert out.getall("Forwarded") == [f"for=evil;host=evil;proto=http, {forwarded}"]
    assert out.getall("X-Forwarded-Host") == [host]
