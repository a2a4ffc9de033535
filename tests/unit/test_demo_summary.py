"""Demo summary: PromQL-compatible quantiles, registry snapshots and the rendered text."""

from __future__ import annotations

import math
import re

import pytest
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

from proxy.demo import summary
from proxy.demo.summary import fmt_ms, quantile, render, snapshot
from proxy.demo.traffic import TrafficStats

INF = math.inf


@pytest.mark.parametrize(
    ("q", "buckets", "expected"),
    [
        # Linear interpolation inside the bucket holding the rank; lower bound 0 first.
        (0.5, [(1, 10), (2, 20), (INF, 20)], 1.0),
        (0.25, [(1, 10), (2, 20), (INF, 20)], 0.5),
        (0.75, [(1, 10), (2, 20), (INF, 20)], 1.5),
        (1.0, [(1, 10), (2, 20), (INF, 20)], 2.0),
        # Rank in the +Inf bucket: the highest finite bound.
        (0.9, [(1, 10), (2, 20), (INF, 30)], 2.0),
        # Empty buckets in front are skipped over.
        (0.5, [(0.1, 0), (0.2, 0), (0.4, 4), (INF, 4)], 0.3),
        # Unsorted input and duplicate bounds are sorted and merged.
        (0.5, [(INF, 10), (1, 4), (1, 4), (2, 10)], 0.625),
        # Non-monotonic counts are forced monotonic (max so far).
        (0.5, [(1, 6), (2, 4), (INF, 8)], 4 / 6),
        (0.9, [(1, 6), (2, 4), (INF, 8)], 2.0),
        # First bucket bound <= 0: that bound is the answer.
        (0.25, [(-1, 2), (1, 4), (INF, 4)], -1.0),
        (0.0, [(1, 5), (INF, 5)], 0.0),
        # Out-of-range q, like PromQL.
        (-0.1, [(1, 5), (INF, 5)], -INF),
        (1.1, [(1, 5), (INF, 5)], INF),
    ],
)
def test_quantile_table(q: float, buckets: list[tuple[float, float]], expected: float) -> None:
    assert quantile(q, buckets) == pytest.approx(expected)


@pytest.mark.parametrize(
    ("q", "buckets"),
    [
        (0.5, []),  # nothing at all
        (0.5, [(0.1, 0), (0.2, 0), (INF, 0)]),  # no observations
        (0.5, [(1, 5), (2, 5)]),  # no +Inf bucket
        (0.5, [(INF, 5)]),  # fewer than two buckets
        (math.nan, [(1, 5), (INF, 5)]),  # NaN q
        (0.0, [(1, 0), (2, 10), (INF, 10)]),  # PromQL computes 0/0 here
    ],
)
def test_quantile_is_none_where_promql_says_nan(
    q: float, buckets: list[tuple[float, float]]
) -> None:
    assert quantile(q, buckets) is None


def test_quantile_matches_prometheus_client_buckets() -> None:
    reg = CollectorRegistry()
    h = Histogram("h_seconds", "h", registry=reg, buckets=(0.01, 0.1, 1.0))
    for v in [0.005] * 30 + [0.05] * 60 + [0.5] * 9 + [5.0]:
        h.observe(v)
    buckets = [
        (float(s.labels["le"]), s.value)
        for m in reg.collect()
        for s in m.samples
        if s.name == "h_seconds_bucket"
    ]
    assert quantile(0.5, buckets) == pytest.approx(0.01 + 0.09 * 20 / 60)
    assert quantile(0.95, buckets) == pytest.approx(0.1 + 0.9 * 5 / 9)
    assert quantile(0.999, buckets) == 1.0


@pytest.mark.parametrize(
    ("seconds", "text"),
    [
        (None, "-"),
        (0.000296, "0.296 ms"),
        (0.005, "5.00 ms"),
        (0.0778, "77.8 ms"),
        (0.475, "475 ms"),
        (2.5, "2500 ms"),
        (INF, "inf"),
    ],
)
def test_fmt_ms(seconds: float | None, text: str) -> None:
    assert fmt_ms(seconds) == text


