"""Recording through the real proxy: every mismatch (and a share of matches)
becomes a JSONL case with the request's trace id, the agent's usage and tool
calls, the verdict before noise adjustment; secrets reach neither the file
nor any log line; files rotate and stay bounded."""

from __future__ import annotations

import asyncio
import gzip
import io
import json
import logging
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import structlog
from agents import FakeTool, start_agent
from conftest import Proxy, ProxyFactory
from fakes import Fake, Reply, start_fake

from proxy import logs
from proxy.golden import Case, read_cases
from proxy.recorder import PREFIX
from proxy.redaction import Redactor
from proxy.settings import LoggingSettings

TRACE = "4bf92f3577b34da6a3ce929d0e0e4736"
TRACEPARENT = f"00-{TRACE}-00f067aa0ba902b7-01"
LEGACY_ANSWER = b'{"answer": "The order ships on Monday.", "order": 7}'


def config(legacy: Fake, agent: Any, directory: Path, **changes: Any) -> dict[str, Any]:
    recording = {"enabled": True, "directory": str(directory), "match_percent": 0,
                 **changes.pop("recording", {})}  # fmt: skip
    route = {
        "name": "chat",
        "match": {"prefix": "/v1/"},
        "side_effect_free": True,  # POSTs are mirrored and called alongside
        "shadow": {"enabled": True},
        **changes,
    }
    return {
        "backends": {"legacy": {"url": legacy.url}, "agent": {"url": agent.url}},
        "routes": [route],
        "recording": recording,
    }


def written(proxy: Proxy) -> float:
    return proxy.value("shadow_proxy_recorded_cases_total", outcome="written")


async def recorded(proxy: Proxy, directory: Path, count: int) -> list[Case]:
    """The cases on disk once ``count`` were written (the writer is a thread)."""
    await proxy.settle()
    async with asyncio.timeout(10):
        while written(proxy) < count:  # noqa: ASYNC110 - polling is the point
            await asyncio.sleep(0.01)
    assert written(proxy) == count
    return [c for f in case_files(directory) for c in read_cases(f)]


def case_files(directory: Path) -> list[Path]:
    return sorted(directory.glob(f"{PREFIX}*.jsonl"))


def text_of(directory: Path) -> str:
    """Every recorded byte, to search for secrets."""
    return "".join(p.read_text() for p in case_files(directory))


def chat(text: str = "where is my order?", stream: bool = False) -> dict[str, Any]:
    return {"model": "m", "messages": [{"role": "user", "content": text}], "stream": stream}


@pytest.fixture
async def legacy(aiohttp_server: Any) -> Fake:
    return await start_fake(Fake("legacy", body=LEGACY_ANSWER), aiohttp_server)


@pytest.mark.parametrize(
    ("path", "stream", "provider"),
    [
        ("/v1/chat/completions", False, "openai"),
        ("/v1/messages", False, "anthropic"),
        ("/v1/messages", True, "anthropic"),
    ],
)
async def test_a_mismatch_is_recorded_with_its_trace_id_usage_and_tool_calls(
    make_proxy: ProxyFactory,
    legacy: Fake,
    aiohttp_server: Any,
    tmp_path: Path,
    path: str,
    stream: bool,
    provider: str,
) -> None:
    agent = await start_agent(aiohttp_server, tools=[FakeTool("lookup_order", '{"id": 7}')])
    proxy = await make_proxy(**config(legacy, agent, tmp_path))
    response = await proxy.client.post(
        path + "?lang=en", json=chat(stream=stream), headers={"traceparent": TRACEPARENT}
    )
    assert await response.read() == LEGACY_ANSWER
    (case,) = await recorded(proxy, tmp_path, 1)
    assert case.id.startswith("c-") and len(case.id) == 18
    assert (case.trace_id, case.route, case.served_by) == (TRACE, "chat", "legacy")
    assert case.request_id == legacy.seen[0].headers["x-request-id"][0]
    assert (case.request.method, case.request.path) == ("POST", path + "?lang=en")
    assert case.request.body is not None and case.request.body.value == chat(stream=stream)
    assert case.legacy.status == 200 and case.legacy.body is not None
    assert case.legacy.body.value == json.loads(LEGACY_ANSWER)
    assert case.agent.status == 200 and case.agent.error is None
    assert case.comparison.verdict.value == "mismatch" and case.comparison.differences
    assert case.comparison.raw_verdict is None  # no noise learning on this route
    assert case.usage is not None
    assert (case.usage["provider"], case.usage["model"]) == (provider, agent.model)
    assert (case.usage["input_tokens"], case.usage["output_tokens"]) == (42, 17)
    assert [(t.name, t.arguments, t.valid) for t in case.tool_calls] == [
        ("lookup_order", {"id": 7}, True)
    ]


