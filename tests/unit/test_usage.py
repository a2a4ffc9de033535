"""Token usage and tool calls read from agent answers: JSON bodies and SSE streams
of every format, cut at any byte, cut short, malformed, and past their bounds."""

from __future__ import annotations

import itertools
import json
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st
from pydantic import ValidationError

from comparators.types import ToolCall, ToolOutcome
from proxy.sse import SseDecoder
from proxy.usage import AgentFormat, AgentSettings, Usage, UsageMapping, UsageReader, read_usage

AUTO = AgentSettings()
INVALID = ToolOutcome.INVALID_ARGUMENTS


def sse(*events: Any, named: bool = False, eol: str = "\n") -> bytes:
    """SSE frames for JSON events (a str goes raw); ``named`` adds Anthropic-style event lines."""
    out = []
    for e in events:
        data = e if isinstance(e, str) else json.dumps(e)
        name = f"event: {e['type']}{eol}" if named and isinstance(e, dict) else ""
        out.append(f"{name}data: {data}{eol}{eol}")
    return "".join(out).encode()


def feed(body: bytes, chunks: list[int] | None = None, settings: AgentSettings = AUTO,
         content_type: str | None = "text/event-stream", complete: bool = True,
         max_bytes: int = 1 << 20) -> Usage | None:  # fmt: skip
    """Feed ``body`` cut at the ``chunks`` offsets and finish."""
    reader = UsageReader(settings, content_type, max_bytes)
    cuts = [0, *(chunks or []), len(body)]
    for a, b in itertools.pairwise(cuts):
        reader.feed(body[a:b])
    return reader.finish(complete)


def counts(u: Usage | None) -> tuple[Any, ...]:
    assert u is not None
    return u.input_tokens, u.output_tokens, u.cache_read_tokens, u.cache_creation_tokens


# Answers as the APIs send them (trimmed to the fields that matter, plus some noise).

CHAT_JSON = {
    "id": "chatcmpl-1", "object": "chat.completion", "created": 1, "model": "gpt-x",
    "choices": [{"index": 0, "finish_reason": "tool_calls", "message": {
        "role": "assistant", "content": None, "tool_calls": [
            {"id": "c1", "type": "function",
             "function": {"name": "get_weather", "arguments": "{\"city\": \"Oslo\"}"}},
            {"id": "c2", "type": "function", "function": {"name": "book", "arguments": "{oops"}},
        ]}}],
    "usage": {"prompt_tokens": 100, "completion_tokens": 20, "total_tokens": 120,
              "prompt_tokens_details": {"cached_tokens": 64}},
}  # fmt: skip

RESPONSES_JSON = {
    "id": "resp_1", "object": "response", "status": "completed", "model": "gpt-r",
    "output": [
        {"type": "reasoning", "id": "rs_1", "summary": []},
        {"type": "function_call", "id": "fc_1", "call_id": "call_1", "name": "search",
         "arguments": "{\"q\": \"shoes\"}", "status": "completed"},
        {"type": "message", "role": "assistant",
         "content": [{"type": "output_text", "text": "hi"}]},
    ],
    "usage": {"input_tokens": 50, "output_tokens": 9, "total_tokens": 59,
              "input_tokens_details": {"cached_tokens": 0},
              "output_tokens_details": {"reasoning_tokens": 4}},
}  # fmt: skip

ANTHROPIC_JSON = {
    "id": "msg_1", "type": "message", "role": "assistant", "model": "claude-x",
    "content": [{"type": "text", "text": "Let me check."},
                {"type": "tool_use", "id": "tu_1", "name": "lookup", "input": {"id": 7}}],
    "stop_reason": "tool_use",
    "usage": {"input_tokens": 10, "output_tokens": 30, "cache_read_input_tokens": 200,
              "cache_creation_input_tokens": 5},
}  # fmt: skip


