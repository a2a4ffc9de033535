"""Fleet-wide gate statistics from PromQL: the pure parsing and conversion as
tables, measure() against a real Prometheus scraping two fake replicas, and
every way a query can fail against fake Prometheus servers."""

from __future__ import annotations

import asyncio
import math
import re
import time
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web
from conftest import ProxyFactory, metric_value
from fakes import Fake, Reply, dead_url
from prom import start_prometheus
from prometheus_client import CollectorRegistry

from proxy.analysis import (
    COUNTS,
    STATISTICS,
    LocalAnalysis,
    PrometheusAnalysis,
    QueryError,
    count,
    duration,
    error_text,
    latency,
    result_value,
    to_stats,
)
from proxy.app import CORE
from proxy.controller import Controller
from proxy.errors import AnalysisError
from proxy.fleetconfig import DEFAULT_QUERIES, PrometheusSettings, Queries, render
from proxy.gates import WindowStats
from proxy.metrics import Metrics
from proxy.routing import RouteRuntime, Routing
from proxy.settings import settings_from
from proxy.types import Mode


def runtime(name: str = "api", window: str = "300s") -> RouteRuntime:
    settings = settings_from(
        {
            "backends": {"legacy": {"url": "http://l"}, "agent": {"url": "http://a"}},
            "routes": [
                {"name": name, "match": {"prefix": "/"}, "rollout": {"window": window}},
            ],
        }
    )
    rt = Routing(settings).runtime(name)
    assert rt is not None
    return rt


def vector(*values: str) -> dict[str, Any]:
    result = [{"metric": {"pod": str(i)}, "value": [1.0, v]} for i, v in enumerate(values)]
    return {"status": "success", "data": {"resultType": "vector", "result": result}}


# --- pure tables -------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("seconds", "text"),
    [(95.0, "95s"), (30.0, "30s"), (95.5, "95500ms"), (0.0001, "1ms"), (60.0004, "60s")],
)
def test_a_window_is_a_duration_prometheus_accepts(seconds: float, text: str) -> None:
    assert duration(seconds) == text


@pytest.mark.parametrize(
    ("body", "expected"),
    [
        (vector(), None),
        (vector("12.5"), 12.5),
        (vector("0"), 0.0),
        ({"status": "success", "data": {"resultType": "scalar", "result": [1.0, "3"]}}, 3.0),
    ],
)
def test_one_number_or_none_from_an_answer(body: Any, expected: float | None) -> None:
    assert result_value(body) == expected


def test_nan_and_inf_pass_through_the_parser_for_the_conversion_to_judge() -> None:
    assert math.isnan(result_value(vector("NaN")) or 0.0)
    assert result_value(vector("+Inf")) == math.inf


@pytest.mark.parametrize(
    ("body", "says"),
    [
        (
            vector("1", "2"),
            '2 series, expected one (aggregate the query, e.g. sum(...)): {"pod": "0"}',
        ),
        ({"status": "success", "data": {"resultType": "matrix", "result": []}}, "'matrix'"),
        ({"status": "success", "data": {"resultType": "string", "result": [1, "x"]}}, "'string'"),
        ({"status": "error", "error": "boom"}, "not a successful Prometheus answer"),
        ([1, 2], "not a successful Prometheus answer: [1, 2]"),
        ({"status": "success"}, "answer without data"),
        (vector("twelve"), "'twelve' is not a number"),
        ({"status": "success", "data": {"resultType": "vector", "result": [{}]}}, "malformed"),
    ],
)
def test_anything_but_one_number_is_refused_with_what_came_back(body: Any, says: str) -> None:
    with pytest.raises(ValueError, match=re.escape(says)):
        result_value(body)


@pytest.mark.parametrize(
    ("status", "body", "expected"),
    [
        (
            400,
            '{"status":"error","errorType":"bad_data","error":"1:5: parse error: unexpected"}',
            "HTTP 400: bad_data: 1:5: parse error: unexpected",
        ),
        (422, '{"status":"error","error":"no errorType"}', "HTTP 422: no errorType"),
        (500, "internal\n  oops", "HTTP 500: internal oops"),
        (502, "x" * 500, "HTTP 502: " + "x" * 197 + "..."),
    ],
)
def test_an_http_error_says_status_and_prometheus_own_words(
    status: int, body: str, expected: str
) -> None:
    assert error_text(status, body) == expected


