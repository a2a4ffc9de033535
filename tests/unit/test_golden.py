"""Recorded cases: the JSONL schema round-trips, bodies keep their meaning,
secrets never reach a line, and bad lines are reported by number."""

from __future__ import annotations

import gzip
import zlib
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import orjson
import pytest

from comparators import Comparison, Difference, DiffKind, Verdict
from comparators.types import ToolCall, ToolOutcome
from proxy.caseredaction import redacted
from proxy.golden import (
    NOT_CAPTURED,
    Answer,
    Body,
    Case,
    CaseError,
    Compared,
    Label,
    LabelVerdict,
    Request,
    body_bytes,
    encode_body,
    read_cases,
    write_cases,
)
from proxy.redaction import MASK, Redactor
from proxy.types import Observation

NOW = 1795341600.1234  # 2026-11-22T10:00:00.123Z
TRACE = "0af7651916cd43dd8448eb211c80319c"


@dataclass(frozen=True)
class Exchange:  # the fields of proxy.evidence.Exchange a case needs
    route: str = "orders"
    request_id: str = "req-1"
    trace_id: str | None = TRACE
    method: str = "POST"
    raw_path: str = "/v1/orders?page=2"
    served_by: str = "legacy"


def full_case(body: Body | None = None) -> Case:
    """A case with every field set, so a round trip touches all of them."""
    answer = Answer(200, {"content-type": "application/json"}, body, 12.5)
    return Case(
        id="c-0123456789abcdef",
        time="2026-11-22T10:00:00.123Z",
        route="orders",
        request=Request("POST", "/v1/orders?page=2", {"accept": "*/*"}, body),
        legacy=answer,
        agent=replace(answer, status=502, error="connect: refused", body=None),
        comparison=Compared(
            Verdict.MISMATCH,
            0.25,
            "json differs",
            (
                Difference("$.items[0].qty", DiffKind.CHANGED, 1, 2),
                Difference("$.x", DiffKind.EXTRA),
            ),
            Verdict.MISMATCH,
        ),
        trace_id=TRACE,
        request_id="req-1",
        served_by="agent",
        usage={"input_tokens": 10, "output_tokens": 3, "model": "gpt-x"},
        tool_calls=(
            ToolCall("lookup", {"id": 7}, True, ToolOutcome.OK),
            ToolCall("refund", "{not json", False, ToolOutcome.INVALID_ARGUMENTS),
        ),
        expected=Answer(200, {}, Body("json", {"ok": True})),
        label=Label(LabelVerdict.AGENT, "agent is right", "2026-11-23T08:00:00.000Z"),
    )


@pytest.mark.parametrize(
    "body",
    [
        None,
        Body("json", {"a": [1, 2.5, None, True], "b": {"c": "é"}}),
        Body("json", [1, 2]),
        Body("json", None),  # a body that is literally `null`, unlike no body
        Body("json", "just a string"),
        Body("text", "plain text\nwith lines"),
        Body("omitted", "binary (image/png, 6 bytes): it cannot be redacted"),
    ],
)
def test_a_case_reads_back_equal_to_what_was_written(body: Body | None) -> None:
    case = full_case(body)
    line = case.to_line()
    assert line.endswith(b"\n") and line.count(b"\n") == 1
    assert Case.from_line(line) == case


def test_a_line_has_the_contract_fields_in_order() -> None:
    data = orjson.loads(full_case(Body("text", "x")).to_line())
    assert list(data) == [
        "id", "time", "trace_id", "request_id", "route", "served_by", "request", "legacy",
        "agent", "comparison", "usage", "tool_calls", "expected", "label",
    ]  # fmt: skip
    assert data["request"]["body"] == {"text": "x"}
    assert data["expected"] == {"status": 200, "headers": {}, "body": {"json": {"ok": True}}}
    assert data["comparison"]["differences"][0] == {
        "path": "$.items[0].qty",
        "kind": "changed",
        "legacy": 1,
        "agent": 2,
    }


J = {"content-type": "application/json"}


