"""A route's shadow token budget, through the proxy: once the agent's shadow answers
have spent it, shadow copies are dropped (``dropped_budget``) and the agent gets
none, live clients notice nothing, and shadowing resumes as the allowance refills.

The budget refills continuously at ``token_budget / 60`` tokens a second. With
6000 tokens a minute (100 a second), an answer that costs 200 tokens more than
the whole budget leaves it 2 s short: long enough to see drops, short enough to
see the refill, with no clock patched and no timing asserted.
"""

from __future__ import annotations

import asyncio
from typing import Any

import structlog
from agents import FakeAgent, start_agent
from conftest import Proxy, ProxyFactory
from fakes import Fake
from prometheus_client import generate_latest
from prometheus_client.parser import text_string_to_metric_families
from structlog.testing import capture_logs

from proxy.app import CORE
from proxy.settings import settings_from

BUDGET = 6000
ROUTE = "llm"
REMAINING = "shadow_proxy_shadow_token_budget_remaining"


def config(
    legacy: Fake, agent: FakeAgent, budget: int | None = BUDGET, **shadow: Any
) -> dict[str, Any]:
    return {
        "backends": {"legacy": {"url": legacy.url}, "agent": {"url": agent.url}},
        "routes": [
            {
                "name": ROUTE,
                "match": {"prefix": "/v1/"},
                "side_effect_free": True,
                "shadow": {"enabled": True, "token_budget": budget, **shadow},
            },
            {  # no budget: never paused by the other route's
                "name": "free",
                "match": {"prefix": "/free/"},
                "side_effect_free": True,
                "shadow": {"enabled": True},
            },
        ],
    }


def costs(agent: FakeAgent, tokens: int) -> None:
    """Each of the agent's answers from now on reports ``tokens`` in all."""
    agent.input_tokens, agent.output_tokens = tokens - tokens // 4, tokens // 4


async def ask(proxy: Proxy, legacy: Fake, path: str = "/v1/chat/completions") -> None:
    """One client request: always legacy's answer, whatever the shadow side does."""
    body = {"model": "m", "messages": [{"role": "user", "content": "hi"}]}
    response = await proxy.client.post(path, json=body)
    assert response.status == 200
    assert await response.read() == legacy.body
    await proxy.settle()


def remaining(proxy: Proxy) -> float:
    return float(proxy.value(REMAINING, route=ROUTE))


async def test_a_spent_budget_pauses_shadowing_until_it_refills(
    make_proxy: ProxyFactory, legacy: Fake, aiohttp_server: Any
) -> None:
    """Past the budget, shadow copies are dropped and counted while clients get their
    answers; the refill brings them back, and the remaining gauge follows."""
    agent = await start_agent(aiohttp_server)
    with capture_logs(processors=[structlog.contextvars.merge_contextvars]) as logs:
        proxy = await make_proxy(**config(legacy, agent))
        assert remaining(proxy) == BUDGET  # a new budget starts full
        costs(agent, BUDGET + 200)
        await ask(proxy, legacy)
        assert proxy.outcome("completed", ROUTE) == 1
        assert remaining(proxy) == 0

        costs(agent, 20)
        for _ in range(3):
            await ask(proxy, legacy)
        assert proxy.outcome("dropped_budget", ROUTE) == 3
        assert len(agent.seen) == 1  # the agent got none of them
        await ask(proxy, legacy, "/free/x")  # another route's shadows go on
        assert proxy.outcome("sent", "free") == 1

        async with asyncio.timeout(15):  # ~2 s of refill
            while proxy.outcome("sent", ROUTE) < 2:
                await asyncio.sleep(0.2)
                await ask(proxy, legacy)
        assert len(agent.seen) == 2
        async with asyncio.timeout(15):  # a reading taken as the level climbs again
            while remaining(proxy) == 0:
                await asyncio.sleep(0.2)
                await ask(proxy, legacy)
        assert 0 < remaining(proxy) < BUDGET

    events = [e["event"] for e in logs if e["event"].startswith("shadow_budget_")]
    assert events == ["shadow_budget_exhausted", "shadow_budget_restored"]
    exhausted = next(e for e in logs if e["event"] == "shadow_budget_exhausted")
    assert (exhausted["route"], exhausted["per_minute"]) == (ROUTE, BUDGET)
    assert "trace_id" in exhausted  # it names the request that found the budget spent