@pytest.mark.parametrize(
    ("value", "expected"),
    [(None, 0), (0.0, 0), (9.4, 9), (9.5, 10), (10.45, 10), (0.2, 0), (-0.3, 0)],
)
def test_a_count_is_increase_rounded_and_no_series_is_zero(
    value: float | None, expected: int
) -> None:
    assert count(value) == expected


@pytest.mark.parametrize("value", [math.nan, math.inf, -math.inf, -1.0])
def test_a_count_that_is_not_a_finite_number_of_zero_or_more_is_refused(value: float) -> None:
    with pytest.raises(ValueError, match="count is"):
        count(value)


@pytest.mark.parametrize(
    ("value", "expected"), [(None, None), (math.nan, None), (0.0, 0.0), (0.475, 0.475)]
)
def test_a_p95_without_observations_is_no_data(value: float | None, expected: float | None) -> None:
    assert latency(value) == expected


@pytest.mark.parametrize("value", [math.inf, -math.inf, -0.1])
def test_a_p95_that_is_not_a_finite_latency_is_refused(value: float) -> None:
    with pytest.raises(ValueError, match="p95 is"):
        latency(value)


def test_parts_extrapolated_past_their_whole_are_clamped_to_it() -> None:
    values = {"samples": 9.6, "matches": 10.4, "agent_calls": 3.0, "agent_errors": 3.6}
    values |= {"agent_served": 2.0, "fallbacks": 2.7, "agent_p95": 0.3, "legacy_p95": math.nan}
    assert to_stats(values, DEFAULT_QUERIES) == WindowStats(10, 10, 3, 3, 2, 2, 0.3, None)


@pytest.mark.parametrize(
    ("part", "whole"),
    [("matches", "samples"), ("agent_errors", "agent_calls"), ("fallbacks", "agent_served")],
)
def test_a_part_that_selects_nothing_under_a_whole_with_data_is_an_error_not_a_zero(
    part: str, whole: str
) -> None:
    """Read as zero, a mistyped errors query would pass the error-rate gate unseen."""
    values: dict[str, float | None] = {name: 4.0 for name in COUNTS}
    values[part] = None
    with pytest.raises(QueryError, match=f"^{part}: no series, while {whole} is 4"):
        to_stats(values, DEFAULT_QUERIES)
    values[whole] = None  # no whole either: simply no data
    assert getattr(to_stats(values, DEFAULT_QUERIES), whole) == 0


def test_a_bad_number_names_its_statistic_and_query() -> None:
    with pytest.raises(QueryError) as raised:
        to_stats({"agent_errors": -4.0}, {"agent_errors": "sum(errors)"})
    assert str(raised.value) == "agent_errors: count is -4, below zero (query: sum(errors))"
    assert (raised.value.statistic, raised.value.query) == ("agent_errors", "sum(errors)")
    assert isinstance(raised.value, AnalysisError)  # what the controller catches


async def test_local_analysis_reads_the_routes_own_window() -> None:
    rt = runtime()
    rt.window.comparison(True, 10.0)
    rt.window.comparison(False, 20.0)
    rt.agent_result(False, None, 20.5, Mode.SHADOW, Metrics(CollectorRegistry(), ["api"]))
    stats = await LocalAnalysis().measure(rt, 15.0, 21.0)
    assert stats == WindowStats(samples=1, matches=0, agent_calls=1, agent_errors=1)


async def test_less_than_min_window_of_evidence_is_no_data_without_asking() -> None:
    """Nothing listens at the URL: a query would fail, so none was made."""
    settings = PrometheusSettings(url=dead_url(), min_window=30.0)
    async with PrometheusAnalysis(settings) as analysis:
        assert await analysis.measure(runtime(), 100.0, 129.0) == WindowStats()
        assert await analysis.measure(runtime(window="20s"), 0.0, 500.0) == WindowStats()


# --- a real Prometheus scraping two fake replicas ------------------------------------------

BUCKETS = ("0.05", "0.1", "0.25", "0.5", "1.0", "+Inf")


