"""The agent path: the agent serves its share of live traffic, legacy is the
safety net (fallback with a reason), retries know transient from permanent,
and a breaker stops calling an agent that keeps failing."""

from __future__ import annotations

import asyncio
from typing import Any

import aiohttp
import orjson
import pytest
from conftest import Proxy, ProxyFactory
from fakes import Fake, Reply, dead_url, stalled_client

from proxy.app import CORE
from proxy.settings import settings_from

LEGACY_BODY = b'{"from": "legacy", "confidence": 1}'
AGENT_BODY = b'{"from": "agent", "confidence": 0.9}'


@pytest.fixture(autouse=True)
def _distinct_answers(legacy: Fake, agent: Fake) -> None:
    """Whose body the client got says who really answered."""
    legacy.body = LEGACY_BODY
    agent.body = AGENT_BODY


def config(
    legacy: Fake,
    agent: Fake | str,
    percent: float = 100,
    agent_timeout: str = "5s",
    **route: Any,
) -> dict[str, Any]:
    agent_url = agent if isinstance(agent, str) else agent.url
    return {
        "backends": {
            "legacy": {"url": legacy.url},
            "agent": {"url": agent_url, "timeout": agent_timeout},
        },
        "routes": [
            {
                "name": "api",
                "match": {"prefix": "/api/"},
                "rollout": {"mode": "manual", "percent": percent},
                **route,
            }
        ],
    }


def fallbacks(proxy: Proxy, reason: str) -> float:
    return proxy.value("shadow_proxy_fallbacks_total", route="api", reason=reason)


def retries(proxy: Proxy) -> float:
    return proxy.value("shadow_proxy_retries_total", route="api")


def served(proxy: Proxy, backend: str, status_class: str = "2xx") -> float:
    return proxy.value(
        "shadow_proxy_requests_total", route="api", backend=backend, status_class=status_class
    )


async def get(
    proxy: Proxy, path: str = "/api/x", method: str = "GET", **kwargs: Any
) -> tuple[aiohttp.ClientResponse, bytes]:
    response = await proxy.client.request(method, path, **kwargs)
    return response, await response.read()


async def assert_fell_back(proxy: Proxy, reason: str, path: str = "/api/x") -> None:
    response, body = await get(proxy, path)
    assert response.status == 200
    assert body == LEGACY_BODY
    assert response.headers["X-Served-By"] == "legacy"
    assert response.headers["X-Fallback-Reason"] == reason
    assert fallbacks(proxy, reason) == 1
    assert (served(proxy, "legacy"), served(proxy, "agent")) == (1, 0)


# -- live routing ---------------------------------------------------------------


async def test_share_100_is_served_by_the_agent(
    make_proxy: ProxyFactory, legacy: Fake, agent: Fake
) -> None:
    proxy = await make_proxy(**config(legacy, agent, percent=100))
    response, body = await get(proxy)
    assert response.status == 200
    assert body == AGENT_BODY
    assert response.headers["X-Served-By"] == "agent"
    assert "X-Fallback-Reason" not in response.headers
    assert served(proxy, "agent") == 1
    await proxy.settle()


async def test_share_0_is_served_by_legacy_and_the_agent_is_not_called(
    make_proxy: ProxyFactory, legacy: Fake, agent: Fake
) -> None:
    proxy = await make_proxy(**config(legacy, agent, percent=0))
    response, body = await get(proxy)
    assert body == LEGACY_BODY
    assert response.headers["X-Served-By"] == "legacy"
    assert agent.seen == []


async def test_force_header_overrides_the_share_both_ways(
    make_proxy: ProxyFactory, legacy: Fake, agent: Fake
) -> None:
    for percent, forced, body in ((0, "agent", AGENT_BODY), (100, "legacy", LEGACY_BODY)):
        cfg = config(legacy, agent, percent=percent)
        cfg["routing"] = {"force_header": "X-Backend"}
        proxy = await make_proxy(**cfg)
        response, got = await get(proxy, headers={"X-Backend": forced})
        assert response.headers["X-Served-By"] == forced
        assert got == body
        await proxy.settle()


