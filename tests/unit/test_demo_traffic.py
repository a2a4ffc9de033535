"""Demo traffic generator against real aiohttp servers on 127.0.0.1."""

from __future__ import annotations

import asyncio
import socket
from dataclasses import dataclass, field

from aiohttp import web
from pytest_aiohttp import AiohttpServer

from proxy.demo.traffic import MAX_OUTSTANDING, TrafficStats, generate


@dataclass
class Seen:
    requests: list[tuple[str, str, str]] = field(default_factory=list)


def recording_app(seen: Seen, status: int = 200, hang: bool = False) -> web.Application:
    async def handler(request: web.Request) -> web.Response:
        await request.read()
        seen.requests.append((request.method, request.path, request.headers["X-User-Id"]))
        if hang:
            await asyncio.Event().wait()
        return web.json_response({"ok": status < 400}, status=status)

    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", handler)
    return app


async def run_for(url: str, seconds: float, **kwargs: object) -> TrafficStats:
    stop = asyncio.Event()
    task = asyncio.create_task(generate(url, stop=stop, **kwargs))  # type: ignore[arg-type]
    await asyncio.sleep(seconds)
    stop.set()
    return await task


async def test_rate_mix_and_counts_match_what_the_server_saw(
    aiohttp_server: AiohttpServer,
) -> None:
    seen = Seen()
    server = await aiohttp_server(recording_app(seen))
    live = TrafficStats()
    stats = await run_for(str(server.make_url("/")), 1.0, rate=100, seed=1, stats=live)
    assert stats is live
    assert 80 <= stats.sent <= 110
    assert len(seen.requests) == stats.sent == stats.ok == stats.finished
    assert stats.skipped == stats.failed == stats.client_errors == stats.server_errors == 0
    posts = [r for r in seen.requests if r[0] == "POST"]
    assert {p for _, p, _ in posts} == {"/api/classify"}
    gets = [r for r in seen.requests if r[0] == "GET"]
    assert all(p.startswith("/api/tickets/T-") for _, p, _ in gets)
    assert 0.6 <= len(posts) / stats.sent <= 0.9
    users = {u for _, _, u in seen.requests}
    assert all(u.startswith("user-") for u in users)
    assert len(users) > 40


async def test_same_seed_same_request_sequence(aiohttp_server: AiohttpServer) -> None:
    runs = []
    for _ in range(2):
        seen = Seen()
        server = await aiohttp_server(recording_app(seen))
        await run_for(str(server.make_url("/")), 0.3, rate=50, seed=9)
        runs.append(sorted(seen.requests))
    common = min(len(r) for r in runs) - 2  # the last tick may differ by timing
    assert common > 5
    # Each request is its own task, so arrival order can vary; the multiset cannot.
    assert len(set(runs[0]) & set(runs[1])) >= common


async def test_error_statuses_are_counted_not_raised(aiohttp_server: AiohttpServer) -> None:
    for status, attr in ((503, "server_errors"), (404, "client_errors")):
        server = await aiohttp_server(recording_app(Seen(), status=status))
        stats = await run_for(str(server.make_url("/")), 0.3, rate=50)
        assert stats.sent > 5
        assert getattr(stats, attr) == stats.sent == stats.finished


async def test_connection_refused_counts_as_failed() -> None:
    with socket.socket() as sock:  # find a port nobody listens on
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    stats = await run_for(f"http://127.0.0.1:{port}", 0.3, rate=50)
    assert stats.sent > 5
    assert stats.failed == stats.sent


async def test_outstanding_requests_are_bounded(aiohttp_server: AiohttpServer) -> None:
    seen = Seen()
    server = await aiohttp_server(recording_app(seen, hang=True))
    stats = await run_for(str(server.make_url("/")), 0.5, rate=400, drain_s=0.1)
    assert stats.sent == MAX_OUTSTANDING
    assert stats.skipped > 50
    assert stats.failed == stats.sent  # cancelled after the drain timeout