@dataclass
class Replica:
    """Exposition text under our control: counters set between scrapes."""

    counters: dict[tuple[str, tuple[tuple[str, str], ...]], float] = field(default_factory=dict)
    url: str = ""

    def set(self, name: str, value: float, **labels: str) -> None:
        self.counters[(name, tuple(sorted(labels.items())))] = value

    def observe(self, n: int, upper: str, **labels: str) -> None:
        """``n`` observations in the bucket ending at ``upper`` (cumulative le buckets)."""
        name = "shadow_proxy_upstream_duration_seconds_bucket"
        for le in BUCKETS:
            key = (name, tuple(sorted({**labels, "le": le}.items())))
            if BUCKETS.index(le) >= BUCKETS.index(upper):
                self.counters[key] = self.counters.get(key, 0.0) + n
            else:
                self.counters.setdefault(key, 0.0)

    async def metrics(self, request: web.Request) -> web.Response:
        lines = []
        for (name, labels), value in sorted(self.counters.items()):
            text = ",".join(f'{k}="{v}"' for k, v in labels)
            lines.append(f"{name}{{{text}}} {value:g}")
        return web.Response(text="\n".join(lines) + "\n")


async def start_replica(aiohttp_server: Any) -> Replica:
    replica = Replica()
    app = web.Application()
    app.router.add_get("/metrics", replica.metrics)
    server = await aiohttp_server(app, host="127.0.0.1")
    replica.url = f"127.0.0.1:{server.port}"
    return replica


def prime(replica: Replica, route: str) -> None:
    """Every series at zero, as Metrics primes them."""
    for verdict in ("match", "mismatch", "error"):
        replica.set("shadow_proxy_comparisons_total", 0, route=route, verdict=verdict)
    for mode in ("live", "shadow"):
        for result in ("ok", "error"):
            replica.set("shadow_proxy_agent_calls_total", 0, route=route, mode=mode, result=result)
    for result in ("agent", "fallback"):
        replica.set("shadow_proxy_agent_served_total", 0, route=route, result=result)
    for backend, mode in (("agent", "live"), ("agent", "shadow"), ("legacy", "live")):
        replica.observe(0, "+Inf", route=route, backend=backend, mode=mode)


async def test_measure_sums_the_fleet_from_a_real_prometheus(
    aiohttp_server: Any, tmp_path: Path
) -> None:
    """Two replicas' counters add up per route; histograms give the p95; a route
    with series but no traffic, and one with no series at all, are no data."""
    one, two = await start_replica(aiohttp_server), await start_replica(aiohttp_server)
    for replica in (one, two):
        prime(replica, "api")
        prime(replica, "quiet")
    prime(one, "other")
    prom = await start_prometheus(tmp_path, [one.url, two.url], scrape_interval="200ms")
    try:
        await prom.wait_scraped(more=3)
        comparisons = "shadow_proxy_comparisons_total"
        one.set(comparisons, 4, route="api", verdict="match")
        one.set(comparisons, 1, route="api", verdict="mismatch")
        one.set(comparisons, 3, route="api", verdict="error")  # not a sample
        two.set(comparisons, 2, route="api", verdict="match")
        two.set(comparisons, 1, route="api", verdict="mismatch")
        one.set(comparisons, 7, route="other", verdict="match")  # another route
        calls = "shadow_proxy_agent_calls_total"
        one.set(calls, 3, route="api", mode="shadow", result="ok")
        one.set(calls, 1, route="api", mode="shadow", result="error")
        two.set(calls, 1, route="api", mode="live", result="ok")
        two.set(calls, 1, route="api", mode="live", result="error")
        served = "shadow_proxy_agent_served_total"
        one.set(served, 2, route="api", result="agent")
        one.set(served, 1, route="api", result="fallback")
        two.set(served, 1, route="api", result="fallback")
        # agent: 10 fast on one, 10 in (0.25, 0.5] on two: rank 19 of 20 is 0.25 + 0.25 * 9/10
        # (give or take the replicas' own extrapolations, a few percent apart)
        one.observe(10, "0.05", route="api", backend="agent", mode="shadow")
        two.observe(10, "0.5", route="api", backend="agent", mode="live")
        # legacy: 20 in (0.05, 0.1]: 0.05 + 0.05 * 19/20
        one.observe(20, "0.1", route="api", backend="legacy", mode="live")
        # increase() extrapolates to the window's end by at most 1.1 scrape intervals over
        # the time sampled: after 5 s of 200 ms scrapes that is +4.4%, so 8 reads below 8.5.
        await prom.wait_scraped(more=25)
        settings = PrometheusSettings(url=prom.url, min_window=30.0)
        async with PrometheusAnalysis(settings) as analysis:
            now = time.monotonic()
            stats = await analysis.measure(runtime("api"), now - 60, now)
            quiet = await analysis.measure(runtime("quiet"), now - 60, now)
            absent = await analysis.measure(runtime("absent"), now - 60, now)
        only_two = PrometheusSettings(
            url=prom.url, min_window=30.0, selector=f'instance="{two.url}"'
        )
        async with PrometheusAnalysis(only_two) as analysis:
            two_alone = await analysis.measure(runtime("api"), now - 60, now)
        assert (stats.samples, stats.matches) == (8, 6)
        assert (two_alone.samples, two_alone.matches, two_alone.agent_calls) == (3, 2, 2)
        assert (stats.agent_calls, stats.agent_errors) == (6, 2)
        assert (stats.agent_served, stats.fallbacks) == (4, 2)
        assert stats.agent_p95 == pytest.approx(0.475, abs=0.01)
        assert stats.legacy_p95 == pytest.approx(0.0975)  # one replica: its factor cancels
        assert quiet == WindowStats()
        assert absent == WindowStats()
        # "quiet" took the NaN way to no data, "absent" the empty vector's
        p95 = render(DEFAULT_QUERIES["agent_p95"], window="60s", route="quiet", selector="")
        assert math.isnan(await prom.value(p95) or 0.0)
        assert await prom.value(p95.replace("quiet", "absent")) is None
    finally:
        prom.stop()


