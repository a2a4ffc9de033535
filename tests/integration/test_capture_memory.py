"""shadow.max_capture_memory: the bodies all shadow jobs hold together are
bounded. A job whose bodies do not fit is dropped and counted, its client
never notices, and every byte comes back to the budget when the job ends."""

from __future__ import annotations

import asyncio
from typing import Any

from aiohttp import web
from conftest import Proxy, ProxyFactory
from fakes import Fake

from proxy.app import CORE
from proxy.capture import CaptureBudget
from proxy.settings import settings_from

CHUNK = b"s" * 8192


def config(legacy_url: str, agent: Fake, **shadow: Any) -> dict[str, Any]:
    return {
        "backends": {"legacy": {"url": legacy_url}, "agent": {"url": agent.url}},
        "shadow": shadow,
        "routes": [
            {
                "name": "api",
                "match": {"prefix": "/api/"},
                "shadow": {"enabled": True},
                "side_effect_free": True,
                "compare": ["status"],  # the agent's body differs; agreement is on status
            }
        ],
    }


async def streaming_legacy(aiohttp_server: Any) -> str:
    """A legacy answering ``/api/body?kib=N`` with N KiB in 8 KiB writes a moment
    apart, so the answer streams: its body is not all there with its head."""

    async def body(request: web.Request) -> web.StreamResponse:
        response = web.StreamResponse(headers={"Content-Type": "application/octet-stream"})
        await response.prepare(request)
        for _ in range(int(request.query["kib"]) // 8):
            await response.write(CHUNK)
            await asyncio.sleep(0.005)
        await response.write_eof()
        return response

    app = web.Application()
    app.router.add_get("/api/body", body)
    server = await aiohttp_server(app, host="127.0.0.1")
    return str(server.make_url("")).rstrip("/")


async def fetch(proxy: Proxy, path: str, data: bytes | None = None) -> bytes:
    method = "POST" if data is not None else "GET"
    async with proxy.client.request(method, path, data=data) as response:
        assert response.status == 200
        assert response.headers["X-Served-By"] == "legacy"
        return await response.read()


def budget(proxy: Proxy) -> CaptureBudget:
    shadow = proxy.client.app[CORE].shadow
    assert shadow is not None
    return shadow.budget


async def test_streamed_answers_past_the_budget_are_dropped_and_clients_get_them_whole(
    make_proxy: ProxyFactory, aiohttp_server: Any, agent: Fake
) -> None:
    """One open job holds 40 KiB of a 64 KiB budget: five more 40 KiB answers
    streamed meanwhile are dropped_memory, each client still gets all of its
    answer, and once the jobs end the budget is empty and shadows compare again."""
    url = await streaming_legacy(aiohttp_server)
    agent.delay = 1.0  # jobs stay open
    proxy = await make_proxy(
        **config(url, agent, capture_limit="64KiB", max_capture_memory="64KiB")
    )
    assert await fetch(proxy, "/api/body?kib=40") == CHUNK * 5
    answers = await asyncio.gather(*(fetch(proxy, "/api/body?kib=40") for _ in range(5)))
    assert answers == [CHUNK * 5] * 5
    await proxy.settle()
    assert proxy.outcome("dropped_memory") == 5
    assert proxy.verdict("match") == 1
    assert proxy.verdict("skipped") == 5
    assert len(agent.seen) == 1  # with no legacy copy to compare, the agent is not called
    assert budget(proxy).used == 0

    agent.delay = 0
    assert await fetch(proxy, "/api/body?kib=40") == CHUNK * 5
    await proxy.settle()
    assert proxy.verdict("match") == 2
    assert proxy.outcome("dropped_memory") == 5
    assert budget(proxy).used == 0


async def test_one_answer_over_the_capture_limit_is_skipped_size_not_dropped_memory(
    make_proxy: ProxyFactory, aiohttp_server: Any, agent: Fake
) -> None:
    """The bytes of a copy dropped for its size go back to the budget at once,
    so the agent's answer still fits and the reason counted is the size."""
    url = await streaming_legacy(aiohttp_server)
    agent.delay = 0.3  # legacy's copy is dropped before the agent answers
    agent.body = b"a" * 16384
    proxy = await make_proxy(
        **config(url, agent, capture_limit="64KiB", max_capture_memory="64KiB")
    )
    assert await fetch(proxy, "/api/body?kib=104") == CHUNK * 13
    await proxy.settle()
    assert proxy.outcome("skipped_size") == 1
    assert proxy.outcome("dropped_memory") == 0
    assert proxy.verdict("skipped") == 1
    assert budget(proxy).used == 0


async def test_request_bodies_past_the_budget_are_dropped_before_the_agent_is_called(
    make_proxy: ProxyFactory, legacy: Fake, agent: Fake
) -> None:
    """Two 600-byte uploads against a 1 KiB budget: one is mirrored, the other
    is dropped_memory without an agent call; legacy gets both bodies whole."""
    agent.delay = 0.5
    proxy = await make_proxy(
        **config(legacy.url, agent, capture_limit="1KiB", max_capture_memory="1KiB")
    )
    bodies = [b"1" * 600, b"2" * 600]
    answers = await asyncio.gather(*(fetch(proxy, "/api/classify", body) for body in bodies))
    assert answers == [legacy.body] * 2
    await proxy.settle()
    assert proxy.outcome("dropped_memory") == 1
    assert proxy.outcome("sent") == 1
    assert len(agent.seen) == 1
    assert agent.seen[0].body in bodies
    assert sorted(seen.body for seen in legacy.seen) == bodies
    assert proxy.verdict("match") == 1
    assert budget(proxy).used == 0  # the dropped job's answer is not held after it ended

    agent.delay = 0
    await fetch(proxy, "/api/classify", b"3" * 600)
    await proxy.settle()
    assert proxy.verdict("match") == 2
    assert budget(proxy).used == 0


async def test_whole_answers_past_the_budget_are_dropped(
    make_proxy: ProxyFactory, legacy: Fake, agent: Fake
) -> None:
    """Small answers arrive with their head and are kept in one piece, or not at all."""
    legacy.body = b'{"pad": "' + b"p" * 590 + b'"}'
    agent.delay = 0.5
    proxy = await make_proxy(
        **config(legacy.url, agent, capture_limit="1KiB", max_capture_memory="1KiB")
    )
    answers = await asyncio.gather(*(fetch(proxy, "/api/x") for _ in range(2)))
    assert answers == [legacy.body] * 2
    await proxy.settle()
    assert proxy.outcome("dropped_memory") == 1
    assert proxy.verdict("match") == 1
    assert proxy.verdict("skipped") == 1
    assert budget(proxy).used == 0


async def test_a_reload_changes_the_memory_bound_in_force(
    make_proxy: ProxyFactory, legacy: Fake, agent: Fake
) -> None:
    """Raised from 1 KiB to 2 KiB, the same two answers both fit; unset, the
    default of four capture limits applies."""
    legacy.body = b'{"pad": "' + b"p" * 590 + b'"}'
    agent.delay = 0.5
    cfg = config(legacy.url, agent, capture_limit="1KiB", max_capture_memory="1KiB")
    proxy = await make_proxy(**cfg)
    await asyncio.gather(*(fetch(proxy, "/api/x") for _ in range(2)))
    await proxy.settle()
    assert proxy.outcome("dropped_memory") == 1

    core = proxy.client.app[CORE]
    cfg["shadow"]["max_capture_memory"] = "2KiB"
    assert core.apply(settings_from(cfg)) == []
    await asyncio.gather(*(fetch(proxy, "/api/x") for _ in range(2)))
    await proxy.settle()
    assert proxy.outcome("dropped_memory") == 1  # none more
    assert proxy.verdict("match") == 3

    del cfg["shadow"]["max_capture_memory"]
    core.apply(settings_from(cfg))
    assert budget(proxy).limit == 4 * 1024