class ProxyMetrics:
    """The proxy's metric set, recreated here so the test does not depend on proxy/."""

    def __init__(self) -> None:
        self.registry = r = CollectorRegistry()
        self.requests = Counter(
            "shadow_proxy_requests", "live", ["route", "backend", "status_class"], registry=r
        )
        self.upstream = Histogram(
            "shadow_proxy_upstream_duration_seconds",
            "up",
            ["route", "backend", "mode"],
            registry=r,
            buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0),
        )
        self.overhead = Histogram(
            "shadow_proxy_overhead_seconds",
            "ov",
            ["route"],
            registry=r,
            buckets=(0.0001, 0.0005, 0.001, 0.01),
        )
        self.shadow = Counter(
            "shadow_proxy_shadow_requests", "sh", ["route", "outcome"], registry=r
        )
        self.comparisons = Counter(
            "shadow_proxy_comparisons", "cmp", ["route", "verdict"], registry=r
        )
        self.agreement = Gauge("shadow_proxy_agreement_ratio", "ag", ["route"], registry=r)
        self.fields = Counter("shadow_proxy_mismatch_fields", "mf", ["route", "path"], registry=r)
        Counter("unrelated_things", "ignored", registry=r).inc(7)

    def observe(self, hist: Histogram, labels: tuple[str, ...], value: float, n: int) -> None:
        for _ in range(n):
            hist.labels(*labels).observe(value)


@pytest.fixture
def metrics() -> ProxyMetrics:
    m = ProxyMetrics()
    m.requests.labels("classify", "legacy", "2xx").inc(100)
    m.requests.labels("classify", "legacy", "5xx").inc(2)
    m.requests.labels("tickets", "legacy", "2xx").inc(20)
    m.observe(m.upstream, ("classify", "legacy", "live"), 0.003, 50)
    m.observe(m.upstream, ("tickets", "legacy", "live"), 0.007, 50)
    m.observe(m.upstream, ("classify", "agent", "shadow"), 0.06, 90)
    m.observe(m.upstream, ("tickets", "agent", "shadow"), 0.3, 10)
    m.observe(m.overhead, ("classify",), 0.0002, 100)
    for outcome, n in dict(
        sent=100,
        completed=90,
        timeout=3,
        error=2,
        dropped_inflight=4,
        dropped_rate=1,
        skipped_sample=20,
    ).items():
        m.shadow.labels("classify", outcome).inc(n)
    for verdict, n in dict(match=81, mismatch=9, error=2, skipped=3).items():
        m.comparisons.labels("classify", verdict).inc(n)
    m.agreement.labels("classify").set(0.9)
    m.agreement.labels("tickets").set(1.0)
    for (route, path), n in {
        ("classify", "$.summary"): 9,
        ("classify", "$.category"): 5,
        ("classify", "$.queue"): 4,
        ("classify", "$.priority"): 3,
        ("tickets", "$.status"): 2,
        ("classify", "$.rare"): 1,
    }.items():
        m.fields.labels(route, path).inc(n)
    return m


def test_snapshot_reads_every_metric(metrics: ProxyMetrics) -> None:
    snap = snapshot(metrics.registry)
    assert snap.requests[("classify", "legacy", "5xx")] == 2
    assert snap.shadow[("classify", "dropped_inflight")] == 4
    assert snap.comparisons[("classify", "match")] == 81
    assert snap.mismatch_fields[("tickets", "$.status")] == 2
    assert snap.agreement == {"classify": 0.9, "tickets": 1.0}
    legacy = snap.upstream[("classify", "legacy", "live")]
    assert (legacy.count, legacy.buckets[0], legacy.buckets[-1]) == (50, (0.005, 50), (INF, 50))
    assert legacy.sum == pytest.approx(0.15)
    assert snap.overhead["classify"].count == 100
    assert snapshot(CollectorRegistry()) == summary.Snapshot()


