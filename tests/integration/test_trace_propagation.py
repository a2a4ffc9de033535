"""W3C trace context through the proxy: every upstream call (legacy live, shadow,
agent live, each retry, legacy alongside, fallback) carries the client's trace id
with a parent id of its own; ``tracestate`` goes along only when valid; a request
without a usable ``traceparent`` starts one new trace that all its calls share;
the request's log events name the trace; and with span export on, the spans a
collector receives are exactly the parents the upstreams saw."""

from __future__ import annotations

import re
from typing import Any

import pytest
import structlog
from conftest import Proxy, ProxyFactory
from fakes import Fake, Reply, Seen, dead_url
from multidict import CIMultiDict
from opentelemetry.proto.trace.v1.trace_pb2 import Span as ProtoSpan
from otlp import Collector
from structlog.testing import capture_logs

TRACE = "4bf92f3577b34da6a3ce929d0e0e4736"
CALLER = "00f067aa0ba902b7"  # the client's own span id
TRACEPARENT = f"00-{TRACE}-{CALLER}-01"
FAST_RETRIES = {"attempts": 3, "backoff": "10ms", "max_backoff": "20ms"}


def shadow_config(legacy: Fake, agent: Fake | str, **more: Any) -> dict[str, Any]:
    agent_url = agent if isinstance(agent, str) else agent.url
    return {
        "backends": {"legacy": {"url": legacy.url}, "agent": {"url": agent_url}},
        "routes": [{"name": "api", "match": {"prefix": "/api/"}, "shadow": {"enabled": True}}],
        **more,
    }


def live_config(legacy: Fake, agent: Fake | str, **route: Any) -> dict[str, Any]:
    """The agent serves live; GETs also get legacy's answer alongside."""
    agent_url = agent if isinstance(agent, str) else agent.url
    return {
        "backends": {"legacy": {"url": legacy.url}, "agent": {"url": agent_url}},
        "routes": [
            {
                "name": "api",
                "match": {"prefix": "/api/"},
                "rollout": {"mode": "manual", "percent": 100},
                **route,
            }
        ],
    }


def parent(seen: Seen) -> tuple[str, str, str]:
    """(trace id, parent id, flags) of the one ``traceparent`` a call carried."""
    [value] = seen.headers["traceparent"]
    version, trace, span, flags = value.split("-")
    assert version == "00"
    return trace, span, flags


def tracestate(seen: Seen) -> list[str]:
    return list(seen.headers.get("tracestate", []))


def logs_with_context() -> Any:
    """Captured log events with the bound contextvars (the trace id) merged in,
    as the configured pipeline does."""
    return capture_logs(processors=[structlog.contextvars.merge_contextvars])


async def get(proxy: Proxy, headers: Any = None, method: str = "GET") -> None:
    response = await proxy.client.request(method, "/api/x", headers=headers)
    assert response.status == 200
    await response.read()
    await proxy.settle()


# -- propagation -----------------------------------------------------------------


async def test_legacy_and_shadow_calls_keep_the_trace_each_with_its_own_parent(
    make_proxy: ProxyFactory, legacy: Fake, agent: Fake
) -> None:
    """The client's trace id and flags reach legacy and the shadow agent; each call
    names its own parent (not the client's span), and a valid tracestate goes along
    normalized."""
    proxy = await make_proxy(**shadow_config(legacy, agent))
    state = "vendor=opaque , other@sys=v2"
    await get(proxy, {"traceparent": TRACEPARENT, "tracestate": state})
    [on_legacy], [on_agent] = legacy.seen, agent.seen
    (t1, p1, f1), (t2, p2, f2) = parent(on_legacy), parent(on_agent)
    assert t1 == t2 == TRACE
    assert f1 == f2 == "01"
    assert len({p1, p2, CALLER}) == 3
    assert tracestate(on_legacy) == tracestate(on_agent) == ["vendor=opaque,other@sys=v2"]


