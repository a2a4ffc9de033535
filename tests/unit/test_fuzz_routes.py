"""Fuzzing the route table: any list of route definitions builds a table or is a clean
ConfigError; a built table answers every method and path with a route, the first
that matches in config order, or ``unmatched``."""

from __future__ import annotations

import re
from typing import Any

from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from proxy.errors import ConfigError
from proxy.routes import RouteTable
from proxy.settings import UNMATCHED_ROUTE, settings_from

FUZZ = settings(database=None, deadline=None, suppress_health_check=[HealthCheck.too_slow])
BACKENDS = {"legacy": {"url": "http://127.0.0.1:8001"}, "agent": {"url": "http://127.0.0.1:8002"}}

PATHS = ["/", "/api", "/api/", "/api/v1", "/api/v1/items/42", "/a/b", "/ü/ñ", "/%2F", ""]
REGEXES = [r"/api/v[12]/items/\d+", r".*", r"/a|/b", r"(?i)/API/.*", r"/(x|y)+", r"", r"/\w+/?"]
BAD_REGEXES = ["(", "[a-", "a{99999999999}", "(?P<x>a)(?P<x>b)", "\\", "*", "(" * 1200]
METHODS = ["GET", "POST", "PUT", "DELETE", "HEAD", "OPTIONS", "patch", "M-SEARCH"]
ODD = {
    "name": ["r0", UNMATCHED_ROUTE, "", "x" * 65, "bad name", "-x", 7],
    "match": [{}, {"exact": "/", "prefix": "/"}, {"exact": 1}, {"regex": None}, "/", None],
    "methods": [[""], ["G ET"], ["GET\r\n"], "GET", [1]],
    "extra": [{"shadow": {"percent": 101}}, {"nope": 1}, {"compare": ["jsn"]}],
}

paths = st.sampled_from(PATHS) | st.text(max_size=10) | st.text(max_size=6).map("/".__add__)
methods = st.sampled_from([*METHODS, "get", "BREW", ""]) | st.text(max_size=5)


def _compiles(pattern: str) -> bool:
    try:
        re.compile(pattern)
    except (re.error, OverflowError, RecursionError):
        return False
    return True


regexes = st.sampled_from(REGEXES) | st.text(max_size=5).filter(_compiles)


@st.composite
def definitions(draw: st.DrawFn, valid: bool = True) -> dict[str, Any]:
    """One route as config spells it; unless ``valid``, perhaps broken in one place."""
    kind = draw(st.sampled_from(["exact", "prefix", "regex"]))
    if kind != "regex":
        match: dict[str, Any] = {kind: draw(paths)}
    else:
        match = {kind: draw(regexes if valid else regexes | st.sampled_from(BAD_REGEXES))}
    if draw(st.booleans()):
        match["methods"] = draw(st.lists(st.sampled_from(METHODS), max_size=3))
    route: dict[str, Any] = {"name": "r", "match": match}
    if not valid and draw(st.booleans()):
        where = draw(st.sampled_from(sorted(ODD)))
        odd = draw(st.sampled_from(ODD[where]))
        if where == "methods":
            match["methods"] = odd
        elif where == "extra":
            route.update(odd)
        else:
            route[where] = odd
    return route


def named(routes: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Unique names in order (r0, r1...), except where a broken one was drawn."""
    return [{**r, "name": f"r{i}"} if r["name"] == "r" else r for i, r in enumerate(routes)]


tables = st.lists(definitions(), max_size=5).map(named)
anything = st.lists(definitions(valid=False), max_size=5).map(named)


def expected(routes: list[dict[str, Any]], method: str, path: str) -> str:
    """The documented rule, spelled out: first route whose methods (if any) include the
    method and whose exact / prefix / whole-path regex fits the path; else unmatched."""
    for route in routes:
        match = route["match"]
        allowed = [m.upper() for m in match.get("methods", [])]
        if allowed and method not in allowed:
            continue
        if "exact" in match:
            hit = path == match["exact"]
        elif "prefix" in match:
            hit = path.startswith(match["prefix"])
        else:
            hit = re.fullmatch(match["regex"], path) is not None
        if hit:
            return str(route["name"])
    return UNMATCHED_ROUTE


def build(routes: list[dict[str, Any]]) -> RouteTable | ConfigError:
    try:
        loaded = settings_from({"backends": BACKENDS, "routes": routes})
    except ConfigError as exc:
        return exc
    return RouteTable.from_settings(loaded)


@settings(FUZZ, max_examples=200)
@given(anything)
@example([{"name": "r0", "match": {"regex": "a{99999999999}"}}])  # was an OverflowError
@example([{"name": "a", "match": {"prefix": "/"}}, {"name": "a", "match": {"exact": "/"}}])
def test_any_route_list_builds_a_table_or_is_a_config_error(routes: list[Any]) -> None:
    """Valid or not, route definitions give a table (named in config order, then
    unmatched) or a ConfigError whose every problem points into ``routes``."""
    table = build(routes)
    if isinstance(table, ConfigError):
        assert table.problems
        assert all(p.startswith(("routes.", "routes:")) for p in table.problems), table.problems
        assert all("\n" not in p for p in table.problems)
    else:
        assert table.names == (*(r["name"] for r in routes), UNMATCHED_ROUTE)


@settings(FUZZ, max_examples=150)
@given(tables, st.data())
def test_a_built_table_routes_every_request_by_first_match(
    routes: list[dict[str, Any]], data: st.DataObject
) -> None:
    """Any method and path (and paths made from the routes' own) get a route, never an
    exception: the first in config order that matches, or the unmatched fallback."""
    table = build(routes)
    assert isinstance(table, RouteTable), table  # well-formed definitions always load
    own = [
        v + s
        for r in routes
        for v in r["match"].values()
        if isinstance(v, str)
        for s in ("", "/", "x")
    ]
    probes = st.tuples(methods, paths | st.sampled_from(own or ["/"]))
    for method, path in data.draw(st.lists(probes, min_size=1, max_size=20)):
        route = table.match(method, path)
        assert route.name == expected(routes, method, path), (method, path)
        assert route is table.fallback or route in table.routes
    assert table.fallback.name == UNMATCHED_ROUTE and not table.fallback.shadow


@settings(FUZZ, max_examples=100)
@given(paths, st.text(min_size=1, max_size=5), methods)
def test_exact_means_exact_and_the_first_route_wins(base: str, tail: str, method: str) -> None:
    """An exact route answers its own path only; a prefix listed before it takes
    that path first; a request no route claims falls back to unmatched."""
    exact = build([{"name": "exact", "match": {"exact": base}}])
    assert isinstance(exact, RouteTable)
    assert exact.match(method, base).name == "exact"
    assert exact.match(method, base + tail) is exact.fallback
    both = build(
        [{"name": "prefix", "match": {"prefix": base}}, {"name": "exact", "match": {"exact": base}}]
    )
    assert isinstance(both, RouteTable)
    assert both.match(method, base).name == both.match(method, base + tail).name == "prefix"
