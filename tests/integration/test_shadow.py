"""The shadow path: the agent gets a marked copy, off the client's clock, within
every bound, and the comparison's result shows up in metrics and logs."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import orjson
from conftest import ProxyFactory
from fakes import Fake, dead_url, stalled_client
from structlog.testing import capture_logs


def config(legacy: Fake, agent: Fake | str, **route: Any) -> dict[str, Any]:
    shadow = {"enabled": True, **route.pop("shadow", {})}
    agent_url = agent if isinstance(agent, str) else agent.url
    return {
        "backends": {"legacy": {"url": legacy.url}, "agent": {"url": agent_url}},
        "routes": [{"name": "api", "match": {"prefix": "/api/"}, "shadow": shadow, **route}],
    }


async def test_agent_gets_a_marked_copy_with_configured_headers(
    make_proxy: ProxyFactory, legacy: Fake, agent: Fake
) -> None:
    cfg = config(legacy, agent)
    cfg["shadow"] = {"add_headers": {"X-Env": "shadow"}, "drop_headers": ["Authorization"]}
    proxy = await make_proxy(**cfg)
    response = await proxy.client.get(
        "/api/items?id=7", headers={"Authorization": "Bearer s3cret", "X-Trace": "t1"}
    )
    assert response.status == 200
    await proxy.settle()
    copy = agent.seen[-1]
    assert copy.method == "GET"
    assert copy.path_qs == "/api/items?id=7"
    assert copy.headers["x-shadow-request"] == ["1"]
    assert copy.headers["x-env"] == ["shadow"]
    assert copy.headers["x-trace"] == ["t1"]
    assert "authorization" not in copy.headers
    assert "x-shadow-request" not in legacy.seen[-1].headers
    assert legacy.seen[-1].headers["authorization"] == ["Bearer s3cret"]
    # both backends see one request id, so their logs can be joined
    assert copy.headers["x-request-id"] == legacy.seen[-1].headers["x-request-id"]
    assert proxy.outcome("sent") == 1
    assert proxy.outcome("completed") == 1
    assert proxy.verdict("match") == 1
    assert proxy.value("shadow_proxy_agreement_ratio", route="api") == 1.0


async def test_a_2s_agent_delays_neither_the_response_nor_the_next_keepalive_request(
    make_proxy: ProxyFactory, legacy: Fake, agent: Fake
) -> None:
    agent.delay = 2.0
    proxy = await make_proxy(**config(legacy, agent))
    connector = aiohttp.TCPConnector(limit=1)  # one keep-alive connection for both
    async with aiohttp.ClientSession(connector=connector) as session:
        url = proxy.client.make_url("/api/x")
        timings = []
        for _ in range(2):
            started = time.monotonic()
            async with session.get(url) as response:
                assert response.status == 200
                await response.read()
            timings.append(time.monotonic() - started)
    assert max(timings) < 1.0, timings  # each far below the agent's 2 s
    assert proxy.outcome("sent") == 2
    await proxy.settle(within=6)
    assert proxy.outcome("completed") == 2
    assert len(agent.seen) == 2


async def test_in_flight_bound_drops_and_counts(
    make_proxy: ProxyFactory, legacy: Fake, agent: Fake
) -> None:
    agent.delay = 1.5
    cfg = config(legacy, agent)
    cfg["shadow"] = {"max_in_flight": 2}
    proxy = await make_proxy(**cfg)
    for _ in range(10):
        assert (await proxy.client.get("/api/x")).status == 200
    assert proxy.outcome("dropped_inflight") == 8
    assert proxy.value("shadow_proxy_shadow_in_flight") == 2
    await proxy.settle()
    assert proxy.outcome("completed") == 2


async def test_rate_limit_drops_and_counts(
    make_proxy: ProxyFactory, legacy: Fake, agent: Fake
) -> None:
    proxy = await make_proxy(**config(legacy, agent, shadow={"rate_limit": 5}))
    for _ in range(20):
        assert (await proxy.client.get("/api/x")).status == 200
    await proxy.settle()
    assert proxy.outcome("sent") == 5
    assert proxy.outcome("dropped_rate") == 15


async def test_unsafe_methods_are_not_mirrored_unless_route_is_side_effect_free(
    make_proxy: ProxyFactory, legacy: Fake, agent: Fake
) -> None:
    proxy = await make_proxy(**config(legacy, agent))
    assert (await proxy.client.post("/api/orders", data=b'{"n": 1}')).status == 200
    await proxy.settle()
    assert proxy.outcome("skipped_unsafe") == 1
    assert agent.seen == []

    free = await make_proxy(**config(legacy, agent, side_effect_free=True))
    assert (await free.client.post("/api/classify", data=b'{"n": 2}')).status == 200
    await free.settle()
    assert agent.seen[-1].method == "POST"
    assert agent.seen[-1].body == b'{"n": 2}'
    assert legacy.seen[-1].body == b'{"n": 2}'


async def test_zero_percent_samples_nothing(
    make_proxy: ProxyFactory, legacy: Fake, agent: Fake
) -> None:
    proxy = await make_proxy(**config(legacy, agent, shadow={"percent": 0}))
    for _ in range(5):
        await proxy.client.get("/api/x")
    assert proxy.outcome("skipped_sample") == 5
    assert agent.seen == []


async def test_sticky_sampling_mirrors_a_user_always_or_never(
    make_proxy: ProxyFactory, legacy: Fake, agent: Fake
) -> None:
    sticky = {"percent": 50, "sticky_key": {"header": "X-User"}}
    proxy = await make_proxy(**config(legacy, agent, shadow=sticky))
    decisions = {}
    for user in (f"user-{i}" for i in range(40)):
        before = proxy.outcome("sent")
        for _ in range(3):
            await proxy.client.get("/api/x", headers={"X-User": user})
        decisions[user] = proxy.outcome("sent") - before
    await proxy.settle()
    assert set(decisions.values()) == {0, 3}  # all three or none, per user
    assert 8 <= sum(1 for v in decisions.values() if v) <= 32  # about half the users


async def test_request_body_over_capture_limit_is_not_mirrored(
    make_proxy: ProxyFactory, legacy: Fake, agent: Fake
) -> None:
    cfg = config(legacy, agent, side_effect_free=True)
    cfg["shadow"] = {"capture_limit": 100}
    proxy = await make_proxy(**cfg)
    assert (await proxy.client.post("/api/x", data=b"z" * 101)).status == 200
    await proxy.settle()
    assert proxy.outcome("skipped_size") == 1
    assert agent.seen == []
    assert legacy.seen[-1].body_size == 101  # legacy still got all of it


async def test_response_over_capture_limit_skips_the_comparison(
    make_proxy: ProxyFactory, legacy: Fake, agent: Fake
) -> None:
    legacy.body = agent.body = b'{"big": "' + b"x" * 500 + b'"}'
    cfg = config(legacy, agent)
    cfg["shadow"] = {"capture_limit": 100}
    proxy = await make_proxy(**cfg)
    assert len(await (await proxy.client.get("/api/x")).read()) == len(legacy.body)
    await proxy.settle()
    assert proxy.verdict("skipped") == 1
    assert proxy.verdict("match") == 0


async def test_slow_agent_times_out_and_is_an_error_comparison(
    make_proxy: ProxyFactory, legacy: Fake, agent: Fake
) -> None:
    agent.delay = 3.0
    cfg = config(legacy, agent)
    cfg["shadow"] = {"timeout": "200ms"}
    proxy = await make_proxy(**cfg)
    assert (await proxy.client.get("/api/x")).status == 200
    await proxy.settle()
    assert proxy.outcome("timeout") == 1
    assert proxy.verdict("error") == 1


async def test_dead_agent_is_counted_and_the_client_never_notices(
    make_proxy: ProxyFactory, legacy: Fake
) -> None:
    proxy = await make_proxy(**config(legacy, dead_url()))
    response = await proxy.client.get("/api/x")
    assert response.status == 200
    assert await response.json() == {"ok": True}
    await proxy.settle()
    assert proxy.outcome("error") == 1
    assert (
        proxy.value(
            "shadow_proxy_upstream_errors_total", backend="agent", mode="shadow", kind="connect"
        )
        == 1
    )


async def test_dead_legacy_gives_502_and_skips_the_comparison(
    make_proxy: ProxyFactory, agent: Fake
) -> None:
    dead = Fake("legacy", url=dead_url())
    proxy = await make_proxy(**config(dead, agent))
    assert (await proxy.client.get("/api/x")).status == 502
    await proxy.settle()
    assert proxy.verdict("skipped") == 1


async def test_mismatch_is_counted_by_field_and_logged_with_request_and_trace_ids(
    make_proxy: ProxyFactory, legacy: Fake, agent: Fake
) -> None:
    legacy.body = orjson.dumps({"label": "billing", "items": [{"p": 1}, {"p": 2}], "id": 1})
    agent.body = orjson.dumps({"label": "account", "items": [{"p": 1}, {"p": 3}], "id": 2})
    proxy = await make_proxy(
        **config(legacy, agent, compare=["status", {"name": "json", "ignore": ["$.id"]}])
    )
    trace = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"
    with capture_logs() as logs:
        await proxy.client.get("/api/x", headers={"traceparent": trace, "X-Request-Id": "r-1"})
        await proxy.settle()
    assert proxy.verdict("mismatch") == 1
    assert proxy.value("shadow_proxy_agreement_ratio", route="api") == 0.0
    fields = "shadow_proxy_mismatch_fields_total"
    assert proxy.value(fields, route="api", path="$.label") == 1
    assert proxy.value(fields, route="api", path="$.items[*].p") == 1
    assert proxy.value(fields, route="api", path="$.id") == 0
    (event,) = [e for e in logs if e["event"] == "mismatch"]
    assert event["route"] == "api"
    assert event["request_id"] == "r-1"
    assert event["trace_id"] == "4bf92f3577b34da6a3ce929d0e0e4736"
    assert event["legacy_ms"] >= 0 and event["agent_ms"] >= 0
    assert {d["path"] for d in event["differences"]} == {"$.label", "$.items[1].p"}


async def test_mismatch_paths_are_capped_per_route(
    make_proxy: ProxyFactory, legacy: Fake, agent: Fake
) -> None:
    legacy.body = orjson.dumps({f"k{i}": i for i in range(10)})
    agent.body = orjson.dumps({f"k{i}": -i - 1 for i in range(10)})
    cfg = config(legacy, agent)
    cfg["metrics"] = {"mismatch_paths_per_route": 3}
    proxy = await make_proxy(**cfg)
    await proxy.client.get("/api/x")
    await proxy.settle()
    text = proxy.metrics.registry
    from prometheus_client import generate_latest

    exposition = generate_latest(text).decode()
    labels = [
        ln for ln in exposition.splitlines() if ln.startswith("shadow_proxy_mismatch_fields_total{")
    ]
    assert len(labels) == 4  # three paths plus "other"
    assert proxy.value("shadow_proxy_mismatch_fields_total", route="api", path="other") == 1


async def test_streamed_request_body_over_capture_limit_is_not_mirrored(
    make_proxy: ProxyFactory, legacy: Fake, agent: Fake
) -> None:
    """Without a Content-Length the limit is found mid-stream; legacy still gets it all."""
    cfg = config(legacy, agent, side_effect_free=True)
    cfg["shadow"] = {"capture_limit": 1000}

    async def body() -> AsyncIterator[bytes]:
        for _ in range(4):
            yield b"c" * 400

    proxy = await make_proxy(**cfg)
    assert (await proxy.client.post("/api/x", data=body())).status == 200
    await proxy.settle()
    assert proxy.outcome("skipped_size") == 1
    assert proxy.outcome("sent") == 0
    assert legacy.seen[-1].body_size == 1600


async def test_an_upload_too_large_to_keep_gives_its_slot_back_while_it_streams(
    make_proxy: ProxyFactory, legacy: Fake, agent: Fake
) -> None:
    cfg = config(legacy, agent, side_effect_free=True)
    cfg["shadow"] = {"capture_limit": 1000, "max_in_flight": 1}
    proxy = await make_proxy(**cfg)
    past_the_limit, finish = asyncio.Event(), asyncio.Event()

    async def body() -> AsyncIterator[bytes]:
        for _ in range(3):
            yield b"c" * 400
        past_the_limit.set()
        await finish.wait()
        yield b"c" * 400

    upload = asyncio.create_task(proxy.client.post("/api/upload", data=body()))
    await past_the_limit.wait()
    await asyncio.sleep(0.1)  # the proxy reads the third chunk
    assert (await proxy.client.get("/api/x")).status == 200
    assert proxy.outcome("skipped_size") == 1
    assert proxy.outcome("dropped_inflight") == 0
    finish.set()
    assert (await upload).status == 200
    await proxy.settle()
    assert proxy.outcome("sent") == 1  # the GET's copy
    assert [s.body_size for s in legacy.seen if s.path_qs == "/api/upload"] == [1600]


async def test_agent_5xx_is_an_error_not_a_disagreement(
    make_proxy: ProxyFactory, legacy: Fake, agent: Fake
) -> None:
    agent.status, agent.body = 503, b'{"detail": "overloaded"}'
    proxy = await make_proxy(**config(legacy, agent))
    with capture_logs() as logs:
        await proxy.client.get("/api/x")
        await proxy.settle()
    assert proxy.verdict("error") == 1
    assert proxy.verdict("mismatch") == 0
    (event,) = [e for e in logs if e["event"] == "comparison_error"]
    assert event["reason"] == "agent answered 503"


async def test_a_client_that_stops_reading_gives_back_its_shadow_slot(
    make_proxy: ProxyFactory, legacy: Fake, agent: Fake
) -> None:
    """A stalled reader is cut after send_timeout; the slot and legacy's
    connection are freed, and legacy is not blamed."""
    cfg = config(legacy, agent)
    cfg["shadow"] = {"capture_limit": "64MiB", "max_in_flight": 1}
    cfg["listen"] = {"send_timeout": "500ms"}
    cfg["routes"][0]["match"] = {"prefix": "/"}
    proxy = await make_proxy(**cfg)
    async with stalled_client(proxy.client.port, "/download?mb=32"):
        async with asyncio.timeout(10):
            await legacy.arrived.wait()
            await proxy.settle()  # the live exchange was cut, and its shadow task ended
        assert proxy.value("shadow_proxy_rejected_requests_total", reason="client_gone") == 1
        assert proxy.value("shadow_proxy_upstream_errors_total", backend="legacy") == 0
        assert proxy.verdict("skipped") == 1  # nothing complete to compare with
        assert (await proxy.client.get("/api/x")).status == 200
        await proxy.settle()
        assert proxy.outcome("dropped_inflight") == 0  # the slot was free again


async def test_shutdown_cancels_shadow_work_after_its_grace_and_counts_it(
    make_proxy: ProxyFactory, legacy: Fake, agent: Fake
) -> None:
    agent.delay = 5.0
    cfg = config(legacy, agent)
    cfg["shutdown"] = {"shadow_grace": "100ms"}
    proxy = await make_proxy(**cfg)
    for _ in range(3):
        assert (await proxy.client.get("/api/x")).status == 200
    started = time.monotonic()
    await proxy.client.close()  # runs the app's cleanup: drain, then close pools
    assert time.monotonic() - started < 3
    assert proxy.outcome("cancelled") == 3
    assert proxy.value("shadow_proxy_shadow_in_flight") == 0


async def test_an_open_breaker_pauses_shadowing_to_save_agent_calls(
    make_proxy: ProxyFactory, legacy: Fake
) -> None:
    cfg = config(legacy, dead_url(), breaker={"min_requests": 3, "cooldown": "60s"})
    proxy = await make_proxy(**cfg)
    for _ in range(3):
        assert (await proxy.client.get("/api/x")).status == 200
        await proxy.settle()
    assert proxy.outcome("error") == 3
    for _ in range(5):
        assert (await proxy.client.get("/api/x")).status == 200
    await proxy.settle()
    assert proxy.outcome("skipped_breaker") == 5
    assert proxy.outcome("sent") == 3


async def test_a_stream_too_large_to_compare_gives_its_slot_back_before_it_ends(
    make_proxy: ProxyFactory, legacy: Fake, agent: Fake
) -> None:
    """Once legacy's answer outgrew the capture limit, nothing is left to compare:
    the job ends there, and its slot serves the next request while the long
    stream is still flowing to its client."""
    cfg = config(legacy, agent)
    cfg["shadow"] = {"capture_limit": "16B", "max_in_flight": 1}
    cfg["routes"][0]["match"] = {"prefix": "/"}
    proxy = await make_proxy(**cfg)
    async with proxy.client.get("/stream?chunks=40&gap=0.05") as streaming:
        await streaming.content.readuntil(b"\n\n")
        await streaming.content.readuntil(b"\n\n")  # 20 bytes: past the limit
        assert (await proxy.client.get("/x")).status == 200
        await asyncio.sleep(0.2)
        assert not streaming.content.at_eof()  # the long answer is still flowing
        assert proxy.outcome("skipped_size") == 1
        assert proxy.outcome("dropped_inflight") == 0
        await streaming.read()
    await proxy.settle()
    assert proxy.outcome("sent") == 1  # the second request's copy
