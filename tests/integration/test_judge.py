"""The ``judge`` comparator against a real fake OpenAI-compatible server on 127.0.0.1."""

from __future__ import annotations

import asyncio
import json
import socket
from dataclasses import dataclass, field
from typing import Any

import pytest
from aiohttp import web
from hypothesis import given, settings
from hypothesis import strategies as st

from comparators.comparison import acompare
from comparators.judge import MAX_ANSWER_BYTES, JudgeComparator, JudgeFailed, parse_answer
from comparators.registry import build
from comparators.types import Sample, Verdict

LEGACY = Sample(200, body=b'{"refund": 20, "currency": "EUR"}')
AGENT = Sample(200, body=b'{"message": "We refunded 20 euros."}')
MATCH_JSON = '{"verdict": "match", "score": 0.9, "reason": "same refund"}'
MISMATCH_JSON = '{"verdict": "mismatch", "score": 0.1, "reason": "different amount"}'
MATCH, MISMATCH, ERROR = Verdict.MATCH, Verdict.MISMATCH, Verdict.ERROR
OK = {"url": "http://x/v1", "model": "m"}


def completion(content: str) -> dict[str, Any]:
    return {
        "id": "chatcmpl-1",
        "object": "chat.completion",
        "choices": [{"index": 0, "message": {"role": "assistant", "content": content}}],
        "usage": {"prompt_tokens": 50, "completion_tokens": 20, "total_tokens": 70},
    }


