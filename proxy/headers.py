"""Header rewriting between client, proxy and backends (pure).

Hop-by-hop headers describe one connection and never cross the proxy
(RFC 9110 section 7.6.1): the fixed list below plus every name listed in the
``Connection`` header. What crosses is copied once, in order, with repeated
names (``Set-Cookie``) kept.
"""

from __future__ import annotations

import functools
import re
from collections.abc import Iterable, Mapping

from multidict import CIMultiDict, CIMultiDictProxy

HOP_BY_HOP = frozenset(
    {
        "connection",
        "proxy-connection",
        "keep-alive",
        "proxy-authenticate",
        "proxy-authorization",
        "te",
        "trailer",
        "transfer-encoding",
        "upgrade",
    }
)
SHADOW_MARKER = "X-Shadow-Request"
REQUEST_ID = "X-Request-Id"

# Never forwarded from the client: the proxy already answered ``Expect:
# 100-continue`` itself (a backend that ignores Expect would otherwise stall
# the body), only the proxy may mark a request as a shadow, and only the proxy
# says which host and scheme the client asked for (a client's own
# X-Forwarded-Host would pass for the proxy's). X-Original-URL and
# X-Rewrite-URL make some frameworks (IIS, Symfony) serve another path than
# the one the route matched.
_CLIENT_ONLY = (
    "expect",
    "traceparent",  # each upstream call gets its own (proxy/tracecontext.py)
    "tracestate",
    SHADOW_MARKER.lower(),
    "x-forwarded-host",
    "x-original-url",
    "x-rewrite-url",
)
_TOKEN = re.compile(r"[!#$%&'*+.^_`|~0-9A-Za-z-]+")  # RFC 9110 token: methods, header names
_CONTROL = re.compile(r"[\x00-\x08\x0a-\x1f\x7f]")  # not allowed in a header value

Headers = CIMultiDict[str] | CIMultiDictProxy[str]


def _connection_tokens(headers: Headers) -> frozenset[str]:
    values = headers.getall("Connection", ())
    if not values:
        return HOP_BY_HOP
    named = {t.strip().lower() for v in values for t in v.split(",") if t.strip()}
    return HOP_BY_HOP | named


def end_to_end(headers: Headers, also_drop: Iterable[str] = ()) -> CIMultiDict[str]:
    """A copy without hop-by-hop headers and without the names in ``also_drop``."""
    drop = _connection_tokens(headers).union(also_drop)
    return CIMultiDict((k, v) for k, v in headers.items() if k.lower() not in drop)


def to_upstream(
    headers: Headers,
    *,
    client_ip: str | None,
    scheme: str,
    preserve_host: bool,
) -> CIMultiDict[str]:
    """What a backend receives: end-to-end headers plus X-Forwarded-* and
    Forwarded (RFC 7239). X-Forwarded-For and Forwarded are appended to, as
    proxies do (a backend trusts their last element, which is ours);
    X-Forwarded-Proto and -Host describe this hop alone, whatever the client sent.

    ``Host`` is the backend's own (set by ``Upstream`` from its URL)
    unless the route preserves the client's.
    """
    out = end_to_end(headers, _CLIENT_ONLY if preserve_host else (*_CLIENT_ONLY, "host"))
    client_host = headers.get("Host")
    if client_ip:
        prior = ", ".join(headers.getall("X-Forwarded-For", ()))
        out["X-Forwarded-For"] = f"{prior}, {client_ip}" if prior else client_ip
    out["X-Forwarded-Proto"] = scheme
    if client_host:
        out["X-Forwarded-Host"] = client_host
    ours = _forwarded(client_ip, client_host, scheme)
    prior = ", ".join(headers.getall("Forwarded", ()))
    out["Forwarded"] = f"{prior}, {ours}" if prior else ours
    return out


@functools.lru_cache(maxsize=1024)  # a few peers and hosts: built once, not per request
def _forwarded(client_ip: str | None, host: str | None, scheme: str) -> str:
    """This hop's ``Forwarded`` element: ``for=...;host=...;proto=...``."""
    pairs = []
    if client_ip:
        pairs.append(f"for={_quoted(f'[{client_ip}]' if ':' in client_ip else client_ip)}")
    if host:
        pairs.append(f"host={_quoted(host)}")
    pairs.append(f"proto={_quoted(scheme)}")
    return ";".join(pairs)


def _quoted(value: str) -> str:
    """A token as it is, anything else as a quoted-string (RFC 7239 section 4)."""
    if _TOKEN.fullmatch(value):
        return value
    return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'


def to_client(headers: Headers) -> CIMultiDict[str]:
    """What the client receives from a backend's response."""
    return end_to_end(headers)


def to_shadow(
    upstream: Mapping[str, str] | CIMultiDict[str],
    *,
    add: Mapping[str, str],
    drop: Iterable[str],
) -> CIMultiDict[str]:
    """The agent's copy: marked as shadow, minus configured secrets, plus extras,
    asking for an uncompressed answer.

    The body is resent from the capture, so its length is recomputed.
    """
    dropped = {name.lower() for name in drop} | {"content-length", "accept-encoding"}
    out = CIMultiDict((k, v) for k, v in upstream.items() if k.lower() not in dropped)
    out.update(add)
    out[SHADOW_MARKER] = "1"
    # The answer reaches no client: plain bytes are read for usage and compared as they come.
    out["Accept-Encoding"] = "identity"
    return out


def lowered(headers: Mapping[str, str]) -> dict[str, str]:
    """Headers as comparators and fallback checks see them: lower-case names."""
    return {k.lower(): v for k, v in headers.items()}


def is_token(value: str) -> bool:
    """An RFC 9110 token: what a method or a header name must be."""
    return _TOKEN.fullmatch(value) is not None


def invalid_header(name: str, value: str) -> str | None:
    """Why a configured header (one the proxy adds) cannot be sent, or None."""
    if not is_token(name):
        return f"{name!r} is not a valid header name"
    if _CONTROL.search(value):
        return f"the value of {name} contains control characters"
    return None
