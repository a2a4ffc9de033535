"""Agent usage through the proxy: the real ``openai`` and ``anthropic`` SDK clients
talk to the proxy, which hands them the fake agent's bytes unchanged (serving
live, or from legacy while a second fake agent gets the shadow copy), and the
GenAI metrics count exactly what the agent's answers said."""

from __future__ import annotations

import gzip
import json
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

import anthropic
import httpx2
import openai
import pytest
from agents import AGENT_MAPPING, FakeAgent, FakeTool, start_agent
from aiohttp import web
from conftest import Proxy, ProxyFactory
from prometheus_client import generate_latest
from prometheus_client.parser import text_string_to_metric_families

TOOLS = [FakeTool("lookup_order", '{"order": 7}'), FakeTool("cancel", '{"order": 7,')]
MESSAGES: list[Any] = [{"role": "user", "content": "Where is order 7?"}]
ROUTE = "llm"


class Copying(httpx2.AsyncByteStream):
    """A response body stream that keeps a copy of each chunk it hands on."""

    def __init__(self, stream: httpx2.AsyncByteStream, copy: bytearray) -> None:
        self._stream = stream
        self._copy = copy

    async def __aiter__(self) -> AsyncIterator[bytes]:
        async for chunk in self._stream:
            self._copy.extend(chunk)
            yield chunk

    async def aclose(self) -> None:
        await self._stream.aclose()


@dataclass
class Recorder(httpx2.AsyncBaseTransport):
    """The client's transport, keeping the exact bytes of each response body as
    they came off the wire (before any decoding the SDK does)."""

    bodies: list[bytearray] = field(default_factory=list)
    inner: httpx2.AsyncHTTPTransport = field(default_factory=httpx2.AsyncHTTPTransport)

    async def handle_async_request(self, request: httpx2.Request) -> httpx2.Response:
        response = await self.inner.handle_async_request(request)
        assert isinstance(response.stream, httpx2.AsyncByteStream)
        self.bodies.append(bytearray())
        return httpx2.Response(
            response.status_code,
            headers=response.headers,
            stream=Copying(response.stream, self.bodies[-1]),
            extensions=response.extensions,
        )

    async def aclose(self) -> None:
        await self.inner.aclose()


@dataclass
class Clients:
    """SDK clients pointed at the proxy, sharing one recording transport."""

    proxy: Proxy
    recorder: Recorder
    openai: openai.AsyncOpenAI
    anthropic: anthropic.AsyncAnthropic

    def received(self) -> bytes:
        return bytes(self.recorder.bodies[-1])

    async def close(self) -> None:
        await self.openai.close()
        await self.anthropic.close()


async def clients(proxy: Proxy) -> Clients:
    recorder = Recorder()
    base = str(proxy.client.make_url("")).rstrip("/")
    return Clients(
        proxy,
        recorder,
        openai.AsyncOpenAI(
            api_key="sk-test",
            base_url=f"{base}/v1",
            max_retries=0,
            http_client=httpx2.AsyncClient(transport=recorder),
        ),
        anthropic.AsyncAnthropic(
            api_key="sk-ant-test",
            base_url=base,
            max_retries=0,
            http_client=httpx2.AsyncClient(transport=recorder),
        ),
    )


def live_config(agent: FakeAgent, legacy_url: str, /, **more: Any) -> dict[str, Any]:
    """The agent serves every request on /v1/ live (a manual rollout at 100%)."""
    fallback = more.pop("fallback", {})
    return {
        "backends": {"legacy": {"url": legacy_url}, "agent": {"url": agent.url}},
        "routes": [
            {
                "name": ROUTE,
                "match": {"prefix": "/v1/"},
                "rollout": {"mode": "manual", "percent": 100},
                "fallback": fallback,
                **more,
            }
        ],
    }


def shadow_config(legacy: FakeAgent, agent: FakeAgent, **more: Any) -> dict[str, Any]:
    """Legacy (one fake agent) serves; the other gets every request as a shadow copy."""
    return {
        "backends": {"legacy": {"url": legacy.url}, "agent": {"url": agent.url}},
        "routes": [
            {
                "name": ROUTE,
                "match": {"prefix": "/v1/"},
                "side_effect_free": True,  # the SDKs POST: mirroring them is opted into
                "shadow": {"enabled": True},
                **more,
            }
        ],
    }


# -- reading the metrics ---------------------------------------------------------