async def test_each_default_query_is_valid_promql_for_a_real_prometheus(tmp_path: Path) -> None:
    prom = await start_prometheus(tmp_path, [])
    try:
        refused = {}
        for template in DEFAULT_QUERIES.values():
            for window, selector in (("30s", ""), ("95500ms", ',job="a",namespace=~"s.*"')):
                query = render(template, route="api", window=window, selector=selector)
                answer = await prom.query(query)
                if answer["status"] != "success":
                    refused[query] = answer
        assert refused == {}
        assert set(DEFAULT_QUERIES) == set(STATISTICS)
    finally:
        prom.stop()


async def test_a_template_prometheus_cannot_parse_fails_with_its_own_words(tmp_path: Path) -> None:
    prom = await start_prometheus(tmp_path, [])
    broken = DEFAULT_QUERIES | {
        "legacy_p95": "histogram_quantile(0.95, sum by (le) (rate(x[{{ window }}]))"
    }
    settings = PrometheusSettings(url=prom.url, min_window=10.0, queries=Queries(**broken))
    try:
        async with PrometheusAnalysis(settings) as analysis:
            with pytest.raises(QueryError) as raised:
                await analysis.measure(runtime(), 0.0, 45.0)
    finally:
        prom.stop()
    assert raised.value.statistic == "legacy_p95"
    assert raised.value.query == broken["legacy_p95"].replace("{{ window }}", "45s")
    assert raised.value.cause.startswith("HTTP 400: bad_data: ")
    assert "parse error" in raised.value.cause


# --- failures, from fake Prometheus servers -------------------------------------------------

# Each statistic's query names it, so a fake knows which one it answers.
QUERIES = {name: f'{name}{{route="{{{{ route }}}}"}}[{{{{ window }}}}]' for name in STATISTICS}
GOOD = {name: "5" if name in COUNTS else "0.2" for name in STATISTICS}


@dataclass
class FakePrometheus:
    """Answers each statistic with ``answers[statistic]``: a value string, or a
    callable returning a response; records every query's parameters."""

    answers: dict[str, Any] = field(default_factory=dict)
    seen: list[dict[str, str]] = field(default_factory=list)
    release: asyncio.Event = field(default_factory=asyncio.Event)
    url: str = ""

    async def query(self, request: web.Request) -> web.StreamResponse:
        self.seen.append(dict(request.query))
        statistic = request.query["query"].split("{")[0]
        answer = self.answers.get(statistic, GOOD[statistic])
        if callable(answer):
            response: web.StreamResponse = await answer(self)
            return response
        return web.json_response(vector(answer) if answer != "empty" else vector())


async def start_fake_prometheus(aiohttp_server: Any, **answers: Any) -> FakePrometheus:
    fake = FakePrometheus(answers)
    app = web.Application()
    app.router.add_get("/api/v1/query", fake.query)
    server = await aiohttp_server(app, host="127.0.0.1")
    fake.url = str(server.make_url("")).rstrip("/")
    return fake


def fake_settings(url: str, timeout: float = 2.0) -> PrometheusSettings:
    return PrometheusSettings(url=url, timeout=timeout, min_window=10.0, queries=Queries(**QUERIES))


