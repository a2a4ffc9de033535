"""Is the agent's answer good enough to serve, or should legacy answer instead?

Each trigger is configured per route. The checks run on the buffered answer
before its first byte goes out, so even a bad body falls back cleanly. The
order is cheapest first: the status, then the body size, then JSON, which is
parsed at most once and only when a JSON check is configured.

Paths compile when the :class:`FallbackPolicy` is built (it keeps them in a
private field), so a bad path fails at config load and :func:`check` never
parses a path per request.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any

import orjson

from comparators.paths import PathPattern, compile_path, get


class FallbackReason(StrEnum):
    ERROR = "error"
    TIMEOUT = "timeout"
    STATUS = "status"
    INVALID_JSON = "invalid_json"
    MISSING_FIELD = "missing_field"
    LOW_CONFIDENCE = "low_confidence"
    TOO_LARGE = "too_large"
    BREAKER_OPEN = "breaker_open"


Verdict = tuple[FallbackReason, str]
"""Why legacy serves instead: a reason (closed set, a metric label) and a human detail."""

_IDENTITY = frozenset({"", "identity"})
_DETAIL_LIMIT = 120


@dataclass(frozen=True, slots=True)
class FallbackPolicy:
    """Per-route triggers. ``on_error`` is read by the driver (transport errors never
    reach :func:`check`); ``confidence_path`` and ``min_confidence`` go together.
    Paths are concrete JSONPath-like patterns such as ``$.data.items[0].id``."""

    on_error: bool = True
    on_5xx: bool = True
    statuses: frozenset[int] = frozenset()
    expect_json: bool = False
    required_fields: tuple[str, ...] = ()
    confidence_path: str | None = None
    min_confidence: float | None = None
    _required: tuple[PathPattern, ...] = field(init=False, repr=False, compare=False)
    _confidence: PathPattern | None = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        if (self.confidence_path is None) != (self.min_confidence is None):
            raise ValueError("confidence_path and min_confidence must be set together")
        bad = sorted(s for s in self.statuses if not 100 <= s <= 599)
        if bad:
            raise ValueError(f"statuses must be HTTP statuses (100-599), got {bad}")
        # Frozen dataclass: the compiled paths are set once, here, and never change.
        required = tuple(compile_path(p, concrete=True) for p in self.required_fields)
        object.__setattr__(self, "_required", required)
        confidence = (
            compile_path(self.confidence_path, concrete=True)
            if self.confidence_path is not None
            else None
        )
        object.__setattr__(self, "_confidence", confidence)

    @property
    def checks_json(self) -> bool:
        """Whether the body must be parsed; drivers may skip buffering otherwise."""
        return self.expect_json or bool(self._required) or self._confidence is not None


def check(
    status: int, headers: Mapping[str, str], body: bytes | None, policy: FallbackPolicy
) -> Verdict | None:
    """None to serve the agent's answer; otherwise why legacy should serve it.

    ``body`` is None when the answer did not fit the buffer. An encoded body
    (Content-Encoding other than identity) cannot be inspected, so a configured
    JSON check falls back with INVALID_JSON rather than pass it unchecked.
    """
    if policy.on_5xx and 500 <= status <= 599:
        return FallbackReason.STATUS, f"status {status}"
    if status in policy.statuses:
        return FallbackReason.STATUS, f"status {status} is in the fallback list"
    if body is None:
        return FallbackReason.TOO_LARGE, "body larger than the buffer"
    if not policy.checks_json:
        return None
    encoding = _header(headers, "content-encoding")
    if encoding is not None and encoding.strip().lower() not in _IDENTITY:
        return FallbackReason.INVALID_JSON, f"body is {encoding}-encoded; cannot inspect it"
    try:
        doc = orjson.loads(body)
    except orjson.JSONDecodeError as exc:
        return FallbackReason.INVALID_JSON, _clip(f"invalid JSON: {exc}")
    return _missing(doc, policy) or _low_confidence(doc, policy)


def classify_failure(error_kind: str) -> FallbackReason:
    """The reason for a transport failure: ``timeout`` is TIMEOUT, anything else ERROR."""
    return FallbackReason.TIMEOUT if error_kind == "timeout" else FallbackReason.ERROR


def _missing(doc: Any, policy: FallbackPolicy) -> Verdict | None:
    """All missing fields at once, so one log line tells the whole story. JSON null
    counts as present: the agent answered the field, with nothing."""
    absent = [p.text for p in policy._required if not _has(doc, p)]
    if absent:
        return FallbackReason.MISSING_FIELD, _clip("missing " + ", ".join(absent))
    return None


def _low_confidence(doc: Any, policy: FallbackPolicy) -> Verdict | None:
    path, minimum = policy._confidence, policy.min_confidence
    if path is None or minimum is None:
        return None
    try:
        value = get(doc, path)
    except KeyError:
        return FallbackReason.LOW_CONFIDENCE, f"confidence missing at {path.text}"
    if type(value) not in (int, float):  # bool is an int subclass, but not a number here
        kind = "null" if value is None else type(value).__name__
        return FallbackReason.LOW_CONFIDENCE, f"confidence at {path.text} is not a number ({kind})"
    if value < minimum:
        return FallbackReason.LOW_CONFIDENCE, f"confidence {value} below {minimum}"
    return None


def _has(doc: Any, path: PathPattern) -> bool:
    try:
        get(doc, path)
    except KeyError:
        return False
    return True


def _header(headers: Mapping[str, str], name: str) -> str | None:
    """Case-insensitive lookup for any Mapping (CIMultiDict answers the fast path)."""
    value = headers.get(name)
    if value is not None:
        return value
    for key, found in headers.items():
        if key.lower() == name:
            return found
    return None


def _clip(text: str) -> str:
    return text if len(text) <= _DETAIL_LIMIT else text[: _DETAIL_LIMIT - 1] + "…"
