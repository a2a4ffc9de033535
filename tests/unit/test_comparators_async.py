"""acompare() and compare() with asynchronous comparators: folding, failures, cancellation."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any, ClassVar

import pytest

from comparators.comparison import NEEDS_LOOP, acompare, combine, compare, is_async
from comparators.types import Comparison, Result, Sample, Verdict

LEGACY, AGENT = Sample(200, body=b"a"), Sample(200, body=b"b")
MATCH, MISMATCH, ERROR, SKIPPED = Verdict.MATCH, Verdict.MISMATCH, Verdict.ERROR, Verdict.SKIPPED


@dataclass(frozen=True)
class Fixed:
    """A synchronous comparator with a preset result."""

    verdict: Verdict
    score: float = 0.0
    name: str = "fixed"

    def __call__(self, legacy: Sample, agent: Sample) -> Result:
        return Result(self.name, self.verdict, self.score, reason=f"{self.name} said so")


@dataclass(frozen=True)
class Later:
    """An asynchronous comparator whose coroutine runs ``body``; records each call."""

    body: Callable[[], Awaitable[Any]]
    name: str = "later"
    calls: list[str] = field(default_factory=list)
    asynchronous: ClassVar[bool] = True

    async def __call__(self, legacy: Sample, agent: Sample) -> Any:
        self.calls.append("called")
        return await self.body()


def result(verdict: Verdict, score: float = 0.0, name: str = "later") -> Callable[[], Any]:
    async def body() -> Result:
        await asyncio.sleep(0)
        return Result(name, verdict, score, reason=f"{name} said so")

    return body


def raising(exc: BaseException) -> Callable[[], Any]:
    async def body() -> Result:
        await asyncio.sleep(0)
        raise exc

    return body


def returning(value: Any) -> Callable[[], Any]:
    async def body() -> Any:
        return value

    return body


@pytest.mark.parametrize(
    ("comparators", "verdict", "score"),
    [
        ([Later(result(MATCH, 1.0))], MATCH, 1.0),
        ([Fixed(MATCH, 1.0), Later(result(MISMATCH, 0.5))], MISMATCH, 0.75),
        ([Later(result(MATCH, 0.8)), Fixed(SKIPPED), Later(result(MATCH, 0.6))], MATCH, 0.7),
        ([Fixed(MISMATCH, 0.2), Later(result(SKIPPED))], MISMATCH, 0.2),
        ([Later(result(ERROR)), Fixed(MATCH, 1.0)], ERROR, 1.0),
        ([Fixed(MATCH, 1.0), Fixed(MISMATCH, 0.0)], MISMATCH, 0.5),
    ],
)
async def test_acompare_folds_sync_and_async_results_like_compare(
    comparators: list[Any], verdict: Verdict, score: float
) -> None:
    """Awaited results fold by the same rules as compare: worst verdict wins, scores average."""
    comparison = await acompare(comparators, LEGACY, AGENT)
    assert comparison.verdict is verdict
    assert comparison.score == pytest.approx(score)
    assert comparison == combine(comparison.results)


async def test_acompare_keeps_the_order_of_the_comparators() -> None:
    """Results come back in config order, however sync and async ones interleave."""
    comparators: list[Any] = [
        Later(result(MATCH, name="a1"), name="a1"),
        Fixed(MATCH, name="s1"),
        Later(result(MATCH, name="a2"), name="a2"),
        Fixed(MATCH, name="s2"),
    ]
    comparison = await acompare(comparators, LEGACY, AGENT)
    assert [r.comparator for r in comparison.results] == ["a1", "s1", "a2", "s2"]


async def test_acompare_runs_async_comparators_concurrently() -> None:
    """Two async comparators that each wait for the other finish: they are in flight together."""
    barrier = asyncio.Barrier(2)

    async def meet() -> Result:
        await barrier.wait()
        return Result("later", MATCH, 1.0)

    async with asyncio.timeout(5):  # run one after the other, they would wait forever
        comparison = await acompare([Later(meet), Later(meet)], LEGACY, AGENT)
    assert comparison.verdict is MATCH
    assert len(comparison.results) == 2


async def test_acompare_without_comparators_is_skipped() -> None:
    """A route without comparators yields a skipped comparison saying so."""
    assert await acompare([], LEGACY, AGENT) == Comparison.skipped("no comparators")


@pytest.mark.parametrize(
    ("comparator", "reason"),
    [
        (Later(raising(ValueError("bad body"))), "ValueError: bad body"),
        (Later(raising(asyncio.CancelledError())), "CancelledError"),
        (Later(returning("match")), "TypeError: comparator returned str, not Result"),
        (Later(returning(None)), "TypeError: comparator returned NoneType, not Result"),
    ],
)
async def test_a_failing_async_comparator_becomes_an_error_result(
    comparator: Later, reason: str
) -> None:
    """Exceptions (even a CancelledError of its own) and wrong returns are data, never raised."""
    comparison = await acompare([comparator, Fixed(MATCH, 1.0)], LEGACY, AGENT)
    failed = comparison.results[0]
    assert (failed.comparator, failed.verdict) == ("later", ERROR)
    assert failed.reason.startswith(reason)
    assert comparison.results[1].verdict is MATCH


@dataclass(frozen=True)
class NotAwaitable:
    """Declares itself asynchronous but returns a plain Result."""

    name: ClassVar[str] = "liar"
    asynchronous: ClassVar[bool] = True

    def __call__(self, legacy: Sample, agent: Sample) -> Result:
        return Result(self.name, MATCH, 1.0)


@dataclass(frozen=True)
class Undeclared:
    """An async comparator that forgot ``asynchronous = True``."""

    name: ClassVar[str] = "undeclared"

    async def __call__(self, legacy: Sample, agent: Sample) -> Result:
        return Result(self.name, MATCH, 1.0)


async def test_an_async_comparator_that_returns_no_awaitable_is_an_error() -> None:
    """A comparator flagged asynchronous whose call gives a plain value is reported, not raised."""
    comparison = await acompare([NotAwaitable()], LEGACY, AGENT)
    assert comparison.verdict is ERROR
    assert comparison.results[0].reason.startswith("TypeError")


@pytest.mark.parametrize("run", ["compare", "acompare"])
async def test_an_undeclared_coroutine_is_an_error_and_is_closed(run: str) -> None:
    """A coroutine returned by an unflagged comparator is closed (no 'never awaited' warning)."""
    if run == "compare":
        comparison = compare([Undeclared()], LEGACY, AGENT)
    else:
        comparison = await acompare([Undeclared()], LEGACY, AGENT)
    assert comparison.verdict is ERROR
    assert "declare `asynchronous = True`" in comparison.reason


def test_compare_skips_async_comparators_without_calling_them() -> None:
    """The synchronous compare gives an async comparator a skipped result that says why."""
    later = Later(result(MISMATCH))
    comparison = compare([later, Fixed(MATCH, 1.0)], LEGACY, AGENT)
    assert later.calls == []
    assert comparison.results[0] == Result("later", SKIPPED, 0.0, reason=NEEDS_LOOP)
    assert comparison.verdict is MATCH


@pytest.mark.parametrize("count", [1, 3])
async def test_cancelling_acompare_cancels_the_comparators_and_propagates(count: int) -> None:
    """Cancelling the caller stops every pending comparator and raises CancelledError."""
    started, cancelled = asyncio.Event(), []

    async def forever() -> Result:
        started.set()
        try:
            await asyncio.sleep(3600)
        except asyncio.CancelledError:
            cancelled.append(True)
            raise
        raise AssertionError("unreachable")

    comparators: list[Any] = [Fixed(MATCH, 1.0), *(Later(forever) for _ in range(count))]
    task = asyncio.create_task(acompare(comparators, LEGACY, AGENT))
    await started.wait()
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert cancelled == [True] * count


@dataclass(frozen=True)
class Flagged:
    asynchronous: Any = None


@pytest.mark.parametrize(
    ("comparator", "expected"),
    [
        (Later(result(MATCH)), True),
        (Fixed(MATCH), False),
        (Flagged(True), True),
        (Flagged(False), False),
        (Flagged("yes"), False),
        (Flagged(1), False),
        (object(), False),
    ],
)
def test_is_async_only_for_asynchronous_true(comparator: object, expected: bool) -> None:
    """Only a literal ``asynchronous = True`` marks a comparator as awaitable."""
    assert is_async(comparator) is expected
