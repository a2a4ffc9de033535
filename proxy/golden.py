"""A recorded case: one request, both answers and how they compared, as one
JSON line (JSONL) — the unit of a golden suite built from production traffic.

The recorder writes cases (redacted first: :func:`redacted`), replay scores
them again, label attaches a human verdict. The schema (issue 5, section 5):
``id, time, trace_id, request_id, route, served_by, request, legacy, agent,
comparison, usage, tool_calls, expected, label``.

A body is stored as what it *means*, never as raw bytes, so that it can be
redacted: ``{"json": value}``, ``{"text": str}``, ``{"omitted": reason}``
(binary, too large, undecodable, not captured) or ``null`` (no body at all).
gzip/deflate bodies are stored inflated, so the recorded headers drop
``content-encoding`` and ``content-length``: they described the wire bytes.

Parsing is strict — an unknown field or a wrong type is a :class:`CaseError`
naming the line and the field — because a golden set that silently loses or
misreads cases scores the wrong thing.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from enum import StrEnum
from pathlib import Path
from typing import Any, Literal, Protocol

import orjson

from comparators import Comparison, Difference, DiffKind, Sample, Verdict
from comparators.types import ToolCall, ToolOutcome
from proxy.casebody import (
    DEFAULT_MAX_BODY,
    NOT_CAPTURED,
    Body,
    body_bytes,
    encode_body,
    inflate,
    plain_headers,
    recorded_parts,
)
from proxy.casejson import (
    CaseError,
    json_enum,
    json_headers,
    json_int,
    json_kind,
    json_list,
    json_number,
    json_object,
    json_str,
)
from proxy.types import Observation
from proxy.usage import tool_call_json

__all__ = [  # the body helpers live in proxy/casebody.py; re-exported for callers
    "DEFAULT_MAX_BODY",
    "NOT_CAPTURED",
    "Answer",
    "Body",
    "Case",
    "CaseError",
    "Compared",
    "Label",
    "LabelVerdict",
    "Request",
    "body_bytes",
    "case_time",
    "encode_body",
    "inflate",
    "plain_headers",
    "read_cases",
    "write_cases",
]


class LabelVerdict(StrEnum):
    LEGACY = "legacy"  # legacy's answer is right (the default expectation)
    AGENT = "agent"  # the agent's recorded answer is the expected one
    EXCLUDE = "exclude"  # leave the case out of scoring


@dataclass(frozen=True, slots=True)
class Request:
    method: str
    path: str  # path and query string, as the client sent them
    headers: Mapping[str, str]
    body: Body | None

    def to_json(self) -> dict[str, Any]:
        body = self.body.to_json() if self.body else None
        return {
            "method": self.method,
            "path": self.path,
            "headers": dict(self.headers),
            "body": body,
        }

    @classmethod
    def from_json(cls, data: Any, where: str) -> Request:
        d = json_object(data, where, ("method", "path", "headers", "body"), ("method", "path"))
        return cls(
            json_str(d["method"], f"{where}.method"),
            json_str(d["path"], f"{where}.path"),
            json_headers(d.get("headers", {}), f"{where}.headers"),
            Body.from_json(d.get("body"), f"{where}.body"),
        )


@dataclass(frozen=True, slots=True)
class Answer:
    """One backend's recorded answer (or a human-approved expected one, which
    has no latency or error)."""

    status: int
    headers: Mapping[str, str]
    body: Body | None
    latency_ms: float = 0.0
    error: str | None = None

    @classmethod
    def of(cls, observation: Observation, limit: int = DEFAULT_MAX_BODY) -> Answer:
        headers, body = recorded_parts(observation.headers, observation.body, limit)
        if observation.error is not None and not observation.status:
            body = None  # no answer at all: nothing was captured
        latency = round(observation.latency * 1000, 3)
        return cls(observation.status, headers, body, latency, observation.error)

    def sample(self) -> Sample | None:
        """For the comparators; ``None`` when the body was omitted (nothing to compare)."""
        content = body_bytes(self.body)
        return None if content is None else Sample(self.status, dict(self.headers), content)

    def to_json(self, expected: bool = False) -> dict[str, Any]:
        data: dict[str, Any] = {
            "status": self.status,
            "headers": dict(self.headers),
            "body": self.body.to_json() if self.body else None,
        }
        return data if expected else {**data, "latency_ms": self.latency_ms, "error": self.error}

    @classmethod
    def from_json(cls, data: Any, where: str, expected: bool = False) -> Answer:
        keys = ("status", "headers", "body") if expected else _ANSWER_KEYS
        d = json_object(data, where, keys, ("status",))
        error = d.get("error")
        return cls(
            json_int(d["status"], f"{where}.status"),
            json_headers(d.get("headers", {}), f"{where}.headers"),
            Body.from_json(d.get("body"), f"{where}.body"),
            json_number(d.get("latency_ms", 0.0), f"{where}.latency_ms"),
            None if error is None else json_str(error, f"{where}.error"),
        )


_ANSWER_KEYS = ("status", "headers", "body", "latency_ms", "error")


@dataclass(frozen=True, slots=True)
class Compared:
    """The comparison as recorded; ``raw_verdict`` is the one before noise
    fields were discounted (``None`` when no noise adjustment ran)."""

    verdict: Verdict
    score: float
    reason: str = ""
    differences: tuple[Difference, ...] = ()
    raw_verdict: Verdict | None = None

    @classmethod
    def of(cls, comparison: Comparison, raw_verdict: Verdict | None = None) -> Compared:
        c = comparison
        return cls(c.verdict, c.score, c.reason, c.differences, raw_verdict)

    def to_json(self) -> dict[str, Any]:
        return {
            "verdict": self.verdict.value,
            "score": self.score,
            "reason": self.reason,
            "differences": [
                {"path": d.path, "kind": d.kind.value, "legacy": d.legacy, "agent": d.agent}
                for d in self.differences
            ],
            "raw_verdict": self.raw_verdict.value if self.raw_verdict else None,
        }

    @classmethod
    def from_json(cls, data: Any, where: str) -> Compared:
        keys = ("verdict", "score", "reason", "differences", "raw_verdict")
        d = json_object(data, where, keys, ("verdict",))
        differences = []
        for i, item in enumerate(json_list(d.get("differences", []), f"{where}.differences")):
            at = f"{where}.differences[{i}]"
            diff = json_object(item, at, ("path", "kind", "legacy", "agent"), ("path", "kind"))
            kind = json_enum(DiffKind, diff["kind"], f"{at}.kind")
            differences.append(
                Difference(
                    json_str(diff["path"], f"{at}.path"),
                    kind,
                    diff.get("legacy"),
                    diff.get("agent"),
                )
            )
        raw = d.get("raw_verdict")
        return cls(
            json_enum(Verdict, d["verdict"], f"{where}.verdict"),
            json_number(d.get("score", 0.0), f"{where}.score"),
            json_str(d.get("reason", ""), f"{where}.reason"),
            tuple(differences),
            None if raw is None else json_enum(Verdict, raw, f"{where}.raw_verdict"),
        )


@dataclass(frozen=True, slots=True)
class Label:
    """A human's verdict on a case (``shadow-proxy label``)."""

    verdict: LabelVerdict
    note: str = ""
    time: str = ""

    def to_json(self) -> dict[str, Any]:
        return {"verdict": self.verdict.value, "note": self.note, "time": self.time}

    @classmethod
    def from_json(cls, data: Any, where: str) -> Label:
        d = json_object(data, where, ("verdict", "note", "time"), ("verdict",))
        verdict = json_enum(LabelVerdict, d["verdict"], f"{where}.verdict")
        return cls(
            verdict,
            json_str(d.get("note", ""), f"{where}.note"),
            json_str(d.get("time", ""), f"{where}.time"),
        )