def chat_chunk(delta: dict[str, Any] | None = None, usage: Any = None, finish: str | None = None,
               choices: bool = True) -> dict[str, Any]:  # fmt: skip
    chunk: dict[str, Any] = {"id": "c", "object": "chat.completion.chunk", "model": "gpt-x",
                             "choices": [], "usage": usage}  # fmt: skip
    if choices:
        chunk["choices"] = [{"index": 0, "delta": delta or {}, "finish_reason": finish}]
    return chunk


def tool_delta(index: int, arguments: str, name: str | None = None) -> dict[str, Any]:
    function = {"arguments": arguments, **({"name": name} if name else {})}
    return {"tool_calls": [{"index": index, "function": function}]}


CHAT_USAGE = {"prompt_tokens": 11, "completion_tokens": 4,
              "prompt_tokens_details": {"cached_tokens": 3}}  # fmt: skip
CHAT_EVENTS = [
    chat_chunk({"role": "assistant", "content": ""}),
    chat_chunk({"content": "Checking"}),
    chat_chunk(tool_delta(0, "", name="get_weather")),
    chat_chunk(tool_delta(0, '{"ci')),
    chat_chunk(tool_delta(0, 'ty": "Oslo"}')),
    chat_chunk(tool_delta(1, '{"bad', name="book")),
    chat_chunk(finish="tool_calls"),
    chat_chunk(usage=CHAT_USAGE, choices=False),
    "[DONE]",
]
CHAT_SSE = sse(*CHAT_EVENTS)

ANTHROPIC_EVENTS = [
    {"type": "message_start", "message": {"id": "m", "type": "message", "model": "claude-x",
     "content": [], "usage": {"input_tokens": 10, "output_tokens": 1,
                              "cache_read_input_tokens": 200, "cache_creation_input_tokens": 5}}},
    {"type": "content_block_start", "index": 0, "content_block": {"type": "text", "text": ""}},
    {"type": "ping"},
    {"type": "content_block_delta", "index": 0, "delta": {"type": "text_delta", "text": "Hi"}},
    {"type": "content_block_stop", "index": 0},
    {"type": "content_block_start", "index": 1,
     "content_block": {"type": "tool_use", "id": "tu", "name": "lookup", "input": {}}},
    {"type": "content_block_delta", "index": 1,
     "delta": {"type": "input_json_delta", "partial_json": ""}},
    {"type": "content_block_delta", "index": 1,
     "delta": {"type": "input_json_delta", "partial_json": "{\"id\": "}},
    {"type": "content_block_delta", "index": 1,
     "delta": {"type": "input_json_delta", "partial_json": "7}"}},
    {"type": "content_block_stop", "index": 1},
    {"type": "content_block_start", "index": 2,
     "content_block": {"type": "tool_use", "id": "tu2", "name": "noargs", "input": {}}},
    {"type": "content_block_stop", "index": 2},
    {"type": "message_delta", "delta": {"stop_reason": "tool_use"}, "usage": {"output_tokens": 12}},
    {"type": "message_delta", "delta": {}, "usage": {"output_tokens": 30}},
    {"type": "message_stop"},
]  # fmt: skip
ANTHROPIC_SSE = sse(*ANTHROPIC_EVENTS, named=True)

RESPONSES_EVENTS = [
    {"type": "response.created", "response": {"object": "response", "model": "gpt-r",
                                              "output": [], "usage": None}},
    {"type": "response.output_item.added", "output_index": 0,
     "item": {"type": "function_call", "name": "search", "arguments": ""}},
    {"type": "response.function_call_arguments.delta", "output_index": 0, "delta": "{\"q\""},
    {"type": "response.function_call_arguments.delta", "output_index": 0, "delta": ": 1}"},
    {"type": "response.output_item.done", "output_index": 0,
     "item": {"type": "function_call", "name": "search", "arguments": "{\"q\": 1}"}},
    {"type": "response.output_text.delta", "output_index": 1, "delta": "done"},
    {"type": "response.completed", "response": RESPONSES_JSON},
]  # fmt: skip
RESPONSES_SSE = sse(*RESPONSES_EVENTS, named=True)


