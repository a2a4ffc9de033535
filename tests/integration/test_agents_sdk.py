"""The fake agent is faithful: the real ``openai`` and ``anthropic`` SDK clients
talk to it directly, streaming and not, and parse its answers; and a
:class:`UsageReader` fed the exact bytes the fake sent reports the same token
counts and tool calls the SDK saw."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import anthropic
import httpx2
import openai
import pytest
from agents import AGENT_MAPPING, FakeAgent, FakeTool, start_agent

from proxy.usage import AgentFormat, AgentSettings, Usage, UsageMapping, UsageReader, read_usage

TOOLS = [FakeTool("lookup_order", '{"order": 7, "fields": ["eta"]}'), FakeTool("refund", "{}")]
BAD_TOOL = FakeTool("cancel", '{"order": 7,')  # invalid JSON arguments


def read(agent: FakeAgent, content_type: str, step: int = 7, complete: bool = True) -> Usage:
    """The reader's view of the last answer, fed in ``step``-byte chunks as a proxy would."""
    reader = UsageReader(AgentSettings(), content_type)
    body = agent.sent[-1]
    for i in range(0, len(body), step):
        reader.feed(body[i : i + step])
    usage = reader.finish(complete)
    assert usage is not None
    return usage


def seen_calls(calls: list[tuple[str, str]]) -> list[tuple[str, Any, bool]]:
    """(name, arguments, valid) from the raw argument text an SDK handed over."""
    out = []
    for name, text in calls:
        try:
            out.append((name, json.loads(text), True))
        except ValueError:
            out.append((name, text, False))
    return out


def read_calls(usage: Usage) -> list[tuple[str, Any, bool]]:
    return [(c.name, c.arguments, c.valid) for c in usage.tool_calls]


@pytest.fixture
async def openai_client(aiohttp_server: Any) -> AsyncIterator[tuple[FakeAgent, openai.AsyncOpenAI]]:
    agent = await start_agent(
        aiohttp_server, tools=[*TOOLS, BAD_TOOL], input_tokens=120, cached_tokens=64
    )
    client = openai.AsyncOpenAI(api_key="sk-test", base_url=f"{agent.url}/v1", max_retries=0)
    yield agent, client
    await client.close()


@pytest.fixture
async def anthropic_client(
    aiohttp_server: Any,
) -> AsyncIterator[tuple[FakeAgent, anthropic.AsyncAnthropic]]:
    agent = await start_agent(
        aiohttp_server,
        tools=TOOLS,
        input_tokens=300,
        cached_tokens=200,
        cache_creation_tokens=50,
        message_deltas=3,
    )
    client = anthropic.AsyncAnthropic(api_key="sk-ant-test", base_url=agent.url, max_retries=0)
    yield agent, client
    await client.close()


MESSAGES: list[Any] = [{"role": "user", "content": "Where is order 7?"}]


async def test_openai_chat_answer_reads_as_the_sdk_parses_it(
    openai_client: tuple[FakeAgent, openai.AsyncOpenAI],
) -> None:
    """A chat completion's usage and tool calls read from its bytes equal what the SDK parsed."""
    agent, client = openai_client
    answer = await client.chat.completions.create(model="m", messages=MESSAGES)
    assert answer.choices[0].message.content == agent.text
    assert answer.usage is not None
    sdk = [(c.function.name, c.function.arguments) for c in answer.choices[0].message.tool_calls]  # type: ignore[union-attr]
    usage = read(agent, "application/json")
    assert usage.format is AgentFormat.OPENAI_CHAT
    assert usage.model == answer.model == agent.model
    assert (
        (usage.input_tokens, usage.output_tokens)
        == (
            answer.usage.prompt_tokens,
            answer.usage.completion_tokens,
        )
        == (120, 17)
    )
    assert answer.usage.prompt_tokens_details is not None
    assert usage.cache_read_tokens == answer.usage.prompt_tokens_details.cached_tokens == 64
    assert read_calls(usage) == seen_calls(sdk)
    assert read_calls(usage)[-1] == ("cancel", '{"order": 7,', False)


