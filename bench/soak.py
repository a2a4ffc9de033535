"""``python -m bench.soak``: mixed traffic through the real proxy while the agent
fails at random, for a long time, then the checks.

It starts a legacy backend that never fails (``bench.soak_legacy``), an agent
that fails on purpose (``bench.faulty_agent``) and ``shadow-proxy run`` with
two routes: ``shadow`` (legacy serves, the agent is mirrored) and ``live``
(the agent serves a fixed share, legacy falls back), JSON comparison on both.
Then an open loop sends ``--rate`` requests a second for ``--duration``
seconds and checks every answer, while the proxy's RSS is sampled each
second. At the end: the client's errors (the target is none: legacy never
fails, so none is legitimate), the proxy's counters against what the client
saw, RSS growth after the warm-up, the proxy's log and its exit on SIGTERM.
Exit status 1 when a check fails, 2 when something could not start.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import signal
import sys
import tempfile
import time
import urllib.request
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path
from time import perf_counter
from types import FrameType
from typing import Any

import uvloop
import yaml

from bench import soak_checks as checks
from bench import soak_traffic
from bench.faulty_agent import STATS_PATH
from bench.procs import LOOPBACK, Proc, StartError, free_port
from bench.soak_memory import RssSeries, watch
from bench.soak_metrics import Scrape, account
from bench.soak_report import render, summarize, write_json
from bench.soak_traffic import LIVE_ROUTE, SHADOW_ROUTE, Tally
from bench.stats import percentile

AGENT_TIMEOUT = 1.0  # seconds, for shadow calls and for live calls alike
SLOW = 1.5 * AGENT_TIMEOUT  # a slow answer comes after the proxy gave up
# The proxy's RSS climbs for its first 8-10 s of traffic (pools, caches, the
# allocator's arenas) and then holds: growth is measured after that.
MIN_WARMUP = 10.0


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m bench.soak",
        description="Mixed traffic through shadow-proxy while the agent fails at random; "
        "checks client errors, the proxy's counters and RSS growth.",
    )
    parser.add_argument("--duration", type=float, default=600, help="seconds of traffic (600)")
    parser.add_argument("--rate", type=float, default=250, help="requests per second (250)")
    parser.add_argument(
        "--warmup", type=float, help=f"seconds (default: 20%% of the run, >= {MIN_WARMUP:g})"
    )
    parser.add_argument("--max-growth", type=float, default=10, help="RSS growth limit, %% (10)")
    parser.add_argument("--seed", type=int, default=1, help="of the traffic and the faults (1)")
    parser.add_argument("--json", type=Path, help="also write the summary here")
    args = parser.parse_args(argv)
    if args.warmup is None:
        args.warmup = max(0.2 * args.duration, MIN_WARMUP)
    return args


def proxy_conf(port: int, admin: int, legacy: int, agent: int) -> dict[str, Any]:
    def route(name: str) -> dict[str, Any]:
        return {
            "name": name,
            "match": {"prefix": f"/{name}/"},
            "side_effect_free": True,  # POSTs are mirrored, and fall back to legacy
            "shadow": {"enabled": True},
            "compare": ["status", "json"],
        }

    live = route(LIVE_ROUTE) | {"rollout": {"mode": "manual", "percent": 50}}
    return {
        "listen": {"host": LOOPBACK, "port": port},
        "admin": {"host": LOOPBACK, "port": admin},
        "backends": {
            "legacy": {"url": f"http://{LOOPBACK}:{legacy}"},
            "agent": {"url": f"http://{LOOPBACK}:{agent}", "timeout": f"{AGENT_TIMEOUT:g}s"},
        },
        "shadow": {"timeout": f"{AGENT_TIMEOUT:g}s"},
        "routes": [route(SHADOW_ROUTE), live],
        "logging": {"level": "warning", "format": "json"},
        "shutdown": {"timeout": "10s", "shadow_grace": "2s"},
    }


def start(stack: ExitStack, root: Path, name: str, argv: list[str], port: int) -> Proc:
    proc = Proc(name, argv, root / f"{name}.log", Path.cwd())
    stack.callback(proc.stop)  # by PID, whatever happens next
    proc.wait_port(port)
    return proc


async def drive(args: argparse.Namespace, port: int, pid: int) -> tuple[Tally, RssSeries]:
    """The traffic, with the RSS sampled and a progress line now and then."""
    tally, series = Tally(), RssSeries()
    start = perf_counter()
    every = max(5.0, args.duration / 20)

    async def progress() -> None:
        seen = dict.fromkeys(tally.routes, 0)
        while True:
            await asyncio.sleep(every)
            recent = [x for n, r in tally.routes.items() for x in r.latencies[seen[n] :]]
            seen = {n: len(r.latencies) for n, r in tally.routes.items()}
            p50, p99 = (1000 * (percentile(recent, p) or 0.0) for p in (50, 99))
            print(
                f"  {perf_counter() - start:5.0f} s  sent {tally.requests:7d}  client errors"
                f" {sum(tally.errors.values())}  RSS {series.last_mb():.1f} MB"
                f"  latency p50 {p50:.1f} ms, p99 {p99:.0f} ms (last {every:g} s)",
                flush=True,
            )

    background = [asyncio.create_task(watch(pid, series, start)), asyncio.create_task(progress())]
    try:
        await soak_traffic.run(LOOPBACK, port, args.rate, args.duration, args.seed, tally)
    finally:
        for task in background:
            task.cancel()
    return tally, series


def settled(admin: int, timeout: float = 15.0) -> Scrape:
    """The metrics once no shadow request is in flight (or after ``timeout``)."""
    deadline = time.monotonic() + timeout
    while True:
        scrape = Scrape.read(admin)
        if scrape.total("shadow_proxy_shadow_in_flight") == 0 or time.monotonic() > deadline:
            return scrape
        time.sleep(0.2)


def log_events(path: Path) -> tuple[dict[str, int], dict[str, int]]:
    """(warning events, errors: error-level events and lines that are not JSON)."""
    warnings: dict[str, int] = {}
    errors: dict[str, int] = {}
    for line in path.read_text(errors="replace").splitlines():
        try:
            event = json.loads(line)
            level, name = event.get("level", "?"), str(event.get("event", "?"))
        except (ValueError, AttributeError):
            level, name = "error", "not a JSON line"
        if level == "warning":
            warnings[name] = warnings.get(name, 0) + 1
        elif level not in ("debug", "info"):
            errors[name] = errors.get(name, 0) + 1
    return warnings, errors


def _terminate(signum: int, frame: FrameType | None) -> None:
    raise KeyboardInterrupt  # unwinds the ExitStack: every process is stopped


@dataclass(frozen=True)
class Outcome:
    """What one soak leaves behind, once every process is stopped."""

    tally: Tally
    series: RssSeries
    scrape: Scrape  # the proxy's metrics once the shadow work settled
    faults: dict[str, int]  # the agent's count of what it injected
    warnings: dict[str, int]  # the proxy's log: warning events
    errors: dict[str, int]  # the proxy's log: error events and lines not JSON
    exit_code: int | None  # the proxy's, after SIGTERM


def soak(args: argparse.Namespace, root: Path) -> Outcome:
    ports = {name: free_port() for name in ("legacy", "agent", "proxy", "admin")}
    with ExitStack() as stack:
        legacy = _module("bench.soak_legacy", "--port", ports["legacy"])
        start(stack, root, "legacy", legacy, ports["legacy"])
        agent = _module(
            "bench.faulty_agent", "--port", ports["agent"], "--slow", SLOW, "--seed", args.seed
        )
        start(stack, root, "agent", agent, ports["agent"])
        conf = root / "proxy.yaml"
        settings = proxy_conf(ports["proxy"], ports["admin"], ports["legacy"], ports["agent"])
        conf.write_text(yaml.safe_dump(settings))
        cli = str(Path(sys.executable).parent / "shadow-proxy")
        proxy = start(stack, root, "proxy", [cli, "run", "--config", str(conf)], ports["proxy"])
        print(f"proxy pid {proxy.pid}, port {ports['proxy']}, metrics "
              f"http://{LOOPBACK}:{ports['admin']}/metrics", flush=True)  # fmt: skip
        tally, series = uvloop.run(drive(args, ports["proxy"], proxy.pid))
        if proxy.popen.poll() is not None:
            raise StartError(f"the proxy exited with {proxy.popen.returncode}:\n{proxy.tail()}")
        scrape = settled(ports["admin"])
        url = f"http://{LOOPBACK}:{ports['agent']}{STATS_PATH}"
        with urllib.request.urlopen(url, timeout=10) as response:
            faults = json.loads(response.read())
        proxy.stop(timeout=20)
        warnings, errors = log_events(proxy.log)
        return Outcome(tally, series, scrape, faults, warnings, errors, proxy.popen.returncode)


def _module(name: str, *args: object) -> list[str]:
    """``python -m name args...``, with floats written plainly."""
    return [
        sys.executable,
        "-m",
        name,
        *(f"{a:g}" if isinstance(a, float) else str(a) for a in args),
    ]


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    signal.signal(signal.SIGTERM, _terminate)
    print(f"soak: {args.duration:g} s at {args.rate:g} req/s, warm-up {args.warmup:g} s")
    try:
        with tempfile.TemporaryDirectory(prefix="shadow-proxy-soak-") as tmp:
            got = soak(args, Path(tmp))
    except KeyboardInterrupt:
        print("interrupted: every process was stopped", file=sys.stderr)
        return 130
    except (StartError, OSError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    figures = summarize(args.duration, args.rate, args.warmup, got.tally, got.series)
    figures |= {
        "seed": args.seed,
        "agent_faults": got.faults,
        "proxy": account(got.scrape, list(got.tally.routes)) | {"log_warnings": got.warnings},
    }
    found = [
        checks.client(got.tally),
        checks.memory(figures["memory"]["growth_pct"], args.max_growth),
        *checks.metrics(got.scrape, got.tally),
        checks.fallbacks(got.tally),
        checks.injected(got.faults),
        checks.proxy_log(got.errors),
        checks.proxy_exit(got.exit_code),
    ]
    print(render(figures, found))
    if args.json is not None:
        write_json(args.json, figures, found)
        print(f"JSON: {args.json}")
    return 0 if all(c.passed for c in found) else 1


if __name__ == "__main__":
    sys.exit(main())