async def test_sticky_key_keeps_each_user_on_one_backend_at_50_percent(
    make_proxy: ProxyFactory, legacy: Fake, agent: Fake
) -> None:
    proxy = await make_proxy(**config(legacy, agent, percent=50, sticky_key={"header": "X-User"}))
    backends: dict[str, set[str]] = {}
    for user in (f"user-{i}" for i in range(30)):
        for _ in range(3):
            response, _ = await get(proxy, headers={"X-User": user})
            backends.setdefault(user, set()).add(response.headers["X-Served-By"])
    await proxy.settle()
    assert all(len(seen) == 1 for seen in backends.values()), backends
    on_agent = sum(seen == {"agent"} for seen in backends.values())
    assert 5 <= on_agent <= 25  # about half of the users


# -- fallback triggers (buffered, the default) ------------------------------------


async def test_agent_connection_refused_falls_back_with_reason_error(
    make_proxy: ProxyFactory, legacy: Fake
) -> None:
    proxy = await make_proxy(**config(legacy, dead_url(), retries={"attempts": 1}))
    await assert_fell_back(proxy, "error")
    await proxy.settle()


async def test_agent_slower_than_its_timeout_falls_back_with_reason_timeout(
    make_proxy: ProxyFactory, legacy: Fake, agent: Fake
) -> None:
    agent.script = [Reply(delay=0.5)]
    proxy = await make_proxy(**config(legacy, agent, agent_timeout="150ms"))
    await assert_fell_back(proxy, "timeout")
    await proxy.settle()


async def test_agent_5xx_falls_back_with_reason_status(
    make_proxy: ProxyFactory, legacy: Fake, agent: Fake
) -> None:
    agent.status = 500
    proxy = await make_proxy(**config(legacy, agent))
    await assert_fell_back(proxy, "status")
    await proxy.settle()
    assert len(legacy.seen) == 1  # the parallel call's answer was served: no second call


async def test_a_configured_status_falls_back(
    make_proxy: ProxyFactory, legacy: Fake, agent: Fake
) -> None:
    agent.status = 429
    cfg = config(legacy, agent, fallback={"statuses": [429]}, retries={"attempts": 1})
    proxy = await make_proxy(**cfg)
    await assert_fell_back(proxy, "status")
    assert len(agent.seen) == 1
    await proxy.settle()


async def test_invalid_json_falls_back_when_json_is_expected(
    make_proxy: ProxyFactory, legacy: Fake, agent: Fake
) -> None:
    agent.body = b'{"from": "agent", '
    proxy = await make_proxy(**config(legacy, agent, fallback={"expect_json": True}))
    await assert_fell_back(proxy, "invalid_json")
    await proxy.settle()


async def test_a_missing_required_field_falls_back(
    make_proxy: ProxyFactory, legacy: Fake, agent: Fake
) -> None:
    fallback = {"required_fields": ["$.from", "$.answer.label"]}
    proxy = await make_proxy(**config(legacy, agent, fallback=fallback))
    await assert_fell_back(proxy, "missing_field")
    await proxy.settle()


async def test_confidence_below_the_minimum_falls_back(
    make_proxy: ProxyFactory, legacy: Fake, agent: Fake
) -> None:
    fallback = {"confidence": {"path": "$.confidence", "min": 0.95}}
    proxy = await make_proxy(**config(legacy, agent, fallback=fallback))
    await assert_fell_back(proxy, "low_confidence")  # the agent says 0.9
    await proxy.settle()