@pytest.mark.parametrize(
    "state",
    [
        "Vendor=upper-case-key",
        "a=1,a=2",  # a key twice
        "novalue",
        ",".join(f"k{i}=v" for i in range(33)),  # over 32 members
    ],
)
async def test_an_invalid_tracestate_is_dropped_and_the_trace_kept(
    make_proxy: ProxyFactory, legacy: Fake, agent: Fake, state: str
) -> None:
    """A tracestate the spec calls invalid reaches no backend; the trace goes on."""
    proxy = await make_proxy(**shadow_config(legacy, agent))
    await get(proxy, {"traceparent": TRACEPARENT, "tracestate": state})
    for seen in (legacy.seen[0], agent.seen[0]):
        assert parent(seen)[0] == TRACE
        assert tracestate(seen) == []


@pytest.mark.parametrize(
    "headers",
    [
        {},
        {"traceparent": "not-a-traceparent", "tracestate": "vendor=dropped"},
        {"traceparent": f"00-{'0' * 32}-{CALLER}-01"},  # all-zero trace id
        {"traceparent": TRACEPARENT.upper()},
        CIMultiDict([("traceparent", TRACEPARENT), ("traceparent", TRACEPARENT)]),
    ],
    ids=["none", "garbage", "zero-trace", "upper-case", "repeated"],
)
async def test_without_a_usable_traceparent_one_new_trace_is_shared_by_every_call(
    make_proxy: ProxyFactory, legacy: Fake, agent: Fake, headers: Any
) -> None:
    """The proxy starts a new sampled trace; legacy's call and the shadow copy are two
    children of it, and the log events of the request name it."""
    proxy = await make_proxy(**shadow_config(legacy, agent))
    agent.body = b'{"ok": false}'  # a mismatch, so there is a log event to look at
    with logs_with_context() as logs:
        await get(proxy, headers)
    (t1, p1, f1), (t2, p2, f2) = parent(legacy.seen[0]), parent(agent.seen[0])
    assert t1 == t2 != TRACE
    assert re.fullmatch(r"[0-9a-f]{32}", t1)
    assert p1 != p2
    assert f1 == f2 == "03"  # sampled, and the trace id is random
    assert tracestate(legacy.seen[0]) == tracestate(agent.seen[0]) == []
    [mismatch] = [e for e in logs if e["event"] == "mismatch"]
    assert mismatch["trace_id"] == t1


@pytest.mark.parametrize("backend", ["legacy", "agent"])
async def test_a_second_call_for_noise_learning_is_a_child_of_its_own(
    make_proxy: ProxyFactory, legacy: Fake, agent: Fake, backend: str
) -> None:
    """Asking one backend twice (noise learning): both calls carry the trace, each
    with its own parent."""
    cfg = shadow_config(legacy, agent)
    cfg["routes"][0]["noise"] = {"enabled": True, "percent": 100, "backend": backend}
    proxy = await make_proxy(**cfg)
    await get(proxy, {"traceparent": TRACEPARENT})
    calls = [parent(s) for s in [*legacy.seen, *agent.seen]]
    assert len(calls) == 3
    assert {trace for trace, _, _ in calls} == {TRACE}
    assert len({span for _, span, _ in calls} | {CALLER}) == 4


async def test_a_live_agent_call_and_legacy_alongside_are_two_children(
    make_proxy: ProxyFactory, legacy: Fake, agent: Fake
) -> None:
    """The agent serving live and legacy called alongside each get their own parent."""
    proxy = await make_proxy(**live_config(legacy, agent))
    await get(proxy, {"traceparent": TRACEPARENT})
    (t1, p1, _), (t2, p2, _) = parent(agent.seen[0]), parent(legacy.seen[0])
    assert t1 == t2 == TRACE
    assert len({p1, p2, CALLER}) == 3


async def test_each_retry_attempt_is_a_child_of_its_own(
    make_proxy: ProxyFactory, legacy: Fake, agent: Fake
) -> None:
    """A 503 retried: both attempts and legacy's call alongside carry the trace, each
    with a different parent id, so the agent's trace shows two attempts."""
    agent.script = [Reply(status=503)]
    proxy = await make_proxy(**live_config(legacy, agent, retries=FAST_RETRIES))
    await get(proxy, {"traceparent": TRACEPARENT})
    calls = [parent(s) for s in [*agent.seen, *legacy.seen]]
    assert len(calls) == 3
    assert {trace for trace, _, _ in calls} == {TRACE}
    assert len({span for _, span, _ in calls} | {CALLER}) == 4


