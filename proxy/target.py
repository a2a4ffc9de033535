"""The request target and framing a backend could read differently: refused
before routing; what passes gives the path routes are matched against (pure).

The proxy forwards the raw target unchanged, so a route must never be chosen
from a path that some backend reads another way. ``..`` hides behind
``%2e%2e``, ``..;`` (Tomcat drops ``;parameters``), ``\\`` (a separator on
some servers) and ``%2F`` (a separator once decoded); those are refused, or,
with ``listen.escaped_slashes: keep``, encoded slashes are kept as data and
never act as separators. What passes is normalized for matching only, towards
the most permissive reading a backend could make: repeated slashes merged and
``;parameters`` cut, so ``//admin`` or ``/admin;x=y`` land on the route of
``/admin``.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from typing import NamedTuple
from urllib.parse import unquote

# %2F and %5C: data to some backends, a separator to others once decoded.
_ESCAPED_SEPARATOR = re.compile(r"%(?:2f|5c)", re.IGNORECASE)
_SEPARATOR = re.compile(r"[/\\]")
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")
_PARAMETERS = re.compile(r";[^/]*")
_REPEATED_SLASHES = re.compile(r"//+")
_BAD_ESCAPE = re.compile(r"%(?![0-9A-Fa-f]{2})")
# Overlong (non-shortest) UTF-8 forms of ".", "/" and "\\", which a lenient
# decoder reads as those. Other %C0/%C1 bytes stay (legacy Latin-1 paths: À, Á).
_OVERLONG = re.compile(
    r"%c0%(?:ae|af)|%c1%9c|%e0%80%(?:ae|af)|%e0%81%9c|%f0%80%80%(?:ae|af)",
    re.IGNORECASE,
)


_HTTP_1 = ((1, 0), (1, 1))


class Refusal(NamedTuple):
    status: int
    error: str
    reason: str
    label: str  # shadow_proxy_rejected_requests_total's reason


def refusal(
    method: str,
    version: tuple[int, int],
    raw_path: str,
    path: str,
    transfer_encoding: Sequence[str],
    *,
    keep_escaped_slashes: bool,
) -> Refusal | None:
    """What no backend may see, or None: a tunnel, another HTTP version, a
    framing or a target a backend could read differently."""
    if method == "CONNECT":
        # RFC 9110 section 15.5.6: a known method that no resource here allows.
        return Refusal(405, "method_not_allowed", "CONNECT: this proxy opens no tunnels", "tunnel")
    if version not in _HTTP_1:
        reason = f"HTTP/{version[0]}.{version[1]} is not supported"
        return Refusal(505, "http_version_not_supported", reason, "bad_version")
    problem = framing_refusal(version, transfer_encoding)
    if problem is not None:
        return Refusal(400, "bad_request", problem, "bad_framing")
    problem = path_refusal(raw_path, path, keep_escaped_slashes=keep_escaped_slashes)
    if problem is not None:
        return Refusal(400, "bad_request", problem, "bad_path")
    return None


def has_dot_segments(path: str) -> bool:
    """``/a/../b`` (also ``/a/..;x/b`` and ``/a\\..\\b``, and their encoded
    forms once decoded) would match one route here and reach another."""
    if "." not in path:
        return False
    return any(_is_dots(s.partition(";")[0]) for s in _SEPARATOR.split(path))


def _is_dots(segment: str) -> bool:
    """``.`` and ``..``, also as Windows reads them: trailing dots and spaces
    are dropped there, so ``.. `` and ``...`` are ``..`` too."""
    return segment in (".", "..") or (
        segment.startswith(".") and not segment.rstrip(". ") and len(segment) > 1
    )


def path_refusal(raw_path: str, path: str, *, keep_escaped_slashes: bool) -> str | None:
    """Why this target must not be routed, or None.

    ``raw_path`` is the target as received (query included), ``path`` its
    decoded path.
    """
    raw = raw_path.partition("?")[0]
    if not raw.startswith("/"):
        return "the request target is not a plain path"
    if "#" in raw_path:
        return "the request target carries a fragment"
    if "\\" in raw:
        return "the path contains a backslash"
    if "%" in raw:
        if _BAD_ESCAPE.search(raw):  # %u002e (IIS) and other non-RFC 3986 escapes
            return "the path contains a malformed percent-escape"
        if _OVERLONG.search(raw):  # %c0%ae: a lenient UTF-8 decoder reads "."
            return "the path contains an overlong UTF-8 sequence"
        if not keep_escaped_slashes and _ESCAPED_SEPARATOR.search(raw):
            return "the path contains an encoded slash or backslash (%2F, %5C)"
    if _CONTROL.search(path):
        return "the path contains a control character"
    if has_dot_segments(path):
        return "the path contains a . or .. segment"
    return None


def routing_path(raw_path: str, path: str, *, keep_escaped_slashes: bool) -> str:
    """The path routes are matched against, for a target ``path_refusal`` passed."""
    if keep_escaped_slashes:
        raw = raw_path.partition("?")[0]
        if _ESCAPED_SEPARATOR.search(raw):
            path = _decode_keeping_separators(raw)
    if ";" in path:
        path = _PARAMETERS.sub("", path)
    if "//" in path:
        path = _REPEATED_SLASHES.sub("/", path)
    return path


def _decode_keeping_separators(raw: str) -> str:
    """Percent-decode all but %2F and %5C, which stay (upper-cased) as data."""
    parts: list[str] = []
    last = 0
    for escaped in _ESCAPED_SEPARATOR.finditer(raw):
        parts.append(unquote(raw[last : escaped.start()]))
        parts.append(escaped.group().upper())
        last = escaped.end()
    parts.append(unquote(raw[last:]))
    return "".join(parts)


def framing_refusal(version: tuple[int, int], transfer_encoding: Sequence[str]) -> str | None:
    """Why a body's framing is ambiguous, or None (the parser has already
    refused Content-Length with Transfer-Encoding, and bad chunks).

    Only ``chunked`` alone is understood: the proxy de-chunks and forwards
    the body with its own framing, so any other coding (``gzip, chunked``,
    ``identity, chunked``) would reach the backend silently undone. HTTP/1.0
    has no Transfer-Encoding at all: RFC 9112 section 6.1 says to treat its
    framing as faulty.
    """
    if not transfer_encoding:
        return None
    if version < (1, 1):
        return "Transfer-Encoding in an HTTP/1.0 request"
    if len(transfer_encoding) != 1 or transfer_encoding[0].strip().lower() != "chunked":
        return "a transfer coding other than chunked"
    return None