async def test_confidence_at_or_above_the_minimum_is_served_by_the_agent(
    make_proxy: ProxyFactory, legacy: Fake, agent: Fake
) -> None:
    fallback = {"confidence": {"path": "$.confidence", "min": 0.9}}
    proxy = await make_proxy(**config(legacy, agent, fallback=fallback))
    for confidence in (0.9, 0.99):
        agent.body = orjson.dumps({"from": "agent", "confidence": confidence})
        response, body = await get(proxy)
        assert response.headers["X-Served-By"] == "agent"
        assert body == agent.body
    assert fallbacks(proxy, "low_confidence") == 0
    await proxy.settle()


async def test_with_fallback_disabled_the_agents_5xx_reaches_the_client(
    make_proxy: ProxyFactory, legacy: Fake, agent: Fake
) -> None:
    agent.status, agent.body = 500, b'{"error": "agent broke"}'
    proxy = await make_proxy(**config(legacy, agent, fallback={"enabled": False}))
    response, body = await get(proxy)
    assert response.status == 500
    assert body == b'{"error": "agent broke"}'
    assert response.headers["X-Served-By"] == "agent"
    assert "X-Fallback-Reason" not in response.headers
    assert fallbacks(proxy, "status") == 0
    await proxy.settle()


@pytest.mark.parametrize("mode", ["buffered", "streamed"])
async def test_with_on_error_off_an_unreachable_agent_is_a_502_not_a_fallback(
    make_proxy: ProxyFactory, legacy: Fake, mode: str
) -> None:
    fallback = {"on_error": False, "mode": mode}
    proxy = await make_proxy(**config(legacy, dead_url(), fallback=fallback))
    response, body = await get(proxy)
    assert response.status == 502
    assert orjson.loads(body)["backend"] == "agent"
    assert fallbacks(proxy, "error") == 0
    # The client saw the agent's 502: it is counted as an answer the agent gave.
    assert proxy.value("shadow_proxy_requests_total", backend="agent", status_class="5xx") == 1
    await proxy.settle()


@pytest.mark.parametrize("mode", ["buffered", "streamed"])
async def test_with_on_error_off_a_slow_agent_is_a_504_not_a_fallback(
    make_proxy: ProxyFactory, legacy: Fake, agent: Fake, mode: str
) -> None:
    agent.script = [Reply(delay=0.5)]
    fallback = {"on_error": False, "mode": mode}
    proxy = await make_proxy(**config(legacy, agent, agent_timeout="150ms", fallback=fallback))
    response, body = await get(proxy)
    assert response.status == 504  # as for legacy: a timeout is a gateway timeout
    answer = orjson.loads(body)
    assert (answer["error"], answer["backend"]) == ("gateway_timeout", "agent")
    assert answer["reason"].startswith("agent: no complete answer within")
    assert fallbacks(proxy, "timeout") == 0
    assert proxy.value("shadow_proxy_requests_total", backend="agent", status_class="5xx") == 1
    await proxy.settle()


async def test_an_answer_larger_than_the_buffer_falls_back(
    make_proxy: ProxyFactory, legacy: Fake, agent: Fake
) -> None:
    proxy = await make_proxy(**config(legacy, agent, fallback={"max_buffer": 16}))
    await assert_fell_back(proxy, "too_large")
    await proxy.settle()


# -- serving modes ------------------------------------------------------------------


async def test_buffered_agent_dying_mid_body_still_gives_legacys_complete_answer(
    make_proxy: ProxyFactory, legacy: Fake, agent: Fake
) -> None:
    agent.script = [Reply(cut=True)]
    proxy = await make_proxy(**config(legacy, agent, retries={"attempts": 1}))
    await assert_fell_back(proxy, "error")
    assert len(agent.seen) == 1
    await proxy.settle()


async def test_streamed_503_before_the_first_byte_falls_back(
    make_proxy: ProxyFactory, legacy: Fake, agent: Fake
) -> None:
    agent.status = 503
    proxy = await make_proxy(**config(legacy, agent, fallback={"mode": "streamed"}))
    await assert_fell_back(proxy, "status")
    await proxy.settle()


