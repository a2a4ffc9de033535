"""Fuzzing request targets against the route table: whatever a client sends, the
proxy refuses it, or no backend reading of it holds a ``.``/``..`` segment and
none lands on a path another route would have matched.

A target goes through aiohttp's own request parsers (the C one the proxy runs
and the pure-Python one), so ``raw_path`` and ``path`` are exactly what the
handler gets: ``path`` is ``yarl.URL.build(path=..., encoded=True).path``.

The backend readings of the raw path (before ``?``): percent-decoded once;
``;parameters`` cut before decoding (Tomcat), after it, or not at all; ``\\``
a separator or not; repeated slashes merged or not; %2F and %5C decoded or
kept as data (only kept with ``escaped_slashes: keep``, as it promises).
Decoding twice is not a reading: ``%252e`` reaches the backend as ``%2e`` once
decoded, and a backend that decodes again is out of contract (passed through
on purpose, see the last test). A reading that matches no route lands on
nothing another route claims, so it may differ from the routing path (``//x``
or ``/admin;v=1`` read literally); the fully normalizing reading may not. (So
the table has no catch-all ``prefix: /``: normalizing towards the permissive
reading is the design's choice, see proxy/target.py.)
"""

from __future__ import annotations

import re
from collections.abc import Callable
from functools import cache
from typing import Any

import pytest
from aiohttp.http_exceptions import HttpProcessingError
from aiohttp.http_parser import HttpRequestParserC, HttpRequestParserPy
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from proxy.routes import RouteTable
from proxy.settings import settings_from
from proxy.target import has_dot_segments, path_refusal, refusal, routing_path

ROUTES = [
    {"name": "admin", "match": {"exact": "/admin"}},
    {"name": "public", "match": {"prefix": "/public/"}},
    {"name": "internal", "match": {"prefix": "/internal/"}},
    {"name": "item", "match": {"regex": r"/api/v[12]/items/[^/]+"}},  # one segment
]
PARSERS = {"c": HttpRequestParserC, "py": HttpRequestParserPy}

Refuse = Callable[[str, str, bool], str | None]
Route = Callable[[str, str, bool], str]


@cache
def table(keep: bool) -> RouteTable:
    mode = "keep" if keep else "reject"
    backends = {"legacy": {"url": "http://127.0.0.1:8001"}}
    loaded = settings_from(
        {"backends": backends, "routes": ROUTES, "listen": {"escaped_slashes": mode}}
    )
    return RouteTable.from_settings(loaded)


def parsed(target: bytes, parser: Any) -> tuple[str, str] | None:
    """(request.raw_path, request.path) as aiohttp gives them, or None when
    aiohttp itself refuses the request line (no handler runs)."""
    p = parser(object(), None, 2**16, max_line_size=8190, max_field_size=8190)
    try:
        messages, _, _ = p.feed_data(b"GET " + target + b" HTTP/1.1\r\nHost: x\r\n\r\n")
    except HttpProcessingError:  # aiohttp answers 400 itself: BadStatusLine, InvalidURLError
        return None
    if not messages:
        return None
    message = messages[0][0]
    return message.path, message.url.path


_ESCAPE = re.compile(rb"%([0-9A-Fa-f]{2})")
_PARAMETERS = re.compile(r";[^/]*")
_SLASHES = re.compile(r"//+")


def decode_once(raw: str, keep: bool) -> str:
    """One percent-decoding pass over bytes; with ``keep``, %2F and %5C stay as they are."""

    def byte(m: re.Match[bytes]) -> bytes:
        if keep and m[1].lower() in (b"2f", b"5c"):
            return m[0]
        return bytes([int(m[1], 16)])

    data = _ESCAPE.sub(byte, raw.encode("utf-8", "surrogateescape"))
    return data.decode("utf-8", "surrogateescape")


