"""The soak's figures, printed as tables with the checks, and an optional JSON summary."""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import asdict
from pathlib import Path
from typing import Any

from bench.soak_checks import Check, counts
from bench.soak_memory import MB, Growth, RssSeries, growth
from bench.soak_traffic import LIVE_ROUTE, Tally
from bench.stats import percentile
from bench.tables import Table


def _ms(values: Sequence[float], p: float) -> float | None:
    value = percentile(values, p)
    return None if value is None else round(value * 1000, 2)


def latency(tally: Tally) -> dict[str, dict[str, float | None]]:
    """p50 and p99 in ms, over all right answers and per route."""
    every = [x for r in tally.routes.values() for x in r.latencies]
    found = {"all": {"p50_ms": _ms(every, 50), "p99_ms": _ms(every, 99)}}
    for name, route in tally.routes.items():
        found[name] = {"p50_ms": _ms(route.latencies, 50), "p99_ms": _ms(route.latencies, 99)}
    return found


def memory(found: Growth | None) -> dict[str, float | None]:
    if found is None:
        return {k: None for k in ("warmup_s", "baseline_mb", "peak_mb", "final_mb", "growth_pct")}
    return {
        "warmup_s": round(found.warmup, 1),
        "baseline_mb": round(found.baseline / MB, 1),
        "peak_mb": round(found.peak / MB, 1),
        "final_mb": round(found.final / MB, 1),
        "growth_pct": round(found.ratio * 100, 2),
    }


def summarize(
    duration: float, rate: float, warmup: float, tally: Tally, series: RssSeries
) -> dict[str, Any]:
    """The client's figures and the RSS (the caller adds the proxy's and the agent's)."""
    live = tally.routes[LIVE_ROUTE]
    lag = percentile(tally.lags, 99)
    return {
        "duration_s": duration,
        "rate": rate,
        "requests": tally.requests,
        "scheduled": tally.scheduled,
        "rps": tally.requests / duration,
        "client_errors": sum(tally.errors.values()),
        "errors_by_class": dict(tally.errors),
        "latency": latency(tally),
        "lag_p99_ms": None if lag is None else round(lag * 1000, 2),
        "peak_connections": tally.peak_connections,
        "memory": memory(growth(series, warmup)),
        "rss_samples_mb": [[round(t, 1), round(rss / MB, 1)] for t, rss in series.samples],
        "asked_faults": {name: dict(route.faults) for name, route in tally.routes.items()},
        "live_served": dict(live.served),
        "live_handled": {fault: dict(got) for fault, got in live.handled.items()},
        "examples": tally.examples,
    }


def _fmt(value: float | None, unit: str = "") -> str:
    return "-" if value is None else f"{value:g}{unit}"


def figure_rows(figures: Mapping[str, Any]) -> list[list[str]]:
    lat, mem, proxy = figures["latency"], figures["memory"], figures["proxy"]
    rows = [
        ["duration", f"{figures['duration_s']:g} s at {figures['rate']:g} req/s"],
        ["requests sent", str(figures["requests"])],
        ["req/s (sent / duration)", f"{figures['rps']:.1f}"],
        ["client errors", f"{figures['client_errors']} ({counts(figures['errors_by_class'])})"],
    ]
    for name, values in lat.items():
        rows.append(
            [
                f"latency p50 / p99, {name}",
                f"{_fmt(values['p50_ms'])} / {_fmt(values['p99_ms'])} ms",
            ]
        )
    rows += [
        ["client lag p99 (send - scheduled)", f"{_fmt(figures['lag_p99_ms'])} ms"],
        ["RSS warm-up", f"first {_fmt(mem['warmup_s'])} s"],
        [
            "RSS baseline / peak / final",
            f"{_fmt(mem['baseline_mb'])} / {_fmt(mem['peak_mb'])} / {_fmt(mem['final_mb'])} MB",
        ],
        ["RSS growth after warm-up", _fmt(mem["growth_pct"], "%")],
        ["agent faults injected", counts(figures["agent_faults"])],
    ]
    for route, outcomes in proxy["shadow_outcomes"].items():
        rows.append([f"shadow outcomes, {route}", counts(outcomes)])
    for route, verdicts in proxy["comparisons"].items():
        rows.append([f"comparisons, {route}", counts(verdicts)])
    rows += [
        ["fallbacks by reason", counts(proxy["fallbacks"])],
        ["live route served by", counts(figures["live_served"])],
        ["proxy log warnings", counts(proxy["log_warnings"])],
    ]
    return rows


def _fallbacks(outcomes: Mapping[str, int]) -> dict[str, int]:
    return {k.removeprefix("fallback "): n for k, n in outcomes.items() if k.startswith("fallback")}


def render(figures: Mapping[str, Any], checks: Sequence[Check]) -> str:
    table = Table(["figure", "value"], figure_rows(figures), left=(0, 1))
    handled = Table(
        ["live route: agent fault", "served by agent", "legacy (its share)", "fell back"],
        [
            [fault, str(got.get("agent", 0)), str(got.get("legacy", 0)), counts(_fallbacks(got))]
            for fault, got in sorted(figures["live_handled"].items())
        ],
        left=(0, 3),
    )
    verdicts = Table(
        ["check", "measured", "expected", "result"],
        [[c.name, c.measured, c.expected, "PASS" if c.passed else "FAIL"] for c in checks],
        left=(0, 1, 2),
    )
    parts = [table.text(), "", handled.text(), "", verdicts.text()]
    if figures["examples"]:
        parts += ["", "first client errors:", *(f"  {e}" for e in figures["examples"])]
    ok = all(c.passed for c in checks)
    parts += ["", f"soak: {'PASS' if ok else 'FAIL'} ({sum(not c.passed for c in checks)} failed)"]
    return "\n".join(parts)


def write_json(path: Path, figures: Mapping[str, Any], checks: Sequence[Check]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    doc = {
        "passed": all(c.passed for c in checks),
        "checks": [asdict(c) for c in checks],
        "figures": figures,
    }
    path.write_text(json.dumps(doc, indent=2, sort_keys=True) + "\n")