async def test_a_gzip_answer_is_recorded_as_the_json_it_carries(
    make_proxy: ProxyFactory, aiohttp_server: Any, tmp_path: Path
) -> None:
    packed = gzip.compress(b'{"order": 7, "status": "shipped"}')
    legacy = await start_fake(Fake("legacy"), aiohttp_server)
    legacy.script = [Reply(body=packed, headers={"Content-Encoding": "gzip"})]
    agent = await start_fake(Fake("agent", body=b'{"order": 7, "status": "lost"}'), aiohttp_server)
    proxy = await make_proxy(**config(legacy, agent, tmp_path))
    response = await proxy.client.get("/v1/orders/7", auto_decompress=False)
    assert await response.read() == packed  # the client gets the bytes as legacy sent them
    (case,) = await recorded(proxy, tmp_path, 1)
    assert case.legacy.body is not None
    assert case.legacy.body.value == {"order": 7, "status": "shipped"}
    assert "content-encoding" not in case.legacy.headers
    assert [d.path for d in case.comparison.differences] == ["$.status"]


@pytest.mark.parametrize(("percent", "cases"), [(0, 0), (100, 3)])
async def test_matches_are_recorded_in_the_configured_share(
    make_proxy: ProxyFactory, aiohttp_server: Any, tmp_path: Path, percent: int, cases: int
) -> None:
    legacy = await start_fake(Fake("legacy"), aiohttp_server)
    agent = await start_fake(Fake("agent"), aiohttp_server)  # the same answer: a match
    proxy = await make_proxy(
        **config(legacy, agent, tmp_path, recording={"match_percent": percent})
    )
    for n in range(3):
        (await proxy.client.get(f"/v1/items/{n}")).release()
    await proxy.settle()
    assert proxy.verdict("match", route="chat") == 3
    found = await recorded(proxy, tmp_path, cases)
    assert [c.comparison.verdict.value for c in found] == ["match"] * cases
    assert sorted(c.request.path for c in found) == [f"/v1/items/{n}" for n in range(cases)]


async def test_the_verdict_before_noise_adjustment_is_recorded(
    make_proxy: ProxyFactory, aiohttp_server: Any, tmp_path: Path
) -> None:
    legacy = await start_fake(Fake("legacy", body=b'{"id": "L1", "order": 7}'), aiohttp_server)
    agent = await start_fake(Fake("agent", body=b'{"id": "A1", "order": 7}'), aiohttp_server)
    agent.script = [Reply(), Reply(body=b'{"id": "A2", "order": 8}')]
    cfg = config(legacy, agent, tmp_path, noise={"fields": ["$.id"]},
                 recording={"match_percent": 100})  # fmt: skip
    proxy = await make_proxy(**cfg)
    for n in range(2):
        (await proxy.client.get(f"/v1/orders/{n}")).release()
        await proxy.settle()  # in order: the second answer is the wrong one
    first, second = await recorded(proxy, tmp_path, 2)
    assert (first.comparison.verdict.value, first.comparison.raw_verdict) == ("match", "mismatch")
    assert (second.comparison.verdict.value, second.comparison.raw_verdict) == (
        "mismatch",
        "mismatch",
    )
    assert [d.path for d in second.comparison.differences] == ["$.order"]  # the noise is gone


@pytest.mark.parametrize(
    ("mode", "stream"), [("buffered", False), ("buffered", True), ("streamed", True)]
)
async def test_the_agent_serving_path_records_with_legacy_called_alongside(
    make_proxy: ProxyFactory,
    legacy: Fake,
    aiohttp_server: Any,
    tmp_path: Path,
    mode: str,
    stream: bool,
) -> None:
    agent = await start_agent(aiohttp_server, tools=[FakeTool("refund", '{"amount": 5}')])
    rollout = {"mode": "manual", "percent": 100}
    cfg = config(legacy, agent, tmp_path, rollout=rollout, fallback={"mode": mode})
    proxy = await make_proxy(**cfg)
    response = await proxy.client.post(
        "/v1/messages", json=chat(stream=stream), headers={"traceparent": TRACEPARENT}
    )
    assert response.headers["X-Served-By"] == "agent"
    assert await response.read() == agent.sent[0]
    (case,) = await recorded(proxy, tmp_path, 1)
    assert (case.served_by, case.trace_id, case.comparison.verdict.value) == (
        "agent",
        TRACE,
        "mismatch",
    )
    assert case.legacy.body is not None and case.legacy.body.value == json.loads(LEGACY_ANSWER)
    assert case.agent.body is not None and case.agent.body.kind == ("text" if stream else "json")
    assert case.usage is not None
    assert (case.usage["input_tokens"], case.usage["output_tokens"]) == (42, 17)
    assert [t.name for t in case.tool_calls] == ["refund"]


async def test_the_shadow_path_records_the_clients_request_not_the_agents_copy(
    make_proxy: ProxyFactory, legacy: Fake, aiohttp_server: Any, tmp_path: Path
) -> None:
    agent = await start_agent(aiohttp_server)
    cfg = config(legacy, agent, tmp_path)
    cfg["shadow"] = {"add_headers": {"X-Agent-Key": "agentkey0000secret09"},
                     "drop_headers": ["X-Tenant"]}  # fmt: skip
    proxy = await make_proxy(**cfg)
    response = await proxy.client.post(
        "/v1/chat/completions", json=chat(), headers={"X-Tenant": "acme"}
    )
    await response.read()
    (case,) = await recorded(proxy, tmp_path, 1)
    assert "agentkey0000secret09" not in text_of(tmp_path)
    assert case.request.headers.get("x-tenant") == "acme"  # replayed as the client sent it