async def test_openai_chat_stream_with_include_usage_reads_as_the_sdk_parses_it(
    openai_client: tuple[FakeAgent, openai.AsyncOpenAI],
) -> None:
    """A streamed chat completion asked for usage: the last chunk's counts and the
    joined argument fragments match what the SDK streamed."""
    agent, client = openai_client
    stream = await client.chat.completions.create(
        model="m", messages=MESSAGES, stream=True, stream_options={"include_usage": True}
    )
    text, names, arguments, usages = [], {}, {}, []
    async for chunk in stream:
        if chunk.usage is not None:
            usages.append(chunk.usage)
        for choice in chunk.choices:
            text.append(choice.delta.content or "")
            for call in choice.delta.tool_calls or ():
                assert call.function is not None
                if call.function.name:
                    names[call.index] = call.function.name
                arguments[call.index] = arguments.get(call.index, "") + (
                    call.function.arguments or ""
                )
    assert "".join(text) == agent.text
    assert agent.seen[-1].body["stream_options"] == {"include_usage": True}
    [sdk_usage] = usages  # only the last chunk carries it
    usage = read(agent, "text/event-stream")
    assert usage.complete
    assert (usage.input_tokens, usage.output_tokens, usage.cache_read_tokens) == (
        sdk_usage.prompt_tokens,
        sdk_usage.completion_tokens,
        sdk_usage.prompt_tokens_details.cached_tokens if sdk_usage.prompt_tokens_details else None,
    )
    assert read_calls(usage) == seen_calls([(names[i], arguments[i]) for i in sorted(names)])
    assert usage.tool_calls[-1].valid is False


async def test_openai_chat_stream_without_include_usage_reports_no_counts(
    openai_client: tuple[FakeAgent, openai.AsyncOpenAI],
) -> None:
    """Without ``include_usage`` neither the SDK nor the reader sees counts, and the
    reader says so instead of reporting zeros."""
    agent, client = openai_client
    stream = await client.chat.completions.create(model="m", messages=MESSAGES, stream=True)
    assert [chunk.usage async for chunk in stream if chunk.usage is not None] == []
    usage = read(agent, "text/event-stream")
    assert usage.complete and not usage.reported
    assert usage.input_tokens is None and usage.output_tokens is None
    assert [c.name for c in usage.tool_calls] == ["lookup_order", "refund", "cancel"]


async def test_openai_responses_answer_reads_as_the_sdk_parses_it(
    openai_client: tuple[FakeAgent, openai.AsyncOpenAI],
) -> None:
    """A Responses API answer: usage and function_call items match the SDK's."""
    agent, client = openai_client
    answer = await client.responses.create(model="m", input="Where is order 7?")
    assert answer.output_text == agent.text
    assert answer.usage is not None
    sdk = [(i.name, i.arguments) for i in answer.output if i.type == "function_call"]
    usage = read(agent, "application/json")
    assert usage.format is AgentFormat.OPENAI_RESPONSES
    assert (usage.input_tokens, usage.output_tokens, usage.cache_read_tokens) == (
        answer.usage.input_tokens,
        answer.usage.output_tokens,
        answer.usage.input_tokens_details.cached_tokens,
    )
    assert read_calls(usage) == seen_calls(sdk)


async def test_openai_responses_stream_reads_as_the_sdk_accumulates_it(
    openai_client: tuple[FakeAgent, openai.AsyncOpenAI],
) -> None:
    """The SDK's stream helper accumulates the fake's events into the final response,
    and the reader's counts and calls match it."""
    agent, client = openai_client
    async with client.responses.stream(model="m", input="Where is order 7?") as stream:
        deltas = [e.delta async for e in stream if e.type == "response.output_text.delta"]
        final = await stream.get_final_response()
    assert "".join(deltas) == final.output_text == agent.text
    assert final.usage is not None
    sdk = [(i.name, i.arguments) for i in final.output if i.type == "function_call"]
    usage = read(agent, "text/event-stream", step=3)
    assert usage.complete
    assert (usage.input_tokens, usage.output_tokens) == (
        final.usage.input_tokens,
        final.usage.output_tokens,
    )
    assert usage.cache_read_tokens == final.usage.input_tokens_details.cached_tokens
    assert read_calls(usage) == seen_calls(sdk)


async def test_anthropic_answer_reads_as_the_sdk_parses_it(
    anthropic_client: tuple[FakeAgent, anthropic.AsyncAnthropic],
) -> None:
    """A Messages answer: input counts cache reads and writes in, as OpenTelemetry asks."""
    agent, client = anthropic_client
    answer = await client.messages.create(model="m", max_tokens=100, messages=MESSAGES)
    assert answer.content[0].type == "text" and answer.content[0].text == agent.text
    sdk = [(b.name, json.dumps(b.input)) for b in answer.content if b.type == "tool_use"]
    usage = read(agent, "application/json")
    assert usage.format is AgentFormat.ANTHROPIC and usage.provider == "anthropic"
    u = answer.usage
    assert u.cache_read_input_tokens is not None and u.cache_creation_input_tokens is not None
    assert usage.input_tokens == u.input_tokens + u.cache_read_input_tokens + (
        u.cache_creation_input_tokens
    )
    assert usage.input_tokens == 300
    assert (usage.output_tokens, usage.cache_read_tokens, usage.cache_creation_tokens) == (
        u.output_tokens,
        u.cache_read_input_tokens,
        u.cache_creation_input_tokens,
    )
    assert read_calls(usage) == seen_calls(sdk)


