"""Which agent failures are worth another try, and how long to wait first.

A retry only helps when the failure is likely to pass (refused or reset
connections, timeouts, 502/503/504, 429) and only when it cannot do harm: a
request with side effects is never sent twice once its bytes left, and no
retry may push the request past its deadline, since legacy is the faster
answer then. Everything here is pure: the clock and randomness come in as
arguments, so the driver and the tests decide them.
"""

from __future__ import annotations

import math
import random
import re
from dataclasses import dataclass
from datetime import UTC
from email.utils import parsedate_to_datetime
from enum import StrEnum


class Retry(StrEnum):
    NO = "no"  # the answer is a success; nothing to retry
    TRANSIENT = "transient"  # likely to pass: worth another attempt
    PERMANENT = "permanent"  # the same request will fail the same way


_TRANSIENT_KINDS = frozenset({"connect", "timeout", "disconnect"})
_TRANSIENT_STATUSES = frozenset({429, 502, 503, 504})
_DELAY_SECONDS = re.compile(r"[0-9]+")  # RFC 9110: delay-seconds = 1*DIGIT


def classify(status: int | None, error_kind: str | None) -> Retry:
    """Classify one agent attempt: a transport error (``error_kind``) or a status.

    ``error_kind`` wins when set. Unknown kinds, a missing status and statuses
    outside 2xx-5xx are PERMANENT: not retrying is always the safe answer.
    """
    if error_kind is not None:
        return Retry.TRANSIENT if error_kind in _TRANSIENT_KINDS else Retry.PERMANENT
    if status is None:
        return Retry.PERMANENT
    if status in _TRANSIENT_STATUSES:
        return Retry.TRANSIENT
    if 200 <= status < 400:
        return Retry.NO
    return Retry.PERMANENT


def retry_after(value: str | None, now_epoch: float) -> float | None:
    """Seconds to wait from a Retry-After header (delay-seconds or HTTP-date).

    None when absent or malformed; a negative number is malformed (the grammar
    is digits only), a date in the past means 0.0. A date without a zone
    (``-0000``) is taken as UTC, as HTTP-dates always are.
    """
    if value is None:
        return None
    text = value.strip()
    if _DELAY_SECONDS.fullmatch(text):
        return float(text)
    try:
        when = parsedate_to_datetime(text)
    except (TypeError, ValueError, IndexError, OverflowError):
        return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    return max(0.0, when.timestamp() - now_epoch)


@dataclass(frozen=True, slots=True)
class RetryPolicy:
    """``attempts`` counts the first try too, so 1 means never retry."""

    attempts: int = 2
    base: float = 0.05
    cap: float = 1.0

    def __post_init__(self) -> None:
        if self.attempts < 1:
            raise ValueError(f"attempts must be >= 1 (the first try counts), got {self.attempts}")
        if not (self.base >= 0 and math.isfinite(self.base)):
            raise ValueError(f"base must be >= 0 seconds, got {self.base}")
        if not (self.cap >= 0 and math.isfinite(self.cap)):
            raise ValueError(f"cap must be >= 0 seconds, got {self.cap}")


_MAX_DOUBLINGS = 64  # far past any cap; keeps 2**n from overflowing a float


def backoff(attempt: int, policy: RetryPolicy, rng: random.Random) -> float:
    """Full jitter after failed attempt ``attempt`` (1-based): uniform in [0, ceiling].

    Full jitter spreads retries from many proxies instead of having them hit a
    recovering agent in lock-step.
    """
    doublings = min(max(attempt - 1, 0), _MAX_DOUBLINGS)
    return rng.uniform(0.0, min(policy.cap, policy.base * 2.0**doublings))


def next_delay(
    attempt: int,
    policy: RetryPolicy,
    retry: Retry,
    retry_after_s: float | None,
    remaining: float,
    sent_body: bool,
    side_effect_free: bool,
    rng: random.Random,
) -> float | None:
    """Seconds to wait before the next attempt, or None to stop retrying.

    ``attempt`` is the 1-based number of the attempt that just failed and
    ``remaining`` the seconds left until the request's deadline. The delay
    must leave time for the attempt itself, so a delay equal to ``remaining``
    does not fit. The random number is drawn only when a retry is possible.
    """
    if retry is not Retry.TRANSIENT or attempt >= policy.attempts:
        return None
    if sent_body and not side_effect_free:
        return None  # the agent may have acted on it: a second copy could act twice
    floor = retry_after_s if retry_after_s is not None and retry_after_s > 0 else 0.0
    if floor >= remaining:
        return None  # Retry-After is honoured or not at all
    delay = max(backoff(attempt, policy, rng), floor)
    return delay if delay < remaining else None