def total(proxy: Proxy, name: str, **labels: str) -> float:
    """``sum(name{labels})`` from the exposition text, as Prometheus would read it.
    A family with no series yet reads 0; a name no family has is an error, so a
    typo cannot pass for a zero."""
    text = generate_latest(proxy.metrics.registry).decode()
    known, values = False, []
    for family in text_string_to_metric_families(text):
        if name == family.name or name.startswith(family.name + "_"):
            known = True
        for sample in family.samples:
            if sample.name == name and all(sample.labels.get(k) == v for k, v in labels.items()):
                values.append(sample.value)
    assert known, f"no metric family for {name!r}"
    return float(sum(values))


def tokens(proxy: Proxy, kind: str, mode: str = "live", stat: str = "sum") -> float:
    name = f"gen_ai_client_token_usage_{stat}"
    return total(proxy, name, route=ROUTE, mode=mode, gen_ai_token_type=kind)


def tool_calls(proxy: Proxy, tool: str, outcome: str) -> float:
    name = "shadow_proxy_agent_tool_calls_total"
    return total(proxy, name, route=ROUTE, tool=tool, outcome=outcome)


def missing(proxy: Proxy, mode: str = "live") -> float:
    return total(proxy, "shadow_proxy_agent_usage_missing_total", route=ROUTE, mode=mode)


# -- the calls, each as an SDK user would make it --------------------------------

Call = Callable[[Clients], Awaitable[str]]


async def chat(c: Clients) -> str:
    answer = await c.openai.chat.completions.create(model="m", messages=MESSAGES)
    return answer.choices[0].message.content or ""


async def chat_stream(c: Clients) -> str:
    stream = await c.openai.chat.completions.create(
        model="m", messages=MESSAGES, stream=True, stream_options={"include_usage": True}
    )
    return "".join([ch.choices[0].delta.content or "" async for ch in stream if ch.choices])


async def responses(c: Clients) -> str:
    answer = await c.openai.responses.create(model="m", input="Where is order 7?")
    return answer.output_text


async def responses_stream(c: Clients) -> str:
    async with c.openai.responses.stream(model="m", input="Where is order 7?") as stream:
        return (await stream.get_final_response()).output_text


async def messages(c: Clients) -> str:
    answer = await c.anthropic.messages.create(model="m", max_tokens=64, messages=MESSAGES)
    block = answer.content[0]
    return block.text if block.type == "text" else ""


async def messages_stream(c: Clients) -> str:
    async with c.anthropic.messages.stream(model="m", max_tokens=64, messages=MESSAGES) as s:
        return "".join([t async for t in s.text_stream])


CALLS: list[tuple[str, Call, str]] = [
    ("chat", chat, "openai"),
    ("chat_stream", chat_stream, "openai"),
    ("responses", responses, "openai"),
    ("responses_stream", responses_stream, "openai"),
    ("messages", messages, "anthropic"),
    ("messages_stream", messages_stream, "anthropic"),
]


@pytest.mark.parametrize("mode", ["buffered", "streamed"])
@pytest.mark.parametrize(("name", "call", "provider"), CALLS, ids=[c[0] for c in CALLS])
async def test_sdk_served_live_by_the_agent_gets_its_bytes_and_its_usage_is_counted(
    make_proxy: ProxyFactory,
    aiohttp_server: Any,
    mode: str,
    name: str,
    call: Call,
    provider: str,
) -> None:
    """An SDK call served live by the agent gets the agent's exact bytes, and its
    tokens, duration and tool calls are counted once under mode=live."""
    agent = await start_agent(
        aiohttp_server, tools=TOOLS, input_tokens=300, cached_tokens=100, output_tokens=40
    )
    legacy = await start_agent(aiohttp_server, text="legacy must not answer")
    proxy = await make_proxy(**live_config(agent, legacy.url, fallback={"mode": mode}))
    c = await clients(proxy)
    try:
        text = await call(c)
    finally:
        await c.close()
    await proxy.settle()
    assert text == agent.text
    assert c.received() == agent.sent[-1]
    assert legacy.seen == []
    assert tokens(proxy, "input") == 300
    assert tokens(proxy, "output") == 40
    assert tokens(proxy, "input", stat="count") == tokens(proxy, "output", stat="count") == 1
    assert (
        total(
            proxy,
            "gen_ai_client_operation_duration_seconds_count",
            route=ROUTE,
            mode="live",
            gen_ai_operation_name="chat",
            gen_ai_provider_name=provider,
            gen_ai_response_model=agent.model,
            error_type="",
        )
        == 1
    )
    per_request = "shadow_proxy_agent_tokens_per_request_sum"
    assert total(proxy, per_request, route=ROUTE, mode="live") == 340
    assert tool_calls(proxy, "lookup_order", "ok") == 1
    # An Anthropic JSON body carries ``input`` parsed: the fake sends the broken text
    # as a string there, which the reader takes as given (see the report).
    bad = "ok" if name == "messages" else "invalid_arguments"
    assert tool_calls(proxy, "cancel", bad) == 1
    assert missing(proxy) == 0
    assert tokens(proxy, "input", mode="shadow", stat="count") == 0


