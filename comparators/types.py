"""The whole comparator contract: what a comparator sees and what it returns.

A comparator is any callable with a ``name`` that takes the legacy and the
agent :class:`Sample` and returns a :class:`Result`. Results are immutable
data; a comparator that raises is turned into an ``error`` result by
:func:`comparators.compare`, never into an exception for the caller.
"""

from __future__ import annotations

from collections.abc import Mapping
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


@dataclass(frozen=True, slots=True)
class Sample:
    """One side of an exchange, as captured by the proxy.

    ``headers`` keys are lower-case; ``body`` is the full captured body.
    """

    status: int
    headers: Mapping[str, str] = field(default_factory=dict)
    body: bytes = b""


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