def readings(raw_path: str, keep: bool) -> dict[tuple[bool, str, bool, bool], str]:
    """Each path a backend may resolve the raw target to, by (%2F and %5C kept as
    data, params cut, backslash a separator, slashes merged). Without ``keep`` a
    backend may decode them or not: that is why they are refused then."""
    raw = raw_path.partition("?")[0]
    out = {}
    for data in (True,) if keep else (False, True):
        for params in ("never", "raw", "decoded"):
            for backslash in (False, True):
                for merge in (False, True):
                    s = raw.replace("\\", "/") if backslash else raw
                    s = _PARAMETERS.sub("", s) if params == "raw" else s
                    s = decode_once(s, data)
                    s = s.replace("\\", "/") if backslash else s
                    s = _PARAMETERS.sub("", s) if params == "decoded" else s
                    out[data, params, backslash, merge] = _SLASHES.sub("/", s) if merge else s
    return out


def fully_normalizing(how: tuple[bool, str, bool, bool], keep: bool) -> bool:
    """The reading routing_path stands for: decoded once (%2F kept only with
    ``keep``), parameters cut, backslash a separator, slashes merged."""
    return how == (keep, "decoded", True, True)


def proxy_refuses(raw_path: str, path: str, keep: bool) -> str | None:
    found = refusal("GET", (1, 1), raw_path, path, (), keep_escaped_slashes=keep)
    return None if found is None else found.reason


def proxy_routes(raw_path: str, path: str, keep: bool) -> str:
    return routing_path(raw_path, path, keep_escaped_slashes=keep)


def violations(
    target: bytes, keep: bool, refuse: Refuse = proxy_refuses, route: Route = proxy_routes
) -> list[str]:
    """What breaks the property for this target, through either parser."""
    found = []
    for name, parser in PARSERS.items():
        request = parsed(target, parser)
        if request is None or refuse(*request, keep) is not None:
            continue
        raw_path, path = request
        routed = route(raw_path, path, keep)
        routes = table(keep)
        chosen = routes.match("GET", routed)
        if any(s in (".", "..") for s in routed.split("/")):
            found.append(f"{name}: routing path {routed!r} has a dot segment")
        for how, reading in readings(raw_path, keep).items():
            if any(s in (".", "..") for s in reading.split("/")):
                found.append(f"{name}: reading {how} {reading!r} has a dot segment")
            landed = routes.match("GET", reading)
            exempt = landed is routes.fallback and not fully_normalizing(how, keep)
            if landed is not chosen and not exempt:
                mismatch = f"{how} {reading!r} to {landed.name}"
                found.append(f"{name}: routed {routed!r} to {chosen.name}, {mismatch}")
    return found


DOTS = [".", "..", "%2e", "%2E", ".%2e", "%2e%2E", "..;", ".;v=1", "..%3b", "%2e%2e;x", "%252e"]
NAMES = ["", "x", "public", "internal", "admin", "api", "v1", "items", "42", "%70ublic", "é"]
SEPARATORS = ["/", "//", "\\", "%2f", "%2F", "%5c", "%5C", ";/", "/;/", "%3b", "%3F", "%23",
              "?", "#"]  # fmt: skip
ODD = ["%", "%z", "%2", "%25", "%00", "%ff", "%c0%ae", "%e2%80", "%c3%a9", "\u2024", ";"]
# Just before a route's name (``//internal``, ``/;/admin``) is where a confusion pays.
LEADS = ["/", "/", "/", "//", "/;/", "/%2f", "/%5C", "\\", "/./", "/%2e%2e/", "", "."]
HEADS = ["", "public/", "public", "internal/", "internal", "admin", "api/v1/items/", "api/v2/items"]

characters = st.characters(min_codepoint=0x21, max_codepoint=0x7E) | st.characters(
    codec="utf-8", exclude_categories=("Cc", "Cs")
)
segments = (
    st.sampled_from(DOTS + NAMES)
    | st.from_regex(r"%[0-9A-Fa-f]{2}", fullmatch=True)
    | st.lists(st.sampled_from(ODD) | characters, max_size=3).map("".join)
)
joints = st.tuples(segments, st.sampled_from(SEPARATORS)).map("".join)
targets = st.builds(
    lambda lead, head, parts: (lead + head + "".join(parts)).encode("utf-8", "surrogateescape"),
    st.sampled_from(LEADS),
    st.sampled_from(HEADS),
    st.lists(joints | segments, max_size=6),
)

