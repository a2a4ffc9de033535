"""What each agent API says about tokens and tool calls, read into a :class:`Tally`.

One pair of functions per format: ``*_body`` reads a whole JSON answer,
``*_event`` one parsed SSE event of its stream. They never raise on odd
shapes (a field of the wrong type is as good as absent) and never invent a
number: a count the answer did not give stays ``None``.
:func:`relevant` is the cheap byte test that keeps the event loop from
JSON-decoding the many text-delta events that carry nothing we count.
"""

from __future__ import annotations

from enum import StrEnum
from typing import Any

import orjson

from comparators.types import ToolCall, ToolOutcome


class AgentFormat(StrEnum):
    AUTO = "auto"
    OPENAI_CHAT = "openai_chat"
    OPENAI_RESPONSES = "openai_responses"
    ANTHROPIC = "anthropic"
    MAPPED = "mapped"
    NONE = "none"


class ToolDraft:
    """One tool call being read: its arguments arrive whole or in fragments."""

    __slots__ = ("has_value", "lost", "name", "outcome", "parts", "value")

    def __init__(self, name: str = "") -> None:
        self.name = name
        self.parts: list[str] = []  # argument text fragments, joined at the end
        self.value: Any = None  # arguments already parsed (Anthropic, mapped)
        self.has_value = False
        self.lost = False  # the arguments passed the reader's bound and were dropped
        self.outcome: ToolOutcome | None = None

    def build(self, complete: bool) -> ToolCall:
        """The call. Unparsable text is the agent's invalid call when the answer is
        complete; in a cut stream it is only unfinished, so no outcome is claimed."""
        if self.lost:
            return ToolCall(self.name, None, valid=False)
        text = "".join(self.parts)
        if not text and self.has_value:
            return ToolCall(self.name, self.value, outcome=self.outcome)
        try:
            return ToolCall(self.name, orjson.loads(text), outcome=self.outcome)
        except orjson.JSONDecodeError:
            bad = ToolOutcome.INVALID_ARGUMENTS if complete else None
            return ToolCall(self.name, text, valid=False, outcome=bad)


class Tally:
    """Everything read so far from one answer (mutable; the reader's private state)."""

    __slots__ = (
        "budget", "cache_creation", "cache_read", "confidence", "final", "format",
        "input", "model", "output", "tools", "truncated",
    )  # fmt: skip

    def __init__(self, fmt: AgentFormat, budget: int) -> None:
        self.format = fmt
        self.model: str | None = None
        self.input: int | None = None  # as the API reports it (Anthropic: without cache)
        self.output: int | None = None
        self.cache_read: int | None = None
        self.cache_creation: int | None = None
        self.confidence: float | None = None
        self.tools: dict[Any, ToolDraft] = {}
        self.final = False  # the answer's last event (or a whole body) was read
        self.truncated = False  # something was dropped at a bound
        self.budget = budget  # argument bytes still allowed

    def arguments(self, draft: ToolDraft, text: Any) -> None:
        """Add a fragment of argument text, within the reader's bound."""
        if draft.lost or type(text) is not str:
            return
        self.budget -= len(text)
        if self.budget < 0:
            draft.lost = True
            draft.parts.clear()
            self.truncated = True
        else:
            draft.parts.append(text)

    def whole(self, draft: ToolDraft, value: Any) -> None:
        """Arguments given whole: JSON text (the OpenAI way) or already an object
        (Anthropic, and OpenAI-compatible servers that skip the encoding)."""
        if type(value) is str:
            self.arguments(draft, value)
        elif value is not None:
            draft.value, draft.has_value = value, True

    def set_model(self, value: Any) -> None:
        if type(value) is str and value:
            self.model = value


def count(value: Any) -> int | None:
    """A token count, or None for anything that is not a non-negative whole number."""
    if type(value) is int:
        return value if value >= 0 else None
    if type(value) is float and value.is_integer() and value >= 0:
        return int(value)
    return None


def _dict(value: Any) -> dict[str, Any]:
    return value if type(value) is dict else {}


def _list(value: Any) -> list[Any]:
    return value if type(value) is list else []


def _name(value: Any) -> str:
    return value if type(value) is str else ""


def detect_body(doc: Any) -> AgentFormat | None:
    doc = _dict(doc)
    obj, kind = doc.get("object"), doc.get("type")
    if obj == "chat.completion":
        return AgentFormat.OPENAI_CHAT
    if obj == "response":
        return AgentFormat.OPENAI_RESPONSES
    if kind == "message" and "content" in doc:
        return AgentFormat.ANTHROPIC
    return None


def detect_event(doc: Any) -> AgentFormat | None:
    doc = _dict(doc)
    kind = doc.get("type")
    if doc.get("object") == "chat.completion.chunk":
        return AgentFormat.OPENAI_CHAT
    if type(kind) is str and kind.startswith("response."):
        return AgentFormat.OPENAI_RESPONSES
    if kind in ("message_start", "content_block_start", "message_delta", "message_stop"):
        return AgentFormat.ANTHROPIC
    return None


def relevant(fmt: AgentFormat, payload: bytes, tally: Tally) -> bool:
    """Whether an event may change the tally: a few substring tests, no parsing."""
    if fmt is AgentFormat.OPENAI_CHAT:
        if tally.model is None or b"tool_calls" in payload:
            return True
        return b'"usage"' in payload and not (
            b'"usage":null' in payload or b'"usage": null' in payload
        )
    if fmt is AgentFormat.ANTHROPIC:
        if b"content_block_delta" in payload:
            return b"input_json_delta" in payload
        return b'"ping"' not in payload
    if fmt is AgentFormat.OPENAI_RESPONSES:
        return b'.delta"' not in payload
    return True