@pytest.mark.parametrize(("name", "call", "provider"), CALLS, ids=[c[0] for c in CALLS])
async def test_sdk_served_by_legacy_gets_legacys_bytes_and_the_shadow_answer_is_counted(
    make_proxy: ProxyFactory, aiohttp_server: Any, name: str, call: Call, provider: str
) -> None:
    """In shadow mode the SDK gets legacy's exact bytes, and the shadow agent's own
    counts (not legacy's) go under mode=shadow."""
    legacy = await start_agent(aiohttp_server, text="Legacy says Tuesday.", input_tokens=5)
    agent = await start_agent(
        aiohttp_server, tools=TOOLS[:1], model="shadow-model", input_tokens=90, output_tokens=9
    )
    proxy = await make_proxy(**shadow_config(legacy, agent))
    c = await clients(proxy)
    try:
        text = await call(c)
    finally:
        await c.close()
    await proxy.settle()
    assert text == legacy.text
    assert c.received() == legacy.sent[-1]
    assert len(agent.seen) == 1
    assert agent.seen[0].body == legacy.seen[0].body  # the same request, mirrored
    assert proxy.outcome("completed", route=ROUTE) == 1
    assert (tokens(proxy, "input", "shadow"), tokens(proxy, "output", "shadow")) == (90, 9)
    assert tokens(proxy, "input", "shadow", stat="count") == 1
    duration = "gen_ai_client_operation_duration_seconds_count"
    labels = {"gen_ai_provider_name": provider, "gen_ai_response_model": "shadow-model"}
    assert total(proxy, duration, route=ROUTE, mode="shadow", **labels) == 1
    assert total(proxy, duration, route=ROUTE, mode="live") == 0
    per_request = "shadow_proxy_agent_tokens_per_request_sum"
    assert total(proxy, per_request, route=ROUTE, mode="shadow") == 99
    assert tokens(proxy, "input", "live", stat="count") == 0
    assert tool_calls(proxy, "lookup_order", "ok") == 1


@pytest.mark.parametrize("mode", ["buffered", "streamed"])
async def test_a_chat_stream_without_include_usage_counts_usage_missing_and_no_zero(
    make_proxy: ProxyFactory, aiohttp_server: Any, mode: str
) -> None:
    """A complete chat stream not asked for usage has no counts: usage_missing goes
    up, no token observation is made, yet the operation and its tools are counted."""
    agent = await start_agent(aiohttp_server, tools=TOOLS)
    proxy = await make_proxy(**live_config(agent, agent.url, fallback={"mode": mode}))
    c = await clients(proxy)
    try:
        stream = await c.openai.chat.completions.create(model="m", messages=MESSAGES, stream=True)
        assert [ch.usage async for ch in stream if ch.usage is not None] == []
    finally:
        await c.close()
    await proxy.settle()
    assert c.received() == agent.sent[-1]
    assert missing(proxy) == 1
    assert tokens(proxy, "input", stat="count") == tokens(proxy, "output", stat="count") == 0
    assert total(proxy, "shadow_proxy_agent_tokens_per_request_count", route=ROUTE) == 0
    assert total(proxy, "gen_ai_client_operation_duration_seconds_count", route=ROUTE) == 1
    assert tool_calls(proxy, "lookup_order", "ok") == 1
    assert tool_calls(proxy, "cancel", "invalid_arguments") == 1


async def test_a_live_stream_cut_midway_reaches_the_client_cut_and_counts_usage_missing(
    make_proxy: ProxyFactory, aiohttp_server: Any
) -> None:
    """Streamed, the agent's stream cut after its first events: the SDK gets exactly
    those bytes and then an error; usage is missing (no zeros), the half-sent tool
    call is not blamed on the agent, and the operation is counted as failed."""
    agent = await start_agent(aiohttp_server, tools=TOOLS, cut_after=8)
    proxy = await make_proxy(**live_config(agent, agent.url, fallback={"mode": "streamed"}))
    c = await clients(proxy)
    try:
        with pytest.raises(openai.APIConnectionError):
            await chat_stream(c)
    finally:
        await c.close()
    await proxy.settle()
    assert agent.sent[-1] and c.received() == agent.sent[-1]
    assert missing(proxy) == 1
    assert tokens(proxy, "input", stat="count") == 0
    assert tool_calls(proxy, "lookup_order", "ok") == 1  # its arguments were whole
    assert total(proxy, "shadow_proxy_agent_tool_calls_total", tool="cancel") == 0
    duration = "gen_ai_client_operation_duration_seconds_count"
    assert total(proxy, duration, route=ROUTE, error_type="") == 0
    assert total(proxy, duration, route=ROUTE, error_type="disconnect") == 1


