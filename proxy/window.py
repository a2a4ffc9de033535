"""Rolling evidence per route for the rollout gates (pure: time is passed in).

One-second buckets over the window; each bucket counts comparisons, agent
calls and errors, agent-served requests and fallbacks, and keeps a bounded
sample of latencies per backend for the p95s. Stats can be asked for "since"
a moment, so each rollout step is judged only on evidence gathered at that
step.
"""

from __future__ import annotations

import math
from collections import deque
from dataclasses import dataclass, field

from proxy.rollout import WindowStats

_LATENCIES_PER_BUCKET = 64


@dataclass(slots=True)
class _Bucket:
    second: int
    samples: int = 0
    matches: int = 0
    agent_calls: int = 0
    agent_errors: int = 0
    agent_served: int = 0
    fallbacks: int = 0
    agent_latency: list[float] = field(default_factory=list)
    legacy_latency: list[float] = field(default_factory=list)


def p95(values: list[float]) -> float | None:
    """Nearest-rank 95th percentile; None with no values."""
    if not values:
        return None
    ordered = sorted(values)
    return ordered[max(0, math.ceil(0.95 * len(ordered)) - 1)]


class EvidenceWindow:
    def __init__(self, span: float) -> None:
        self.span = span
        self._buckets: deque[_Bucket] = deque(maxlen=math.ceil(span) + 1)

    def _bucket(self, now: float) -> _Bucket:
        second = int(now)
        buckets = self._buckets
        if not buckets or buckets[-1].second != second:
            buckets.append(_Bucket(second))
        return buckets[-1]

    def comparison(self, matched: bool, now: float) -> None:
        bucket = self._bucket(now)
        bucket.samples += 1
        bucket.matches += matched

    def agent_call(self, ok: bool, latency: float | None, now: float) -> None:
        bucket = self._bucket(now)
        bucket.agent_calls += 1
        bucket.agent_errors += not ok
        if ok and latency is not None and len(bucket.agent_latency) < _LATENCIES_PER_BUCKET:
            bucket.agent_latency.append(latency)

    def legacy_call(self, latency: float, now: float) -> None:
        bucket = self._bucket(now)
        if len(bucket.legacy_latency) < _LATENCIES_PER_BUCKET:
            bucket.legacy_latency.append(latency)

    def served(self, fallback: bool, now: float) -> None:
        """The agent was chosen for a live request; ``fallback``: legacy answered."""
        bucket = self._bucket(now)
        bucket.agent_served += 1
        bucket.fallbacks += fallback

    def stats(self, now: float, since: float = 0.0) -> WindowStats:
        start = max(now - self.span, since)
        chosen = [b for b in self._buckets if b.second >= int(start) and b.second <= now]
        return WindowStats(
            samples=sum(b.samples for b in chosen),
            matches=sum(b.matches for b in chosen),
            agent_calls=sum(b.agent_calls for b in chosen),
            agent_errors=sum(b.agent_errors for b in chosen),
            agent_served=sum(b.agent_served for b in chosen),
            fallbacks=sum(b.fallbacks for b in chosen),
            agent_p95=p95([x for b in chosen for x in b.agent_latency]),
            legacy_p95=p95([x for b in chosen for x in b.legacy_latency]),
        )
