"""Token usage and tool calls read from an agent's answer as it passes.

The proxy hands a :class:`UsageReader` a copy of each response chunk on its
way to the client, so reading must cost next to nothing per chunk, hold a
bounded number of bytes, and never raise. JSON bodies are kept (bounded) and
parsed once at the end; SSE streams are decoded event by event and only the
events that can carry counts or tool calls are JSON-decoded. A count the
answer did not give is ``None`` and never a made-up zero, so "the agent did
not report usage" stays distinguishable from "it used nothing".
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import orjson
from pydantic import BaseModel, ConfigDict, model_validator

from comparators.types import ToolCall
from proxy.sse import SseDecoder
from proxy.usageformats import (
    AgentFormat,
    Tally,
    anthropic_body,
    anthropic_event,
    chat_body,
    chat_event,
    detect_body,
    detect_event,
    relevant,
    responses_body,
    responses_event,
)
from proxy.usagemapping import UsageMapping, read_mapped

__all__ = ["AgentFormat", "AgentSettings", "Usage", "UsageMapping", "UsageReader", "read_usage"]

_Handler = Callable[[Tally, dict[str, Any]], None]
_BODY: dict[AgentFormat, _Handler] = {
    AgentFormat.OPENAI_CHAT: chat_body,
    AgentFormat.OPENAI_RESPONSES: responses_body,
    AgentFormat.ANTHROPIC: anthropic_body,
}
_EVENT: dict[AgentFormat, _Handler] = {
    AgentFormat.OPENAI_CHAT: chat_event,
    AgentFormat.OPENAI_RESPONSES: responses_event,
    AgentFormat.ANTHROPIC: anthropic_event,
}
_PROVIDER = {
    AgentFormat.OPENAI_CHAT: "openai",
    AgentFormat.OPENAI_RESPONSES: "openai",
    AgentFormat.ANTHROPIC: "anthropic",
}
_SSE_FIELDS = (b"data:", b"event:", b"id:", b"retry:", b":")
_SNIFF_EVENTS = 8  # auto-detection gives up on a stream after this many unknown events


class AgentSettings(BaseModel):
    """A route's ``agent:`` section: how to read its agent's answers."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    format: AgentFormat = AgentFormat.AUTO
    mapping: UsageMapping | None = None

    @model_validator(mode="after")
    def _mapping_iff_mapped(self) -> AgentSettings:
        if (self.format is AgentFormat.MAPPED) != (self.mapping is not None):
            raise ValueError("'mapping' is required with format 'mapped' and allowed only there")
        return self


@dataclass(frozen=True, slots=True)
class Usage:
    """What one answer said about its cost and its tool calls.

    ``input_tokens`` counts all input, cached included (OpenTelemetry's
    ``gen_ai.usage.input_tokens``): Anthropic reports cache reads and writes
    apart, so they are added in. ``truncated`` says part of the answer was
    past the reader's bounds, so some of it is missing.
    """

    format: AgentFormat
    provider: str | None
    operation: str
    model: str | None
    input_tokens: int | None
    output_tokens: int | None
    cache_read_tokens: int | None
    cache_creation_tokens: int | None
    tool_calls: tuple[ToolCall, ...]
    confidence: float | None
    complete: bool
    truncated: bool = False

    @property
    def reported(self) -> bool:
        return self.input_tokens is not None or self.output_tokens is not None

    def as_json(self) -> dict[str, Any]:
        return {
            "format": self.format.value,
            "provider": self.provider,
            "operation": self.operation,
            "model": self.model,
            "input_tokens": self.input_tokens,
            "output_tokens": self.output_tokens,
            "cache_read_tokens": self.cache_read_tokens,
            "cache_creation_tokens": self.cache_creation_tokens,
            "tool_calls": [tool_call_json(c) for c in self.tool_calls],
            "confidence": self.confidence,
            "complete": self.complete,
            "truncated": self.truncated,
        }


def tool_call_json(call: ToolCall) -> dict[str, Any]:
    """A tool call as recorded cases store it."""
    outcome = None if call.outcome is None else call.outcome.value
    return {"name": call.name, "arguments": call.arguments, "valid": call.valid, "outcome": outcome}


def _usage(t: Tally, complete: bool) -> Usage:
    """A stream cut before its last event reports no counts: a partial running
    total would look like a cheap answer."""
    complete = complete and t.final
    fmt = t.format
    counted = complete and (t.input is not None or t.output is not None)
    input_tokens = t.input if counted else None
    if input_tokens is not None and fmt is AgentFormat.ANTHROPIC:
        input_tokens += (t.cache_read or 0) + (t.cache_creation or 0)
    return Usage(
        format=fmt,
        provider=_PROVIDER.get(fmt),
        operation="invoke_agent" if fmt is AgentFormat.MAPPED else "chat",
        model=t.model,
        input_tokens=input_tokens,
        output_tokens=t.output if counted else None,
        cache_read_tokens=t.cache_read if counted else None,
        cache_creation_tokens=t.cache_creation if counted else None,
        tool_calls=tuple(d.build(complete) for d in t.tools.values()),
        confidence=t.confidence,
        complete=complete,
        truncated=t.truncated,
    )


def _media(content_type: str | None) -> str:
    media = (content_type or "").split(";", 1)[0].strip().lower()
    if media == "text/event-stream":
        return "sse"
    if media == "application/json" or media.endswith("+json"):
        return "json"
    return ""