async def test_streamed_agent_slower_than_its_timeout_falls_back(
    make_proxy: ProxyFactory, legacy: Fake, agent: Fake
) -> None:
    agent.script = [Reply(delay=0.5)]
    cfg = config(legacy, agent, agent_timeout="150ms", fallback={"mode": "streamed"})
    proxy = await make_proxy(**cfg)
    await assert_fell_back(proxy, "timeout")
    await proxy.settle()


async def test_streamed_agent_dying_mid_body_cuts_the_client_off_and_is_no_fallback(
    make_proxy: ProxyFactory, legacy: Fake, agent: Fake
) -> None:
    agent.script = [Reply(cut=True)]
    proxy = await make_proxy(**config(legacy, agent, fallback={"mode": "streamed"}))
    response = await proxy.client.get("/api/x")
    assert response.status == 200
    assert response.headers["X-Served-By"] == "agent"
    with pytest.raises(aiohttp.ClientPayloadError):
        await response.read()
    for reason in ("error", "status", "timeout"):
        assert fallbacks(proxy, reason) == 0
    await proxy.settle()


async def test_streamed_agent_answer_is_streamed_through(
    make_proxy: ProxyFactory, legacy: Fake, agent: Fake
) -> None:
    proxy = await make_proxy(**config(legacy, agent, fallback={"mode": "streamed"}))
    response, body = await get(proxy, "/api/x")
    assert response.headers["X-Served-By"] == "agent"
    assert body == AGENT_BODY
    await proxy.settle()


# -- the parallel legacy call and routes with side effects ------------------------------


async def test_side_effect_free_route_compares_agent_served_answers_with_legacy(
    make_proxy: ProxyFactory, legacy: Fake, agent: Fake
) -> None:
    proxy = await make_proxy(**config(legacy, agent, side_effect_free=True))
    agent.body = legacy.body
    response, _ = await get(proxy, method="POST", data=b'{"q": 1}')
    assert response.headers["X-Served-By"] == "agent"
    await proxy.settle()
    agent.body = AGENT_BODY
    response, _ = await get(proxy, method="POST", data=b'{"q": 2}')
    assert response.headers["X-Served-By"] == "agent"
    await proxy.settle()
    verdicts = "shadow_proxy_comparisons_total"
    assert proxy.value(verdicts, route="api", verdict="match") == 1
    assert proxy.value(verdicts, route="api", verdict="mismatch") == 1
    assert [s.body for s in legacy.seen] == [b'{"q": 1}', b'{"q": 2}']
    # one request id on both sides, so their logs join
    assert legacy.seen[-1].headers["x-request-id"] == agent.seen[-1].headers["x-request-id"]


async def test_unsafe_route_does_not_call_legacy_when_the_agent_serves(
    make_proxy: ProxyFactory, legacy: Fake, agent: Fake
) -> None:
    proxy = await make_proxy(**config(legacy, agent))
    response, body = await get(proxy, method="POST", data=b'{"order": 1}')
    assert response.headers["X-Served-By"] == "agent"
    assert body == AGENT_BODY
    await proxy.settle()
    assert legacy.seen == []
    assert proxy.value("shadow_proxy_comparisons_total", route="api", verdict="match") == 0


async def test_unsafe_route_keeps_the_agents_500_rather_than_execute_twice(
    make_proxy: ProxyFactory, legacy: Fake, agent: Fake
) -> None:
    agent.status, agent.body = 500, b'{"error": "half done"}'
    proxy = await make_proxy(**config(legacy, agent))
    response, body = await get(proxy, method="POST", data=b'{"order": 1}')
    assert response.status == 500
    assert body == b'{"error": "half done"}'
    assert response.headers["X-Served-By"] == "agent"
    await proxy.settle()
    assert legacy.seen == []
    assert len(agent.seen) == 1