# Each value is unique, so a leak names where it came from.
SECRETS = {
    "header": "hdrtoken0000secret01",
    "password": "pw0000secret02",
    "email": "jane.doe0003@example.com",
    "query_token": "qtok0000secret04",
    "api_key": "sk-apikey0000secret05abcdef",
    "agent_email": "agent.person0006@example.org",
}


@pytest.fixture
def log_output() -> Iterator[io.StringIO]:
    """The proxy's log lines as the CLI writes them (JSON, debug level, redacted)."""
    stream = io.StringIO()
    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level
    logs.configure(LoggingSettings(format="json", level="debug"), stream, Redactor())
    # Module loggers must not keep this stream once the test is over.
    structlog.configure(cache_logger_on_first_use=False)
    try:
        yield stream
    finally:
        structlog.reset_defaults()
        root.handlers[:], root.level = handlers, level
        logging.captureWarnings(False)


async def test_secrets_reach_neither_the_recorded_case_nor_any_log_line(
    make_proxy: ProxyFactory, aiohttp_server: Any, tmp_path: Path, log_output: io.StringIO
) -> None:
    s = SECRETS
    legacy_doc = {"user": "jane", "contact": s["email"], "note": f"key {s['api_key']}"}
    agent_doc = {"user": "jane", "contact": s["agent_email"], "note": "no key"}
    legacy = await start_fake(Fake("legacy", body=json.dumps(legacy_doc).encode()), aiohttp_server)
    agent = await start_fake(Fake("agent", body=json.dumps(agent_doc).encode()), aiohttp_server)
    proxy = await make_proxy(**config(legacy, agent, tmp_path))
    response = await proxy.client.post(
        f"/v1/login?access_token={s['query_token']}&lang=en",
        json={"user": "jane", "password": s["password"], "email": s["email"],
              "note": f"my key is {s['api_key']}"},
        headers={"Authorization": f"Bearer {s['header']}", "traceparent": TRACEPARENT},
    )  # fmt: skip
    await response.read()
    (case,) = await recorded(proxy, tmp_path, 1)
    files = text_of(tmp_path)
    lines = log_output.getvalue()
    mismatches = [e for e in map(json.loads, lines.splitlines()) if e["event"] == "mismatch"]
    assert [e["trace_id"] for e in mismatches] == [TRACE]  # logged: there was something to leak
    for where, text in (("recorded case", files), ("log", lines)):
        leaked = [name for name, secret in s.items() if secret in text]
        assert leaked == [], f"{where} carries {leaked}"
    assert case.request.headers["authorization"] == "[REDACTED]"
    assert case.request.path == "/v1/login?access_token=[REDACTED]&lang=en"
    assert case.request.body is not None and case.request.body.value["user"] == "jane"
    assert case.request.body.value["password"] == "[REDACTED]"
    assert case.trace_id == TRACE  # what a mismatch is found by survives redaction


async def test_percent_encoded_secrets_in_the_query_string_are_redacted(
    make_proxy: ProxyFactory, aiohttp_server: Any, tmp_path: Path, log_output: io.StringIO
) -> None:
    legacy = await start_fake(Fake("legacy", body=b'{"a": 1}'), aiohttp_server)
    agent = await start_fake(Fake("agent", body=b'{"a": 2}'), aiohttp_server)
    proxy = await make_proxy(**config(legacy, agent, tmp_path))
    bearer, email = "enc0000secret07abc", "enc.person0008"
    response = await proxy.client.get(f"/v1/find?auth=Bearer%20{bearer}&who={email}%40example.com")
    await response.read()
    await recorded(proxy, tmp_path, 1)
    files = text_of(tmp_path)
    for text in (files, log_output.getvalue()):
        assert bearer not in text and email not in text


async def test_case_files_rotate_and_stay_within_the_total_bound(
    make_proxy: ProxyFactory, legacy: Fake, aiohttp_server: Any, tmp_path: Path
) -> None:
    agent = await start_agent(aiohttp_server)
    limits = {"max_file_size": "4KiB", "max_total_size": "12KiB"}
    proxy = await make_proxy(**config(legacy, agent, tmp_path, recording=limits))
    for n in range(30):
        response = await proxy.client.post("/v1/chat/completions", json=chat(f"order {n}"))
        await response.read()
        await proxy.settle()  # recorded in the order sent
    found = await recorded(proxy, tmp_path, 30)
    sizes = [len(text) for text in map(Path.read_bytes, case_files(tmp_path))]
    assert len(sizes) >= 3
    assert all(size <= 4 * 1024 for size in sizes)
    assert sum(sizes) <= 12 * 1024
    # the oldest went first: what is left is the most recent cases, whole
    assert 0 < len(found) < 30
    kept = [c.request.body.value["messages"][0]["content"] for c in found if c.request.body]
    assert kept == [f"order {n}" for n in range(30 - len(found), 30)]
