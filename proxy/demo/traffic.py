"""Open-loop demo traffic: a steady request rate, whatever the proxy's latency.

A closed-loop client (send, wait, send) slows down when the server slows down and
so hides exactly the latency problems the demo wants to show. This generator fires
requests on a fixed schedule, each in its own task, and bounds the number in flight
instead: when the bound is hit the request is skipped and counted, never queued.

The request mix (which ticket, which user, classify or lookup) is drawn from a
`random.Random(seed)` in the scheduling loop only, so a seed gives the same sequence
of requests regardless of how the responses interleave.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
from dataclasses import dataclass
from typing import Any, Final

import aiohttp

from proxy.demo.tickets import ticket_examples

MAX_OUTSTANDING: Final = 64
USERS: Final = 200
CLASSIFY_SHARE: Final = 0.75
REQUEST_TIMEOUT_S: Final = 10.0
# If the loop falls behind (e.g. a stalled event loop), catch up at most this much
# backlog in a burst rather than flooding the proxy with everything missed.
MAX_BACKLOG_S: Final = 1.0


@dataclass
class TrafficStats:
    """What the generator did; mutable so a live summary can read it while it runs.

    Every sent request ends as exactly one of ok (2xx/3xx), client_errors (4xx),
    server_errors (5xx) or failed (connection error, timeout, cancelled at the end).
    `skipped` requests were never sent because too many were outstanding.
    """

    sent: int = 0
    ok: int = 0
    client_errors: int = 0
    server_errors: int = 0
    failed: int = 0
    skipped: int = 0

    @property
    def finished(self) -> int:
        return self.ok + self.client_errors + self.server_errors + self.failed


@dataclass(frozen=True)
class _Request:
    method: str
    path: str
    body: dict[str, Any] | None
    headers: dict[str, str]


def _next_request(rng: random.Random) -> _Request:
    """Draw one request; the user id is what the proxy's sticky sampling keys on."""
    headers = {"X-User-Id": f"user-{rng.randrange(USERS):03d}"}
    if rng.random() < CLASSIFY_SHARE:
        return _Request("POST", "/api/classify", ticket_examples(rng), headers)
    return _Request("GET", f"/api/tickets/T-{rng.randrange(100_000, 1_000_000)}", None, headers)


async def _send(
    session: aiohttp.ClientSession, base: str, req: _Request, stats: TrafficStats
) -> None:
    """Send one request and classify the outcome; never raises except on cancellation."""
    try:
        async with session.request(
            req.method,
            base + req.path,
            json=req.body,
            headers=req.headers,
            allow_redirects=False,
        ) as resp:
            await resp.read()
            status = resp.status
    except asyncio.CancelledError:
        stats.failed += 1
        raise
    except Exception:  # connection refused/reset, timeout, bad URL: all are data here
        stats.failed += 1
        return
    if status >= 500:
        stats.server_errors += 1
    elif status >= 400:
        stats.client_errors += 1
    else:
        stats.ok += 1


async def _wait_or_stop(stop: asyncio.Event, delay: float) -> None:
    """Sleep `delay` seconds but wake at once when `stop` is set."""
    with contextlib.suppress(TimeoutError):
        async with asyncio.timeout(delay):
            await stop.wait()


async def generate(
    url: str,
    *,
    rate: float,
    stop: asyncio.Event,
    seed: int = 0,
    session: aiohttp.ClientSession | None = None,
    drain_s: float = 2.0,
    stats: TrafficStats | None = None,
) -> TrafficStats:
    """Send about `rate` requests per second to `url` until `stop` is set.

    Outstanding requests get `drain_s` seconds to finish afterwards; the rest are
    cancelled and counted as failed. A session passed in is left open; one created
    here is closed. Pass `stats` to watch the counters live while this runs.
    """
    if rate <= 0:
        raise ValueError(f"rate must be positive, got {rate!r}")
    stats = TrafficStats() if stats is None else stats
    rng = random.Random(seed)
    base = url.rstrip("/")
    own_session = session is None
    if session is None:
        session = aiohttp.ClientSession(
            timeout=aiohttp.ClientTimeout(total=REQUEST_TIMEOUT_S),
            connector=aiohttp.TCPConnector(limit=MAX_OUTSTANDING),
        )
    pending: set[asyncio.Task[None]] = set()
    loop = asyncio.get_running_loop()
    interval = 1.0 / rate
    next_at = loop.time()
    try:
        while not stop.is_set():
            delay = next_at - loop.time()
            if delay > 0:
                await _wait_or_stop(stop, delay)
                continue
            if -delay > MAX_BACKLOG_S:
                next_at = loop.time()
            next_at += interval
            await asyncio.sleep(0)  # never starve the loop, even while catching up
            req = _next_request(rng)
            if len(pending) >= MAX_OUTSTANDING:
                stats.skipped += 1
                continue
            stats.sent += 1
            task = asyncio.create_task(_send(session, base, req, stats))
            pending.add(task)
            task.add_done_callback(pending.discard)
        if pending:
            await asyncio.wait(set(pending), timeout=drain_s)
    finally:
        leftover = set(pending)
        for task in leftover:
            task.cancel()
        if leftover:
            await asyncio.gather(*leftover, return_exceptions=True)
        if own_session:
            await session.close()
    return stats
