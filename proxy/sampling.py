"""Which requests are mirrored: a percentage, sticky by a key when configured.

A sticky key (header, cookie or query parameter) is hashed into one of
100,000 buckets, so a given user is either always or never shadowed at a given
percentage, and raising the percentage only ever adds users (monotonic).
Without a key, or when a request lacks it, the choice is random.
"""

from __future__ import annotations

import random
from collections.abc import Mapping
from hashlib import blake2b
from http.cookies import CookieError, SimpleCookie

from proxy.settings import StickyKey

BUCKETS = 100_000  # 0.001% granularity: fractional steps like 0.5% are exact


def bucket(salt: bytes, key: str) -> int:
    """A stable bucket in ``[0, BUCKETS)``: same key, same bucket, on every replica."""
    digest = blake2b(key.encode("utf-8", "surrogateescape"), digest_size=8, key=salt).digest()
    return int.from_bytes(digest, "big") % BUCKETS


def cookie_value(cookie_header: str, name: str) -> str | None:
    jar: SimpleCookie = SimpleCookie()
    try:
        jar.load(cookie_header)
    except CookieError:
        return None
    morsel = jar.get(name)
    return morsel.value if morsel is not None else None


class Sampler:
    """Decides per request whether it falls inside the route's percentage."""

    def __init__(
        self,
        salt: str,
        percent: float,
        sticky: StickyKey | None,
        rng: random.Random | None = None,
    ) -> None:
        self._salt = salt.encode()[:64]
        self.percent = percent
        self._sticky = sticky
        self._random = (rng or random.Random()).random

    def key(
        self, headers: Mapping[str, str], query: Mapping[str, str], client_ip: str | None = None
    ) -> str | None:
        sticky = self._sticky
        if sticky is None:
            return None
        if sticky.header is not None:
            return headers.get(sticky.header)
        if sticky.query is not None:
            return query.get(sticky.query)
        if sticky.client_ip:
            return client_ip
        assert sticky.cookie is not None
        raw = headers.get("Cookie")
        return cookie_value(raw, sticky.cookie) if raw else None

    def sampled(
        self, headers: Mapping[str, str], query: Mapping[str, str], client_ip: str | None = None
    ) -> bool:
        """Whether this request falls inside the configured percentage."""
        return self.chosen(self.percent, headers, query, client_ip)

    def chosen(
        self,
        percent: float,
        headers: Mapping[str, str],
        query: Mapping[str, str],
        client_ip: str | None = None,
    ) -> bool:
        """Whether this request falls inside ``percent`` (which may change at run time)."""
        threshold = percent * BUCKETS / 100
        if threshold >= BUCKETS:
            return True
        if threshold <= 0:
            return False
        key = self.key(headers, query, client_ip)
        if key is None:
            return self._random() * BUCKETS < threshold
        return bucket(self._salt, key) < threshold
