"""The golden-suite loop as a team runs it, every step a real CLI process:
``shadow-proxy run`` records production traffic, ``shadow-proxy replay``
scores a new agent on it in CI, ``shadow-proxy label`` curates the cases."""

from __future__ import annotations

import asyncio
import json
import os
import re
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp import web
from test_cli import Running, start_cli
from test_replay_cli import cli

from proxy.golden import Case, read_cases
from proxy.recorder import PREFIX

pytestmark = pytest.mark.e2e

SECRET = "Bearer golden0000secret01"
CASES = 10


def truth(n: int) -> str:
    """What legacy answers to ``order n``: the answer a good agent must give."""
    return f"order {n} ships on {('Monday', 'Tuesday', 'Friday')[n % 3]}"


@dataclass
class Chat:
    """An OpenAI-compatible chat service on 127.0.0.1:0 whose answer to
    ``order n`` is ``answer(n)``; ``tokens`` (input, output) or no usage."""

    answer: Callable[[int], str]
    tokens: tuple[int, int] | None = None
    seen: list[dict[str, str]] = field(default_factory=list)  # request headers
    url: str = ""

    async def handle(self, request: web.Request) -> web.Response:
        body = await request.json()
        self.seen.append({k.lower(): v for k, v in request.headers.items()})
        n = int(body["messages"][-1]["content"].split()[-1])
        message = {"role": "assistant", "content": self.answer(n)}
        doc: dict[str, Any] = {
            "id": f"chatcmpl-{os.urandom(4).hex()}",
            "object": "chat.completion",
            "model": "legacy-rules" if self.tokens is None else "agent-model",
            "choices": [{"index": 0, "message": message, "finish_reason": "stop"}],
        }
        if self.tokens is not None:
            prompt, completion = self.tokens
            doc["usage"] = {"prompt_tokens": prompt, "completion_tokens": completion,
                            "total_tokens": prompt + completion}  # fmt: skip
        return web.json_response(doc)


ChatFactory = Callable[..., Awaitable[Chat]]


@pytest.fixture
def make_chat(aiohttp_server: Any) -> ChatFactory:
    async def make(answer: Callable[[int], str], tokens: tuple[int, int] | None = None) -> Chat:
        chat = Chat(answer, tokens)
        app = web.Application()
        app.router.add_post("/v1/chat/completions", chat.handle)
        server = await aiohttp_server(app, host="127.0.0.1")
        chat.url = str(server.make_url("")).rstrip("/")
        return chat

    return make


def config(legacy: Chat, agent: Chat, recordings: Path) -> dict[str, Any]:
    return {
        "listen": {"host": "127.0.0.1", "port": 0},
        "admin": {"port": 0},
        "backends": {"legacy": {"url": legacy.url}, "agent": {"url": agent.url}},
        "routes": [
            {
                "name": "chat",
                "match": {"prefix": "/v1/"},
                "side_effect_free": True,
                "shadow": {"enabled": True},
                # answers differ in these every time: frozen noise, discounted
                # live and in the replay alike
                "noise": {"fields": ["$.id", "$.model", "$.usage"]},
            }
        ],
        "recording": {"enabled": True, "directory": str(recordings), "match_percent": 100},
        "logging": {"format": "json"},
        "shutdown": {"drain_delay": "100ms", "timeout": "10s", "shadow_grace": "5s"},
    }


def trace_id(n: int) -> str:
    return f"{n + 1:032x}"


async def record(proc: Running, agent: Chat) -> None:
    """Production traffic: ``order 0`` .. ``order 9``, each with its own trace."""
    async with aiohttp.ClientSession() as http:
        for n in range(CASES):
            headers = {"traceparent": f"00-{trace_id(n)}-00f067aa0ba902b7-01",
                       "Authorization": SECRET}  # fmt: skip
            body = {"model": "m", "messages": [{"role": "user", "content": f"order {n}"}]}
            async with http.post(f"{proc.proxy}/v1/chat/completions", json=body,
                                 headers=headers) as response:  # fmt: skip
                assert response.status == 200
                answer = await response.json()
                assert answer["choices"][0]["message"]["content"] == truth(n)
    async with asyncio.timeout(10):  # the shadow copies arrived; the rest drains at stop
        while len(agent.seen) < CASES:  # noqa: ASYNC110 - polling is the point
            await asyncio.sleep(0.02)


async def stop(proc: Running, reader: asyncio.Task[None]) -> None:
    proc.process.terminate()
    assert await asyncio.wait_for(proc.process.wait(), timeout=20) == 0
    await reader


