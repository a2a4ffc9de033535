"""The whole comparator contract: what a comparator sees and what it returns.

A comparator is any callable with a ``name`` that takes the legacy and the
agent :class:`Sample` and returns a :class:`Result`. Results are immutable
data; a comparator that raises is turned into an ``error`` result by
:func:`comparators.compare`, never into an exception for the caller.
"""

from __future__ import annotations

from collections.abc import Awaitable, Mapping
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any, ClassVar, Protocol, runtime_checkable


class Verdict(StrEnum):
    MATCH = "match"
    MISMATCH = "mismatch"
    ERROR = "error"
    SKIPPED = "skipped"


class DiffKind(StrEnum):
    CHANGED = "changed"  # same type, different value
    MISSING = "missing"  # present in legacy, absent in agent
    EXTRA = "extra"  # absent in legacy, present in agent
    TYPE = "type"  # different JSON types (or unparsable agent body)


class ToolOutcome(StrEnum):
    OK = "ok"
    ERROR = "error"
    INVALID_ARGUMENTS = "invalid_arguments"


@dataclass(frozen=True, slots=True)
class ToolCall:
    """One tool call an answer made (or, for legacy, the action it reports).

    ``arguments`` is the parsed JSON when ``valid``; otherwise the raw text.
    ``outcome`` is set only when the answer says how the call went.
    """

    name: str
    arguments: Any = None
    valid: bool = True
    outcome: ToolOutcome | None = None


@dataclass(frozen=True, slots=True)
class Sample:
    """One side of an exchange, as captured by the proxy.

    ``headers`` keys are lower-case; ``body`` is the full captured body.
    ``tool_calls`` are the calls the proxy read from the body (its agent
    format parser); ``alternatives`` are further answers to the same request
    (more samples from the agent), for comparators that vote.
    """

    status: int
    headers: Mapping[str, str] = field(default_factory=dict)
    body: bytes = b""
    tool_calls: tuple[ToolCall, ...] = ()
    alternatives: tuple[Sample, ...] = ()


@dataclass(frozen=True, slots=True)
class Difference:
    """One field-level difference. ``path`` is JSONPath-like (``$.a[0].b``)."""

    path: str
    kind: DiffKind
    legacy: Any = None
    agent: Any = None


@dataclass(frozen=True, slots=True)
class Result:
    """What one comparator concluded."""

    comparator: str
    verdict: Verdict
    score: float
    differences: tuple[Difference, ...] = ()
    reason: str = ""


@dataclass(frozen=True, slots=True)
class Comparison:
    """The combined verdict of a route's comparators for one request."""

    verdict: Verdict
    score: float
    differences: tuple[Difference, ...] = ()
    results: tuple[Result, ...] = ()
    reason: str = ""

    @classmethod
    def skipped(cls, reason: str) -> Comparison:
        return cls(Verdict.SKIPPED, 0.0, reason=reason)

    @classmethod
    def error(cls, reason: str) -> Comparison:
        return cls(Verdict.ERROR, 0.0, reason=reason)


@runtime_checkable
class Comparator(Protocol):
    name: ClassVar[str]

    def __call__(self, legacy: Sample, agent: Sample) -> Result: ...


@runtime_checkable
class AsyncComparator(Protocol):
    """A comparator that waits on something (a model on a worker thread, an
    LLM judge over HTTP). It is registered like any other; ``acompare`` awaits
    it with the rest, ``compare`` (synchronous) skips it with a reason.
    ``agent_samples`` > 1 asks the caller for that many agent answers in all
    (``Sample.alternatives`` carries the extra ones)."""

    name: ClassVar[str]
    asynchronous: ClassVar[bool]  # always True

    def __call__(self, legacy: Sample, agent: Sample) -> Awaitable[Result]: ...
