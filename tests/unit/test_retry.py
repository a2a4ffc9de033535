"""Retry decisions for agent calls: classification, Retry-After, backoff, the go/no-go."""

from __future__ import annotations

import random
from datetime import UTC, datetime

import pytest
from hypothesis import given
from hypothesis import strategies as st

from proxy.retry import Retry, RetryPolicy, backoff, classify, next_delay, retry_after

NO, TRANSIENT, PERMANENT = Retry.NO, Retry.TRANSIENT, Retry.PERMANENT


class Fixed(random.Random):
    """A Random whose draws are all ``value``, so jittered delays become exact."""

    def __init__(self, value: float) -> None:
        super().__init__(0)
        self.value = value

    def random(self) -> float:
        return self.value


@pytest.mark.parametrize(
    ("status", "error_kind", "expected"),
    [
        (None, "connect", TRANSIENT),
        (None, "disconnect", TRANSIENT),
        (None, "timeout", TRANSIENT),
        (None, "invalid_response", PERMANENT),
        (200, "timeout", TRANSIENT),  # a transport error wins over a status
        (None, "something_new", PERMANENT),  # unknown: not retrying is the safe answer
        (None, None, PERMANENT),
        (100, None, PERMANENT),
        (200, None, NO),
        (204, None, NO),
        (301, None, NO),
        (304, None, NO),
        (400, None, PERMANENT),
        (401, None, PERMANENT),
        (404, None, PERMANENT),
        (408, None, PERMANENT),
        (422, None, PERMANENT),
        (429, None, TRANSIENT),
        (500, None, PERMANENT),
        (501, None, PERMANENT),
        (502, None, TRANSIENT),
        (503, None, TRANSIENT),
        (504, None, TRANSIENT),
        (505, None, PERMANENT),
        (599, None, PERMANENT),
    ],
)
def test_failures_are_classified_by_error_kind_then_status(
    status: int | None, error_kind: str | None, expected: Retry
) -> None:
    assert classify(status, error_kind) is expected


NOW = datetime(2015, 10, 21, 7, 28, 0, tzinfo=UTC).timestamp()


@pytest.mark.parametrize(
    ("value", "seconds"),
    [
        (None, None),
        ("120", 120.0),
        (" 7 ", 7.0),
        ("0", 0.0),
        ("-5", None),  # delay-seconds is digits only
        ("1.5", None),
        ("soon", None),
        ("", None),
        ("²", None),  # a Unicode digit is not a DIGIT
        ("Wed, 21 Oct 2015 07:28:30 GMT", 30.0),
        ("Wed, 21 Oct 2015 07:28:30 -0000", 30.0),  # no zone given: HTTP-dates are UTC
        ("Wed, 21 Oct 2015 09:28:30 +0200", 30.0),
        ("Wed, 21 Oct 2015 07:00:00 GMT", 0.0),  # in the past: never negative
        ("Wed, 32 Oct 2015 07:28:30 GMT", None),
    ],
)
def test_retry_after_accepts_seconds_or_an_http_date(
    value: str | None, seconds: float | None
) -> None:
    assert retry_after(value, NOW) == seconds


@pytest.mark.parametrize(
    ("attempt", "ceiling"),
    [(1, 0.05), (2, 0.1), (3, 0.2), (5, 0.8), (6, 1.0), (10_000, 1.0)],
)
def test_backoff_doubles_from_base_up_to_the_cap(attempt: int, ceiling: float) -> None:
    policy = RetryPolicy(base=0.05, cap=1.0)
    assert backoff(attempt, policy, Fixed(1.0)) == pytest.approx(ceiling)
    assert backoff(attempt, policy, Fixed(0.0)) == 0.0


@given(
    st.integers(1, 5_000),
    st.floats(0.0, 10.0),
    st.floats(0.0, 10.0),
    st.integers(0, 2**32),
)
def test_backoff_is_never_negative_and_never_above_the_cap(
    attempt: int, base: float, cap: float, seed: int
) -> None:
    policy = RetryPolicy(base=base, cap=cap)
    delay = backoff(attempt, policy, random.Random(seed))
    assert 0.0 <= delay <= min(cap, base * 2.0 ** min(attempt - 1, 64))


DEFAULTS: dict[str, object] = {
    "attempt": 1,
    "policy": RetryPolicy(attempts=3, base=0.05, cap=1.0),
    "retry": TRANSIENT,
    "retry_after_s": None,
    "remaining": 10.0,
    "sent_body": False,
    "side_effect_free": True,
}


@pytest.mark.parametrize(
    ("changes", "delay"),
    [
        ({}, 0.025),
        ({"attempt": 2}, 0.05),
        ({"retry": PERMANENT}, None),
        ({"retry": NO}, None),
        ({"attempt": 3}, None),  # the last allowed attempt failed
        ({"attempt": 4}, None),
        ({"policy": RetryPolicy(attempts=1)}, None),
        ({"sent_body": True, "side_effect_free": False}, None),  # could act twice
        ({"sent_body": True}, 0.025),  # side-effect free: safe to send again
        ({"side_effect_free": False}, 0.025),  # connect error: nothing was sent
        ({"retry_after_s": 2.0}, 2.0),
        ({"retry_after_s": 0.01}, 0.025),  # backoff is longer than Retry-After
        ({"retry_after_s": 0.0}, 0.025),
        ({"retry_after_s": 20.0}, None),  # Retry-After past the deadline: no retry
        ({"retry_after_s": 10.0}, None),  # would leave no time for the attempt
        ({"remaining": 0.02}, None),  # even the backoff does not fit
        ({"remaining": 0.0}, None),
        ({"remaining": -1.0}, None),
    ],
)
def test_next_delay_retries_only_transient_safe_failures_within_attempts_and_deadline(
    changes: dict[str, object], delay: float | None
) -> None:
    args = {**DEFAULTS, **changes}
    assert next_delay(**args, rng=Fixed(0.5)) == (  # type: ignore[arg-type]
        pytest.approx(delay) if delay is not None else None
    )


def test_next_delay_draws_no_random_number_when_it_will_not_retry() -> None:
    rng = random.Random(7)
    before = rng.getstate()
    assert next_delay(1, RetryPolicy(), PERMANENT, None, 10.0, False, True, rng) is None
    assert rng.getstate() == before


@pytest.mark.parametrize(
    "kwargs", [{"attempts": 0}, {"base": -0.1}, {"cap": -1.0}, {"cap": float("inf")}]
)
def test_a_nonsensical_retry_policy_is_rejected_at_construction(
    kwargs: dict[str, float],
) -> None:
    with pytest.raises(ValueError):
        RetryPolicy(**kwargs)  # type: ignore[arg-type]