class UsageReader:
    """Fed a copy of one response's bytes as they pass; ``finish`` says what they held."""

    __slots__ = ("_chunks", "_events", "_limit", "_mapping", "_mode", "_size", "_sse", "_tally")

    def __init__(
        self, settings: AgentSettings, content_type: str | None, max_bytes: int = 1 << 20
    ) -> None:
        self._limit = max_bytes
        self._mapping = settings.mapping
        self._tally = Tally(settings.format, max_bytes)
        self._mode = "off" if settings.format is AgentFormat.NONE else _media(content_type)
        self._chunks: list[bytes] = []
        self._size = 0
        self._events = 0  # events read while still detecting the format
        self._sse = SseDecoder(max_bytes) if self._mode == "sse" else None

    def feed(self, chunk: bytes) -> None:
        """Cheap, bounded, and never raises: a reader that fails just stops reading."""
        try:
            if self._sse is not None:
                for payload in self._sse.feed(chunk):
                    self._event(payload)
            elif self._mode == "json":
                self._size += len(chunk)
                if self._size > self._limit:
                    self._drop()
                else:
                    self._chunks.append(chunk)
            elif not self._mode:
                self._sniff(chunk)
        except Exception:
            self._drop()

    def finish(self, complete: bool = True) -> Usage | None:
        """The usage, or None when the bytes were not an answer in a known format.
        ``complete=False``: the body was cut off (no counts are reported then)."""
        try:
            return self._finish(complete)
        except Exception:
            return None

    def _finish(self, complete: bool) -> Usage | None:
        t = self._tally
        if self._mode == "json":
            body = self._chunks[0] if len(self._chunks) == 1 else b"".join(self._chunks)
            self._chunks = []
            try:
                doc = orjson.loads(body)
            except orjson.JSONDecodeError:
                return None
            if not self._body(doc):
                return None
        elif self._sse is not None:
            t.truncated = t.truncated or self._sse.dropped > 0
        elif not (self._mode == "off" and t.truncated):
            return None
        if t.format in (AgentFormat.AUTO, AgentFormat.NONE):  # never told what it reads
            return None
        return _usage(t, complete)

    def _sniff(self, chunk: bytes) -> None:
        """No telling content type: the first bytes decide (a JSON value or SSE
        fields), held until there are enough of them to tell."""
        self._chunks.append(chunk)
        self._size += len(chunk)
        head = b"".join(self._chunks).lstrip()
        if head[:1] in (b"{", b"["):
            mode = "json"
        elif head.startswith(_SSE_FIELDS):
            mode = "sse"
        elif (not head or any(f.startswith(head) for f in _SSE_FIELDS)) and self._size < 4096:
            return  # not enough to tell yet
        else:
            self._drop_quietly()
            return
        held, self._chunks, self._size = self._chunks, [], 0
        self._mode = mode
        if mode == "sse":
            self._sse = SseDecoder(self._limit)
        for part in held:
            self.feed(part)

    def _drop_quietly(self) -> None:
        """Stop reading: these bytes are no answer we know."""
        self._mode, self._sse, self._chunks = "off", None, []

    def _drop(self) -> None:
        """Stop reading for good (past a bound, or bytes that broke a parser)."""
        self._mode = "off"
        self._sse = None
        self._chunks = []
        self._tally.truncated = True

    def _body(self, doc: Any) -> bool:
        t = self._tally
        if t.format is AgentFormat.MAPPED:
            assert self._mapping is not None
            read_mapped(t, doc, self._mapping, key=0)
            t.final = True
            return True
        if type(doc) is not dict:
            return False
        if t.format is AgentFormat.AUTO:
            found = detect_body(doc)
            if found is None:
                return False
            t.format = found
        _BODY[t.format](t, doc)
        return True

    def _event(self, payload: bytes) -> None:
        t = self._tally
        fmt = t.format
        if payload == b"[DONE]":
            if fmt is AgentFormat.OPENAI_CHAT:
                t.final = True
            return
        if fmt is AgentFormat.MAPPED:
            assert self._mapping is not None
            self._events += 1
            read_mapped(t, _loads(payload), self._mapping, key=self._events)
            t.final = True  # a mapped stream has no last-event marker we know of
            return
        if fmt is AgentFormat.AUTO:
            doc = _loads(payload)
            found = detect_event(doc)
            if found is None:
                self._events += 1
                if self._events >= _SNIFF_EVENTS:
                    self._drop_quietly()
                return
            t.format = fmt = found
        elif relevant(fmt, payload, t):
            doc = _loads(payload)
        else:
            return
        if type(doc) is dict:
            _EVENT[fmt](t, doc)


def _loads(payload: bytes) -> Any:
    try:
        return orjson.loads(payload)
    except orjson.JSONDecodeError:
        return None


# Every value auto-detection recognizes starts with one of these, quoted: the
# objects "chat.completion", "chat.completion.chunk" and "response", the types
# "response.*", "message" and "message_*" (an Anthropic stream begins with one).
_FORMAT_MARKERS = (b'"chat.completion', b'"response', b'"message')


def read_usage(settings: AgentSettings, content_type: str | None, body: bytes) -> Usage | None:
    """The usage in a whole body (a recorded, replayed or captured answer)."""
    if settings.format is AgentFormat.AUTO and not any(m in body for m in _FORMAT_MARKERS):
        return None  # no value that detection looks for: no known format, and nothing parsed
    reader = UsageReader(settings, content_type, max(len(body) + 1, 1 << 20))
    reader.feed(body)
    return reader.finish()