@pytest.mark.parametrize(
    ("data", "headers", "expected"),
    [
        (b'{"a": 1}', J, Body("json", {"a": 1})),
        (b"[1, 2]", {}, Body("json", [1, 2])),  # no content type, looks like JSON
        (b"hello", {"content-type": "text/plain; charset=utf-8"}, Body("text", "hello")),
        (b"{broken", J, Body("text", "{broken")),  # a broken JSON answer is evidence too
        (
            b"a=1&b=2",
            {"content-type": "application/x-www-form-urlencoded"},
            Body("text", "a=1&b=2"),
        ),
        (b"data: {}\n\n", {"content-type": "text/event-stream"}, Body("text", "data: {}\n\n")),
        (b"", J, None),
        (None, J, Body("omitted", NOT_CAPTURED)),
        (gzip.compress(b'{"z": 2}'), {**J, "content-encoding": "gzip"}, Body("json", {"z": 2})),
        (zlib.compress(b"abc"), {"content-encoding": "deflate"}, Body("text", "abc")),
    ],
)
def test_a_body_is_kept_as_what_it_means(
    data: bytes | None, headers: dict[str, str], expected: Body | None
) -> None:
    assert encode_body(data, headers) == expected


@pytest.mark.parametrize(
    ("data", "headers", "reason"),
    [
        (b"\x89PNG\x00\x01", {"content-type": "image/png"}, "binary (image/png, 6 bytes)"),
        (b"\xff\xfe bad", {"content-type": "text/plain"}, "binary (text/plain"),
        (b"a\x00b", {}, "binary (no content type"),
        (b"x" * 101, {}, "101 bytes, above the recording limit of 100"),
        (b"...", {"content-encoding": "br"}, "br-encoded"),
        (gzip.compress(b"{}")[:-6], {"content-encoding": "gzip"}, "truncated"),
        (b"\x1f\x8b junk", {"content-encoding": "gzip"}, "not valid gzip"),
        (gzip.compress(b"0" * 10_000), {"content-encoding": "gzip"}, "inflates past"),
    ],
)
def test_a_body_that_cannot_be_kept_safely_is_omitted_with_the_reason(
    data: bytes, headers: dict[str, str], reason: str
) -> None:
    body = encode_body(data, headers, limit=100)
    assert body is not None and body.kind == "omitted"
    assert reason in body.value


def test_a_case_built_from_the_evidence_path_stores_decoded_bodies_and_the_trace() -> None:
    legacy = Observation(
        "legacy",
        200,
        {"Content-Type": "application/json", "Content-Encoding": "gzip", "Content-Length": "40"},
        gzip.compress(b'{"total": 3}'),
        0.0125,
    )
    agent = Observation("agent", 200, {"content-encoding": "br"}, b"\x00\x01", 0.02)
    case = Case.of(
        Exchange(served_by="agent"),
        {"Accept": "a", "accept": "b", "Content-Length": "2"},
        b"{}",
        legacy,
        agent,
        Comparison(Verdict.SKIPPED, 0.0, reason="agent body is br-encoded"),
        now=NOW,
    )
    assert case.time == "2026-11-22T10:00:00.123Z"
    assert case.id.startswith("c-") and len(case.id) == 18
    assert (case.trace_id, case.request_id, case.served_by) == (TRACE, "req-1", "agent")
    assert case.request == Request(
        "POST", "/v1/orders?page=2", {"accept": "a, b"}, Body("json", {})
    )
    assert case.legacy == Answer(
        200, {"content-type": "application/json"}, Body("json", {"total": 3}), 12.5
    )
    # kept as sent: the reason it was omitted still shows in the headers
    assert case.agent.headers == {"content-encoding": "br"}
    assert case.agent.body == Body("omitted", "body is br-encoded")


def test_an_agent_that_never_answered_is_recorded_as_its_error_without_a_body() -> None:
    failed = Observation("agent", 0, {}, b"", 1.5, "timeout: no answer in 1.5s")
    case = Case.of(
        Exchange(trace_id=None),
        {},
        None,
        Observation("legacy", 204, {}, b""),
        failed,
        Comparison.error("agent failed"),
        now=NOW,
        trace_id="1" * 32,
        raw_verdict=Verdict.MISMATCH,
    )
    assert case.agent == Answer(0, {}, None, 1500.0, "timeout: no answer in 1.5s")
    assert case.request.body == Body("omitted", NOT_CAPTURED)
    assert case.trace_id == "1" * 32
    assert case.comparison.raw_verdict is Verdict.MISMATCH


