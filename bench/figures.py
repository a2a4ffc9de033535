"""The figures reported for each peer of a scenario, derived from the medians:
latency added over direct, the share of the peer's own passthrough, and the
ratios shadow-proxy / Envoy and shadow-proxy / nginx (and for shadow-proxy
with several workers, / Envoy).

Latencies here are in milliseconds; ``None`` means "not measured here".
"""

from __future__ import annotations

from collections.abc import Mapping

from bench.peers import DIRECT, ENVOY, NGINX, SHADOW_PROXY, SHADOW_PROXY_WORKERS
from bench.scenarios import LATENCY_KINDS, ScenarioResult, Summary
from bench.stats import minus, ratio

Figures = dict[str, float | int | None]
RATIO_KEYS = (
    "rps",
    "p50_ms",
    "p99_ms",
    "added_p50_ms",
    "added_p99_ms",
    "cpu_s_per_1k",
    "peak_rss_mb",
)
PAIRS = ((SHADOW_PROXY, ENVOY), (SHADOW_PROXY, NGINX), (SHADOW_PROXY_WORKERS, ENVOY))


def _ms(seconds: float | None) -> float | None:
    return None if seconds is None else seconds * 1e3


def peer_figures(
    summary: Summary, direct: Summary | None, passthrough: Summary | None, mirrors: bool
) -> Figures:
    """Every figure, for every peer (None where it does not apply)."""
    is_direct = summary.peer == DIRECT
    baseline = direct if direct is not None and not is_direct else None
    return {
        "rps": summary.rps,
        "p50_ms": _ms(summary.p50),
        "p99_ms": _ms(summary.p99),
        "added_p50_ms": _ms(minus(summary.p50, baseline.p50)) if baseline else None,
        "added_p99_ms": _ms(minus(summary.p99, baseline.p99)) if baseline else None,
        "errors": summary.errors,
        "requests": summary.requests,
        "cpu_s_per_1k": summary.cpu_per_1k,
        "peak_rss_mb": summary.peak_rss_mb,
        "mirrored": summary.mirrored if mirrors and not is_direct else None,
        "rps_vs_passthrough": ratio(summary.rps, passthrough.rps) if passthrough else None,
        "p99_vs_passthrough": ratio(summary.p99, passthrough.p99) if passthrough else None,
    }


def scenario_figures(
    result: ScenarioResult, passthrough: ScenarioResult | None
) -> dict[str, Figures]:
    """Figures per peer; ``passthrough`` (scenario 1) gives each peer's own baseline."""
    scenario = result.scenario
    direct = result.peers.get(DIRECT)
    own = passthrough.peers if passthrough and passthrough is not result else {}
    return {
        name: peer_figures(summary, direct, own.get(name), scenario.agent is not None)
        for name, summary in result.peers.items()
    }


def ratios(figures: Mapping[str, Figures]) -> dict[str, dict[str, float | None]]:
    """``{"shadow-proxy/envoy": {"rps": 0.8, ...}, ...}`` for the peers present."""
    out = {}
    for mine, theirs in PAIRS:
        if mine in figures and theirs in figures:
            out[f"{mine}/{theirs}"] = {
                key: ratio(_num(figures[mine][key]), _num(figures[theirs][key]))
                for key in RATIO_KEYS
            }
    return out


def _num(value: float | int | None) -> float | None:
    return None if value is None else float(value)


def headline(kind: str) -> tuple[str, ...]:
    """The figures a scenario's ratios are read on."""
    if kind in LATENCY_KINDS:
        return ("added_p50_ms", "added_p99_ms")
    return ("rps",)
