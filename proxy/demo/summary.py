"""The demo's live terminal summary, computed from the proxy's own Prometheus registry.

Reading the registry (rather than keeping separate demo counters) means the demo
shows exactly what an operator's dashboard would show. Everything here is pure:
`snapshot()` copies the registry into plain frozen data, `render()` turns one or two
snapshots into text, and `quantile()` reproduces PromQL's `histogram_quantile` so the
latencies printed match the ones Grafana would draw from the same buckets.
"""

from __future__ import annotations

import itertools
import math
from collections import defaultdict
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Final, TypeVar

from prometheus_client import CollectorRegistry

from proxy.demo.traffic import TrafficStats

REQUESTS: Final = "shadow_proxy_requests_total"
UPSTREAM: Final = "shadow_proxy_upstream_duration_seconds"
OVERHEAD: Final = "shadow_proxy_overhead_seconds"
SHADOW: Final = "shadow_proxy_shadow_requests_total"
COMPARISONS: Final = "shadow_proxy_comparisons_total"
AGREEMENT: Final = "shadow_proxy_agreement_ratio"
MISMATCH_FIELDS: Final = "shadow_proxy_mismatch_fields_total"
DROP_OUTCOMES: Final = ("dropped_inflight", "dropped_rate", "dropped_memory", "timeout", "error")
_PRECISION_TOLERANCE: Final = 1e-12  # same as Prometheus' correctPrecisionErrors

K = TypeVar("K")
T = TypeVar("T", bound=tuple[str, ...])


@dataclass(frozen=True)
class Histogram:
    """Cumulative buckets `(upper bound, count of observations <= bound)`, sorted."""

    buckets: tuple[tuple[float, float], ...] = ()
    count: float = 0.0
    sum: float = 0.0

    def __add__(self, other: Histogram) -> Histogram:
        """Merge series of one metric, like `sum by (le)` in PromQL."""
        merged: dict[float, float] = defaultdict(float)
        for le, c in (*self.buckets, *other.buckets):
            merged[le] += c
        return Histogram(
            tuple(sorted(merged.items())), self.count + other.count, self.sum + other.sum
        )

    def since(self, before: Histogram | None) -> Histogram:
        """Observations made after `before`; a counter reset means everything is new."""
        if before is None:
            return self
        old = dict(before.buckets)
        deltas = tuple((le, c - old.get(le, 0.0)) for le, c in self.buckets)
        if self.count < before.count or any(d < 0 for _, d in deltas):
            return self
        return Histogram(deltas, self.count - before.count, self.sum - before.sum)


@dataclass(frozen=True)
class Snapshot:
    """The proxy's metrics at one instant, keyed by label values in the listed order."""

    requests: Mapping[tuple[str, str, str], float] = field(default_factory=dict)
    """(route, backend, status_class) -> live requests answered."""
    shadow: Mapping[tuple[str, str], float] = field(default_factory=dict)
    """(route, outcome) -> shadow requests."""
    comparisons: Mapping[tuple[str, str], float] = field(default_factory=dict)
    """(route, verdict) -> comparisons."""
    mismatch_fields: Mapping[tuple[str, str], float] = field(default_factory=dict)
    """(route, path) -> mismatches seen at that field path."""
    agreement: Mapping[str, float] = field(default_factory=dict)
    """route -> rolling agreement ratio gauge."""
    upstream: Mapping[tuple[str, str, str], Histogram] = field(default_factory=dict)
    """(route, backend, mode) -> upstream duration in seconds."""
    overhead: Mapping[str, Histogram] = field(default_factory=dict)
    """route -> time spent inside the proxy in seconds."""


def _labels(labels: Mapping[str, str], *names: str) -> tuple[str, ...]:
    return tuple(labels.get(n, "") for n in names)