async def test_unsafe_route_keeps_the_agents_failure_when_it_dropped_the_request(
    make_proxy: ProxyFactory, legacy: Fake, agent: Fake
) -> None:
    """The agent read the request and then hung up: it may have acted on it."""
    agent.script = [Reply(drop=True)]
    proxy = await make_proxy(**config(legacy, agent))
    response, body = await get(proxy, method="POST", data=b'{"order": 1}')
    assert response.status == 502
    assert orjson.loads(body)["backend"] == "agent"
    assert "X-Fallback-Reason" not in response.headers
    await proxy.settle()
    assert legacy.seen == []
    assert len(agent.seen) == 1


async def test_unsafe_route_falls_back_when_the_agent_is_unreachable(
    make_proxy: ProxyFactory, legacy: Fake
) -> None:
    proxy = await make_proxy(**config(legacy, dead_url()))
    response, body = await get(proxy, method="POST", data=b'{"order": 1}')
    assert body == LEGACY_BODY
    assert response.headers["X-Served-By"] == "legacy"
    assert response.headers["X-Fallback-Reason"] == "error"
    assert fallbacks(proxy, "error") == 1
    assert [s.body for s in legacy.seen] == [b'{"order": 1}']


async def test_streamed_unsafe_route_keeps_the_agents_503_rather_than_execute_twice(
    make_proxy: ProxyFactory, legacy: Fake, agent: Fake
) -> None:
    agent.status, agent.body = 503, b'{"error": "half done"}'
    proxy = await make_proxy(**config(legacy, agent, fallback={"mode": "streamed"}))
    response, body = await get(proxy, method="POST", data=b'{"order": 1}')
    assert response.status == 503
    assert body == b'{"error": "half done"}'
    assert response.headers["X-Served-By"] == "agent"
    await proxy.settle()
    assert legacy.seen == []


async def test_streamed_unsafe_route_keeps_the_agents_failure_when_it_dropped_the_request(
    make_proxy: ProxyFactory, legacy: Fake, agent: Fake
) -> None:
    agent.script = [Reply(drop=True)]
    proxy = await make_proxy(**config(legacy, agent, fallback={"mode": "streamed"}))
    response, body = await get(proxy, method="POST", data=b'{"order": 1}')
    assert response.status == 502
    assert orjson.loads(body)["backend"] == "agent"
    await proxy.settle()
    assert legacy.seen == []


# -- retries --------------------------------------------------------------------------

FAST_RETRIES = {"attempts": 3, "backoff": "10ms", "max_backoff": "20ms"}


async def test_a_transient_503_is_retried_and_the_agent_serves(
    make_proxy: ProxyFactory, legacy: Fake, agent: Fake
) -> None:
    agent.script = [Reply(status=503)]
    proxy = await make_proxy(**config(legacy, agent, retries=FAST_RETRIES))
    response, body = await get(proxy)
    assert response.headers["X-Served-By"] == "agent"
    assert body == AGENT_BODY
    assert retries(proxy) == 1
    assert len(agent.seen) == 2
    assert fallbacks(proxy, "status") == 0
    await proxy.settle()


async def test_a_400_is_permanent_and_not_retried(
    make_proxy: ProxyFactory, legacy: Fake, agent: Fake
) -> None:
    agent.status, agent.body = 400, b'{"error": "bad input"}'
    proxy = await make_proxy(**config(legacy, agent, retries=FAST_RETRIES))
    response, body = await get(proxy)
    assert response.status == 400
    assert body == b'{"error": "bad input"}'
    assert retries(proxy) == 0
    assert len(agent.seen) == 1
    await proxy.settle()


async def test_a_429_with_retry_after_0_is_retried(
    make_proxy: ProxyFactory, legacy: Fake, agent: Fake
) -> None:
    agent.script = [Reply(status=429, headers={"Retry-After": "0"})]
    proxy = await make_proxy(**config(legacy, agent, retries=FAST_RETRIES))
    response, body = await get(proxy)
    assert response.headers["X-Served-By"] == "agent"
    assert body == AGENT_BODY
    assert retries(proxy) == 1
    assert len(agent.seen) == 2
    await proxy.settle()


