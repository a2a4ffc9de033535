"""The lane for large comparisons: one at a time, at most LARGE_COMPARE_SHARE
of the time; a large pair that finds it busy or resting is skipped, never queued."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator

import orjson
import pytest

from comparators import Verdict, build
from proxy.judgement import BUSY, INLINE_COMPARE_BYTES, LARGE_COMPARE_SHARE, Lane, judge
from proxy.types import Observation

JSON = [build("status", {}), build("json", {})]
# Big enough that parsing and walking it takes a while: the rest after it is measurable.
LARGE = orjson.dumps({"items": [{"id": i, "name": f"item {i}"} for i in range(50000)]})
SMALL = b'{"ok": true}'


def pair(body: bytes) -> tuple[Observation, Observation]:
    return Observation("legacy", 200, {}, body), Observation("agent", 200, {}, body)


@pytest.fixture
def lane() -> Iterator[Lane]:
    lane = Lane()
    yield lane
    lane.executor.shutdown()


@pytest.mark.parametrize(
    ("now", "free"),
    [(10.5, False), (11.0, False), (13.99, False), (14.0, True), (20.0, True)],
)  # fmt: skip
def test_after_a_run_the_lane_rests_for_the_rest_of_its_share(
    lane: Lane, now: float, free: bool
) -> None:
    """A one-second comparison at a 25% share is followed by three seconds' rest."""
    assert LARGE_COMPARE_SHARE == 0.25
    lane.busy = True
    lane.ran(started=10.0, ended=11.0)
    assert lane.free(now) is free


def test_a_busy_lane_is_not_free_even_after_its_rest(lane: Lane) -> None:
    lane.busy = True
    assert not lane.free(lane.rest_until + 100)


async def test_of_two_large_pairs_at_once_one_is_compared_and_the_other_skipped(
    lane: Lane,
) -> None:
    assert 2 * len(LARGE) > INLINE_COMPARE_BYTES >= 2 * len(SMALL)
    first, second = await asyncio.gather(
        judge(JSON, *pair(LARGE), lane), judge(JSON, *pair(LARGE), lane)
    )
    assert first.verdict is Verdict.MATCH
    assert second.verdict is Verdict.SKIPPED
    assert second.reason == BUSY


async def test_right_after_a_large_comparison_the_next_waits_out_the_rest(lane: Lane) -> None:
    """Skipped while the lane rests, compared once the rest has passed."""
    loop = asyncio.get_running_loop()
    assert (await judge(JSON, *pair(LARGE), lane)).verdict is Verdict.MATCH
    resting = await judge(JSON, *pair(LARGE), lane)
    assert resting.verdict is Verdict.SKIPPED
    assert resting.reason == BUSY

    lane.rest_until = loop.time()  # the rest is over
    assert (await judge(JSON, *pair(LARGE), lane)).verdict is Verdict.MATCH


async def test_small_pairs_never_wait_for_the_lane(lane: Lane) -> None:
    lane.rest_until = asyncio.get_running_loop().time() + 3600
    assert (await judge(JSON, *pair(SMALL), lane)).verdict is Verdict.MATCH
    assert (await judge(JSON, *pair(LARGE), lane)).reason == BUSY


async def test_without_a_lane_large_pairs_are_all_compared() -> None:
    """On the default pool: the bound belongs to the lane, not to judge."""
    results = await asyncio.gather(*(judge(JSON, *pair(LARGE)) for _ in range(3)))
    assert [r.verdict for r in results] == [Verdict.MATCH] * 3
