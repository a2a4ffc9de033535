"""One measured run: load through one peer, with its CPU, peak RSS and the
requests each backend received meanwhile.

The *mirrored share* (agent requests / legacy requests during the run) is
recorded for every mirror scenario, so a peer that skips mirrors (by design
or not) cannot look faster without it showing.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from contextlib import nullcontext
from dataclasses import dataclass
from typing import Literal

from bench.backends import Backend, received
from bench.load import wrk
from bench.peers import Peer
from bench.procs import Usage

Kind = Literal["wrk", "rate", "sse"]
MB = 1_000_000


@dataclass(frozen=True)
class LoadOptions:
    duration: float = 5.0
    connections: int = 32
    threads: int = 1
    rate: float = 500.0
    streams: int = 20


@dataclass(frozen=True)
class Run:
    peer: str
    requests: int
    rps: float
    p50: float | None  # seconds
    p99: float | None
    errors: int
    cpu_per_1k: float | None  # CPU seconds of the peer's process tree per 1,000 requests
    peak_rss_mb: float | None  # peak of the summed RSS of its process tree
    legacy_requests: int | None
    agent_requests: int | None
    mirrored: float | None  # agent requests / legacy requests, mirror scenarios only
    extra: dict[str, float | int | None]


def generate(kind: Kind, url: str, options: LoadOptions) -> dict[str, float | int | None]:
    """Run the load; every kind answers requests, rps, p50, p99, errors."""
    if kind == "wrk":
        result = wrk(
            url,
            duration=options.duration,
            connections=options.connections,
            threads=options.threads,
        )
        return {
            "requests": result.requests,
            "rps": result.rps,
            "p50": result.p50,
            "p99": result.p99,
            "errors": result.errors,
            "non_2xx": result.non_2xx,
            "socket_errors": result.socket_errors,
        }
    if kind == "rate":
        args = ["rate", url, "--rate", f"{options.rate:g}"]
    else:
        args = ["sse", url, "--streams", str(options.streams)]
    argv = [sys.executable, "-m", "bench.openloop", *args, "--duration", f"{options.duration:g}"]
    done = subprocess.run(
        argv, capture_output=True, text=True, timeout=options.duration + 90, check=False
    )
    if done.returncode != 0:
        raise RuntimeError(f"bench.openloop {kind} failed: {done.stderr[-2000:]}")
    values: dict[str, float | int | None] = json.loads(done.stdout)
    values["rps"] = int(values["requests"] or 0) / options.duration
    return values


def measure(
    kind: Kind,
    peer: Peer,
    path: str,
    legacy: Backend,
    agent: Backend | None,
    options: LoadOptions,
    settle: float,
) -> Run:
    """Load through ``peer``, then wait ``settle`` seconds for mirrors to land."""
    legacy0 = legacy.requests()
    agent0 = agent.requests() if agent else None
    shadow0 = peer.shadow_outcomes()
    usage = Usage(peer.proc.pid) if peer.proc else None
    with usage or nullcontext():
        values = generate(kind, peer.url + path, options)
        time.sleep(settle)
    legacy_n = received(legacy0, legacy.requests())
    agent_n = received(agent0, agent.requests()) if agent else None
    for outcome, count in peer.shadow_outcomes().items():
        if delta := count - shadow0.get(outcome, 0.0):
            values[f"shadow_{outcome}"] = int(delta)
    requests = int(values.pop("requests") or 0)
    mirrored = None
    if agent_n is not None and legacy_n:
        mirrored = agent_n / legacy_n
    return Run(
        peer=peer.name,
        requests=requests,
        rps=float(values.pop("rps") or 0.0),
        p50=values.pop("p50"),
        p99=values.pop("p99"),
        errors=int(values.pop("errors") or 0),
        cpu_per_1k=usage.cpu / requests * 1000 if usage and requests else None,
        peak_rss_mb=usage.peak_rss / MB if usage else None,
        legacy_requests=legacy_n,
        agent_requests=agent_n,
        mirrored=mirrored,
        extra=values,
    )