def snapshot(registry: CollectorRegistry) -> Snapshot:
    """Copy the shadow-proxy metrics out of `registry`; unknown metrics are ignored."""
    counters: dict[str, dict[tuple[str, ...], float]] = defaultdict(dict)
    agreement: dict[str, float] = {}
    keys = {
        REQUESTS: ("route", "backend", "status_class"),
        SHADOW: ("route", "outcome"),
        COMPARISONS: ("route", "verdict"),
        MISMATCH_FIELDS: ("route", "path"),
    }
    hist_keys = {UPSTREAM: ("route", "backend", "mode"), OVERHEAD: ("route",)}
    buckets: dict[tuple[str, tuple[str, ...]], dict[float, float]] = defaultdict(dict)
    totals: dict[tuple[str, tuple[str, ...]], list[float]] = defaultdict(lambda: [0.0, 0.0])
    for metric in registry.collect():
        for s in metric.samples:
            if s.name in keys:
                counters[s.name][_labels(s.labels, *keys[s.name])] = s.value
            elif s.name == AGREEMENT:
                agreement[s.labels.get("route", "")] = s.value
            elif s.name.endswith(("_bucket", "_count", "_sum")):
                base, _, suffix = s.name.rpartition("_")
                if base not in hist_keys:
                    continue
                key = (base, _labels(s.labels, *hist_keys[base]))
                if suffix == "bucket":
                    buckets[key][float(s.labels["le"])] = s.value
                else:
                    totals[key][0 if suffix == "count" else 1] = s.value
    hists = {k: Histogram(tuple(sorted(b.items())), *totals[k]) for k, b in buckets.items()}
    return Snapshot(
        requests={(k[0], k[1], k[2]): v for k, v in counters[REQUESTS].items()},
        shadow={(k[0], k[1]): v for k, v in counters[SHADOW].items()},
        comparisons={(k[0], k[1]): v for k, v in counters[COMPARISONS].items()},
        mismatch_fields={(k[0], k[1]): v for k, v in counters[MISMATCH_FIELDS].items()},
        agreement=agreement,
        upstream={(k[0], k[1], k[2]): h for (name, k), h in hists.items() if name == UPSTREAM},
        overhead={k[0]: h for (name, k), h in hists.items() if name == OVERHEAD},
    )


def quantile(q: float, buckets: Iterable[tuple[float, float]]) -> float | None:
    """PromQL `histogram_quantile(q, ...)` over cumulative `(le, count)` buckets.

    Same rules as Prometheus: sort and merge equal bounds, smooth float noise, force
    monotonic counts, interpolate linearly inside the bucket holding the rank (lower
    bound 0 for the first bucket), and answer the highest finite bound when the rank
    falls into +Inf. q < 0 gives -inf and q > 1 gives +inf. Where PromQL answers NaN
    (no observations, fewer than two buckets, no +Inf bucket, q is NaN) this returns None.
    """
    if math.isnan(q):
        return None
    if q < 0:
        return -math.inf
    if q > 1:
        return math.inf
    bs: list[list[float]] = []
    for le, c in sorted(buckets, key=lambda b: b[0]):
        if bs and bs[-1][0] == le:
            bs[-1][1] += c
        else:
            bs.append([le, c])
    if not bs or bs[-1][0] != math.inf:
        return None
    prev = bs[0][1]
    for b in bs[1:]:
        delta = abs(b[1] - prev)
        if delta == 0:
            continue
        if b[1] != 0 and delta / b[1] <= _PRECISION_TOLERANCE:
            b[1] = prev
        else:
            prev = b[1]
    for lower, upper in itertools.pairwise(bs):
        upper[1] = max(upper[1], lower[1])
    if len(bs) < 2 or bs[-1][1] == 0:
        return None
    rank = q * bs[-1][1]
    i = next((j for j in range(len(bs) - 1) if bs[j][1] >= rank), len(bs) - 1)
    if i == len(bs) - 1:
        return bs[-2][0]
    if i == 0 and bs[0][0] <= 0:
        return bs[0][0]
    start, end, count = 0.0, bs[i][0], bs[i][1]
    if i > 0:
        start = bs[i - 1][0]
        count -= bs[i - 1][1]
        rank -= bs[i - 1][1]
    if count == 0:  # only q == 0 with an empty first bucket: 0/0 is NaN in PromQL
        return None
    return start + (end - start) * (rank / count)


# ---------------------------------------------------------------- rendering


def _since(now: Mapping[K, float], before: Mapping[K, float] | None) -> dict[K, float]:
    """Per-series increase; a series that went down was reset, so all of it is new."""
    if before is None:
        return dict(now)
    return {k: v - before.get(k, 0.0) if v >= before.get(k, 0.0) else v for k, v in now.items()}


def _sum(values: Mapping[T, float], pos: int, *wanted: str) -> float:
    """Total over series whose label at `pos` is one of `wanted` (all series if none)."""
    return sum(v for k, v in values.items() if not wanted or k[pos] in wanted)


def _n(value: float) -> str:
    return f"{round(value):,}"


def _pct(num: float, den: float) -> str:
    return f"{100 * num / den:.1f}% ({_n(num)} of {_n(den)})" if den > 0 else "n/a"


def fmt_ms(seconds: float | None) -> str:
    """Milliseconds with three significant digits or so; '-' when there is no data."""
    if seconds is None or math.isnan(seconds):
        return "-"
    if math.isinf(seconds):
        return "inf"
    ms = seconds * 1000
    digits = 3 if ms < 1 else 2 if ms < 10 else 1 if ms < 100 else 0
    return f"{ms:.{digits}f} ms"