def test_render_cumulative(metrics: ProxyMetrics) -> None:
    traffic = TrafficStats(sent=130, ok=120, client_errors=1, server_errors=2, failed=7, skipped=3)
    text = render(snapshot(metrics.registry), None, 10.0, traffic)
    lines = text.splitlines()
    assert "122 total (12.2/s)" in text
    assert "[2xx 120 5xx 2]" in text
    assert "served by legacy 122, agent 0" in text
    assert "sent 100 (10.0/s)  completed 90" in text
    assert (
        "drops        10  (dropped_inflight 4, dropped_rate 1, dropped_memory 0, "
        "timeout 3, error 2)" in text
    )
    assert "overall 90.0% (81 of 90)" in text
    assert "classify 90.0%  tickets 100.0%" in text
    assert "errors 2  skipped 3" in text
    top = lines[lines.index("top mismatching fields") + 1 :][:5]
    assert [line.split()[:3] for line in top] == [
        ["classify", "$.summary", "9"],
        ["classify", "$.category", "5"],
        ["classify", "$.queue", "4"],
        ["classify", "$.priority", "3"],
        ["tickets", "$.status", "2"],
    ]
    assert "$.rare" not in text
    # legacy live merges both routes: 50 at 3 ms, 50 at 7 ms.
    assert _row(lines, "legacy live") == ["5.00 ms", "9.90 ms"]
    # agent shadow: 90 in (50, 100] ms, 10 in (250, 500] ms.
    assert _row(lines, "agent shadow") == ["77.8 ms", "475 ms"]
    assert _row(lines, "proxy overhead") == ["0.300 ms", "0.496 ms"]
    assert "sent 130  ok 120  4xx 1  5xx 2  failed 7  skipped 3" in text


def test_render_interval_uses_deltas(metrics: ProxyMetrics) -> None:
    before = snapshot(metrics.registry)
    metrics.requests.labels("classify", "legacy", "2xx").inc(50)
    metrics.observe(metrics.upstream, ("classify", "agent", "shadow"), 0.02, 10)
    metrics.comparisons.labels("classify", "match").inc(10)
    metrics.comparisons.labels("classify", "mismatch").inc(10)
    metrics.fields.labels("classify", "$.summary").inc(10)
    metrics.shadow.labels("classify", "timeout").inc(3)
    text = render(snapshot(metrics.registry), before, 5.0, None)
    lines = text.splitlines()
    assert "172 total (10.0/s)" in text
    assert "overall 82.7% (91 of 110)  last 5.0 s: 50.0% (10 of 20)" in text
    assert "3 in last 5.0 s" in text
    assert "classify $.summary        19  (+10)" in text
    # Only the 10 new observations at 20 ms count for the interval.
    assert _row(lines, "agent shadow") == ["17.5 ms", "24.9 ms"]
    assert _row(lines, "legacy live") == ["-", "-"]
    assert "traffic" not in text


def test_histogram_since_handles_a_counter_reset() -> None:
    old = summary.Histogram(((1.0, 5), (INF, 8)), 8, 4.0)
    new = summary.Histogram(((1.0, 1), (INF, 2)), 2, 0.5)
    assert new.since(old) == new
    assert old.since(new) == summary.Histogram(((1.0, 4), (INF, 6)), 6, 3.5)


def test_render_empty_registry_shows_placeholders() -> None:
    text = render(snapshot(CollectorRegistry()), None, 0.0, None)
    assert "0 total (-/s)" in text
    assert "overall n/a" in text
    assert _row(text.splitlines(), "agent shadow") == ["-", "-"]


def _row(lines: list[str], label: str) -> list[str]:
    """The p50/p99 cells of a latency row, e.g. ['5.00 ms', '9.90 ms']."""
    (line,) = [ln for ln in lines if ln.startswith(f"  {label}")]
    return re.findall(r"-|[\d.]+ ms", line[len(label) + 2 :])