@dataclass
class FakeJudge:
    """An OpenAI-compatible chat completions endpoint whose answer a test sets."""

    mode: str = "ok"
    content: str = MATCH_JSON
    requests: list[tuple[dict[str, str], dict[str, Any]]] = field(default_factory=list)
    url: str = ""

    async def handle(self, request: web.Request) -> web.StreamResponse:
        self.requests.append((dict(request.headers), await request.json()))
        if self.mode == "slow":
            await asyncio.sleep(30)
        if self.mode == "error":
            return web.json_response({"error": {"message": "overloaded"}}, status=500)
        if self.mode == "not-completion":
            return web.json_response({"error": "no"})
        if self.mode == "redirect":
            raise web.HTTPTemporaryRedirect(self.url + "/elsewhere")
        if self.mode == "huge":
            response = web.StreamResponse()
            await response.prepare(request)
            for _ in range(MAX_ANSWER_BYTES // 65536 + 2):
                await response.write(b" " * 65536)
            return response
        return web.json_response(completion(self.content))


@pytest.fixture
async def judge(aiohttp_server: Any) -> FakeJudge:
    fake = FakeJudge()
    app = web.Application()
    app.router.add_post("/v1/chat/completions", fake.handle)
    server = await aiohttp_server(app, host="127.0.0.1")
    fake.url = str(server.make_url("/v1/chat/completions"))
    return fake


def comparator(fake: FakeJudge, **options: Any) -> JudgeComparator:
    built = build("judge", {"url": fake.url, "model": "judge-1", **options})
    assert isinstance(built, JudgeComparator)
    return built


@pytest.mark.parametrize(
    ("mode", "content", "options", "verdict", "score", "reason"),
    [
        ("ok", MATCH_JSON, {}, MATCH, 0.9, "same refund"),
        ("ok", MISMATCH_JSON, {}, MISMATCH, 0.1, "different amount"),
        ("ok", f"```json\n{MATCH_JSON}\n```", {}, MATCH, 0.9, "same refund"),
        ("ok", '{"verdict": "MATCH"}', {}, MATCH, 1.0, ""),
        ("ok", '{"verdict": "mismatch", "score": 0.6}', {"threshold": 0.5}, MATCH, 0.6, ""),
        ("ok", '{"verdict": "match", "score": 0.6}', {"threshold": 0.7}, MISMATCH, 0.6, "disagree"),
        ("ok", '{"verdict": "match"}', {"threshold": 0.7}, ERROR, 0.0, "no score"),
        ("ok", "They look the same to me.", {}, ERROR, 0.0, "judge answer is not JSON"),
        ("ok", '["match"]', {}, ERROR, 0.0, "not a JSON object"),
        ("ok", '{"verdict": "maybe", "score": 0.5}', {}, ERROR, 0.0, "verdict must be"),
        ("ok", '{"verdict": "match", "score": 7}', {}, ERROR, 0.0, "score must be"),
        ("ok", '{"verdict": "match", "score": "high"}', {}, ERROR, 0.0, "score must be"),
        ("not-completion", "", {}, ERROR, 0.0, "not a chat completion"),
        ("error", "", {}, ERROR, 0.0, "judge answered HTTP 500"),
        ("slow", "", {"timeout": 0.3}, ERROR, 0.0, "judge timed out after 0.3s"),
        ("huge", "", {}, ERROR, 0.0, f"judge reply exceeds {MAX_ANSWER_BYTES} bytes"),
    ],
)  # fmt: skip
async def test_the_judges_answer_becomes_a_result(
    judge: FakeJudge,
    mode: str,
    content: str,
    options: dict[str, Any],
    verdict: Verdict,
    score: float,
    reason: str,
) -> None:
    """Verdicts, scores and reasons come from the judge; every bad answer is an error result."""
    judge.mode, judge.content = mode, content
    result = await comparator(judge, **options)(LEGACY, AGENT)
    assert result.verdict is verdict, result.reason
    assert result.score == pytest.approx(score)
    assert reason in result.reason
    assert len(judge.requests) == 1


async def test_the_rubric_and_both_answers_reach_the_judge(judge: FakeJudge) -> None:
    """The judge gets the model, the rubric, both bodies and statuses, and asks for JSON."""
    rubric = "Refund amounts must be equal; currency symbols may differ."
    await comparator(judge, rubric=rubric, max_tokens=77)(LEGACY, Sample(201, body=AGENT.body))
    ((_, sent),) = judge.requests
    assert sent["model"] == "judge-1"
    assert sent["max_tokens"] == 77
    assert sent["temperature"] == 0
    assert sent["response_format"] == {"type": "json_object"}
    system, user = sent["messages"]
    assert system["role"] == "system" and rubric in system["content"]
    assert '"verdict"' in system["content"]
    assert user["role"] == "user"
    assert LEGACY.body.decode() in user["content"] and AGENT.body.decode() in user["content"]
    assert "HTTP 200" in user["content"] and "HTTP 201" in user["content"]


async def test_json_mode_can_be_turned_off(judge: FakeJudge) -> None:
    """For servers that reject response_format, json_mode=false leaves it out."""
    await comparator(judge, json_mode=False)(LEGACY, AGENT)
    ((_, sent),) = judge.requests
    assert "response_format" not in sent


async def test_bodies_sent_to_the_judge_are_cut_to_max_chars(judge: FakeJudge) -> None:
    """A huge answer is sent only up to max_chars, with a visible cut marker."""
    big = Sample(200, body=b"A" * 100_000)
    await comparator(judge, max_chars=50)(LEGACY, big)
    ((_, sent),) = judge.requests
    user = sent["messages"][1]["content"]
    assert "A" * 50 in user and "A" * 51 not in user
    assert "[... cut at 50 characters]" in user


async def test_the_api_key_comes_from_the_named_environment_variable(
    judge: FakeJudge, monkeypatch: pytest.MonkeyPatch
) -> None:
    """api_key_env names a variable; its value is sent as a bearer token, never shown."""
    monkeypatch.setenv("JUDGE_TEST_KEY", "sk-test-123")
    result = await comparator(judge, api_key_env="JUDGE_TEST_KEY")(LEGACY, AGENT)
    ((headers, _),) = judge.requests
    assert headers["Authorization"] == "Bearer sk-test-123"
    assert result.verdict is Verdict.MATCH


async def test_no_key_header_without_api_key_env(judge: FakeJudge) -> None:
    """Without api_key_env (a local judge) no Authorization header is sent."""
    await comparator(judge)(LEGACY, AGENT)
    ((headers, _),) = judge.requests
    assert "Authorization" not in headers


async def test_an_unset_key_variable_is_an_error_without_a_call(
    judge: FakeJudge, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A missing key is reported by the variable's name and the judge is not called."""
    monkeypatch.delenv("JUDGE_TEST_KEY", raising=False)
    result = await comparator(judge, api_key_env="JUDGE_TEST_KEY")(LEGACY, AGENT)
    assert result.verdict is Verdict.ERROR
    assert "JUDGE_TEST_KEY" in result.reason
    assert judge.requests == []


async def test_over_budget_calls_are_skipped_without_calling_the_judge(judge: FakeJudge) -> None:
    """Past max_calls_per_minute the comparator skips, saying the budget is spent."""
    judge_comparator = comparator(judge, max_calls_per_minute=2)
    results = [await judge_comparator(LEGACY, AGENT) for _ in range(4)]
    assert [r.verdict for r in results] == [Verdict.MATCH] * 2 + [Verdict.SKIPPED] * 2
    assert "judge budget spent (2 calls per minute)" in results[-1].reason
    assert len(judge.requests) == 2


async def test_each_comparator_instance_has_its_own_budget(judge: FakeJudge) -> None:
    """A reloaded config builds a new comparator, and with it a new budget."""
    for _ in range(2):
        assert (await comparator(judge, max_calls_per_minute=1)(LEGACY, AGENT)).verdict is (
            Verdict.MATCH
        )
    assert len(judge.requests) == 2


@pytest.mark.parametrize(
    ("legacy", "agent", "verdict"),
    [
        (Sample(200, body=b"same"), Sample(200, body=b"same"), Verdict.MATCH),
        (Sample(200, body=b""), Sample(200, body=b"  "), Verdict.SKIPPED),
    ],
)
async def test_answers_with_nothing_to_judge_cost_no_call(
    judge: FakeJudge, legacy: Sample, agent: Sample, verdict: Verdict
) -> None:
    """Identical answers match and two empty ones are skipped, without paying for a call."""
    result = await comparator(judge)(legacy, agent)
    assert result.verdict is verdict
    assert judge.requests == []


async def test_a_redirect_is_an_error_and_the_answers_are_not_posted_again(
    judge: FakeJudge,
) -> None:
    """Following it would send both answers (and the key) to a URL nobody configured."""
    judge.mode = "redirect"
    result = await comparator(judge)(LEGACY, AGENT)
    assert result.verdict is ERROR
    assert "307" in result.reason
    assert len(judge.requests) == 1


async def test_an_unreachable_judge_is_an_error_result() -> None:
    """A judge that refuses connections gives an error result naming the failure."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    url = f"http://127.0.0.1:{port}/v1/chat/completions"
    built = build("judge", {"url": url, "model": "m", "timeout": 5})
    result = await built(LEGACY, AGENT)
    assert result.verdict is Verdict.ERROR
    assert result.reason.startswith("judge call failed: ClientConnectorError")


async def test_judge_runs_with_other_comparators_under_acompare(judge: FakeJudge) -> None:
    """acompare awaits the judge beside synchronous comparators and folds its verdict in."""
    judge.content = MISMATCH_JSON
    comparison = await acompare([build("status", {}), comparator(judge)], LEGACY, AGENT)
    assert comparison.verdict is Verdict.MISMATCH
    assert comparison.reason == "judge: different amount"
    assert [r.comparator for r in comparison.results] == ["status", "judge"]


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"url": "ftp://x/v1", "model": "m"}, "judge: url: expected an http(s) URL"),
        ({"url": "http://x/v1", "model": ""}, "judge: model:"),
        ({**OK, "api_key_env": "sk-live-abc"}, "api_key_env: expected the NAME"),
        ({**OK, "timeout": 0}, "judge: timeout:"),
        ({**OK, "max_calls_per_minute": 0}, "max_calls_per_minute:"),
        ({"model": "m"}, "judge: url: Field required"),
    ],
)  # fmt: skip
def test_bad_options_fail_at_build_with_the_field_named(
    options: dict[str, Any], message: str
) -> None:
    """Config mistakes name the option; a pasted key is never echoed back."""
    with pytest.raises(ValueError, match="judge") as caught:
        build("judge", options)
    assert message in str(caught.value)
    assert "sk-live-abc" not in str(caught.value)


@pytest.mark.parametrize(
    ("content", "parsed"),
    [
        (MATCH_JSON, ("match", 0.9, "same refund")),
        ('  {"verdict": " Mismatch ", "score": 0, "reason": 5}  ', ("mismatch", 0, "")),
        ('```\n{"verdict": "match", "score": 1}\n```', ("match", 1, "")),
    ],
)
def test_parse_answer_reads_the_requested_json(content: str, parsed: tuple[Any, ...]) -> None:
    """The verdict is case- and space-insensitive; code fences around the object are tolerated."""
    assert parse_answer(content) == parsed


@settings(database=None, deadline=None, max_examples=300)
@given(
    st.text(max_size=80)
    | st.dictionaries(
        st.sampled_from(["verdict", "score", "reason"]),
        st.none() | st.booleans() | st.floats() | st.integers() | st.text(max_size=10),
    ).map(json.dumps)
)
def test_parse_answer_accepts_the_asked_shape_or_says_why_not(content: str) -> None:
    """Any text from a judge gives a valid (verdict, score, reason) or a JudgeFailed: no crash."""
    try:
        verdict, score, reason = parse_answer(content)
    except JudgeFailed as exc:
        assert str(exc).startswith("judge")
        return
    assert verdict in ("match", "mismatch")
    assert score is None or 0 <= score <= 1
    assert isinstance(reason, str) and len(reason) <= 300
