"""The agent's circuit breaker: a pure state machine driven by results and time."""

from __future__ import annotations

import math

import pytest
from hypothesis import given
from hypothesis import strategies as st

from proxy.breaker import BreakerPolicy, BreakerState, CircuitBreaker

CLOSED, OPEN, HALF_OPEN = BreakerState.CLOSED, BreakerState.OPEN, BreakerState.HALF_OPEN
POLICY = BreakerPolicy(window=10.0, min_requests=4, failure_rate=0.5, cooldown=5.0, probes=2)


def feed(breaker: CircuitBreaker, outcomes: str, start: float = 0.0, step: float = 0.1) -> float:
    """Record ``o`` (ok) / ``x`` (failed) results ``step`` seconds apart; return the last time."""
    now = start
    for i, outcome in enumerate(outcomes):
        now = start + i * step
        breaker.record(outcome == "o", now)
    return now


def opened(at: float = 0.0) -> CircuitBreaker:
    breaker = CircuitBreaker(POLICY)
    feed(breaker, "xxxx", start=at, step=0.0)
    assert breaker.state(at) is OPEN
    return breaker


def half_open() -> tuple[CircuitBreaker, float]:
    breaker = opened()
    assert breaker.state(POLICY.cooldown) is HALF_OPEN
    return breaker, POLICY.cooldown


@pytest.mark.parametrize(
    ("outcomes", "state"),
    [
        ("", CLOSED),
        ("xxx", CLOSED),  # every request failed, but fewer than min_requests
        ("xxxx", OPEN),
        ("xxoo", OPEN),  # 2/4 is exactly the failure rate
        ("xooo", CLOSED),
        ("oooxx", CLOSED),  # 2/5 is below it
        ("oooxxx", OPEN),
        ("oooooooooo", CLOSED),
    ],
)
def test_the_breaker_opens_at_the_failure_rate_once_min_requests_are_seen(
    outcomes: str, state: BreakerState
) -> None:
    breaker = CircuitBreaker(POLICY)
    now = feed(breaker, outcomes)
    assert breaker.state(now) is state
    assert breaker.allow(now) is (state is CLOSED)


def test_record_returns_the_new_state_only_when_it_changed() -> None:
    breaker = CircuitBreaker(POLICY)
    assert [breaker.record(False, 1.0) for _ in range(5)] == [None, None, None, OPEN, None]
    assert breaker.opened_at == 1.0


@pytest.mark.parametrize(
    ("now", "state", "allowed"),
    [
        (0.0, OPEN, False),
        (4.999, OPEN, False),
        (5.0, HALF_OPEN, True),
        (60.0, HALF_OPEN, True),
    ],
)
def test_an_open_breaker_turns_half_open_once_the_cooldown_has_passed(
    now: float, state: BreakerState, allowed: bool
) -> None:
    breaker = opened()
    assert breaker.state(now) is state
    assert breaker.allow(now) is allowed


def test_results_recorded_while_open_are_ignored_as_late_answers() -> None:
    breaker = opened()
    assert [breaker.record(ok, 1.0) for ok in (True, True, True, False)] == [None] * 4
    assert breaker.opened_at == 0.0  # the cooldown did not restart
    assert breaker.state(POLICY.cooldown) is HALF_OPEN


def test_half_open_lets_through_at_most_probes_requests() -> None:
    breaker, now = half_open()
    assert [breaker.allow(now) for _ in range(4)] == [True, True, False, False]
    assert breaker.record(True, now) is None  # one probe answered: still counted as started
    assert breaker.allow(now) is False


def test_probes_successes_in_a_row_close_the_breaker_and_clear_the_window() -> None:
    breaker, now = half_open()
    assert breaker.allow(now) and breaker.allow(now)
    assert [breaker.record(True, now), breaker.record(True, now)] == [None, CLOSED]
    assert breaker.opened_at is None
    assert breaker.failure_ratio(now) is None  # the failures that opened it are gone
    feed(breaker, "xxx", start=now)
    assert breaker.state(now) is CLOSED  # a fresh count: three failures are below min_requests


