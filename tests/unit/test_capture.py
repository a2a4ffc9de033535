"""Capturing bodies for comparison: one body is bounded by the capture limit,
all of them together by a shared budget; a copy that does not fit is dropped
whole, never kept in part."""

from __future__ import annotations

import pytest
from multidict import CIMultiDict

from proxy.capture import BodyCapture, CaptureBudget
from proxy.job import ShadowJob
from proxy.routes import unmatched_route
from proxy.settings import settings_from
from proxy.tracecontext import TraceContext


@pytest.mark.parametrize(
    ("steps", "results", "used"),
    [
        ([("take", 40)], [True], 40),
        ([("take", 64)], [True], 64),  # exactly the limit fits
        ([("take", 65)], [False], 0),  # a refusal takes nothing
        ([("take", 40), ("take", 40)], [True, False], 40),
        ([("take", 40), ("take", 24)], [True, True], 64),
        ([("take", 40), ("give", 40), ("take", 64)], [True, None, True], 64),
        ([("take", 40), ("take", 20), ("give", 40), ("take", 44)], [True, True, None, True], 64),
        ([("take", 0), ("take", 64), ("take", 0)], [True, True, True], 64),
    ],
)  # fmt: skip
def test_the_budget_takes_what_fits_and_gets_back_what_is_given(
    steps: list[tuple[str, int]], results: list[bool | None], used: int
) -> None:
    budget = CaptureBudget(64)
    seen = [getattr(budget, op)(size) for op, size in steps]
    assert seen == results
    assert budget.used == used


def test_a_lowered_budget_refuses_until_enough_is_given_back() -> None:
    """A reload may lower the bound below what is held: nothing new fits until it drains."""
    budget = CaptureBudget(100)
    assert budget.take(80)
    budget.limit = 50
    assert not budget.take(1)
    budget.give(80)
    assert budget.take(50)


class Budgeted:
    """A job's view of a shared budget, as ShadowJob gives it to a capture."""

    def __init__(self, budget: CaptureBudget) -> None:
        self.budget = budget
        self.held = 0
        self.asked: list[int] = []

    def hold(self, size: int) -> bool:
        self.asked.append(size)
        if self.budget.take(size):
            self.held += size
            return True
        return False

    def release(self, size: int) -> None:
        self.budget.give(size)
        self.held -= size


@pytest.mark.parametrize(
    ("limit", "room", "chunks", "value", "held"),
    [
        (100, 100, [b"a" * 40, b"b" * 40], b"a" * 40 + b"b" * 40, 80),
        (100, 100, [b"a" * 100], b"a" * 100, 100),
        (100, 60, [b"a" * 40, b"b" * 40], None, 0),  # the budget refuses the second chunk
        (100, 30, [b"a" * 40], None, 0),  # refused at once
        (50, 1000, [b"a" * 40, b"b" * 40], None, 0),  # over the body's own limit
        (100, 100, [], b"", 0),
    ],
)  # fmt: skip
def test_a_capture_keeps_the_whole_body_or_nothing(
    limit: int, room: int, chunks: list[bytes], value: bytes | None, held: int
) -> None:
    job = Budgeted(CaptureBudget(room))
    capture = BodyCapture(limit, job.hold, job.release)
    for chunk in chunks:
        capture.feed(chunk)
    assert capture.value() == value
    assert capture.overflow is (value is None)
    assert job.held == job.budget.used == held  # a dropped copy holds nothing


def test_a_refused_chunk_drops_the_copy_and_no_more_is_asked_for() -> None:
    job = Budgeted(CaptureBudget(50))
    capture = BodyCapture(1000, job.hold, job.release)
    assert capture.feed(b"x" * 30)
    assert not capture.feed(b"y" * 30)  # 60 > 50: refused
    assert not capture.feed(b"z")  # already dropped: the budget is not asked again
    assert capture.overflow
    assert capture.value() is None
    assert job.asked == [30, 30]
    assert job.budget.used == 0


def test_a_body_over_its_own_limit_never_asks_the_budget_for_the_excess() -> None:
    """The size limit is checked first, so a too-large body is not mistaken for a full budget."""
    job = Budgeted(CaptureBudget(1000))
    capture = BodyCapture(50, job.hold, job.release)
    assert capture.feed(b"x" * 40)
    assert not capture.feed(b"y" * 20)
    assert job.asked == [40]
    assert capture.size == 60
    assert capture.value() is None


def test_a_capture_without_a_budget_is_bounded_by_its_limit_only() -> None:
    capture = BodyCapture(100)
    assert capture.feed(b"x" * 100)
    assert capture.value() == b"x" * 100
    assert not capture.feed(b"y")
    assert capture.value() is None


async def test_a_job_that_has_ended_holds_nothing_more_and_gives_nothing_back_twice() -> None:
    """Its task gave back all it held on ending; a copy still streaming for it
    (the live side outlasting the job) must neither take bytes nobody would
    return nor return bytes a second time."""
    budget = CaptureBudget(100)
    job = ShadowJob(
        route=unmatched_route(settings_from({"backends": {"legacy": {"url": "http://x:1"}}})),
        method="GET",
        raw_path="/",
        headers=CIMultiDict(),
        legacy_headers=CIMultiDict(),
        request_id="r",
        trace=TraceContext.new(),
        budget=budget,
    )
    capture = BodyCapture(1000, job.hold, job.release)
    assert capture.feed(b"x" * 40)
    budget.give(job.held)  # the job ends, as Shadow does it
    job.held, job.ended = 0, True
    assert not capture.feed(b"y" * 10)  # the copy is dropped; its 40 bytes went back once
    assert budget.used == 0
    assert not job.hold(1)
    assert not job.starved  # an ended job is not a sign of a full budget
    assert budget.used == 0
