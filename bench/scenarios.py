"""The scenarios, and running one: every peer in turn, ``repeat`` times,
interleaved (peer order rotates each round), summarized by medians.

Peers are started afresh for each scenario and stopped when it ends.
"""

from __future__ import annotations

import time
import urllib.request
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from bench.backends import Backends
from bench.load import wrk
from bench.measure import Kind, LoadOptions, Run, measure
from bench.peers import DIRECT, Peer, Setup, running_peers
from bench.stats import median


@dataclass(frozen=True)
class Scenario:
    name: str
    title: str
    kind: Kind = "wrk"
    path: str = "/"
    agent: str | None = None  # which agent backend is mirrored to; None: no mirror
    direct: bool = False  # also measure the client talking to legacy with no proxy
    compare: tuple[str, ...] = ("status", "json")
    settle: float = 0.3  # seconds after the load for mirrors still in flight


SCENARIOS = (
    Scenario("passthrough", "1. passthrough, no shadow", direct=True),
    Scenario("mirror", "2. 100% mirror, JSON comparison on", agent="same"),
    Scenario("slow-agent", "3. 100% mirror to a slow agent (1 s)", agent="slow", settle=1.5),
    Scenario(
        "failing-refused",
        "4a. 100% mirror to a failing agent (connection refused)",
        agent="refused",
    ),
    Scenario("failing-500", "4b. 100% mirror to a failing agent (500)", agent="500"),
    Scenario("big", "5. 1 MB responses, mirrored", path="/big", agent="same", direct=True),
    Scenario(
        "sse",
        "6. SSE streams, mirrored: time to first byte",
        kind="sse",
        path="/sse",
        agent="same",
        direct=True,
        compare=("status", "exact"),
    ),
    Scenario(
        "fixed-rate",
        "7. fixed rate, open loop, mirrored: latency added over direct",
        kind="rate",
        agent="same",
        direct=True,
    ),
)
BY_NAME = {s.name: s for s in SCENARIOS}
LATENCY_KINDS = ("rate", "sse")  # the headline is latency added over direct, not req/s


@dataclass(frozen=True)
class Summary:
    """Medians over a peer's runs; peak RSS is the maximum; errors the total."""

    peer: str
    rps: float | None
    p50: float | None
    p99: float | None
    errors: int
    requests: int
    cpu_per_1k: float | None
    peak_rss_mb: float | None
    mirrored: float | None
    runs: tuple[Run, ...]

    @classmethod
    def of(cls, peer: str, runs: Sequence[Run]) -> Summary:
        rss = [r.peak_rss_mb for r in runs if r.peak_rss_mb is not None]
        return cls(
            peer=peer,
            rps=median(r.rps for r in runs),
            p50=median(r.p50 for r in runs),
            p99=median(r.p99 for r in runs),
            errors=sum(r.errors for r in runs),
            requests=sum(r.requests for r in runs),
            cpu_per_1k=median(r.cpu_per_1k for r in runs),
            peak_rss_mb=max(rss) if rss else None,
            mirrored=median(r.mirrored for r in runs),
            runs=tuple(runs),
        )


@dataclass(frozen=True)
class ScenarioResult:
    scenario: Scenario
    peers: dict[str, Summary] = field(default_factory=dict)


def warm_up(peer: Peer, path: str, seconds: float, connections: int) -> None:
    """A short untimed load, so caches, pools and lazy imports are warm."""
    if seconds >= 1:
        wrk(peer.url + path, duration=seconds, connections=min(connections, 8))
    else:  # --quick: a few requests prove the peer answers
        for _ in range(5):
            with urllib.request.urlopen(peer.url + path, timeout=10) as response:
                response.read()


def rounds(peers: Sequence[Peer], repeat: int) -> list[list[Peer]]:
    """Every peer once per round, the order rotated each round."""
    n = len(peers)
    return [[*peers[r % n :], *peers[: r % n]] for r in range(repeat)]


def run_scenario(
    scenario: Scenario,
    backends: Backends,
    root: Path,
    peer_names: Sequence[str],
    options: LoadOptions,
    repeat: int,
    warmup: float,
    say: Callable[[str], None] = print,
    workers: int = 2,
) -> ScenarioResult:
    agent = backends.agents[scenario.agent] if scenario.agent else None
    setup = Setup(backends.legacy.url, agent.url if agent else None, scenario.compare)
    direct = backends.legacy.port if scenario.direct else None
    runs: dict[str, list[Run]] = {}
    with running_peers(root / scenario.name, peer_names, setup, direct, workers) as peers:
        for peer in peers:
            warm_up(
                peer, "/" if scenario.kind == "sse" else scenario.path, warmup, options.connections
            )
        time.sleep(scenario.settle)  # the warm-up's mirrors land before anything is counted
        for number, order in enumerate(rounds(peers, repeat), 1):
            for peer in order:
                mirror_to = agent if peer.name != DIRECT else None
                run = measure(
                    scenario.kind,
                    peer,
                    scenario.path,
                    backends.legacy,
                    mirror_to,
                    options,
                    scenario.settle,
                )
                say(f"  [{scenario.name} {number}/{repeat}] {_line(run)}")
                runs.setdefault(peer.name, []).append(run)
    return ScenarioResult(scenario, {name: Summary.of(name, rs) for name, rs in runs.items()})


def _line(run: Run) -> str:
    p50 = f"{run.p50 * 1e3:.2f}" if run.p50 is not None else "-"
    p99 = f"{run.p99 * 1e3:.2f}" if run.p99 is not None else "-"
    mirrored = f" mirrored {run.mirrored:.1%}" if run.mirrored is not None else ""
    return (
        f"{run.peer:<12} {run.rps:9.0f} req/s  p50 {p50} ms  p99 {p99} ms"
        f"  errors {run.errors}{mirrored}"
    )