# OpenAI Chat Completions


def _chat_usage(t: Tally, usage: Any) -> None:
    usage = _dict(usage)
    if usage:
        t.input = count(usage.get("prompt_tokens"))
        t.output = count(usage.get("completion_tokens"))
        t.cache_read = count(_dict(usage.get("prompt_tokens_details")).get("cached_tokens"))


def _first_choice(doc: dict[str, Any]) -> dict[str, Any]:
    """Choice 0: with ``n > 1`` the other choices are alternatives, not more calls."""
    for choice in _list(doc.get("choices")):
        if _dict(choice).get("index", 0) == 0:
            return _dict(choice)
    return {}


def chat_body(t: Tally, doc: dict[str, Any]) -> None:
    t.set_model(doc.get("model"))
    _chat_usage(t, doc.get("usage"))
    message = _dict(_first_choice(doc).get("message"))
    for i, call in enumerate(_list(message.get("tool_calls"))):
        function = _dict(_dict(call).get("function"))
        if function:
            draft = t.tools[i] = ToolDraft(_name(function.get("name")))
            t.whole(draft, function.get("arguments"))
    t.final = True


def chat_event(t: Tally, doc: dict[str, Any]) -> None:
    t.set_model(doc.get("model"))
    _chat_usage(t, doc.get("usage"))
    delta = _dict(_first_choice(doc).get("delta"))
    for call in _list(delta.get("tool_calls")):
        call = _dict(call)
        index = call.get("index", 0)
        if type(index) is not int:
            continue
        draft = t.tools.get(index)
        function = _dict(call.get("function"))
        if draft is None:
            draft = t.tools[index] = ToolDraft()
        if not draft.name and type(function.get("name")) is str:
            draft.name = function["name"]
        t.arguments(draft, function.get("arguments"))


# OpenAI Responses


def responses_body(t: Tally, doc: dict[str, Any]) -> None:
    t.set_model(doc.get("model"))
    usage = _dict(doc.get("usage"))
    if usage:
        t.input = count(usage.get("input_tokens"))
        t.output = count(usage.get("output_tokens"))
        t.cache_read = count(_dict(usage.get("input_tokens_details")).get("cached_tokens"))
    t.tools.clear()  # the whole response replaces what its events said
    for i, item in enumerate(_list(doc.get("output"))):
        _responses_item(t, i, item)
    t.final = True


def _responses_item(t: Tally, key: Any, item: Any) -> None:
    item = _dict(item)
    if item.get("type") == "function_call":
        draft = t.tools[key] = ToolDraft(_name(item.get("name")))
        t.whole(draft, item.get("arguments"))


def responses_event(t: Tally, doc: dict[str, Any]) -> None:
    kind = doc.get("type")
    if kind in ("response.completed", "response.incomplete", "response.failed"):
        responses_body(t, _dict(doc.get("response")))
    elif kind == "response.output_item.done":
        _responses_item(t, _index(doc, "output_index"), doc.get("item"))
    elif kind in ("response.created", "response.in_progress"):
        t.set_model(_dict(doc.get("response")).get("model"))


# Anthropic Messages


def _anthropic_usage(t: Tally, usage: Any) -> None:
    """Overwrite, never add: ``message_delta`` counts are running totals."""
    usage = _dict(usage)
    for key, attr in _ANTHROPIC_COUNTS:
        value = count(usage.get(key))
        if value is not None:
            setattr(t, attr, value)


_ANTHROPIC_COUNTS = (
    ("input_tokens", "input"),
    ("output_tokens", "output"),
    ("cache_read_input_tokens", "cache_read"),
    ("cache_creation_input_tokens", "cache_creation"),
)


def _anthropic_block(t: Tally, key: Any, block: Any, *, streamed: bool) -> None:
    """A streamed block's ``input`` ({}) holds only once the block ends without deltas."""
    block = _dict(block)
    if block.get("type") == "tool_use":
        draft = t.tools[key] = ToolDraft(_name(block.get("name")))
        draft.value, draft.has_value = block.get("input"), not streamed and "input" in block


def anthropic_body(t: Tally, doc: dict[str, Any]) -> None:
    t.set_model(doc.get("model"))
    _anthropic_usage(t, doc.get("usage"))
    for i, block in enumerate(_list(doc.get("content"))):
        _anthropic_block(t, i, block, streamed=False)
    t.final = True


def _index(doc: dict[str, Any], key: str) -> int | None:
    value = doc.get(key)
    return value if type(value) is int else None


def anthropic_event(t: Tally, doc: dict[str, Any]) -> None:
    kind = doc.get("type")
    if kind == "content_block_delta":
        delta = _dict(doc.get("delta"))
        draft = t.tools.get(_index(doc, "index"))
        if draft is not None and delta.get("type") == "input_json_delta":
            t.arguments(draft, delta.get("partial_json"))
    elif kind == "content_block_start":
        _anthropic_block(t, _index(doc, "index"), doc.get("content_block"), streamed=True)
    elif kind == "content_block_stop":
        draft = t.tools.get(_index(doc, "index"))
        if draft is not None:
            draft.has_value = True
    elif kind == "message_start":
        message = _dict(doc.get("message"))
        t.set_model(message.get("model"))
        _anthropic_usage(t, message.get("usage"))
    elif kind == "message_delta":
        _anthropic_usage(t, doc.get("usage"))
    elif kind == "message_stop":
        t.final = True
