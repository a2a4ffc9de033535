"""A route's shadow token budget: shadow traffic must not burn money unbounded.

A token bucket holding at most one minute's allowance, refilled continuously.
An agent call's cost is known only when it answers, so admission reserves
what a call has recently cost (a moving average) and the answer settles the
difference: many calls admitted together cannot overshoot by more than the
estimate's error. Pure: the caller passes ``now``.
"""

from __future__ import annotations

# Weight of the newest call in the per-call estimate.
_SMOOTHING = 0.2


class TokenBudget:
    __slots__ = ("estimate", "level", "per_minute", "updated")

    def __init__(self, per_minute: int, now: float) -> None:
        self.per_minute = per_minute
        self.level = float(per_minute)
        self.updated = now
        self.estimate = 0.0  # tokens per call; unknown until a call reports

    def _refill(self, now: float) -> None:
        elapsed = max(0.0, now - self.updated)
        self.level = min(float(self.per_minute), self.level + elapsed * self.per_minute / 60.0)
        self.updated = now

    def admit(self, now: float) -> float | None:
        """Reserve one call's expected cost; None when the budget is spent.
        The returned reservation goes back to :meth:`settle`."""
        self._refill(now)
        if self.level <= 0.0:
            return None
        reserved = self.estimate
        self.level -= reserved
        return reserved

    def settle(self, reserved: float, tokens: int | None, now: float) -> None:
        """A call answered: charge what it really cost (``None``: it did not
        say, so the reservation stands as the best guess)."""
        self._refill(now)
        if tokens is None:
            return
        self.level += reserved - tokens
        self.estimate += _SMOOTHING * (tokens - self.estimate) if self.estimate else tokens

    def refund(self, reserved: float) -> None:
        """The call was never made."""
        self.level = min(float(self.per_minute), self.level + reserved)

    def remaining(self, now: float) -> float:
        self._refill(now)
        return max(0.0, self.level)