class ExchangeLike(Protocol):
    """What a case needs to know about its request (proxy.evidence.Exchange has it)."""

    @property
    def route(self) -> str: ...
    @property
    def request_id(self) -> str: ...
    @property
    def trace_id(self) -> str | None: ...
    @property
    def method(self) -> str: ...
    @property
    def raw_path(self) -> str: ...
    @property
    def served_by(self) -> str: ...


def case_time(now: float) -> str:
    """UTC with milliseconds: ``2026-11-22T10:00:00.123Z`` (sorts as text)."""
    return (
        datetime.fromtimestamp(now, UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")
    )


@dataclass(frozen=True, slots=True)
class Case:
    id: str
    time: str
    route: str
    request: Request
    legacy: Answer
    agent: Answer
    comparison: Compared
    trace_id: str | None = None
    request_id: str = ""
    served_by: Literal["legacy", "agent"] = "legacy"
    usage: Mapping[str, Any] | None = None
    tool_calls: tuple[ToolCall, ...] = ()
    expected: Answer | None = None  # human-approved: wins over legacy and agent
    label: Label | None = None

    @classmethod
    def of(
        cls,
        exchange: ExchangeLike,
        request_headers: Mapping[str, str],
        request_body: bytes | None,
        legacy: Observation,
        agent: Observation,
        comparison: Comparison,
        *,
        now: float,
        raw_verdict: Verdict | None = None,
        usage: Mapping[str, Any] | None = None,
        tool_calls: Sequence[ToolCall] = (),
        trace_id: str | None = None,
        max_body_size: int = DEFAULT_MAX_BODY,
        case_id: str | None = None,
    ) -> Case:
        """A case from what the evidence path holds (bodies raw, possibly
        gzip/deflate, or ``None`` when not captured). Not yet redacted: the
        recorder does that off the event loop. ``now`` is ``time.time()``;
        ``trace_id`` defaults to ``exchange.trace_id``."""
        headers, body = recorded_parts(request_headers, request_body, max_body_size)
        return cls(
            id=case_id or f"c-{os.urandom(8).hex()}",
            time=case_time(now),
            route=exchange.route,
            request=Request(exchange.method, exchange.raw_path, headers, body),
            legacy=Answer.of(legacy, max_body_size),
            agent=Answer.of(agent, max_body_size),
            comparison=Compared.of(comparison, raw_verdict),
            trace_id=trace_id or exchange.trace_id,
            request_id=exchange.request_id,
            served_by="agent" if exchange.served_by == "agent" else "legacy",
            usage=usage,
            tool_calls=tuple(tool_calls),
        )

    def reference(self) -> Answer | None:
        """The answer the agent should give: ``expected`` if a human set one,
        else the one the label names (legacy by default); ``None`` when excluded."""
        if self.expected is not None:
            return self.expected
        if self.label is None or self.label.verdict is LabelVerdict.LEGACY:
            return self.legacy
        return self.agent if self.label.verdict is LabelVerdict.AGENT else None

    def to_json(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "time": self.time,
            "trace_id": self.trace_id,
            "request_id": self.request_id,
            "route": self.route,
            "served_by": self.served_by,
            "request": self.request.to_json(),
            "legacy": self.legacy.to_json(),
            "agent": self.agent.to_json(),
            "comparison": self.comparison.to_json(),
            "usage": None if self.usage is None else dict(self.usage),
            "tool_calls": [tool_call_json(t) for t in self.tool_calls],
            "expected": None if self.expected is None else self.expected.to_json(expected=True),
            "label": None if self.label is None else self.label.to_json(),
        }

    def to_line(self) -> bytes:
        """One JSON line, newline included. Values JSON cannot hold become text."""
        return orjson.dumps(
            self.to_json(), default=str, option=orjson.OPT_APPEND_NEWLINE | orjson.OPT_NON_STR_KEYS
        )

    @classmethod
    def from_line(cls, line: bytes | str, number: int | None = None) -> Case:
        try:
            data = orjson.loads(line)
        except orjson.JSONDecodeError as exc:
            raise CaseError(f"not JSON ({exc})", number) from None
        try:
            return cls.from_json(data)
        except CaseError as exc:
            raise CaseError(exc.problem, number) from None

    @classmethod
    def from_json(cls, data: Any) -> Case:
        d = json_object(data, "case", _CASE_KEYS, _REQUIRED)
        usage, served_by, trace = d.get("usage"), d.get("served_by", "legacy"), d.get("trace_id")
        if served_by not in ("legacy", "agent"):
            raise CaseError(f"served_by: expected 'legacy' or 'agent', got {served_by!r}")
        time = json_str(d["time"], "time")
        try:
            datetime.fromisoformat(time)
        except ValueError:
            raise CaseError(f"time: not an ISO 8601 time: {time!r}") from None
        expected, label = d.get("expected"), d.get("label")
        return cls(
            id=json_str(d["id"], "id"),
            time=time,
            route=json_str(d["route"], "route"),
            request=Request.from_json(d["request"], "request"),
            legacy=Answer.from_json(d["legacy"], "legacy"),
            agent=Answer.from_json(d["agent"], "agent"),
            comparison=Compared.from_json(d["comparison"], "comparison"),
            trace_id=None if trace is None else json_str(trace, "trace_id"),
            request_id=json_str(d.get("request_id", ""), "request_id"),
            served_by=served_by,
            usage=None if usage is None else json_object(usage, "usage", None, ()),
            tool_calls=tuple(
                _tool(t, f"tool_calls[{i}]")
                for i, t in enumerate(json_list(d.get("tool_calls", []), "tool_calls"))
            ),
            expected=None
            if expected is None
            else Answer.from_json(expected, "expected", expected=True),
            label=None if label is None else Label.from_json(label, "label"),
        )


_CASE_KEYS = (
    "id", "time", "trace_id", "request_id", "route", "served_by", "request", "legacy", "agent",
    "comparison", "usage", "tool_calls", "expected", "label",
)  # fmt: skip
_REQUIRED = ("id", "time", "route", "request", "legacy", "agent", "comparison")


def _tool(data: Any, where: str) -> ToolCall:
    d = json_object(data, where, ("name", "arguments", "valid", "outcome"), ("name",))
    valid, outcome = d.get("valid", True), d.get("outcome")
    if not isinstance(valid, bool):
        raise CaseError(f"{where}.valid: expected true or false, got {json_kind(valid)}")
    return ToolCall(
        json_str(d["name"], f"{where}.name"),
        d.get("arguments"),
        valid,
        None if outcome is None else json_enum(ToolOutcome, outcome, f"{where}.outcome"),
    )


def read_cases(path: str | Path, problems: list[CaseError] | None = None) -> Iterator[Case]:
    """The cases in a JSONL file, in order; blank lines are skipped.

    A bad line (garbage, a line cut by a crash, a wrong field) never costs the
    good ones: with a ``problems`` list it is appended there (with its line
    number) and skipped; without one it raises :class:`CaseError` when reached,
    after the good lines before it were yielded.
    """
    with open(path, "rb") as file:
        for number, line in enumerate(file, 1):
            if not line.strip():
                continue
            try:
                yield Case.from_line(line, number)
            except CaseError as exc:
                error = CaseError(exc.problem, number, str(path))
                if problems is None:
                    raise error from None
                problems.append(error)


def write_cases(path: str | Path, cases: Iterable[Case]) -> int:
    """Write (replace) a JSONL file atomically: readers see the old or the new
    file, never half of one. Returns the number of cases written."""
    target = Path(path)
    temporary = target.with_name(f".{target.name}.{os.getpid()}.tmp")
    count = 0
    try:
        with open(temporary, "wb") as file:
            for case in cases:
                file.write(case.to_line())
                count += 1
            file.flush()
            os.fsync(file.fileno())
        os.replace(temporary, target)
    finally:
        temporary.unlink(missing_ok=True)
    return count
