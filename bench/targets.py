"""The issue's targets, judged on ratios measured in the same run.

They are reported, never asserted in tests: on a shared machine a number
can move by tens of percent from one run to the next.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import asdict, dataclass

from bench.figures import Figures
from bench.peers import ENVOY, NGINX, SHADOW_PROXY, SHADOW_PROXY_WORKERS

P99_UNCHANGED = 1.25  # "p99 unchanged": within 25% of passthrough's, a noise allowance


@dataclass(frozen=True)
class Target:
    name: str
    measured: float | None
    limit: float | None  # None: shown for reference, not judged
    unit: str
    at_least: bool = False  # the measured value must be >= limit (else <=)
    note: str = ""

    @property
    def passed(self) -> bool | None:
        if self.measured is None or self.limit is None:
            return None
        return self.measured >= self.limit if self.at_least else self.measured <= self.limit

    def as_dict(self) -> dict[str, object]:
        return {**asdict(self), "passed": self.passed}


def _get(
    figures: Mapping[str, Mapping[str, Figures]], scenario: str, peer: str, key: str
) -> float | None:
    value = figures.get(scenario, {}).get(peer, {}).get(key)
    return None if value is None else float(value)


def evaluate(
    figures: Mapping[str, Mapping[str, Figures]],
    ratios: Mapping[str, Mapping[str, Mapping[str, float | None]]],
    rate: float,
    workers: int = 2,
) -> list[Target]:
    """``figures[scenario][peer]`` and ``ratios[scenario]["shadow-proxy/envoy"]``;
    the targets are shadow-proxy's, the reference rows show its peers."""
    sp = SHADOW_PROXY
    vs_envoy = ratios.get("mirror", {}).get(f"{sp}/{ENVOY}", {}).get("rps")
    rss = [
        (float(peers[sp]["peak_rss_mb"] or 0), name)
        for name, peers in figures.items()
        if sp in peers and peers[sp]["peak_rss_mb"] is not None
    ]
    worst = max(rss, default=None)
    shares = [
        f"{peer} {share:.1%}"
        for peer in (sp, ENVOY)
        if (share := _get(figures, "mirror", peer, "mirrored")) is not None
    ]
    return [
        Target(
            "100% mirror + JSON compare: req/s vs Envoy",
            vs_envoy,
            0.75,
            "x",
            True,
            "; ".join(["one worker each", *(["mirrored: " + ", ".join(shares)] if shares else [])]),
        ),
        Target(
            "slow agent (1 s): req/s vs own passthrough",
            _get(figures, "slow-agent", sp, "rps_vs_passthrough"),
            0.95,
            "%",
            True,
        ),
        Target(
            "slow agent (1 s): p99 vs own passthrough p99",
            _get(figures, "slow-agent", sp, "p99_vs_passthrough"),
            P99_UNCHANGED,
            "x",
            note=f"'unchanged': at most {P99_UNCHANGED:g}x (noise allowance)",
        ),
        Target(
            f"{rate:g} req/s open loop: added p50 over direct",
            _get(figures, "fixed-rate", sp, "added_p50_ms"),
            0.3,
            "ms",
        ),
        Target(
            f"{rate:g} req/s open loop: added p99 over direct",
            _get(figures, "fixed-rate", sp, "added_p99_ms"),
            1.0,
            "ms",
        ),
        Target(
            "peak RSS, any scenario",
            worst[0] if worst else None,
            100.0,
            "MB",
            note=f"worst: {worst[1]}" if worst else "",
        ),
        Target(
            f"reference: shadow-proxy --workers {workers}, mirror: req/s vs Envoy",
            ratios.get("mirror", {}).get(f"{SHADOW_PROXY_WORKERS}/{ENVOY}", {}).get("rps"),
            None,
            "x",
            note="Envoy with one worker; the load generator shares the cores",
        ),
        Target(
            "reference: nginx, slow agent: req/s vs own passthrough",
            _get(figures, "slow-agent", NGINX, "rps_vs_passthrough"),
            None,
            "%",
            note="nginx's mirror holds each request until the mirror answers",
        ),
        Target(
            "reference: Envoy, slow agent: req/s vs own passthrough",
            _get(figures, "slow-agent", ENVOY, "rps_vs_passthrough"),
            None,
            "%",
        ),
    ]