async def test_a_buffered_answer_cut_midway_falls_back_and_counts_usage_missing(
    make_proxy: ProxyFactory, aiohttp_server: Any
) -> None:
    """Buffered, a cut agent stream is a failure legacy answers for (after a retry);
    what the agent did send each time still counts as an answer whose usage is missing."""
    agent = await start_agent(aiohttp_server, cut_after=4)
    legacy = await start_agent(aiohttp_server, text="Legacy says Tuesday.")
    cfg = live_config(agent, legacy.url, side_effect_free=True)
    proxy = await make_proxy(**cfg)
    c = await clients(proxy)
    try:
        assert await chat_stream(c) == legacy.text
    finally:
        await c.close()
    await proxy.settle()
    assert c.received() == legacy.sent[-1]
    assert proxy.value("shadow_proxy_fallbacks_total", route=ROUTE, reason="error") == 1
    assert len(agent.seen) == 2  # a side-effect-free request is retried once by default
    assert missing(proxy) == 2
    duration = "gen_ai_client_operation_duration_seconds_count"
    assert total(proxy, duration, route=ROUTE, error_type="disconnect") == 2
    assert tokens(proxy, "input", stat="count") == 0


async def test_a_shadow_stream_cut_midway_counts_usage_missing_under_shadow(
    make_proxy: ProxyFactory, aiohttp_server: Any
) -> None:
    """The shadow agent's stream cut short: the client is untouched, the shadow call
    is an error, and its usage is missing rather than zero."""
    legacy = await start_agent(aiohttp_server, text="Legacy says Tuesday.")
    agent = await start_agent(aiohttp_server, message_deltas=2, cut_after=3)
    proxy = await make_proxy(**shadow_config(legacy, agent))
    c = await clients(proxy)
    try:
        assert await messages_stream(c) == legacy.text
    finally:
        await c.close()
    await proxy.settle()
    assert c.received() == legacy.sent[-1]
    assert proxy.outcome("error", route=ROUTE) == 1
    assert missing(proxy, "shadow") == 1
    assert missing(proxy, "live") == 0
    duration = "gen_ai_client_operation_duration_seconds_count"
    assert total(proxy, duration, route=ROUTE, mode="shadow", error_type="disconnect") == 1
    assert tokens(proxy, "input", "shadow", stat="count") == 0


async def test_model_and_tool_labels_past_the_allow_list_become_other(
    make_proxy: ProxyFactory, aiohttp_server: Any
) -> None:
    """Configured names pass, then learn_labels more as first seen, then ``other``:
    cardinality stays bounded whatever models and tools the agent names."""
    agent = await start_agent(aiohttp_server)
    cfg = live_config(agent, agent.url)
    cfg["metrics"] = {"models": ["gpt-known"], "tools": ["search"], "learn_labels": 1}
    proxy = await make_proxy(**cfg)
    c = await clients(proxy)
    seen = ["gpt-known", "gpt-new", "gpt-newer", "gpt-newest"]
    tools = ["search", "book", "pay", "refund"]
    try:
        for model, tool in zip(seen, tools, strict=True):
            agent.model, agent.tools = model, [FakeTool(tool)]
            await chat(c)
    finally:
        await c.close()
    await proxy.settle()
    duration = "gen_ai_client_operation_duration_seconds_count"
    by_model = {
        m: total(proxy, duration, route=ROUTE, gen_ai_response_model=m) for m in [*seen, "other"]
    }
    assert by_model == {"gpt-known": 1, "gpt-new": 1, "gpt-newer": 0, "gpt-newest": 0, "other": 2}
    by_tool = {t: tool_calls(proxy, t, "ok") for t in [*tools, "other"]}
    assert by_tool == {"search": 1, "book": 1, "pay": 0, "refund": 0, "other": 2}
    assert tokens(proxy, "input", stat="count") == 4


