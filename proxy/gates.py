"""Rollout gates: the verdict of one window of evidence, one gate at a time (pure).

Split from ``proxy.rollout`` (which re-exports everything here) because the gates are a noun of
their own: the driver exports each one as a metric, and the admin API shows them. A gate says
``ok=None`` when it has no data, so the controller can hold instead of guessing.
"""

from __future__ import annotations

import math
from dataclasses import dataclass


def _require(ok: bool, message: str) -> None:
    if not ok:
        raise ValueError(message)


@dataclass(frozen=True, slots=True)
class Gates:
    min_samples: int = 100
    min_agreement: float = 0.95
    max_error_rate: float = 0.05
    max_fallback_rate: float = 0.05
    max_latency_ratio: float | None = 3.0

    def __post_init__(self) -> None:
        _require(self.min_samples >= 1, "min_samples must be at least 1")
        for name in ("min_agreement", "max_error_rate", "max_fallback_rate"):
            _require(0.0 <= getattr(self, name) <= 1.0, f"{name} must be in [0, 1]")
        ratio = self.max_latency_ratio
        _require(ratio is None or 0.0 < ratio < math.inf, "max_latency_ratio must be > 0")


@dataclass(frozen=True, slots=True)
class WindowStats:
    """Counts are checked here so a driver bug fails where the evidence is made, not mid-step."""

    samples: int = 0
    matches: int = 0
    agent_calls: int = 0
    agent_errors: int = 0
    agent_served: int = 0
    fallbacks: int = 0
    agent_p95: float | None = None
    legacy_p95: float | None = None

    def __post_init__(self) -> None:
        _require(0 <= self.matches <= self.samples, "need 0 <= matches <= samples")
        _require(0 <= self.agent_errors <= self.agent_calls, "need 0 <= errors <= calls")
        _require(0 <= self.fallbacks <= self.agent_served, "need 0 <= fallbacks <= served")
        for p95 in (self.agent_p95, self.legacy_p95):
            _require(p95 is None or 0.0 <= p95 < math.inf, "p95 must be finite and >= 0")


@dataclass(frozen=True, slots=True)
class GateResult:
    name: str
    value: float | None
    threshold: float
    ok: bool | None

    def describe(self) -> str:
        """The sentence a failing gate puts into a decision's reason."""
        if self.value is None:
            return f"{self.name}: no data"
        if self.name in ("samples", "agreement"):
            extra = " (Wilson lower bound)" if self.name == "agreement" else ""
            return f"{self.name} {self.value:.3g}{extra} below {self.threshold:g}"
        return f"{self.name} {self.value:.3g} above {self.threshold:g}"


def wilson_lower_bound(successes: int, n: int, z: float = 1.959964) -> float:
    """Lower bound of the Wilson score interval: a few lucky matches cannot pass a 0.95 gate."""
    _require(0 <= successes <= n, "need 0 <= successes <= n")
    if n == 0:
        return 0.0
    p, z2 = successes / n, z * z
    margin = z * math.sqrt(p * (1 - p) / n + z2 / (4 * n * n))
    return max(0.0, (p + z2 / (2 * n) - margin) / (1 + z2 / n))


def _at_most(name: str, value: float | None, limit: float, applies: bool = True) -> GateResult:
    ok = None if value is None or not applies else value <= limit
    return GateResult(name, value, limit, ok)


def evaluate_gates(stats: WindowStats, gates: Gates, *, serving: bool) -> tuple[GateResult, ...]:
    """Each gate's verdict; ``ok=None`` where there is no data (or, for fallbacks, no live
    traffic on the agent yet). Agreement is judged only once ``min_samples`` are in, since a
    Wilson bound on a handful of samples is low by construction, not by evidence."""
    enough = stats.samples >= gates.min_samples
    agreement = wilson_lower_bound(stats.matches, stats.samples) if stats.samples else None
    results = [
        GateResult("samples", float(stats.samples), float(gates.min_samples), enough or None),
        GateResult(
            "agreement",
            agreement,
            gates.min_agreement,
            None if agreement is None or not enough else agreement >= gates.min_agreement,
        ),
        _at_most("error_rate", _ratio(stats.agent_errors, stats.agent_calls), gates.max_error_rate),
        _at_most(
            "fallback_rate",
            _ratio(stats.fallbacks, stats.agent_served),
            gates.max_fallback_rate,
            applies=serving,
        ),
    ]
    if gates.max_latency_ratio is not None:
        legacy = stats.legacy_p95
        ratio = None if stats.agent_p95 is None or not legacy else stats.agent_p95 / legacy
        results.append(_at_most("latency_ratio", ratio, gates.max_latency_ratio))
    return tuple(results)


def _ratio(part: int, whole: int) -> float | None:
    return part / whole if whole else None