@pytest.mark.parametrize(
    ("body", "fmt", "provider", "model", "tokens", "calls"),
    [
        (CHAT_JSON, AgentFormat.OPENAI_CHAT, "openai", "gpt-x", (100, 20, 64, None),
         [ToolCall("get_weather", {"city": "Oslo"}), ToolCall("book", "{oops", False, INVALID)]),
        (RESPONSES_JSON, AgentFormat.OPENAI_RESPONSES, "openai", "gpt-r", (50, 9, 0, None),
         [ToolCall("search", {"q": "shoes"})]),
        ({**CHAT_JSON, "choices": [{"message": {"tool_calls": [  # Ollama-style arguments
            {"function": {"name": "f", "arguments": {"a": 1}}}]}}]},
         AgentFormat.OPENAI_CHAT, "openai", "gpt-x", (100, 20, 64, None),
         [ToolCall("f", {"a": 1})]),
        (ANTHROPIC_JSON, AgentFormat.ANTHROPIC, "anthropic", "claude-x", (215, 30, 200, 5),
         [ToolCall("lookup", {"id": 7})]),
    ],
)  # fmt: skip
def test_json_answer_of_each_format_is_read(
    body: Any, fmt: AgentFormat, provider: str, model: str, tokens: Any, calls: Any
) -> None:
    """A whole JSON answer gives its format, model, counts (Anthropic's input with its
    cache reads and writes added) and tool calls, detected or configured alike."""
    for settings in (AUTO, AgentSettings(format=fmt)):
        usage = read_usage(settings, "application/json; charset=utf-8", json.dumps(body).encode())
        assert usage is not None
        assert (usage.format, usage.provider, usage.operation) == (fmt, provider, "chat")
        assert (usage.model, counts(usage), list(usage.tool_calls)) == (model, tokens, calls)
        assert usage.complete and usage.reported and not usage.truncated


@pytest.mark.parametrize(
    ("body", "fmt", "tokens", "calls"),
    [
        (CHAT_SSE, AgentFormat.OPENAI_CHAT, (11, 4, 3, None),
         [ToolCall("get_weather", {"city": "Oslo"}), ToolCall("book", '{"bad', False, INVALID)]),
        (ANTHROPIC_SSE, AgentFormat.ANTHROPIC, (215, 30, 200, 5),
         [ToolCall("lookup", {"id": 7}), ToolCall("noargs", {})]),
        (RESPONSES_SSE, AgentFormat.OPENAI_RESPONSES, (50, 9, 0, None),
         [ToolCall("search", {"q": "shoes"})]),
    ],
)  # fmt: skip
def test_stream_of_each_format_is_read(
    body: bytes, fmt: AgentFormat, tokens: Any, calls: Any
) -> None:
    """An SSE stream gives the same facts as the JSON answer: argument fragments joined,
    the Responses API's final ``response.completed`` trusted over its events."""
    for settings in (AUTO, AgentSettings(format=fmt)):
        usage = feed(body, settings=settings)
        assert usage is not None and usage.format is fmt and usage.complete
        assert (counts(usage), list(usage.tool_calls)) == (tokens, calls)


@pytest.mark.parametrize("eol", ["\n", "\r\n"])
def test_chunk_boundaries_at_every_byte_give_the_same_usage(eol: str) -> None:
    """Cut anywhere (inside a line, a CRLF, a UTF-8 character), a stream reads the same."""
    body = sse(*ANTHROPIC_EVENTS, named=True, eol=eol).replace(b"Hi", "Hé✓".encode())
    whole = feed(body)
    assert whole is not None and counts(whole) == (215, 30, 200, 5)
    for i in range(len(body) + 1):
        assert feed(body, [i]) == whole, i
    assert feed(body, list(range(1, len(body)))) == whole  # one byte at a time


@given(st.lists(st.integers(0, len(CHAT_SSE)), max_size=12))
def test_any_chunking_of_a_chat_stream_gives_the_same_usage(cuts: list[int]) -> None:
    """The reader's answer does not depend on how the bytes were chunked."""
    assert feed(CHAT_SSE, sorted(cuts)) == feed(CHAT_SSE)


