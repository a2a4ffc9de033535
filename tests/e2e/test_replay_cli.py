"""A golden suite as a nightly CI job runs it: ``shadow-proxy replay`` against
real agents on 127.0.0.1, and ``shadow-proxy label`` curating the cases."""

from __future__ import annotations

import asyncio
import json
import os
import socket
import sys
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import yaml
from agents import start_agent
from aiohttp import web

from comparators import Verdict
from proxy.golden import Answer, Body, Case, Compared, Request, read_cases, write_cases
from proxy.redaction import MASK

pytestmark = pytest.mark.e2e
CLI = str(Path(sys.executable).parent / "shadow-proxy")
JSON = {"content-type": "application/json"}


def legacy_answer(n: int) -> dict[str, Any]:
    return {"category": "billing", "n": n}


def make_case(
    n: int,
    *,
    agent: dict[str, Any] | None = None,
    verdict: Verdict = Verdict.MATCH,
    path: str | None = None,
    usage: dict[str, Any] | None = None,
) -> Case:
    headers = {**JSON, "authorization": MASK, "connection": "keep-alive, x-hop",
               "x-hop": "1", "x-tenant": "acme"}  # fmt: skip
    return Case(
        id=f"c-{n:016x}",
        time="2026-11-22T10:00:00.000Z",
        route="api",
        request=Request(
            "POST", path or f"/api/classify?n={n}", headers, Body("json", {"text": f"hi {n}"})
        ),
        legacy=Answer(200, JSON, Body("json", legacy_answer(n)), 12.0),
        agent=Answer(200, JSON, Body("json", agent or legacy_answer(n)), 40.0 + n),
        comparison=Compared(verdict, 1.0 if verdict is Verdict.MATCH else 0.5),
        usage=usage,
    )


def golden(tmp_path: Path, cases: list[Case], name: str = "cases.jsonl") -> Path:
    path = tmp_path / name
    write_cases(path, cases)
    return path


@dataclass
class Agent:
    """A fake agent whose answer is a function of ``n`` in the query string."""

    answer: Callable[[int], tuple[int, dict[str, Any]]]
    delay: float = 0.0
    url: str = ""
    seen: list[tuple[str, str, dict[str, str], Any]] = field(default_factory=list)

    async def handle(self, request: web.Request) -> web.Response:
        body = await request.json() if request.can_read_body else None
        headers = {k.lower(): v for k, v in request.headers.items()}
        self.seen.append((request.method, request.path_qs, headers, body))
        await asyncio.sleep(self.delay)
        status, doc = self.answer(int(request.query.get("n", "0")))
        return web.json_response(doc, status=status)


AgentFactory = Callable[..., Awaitable[Agent]]


@pytest.fixture
def make_agent(aiohttp_server: Any) -> AgentFactory:
    async def make(answer: Callable[[int], tuple[int, dict[str, Any]]], delay: float = 0) -> Agent:
        agent = Agent(answer, delay)
        app = web.Application()
        app.router.add_route("*", "/{tail:.*}", agent.handle)
        server = await aiohttp_server(app, host="127.0.0.1")
        agent.url = str(server.make_url("")).rstrip("/")
        return agent

    return make


def good(n: int) -> tuple[int, dict[str, Any]]:
    return 200, legacy_answer(n)


def bad(n: int) -> tuple[int, dict[str, Any]]:
    return 200, {"category": "other", "n": n}


@dataclass
class Run:
    code: int
    stdout: str
    stderr: str


