"""Judging one pair of answers: bodies made comparable (inflated, bounded),
then every comparator of the route, with the large ones kept to a share of
the CPU on their own thread and the asynchronous ones awaited beside them.
Failures and oversize bodies are verdicts here, never exceptions.
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor

from comparators import (
    AnyComparator,
    Comparison,
    Sample,
    acompare,
    combine,
    compare,
    is_async,
)
from proxy.types import MAX_INFLATED_BYTES, Observation, decoded

__all__ = ["BUSY", "MAX_INFLATED_BYTES", "Lane", "decoded", "judge"]

# Bodies above this are compared on a worker thread so the loop keeps serving
# (about 0.5 ms of diffing for 16 KiB of JSON). A 1 MB document takes tens of
# milliseconds to parse and walk, holding the GIL all the while, so large
# comparisons run one at a time and use at most LARGE_COMPARE_SHARE of the
# time: after one that took t seconds the lane rests t * (1/share - 1). A
# large pair arriving while the lane is busy or resting is skipped (and
# counted), never queued: the live path keeps the rest of the CPU.
INLINE_COMPARE_BYTES = 16 * 1024
LARGE_COMPARE_SHARE = 0.25
BUSY = "large comparisons are at their CPU share (one at a time, 25% of the time)"
# A compressed body is inflated for comparison up to this size (bombs stop here).


class Lane:
    """The one worker thread for large comparisons, and its rest.

    Its own thread, not the loop's default pool: every thread that allocates
    gets its own malloc arena, and a parsed 1 MB document left behind in
    several of them is memory the process never gets back.
    """

    __slots__ = ("busy", "executor", "rest_until")

    def __init__(self) -> None:
        self.busy = False
        self.rest_until = 0.0
        self.executor = ThreadPoolExecutor(1, thread_name_prefix="compare")

    def free(self, now: float) -> bool:
        return not self.busy and now >= self.rest_until

    def ran(self, started: float, ended: float) -> None:
        self.busy = False
        self.rest_until = ended + (ended - started) * (1 / LARGE_COMPARE_SHARE - 1)


async def judge(
    comparators: Sequence[AnyComparator],
    live: Observation,
    agent: Observation,
    lane: Lane | None = None,
) -> Comparison:
    """Compare two answers; failures and oversize bodies are verdicts, not raises.
    Synchronous comparators run here (large bodies on the lane); asynchronous
    ones (a model, a judge) are awaited beside them."""
    if live.error is not None:
        return Comparison.skipped(f"legacy failed: {live.error}")
    if agent.error is not None:
        return Comparison.error(f"agent failed: {agent.error}")
    if agent.status >= 500 > live.status:  # the agent failed; that is not disagreement
        return Comparison.error(f"agent answered {agent.status}")
    if live.body is None:
        return Comparison.skipped("legacy body exceeds the capture limit")
    if agent.body is None:
        return Comparison.skipped("agent body exceeds the capture limit")
    live_plain = decoded(live)
    if isinstance(live_plain, str):
        return Comparison.skipped(live_plain)
    agent_plain = decoded(agent)
    if isinstance(agent_plain, str):
        return Comparison.skipped(agent_plain)
    legacy_sample, agent_sample = live_plain.sample(), agent_plain.sample()
    waiting = [c for c in comparators if is_async(c)]
    if not waiting:
        return await _compare(comparators, legacy_sample, agent_sample, lane)
    now = [c for c in comparators if not is_async(c)]
    first = await _compare(now, legacy_sample, agent_sample, lane) if now else None
    if first is not None and first.reason == BUSY and not first.results:
        return first
    later = await acompare(waiting, legacy_sample, agent_sample)
    return combine([*(first.results if first is not None else ()), *later.results])


async def _compare(
    comparators: Sequence[AnyComparator], legacy: Sample, agent: Sample, lane: Lane | None
) -> Comparison:
    if len(legacy.body) + len(agent.body) <= INLINE_COMPARE_BYTES:
        return compare(comparators, legacy, agent)
    loop = asyncio.get_running_loop()
    if lane is None:
        return await loop.run_in_executor(None, compare, comparators, legacy, agent)
    started = loop.time()
    if not lane.free(started):
        return Comparison.skipped(BUSY)
    lane.busy = True
    try:
        return await loop.run_in_executor(lane.executor, compare, comparators, legacy, agent)
    finally:
        lane.ran(started, loop.time())
