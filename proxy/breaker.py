"""A circuit breaker per route on the agent: stop paying for an agent that keeps failing.

While the breaker is open, live traffic goes to legacy and shadowing pauses, so a
broken agent costs neither latency nor money. After a cooldown a few probe
requests test the agent again; only a clean run of probes closes the breaker.

Pure and clock-free: every call takes ``now`` (monotonic seconds), so tests
drive time as data and the async driver owns the clock. Every request that
``allow`` lets through must be ``record``-ed (a timeout is a failure), otherwise
half-open would wait for probe results that never come.
"""

from __future__ import annotations

import math
from collections import deque
from dataclasses import dataclass
from enum import StrEnum


class BreakerState(StrEnum):
    CLOSED = "closed"  # agent called normally; failures counted over the window
    OPEN = "open"  # agent not called until the cooldown has passed
    HALF_OPEN = "half_open"  # a few probes decide between CLOSED and OPEN again


@dataclass(frozen=True, slots=True)
class BreakerPolicy:
    """When to open (``failure_rate`` over ``window`` seconds, given ``min_requests``)
    and how to recover (``cooldown`` seconds, then ``probes`` successes in a row)."""

    window: float = 30.0
    min_requests: int = 20
    failure_rate: float = 0.5
    cooldown: float = 30.0
    probes: int = 3

    def __post_init__(self) -> None:
        # Checked here so a bad config fails at startup, not on the first failure.
        if not (self.window > 0 and math.isfinite(self.window)):
            raise ValueError(f"window must be a positive number of seconds, got {self.window}")
        if self.min_requests < 1:
            raise ValueError(f"min_requests must be >= 1, got {self.min_requests}")
        if not 0 < self.failure_rate <= 1:
            raise ValueError(f"failure_rate must be in (0, 1], got {self.failure_rate}")
        if not (self.cooldown >= 0 and math.isfinite(self.cooldown)):
            raise ValueError(f"cooldown must be >= 0 seconds, got {self.cooldown}")
        if self.probes < 1:
            raise ValueError(f"probes must be >= 1, got {self.probes}")


class CircuitBreaker:
    """One route's breaker. Not thread-safe; meant for one event loop.

    The CLOSED window is a deque of one-second buckets ``[second, ok, failed]``
    plus running totals, so memory is at most ``ceil(window) + 1`` buckets and
    reading the failure ratio costs O(1) after expiring old buckets. A bucket
    counts while any part of its second overlaps ``(now - window, now]``, so a
    result is never forgotten sooner than ``window`` seconds (at most one second
    later).
    """

    __slots__ = (
        "_buckets",
        "_failed",
        "_opened_at",
        "_probe_ok",
        "_probe_results",
        "_probes_started",
        "_requests",
        "_state",
        "policy",
    )

    def __init__(self, policy: BreakerPolicy) -> None:
        self.policy = policy
        self._state = BreakerState.CLOSED
        self._opened_at: float | None = None
        self._buckets: deque[list[int]] = deque()
        self._requests = 0
        self._failed = 0
        self._probes_started = 0
        self._probe_results = 0
        self._probe_ok = 0

    @property
    def opened_at(self) -> float | None:
        """When the breaker last opened (OPEN or HALF_OPEN); None while CLOSED."""
        return self._opened_at

    def state(self, now: float) -> BreakerState:
        """The state at ``now``; OPEN turns HALF_OPEN here, lazily, once the cooldown passed.

        Time alone drives that change, so ``record`` never reports it: a driver
        that exports the state should read ``state(now)`` (e.g. as a gauge).
        """
        if self._state is BreakerState.OPEN:
            assert self._opened_at is not None
            if now - self._opened_at >= self.policy.cooldown:
                self._state = BreakerState.HALF_OPEN
                self._reset_probes()
        return self._state

    def allow(self, now: float) -> bool:
        """Whether to call the agent now; in HALF_OPEN each True starts one probe."""
        state = self.state(now)
        if state is BreakerState.CLOSED:
            return True
        if state is BreakerState.OPEN or self._probes_started >= self.policy.probes:
            return False
        self._probes_started += 1
        return True

    def record(self, ok: bool, now: float) -> BreakerState | None:
        """Count one agent result; return the new state when this result changed it.

        Results while OPEN are late answers to requests sent before it opened
        and are ignored. In HALF_OPEN, results beyond the probes started are
        ignored for the same reason (they cannot be probe answers).
        """
        before = self.state(now)
        if before is BreakerState.OPEN:
            return None
        if before is BreakerState.HALF_OPEN:
            self._record_probe(ok, now)
        else:
            self._record_closed(ok, now)
        return self._state if self._state is not before else None

    def failure_ratio(self, now: float) -> float | None:
        """Failures / requests in the CLOSED window at ``now``; None with no requests."""
        self._expire(now)
        return self._failed / self._requests if self._requests else None

    def _record_closed(self, ok: bool, now: float) -> None:
        self._expire(now)
        second = math.floor(now)
        if self._buckets and self._buckets[-1][0] >= second:
            bucket = self._buckets[-1]  # same second, or a clock step back: join the newest
        else:
            bucket = [second, 0, 0]
            self._buckets.append(bucket)
        bucket[1 if ok else 2] += 1
        self._requests += 1
        self._failed += not ok
        policy = self.policy
        if (
            self._requests >= policy.min_requests
            and self._failed / self._requests >= policy.failure_rate
        ):
            self._open(now)

    def _record_probe(self, ok: bool, now: float) -> None:
        if self._probe_results >= self._probes_started:
            return  # no probe outstanding: a late answer from before the breaker opened
        self._probe_results += 1
        if not ok:
            self._open(now)  # cooldown restarts from this failure
            return
        self._probe_ok += 1
        if self._probe_ok >= self.policy.probes:
            self._state = BreakerState.CLOSED
            self._opened_at = None
            self._clear_window()  # the failures that opened it are history

    def _expire(self, now: float) -> None:
        oldest = now - self.policy.window - 1  # a bucket at second s covers [s, s + 1)
        buckets = self._buckets
        while buckets and buckets[0][0] <= oldest:
            _, ok, failed = buckets.popleft()
            self._requests -= ok + failed
            self._failed -= failed

    def _open(self, now: float) -> None:
        self._state = BreakerState.OPEN
        self._opened_at = now
        self._clear_window()
        self._reset_probes()

    def _clear_window(self) -> None:
        self._buckets.clear()
        self._requests = self._failed = 0

    def _reset_probes(self) -> None:
        self._probes_started = self._probe_results = self._probe_ok = 0