async def measure(url: str, query_timeout: float = 2.0) -> WindowStats:
    settings = fake_settings(url, query_timeout)
    async with PrometheusAnalysis(settings, clock=lambda: 1700000000.25) as a:
        return await a.measure(runtime("api"), 1000.0, 1042.5)


async def test_templates_get_route_window_and_one_instant(aiohttp_server: Any) -> None:
    fake = await start_fake_prometheus(aiohttp_server, matches="7", agent_p95="empty")
    stats = await measure(fake.url)
    assert stats == WindowStats(5, 5, 5, 5, 5, 5, None, 0.2)  # 7 matches clamped to 5 samples
    assert sorted(q["query"] for q in fake.seen) == sorted(
        f'{name}{{route="api"}}[42500ms]' for name in STATISTICS
    )
    assert {(q["time"], q["timeout"]) for q in fake.seen} == {("1700000000.250", "2")}


def status(code: int, body: str) -> Any:
    async def answer(fake: FakePrometheus) -> web.Response:
        return web.Response(status=code, text=body, content_type="application/json")

    return answer


def prometheus_error(kind: str, error: str) -> str:
    return f'{{"status":"error","errorType":"{kind}","error":"{error}"}}'


async def slow(fake: FakePrometheus) -> web.Response:
    await asyncio.wait_for(fake.release.wait(), timeout=5)
    return web.json_response(vector("1"))


@pytest.mark.parametrize(
    ("answers", "says"),
    [
        (
            {"samples": (400, prometheus_error("bad_data", "1:9: parse error: unexpected ]"))},
            "samples: HTTP 400: bad_data: 1:9: parse error: unexpected ]"
            ' (query: samples{route="api"}[42500ms])',
        ),
        (
            {name: (422, prometheus_error("execution", "too many samples")) for name in STATISTICS},
            "samples: HTTP 422: execution: too many samples; 7 more of the 8 queries failed too",
        ),
        ({"fallbacks": (500, "internal oops")}, "fallbacks: HTTP 500: internal oops (query:"),
        ({"legacy_p95": (200, "<html>hello")}, "legacy_p95: the answer is not JSON: <html>hello"),
        ({"legacy_p95": (200, "")}, "legacy_p95: the answer is not JSON: (empty body)"),
        ({"agent_calls": "two series"}, "agent_calls: 2 series, expected one (aggregate"),
        ({"matches": "NaN"}, "matches: count is nan, not a finite number"),
        ({"agent_served": "+Inf"}, "agent_served: count is inf, not a finite number"),
        ({"agent_p95": "+Inf"}, "agent_p95: p95 is inf, not a finite latency"),
        ({"legacy_p95": "-1"}, "legacy_p95: p95 is -1, not a finite latency"),
    ],
)
async def test_a_failed_query_is_an_analysis_error_naming_statistic_and_cause(
    aiohttp_server: Any, answers: dict[str, Any], says: str
) -> None:
    prepared: dict[str, Any] = {}
    for name, answer in answers.items():
        if isinstance(answer, tuple):
            prepared[name] = status(*answer)
        elif answer == "two series":
            prepared[name] = lambda fake: _json(vector("1", "2"))
        else:
            prepared[name] = answer
    fake = await start_fake_prometheus(aiohttp_server, **prepared)
    with pytest.raises(AnalysisError) as raised:
        await measure(fake.url)
    assert says in str(raised.value)


async def _json(body: Any) -> web.Response:
    return web.json_response(body)


async def test_a_slow_prometheus_is_a_timeout_naming_the_statistic(aiohttp_server: Any) -> None:
    fake = await start_fake_prometheus(aiohttp_server, agent_errors=slow)
    try:
        with pytest.raises(AnalysisError) as raised:
            await measure(fake.url, query_timeout=0.3)
    finally:
        fake.release.set()
    assert str(raised.value).startswith(f"agent_errors: no answer from {fake.url} within 0.3s")


async def test_no_prometheus_is_connection_refused_for_every_query() -> None:
    url = dead_url()
    with pytest.raises(AnalysisError) as raised:
        await measure(url)
    message = str(raised.value)
    assert message.startswith(f"samples: cannot connect to {url}: Connection refused; 7 more")


# --- the counters the default queries read mean what the local window means ---------------