def test_anthropic_output_tokens_are_a_running_total_not_a_sum() -> None:
    """``message_delta`` 12 then 30 means 30 tokens, not 42 (nor 43 with message_start's 1)."""
    usage = feed(ANTHROPIC_SSE)
    assert usage is not None and usage.output_tokens == 30


def test_anthropic_message_delta_may_restate_input_counts() -> None:
    """Newer API versions repeat input counts in ``message_delta``: they replace, not add."""
    last = {"type": "message_delta", "delta": {}, "usage": {
        "input_tokens": 10, "output_tokens": 31, "cache_read_input_tokens": 200}}  # fmt: skip
    usage = feed(sse(*ANTHROPIC_EVENTS[:-1], last, {"type": "message_stop"}))
    assert counts(usage) == (215, 31, 200, 5)


@pytest.mark.parametrize(
    ("body", "settings", "reported"),
    [
        (sse(*CHAT_EVENTS[:-2], "[DONE]"), AUTO, False),  # no stream_options.include_usage
        (sse(*ANTHROPIC_EVENTS[:-3], {"type": "message_stop"}), AUTO, True),
        (json.dumps({**CHAT_JSON, "usage": None}).encode(), AUTO, False),
    ],
)
def test_answer_without_usage_reports_none_never_zero(
    body: bytes, settings: AgentSettings, reported: bool
) -> None:
    """An answer that says nothing of tokens has None counts (usage_missing), not zeros."""
    usage = feed(body, content_type=None)
    assert usage is not None and usage.complete and usage.reported is reported
    if not reported:
        assert counts(usage) == (None, None, None, None)


@pytest.mark.parametrize(
    ("events", "complete"),
    [
        (CHAT_EVENTS[:5], True),  # ended cleanly but before [DONE]
        (CHAT_EVENTS[:8], True),  # usage chunk arrived, [DONE] did not
        (CHAT_EVENTS, False),  # the proxy saw the connection fail
        (ANTHROPIC_EVENTS[:1], True),  # message_start holds input counts: still not reported
        (ANTHROPIC_EVENTS[:-1], True),  # final running total arrived, message_stop did not
        (RESPONSES_EVENTS[:-1], True),
    ],
)
def test_interrupted_stream_is_incomplete_with_no_counts(events: list[Any], complete: bool) -> None:
    """A stream that stops before its last event reports complete=False and no token counts."""
    usage = feed(sse(*events), complete=complete)
    assert usage is not None and not usage.complete
    assert counts(usage) == (None, None, None, None)
    assert usage.model is not None


def test_cut_stream_keeps_finished_calls_and_marks_the_unfinished_one_unknown() -> None:
    """A call cut mid-arguments is invalid but not the agent's invalid_arguments: it was cut."""
    usage = feed(sse(*CHAT_EVENTS[:4]), complete=False)
    assert usage is not None
    assert list(usage.tool_calls) == [ToolCall("get_weather", '{"ci', valid=False, outcome=None)]
    responses = feed(sse(*RESPONSES_EVENTS[:-1]), complete=False)
    assert responses is not None and responses.tool_calls == (ToolCall("search", {"q": 1}),)


def test_anthropic_tool_block_cut_before_its_end_is_not_taken_as_empty_input() -> None:
    """A tool_use block's starting ``input: {}`` holds only once the block ends."""
    usage = feed(sse(*ANTHROPIC_EVENTS[:11]), complete=False)
    assert usage is not None
    assert [c.valid for c in usage.tool_calls] == [True, False]