async def test_a_fallback_to_legacy_is_its_own_child_and_its_log_names_the_trace(
    make_proxy: ProxyFactory, legacy: Fake
) -> None:
    """An unreachable agent on a POST: legacy answers instead, under the client's
    trace with a parent of its own, and the fallback event names the trace."""
    cfg = live_config(legacy, dead_url(), retries={"attempts": 1})
    proxy = await make_proxy(**cfg)
    with logs_with_context() as logs:
        await get(proxy, {"traceparent": TRACEPARENT, "tracestate": "vendor=v"}, method="POST")
    [seen] = legacy.seen
    trace, span, _ = parent(seen)
    assert (trace, tracestate(seen)) == (TRACE, ["vendor=v"])
    assert span != CALLER
    [fallback] = [e for e in logs if e["event"] == "fallback"]
    assert (fallback["trace_id"], fallback["reason"]) == (TRACE, "error")


async def test_shadow_side_log_events_carry_the_trace_id(
    make_proxy: ProxyFactory, legacy: Fake
) -> None:
    """Events logged by the shadow task (off the request's own task) name the trace."""
    proxy = await make_proxy(**shadow_config(legacy, dead_url()))
    with logs_with_context() as logs:
        await get(proxy, {"traceparent": TRACEPARENT})
    shadow = [e for e in logs if e["event"] in ("shadow_failed", "comparison_error")]
    assert [e["event"] for e in shadow] == ["shadow_failed", "comparison_error"]
    assert {e["trace_id"] for e in shadow} == {TRACE}


# -- span export -----------------------------------------------------------------


def backend(span: ProtoSpan) -> str:
    values = [a.value.string_value for a in span.attributes if a.key == "shadow_proxy.backend"]
    return values[0] if values else ""


def attribute(span: ProtoSpan, key: str) -> Any:
    [value] = [a.value for a in span.attributes if a.key == key]
    return getattr(value, value.WhichOneof("value"))


SCENARIOS = {
    # name: (method, the spans expected as (name, backend))
    "shadow": ("GET", {("live", "legacy"), ("shadow", "agent"), ("compare", "")}),
    "agent": ("GET", {("live", "agent"), ("live", "legacy"), ("compare", "")}),
    "fallback": ("POST", {("live", "agent"), ("fallback", "legacy")}),  # agent unreachable
}


@pytest.mark.parametrize("scenario", SCENARIOS)
async def test_exported_spans_are_the_parents_the_upstreams_saw(
    make_proxy: ProxyFactory, legacy: Fake, agent: Fake, collector: Collector, scenario: str
) -> None:
    """With OTLP export on, each upstream call's span arrives under the client's span,
    and its span id is the parent id that upstream received; the comparison has a
    span of its own with its verdict."""
    method, expected = SCENARIOS[scenario]
    tracing = {"otlp_endpoint": collector.url, "interval": "20ms", "timeout": "2s"}
    if scenario == "shadow":
        cfg = shadow_config(legacy, agent, tracing=tracing)
    else:
        upstream = dead_url() if scenario == "fallback" else agent
        cfg = {**live_config(legacy, upstream, retries={"attempts": 1}), "tracing": tracing}
    proxy = await make_proxy(**cfg)
    await get(proxy, {"traceparent": TRACEPARENT}, method=method)
    spans = await collector.wait(len(expected))
    assert {(s.name, backend(s)) for s in spans} == expected
    assert len(spans) == len(expected)
    for span in spans:
        assert span.trace_id.hex() == TRACE
        assert span.parent_span_id.hex() == CALLER
    for span in spans:
        fake = {"legacy": legacy, "agent": agent}.get(backend(span))
        if fake is not None and fake.seen:
            assert [parent(s)[1] for s in fake.seen] == [span.span_id.hex()]
    if ("compare", "") in expected:
        compare = next(s for s in spans if s.name == "compare")
        assert attribute(compare, "shadow_proxy.verdict") == "match"
