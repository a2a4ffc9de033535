"""``shadow-proxy demo``: a legacy service, an agent, the proxy and traffic, in
one process, with a live summary every few seconds.

Everything listens on loopback. The backends take free ports; the proxy and
admin ports come from the demo config (or ``--port``/``--admin-port``).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import sys
import time
from dataclasses import dataclass
from typing import Any, TextIO

from aiohttp import web

from proxy.demo.rollout_view import render_rollout
from proxy.demo.services import agent_app, legacy_app
from proxy.demo.summary import Snapshot, render, snapshot
from proxy.demo.traffic import TrafficStats, generate
from proxy.server import ProxyServer, settle_heap
from proxy.settings import Settings


@dataclass(frozen=True, slots=True)
class DemoOptions:
    duration: float | None = None
    rate: float = 25.0
    interval: float = 5.0
    port: int | None = None
    admin_port: int | None = None
    seed: int = 7
    scenario: str | None = None

    @classmethod
    def from_args(cls, args: argparse.Namespace) -> DemoOptions:
        defaults = cls()
        return cls(
            duration=args.duration,
            rate=args.rate or defaults.rate,
            interval=args.interval or defaults.interval,
            port=args.port,
            admin_port=args.admin_port,
            scenario=args.scenario,
        )


async def _start(app: web.Application) -> tuple[web.AppRunner, str]:
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    host, port = runner.addresses[0][:2]
    return runner, f"http://{host}:{port}"


def demo_settings(settings: Settings, options: DemoOptions, legacy: str, agent: str) -> Settings:
    """Point the config at the demo's own backends and chosen ports."""
    backends = settings.backends
    agent_backend = backends.agent or backends.legacy
    update: dict[str, Any] = {
        "backends": backends.model_copy(
            update={
                "legacy": backends.legacy.model_copy(update={"url": legacy}),
                "agent": agent_backend.model_copy(update={"url": agent}),
            }
        ),
    }
    if options.scenario == "flaky":  # serve live traffic from the start, so fallbacks show
        update["routes"] = tuple(
            r.model_copy(update={"rollout": r.rollout.model_copy(update=FLAKY_SHARE)})
            if r.rollout is not None
            else r
            for r in settings.routes
        )
    if options.port is not None:
        update["listen"] = settings.listen.model_copy(update={"port": options.port})
    if options.admin_port is not None:
        update["admin"] = settings.admin.model_copy(update={"port": options.admin_port})
    return settings.model_copy(update=update)


# How the demo agent behaves in each --scenario.
SCENARIOS: dict[str, dict[str, float]] = {
    "good": {"error_rate": 0.002, "wrong_label_rate": 0.004},  # climbs to 100%
    "bad": {"error_rate": 0.01, "wrong_label_rate": 0.3},  # rolled back on agreement
    "flaky": {"error_rate": 0.45, "wrong_label_rate": 0.02},  # fallbacks, the breaker
}


# flaky: a manual 50% share, so fallbacks and the breaker act on live traffic.
FLAKY_SHARE = {"mode": "manual", "percent": 50.0}


def _rollout(server: ProxyServer) -> str:
    """Stage, share, gates and fallbacks per route, plus why it is where it is."""
    lines = [render_rollout(server.metrics.registry)]
    for name, rt in sorted(server.core.routing.runtimes.items()):
        if rt.policy is not None:
            lines.append(f"  why        {name}: {rt.state.reason}")
    return "\n".join(line for line in lines if line)


def _banner(server: ProxyServer, options: DemoOptions, out: TextIO) -> None:
    until = f"for {options.duration:g}s" if options.duration else "until Ctrl-C"
    print(
        f"shadow-proxy demo: legacy classifier + agent + proxy, {options.rate:g} req/s {until}\n"
        f"  proxy    {server.proxy_url}   try: curl -s -XPOST {server.proxy_url}/api/classify"
        ' -d \'{"ticket_id":"T-1","subject":"refund please","body":"charged twice"}\'\n'
        f"  metrics  {server.admin_url}/metrics\n"
        f"  health   {server.admin_url}/healthz  {server.admin_url}/readyz\n",
        file=out,
        flush=True,
    )


async def run_demo(
    settings: Settings, options: DemoOptions, stop: asyncio.Event, out: TextIO = sys.stdout
) -> None:
    legacy_runner, legacy_url = await _start(legacy_app(options.seed))
    behaviour = SCENARIOS.get(options.scenario or "", {})
    agent_runner, agent_url = await _start(agent_app(options.seed + 1, **behaviour))
    server = ProxyServer(demo_settings(settings, options, legacy_url, agent_url))
    try:
        await server.start()
    except OSError:
        await legacy_runner.cleanup()
        await agent_runner.cleanup()
        print("hint: another process holds the port; try --port 0", file=sys.stderr)
        raise
    _banner(server, options, out)
    settle_heap()

    stats = TrafficStats()
    traffic_stop = asyncio.Event()
    traffic = asyncio.create_task(
        generate(
            server.proxy_url, rate=options.rate, stop=traffic_stop, seed=options.seed, stats=stats
        )
    )
    started = time.monotonic()
    deadline = started + options.duration if options.duration else None
    before: Snapshot | None = None
    last = started
    try:
        while not stop.is_set():
            wait = options.interval
            if deadline is not None:
                wait = min(wait, max(0.0, deadline - time.monotonic()))
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), timeout=wait)
            now = time.monotonic()
            if deadline is not None and now >= deadline:
                break
            current = snapshot(server.metrics.registry)
            print(render(current, before, now - last, stats), file=out)
            print(_rollout(server) + "\n", file=out, flush=True)
            before, last = current, now
    finally:
        traffic_stop.set()
        await traffic
        await server.stop()
        await agent_runner.cleanup()
        await legacy_runner.cleanup()
        total = snapshot(server.metrics.registry)
        print("final totals:", file=out)
        print(render(total, None, time.monotonic() - started, stats), file=out)
        print(_rollout(server), file=out, flush=True)
