"""Agent faults while live traffic flows: whether the agent only shadows or
serves the traffic itself, every client gets legacy's 200, the metrics count
the fault for what it is, and nothing leaks."""

from __future__ import annotations

import time
from collections import Counter
from dataclasses import dataclass
from typing import Any

import faults
import pytest
from conftest import Proxy, ProxyFactory
from fakes import Fake, Handler, RawServer
from leaks import MIB, Baseline, peak_growth, watch

from proxy.app import CORE
from proxy.breaker import BreakerState

N = 24  # concurrent requests in one burst
LEGACY_BODY = b'{"from": "legacy"}'
MIN_REQUESTS = 20  # the breaker's default: it cannot open on fewer results
# N answers held whole (1 MiB each, the fallback buffer) plus buffers: a proxy that
# kept a 20 MiB body would need N times 20 MiB.
HELD_AT_MOST = 64 * MIB


@dataclass(frozen=True)
class Fault:
    name: str
    kind: str | None  # upstream_errors_total{kind}; None: the agent did answer
    shadow: str  # the shadow outcome it ends in
    verdict: str  # how its comparison is counted
    fallback: str  # the fallback reason when the agent serves live
    breaks: bool = True  # counts as an agent failure (the breaker opens)


FAULTS = [
    Fault("slow", "timeout", "timeout", "error", "timeout"),
    Fault("hang", "timeout", "timeout", "error", "timeout"),
    Fault("reset_before_answer", "disconnect", "error", "error", "error"),
    Fault("reset_mid_body", "disconnect", "error", "error", "error"),
    Fault("garbage", "invalid_response", "error", "error", "error"),
    Fault("malformed_headers", "invalid_response", "error", "error", "error"),
    Fault("close_before_answer", "disconnect", "error", "error", "error"),
    Fault("5xx_storm", None, "completed", "error", "status"),
    Fault("huge_body", None, "completed", "skipped", "too_large", breaks=False),
]
parametrize = pytest.mark.parametrize("fault", FAULTS, ids=[f.name for f in FAULTS])


@pytest.fixture(autouse=True)
def _legacy_body(legacy: Fake) -> None:
    legacy.body = LEGACY_BODY


def config(legacy: Fake, agent_url: str, fault: Fault, **route: Any) -> dict[str, Any]:
    timeout = faults.timeout(fault.name)
    return {
        "backends": {
            "legacy": {"url": legacy.url},
            "agent": {"url": agent_url, "timeout": timeout},
        },
        "shadow": {"timeout": timeout},
        "routes": [{"name": "api", "match": {"prefix": "/api/"}, **route}],
    }


def agent_errors(proxy: Proxy, mode: str, kind: str | None = None) -> float:
    labels = {"route": "api", "backend": "agent", "mode": mode}
    if kind is not None:
        labels["kind"] = kind
    return proxy.total("shadow_proxy_upstream_errors_total", **labels)


def assert_all_legacy(answers: list[faults.Answer]) -> Counter[str]:
    """Every client got legacy's 200; how many carried each fallback reason."""
    for status, headers, body in answers:
        assert (status, body, headers["X-Served-By"]) == (200, LEGACY_BODY, "legacy")
    return Counter(headers.get("X-Fallback-Reason", "none") for _, headers, _ in answers)


def assert_moved_not_held(handler: Handler, start: Baseline, at_least: int) -> None:
    """A huge body: far more bytes went past the proxy than it ever held at once."""
    if isinstance(handler, faults.Huge):
        assert handler.sent >= at_least
        assert peak_growth(start) < HELD_AT_MOST


@parametrize
async def test_agent_fault_while_shadowing_is_counted_and_never_reaches_the_client(
    make_proxy: ProxyFactory, legacy: Fake, fault: Fault
) -> None:
    handler = faults.backend(fault.name)
    async with RawServer(handler) as agent:
        proxy = await make_proxy(**config(legacy, agent.url, fault, shadow={"enabled": True}))
        async with watch(proxy) as start:
            reasons = assert_all_legacy(await faults.burst(proxy, N))
            assert reasons == {"none": N}
            await proxy.settle()
            assert len(agent.requests) == N  # the agent got every mirror
            assert proxy.outcome("sent") == N
            assert proxy.outcome(fault.shadow) == N
            assert proxy.verdict(fault.verdict) == N
            expected = N if fault.kind else 0
            assert agent_errors(proxy, "shadow", fault.kind) == agent_errors(proxy, "shadow")
            assert agent_errors(proxy, "shadow") == expected
            if fault.name == "huge_body":  # over the capture limit, or past the memory bound
                kept_out = proxy.outcome("skipped_size") + proxy.outcome("dropped_memory")
                assert kept_out == N
            assert_moved_not_held(handler, start, N * proxy.settings.shadow.capture_limit)


@parametrize
async def test_agent_fault_while_serving_falls_back_to_legacy_for_every_client(
    make_proxy: ProxyFactory, legacy: Fake, fault: Fault
) -> None:
    """Two bursts: the first meets the fault (and opens the breaker when the fault
    counts as a failure), the second is served by legacy without calling the agent."""
    handler = faults.backend(fault.name)
    async with RawServer(handler) as agent:
        rollout = {"mode": "manual", "percent": 100}
        proxy = await make_proxy(**config(legacy, agent.url, fault, rollout=rollout))
        async with watch(proxy) as start:
            reasons = assert_all_legacy(await faults.burst(proxy, N))
            calls = len(agent.requests)
            reasons += assert_all_legacy(await faults.burst(proxy, N))
            await proxy.settle()
            fallbacks = {
                reason: proxy.value("shadow_proxy_fallbacks_total", route="api", reason=reason)
                for reason in reasons
            }
            assert fallbacks == reasons  # the metric and the clients tell the same story
            assert sum(reasons.values()) == 2 * N
            assert proxy.total("shadow_proxy_fallbacks_total") == 2 * N
            assert set(reasons) <= {fault.fallback, "breaker_open"}
            breaker = proxy.client.app[CORE].routing.runtimes["api"].breaker
            assert breaker is not None
            if fault.breaks:
                assert reasons[fault.fallback] >= MIN_REQUESTS
                assert reasons["breaker_open"] >= N  # the whole second burst at least
                assert len(agent.requests) == calls  # not one agent call after it opened
                assert breaker.state(time.monotonic()) is BreakerState.OPEN
            else:
                assert reasons[fault.fallback] == 2 * N
                assert breaker.failure_ratio(time.monotonic()) == 0.0
            # every agent call is a fallback or a retry, and each failed one is an error
            retries = proxy.value("shadow_proxy_retries_total", route="api")
            assert len(agent.requests) == reasons[fault.fallback] + retries
            expected = len(agent.requests) if fault.kind else 0
            assert agent_errors(proxy, "live", fault.kind) == agent_errors(proxy, "live")
            assert agent_errors(proxy, "live") == expected
            served = proxy.total("shadow_proxy_requests_total", route="api", backend="legacy")
            assert served == 2 * N
            assert proxy.total("shadow_proxy_requests_total", backend="agent") == 0
            assert_moved_not_held(
                handler, start, 2 * N * proxy.settings.routes[0].fallback.max_buffer
            )