def _latency(hists: Iterable[Histogram]) -> tuple[str, str]:
    total = sum(hists, Histogram())
    return fmt_ms(quantile(0.5, total.buckets)), fmt_ms(quantile(0.99, total.buckets))


def render(
    now: Snapshot, before: Snapshot | None, elapsed_s: float, traffic: TrafficStats | None
) -> str:
    """Text summary. Totals are cumulative; rates, interval agreement and latency
    percentiles cover `elapsed_s`, the time between `before` and `now` (or since the
    start when `before` is None, in which case they are averages over the whole run).
    """
    req = _since(now.requests, before.requests if before else None)
    shadow = _since(now.shadow, before.shadow if before else None)
    comp = _since(now.comparisons, before.comparisons if before else None)
    window = f"last {elapsed_s:.1f} s" if before is not None else f"{elapsed_s:.1f} s run"

    def rate(n: float) -> str:
        return f"{n / elapsed_s:,.1f}/s" if elapsed_s > 0 else "-/s"

    status = " ".join(
        f"{c} {_n(_sum(now.requests, 2, c))}"
        for c in ("2xx", "3xx", "4xx", "5xx")
        if _sum(now.requests, 2, c)
    )
    backends = ", ".join(f"{b} {_n(_sum(now.requests, 1, b))}" for b in ("legacy", "agent"))
    lines = [
        f"shadow-proxy demo ({window})",
        f"requests     {_n(_sum(now.requests, 0))} total ({rate(_sum(req, 0))})"
        f"  [{status or 'none yet'}]  served by {backends}",
        f"shadowed     sent {_n(_sum(now.shadow, 1, 'sent'))} ({rate(_sum(shadow, 1, 'sent'))})"
        f"  completed {_n(_sum(now.shadow, 1, 'completed'))}",
        f"drops        {_n(_sum(now.shadow, 1, *DROP_OUTCOMES))}  ("
        + ", ".join(f"{o} {_n(_sum(now.shadow, 1, o))}" for o in DROP_OUTCOMES)
        + ")"
        + (f"  {_n(_sum(shadow, 1, *DROP_OUTCOMES))} in {window}" if before is not None else ""),
    ]
    match, mismatch = _sum(now.comparisons, 1, "match"), _sum(now.comparisons, 1, "mismatch")
    line = f"agreement    overall {_pct(match, match + mismatch)}"
    if before is not None:
        m, mm = _sum(comp, 1, "match"), _sum(comp, 1, "mismatch")
        line += f"  {window}: {_pct(m, m + mm)}"
    lines.append(line)
    if now.agreement:
        lines.append(
            "  rolling    "
            + "  ".join(f"{route} {100 * v:.1f}%" for route, v in sorted(now.agreement.items()))
        )
    lines.append(
        f"comparisons  errors {_n(_sum(now.comparisons, 1, 'error'))}"
        f"  skipped {_n(_sum(now.comparisons, 1, 'skipped'))}"
    )
    top = sorted(now.mismatch_fields.items(), key=lambda kv: (-kv[1], kv[0]))[:5]
    if top:
        fields = _since(now.mismatch_fields, before.mismatch_fields if before else None)
        lines.append("top mismatching fields")
        width = max(len(f"{r} {p}") for (r, p), _ in top)
        for (route, path), count in top:
            lines.append(
                f"  {route + ' ' + path:<{width}}  {_n(count):>7}"
                + (f"  (+{_n(fields[(route, path)])})" if before is not None else "")
            )
    lines.append(f"{'latency':<16}{'p50':>10} {'p99':>10}   ({window})")
    rows = [("legacy", "live"), ("agent", "shadow"), ("agent", "live"), ("legacy", "shadow")]
    for backend, mode in rows:
        hists = [
            h.since(before.upstream.get(k) if before else None)
            for k, h in now.upstream.items()
            if k[1:] == (backend, mode)
        ]
        if hists or (backend, mode) in rows[:2]:
            p50, p99 = _latency(hists)
            lines.append(f"  {backend + ' ' + mode:<14}{p50:>10} {p99:>10}")
    p50, p99 = _latency(
        h.since(before.overhead.get(r) if before else None) for r, h in now.overhead.items()
    )
    lines.append(f"  {'proxy overhead':<14}{p50:>10} {p99:>10}")
    if traffic is not None:
        lines.append(
            f"traffic      sent {_n(traffic.sent)}  ok {_n(traffic.ok)}"
            f"  4xx {_n(traffic.client_errors)}  5xx {_n(traffic.server_errors)}"
            f"  failed {_n(traffic.failed)}  skipped {_n(traffic.skipped)}"
        )
    return "\n".join(lines)