async def test_a_burst_cannot_overshoot_the_budget_by_more_than_one_estimate(
    make_proxy: ProxyFactory, legacy: Fake, aiohttp_server: Any
) -> None:
    """Concurrent requests each reserve what a call has been costing, so a burst
    admits only as many as the budget covers, not all of them."""
    agent = await start_agent(aiohttp_server)
    costs(agent, 1000)
    proxy = await make_proxy(**config(legacy, agent))
    await ask(proxy, legacy)  # learns that a call costs 1000: 5000 left, five calls' worth
    body = {"model": "m", "messages": [{"role": "user", "content": "hi"}]}
    responses = await asyncio.gather(
        *(proxy.client.post("/v1/chat/completions", json=body) for _ in range(20))
    )
    assert [r.status for r in responses] == [200] * 20
    await proxy.settle()
    sent = proxy.outcome("sent", ROUTE) - 1
    assert 5 <= sent <= 6  # refill during the burst may add one
    assert proxy.outcome("dropped_budget", ROUTE) == 20 - sent
    assert len(agent.seen) == 1 + sent


async def test_answers_without_usage_keep_the_reservation_as_their_cost(
    make_proxy: ProxyFactory, legacy: Fake, aiohttp_server: Any
) -> None:
    """An answer that does not say what it cost is charged what calls have been
    costing, so an agent cannot escape the budget by not reporting usage."""
    agent = await start_agent(aiohttp_server)
    costs(agent, 2500)
    proxy = await make_proxy(**config(legacy, agent))
    await ask(proxy, legacy)
    agent.usage = False
    for _ in range(4):
        await ask(proxy, legacy)
    assert proxy.outcome("completed", ROUTE) == 3  # 6000 - 2500 - 2500 > 0, then spent
    assert proxy.outcome("dropped_budget", ROUTE) == 2
    assert proxy.value("shadow_proxy_agent_usage_missing_total", route=ROUTE, mode="shadow") == 2


async def test_a_reload_keeps_a_spent_budget_and_a_new_allowance_starts_full(
    make_proxy: ProxyFactory, legacy: Fake, aiohttp_server: Any
) -> None:
    """As documented in Shadow._budget_routes: a reload that leaves the allowance
    alone keeps the level (no free refill by touching the config); a changed
    allowance starts a full bucket; a removed one drops its gauge."""
    agent = await start_agent(aiohttp_server)
    costs(agent, BUDGET * 5)  # a 4-minute hole
    proxy = await make_proxy(**config(legacy, agent))
    core = proxy.client.app[CORE]
    await ask(proxy, legacy)
    costs(agent, 20)

    assert core.apply(settings_from(config(legacy, agent, rate_limit=50))) == []
    await ask(proxy, legacy)
    assert proxy.outcome("dropped_budget", ROUTE) == 1
    assert remaining(proxy) == 0

    core.apply(settings_from(config(legacy, agent, budget=BUDGET * 2)))
    assert remaining(proxy) == BUDGET * 2
    await ask(proxy, legacy)
    assert proxy.outcome("completed", ROUTE) == 2
    assert 0 < remaining(proxy) < BUDGET * 2

    core.apply(settings_from(config(legacy, agent, budget=None)))
    assert ROUTE not in _samples(proxy, REMAINING)  # no stale level left behind
    for _ in range(3):
        await ask(proxy, legacy)
    assert proxy.outcome("completed", ROUTE) == 5


def _samples(proxy: Proxy, name: str) -> list[str]:
    """The ``route`` label of each sample of ``name``."""
    text = generate_latest(proxy.metrics.registry).decode()
    return [
        sample.labels["route"]
        for family in text_string_to_metric_families(text)
        for sample in family.samples
        if sample.name == name
    ]