def self_contained(page: str) -> bool:
    """Opens offline: nothing is fetched (no scripts, links, frames, images, imports)."""
    fetches = re.compile(r"<script|<link|<iframe|<img|\bsrc\s*=|\bhref\s*=|@import|url\(", re.I)
    return page.startswith("<!DOCTYPE html>") and "<style>" in page and not fetches.search(page)


async def test_recorded_traffic_replays_against_better_and_worse_agents_and_labels_count(
    make_chat: ChatFactory, tmp_path: Path
) -> None:
    legacy = await make_chat(truth)
    # the agent in production: right on odd orders only
    recorded_agent = await make_chat(lambda n: truth(n) if n % 2 else "not sure", (30, 10))
    recordings = tmp_path / "recordings"
    proc = await start_cli(config(legacy, recorded_agent, recordings), tmp_path)
    reader = asyncio.create_task(proc.read_events())
    try:
        await record(proc, recorded_agent)
    finally:
        await stop(proc, reader)
    mismatched = sorted(e["trace_id"] for e in proc.events if e["event"] == "mismatch")
    assert mismatched == [trace_id(n) for n in range(0, CASES, 2)]  # the log leads to the trace
    (file,) = sorted(recordings.glob(f"{PREFIX}*.jsonl"))
    assert SECRET.split()[1] not in file.read_text()
    cases = {int(c.request.body.value["messages"][0]["content"].split()[-1]): c
             for c in read_cases(file) if c.request.body is not None}  # fmt: skip
    assert sorted(cases) == list(range(CASES))
    for n, case in cases.items():
        assert case.trace_id == trace_id(n)
        assert case.comparison.verdict.value == ("match" if n % 2 else "mismatch")
        assert case.comparison.raw_verdict == "mismatch"  # the noise, before it was discounted
        assert case.usage is not None and case.usage["input_tokens"] == 30
        assert case.request.headers["authorization"] == "[REDACTED]"

    config_file = tmp_path / "proxy.yaml"  # the one the proxy ran with
    better = await make_chat(truth, (20, 5))
    report, page = tmp_path / "report.json", tmp_path / "report.html"
    run = await cli("replay", file, "--agent", better.url, "--config", config_file,
                    "--json", report, "--html", page)  # fmt: skip
    assert run.code == 0, run.stdout + run.stderr
    assert "PASS: agreement 100.0%" in run.stdout
    assert re.search(r"agreement\s+50\.0%\s+100\.0%", run.stdout), run.stdout
    data = json.loads(report.read_text())
    assert (data["before"]["agreement"], data["after"]["agreement"]) == (0.5, 1.0)
    assert (data["before"]["tokens"]["total"], data["after"]["tokens"]["total"]) == (400, 250)
    assert len(better.seen) == CASES
    for headers in better.seen:  # marked, without the masked credential or the old trace
        assert headers["x-shadow-request"] == "1"
        assert "authorization" not in headers
        assert "traceparent" not in headers
    html = page.read_text()
    assert self_contained(html), html[:500]
    assert "PASS: agreement 100.0%" in html

    worse = await make_chat(lambda n: "no idea", (25, 5))
    run = await cli("replay", file, "--agent", worse.url, "--config", config_file, "--json", report)
    assert run.code == 1, run.stdout + run.stderr
    assert "FAIL: agreement 0.0%" in run.stdout
    data = json.loads(report.read_text())
    assert data["after"]["mismatches"] == CASES
    assert data["mismatches_by_field"] == [{"path": "$.choices[*].message.content",
                                            "cases": CASES}]  # fmt: skip

    # A human says the recorded agent was right about order 0, and order 2 is
    # not worth scoring: the better agent now misses order 0 and order 2 is out.
    labelled = await cli("label", file, cases[0].id, "--verdict", "agent", "--note", "ok")
    assert labelled.code == 0, labelled.stderr
    assert (await cli("label", file, cases[2].id, "--verdict", "exclude")).code == 0
    run = await cli("replay", file, "--agent", better.url, "--config", config_file,
                    "--threshold", "0.95", "--json", report)  # fmt: skip
    assert run.code == 1, run.stdout + run.stderr
    data = json.loads(report.read_text())
    assert (data["cases"], data["excluded"], data["after"]["matches"]) == (CASES, 1, 8)
    (failing,) = data["failing_cases"]
    assert (failing["id"], failing["expected_from"], failing["after"]) == (
        cases[0].id,
        "agent",
        "mismatch",
    )
    relabelled = {c.id: c for c in read_cases(file)}
    assert relabelled[cases[0].id].label is not None
    assert isinstance(relabelled[cases[0].id], Case)