async def test_a_retry_after_beyond_the_deadline_is_not_waited_for(
    make_proxy: ProxyFactory, legacy: Fake, agent: Fake
) -> None:
    agent.script = [Reply(status=429, headers={"Retry-After": "30"})]
    cfg = config(legacy, agent, retries=FAST_RETRIES, fallback={"statuses": [429]})
    proxy = await make_proxy(**cfg)
    await assert_fell_back(proxy, "status")
    assert retries(proxy) == 0
    assert len(agent.seen) == 1
    await proxy.settle()


async def test_an_unsafe_post_whose_agent_answers_503_is_not_retried(
    make_proxy: ProxyFactory, legacy: Fake, agent: Fake
) -> None:
    agent.status = 503
    proxy = await make_proxy(**config(legacy, agent, retries=FAST_RETRIES))
    response, _ = await get(proxy, method="POST", data=b'{"order": 1}')
    assert response.status == 503
    assert retries(proxy) == 0
    assert len(agent.seen) == 1
    assert legacy.seen == []


async def test_an_unsafe_post_to_an_unreachable_agent_is_retried(
    make_proxy: ProxyFactory, legacy: Fake
) -> None:
    """Nothing was sent, so another attempt cannot act twice."""
    proxy = await make_proxy(**config(legacy, dead_url(), retries=FAST_RETRIES))
    response, _ = await get(proxy, method="POST", data=b'{"order": 1}')
    assert response.headers["X-Fallback-Reason"] == "error"
    assert retries(proxy) == 2


# -- the circuit breaker --------------------------------------------------------------


async def until_circuit(proxy: Proxy, state: str, within: float = 2.0) -> None:
    """Wait for the controller (a 0.25 s tick) to publish the breaker's state."""
    for _ in range(int(within / 0.02)):
        if proxy.value("shadow_proxy_circuit_state", route="api", state=state) == 1:
            return
        await asyncio.sleep(0.02)
    raise AssertionError(f"the circuit never showed {state} within {within}s")


async def test_breaker_opens_on_failures_probes_after_cooldown_and_closes(
    make_proxy: ProxyFactory, legacy: Fake, agent: Fake
) -> None:
    breaker = {"min_requests": 2, "failure_rate": 0.5, "cooldown": "500ms", "probes": 2}
    proxy = await make_proxy(**config(legacy, agent, breaker=breaker))
    agent.status = 500
    for _ in range(2):
        response, _ = await get(proxy)
        assert response.headers["X-Fallback-Reason"] == "status"
    assert len(agent.seen) == 2

    # open: legacy answers at once and the agent is spared
    for _ in range(3):
        response, body = await get(proxy)
        assert response.headers["X-Fallback-Reason"] == "breaker_open"
        assert body == LEGACY_BODY
    assert len(agent.seen) == 2
    assert fallbacks(proxy, "breaker_open") == 3
    await until_circuit(proxy, "open")

    # after the cooldown, probes reach the (now healthy) agent; two good ones close it
    agent.status = 200
    await until_circuit(proxy, "half_open")
    for _ in range(2):
        response, body = await get(proxy)
        assert response.headers["X-Served-By"] == "agent"
        assert body == AGENT_BODY
    assert len(agent.seen) == 4
    await until_circuit(proxy, "closed")

    # closed: the agent serves every request again
    for _ in range(3):
        response, _ = await get(proxy)
        assert response.headers["X-Served-By"] == "agent"
    assert len(agent.seen) == 7
    assert fallbacks(proxy, "breaker_open") == 3
    await proxy.settle()


