"""A fake AI agent: a real aiohttp server that answers like OpenAI Chat Completions,
OpenAI Responses and Anthropic Messages (streaming and not) on their real paths,
plus an in-house shape at ``/v1/agent`` for the ``mapped`` format.

Every answer is built from the same knobs (text, token counts, tool calls), so
a test can expect the same usage whichever format the agent speaks:
``input_tokens`` is the whole input, cached tokens included (Anthropic's own
``input_tokens`` field then carries the uncached rest). It records each request
it saw and the exact body bytes it sent, and can cut a stream midway.
"""

from __future__ import annotations

import asyncio
import json
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web


@dataclass(frozen=True)
class FakeTool:
    """A tool call the agent makes; ``arguments`` is raw JSON text (may be invalid)."""

    name: str
    arguments: str = "{}"

    def parsed(self) -> Any:
        """The arguments as an object where a format needs one (Anthropic's ``input``)."""
        try:
            return json.loads(self.arguments)
        except ValueError:
            return self.arguments  # a malformed answer, as a broken agent would send it


@dataclass
class AgentSeen:
    path: str
    headers: dict[str, str]
    body: Any  # the request's JSON (None when it was not JSON)


@dataclass
class FakeAgent:
    text: str = "The order ships on Tuesday."
    model: str = "fake-model-1"
    input_tokens: int = 42
    output_tokens: int = 17
    cached_tokens: int = 0  # read from a prompt cache (part of input_tokens)
    cache_creation_tokens: int = 0  # Anthropic: written to the cache (part of input_tokens)
    tools: list[FakeTool] = field(default_factory=list)
    usage: bool = True  # False: answers say nothing about tokens
    cut_after: int | None = None  # stream: events sent before the connection is cut;
    # JSON: the body is cut in half
    message_deltas: int = 1  # Anthropic: message_delta events (each a running total)
    confidence: float = 0.9  # /v1/agent only
    gap: float = 0.0  # seconds between stream events
    seen: list[AgentSeen] = field(default_factory=list)
    sent: list[bytes] = field(default_factory=list)  # each answer's exact body bytes
    url: str = ""

    def app(self) -> web.Application:
        app = web.Application()
        app.router.add_post("/v1/chat/completions", self._chat)
        app.router.add_post("/v1/responses", self._responses)
        app.router.add_post("/v1/messages", self._messages)
        app.router.add_post("/v1/agent", self._agent)
        return app

    # request handling

    async def _seen(self, request: web.Request) -> dict[str, Any]:
        raw = await request.read()
        try:
            body = json.loads(raw)
        except ValueError:
            body = None
        self.seen.append(AgentSeen(request.path, dict(request.headers), body))
        return body if isinstance(body, dict) else {}

    async def _json(self, request: web.Request, doc: Any) -> web.StreamResponse:
        body = json.dumps(doc).encode()
        if self.cut_after is None:
            self.sent.append(body)
            return web.Response(body=body, content_type="application/json")
        half = body[: len(body) // 2]
        self.sent.append(half)
        response = web.StreamResponse(
            headers={"Content-Type": "application/json", "Content-Length": str(len(body))}
        )
        await response.prepare(request)
        await response.write(half)
        assert request.transport is not None
        request.transport.close()
        return response

    async def _stream(
        self, request: web.Request, events: list[tuple[str | None, Any]]
    ) -> web.StreamResponse:
        """Send ``(event name, data)`` pairs as SSE; data ``"[DONE]"`` goes raw."""
        response = web.StreamResponse(
            headers={"Content-Type": "text/event-stream", "Cache-Control": "no-cache"}
        )
        await response.prepare(request)
        sent = bytearray()
        self.sent.append(b"")
        for i, (name, data) in enumerate(events):
            if i == self.cut_after:
                assert request.transport is not None
                request.transport.close()
                return response
            payload = data if isinstance(data, str) else json.dumps(data)
            frame = (f"event: {name}\n" if name else "") + f"data: {payload}\n\n"
            sent += frame.encode()
            self.sent[-1] = bytes(sent)
            await response.write(frame.encode())
            if self.gap:
                await asyncio.sleep(self.gap)
        await response.write_eof()
        return response

    def _pieces(self, text: str, n: int = 3) -> list[str]:
        size = max(1, -(-len(text) // n))
        return [text[i : i + size] for i in range(0, len(text), size)] or [""]

    # OpenAI Chat Completions

    def _chat_usage(self) -> dict[str, Any]:
        return {
            "prompt_tokens": self.input_tokens,
            "completion_tokens": self.output_tokens,
            "total_tokens": self.input_tokens + self.output_tokens,
            "prompt_tokens_details": {"cached_tokens": self.cached_tokens, "audio_tokens": 0},
            "completion_tokens_details": {"reasoning_tokens": 0, "audio_tokens": 0},
        }

    async def _chat(self, request: web.Request) -> web.StreamResponse:
        body = await self._seen(request)
        head = {"id": "chatcmpl-fake1", "created": 1_700_000_000, "model": self.model}
        finish = "tool_calls" if self.tools else "stop"
        if not body.get("stream"):
            message: dict[str, Any] = {"role": "assistant", "content": self.text, "refusal": None}
            if self.tools:
                message["tool_calls"] = [
                    {"id": f"call_{i}", "type": "function",
                     "function": {"name": t.name, "arguments": t.arguments}}
                    for i, t in enumerate(self.tools)
                ]  # fmt: skip
            doc = {**head, "object": "chat.completion", "choices": [
                {"index": 0, "message": message, "logprobs": None, "finish_reason": finish}
            ]}  # fmt: skip
            if self.usage:
                doc["usage"] = self._chat_usage()
            return await self._json(request, doc)
        with_usage = bool((body.get("stream_options") or {}).get("include_usage"))
        extra = {"usage": None} if with_usage else {}

        def chunk(delta: dict[str, Any], finish_reason: str | None = None) -> dict[str, Any]:
            choice = {"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish_reason}
            return {**head, "object": "chat.completion.chunk", "choices": [choice], **extra}

        events: list[tuple[str | None, Any]] = [(None, chunk({"role": "assistant", "content": ""}))]
        events += [(None, chunk({"content": piece})) for piece in self._pieces(self.text)]
        for i, tool in enumerate(self.tools):
            start = {"index": i, "id": f"call_{i}", "type": "function",
                     "function": {"name": tool.name, "arguments": ""}}  # fmt: skip
            events.append((None, chunk({"tool_calls": [start]})))
            for piece in self._pieces(tool.arguments):
                part = {"index": i, "function": {"arguments": piece}}
                events.append((None, chunk({"tool_calls": [part]})))
        events.append((None, chunk({}, finish)))
        if with_usage and self.usage:
            last = {**head, "object": "chat.completion.chunk", "choices": []}
            events.append((None, {**last, "usage": self._chat_usage()}))
        events.append((None, "[DONE]"))
        return await self._stream(request, events)

    # OpenAI Responses

    def _response(self, status: str, output: list[dict[str, Any]]) -> dict[str, Any]:
        doc: dict[str, Any] = {
            "id": "resp_fake1", "object": "response", "created_at": 1_700_000_000,
            "status": status, "model": self.model, "output": output,
            "parallel_tool_calls": True, "tool_choice": "auto", "tools": [],
            "error": None, "incomplete_details": None, "instructions": None,
            "metadata": {}, "temperature": 1.0, "top_p": 1.0, "usage": None,
        }  # fmt: skip
        if status == "completed" and self.usage:
            doc["usage"] = {
                "input_tokens": self.input_tokens,
                "input_tokens_details": {"cached_tokens": self.cached_tokens},
                "output_tokens": self.output_tokens,
                "output_tokens_details": {"reasoning_tokens": 0},
                "total_tokens": self.input_tokens + self.output_tokens,
            }
        return doc

    def _response_items(self) -> list[dict[str, Any]]:
        text = {"type": "output_text", "text": self.text, "annotations": []}
        items: list[dict[str, Any]] = [
            {"id": "msg_fake1", "type": "message", "status": "completed",
             "role": "assistant", "content": [text]}
        ]  # fmt: skip
        items += [
            {"id": f"fc_{i}", "type": "function_call", "status": "completed",
             "call_id": f"call_{i}", "name": t.name, "arguments": t.arguments}
            for i, t in enumerate(self.tools)
        ]  # fmt: skip
        return items

    async def _responses(self, request: web.Request) -> web.StreamResponse:
        body = await self._seen(request)
        items = self._response_items()
        if not body.get("stream"):
            return await self._json(request, self._response("completed", items))
        events: list[dict[str, Any]] = [
            {"type": "response.created", "response": self._response("in_progress", [])},
            {"type": "response.in_progress", "response": self._response("in_progress", [])},
        ]
        message, part = items[0], items[0]["content"][0]
        where = {"item_id": message["id"], "output_index": 0, "content_index": 0}
        events += [
            {"type": "response.output_item.added", "output_index": 0,
             "item": {**message, "status": "in_progress", "content": []}},
            {"type": "response.content_part.added", **where, "part": {**part, "text": ""}},
            *({"type": "response.output_text.delta", **where, "delta": piece, "logprobs": []}
              for piece in self._pieces(self.text)),
            {"type": "response.output_text.done", **where, "text": self.text, "logprobs": []},
            {"type": "response.content_part.done", **where, "part": part},
            {"type": "response.output_item.done", "output_index": 0, "item": message},
        ]  # fmt: skip
        for index, item in enumerate(items[1:], start=1):
            at = {"item_id": item["id"], "output_index": index}
            events += [
                {"type": "response.output_item.added", "output_index": index,
                 "item": {**item, "status": "in_progress", "arguments": ""}},
                *({"type": "response.function_call_arguments.delta", **at, "delta": piece}
                  for piece in self._pieces(item["arguments"])),
                {"type": "response.function_call_arguments.done", **at,
                 "name": item["name"], "arguments": item["arguments"]},
                {"type": "response.output_item.done", "output_index": index, "item": item},
            ]  # fmt: skip
        events.append(
            {"type": "response.completed", "response": self._response("completed", items)}
        )
        numbered = [(e["type"], {**e, "sequence_number": n}) for n, e in enumerate(events)]
        return await self._stream(request, list(numbered))

    # Anthropic Messages

    def _anthropic_usage(self, output_tokens: int) -> dict[str, Any]:
        uncached = self.input_tokens - self.cached_tokens - self.cache_creation_tokens
        return {
            "input_tokens": uncached,
            "cache_creation_input_tokens": self.cache_creation_tokens,
            "cache_read_input_tokens": self.cached_tokens,
            "output_tokens": output_tokens,
        }

    async def _messages(self, request: web.Request) -> web.StreamResponse:
        body = await self._seen(request)
        stop = "tool_use" if self.tools else "end_turn"
        blocks: list[dict[str, Any]] = [{"type": "text", "text": self.text}]
        blocks += [
            {"type": "tool_use", "id": f"toolu_{i}", "name": t.name, "input": t.parsed()}
            for i, t in enumerate(self.tools)
        ]
        message: dict[str, Any] = {
            "id": "msg_fake1", "type": "message", "role": "assistant", "model": self.model,
            "content": blocks, "stop_reason": stop, "stop_sequence": None,
        }  # fmt: skip
        if self.usage:
            message["usage"] = self._anthropic_usage(self.output_tokens)
        if not body.get("stream"):
            return await self._json(request, message)
        start = {**message, "content": [], "stop_reason": None}
        if self.usage:
            start["usage"] = self._anthropic_usage(1)
        events: list[dict[str, Any]] = [
            {"type": "message_start", "message": start},
            {"type": "content_block_start", "index": 0,
             "content_block": {"type": "text", "text": ""}},
            {"type": "ping"},
            *({"type": "content_block_delta", "index": 0,
               "delta": {"type": "text_delta", "text": piece}}
              for piece in self._pieces(self.text)),
            {"type": "content_block_stop", "index": 0},
        ]  # fmt: skip
        for index, tool in enumerate(self.tools, start=1):
            block = {"type": "tool_use", "id": f"toolu_{index - 1}", "name": tool.name, "input": {}}
            events += [
                {"type": "content_block_start", "index": index, "content_block": block},
                *({"type": "content_block_delta", "index": index,
                   "delta": {"type": "input_json_delta", "partial_json": piece}}
                  for piece in self._pieces(tool.arguments)),
                {"type": "content_block_stop", "index": index},
            ]  # fmt: skip
        for n in range(1, self.message_deltas + 1):
            reason = {"stop_reason": stop, "stop_sequence": None}
            delta: dict[str, Any] = {"type": "message_delta", "delta": reason}
            if self.usage:  # a running total: the last one is the whole count
                delta["usage"] = {"output_tokens": self.output_tokens * n // self.message_deltas}
            events.append(delta)
        events.append({"type": "message_stop"})
        return await self._stream(request, [(e["type"], e) for e in events])

    # in-house agent (the ``mapped`` format)

    async def _agent(self, request: web.Request) -> web.StreamResponse:
        await self._seen(request)
        doc = {
            "answer": self.text,
            "meta": {"model": self.model, "confidence": self.confidence,
                     "tokens": {"in": self.input_tokens, "out": self.output_tokens}},
            "actions": [{"tool": t.name, "args": t.arguments, "status": "ok"}
                        for t in self.tools],
        }  # fmt: skip
        if not self.usage:
            del doc["meta"]["tokens"]
        return await self._json(request, doc)


async def start_agent(aiohttp_server: Any, **knobs: Any) -> FakeAgent:
    """A :class:`FakeAgent` listening on 127.0.0.1:0; ``url`` has no ``/v1``."""
    agent = FakeAgent(**knobs)
    server = await aiohttp_server(agent.app(), host="127.0.0.1")
    agent.url = str(server.make_url("")).rstrip("/")
    return agent


# The UsageMapping that reads /v1/agent answers.
AGENT_MAPPING = {
    "input_tokens": "$.meta.tokens.in",
    "output_tokens": "$.meta.tokens.out",
    "model": "$.meta.model",
    "confidence": "$.meta.confidence",
    "tool_calls": "$.actions",
    "tool_name": "tool",
    "tool_arguments": "args",
    "tool_outcome": "status",
}