async def test_anthropic_stream_running_total_reads_as_the_sdk_accumulates_it(
    anthropic_client: tuple[FakeAgent, anthropic.AsyncAnthropic],
) -> None:
    """Three ``message_delta`` events carry running totals: the SDK's final message and
    the reader both report the last total, not the sum."""
    agent, client = anthropic_client
    async with client.messages.stream(model="m", max_tokens=100, messages=MESSAGES) as stream:
        text = [t async for t in stream.text_stream]
        final = await stream.get_final_message()
    assert "".join(text) == agent.text
    sdk = [(b.name, json.dumps(b.input)) for b in final.content if b.type == "tool_use"]
    usage = read(agent, "text/event-stream", step=5)
    assert usage.complete
    assert usage.output_tokens == final.usage.output_tokens == agent.output_tokens
    assert final.usage.cache_read_input_tokens is not None
    assert usage.cache_read_tokens == final.usage.cache_read_input_tokens
    assert read_calls(usage) == seen_calls(sdk)


async def test_anthropic_raw_stream_with_invalid_tool_input_reads_as_invalid(
    aiohttp_server: Any,
) -> None:
    """Streamed ``partial_json`` that joins to invalid JSON: the SDK hands over the same
    fragments, and the reader marks the call invalid_arguments."""
    agent = await start_agent(aiohttp_server, tools=[BAD_TOOL])
    client = anthropic.AsyncAnthropic(api_key="sk-ant-test", base_url=agent.url, max_retries=0)
    try:
        stream = await client.messages.create(
            model="m", max_tokens=100, messages=MESSAGES, stream=True
        )
        parts = [
            e.delta.partial_json
            async for e in stream
            if e.type == "content_block_delta" and e.delta.type == "input_json_delta"
        ]
    finally:
        await client.close()
    [call] = read(agent, "text/event-stream").tool_calls
    assert (call.name, call.arguments, call.valid) == ("cancel", "".join(parts), False)
    assert call.outcome == "invalid_arguments"


@pytest.mark.parametrize(
    ("path", "call"),
    [
        ("chat", lambda c: c.chat.completions.create(
            model="m", messages=MESSAGES, stream=True, stream_options={"include_usage": True})),
        ("responses", lambda c: c.responses.create(model="m", input="hi", stream=True)),
    ],
)  # fmt: skip
async def test_interrupted_openai_stream_fails_the_sdk_and_reports_no_counts(
    aiohttp_server: Any, path: str, call: Any
) -> None:
    """A stream cut midway: the SDK raises, and the reader reports an incomplete answer
    with no token counts."""
    agent = await start_agent(aiohttp_server, tools=TOOLS, cut_after=4)
    client = openai.AsyncOpenAI(api_key="sk-test", base_url=f"{agent.url}/v1", max_retries=0)
    try:
        with pytest.raises(openai.APIConnectionError):
            async for _ in await call(client):
                pass
    finally:
        await client.close()
    usage = read(agent, "text/event-stream", complete=False)
    assert not usage.complete and not usage.reported
    assert usage.model == agent.model


async def test_interrupted_anthropic_stream_fails_the_sdk_and_reports_no_counts(
    anthropic_client: tuple[FakeAgent, anthropic.AsyncAnthropic],
) -> None:
    """Cut after ``message_start`` (which already holds input counts): still no counts."""
    agent, client = anthropic_client
    agent.cut_after = 6
    # the stream helper lets the transport's error through unwrapped
    with pytest.raises((anthropic.APIConnectionError, httpx2.RemoteProtocolError)):
        async with client.messages.stream(model="m", max_tokens=10, messages=MESSAGES) as s:
            await s.until_done()
    usage = read(agent, "text/event-stream", complete=False)
    assert not usage.complete
    assert usage.input_tokens is None and usage.output_tokens is None


async def test_in_house_agent_answer_reads_with_its_mapping(aiohttp_server: Any) -> None:
    """The fake's in-house ``/v1/agent`` shape reads with ``AGENT_MAPPING``: the mapped
    format other tests configure for it."""
    agent = await start_agent(aiohttp_server, tools=[TOOLS[0], BAD_TOOL], confidence=0.4)
    async with (
        aiohttp.ClientSession() as http,
        http.post(f"{agent.url}/v1/agent", json={"q": "order 7"}) as response,
    ):
        assert response.status == 200
        body = await response.read()
    assert body == agent.sent[-1]
    settings = AgentSettings(format=AgentFormat.MAPPED, mapping=UsageMapping(**AGENT_MAPPING))
    usage = read_usage(settings, "application/json", body)
    assert usage is not None
    assert (usage.input_tokens, usage.output_tokens, usage.model, usage.confidence) == (
        agent.input_tokens,
        agent.output_tokens,
        agent.model,
        0.4,
    )
    assert [(c.name, c.valid, c.outcome) for c in usage.tool_calls] == [
        ("lookup_order", True, "ok"),
        ("cancel", False, "invalid_arguments"),
    ]
