"""compare(): running a route's comparators and combining their results."""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import pytest

from comparators import (
    Comparison,
    Difference,
    DiffKind,
    ExactComparator,
    Result,
    Sample,
    StatusComparator,
    Verdict,
    compare,
)

LEGACY, AGENT = Sample(200, body=b"a"), Sample(201, body=b"b")


@dataclass(frozen=True)
class Fixed:
    """A comparator that returns a preset result, to drive the combining rules."""

    name: ClassVar[str] = "fixed"
    verdict: Verdict
    score: float = 0.0
    reason: str = ""
    diffs: tuple[Difference, ...] = ()

    def __call__(self, legacy: Sample, agent: Sample) -> Result:
        return Result(self.name, self.verdict, self.score, self.diffs, self.reason)


@dataclass(frozen=True)
class Exploding:
    """A comparator with a bug."""

    name: ClassVar[str] = "boom"

    def __call__(self, legacy: Sample, agent: Sample) -> Result:
        raise ZeroDivisionError("division by zero")


MATCH, MISMATCH, ERROR, SKIPPED = Verdict.MATCH, Verdict.MISMATCH, Verdict.ERROR, Verdict.SKIPPED


@pytest.mark.parametrize(
    ("results", "verdict", "score"),
    [
        ([Fixed(MATCH, 1.0)], MATCH, 1.0),
        ([Fixed(MATCH, 1.0), Fixed(MISMATCH, 0.5)], MISMATCH, 0.75),
        ([Fixed(MATCH, 1.0), Fixed(SKIPPED)], MATCH, 1.0),
        ([Fixed(SKIPPED), Fixed(SKIPPED)], SKIPPED, 0.0),
        ([Fixed(MATCH, 0.9), Fixed(MISMATCH, 0.1), Fixed(ERROR)], ERROR, 0.5),
        ([Fixed(ERROR), Fixed(SKIPPED)], ERROR, 0.0),
    ],
)
def test_worst_verdict_wins_and_score_averages_the_scored_results(
    results: list[Fixed], verdict: Verdict, score: float
) -> None:
    """error > mismatch > match > skipped; only match/mismatch scores are averaged."""
    comparison = compare(results, LEGACY, AGENT)
    assert comparison.verdict is verdict
    assert comparison.score == pytest.approx(score)
    assert len(comparison.results) == len(results)


def test_no_comparators_is_skipped() -> None:
    """A route without comparators yields a skipped comparison saying so."""
    assert compare([], LEGACY, AGENT) == Comparison.skipped("no comparators")


def test_skipped_reason_joins_every_skip_reason() -> None:
    """When nothing could be compared, the reason tells why for each comparator."""
    comparison = compare([Fixed(SKIPPED, reason="x"), Fixed(SKIPPED, reason="y")], LEGACY, AGENT)
    assert comparison.reason == "fixed: x; fixed: y"


def test_differences_are_concatenated_in_comparator_order() -> None:
    """All comparators' differences are kept, in the order the route lists them."""
    comparison = compare([StatusComparator(), ExactComparator()], LEGACY, AGENT)
    assert [(d.path, d.kind) for d in comparison.differences] == [
        ("status", DiffKind.CHANGED),
        ("body", DiffKind.CHANGED),
    ]


def test_an_exploding_comparator_becomes_an_error_result() -> None:
    """A comparator that raises never raises out of compare(); its error is data."""
    comparison = compare([StatusComparator(), Exploding()], LEGACY, AGENT)
    assert comparison.verdict is Verdict.ERROR
    boom = comparison.results[1]
    assert boom == Result("boom", Verdict.ERROR, 0.0, reason="ZeroDivisionError: division by zero")
    assert comparison.results[0].verdict is Verdict.MISMATCH
    assert "boom: ZeroDivisionError" in comparison.reason


def test_a_comparator_returning_garbage_becomes_an_error_result() -> None:
    """A result of the wrong type is reported as an error, not passed on."""

    @dataclass(frozen=True)
    class Sloppy:
        name: ClassVar[str] = "sloppy"

        def __call__(self, legacy: Sample, agent: Sample) -> Result:
            return True  # type: ignore[return-value]

    (result,) = compare([Sloppy()], LEGACY, AGENT).results
    assert result.verdict is Verdict.ERROR and "not Result" in result.reason
