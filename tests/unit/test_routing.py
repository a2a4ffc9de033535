"""Route matching, sampling and header rewriting: pure functions, as tables."""

from __future__ import annotations

import random
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st
from multidict import CIMultiDict

from proxy.headers import to_client, to_shadow, to_upstream
from proxy.routes import RouteTable
from proxy.sampling import BUCKETS, Sampler, bucket
from proxy.settings import StickyKey, settings_from

TABLE = settings_from(
    {
        "backends": {"legacy": {"url": "http://l"}},
        "routes": [
            {"name": "exact", "match": {"exact": "/api/v1/health"}},
            {"name": "post-only", "match": {"prefix": "/api/v1/", "methods": ["post"]}},
            {"name": "regex", "match": {"regex": r"/api/v[12]/items/\d+"}},
            {"name": "prefix", "match": {"prefix": "/api/"}},
        ],
    }
)


@pytest.mark.parametrize(
    ("method", "path", "route"),
    [
        ("GET", "/api/v1/health", "exact"),
        ("GET", "/api/v1/health/", "prefix"),  # exact means exact
        ("POST", "/api/v1/orders", "post-only"),
        ("GET", "/api/v1/orders", "prefix"),  # method excluded: next route
        ("GET", "/api/v2/items/42", "regex"),
        ("GET", "/api/v2/items/42/x", "prefix"),  # regex must match the whole path
        ("GET", "/api/v3/items/42", "prefix"),
        ("GET", "/apix", "unmatched"),
        ("DELETE", "/", "unmatched"),
    ],
)
def test_first_matching_route_wins(method: str, path: str, route: str) -> None:
    assert RouteTable.from_settings(TABLE).match(method, path).name == route


def test_route_names_include_unmatched_for_metric_labels() -> None:
    names = RouteTable.from_settings(TABLE).names
    assert names == ("exact", "post-only", "regex", "prefix", "unmatched")


def test_bucket_is_stable_and_spread() -> None:
    assert bucket(b"r", "user-1") == bucket(b"r", "user-1")
    spread = {bucket(b"r", f"user-{i}") // 1000 for i in range(2000)}
    assert spread == set(range(BUCKETS // 1000))  # every tenth of the range is hit


@pytest.mark.parametrize(
    ("sticky", "headers", "query", "key"),
    [
        (StickyKey(header="X-User"), {"x-user": "u1"}, {}, "u1"),
        (StickyKey(query="uid"), {}, {"uid": "u2"}, "u2"),
        (StickyKey(cookie="sid"), {"Cookie": "a=1; sid=u3"}, {}, "u3"),
        (StickyKey(cookie="sid"), {"Cookie": "a=1"}, {}, None),
        (StickyKey(header="X-User"), {}, {}, None),
    ],
)
def test_sticky_key_comes_from_header_query_or_cookie(
    sticky: StickyKey, headers: dict[str, str], query: dict[str, str], key: str | None
) -> None:
    sampler = Sampler("r", 50, sticky)
    assert sampler.key(CIMultiDict(headers), query) == key


def test_sticky_sampling_is_monotonic_in_the_percentage() -> None:
    """A user mirrored at 5% is still mirrored at 10%, 50% and 100%."""
    sticky = StickyKey(header="u")
    users = [{"u": f"user-{i}"} for i in range(3000)]
    previous: set[int] = set()
    for percent in (0, 0.5, 5, 10, 50, 100):
        sampler = Sampler("route", percent, sticky)
        chosen = {i for i, h in enumerate(users) if sampler.sampled(h, {})}
        assert previous <= chosen
        assert abs(len(chosen) - percent * 30) <= max(60, percent * 3)
        previous = chosen


def test_without_a_key_sampling_is_random_at_the_percentage() -> None:
    sampler = Sampler("route", 25, None, rng=random.Random(1))
    hits = sum(sampler.sampled({}, {}) for _ in range(4000))
    assert 850 < hits < 1150


HEADERS: Any = CIMultiDict(
    [
        ("Host", "public.example"),
        ("Connection", "keep-alive, X-Hop"),
        ("X-Hop", "1"),
        ("Transfer-Encoding", "chunked"),
        ("Upgrade", "h2c"),
        ("Authorization", "Bearer t"),
        ("Accept", "a"),
        ("Accept", "b"),
    ]
)


def test_upstream_headers_drop_hops_keep_repeats_and_add_forwarding() -> None:
    out = to_upstream(HEADERS, client_ip="10.0.0.9", scheme="https", preserve_host=False)
    assert "Host" not in out  # the client session sets the backend's
    for hop in ("Connection", "X-Hop", "Transfer-Encoding", "Upgrade"):
        assert hop not in out
    assert out.getall("Accept") == ["a", "b"]
    assert out["X-Forwarded-For"] == "10.0.0.9"
    assert out["X-Forwarded-Proto"] == "https"
    assert out["X-Forwarded-Host"] == "public.example"
    kept = to_upstream(HEADERS, client_ip=None, scheme="http", preserve_host=True)
    assert kept["Host"] == "public.example"


def test_client_headers_drop_hops() -> None:
    out = to_client(CIMultiDict([("Set-Cookie", "a"), ("Set-Cookie", "b"), ("Keep-Alive", "5")]))
    assert out.getall("Set-Cookie") == ["a", "b"]
    assert "Keep-Alive" not in out


def test_shadow_headers_are_marked_stripped_and_extended() -> None:
    upstream = CIMultiDict(
        {"Authorization": "x", "Content-Length": "3", "X-A": "1", "Accept-Encoding": "gzip"}
    )
    out = to_shadow(upstream, add={"X-Env": "shadow"}, drop=["authorization"])
    assert dict(out) == {
        "X-A": "1",
        "X-Env": "shadow",
        "X-Shadow-Request": "1",
        "Accept-Encoding": "identity",  # read for usage and compared: no client needs gzip
    }


@pytest.mark.parametrize("percent", [0.5, 1, 5, 25, 50, 99])
def test_live_share_is_within_one_percent_of_target_over_100k_keys(percent: float) -> None:
    sampler = Sampler("live:route", 0.0, StickyKey(header="u"))
    chosen = sum(sampler.chosen(percent, {"u": f"user-{i}"}, {}) for i in range(100_000))
    assert abs(chosen / 1000 - percent) <= 1.0


@given(
    steps=st.lists(st.floats(0, 100), min_size=2, max_size=6).map(sorted),
    key=st.text(min_size=1, max_size=40),
)
def test_a_key_on_the_agent_stays_on_it_as_the_share_grows(steps: list[float], key: str) -> None:
    sampler = Sampler("live:route", 0.0, StickyKey(header="u"))
    on_agent = [sampler.chosen(p, {"u": key}, {}) for p in steps]
    assert on_agent == sorted(on_agent)  # False...False, True...True


def test_client_ip_can_be_the_sticky_key() -> None:
    sampler = Sampler("live:route", 0.0, StickyKey(client_ip=True))
    assert sampler.key({}, {}, "10.1.2.3") == "10.1.2.3"
    decisions = {sampler.chosen(50, {}, {}, "10.1.2.3") for _ in range(20)}
    assert len(decisions) == 1