async def test_an_in_house_agent_is_read_through_its_mapping(
    make_proxy: ProxyFactory, aiohttp_server: Any
) -> None:
    """A mapped in-house API: tokens, model and per-call tool outcomes come from the
    configured JSON paths, and the client gets the agent's bytes."""
    agent = await start_agent(aiohttp_server, tools=TOOLS, model="house-1")
    mapped = {"format": "mapped", "mapping": AGENT_MAPPING}
    proxy = await make_proxy(**live_config(agent, agent.url, agent=mapped))
    response = await proxy.client.post("/v1/agent", json={"q": "order 7"})
    assert await response.read() == agent.sent[-1]
    await proxy.settle()
    assert (tokens(proxy, "input"), tokens(proxy, "output")) == (42, 17)
    duration = "gen_ai_client_operation_duration_seconds_count"
    assert total(proxy, duration, route=ROUTE, gen_ai_response_model="house-1") == 1
    assert tool_calls(proxy, "lookup_order", "ok") == 1
    # the agent said "ok", but arguments that are not JSON are the agent's fault
    assert tool_calls(proxy, "cancel", "invalid_arguments") == 1


async def test_a_gzipped_shadow_answer_is_read_for_usage_and_asked_for_plain(
    make_proxy: ProxyFactory, aiohttp_server: Any
) -> None:
    """An agent that compresses whatever it is asked still has its tokens counted
    (and is asked for identity: the shadow answer reaches no client)."""
    answer = {
        "object": "chat.completion",
        "model": "m-1",
        "choices": [{"index": 0, "message": {"role": "assistant", "content": "ok"}}],
        "usage": {"prompt_tokens": 11, "completion_tokens": 4, "total_tokens": 15},
    }
    asked: list[str] = []

    async def compressed(request: web.Request) -> web.Response:
        asked.append(request.headers.get("Accept-Encoding", ""))
        await request.read()
        body = gzip.compress(json.dumps(answer).encode())
        headers = {"Content-Encoding": "gzip", "Content-Type": "application/json"}
        return web.Response(body=body, headers=headers)

    app = web.Application()
    app.router.add_post("/{tail:.*}", compressed)
    server = await aiohttp_server(app)
    legacy = await start_agent(aiohttp_server)
    config = shadow_config(legacy, legacy)
    config["backends"]["agent"] = {"url": str(server.make_url(""))}
    proxy = await make_proxy(**config)
    response = await proxy.client.post("/v1/chat/completions", json={"model": "m-1"})
    assert response.status == 200
    await proxy.settle()
    assert asked == ["identity"]
    assert tokens(proxy, "input", mode="shadow") == 11
    assert tokens(proxy, "output", mode="shadow") == 4


async def test_an_error_answer_is_not_counted_as_usage_missing(
    make_proxy: ProxyFactory, aiohttp_server: Any
) -> None:
    """A 429 says why there is no usage: its error type counts it, not usage_missing."""

    async def refused(request: web.Request) -> web.Response:
        await request.read()
        return web.json_response({"error": {"message": "slow down"}}, status=429)

    app = web.Application()
    app.router.add_post("/{tail:.*}", refused)
    server = await aiohttp_server(app)
    legacy = await start_agent(aiohttp_server)
    config = shadow_config(legacy, legacy)
    config["backends"]["agent"] = {"url": str(server.make_url(""))}
    config["routes"][0]["agent"] = {"format": "openai_chat"}
    proxy = await make_proxy(**config)
    response = await proxy.client.post("/v1/chat/completions", json={"model": "m-1"})
    assert response.status == 200
    await proxy.settle()
    assert missing(proxy, mode="shadow") == 0
    duration = "gen_ai_client_operation_duration_seconds_count"
    assert total(proxy, duration, route=ROUTE, mode="shadow", error_type="4xx") == 1


@pytest.mark.parametrize(
    ("agent_tools", "verdict"),
    [
        ([FakeTool("lookup_order", '{"order": 7}')], "match"),
        ([FakeTool("cancel", '{"order": 7}')], "mismatch"),
    ],
)
async def test_a_tool_calls_comparator_reads_legacys_calls_like_the_agents(
    make_proxy: ProxyFactory, aiohttp_server: Any, agent_tools: list[FakeTool], verdict: str
) -> None:
    """Legacy's answer is read for its tool calls too, so the same call agrees
    and another tool is a mismatch (not every agent call counted as extra)."""
    legacy = await start_agent(aiohttp_server, tools=[FakeTool("lookup_order", '{"order": 7}')])
    agent = await start_agent(aiohttp_server, tools=agent_tools)
    proxy = await make_proxy(**shadow_config(legacy, agent, compare=["tool_calls"]))
    response = await proxy.client.post(
        "/v1/chat/completions", json={"model": "m", "messages": MESSAGES}
    )
    assert response.status == 200
    await proxy.settle()
    assert proxy.verdict(verdict, route=ROUTE) == 1