async def test_the_counters_behind_the_default_queries_agree_with_the_local_window(
    make_proxy: ProxyFactory, legacy: Fake, agent: Fake
) -> None:
    """Shadow and live calls, buffered and streamed, ok, 5xx, dropped, mismatching,
    bodies too large to hold: each route's window and its counters tell one story."""

    def route(name: str, prefix: str, mode: str) -> dict[str, Any]:
        return {
            "name": name,
            "match": {"prefix": prefix},
            "side_effect_free": True,
            "shadow": {"enabled": True},
            "rollout": {"mode": "manual", "percent": 50},
            "fallback": {"mode": mode, "max_buffer": "1KiB"},
        }

    proxy = await make_proxy(
        backends={"legacy": {"url": legacy.url}, "agent": {"url": agent.url}},
        routes=[route("api", "/api/", "buffered"), route("s", "/s/", "streamed")],
    )
    pattern = [Reply(), Reply(status=500), Reply(body=b'{"ok": false}'), Reply(drop=True)]
    agent.script = pattern * 40
    for i in range(60):
        for prefix in ("/api/", "/s/"):
            (await proxy.client.get(f"{prefix}{i}")).release()
        if i % 10 == 0:  # agent chosen: too large to hold, legacy streams it
            (await proxy.client.post("/api/big", data=b"x" * 4096)).release()
    await proxy.settle()
    routing = proxy.client.app[CORE].routing
    for name in ("api", "s"):
        local = routing.runtimes[name].window.stats(time.monotonic() + 1)

        def total(metric: str, **labels: str) -> int:
            return round(proxy.total(f"shadow_proxy_{metric}_total", route=name, **labels))  # noqa: B023

        counted = WindowStats(
            samples=total("comparisons", verdict="match")
            + total("comparisons", verdict="mismatch"),
            matches=total("comparisons", verdict="match"),
            agent_calls=total("agent_calls"),
            agent_errors=total("agent_calls", result="error"),
            agent_served=total("agent_served"),
            fallbacks=total("agent_served", result="fallback"),
        )
        assert counted == replace(local, agent_p95=None, legacy_p95=None), name
        assert local.matches < local.samples, name
        assert 0 < local.agent_errors < local.agent_calls, name
        assert 0 < local.fallbacks < local.agent_served, name
        assert total("agent_calls", mode="shadow") > 0 < total("agent_calls", mode="live"), name
    assert proxy.total("shadow_proxy_fallbacks_total", route="api", reason="too_large") > 0


async def test_query_errors_hold_the_rollout_until_enough_in_a_row_count_as_one_failure(
    aiohttp_server: Any,
) -> None:
    """Like Argo's consecutiveErrorLimit: a flaky Prometheus holds the rollout, a
    dead one cannot keep it in place forever, and one answer restarts the count."""
    down = {"on": True}

    async def samples(fake: FakePrometheus) -> web.Response:
        if down["on"]:
            return web.Response(status=503, text="TSDB not ready")
        return web.json_response(vector())  # up, but no data yet: the rollout holds

    fake = await start_fake_prometheus(aiohttp_server, samples=samples)
    update = {"max_consecutive_errors": 3, "min_window": 0.5}
    settings = fake_settings(fake.url).model_copy(update=update)
    rollout = {"percent": 5, "interval": "1s", "gates": {"min_samples": 10}}
    config = {
        "backends": {"legacy": {"url": "http://l"}, "agent": {"url": "http://a"}},
        "routes": [{"name": "api", "match": {"prefix": "/"}, "rollout": rollout}],
    }
    routing = Routing(settings_from(config), now=0.0)
    registry = CollectorRegistry()
    async with PrometheusAnalysis(settings) as analysis:
        drive = Controller(lambda: routing, Metrics(registry, ["api"]), None, analysis=analysis)
        actions = []
        for t in range(20, 27):
            down["on"] = t != 23
            [decision] = await drive.tick(float(t))
            actions.append((decision.action, routing.runtimes["api"].state.consecutive_failures))
    assert actions == [
        ("hold", 0),  # 1 of 3 in a row
        ("hold", 0),  # 2 of 3
        ("fail", 1),  # 3 of 3: one failed measurement
        ("hold", 1),  # an answer (no data): the count starts again
        ("hold", 1),
        ("hold", 1),
        ("fail", 2),
    ]
    last = drive.last["api"]
    assert "measurement failed: 3 queries in a row failed, the last: samples:" in last.reason
    assert "TSDB not ready" in last.reason
    assert metric_value(registry, "shadow_proxy_analysis_errors_total", route="api") == 6