@pytest.mark.parametrize("successes_first", [0, 1])
def test_a_failure_in_half_open_reopens_the_breaker_and_restarts_the_cooldown(
    successes_first: int,
) -> None:
    breaker, now = half_open()
    assert breaker.allow(now) and breaker.allow(now)
    for _ in range(successes_first):
        assert breaker.record(True, now) is None
    assert breaker.record(False, now + 1) is OPEN
    assert breaker.opened_at == now + 1
    assert breaker.allow(now + POLICY.cooldown) is False
    assert breaker.state(now + 1 + POLICY.cooldown) is HALF_OPEN


def test_results_in_half_open_without_a_probe_outstanding_are_ignored() -> None:
    breaker, now = half_open()
    assert breaker.record(False, now) is None  # sent before the breaker opened
    assert breaker.state(now) is HALF_OPEN
    assert breaker.allow(now)
    assert breaker.record(False, now) is OPEN


@pytest.mark.parametrize(
    ("later", "ratio"),
    [
        (0.5, 2 / 3),
        (10.0, 2 / 3),
        (10.99, 2 / 3),  # the bucket for second 0 still overlaps (0.99, 10.99]
        (11.0, 0.0),  # now it does not: only the later success is left
        (30.0, 0.0),
    ],
)
def test_old_buckets_expire_from_the_window(later: float, ratio: float) -> None:
    breaker = CircuitBreaker(POLICY)
    feed(breaker, "xx", step=0.0)
    breaker.record(True, later)
    assert breaker.failure_ratio(later) == pytest.approx(ratio)


def test_expired_failures_no_longer_count_toward_opening() -> None:
    breaker = CircuitBreaker(POLICY)
    feed(breaker, "xxx")
    now = feed(breaker, "oox", start=20.0)  # 1/3 in the window; with the old ones 4/6
    assert breaker.state(now) is CLOSED
    assert breaker.failure_ratio(now) == pytest.approx(1 / 3)


@pytest.mark.parametrize(
    "kwargs",
    [
        {"window": 0.0},
        {"window": math.inf},
        {"min_requests": 0},
        {"failure_rate": 0.0},
        {"failure_rate": 1.5},
        {"cooldown": -1.0},
        {"probes": 0},
    ],
)
def test_a_nonsensical_policy_is_rejected_at_construction(kwargs: dict[str, float]) -> None:
    with pytest.raises(ValueError):
        BreakerPolicy(**kwargs)  # type: ignore[arg-type]


# One step of a random history: ("allow" | "ok" | "fail", seconds since the previous step).
steps = st.lists(
    st.tuples(st.sampled_from(["allow", "ok", "fail"]), st.floats(0.0, 3.0)), max_size=200
)


@given(steps)
def test_the_breaker_never_allows_while_open_before_the_cooldown(
    history: list[tuple[str, float]],
) -> None:
    breaker = CircuitBreaker(POLICY)
    now = 0.0
    opened_at: float | None = None
    for action, dt in history:
        now += dt
        if opened_at is not None and now - opened_at < POLICY.cooldown:
            assert breaker.allow(now) is False
            assert breaker.state(now) is OPEN
        if action == "allow":
            breaker.allow(now)
        elif breaker.record(action == "ok", now) is OPEN:
            opened_at = now
            assert breaker.opened_at == now


@given(steps, st.floats(0.5, 20.0))
def test_the_window_never_holds_more_than_ceil_window_plus_one_buckets(
    history: list[tuple[str, float]], window: float
) -> None:
    breaker = CircuitBreaker(BreakerPolicy(window=window, min_requests=10_000))
    now = 0.0
    for _, dt in history:
        now += dt
        breaker.record(True, now)
        assert len(breaker._buckets) <= math.ceil(window) + 1  # white-box: the memory bound