async def test_a_failed_probe_opens_the_breaker_again(
    make_proxy: ProxyFactory, legacy: Fake, agent: Fake
) -> None:
    breaker = {"min_requests": 1, "cooldown": "200ms", "probes": 1}
    proxy = await make_proxy(**config(legacy, agent, breaker=breaker))
    agent.status = 500
    await get(proxy)  # opens it
    await asyncio.sleep(0.25)
    response, _ = await get(proxy)  # the probe: it fails, so open again
    assert response.headers["X-Fallback-Reason"] == "status"
    assert len(agent.seen) == 2
    response, _ = await get(proxy)
    assert response.headers["X-Fallback-Reason"] == "breaker_open"
    assert len(agent.seen) == 2
    await proxy.settle()


@pytest.mark.parametrize("mode", ["buffered", "streamed"])
async def test_a_probe_whose_client_gave_up_does_not_leave_the_breaker_half_open_forever(
    make_proxy: ProxyFactory, legacy: Fake, agent: Fake, mode: str
) -> None:
    breaker = {"min_requests": 1, "cooldown": "200ms", "probes": 1}
    proxy = await make_proxy(**config(legacy, agent, breaker=breaker, fallback={"mode": mode}))
    agent.status = 500
    await get(proxy)  # opens it
    await asyncio.sleep(0.25)
    agent.status = 200
    agent.script = [Reply(delay=1.0)]  # the probe is slow, and its client will not wait
    with pytest.raises(TimeoutError):
        await proxy.client.get("/api/x", timeout=aiohttp.ClientTimeout(total=0.1))
    await asyncio.sleep(0.3)  # the proxy notices the client left; a cooldown passes
    response, body = await get(proxy)
    assert response.headers["X-Served-By"] == "agent"
    assert body == AGENT_BODY
    await proxy.settle()


async def test_a_stalled_client_in_streamed_mode_is_never_the_agents_failure(
    make_proxy: ProxyFactory, legacy: Fake, agent: Fake
) -> None:
    """The client stops reading a large streamed answer: it is cut after send_timeout,
    counted as client_gone, and neither the breaker nor the error gate hear of it."""
    cfg = config(legacy, agent, agent_timeout="1s", fallback={"mode": "streamed"})
    cfg["routes"][0]["match"] = {"prefix": "/"}
    cfg["listen"] = {"send_timeout": "300ms"}
    proxy = await make_proxy(**cfg)
    async with stalled_client(proxy.client.port, "/download?mb=64"):
        async with asyncio.timeout(10):
            while proxy.value("shadow_proxy_rejected_requests_total", reason="client_gone") < 1:  # noqa: ASYNC110
                await asyncio.sleep(0.05)
        runtime = proxy.client.app[CORE].routing.runtimes["api"]
        assert proxy.value("shadow_proxy_upstream_errors_total", backend="agent") == 0
        assert runtime.window.stats(10**9).agent_errors == 0
        assert (await proxy.client.get("/x")).headers["X-Served-By"] == "agent"


async def test_legacy_calls_alongside_the_agent_are_bounded_and_counted(
    make_proxy: ProxyFactory, legacy: Fake, agent: Fake
) -> None:
    legacy.delay = 0.5
    cfg = config(legacy, agent)
    cfg["shadow"] = {"max_in_flight": 1}
    proxy = await make_proxy(**cfg)
    responses = await asyncio.gather(*(proxy.client.get("/api/x") for _ in range(4)))
    assert [r.headers["X-Served-By"] for r in responses] == ["agent"] * 4
    await proxy.settle()
    dropped = proxy.value(
        "shadow_proxy_shadow_requests_total", route="api", outcome="dropped_inflight"
    )
    assert dropped == 3
    assert len(legacy.seen) == 1

    # A reloaded config raises the bound for the agent path too, not only for shadows.
    cfg["shadow"] = {"max_in_flight": 8}
    proxy.client.app[CORE].apply(settings_from(cfg))
    await asyncio.gather(*(proxy.client.get("/api/x") for _ in range(4)))
    await proxy.settle()
    assert len(legacy.seen) == 5