KNOWN = [
    b"/public/../internal/x",
    b"/public/%2e%2E/internal/x",
    b"/public/.%2e/internal/x",
    b"/public/..;/internal/x",
    b"/public/..%3b/internal/x",
    b"/public/.;v=1/x",
    b"/public\\..\\internal/x",
    b"/public/..%5cinternal/x",
    b"/public%2F..%2Finternal/x",
    b"/public/..%2F..%2Finternal/x",
    b"/public/%252e%252e/internal/x",
    b"//internal//x",
    b"/internal;v=1/x",
    b"/;/admin",
    b"/admin%3B",
    b"/internal%2Fx",
    b"/api/v1/items/42;x",
    b"/api/v1/items/a%2Fb",
]


@settings(
    max_examples=1000,
    deadline=None,
    database=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much],
)
@given(targets, st.booleans())
@example(KNOWN[0], False)
def test_a_target_is_refused_or_every_backend_reading_is_dot_free_and_routed_alike(
    target: bytes, keep: bool
) -> None:
    """Any raw target is refused, or no reading of it has a dot segment and each
    lands on the route chosen (or on no route; never on another)."""
    assert violations(target, keep) == []


@pytest.mark.parametrize("keep", [False, True])
@pytest.mark.parametrize("target", KNOWN)
def test_known_hostile_targets_hold_the_property(target: bytes, keep: bool) -> None:
    """The classic traversal and confusion targets, in both escaped_slashes modes."""
    assert violations(target, keep) == []


def _dots_only(raw_path: str, path: str, keep: bool) -> str | None:
    """A refusal that misses ``..;`` (no ``;parameters`` cut before the dot check)."""
    return "dots" if any(s in (".", "..") for s in re.split(r"[/\\]", path)) else None


def _decoded(raw_path: str, path: str, keep: bool) -> str:
    return path


WEAKER: dict[str, tuple[bytes, bool, Refuse, Route]] = {
    "nothing refused": (b"/public/%2e%2e/internal/x", False, lambda *_: None, proxy_routes),
    "no param cut in the dot check": (b"/public/..;/internal/x", False, _dots_only, proxy_routes),
    "no slash merge": (b"//internal/x", False, proxy_refuses, _decoded),
    "no decoding": (b"/%69nternal/x", False, proxy_refuses, lambda raw, path, keep: raw),
    "keep mode routing on %2F as a slash": (b"/internal%2Fx", True, proxy_refuses, _decoded),
    "%2F not refused": (b"/api/v1/items/a%2Fb", False, _dots_only, proxy_routes),
}


@pytest.mark.parametrize(("target", "keep", "refuse", "route"), WEAKER.values(), ids=WEAKER)
def test_the_property_catches_a_weaker_proxy(
    target: bytes, keep: bool, refuse: Refuse, route: Route
) -> None:
    """The checker has teeth: each weakened refusal or routing breaks it on one target."""
    assert violations(target, keep, refuse, route) != []


def test_double_encoding_is_passed_through_and_routed_by_its_single_decoding() -> None:
    """``%252e%252e`` is ``%2e%2e`` to a backend that decodes once (as HTTP says):
    not a dot segment, so not refused; the route is that of the path it names."""
    raw_path, path = parsed(b"/public/%252e%252e/internal/x", HttpRequestParserC) or ("", "")
    assert path == "/public/%2e%2e/internal/x"
    assert path_refusal(raw_path, path, keep_escaped_slashes=False) is None
    assert not has_dot_segments(path)
    assert table(False).match("GET", proxy_routes(raw_path, path, False)).name == "public"
    assert violations(b"/public/%252e%252e/internal/x", False) == []