def test_cut_json_body_is_not_an_answer() -> None:
    """Half a JSON body does not parse: no usage at all."""
    body = json.dumps(CHAT_JSON).encode()
    assert feed(body[: len(body) // 2], content_type="application/json", complete=False) is None


MAPPING = UsageMapping(
    input_tokens="$.meta.tokens['in']", output_tokens="$.meta.tokens.out", model="$.meta.model",
    confidence="$.meta.scores[0]", tool_calls="$.actions", tool_name="$.fn.name",
    tool_arguments="args", tool_outcome="status",
)  # fmt: skip
MAPPED = AgentSettings(format=AgentFormat.MAPPED, mapping=MAPPING)


@pytest.mark.parametrize(
    ("doc", "expected"),
    [
        ({"meta": {"tokens": {"in": 5, "out": 6}, "model": "house-1", "scores": [0.75]},
          "actions": [
              {"fn": {"name": "pay"}, "args": {"amount": 3}, "status": "ok"},
              {"fn": {"name": "ship"}, "args": "{\"to\": \"x\"}", "status": False},
              {"fn": {"name": "mail"}, "args": "not json", "status": "ok"},
              {"fn": {"name": "ping"}, "status": "Succeeded"},
              {"fn": {"name": "odd"}, "args": [1], "status": "weird"},
          ]},
         ((5, 6), "house-1", 0.75, [
             ToolCall("pay", {"amount": 3}, outcome=ToolOutcome.OK),
             ToolCall("ship", {"to": "x"}, outcome=ToolOutcome.ERROR),
             ToolCall("mail", "not json", False, INVALID),
             ToolCall("ping", None, outcome=ToolOutcome.OK),
             ToolCall("odd", [1]),
         ])),
        ({"meta": {"tokens": {"in": "5", "out": -1}, "scores": [7]}, "actions": {}},
         ((None, None), None, None, [])),
        ([1, 2], ((None, None), None, None, [])),
    ],
)  # fmt: skip
def test_mapped_paths_read_an_in_house_answer(doc: Any, expected: Any) -> None:
    """Configured paths give counts, model, confidence (in [0, 1]) and tool calls with
    their outcomes; values of the wrong kind are absent, not errors."""
    usage = read_usage(MAPPED, "application/json", json.dumps(doc).encode())
    assert usage is not None
    assert usage.format is AgentFormat.MAPPED and usage.provider is None
    got = ((usage.input_tokens, usage.output_tokens), usage.model, usage.confidence)
    assert (*got, list(usage.tool_calls)) == expected


def test_mapped_stream_takes_the_last_counts_and_every_call() -> None:
    """Each event of an in-house stream is read with the mapping; later counts win."""
    body = sse({"meta": {"tokens": {"in": 5, "out": 1}}, "actions": [{"fn": {"name": "a"}}]},
               {"meta": {"tokens": {"out": 9}}, "actions": [{"fn": {"name": "b"}}]})  # fmt: skip
    usage = feed(body, settings=MAPPED)
    assert usage is not None and (usage.input_tokens, usage.output_tokens) == (5, 9)
    assert [c.name for c in usage.tool_calls] == ["a", "b"]


@pytest.mark.parametrize(
    ("config", "message"),
    [
        ({"format": "mapped", "mapping": {"input_tokens": "meta.in"}}, "input_tokens"),
        ({"format": "mapped", "mapping": {"tool_calls": "$.calls[*]"}}, "wildcards"),
        ({"format": "mapped", "mapping": {"tool_name": "$.fn["}}, "tool_name"),
        ({"format": "mapped", "mapping": {"tokens": "$.t"}}, "tokens"),
        ({"format": "mapped"}, "'mapping' is required"),
        ({"format": "openai_chat", "mapping": {}}, "'mapping' is required"),
        ({"format": "gemini"}, "format"),
    ],
)
def test_bad_agent_config_names_the_field_and_why(config: Any, message: str) -> None:
    """Bad paths fail when the config loads, naming the field and the reason."""
    with pytest.raises(ValidationError, match=message):
        AgentSettings.model_validate(config)


@pytest.mark.parametrize(
    ("body", "content_type"),
    [
        (b"", "application/json"),
        (b"not json at all", "application/json"),
        (b"\xff\xfe\x00garbage", None),
        (b"[1, 2, 3]", "application/json"),
        (b'{"object": "list", "data": []}', "application/json"),
        (b'{"error": {"message": "overloaded"}}', None),
        (b'{"object": "chat.completion", "choices": {}, "usage": "many"', None),  # unterminated
        (b"data: 0\n\ndata: 1\n\n", "text/event-stream"),
        (b"data: {not json}\n\n" * 10, "text/event-stream"),
        (b"<html>502 Bad Gateway</html>", "text/html"),
    ],
)
def test_garbage_is_not_an_answer_and_never_raises(body: bytes, content_type: str | None) -> None:
    """Bytes in no known format give None, at once or cut into pieces."""
    assert read_usage(AUTO, content_type, body) is None
    assert feed(body, list(range(1, len(body), 3)), content_type=content_type) is None


@pytest.mark.parametrize(
    ("doc", "calls"),
    [
        ({"object": "chat.completion", "model": 5, "choices": [{"message": {"tool_calls": [
            None, {"function": None}, {"function": {"name": ["x"], "arguments": {"a": 1}}}]}}],
          "usage": {"prompt_tokens": True, "completion_tokens": 1.5,
                    "prompt_tokens_details": [1]}},
         [ToolCall("", {"a": 1})]),
        ({"object": "response", "output": "text", "usage": {"input_tokens": -3}}, []),
        ({"type": "message", "content": [{"type": "tool_use"}], "usage": None},
         [ToolCall("", "", valid=False, outcome=INVALID)]),
    ],
)  # fmt: skip
def test_fields_of_the_wrong_type_are_absent(doc: Any, calls: list[ToolCall]) -> None:
    """Odd field types in a recognised answer read as absent: no count is invented."""
    usage = read_usage(AUTO, "application/json", json.dumps(doc).encode())
    assert usage is not None and not usage.reported and usage.model is None
    assert list(usage.tool_calls) == calls


def test_stream_events_of_the_wrong_type_are_skipped() -> None:
    """Malformed events inside a recognised stream are skipped; the rest still count."""
    junk = [
        {"type": "content_block_delta", "index": [1], "delta": "x"},
        {"type": "content_block_start", "index": 9, "content_block": None},
        {"type": "message_delta", "usage": {"output_tokens": "many"}},
        "{broken",
        "[DONE]",
    ]
    body = sse(*ANTHROPIC_EVENTS[:-1], *junk, ANTHROPIC_EVENTS[-1])
    assert counts(feed(body)) == (215, 30, 200, 5)


def test_json_body_past_the_bound_is_marked_truncated() -> None:
    """A body larger than ``max_bytes`` is dropped as it passes and reported as truncated
    (its usage missing) when the route names the format; in auto mode nothing tells it
    from any other large answer, so nothing is reported."""
    body = json.dumps({**CHAT_JSON, "pad": "x" * 5000}).encode()
    chunks = list(range(100, len(body), 100))
    told = AgentSettings(format=AgentFormat.OPENAI_CHAT)
    usage = feed(body, chunks, content_type="application/json", max_bytes=1000, settings=told)
    assert usage is not None and usage.truncated and not usage.reported
    assert feed(body, chunks, content_type="application/json", max_bytes=1000) is None


def test_event_past_the_bound_is_dropped_and_later_events_still_read() -> None:
    """One oversized event is skipped whole (memory stays bounded); the stream reads on."""
    huge = chat_chunk({"content": "x" * 5000})
    body = sse(CHAT_EVENTS[0], huge, *CHAT_EVENTS[1:])
    usage = feed(body, list(range(64, len(body), 64)), max_bytes=2000)
    assert usage is not None and usage.truncated and usage.complete
    assert counts(usage) == (11, 4, 3, None)


def test_tool_arguments_past_the_bound_are_marked_lost() -> None:
    """Joined arguments are bounded: past it the call keeps its name, its arguments are
    dropped (invalid, with no outcome claimed) and the usage says it was truncated."""
    big = "[" + ",".join(["1"] * 400) + "]"
    pieces = [big[i : i + 50] for i in range(0, len(big), 50)]
    events = [
        chat_chunk(tool_delta(0, "", name="small")),
        chat_chunk(tool_delta(0, "{}")),
        chat_chunk(tool_delta(1, pieces[0], name="big")),
        *[chat_chunk(tool_delta(1, piece)) for piece in pieces[1:]],
        chat_chunk(usage=CHAT_USAGE),
        "[DONE]",
    ]
    usage = feed(sse(*events), max_bytes=500)
    assert usage is not None and usage.truncated and usage.reported
    assert list(usage.tool_calls) == [ToolCall("small", {}), ToolCall("big", None, valid=False)]


@pytest.mark.parametrize(
    ("body", "content_type", "fmt"),
    [
        (json.dumps(ANTHROPIC_JSON).encode(), None, AgentFormat.ANTHROPIC),
        (b"  \n" + json.dumps(RESPONSES_JSON).encode(), "text/plain", AgentFormat.OPENAI_RESPONSES),
        (b": keep-alive\n\n" + CHAT_SSE, None, AgentFormat.OPENAI_CHAT),
        (ANTHROPIC_SSE, "application/octet-stream", AgentFormat.ANTHROPIC),
        (json.dumps(CHAT_JSON).encode(), "application/vnd.api+json", AgentFormat.OPENAI_CHAT),
    ],
)
def test_body_kind_is_sniffed_when_the_content_type_does_not_say(
    body: bytes, content_type: str | None, fmt: AgentFormat
) -> None:
    """JSON or SSE is told from the first bytes when the content type is absent or vague."""
    usage = feed(body, [1, 2, 30], content_type=content_type)
    assert usage is not None and usage.format is fmt and usage.reported


def test_format_none_reads_nothing() -> None:
    """A route whose agent is not an LLM API (format none) yields no usage."""
    body = json.dumps(CHAT_JSON).encode()
    assert read_usage(AgentSettings(format=AgentFormat.NONE), "application/json", body) is None


def test_configured_format_ignores_other_shapes() -> None:
    """A format set in config reads only its own fields: an Anthropic body read as chat
    has nothing to report, and the usage says so."""
    chat = AgentSettings(format=AgentFormat.OPENAI_CHAT)
    usage = read_usage(chat, "application/json", json.dumps(ANTHROPIC_JSON).encode())
    assert usage is not None and usage.format is AgentFormat.OPENAI_CHAT and not usage.reported


def test_usage_as_json_is_plain_data() -> None:
    """Recorded cases store usage as JSON with tool calls spelled out."""
    usage = read_usage(AUTO, "application/json", json.dumps(CHAT_JSON).encode())
    assert usage is not None
    data = json.loads(json.dumps(usage.as_json()))
    assert data["format"] == "openai_chat" and data["input_tokens"] == 100
    invalid = {"name": "book", "arguments": "{oops", "valid": False, "outcome": "invalid_arguments"}
    assert data["tool_calls"][1] == invalid


@pytest.mark.parametrize(
    ("chunks", "events"),
    [
        ([b"data: a\r\n\r\n"], [b"a"]),
        ([b"data: a\r", b"\n\r\n"], [b"a"]),
        ([b"data:a\ndata: b\n\n"], [b"a\nb"]),  # multi-line data, optional space
        ([b": comment\nevent: x\nid: 1\nretry: 5\n\n"], []),  # no data: no event
        ([b"da", b"ta: 1", b"\n", b"\n", b"data: 2\n\n"], [b"1", b"2"]),
        ([b"data: " + b"x" * 50 + b"\n\ndata: ok\n\n"], [b"ok"]),  # too big: dropped whole
        ([b"data: " + b"x" * 30, b"x" * 30, b"\ndata: y\n\n", b"data: ok\n\n"], [b"ok"]),
        ([b"data: 1\n\ndata: 2"], [b"1"]),  # an unfinished event is not an event
    ],
)
def test_sse_decoder_splits_events(chunks: list[bytes], events: list[bytes]) -> None:
    """Events end at a blank line (LF or CRLF); over the limit an event is dropped whole."""
    decoder = SseDecoder(limit=40)
    assert [e for chunk in chunks for e in decoder.feed(chunk)] == events