async def cli(*args: str | Path) -> Run:
    """The real CLI as a user runs it (no SHADOW_PROXY_* from this shell); no traceback."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("SHADOW_PROXY_")}
    process = await asyncio.create_subprocess_exec(
        CLI, *map(str, args), stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
        env=env,
    )  # fmt: skip
    out, err = await asyncio.wait_for(process.communicate(), timeout=60)
    assert process.returncode is not None
    run = Run(process.returncode, out.decode(), err.decode())
    assert "Traceback" not in run.stderr, run.stderr
    return run


async def test_a_good_agent_passes_and_gets_each_request_as_recorded_marked_as_shadow(
    make_agent: AgentFactory, tmp_path: Path
) -> None:
    agent = await make_agent(good)
    cases = golden(tmp_path, [make_case(n) for n in range(4)])
    report = tmp_path / "report.json"
    run = await cli("replay", cases, "--agent", agent.url, "--json", report)
    assert run.code == 0, run.stdout + run.stderr
    assert "PASS: agreement 100.0%" in run.stdout
    assert "it/s" not in run.stderr and "case/s" not in run.stderr  # no bar without a TTY
    data = json.loads(report.read_text())
    assert (data["cases"], data["after"]["agreement"], data["after"]["matches"]) == (4, 1.0, 4)
    assert sorted(s[1] for s in agent.seen) == [f"/api/classify?n={n}" for n in range(4)]
    method, _, headers, body = next(s for s in agent.seen if s[1].endswith("n=2"))
    assert (method, body, headers["x-shadow-request"], headers["x-tenant"]) == (
        "POST", {"text": "hi 2"}, "1", "acme"
    )  # fmt: skip
    # hop-by-hop (and what Connection named) and redacted headers are not replayed
    assert not {"authorization", "x-hop"} & set(headers), headers


async def test_a_bad_agent_fails_with_the_differing_field_in_every_report(
    make_agent: AgentFactory, tmp_path: Path
) -> None:
    agent = await make_agent(bad)
    cases = golden(tmp_path, [make_case(n) for n in range(3)])
    report, page = tmp_path / "r.json", tmp_path / "r.html"
    run = await cli("replay", cases, "--agent", agent.url, "--json", report, "--html", page)
    assert run.code == 1, run.stdout + run.stderr
    assert "mismatches by field:" in run.stdout and "$.category" in run.stdout
    data = json.loads(report.read_text())
    assert data["mismatches_by_field"] == [{"path": "$.category", "cases": 3}]
    assert (data["before"]["agreement"], data["after"]["agreement"]) == (1.0, 0.0)
    assert {c["differences"][0]["agent"] for c in data["failing_cases"]} == {"other"}
    html = page.read_text()
    assert "$.category" in html and "FAIL" in html


def half(n: int) -> tuple[int, dict[str, Any]]:
    return bad(n) if n % 2 else good(n)


@pytest.mark.parametrize(("threshold", "code"), [("0.5", 0), ("0.51", 1), ("1", 1), ("0", 0)])
async def test_the_exit_status_follows_the_threshold(
    make_agent: AgentFactory, tmp_path: Path, threshold: str, code: int
) -> None:
    agent = await make_agent(half)
    cases = golden(tmp_path, [make_case(n) for n in range(4)])
    run = await cli("replay", cases, "--agent", agent.url, "--threshold", threshold)
    assert run.code == code, run.stdout
    assert "agreement 50.0%" in run.stdout


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@pytest.mark.parametrize("kind", ["refused", "too slow"])
async def test_an_agent_that_answers_nothing_is_an_input_error_with_the_errors_reported(
    make_agent: AgentFactory, tmp_path: Path, kind: str
) -> None:
    if kind == "refused":
        url, expected = f"http://127.0.0.1:{free_port()}", "cannot connect"
    else:
        url, expected = (await make_agent(good, delay=5)).url, "timeout after 0.3s"
    cases = golden(tmp_path, [make_case(n) for n in range(3)])
    report = tmp_path / "r.json"
    run = await cli("replay", cases, "--agent", url, "--timeout", "0.3", "--json", report)
    assert run.code == 2
    assert "answered none of the cases" in run.stderr
    assert expected in run.stdout
    assert json.loads(report.read_text())["errors"][0]["cases"] == 3


async def test_a_5xx_from_the_agent_is_a_scored_error(
    make_agent: AgentFactory, tmp_path: Path
) -> None:
    agent = await make_agent(lambda n: (503, {"error": "busy"}) if n == 0 else good(n))
    cases = golden(tmp_path, [make_case(n) for n in range(4)])
    run = await cli("replay", cases, "--agent", agent.url, "--threshold", "0.75")
    assert run.code == 0, run.stdout
    assert "agreement 75.0%" in run.stdout
    assert "agent answered 503" in run.stdout


def refund_for_1(n: int) -> tuple[int, dict[str, Any]]:
    """The agent now says "refund" for case 1, which a human finds right."""
    return (200, {"category": "refund", "n": n}) if n == 1 else good(n)


async def test_a_labelled_expected_answer_replaces_legacy_and_other_lines_stay_byte_for_byte(
    make_agent: AgentFactory, tmp_path: Path
) -> None:
    agent = await make_agent(refund_for_1)
    cases = golden(tmp_path, [make_case(n) for n in range(3)])
    original = cases.read_bytes().splitlines(keepends=True)
    assert (await cli("replay", cases, "--agent", agent.url, "--threshold", "1")).code == 1
    expected = tmp_path / "expected.json"
    expected.write_text('{"category": "refund", "n": 1}')
    run = await cli("label", cases, "c-0000000000000001", "--verdict", "legacy",
                    "--note", "refund is right", "--expected-file", expected)  # fmt: skip
    assert run.code == 0, run.stderr
    lines = cases.read_bytes().splitlines(keepends=True)
    assert (lines[0], lines[2]) == (original[0], original[2])
    labelled = list(read_cases(cases))[1]
    assert labelled.label is not None and labelled.label.note == "refund is right"
    assert labelled.expected is not None and labelled.expected.status == 200
    run = await cli("replay", cases, "--agent", agent.url, "--threshold", "1", "--json",
                    tmp_path / "r.json")  # fmt: skip
    assert run.code == 0, run.stdout
    scored = json.loads((tmp_path / "r.json").read_text())
    assert scored["after"]["agreement"] == 1.0


async def test_a_case_labelled_agent_expects_the_recorded_agent_answer(
    make_agent: AgentFactory, tmp_path: Path
) -> None:
    agent = await make_agent(refund_for_1)
    refund = {"category": "refund", "n": 1}
    recorded = [make_case(0), make_case(1, agent=refund, verdict=Verdict.MISMATCH)]
    cases = golden(tmp_path, recorded)
    assert (await cli("replay", cases, "--agent", agent.url, "--threshold", "1")).code == 1
    run = await cli("label", cases, "c-0000000000000001", "--verdict", "agent")
    assert run.code == 0 and "c-0000000000000001: agent" in run.stdout
    report = tmp_path / "r.json"
    run = await cli("replay", cases, "--agent", agent.url, "--threshold", "1", "--json", report)
    assert run.code == 0, run.stdout
    data = json.loads(report.read_text())
    assert (data["before"]["mismatches"], data["after"]["matches"]) == (1, 2)


async def test_an_excluded_case_is_neither_sent_nor_scored(
    make_agent: AgentFactory, tmp_path: Path
) -> None:
    agent = await make_agent(refund_for_1)
    cases = golden(tmp_path, [make_case(n) for n in range(3)])
    assert (await cli("label", cases, "c-0000000000000001", "--verdict", "exclude")).code == 0
    run = await cli("replay", cases, "--agent", agent.url, "--threshold", "1")
    assert run.code == 0, run.stdout
    assert "cases: 3 (1 excluded)" in run.stdout
    assert sorted(s[1] for s in agent.seen) == ["/api/classify?n=0", "/api/classify?n=2"]


async def test_labelling_an_unknown_case_fails_and_leaves_the_file_alone(tmp_path: Path) -> None:
    cases = golden(tmp_path, [make_case(0)])
    before = cases.read_bytes()
    run = await cli("label", cases, "c-nope", "--verdict", "agent")
    assert run.code == 1
    assert "no case with id 'c-nope'" in run.stderr
    assert cases.read_bytes() == before


@pytest.mark.parametrize(
    ("problem", "message"),
    [
        ("garbage", "cases.jsonl:2: not JSON"),
        ("wrong field", "cases.jsonl:2: "),
        ("missing file", "cannot read"),
        ("bad url", "is not an absolute http:// or https:// URL"),
        ("bad config", "is not a valid config"),
        ("no such route", "no cases of route 'nope' to replay"),
        ("all excluded", "no case could be scored (all excluded or skipped)"),
    ],
)
async def test_bad_input_exits_2_with_a_clear_message(
    make_agent: AgentFactory, tmp_path: Path, problem: str, message: str
) -> None:
    agent = await make_agent(good)
    cases = golden(tmp_path, [make_case(0), make_case(1)])
    args: list[str | Path] = ["replay", cases, "--agent", agent.url]
    lines = cases.read_bytes().splitlines(keepends=True)
    if problem == "garbage":
        cases.write_bytes(lines[0] + b"{this is not json\n" + lines[1])
    elif problem == "wrong field":
        cases.write_bytes(lines[0] + lines[1].replace(b'"status":200', b'"status":"ok"', 1))
    elif problem == "missing file":
        args[1] = tmp_path / "absent.jsonl"
    elif problem == "bad url":
        args[3] = "localhost:8080"
    elif problem == "bad config":
        (tmp_path / "proxy.yaml").write_text("routes: [{name: api}]\n")
        args += ["--config", tmp_path / "proxy.yaml"]
    elif problem == "no such route":
        args += ["--route", "nope"]
    else:
        for n in (0, 1):
            assert (await cli("label", cases, f"c-{n:016x}", "--verdict", "exclude")).code == 0
    run = await cli(*args)
    assert run.code == 2
    assert message in run.stderr
    assert agent.seen == []


def config(tmp_path: Path, compare: list[Any]) -> Path:
    path = tmp_path / "proxy.yaml"
    data = {
        "backends": {"legacy": {"url": "http://127.0.0.1:9"}},
        "routes": [{"name": "api", "match": {"prefix": "/api/"}, "compare": compare}],
    }
    path.write_text(yaml.safe_dump(data))
    return path


async def test_the_routes_own_comparators_score_the_replay(
    make_agent: AgentFactory, tmp_path: Path
) -> None:
    agent = await make_agent(bad)
    cases = golden(tmp_path, [make_case(n) for n in range(2)])
    only_status = config(tmp_path, ["status"])
    run = await cli("replay", cases, "--agent", agent.url, "--config", only_status)
    assert run.code == 0, run.stdout + run.stderr


async def test_a_voting_comparator_gets_as_many_agent_answers_as_it_asks_for(
    make_agent: AgentFactory, tmp_path: Path
) -> None:
    calls: dict[int, int] = {}

    def flaky(n: int) -> tuple[int, dict[str, Any]]:
        calls[n] = calls.get(n, 0) + 1
        return bad(n) if calls[n] == 2 else good(n)  # one odd answer of three

    agent = await make_agent(flaky)
    cases = golden(tmp_path, [make_case(n) for n in range(2)])
    quorum = config(tmp_path, [{"name": "quorum", "samples": 3, "field": "$.category"}])
    run = await cli("replay", cases, "--agent", agent.url, "--config", quorum, "--threshold", "1")
    assert run.code == 0, run.stdout + run.stderr
    assert calls == {0: 3, 1: 3}


async def test_tokens_of_the_replayed_answers_are_reported_beside_the_recorded_ones(
    aiohttp_server: Any, tmp_path: Path
) -> None:
    agent = await start_agent(aiohttp_server, input_tokens=30, output_tokens=12)
    recorded = {"input_tokens": 50, "output_tokens": 20}
    cases = golden(
        tmp_path,
        [make_case(n, path="/v1/chat/completions", usage=recorded) for n in range(2)],
    )
    report = tmp_path / "r.json"
    only_status = config(tmp_path, ["status"])
    run = await cli("replay", cases, "--agent", agent.url, "--config", only_status,
                    "--json", report)  # fmt: skip
    assert run.code == 0, run.stdout + run.stderr
    data = json.loads(report.read_text())
    assert data["before"]["tokens"]["total"] == 140
    assert data["after"]["tokens"]["total"] == 84
    assert "route 'api' is not in" not in run.stderr
