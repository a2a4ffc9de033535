"""SIGTERM under continuous load: nothing accepted before the signal is lost.

The proxy runs as users run it (the CLI), with a slow-ish legacy so requests
are always in flight and an agent that never answers so shadow work is always
pending when the signal lands.
"""

from __future__ import annotations

import asyncio
import signal
import time
from dataclasses import dataclass, field
from pathlib import Path

import aiohttp
import pytest
from fakes import Fake
from test_cli import Running, start_cli

pytestmark = pytest.mark.e2e
WORKERS = 12


@dataclass
class Outcome:
    started: float
    status: int | None = None  # None: no HTTP answer (connection refused or closed)
    error: str = ""


@dataclass
class Load:
    """Closed-loop clients on keep-alive connections, each request timed."""

    url: str
    outcomes: list[Outcome] = field(default_factory=list)
    stop: bool = False

    async def worker(self, i: int) -> None:
        async with aiohttp.ClientSession() as http:
            n = 0
            while not self.stop:
                outcome = Outcome(time.monotonic())
                self.outcomes.append(outcome)
                try:
                    async with http.get(f"{self.url}/api/w{i}/{n}") as response:
                        await response.read()
                        outcome.status = response.status
                except aiohttp.ClientError as exc:
                    outcome.error = type(exc).__name__
                    await asyncio.sleep(0.01)  # the listener is gone; do not spin
                n += 1


async def sigterm_under_load(proc: Running, signal_after: float = 1.5) -> tuple[Load, float]:
    """Load, then SIGTERM mid-way, until the process exits (killed if the test
    fails first); the load, and when the signal was sent. Events are read into
    ``proc.events`` meanwhile."""
    reader = asyncio.create_task(proc.read_events())
    load = Load(proc.proxy)
    try:
        signalled = await _run_until_exit(proc, load, signal_after)
    finally:
        if proc.process.returncode is None:
            proc.process.kill()
            await proc.process.wait()
        await reader
    return load, signalled


async def _run_until_exit(proc: Running, load: Load, signal_after: float) -> float:
    workers = [asyncio.create_task(load.worker(i)) for i in range(WORKERS)]
    await asyncio.sleep(signal_after)
    signalled = time.monotonic()
    proc.process.send_signal(signal.SIGTERM)
    async with aiohttp.ClientSession() as http:
        # The signal lands asynchronously; readiness must flip as soon as the
        # proxy handles it (well within this generous bound on a loaded box).
        deadline = time.monotonic() + 5
        while True:
            async with http.get(f"{proc.admin}/readyz") as ready:
                if ready.status == 503:
                    assert (await ready.json())["status"] == "draining"
                    break
            assert time.monotonic() < deadline, "readiness still 200 5 s after SIGTERM"
            await asyncio.sleep(0.01)
    await asyncio.wait_for(proc.process.wait(), timeout=30)
    load.stop = True
    await asyncio.gather(*workers)
    return signalled


@pytest.mark.parametrize("drain_delay", ["0s", "500ms"])
async def test_sigterm_under_load_completes_every_accepted_request_and_exits_0(
    legacy: Fake, agent: Fake, tmp_path: Path, drain_delay: str
) -> None:
    legacy.delay = 0.05  # requests are always in flight
    agent.delay = 3600  # shadow work is always pending
    config = {
        "listen": {"host": "127.0.0.1", "port": 0},
        "admin": {"port": 0},
        "backends": {"legacy": {"url": legacy.url}, "agent": {"url": agent.url}},
        "shadow": {"timeout": "60s", "max_in_flight": 32},
        "routes": [{"name": "api", "match": {"prefix": "/api/"}, "shadow": {"enabled": True}}],
        "logging": {"format": "json"},
        "shutdown": {"drain_delay": drain_delay, "timeout": "10s", "shadow_grace": "1s"},
    }
    proc = await start_cli(config, tmp_path)
    load, signalled = await sigterm_under_load(proc)
    assert proc.process.returncode == 0

    before = [o for o in load.outcomes if o.started < signalled - 0.01]
    answered = [o for o in load.outcomes if o.status is not None]
    assert len(before) > 100, "the load did not get going"
    # Every HTTP answer, before the signal or during the drain, is legacy's 200:
    # a drain never turns into a 5xx.
    assert {o.status for o in answered} == {200}
    lost = [o for o in before if o.status != 200]
    if drain_delay == "0s":
        # Without a drain delay the listener closes at once. In-flight requests
        # finish (none was lost in trials); the one race left is a request
        # written onto a keep-alive connection as it closes: a connection
        # error at the very end, never an HTTP error. drain_delay closes it.
        assert all(o.error and o.started > signalled - 2 for o in lost), lost
        assert len(lost) <= WORKERS
    else:
        assert lost == [], "a request sent before SIGTERM was lost during the drain delay"

    events = [e["event"] for e in proc.events]
    assert events.index("draining") < events.index("stopped")
    drained = next(e for e in proc.events if e["event"] == "shadow_drained")
    assert drained["pending"] > 0
    assert drained["cancelled"] == drained["pending"]  # the agent never answers
    assert "Traceback" not in str(proc.events)