@pytest.mark.parametrize(
    ("label", "expected", "reference"),
    [
        (None, None, "legacy"),
        (LabelVerdict.LEGACY, None, "legacy"),
        (LabelVerdict.AGENT, None, "agent"),
        (LabelVerdict.EXCLUDE, None, None),
        (LabelVerdict.EXCLUDE, Answer(201, {}, None), "expected"),  # expected wins
    ],
)
def test_the_reference_answer_follows_expected_then_the_label(
    label: LabelVerdict | None, expected: Answer | None, reference: str | None
) -> None:
    case = replace(full_case(), label=None if label is None else Label(label), expected=expected)
    answers = {"legacy": case.legacy, "agent": case.agent, "expected": expected, None: None}
    assert case.reference() is answers[reference]


def test_an_answer_gives_the_comparators_its_bytes_unless_omitted() -> None:
    answer = Answer(200, {"content-type": "application/json"}, Body("json", {"a": 1}))
    sample = answer.sample()
    assert sample is not None and orjson.loads(sample.body) == {"a": 1}
    assert Answer(204, {}, None).sample().body == b""  # type: ignore[union-attr]
    assert Answer(200, {}, Body("omitted", "binary")).sample() is None


SECRET = "s3cr3t-Value-42"
R = Redactor(fields=["pin"])


def place(where: str) -> Case:
    """A case carrying SECRET in one place a case can hold a value."""
    case = full_case(Body("json", {"ok": 1}))
    request, comparison = case.request, case.comparison
    placed = {
        "header": lambda: replace(
            case, request=replace(request, headers={"authorization": SECRET})
        ),
        "custom header": lambda: replace(
            case, request=replace(request, headers={"x-session-token": SECRET})
        ),
        "json field": lambda: replace(
            case, request=replace(request, body=Body("json", {"user": [{"password": SECRET}]}))
        ),
        "configured field": lambda: replace(
            case, legacy=replace(case.legacy, body=Body("json", {"pin": SECRET}))
        ),
        "query string": lambda: replace(
            case, request=replace(request, path=f"/v1/x?api_key={SECRET}&page=2")
        ),
        "body text": lambda: replace(
            case, agent=replace(case.agent, body=Body("text", f"Authorization: Bearer {SECRET}"))
        ),
        "difference value": lambda: replace(
            case,
            comparison=replace(
                comparison,
                differences=(Difference("$.auth.token", DiffKind.CHANGED, SECRET, "x"),),
            ),
        ),
        "reason": lambda: replace(
            case, comparison=replace(comparison, reason=f"legacy said token={SECRET}")
        ),
        "error": lambda: replace(
            case, agent=replace(case.agent, error=f"upstream said api_key={SECRET}")
        ),
        "tool arguments": lambda: replace(
            case, tool_calls=(ToolCall("login", {"password": SECRET}),)
        ),
        "expected": lambda: replace(case, expected=Answer(200, {"cookie": SECRET}, None)),
        "label note": lambda: replace(case, label=Label(LabelVerdict.LEGACY, f"secret={SECRET}")),
        "usage": lambda: replace(case, usage={"api_key": SECRET}),
    }
    return placed[where]()


@pytest.mark.parametrize(
    "where",
    [
        "header",
        "custom header",
        "json field",
        "configured field",
        "query string",
        "body text",
        "difference value",
        "reason",
        "error",
        "tool arguments",
        "expected",
        "label note",
        "usage",
    ],
)
def test_a_secret_never_reaches_the_recorded_line(where: str) -> None:
    case = place(where)
    assert SECRET.encode() in case.to_line()  # the test puts it somewhere real
    line = redacted(case, R).to_line()
    assert SECRET.encode() not in line
    assert MASK.encode() in line
    assert Case.from_line(line).id == case.id  # still a valid case


@pytest.mark.parametrize(
    ("value", "masked"),
    [
        ("mail joe.doe@example.com now", "mail [REDACTED] now"),
        ("card 4111 1111 1111 1111", "card [REDACTED]"),
        ("key sk-proj-abcdefghijklmnop1234", "key [REDACTED]"),
        (4111111111111111, MASK),  # a card number sent as a JSON number
        (1234567890123456, 1234567890123456),  # not Luhn-valid: an id, kept
        ({"joe@example.com": 1}, {MASK: 1}),  # keys are text too
        ({"max_tokens": 5, "qty": 2.5, "ok": True, "n": None}, None),  # evidence survives
    ],
)
def test_patterns_are_masked_wherever_a_json_body_holds_them(value: Any, masked: Any) -> None:
    case = full_case(Body("json", {"v": value}))
    body = redacted(case, R).request.body
    assert body == Body("json", {"v": value if masked is None else masked})


