"""The proxy's resident memory over a soak: sampled every second, judged after warm-up.

A leak is a trend, not a spike (a 2 MiB answer in flight is not a leak), so
the growth compares two medians of three samples each: the last three of the
warm-up (the baseline) and the last three of the run (final). The peak after
warm-up is reported too.
"""

from __future__ import annotations

import asyncio
import statistics
from dataclasses import dataclass, field
from time import perf_counter

from bench.procs import rss_bytes, tree_pids

MB = 1024 * 1024
SPAN = 3  # samples in each median


@dataclass
class RssSeries:
    """(seconds since the traffic started, RSS in bytes of the process tree)."""

    samples: list[tuple[float, int]] = field(default_factory=list)

    def last_mb(self) -> float:
        return self.samples[-1][1] / MB if self.samples else 0.0


async def watch(pid: int, series: RssSeries, start: float, interval: float = 1.0) -> None:
    """Sample until cancelled."""
    while True:
        rss = rss_bytes(tree_pids(pid))
        if rss:  # 0: the process is gone; the other checks say so
            series.samples.append((perf_counter() - start, rss))
        await asyncio.sleep(interval)


@dataclass(frozen=True)
class Growth:
    warmup: float  # seconds
    baseline: int  # bytes, median of the last samples of the warm-up
    peak: int  # bytes, highest sample after the warm-up
    final: int  # bytes, median of the last samples
    samples: int

    @property
    def ratio(self) -> float:
        """final / baseline - 1: 0.05 is 5% growth."""
        return self.final / self.baseline - 1


def growth(series: RssSeries, warmup: float) -> Growth | None:
    """None when there are too few samples on either side of the warm-up."""
    before = [rss for t, rss in series.samples if t <= warmup]
    after = [rss for t, rss in series.samples if t > warmup]
    if not before or len(after) < SPAN:
        return None
    return Growth(
        warmup=warmup,
        baseline=int(statistics.median(before[-SPAN:])),
        peak=max(after),
        final=int(statistics.median(after[-SPAN:])),
        samples=len(series.samples),
    )