def test_a_difference_keeps_where_and_what_kind_when_its_values_are_masked() -> None:
    diff = Difference("$.user.newPassword", DiffKind.CHANGED, "a", "b")
    case = replace(full_case(), comparison=Compared(Verdict.MISMATCH, 0.0, differences=(diff,)))
    (clean,) = redacted(case, R).comparison.differences
    assert clean == Difference("$.user.newPassword", DiffKind.CHANGED, MASK, MASK)


GOOD = full_case(Body("text", "x")).to_line().decode()


@pytest.mark.parametrize(
    ("line", "problem"),
    [
        ("{not json", "not JSON"),
        ("[1, 2]", "case: expected an object, got a list"),
        ('{"id": "c-1"}', "case: missing field 'time'"),
        (GOOD.replace('"route"', '"rout"'), "case: unknown field 'rout'"),
        (GOOD.replace('"status":200', '"status":"200"', 1), "legacy.status: expected an integer"),
        (
            GOOD.replace('"verdict":"mismatch"', '"verdict":"maybe"'),
            "comparison.verdict: expected one of",
        ),
        (GOOD.replace('"kind":"changed"', '"kind":"moved"'), "comparison.differences[0].kind"),
        (
            GOOD.replace('{"text":"x"}', '{"binary":"eA=="}', 1),
            "request.body: expected null or one of",
        ),
        (GOOD.replace('"accept":"*/*"', '"accept":1'), "request.headers.accept: expected a string"),
        (GOOD.replace("2026-11-22T10", "yesterday"), "time: not an ISO 8601 time"),
        (GOOD.replace('"served_by":"agent"', '"served_by":"both"'), "served_by: expected"),
        (
            GOOD.replace('"valid":true', '"valid":"yes"'),
            "tool_calls[0].valid: expected true or false",
        ),
        (GOOD.replace('"verdict":"agent"', '"verdict":"maybe"'), "label.verdict: expected one of"),
    ],
)
def test_a_bad_line_is_an_error_naming_its_number_and_the_field(line: str, problem: str) -> None:
    with pytest.raises(CaseError) as caught:
        Case.from_line(line, 7)
    assert str(caught.value).startswith("7: ")
    assert problem in caught.value.problem
    assert caught.value.line == 7


def test_reading_a_file_keeps_the_good_cases_and_lists_each_bad_line(tmp_path: Path) -> None:
    path = tmp_path / "cases.jsonl"
    second = replace(full_case(), id="c-2")
    cut = second.to_line()[:50]  # the last line of a file cut by a crash
    path.write_bytes(GOOD.encode() + b"garbage\n\n" + second.to_line() + b"[]\n" + cut)
    problems: list[CaseError] = []
    cases = list(read_cases(path, problems))
    assert [c.id for c in cases] == ["c-0123456789abcdef", "c-2"]
    assert [(p.line, p.path) for p in problems] == [(2, str(path)), (5, str(path)), (6, str(path))]
    assert str(problems[0]).startswith(f"{path}:2: not JSON")


def test_reading_without_a_problem_list_stops_at_the_first_bad_line(tmp_path: Path) -> None:
    path = tmp_path / "cases.jsonl"
    path.write_bytes(GOOD.encode() + b"{}\n" + GOOD.encode())
    seen: list[str] = []
    with pytest.raises(CaseError, match=r"cases.jsonl:2: case: missing field 'id'"):
        seen.extend(c.id for c in read_cases(path))
    assert seen == ["c-0123456789abcdef"]  # the good case before it was not lost


def test_writing_cases_replaces_the_file_and_leaves_no_temporary(tmp_path: Path) -> None:
    path = tmp_path / "golden.jsonl"
    path.write_bytes(b"old\n")
    labelled = replace(full_case(), label=Label(LabelVerdict.EXCLUDE, "flaky"))
    assert write_cases(path, [labelled, full_case()]) == 2
    assert list(read_cases(path)) == [labelled, full_case()]
    assert [p.name for p in tmp_path.iterdir()] == ["golden.jsonl"]


@pytest.mark.parametrize(
    ("body", "content"),
    [
        (None, b""),
        (Body("json", {"a": "é"}), '{"a":"é"}'.encode()),
        (Body("text", "hi"), b"hi"),
        (Body("omitted", "binary"), None),
    ],
)
def test_body_bytes_are_what_replay_sends_and_none_when_omitted(
    body: Body | None, content: bytes | None
) -> None:
    assert body_bytes(body) == content
