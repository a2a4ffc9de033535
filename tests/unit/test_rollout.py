"""Rollout controller core: gates, step() and apply() as tables, plus one property."""

from __future__ import annotations

import json
import math
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from proxy.rollout import (
    Command,
    Gates,
    RolloutPolicy,
    RolloutState,
    Stage,
    WindowStats,
    apply,
    evaluate_gates,
    measurement_failed,
    next_target,
    step,
    wilson_lower_bound,
)

NOW = 1000.0
POLICY = RolloutPolicy()
GOOD = WindowStats(
    samples=400,
    matches=400,
    agent_calls=400,
    agent_served=50,
    agent_p95=0.2,
    legacy_p95=0.1,
)
BAD = WindowStats(  # agreement bound 0.826: fails; everything else passes
    samples=100, matches=90, agent_calls=100, agent_served=50, agent_p95=0.2, legacy_p95=0.1
)
SHADOW = RolloutState()
CANARY_5 = RolloutState(Stage.CANARY, 5.0, 1)
CANARY_10 = RolloutState(Stage.CANARY, 10.0, 2)
PRIMARY = RolloutState(Stage.PRIMARY, 100.0)
AUTONOMOUS = RolloutState(Stage.AUTONOMOUS, 100.0)
AWAITING_25 = RolloutState(Stage.AWAITING_APPROVAL, 10.0, pending=(Stage.CANARY, 25.0))
PAUSED_5 = RolloutState(Stage.PAUSED, 5.0, resume_to=(Stage.CANARY, 5.0, 1))
ROLLED_BACK = RolloutState(Stage.ROLLED_BACK, 0.0, consecutive_failures=3, cumulative_failures=7)


def gate(stats: WindowStats, name: str, gates: Gates | None = None, serving: bool = True) -> Any:
    results = evaluate_gates(stats, gates or Gates(), serving=serving)
    found = [g for g in results if g.name == name]
    return found[0] if found else None


@pytest.mark.parametrize(
    ("successes", "n", "expected"),
    [
        (0, 0, 0.0),
        (0, 10, 0.0),
        (1, 1, 0.2065),
        (10, 10, 0.7225),
        (50, 100, 0.4038),
        (90, 100, 0.8256),
        (95, 100, 0.8882),
        (100, 100, 0.9630),
        (981, 1000, 0.9705),
    ],
)
def test_wilson_lower_bound_matches_published_values(
    successes: int, n: int, expected: float
) -> None:
    assert wilson_lower_bound(successes, n) == pytest.approx(expected, abs=1e-4)


@pytest.mark.parametrize(("successes", "n"), [(-1, 10), (11, 10), (1, 0)])
def test_wilson_lower_bound_rejects_impossible_counts(successes: int, n: int) -> None:
    with pytest.raises(ValueError):
        wilson_lower_bound(successes, n)


@pytest.mark.parametrize(
    ("stats", "name", "serving", "value", "ok"),
    [
        (WindowStats(samples=100, matches=100), "samples", True, 100.0, True),
        (WindowStats(samples=37, matches=37), "samples", True, 37.0, None),
        (WindowStats(samples=100, matches=100), "agreement", True, 0.963, True),
        (WindowStats(samples=100, matches=90), "agreement", True, 0.8256, False),
        (WindowStats(samples=10, matches=10), "agreement", True, 0.7225, None),
        (WindowStats(), "agreement", True, None, None),
        (WindowStats(agent_calls=100, agent_errors=5), "error_rate", True, 0.05, True),
        (WindowStats(agent_calls=100, agent_errors=6), "error_rate", True, 0.06, False),
        (WindowStats(), "error_rate", True, None, None),
        (WindowStats(agent_served=50, fallbacks=1), "fallback_rate", True, 0.02, True),
        (WindowStats(agent_served=50, fallbacks=10), "fallback_rate", True, 0.2, False),
        (WindowStats(), "fallback_rate", True, None, None),
        (WindowStats(agent_served=50, fallbacks=10), "fallback_rate", False, 0.2, None),
        (WindowStats(agent_p95=0.3, legacy_p95=0.1), "latency_ratio", True, 3.0, True),
        (WindowStats(agent_p95=0.4, legacy_p95=0.1), "latency_ratio", True, 4.0, False),
        (WindowStats(agent_p95=0.4), "latency_ratio", True, None, None),
        (WindowStats(legacy_p95=0.1), "latency_ratio", True, None, None),
        (WindowStats(agent_p95=0.4, legacy_p95=0.0), "latency_ratio", True, None, None),
    ],
)
def test_each_gate_passes_fails_or_reports_no_data(
    stats: WindowStats, name: str, serving: bool, value: float | None, ok: bool | None
) -> None:
    result = gate(stats, name, serving=serving)
    assert result.value == (None if value is None else pytest.approx(value, abs=1e-4))
    assert result.ok is ok


def test_latency_gate_is_skipped_when_disabled() -> None:
    stats = WindowStats(agent_p95=9.0, legacy_p95=0.1)
    assert gate(stats, "latency_ratio", Gates(max_latency_ratio=None)) is None


@pytest.mark.parametrize(
    ("stats", "reason"),
    [
        (WindowStats(), "insufficient data: 0 of 100 samples"),
        (WindowStats(samples=37, matches=37), "insufficient data: 37 of 100 samples"),
        (
            WindowStats(samples=37, matches=0, agent_calls=90, agent_errors=90),
            "insufficient data: 37 of 100 samples",
        ),
        (
            WindowStats(samples=100, matches=100),
            "no data for error_rate, fallback_rate, latency_ratio",
        ),
        (
            WindowStats(samples=100, matches=100, agent_calls=100, agent_served=5),
            "no data for latency_ratio",
        ),
    ],
)
def test_missing_data_holds_and_never_counts_a_failure(stats: WindowStats, reason: str) -> None:
    state = RolloutState(Stage.CANARY, 5.0, 1, consecutive_failures=1, cumulative_failures=2)
    new, decision = step(state, stats, POLICY, NOW)
    assert new == state
    assert (decision.action, decision.reason, decision.changed) == ("hold", reason, False)
    assert decision.gates


def test_fallback_gate_does_not_block_while_the_agent_serves_no_live_traffic() -> None:
    stats = WindowStats(samples=100, matches=100, agent_calls=100, agent_p95=1, legacy_p95=1)
    new, decision = step(SHADOW, stats, POLICY, NOW)
    assert (new.stage, new.percent, decision.action) == (Stage.CANARY, 1.0, "promote")


def test_good_evidence_climbs_from_shadow_through_every_step_to_primary() -> None:
    state, seen = SHADOW, []
    for tick in range(8):
        state, decision = step(state, GOOD, POLICY, NOW + tick)
        seen.append((state.stage, state.percent, state.step_index, decision.action))
        assert decision.reason
        assert state.since == (NOW + tick if decision.changed else state.since)
    assert seen == [
        (Stage.CANARY, 1.0, 0, "promote"),
        (Stage.CANARY, 5.0, 1, "promote"),
        (Stage.CANARY, 10.0, 2, "promote"),
        (Stage.CANARY, 25.0, 3, "promote"),
        (Stage.CANARY, 50.0, 4, "promote"),
        (Stage.PRIMARY, 100.0, -1, "promote"),
        (Stage.PRIMARY, 100.0, -1, "hold"),
        (Stage.PRIMARY, 100.0, -1, "hold"),
    ]


def test_a_step_needing_approval_waits_for_a_human_and_then_enters_it() -> None:
    policy = RolloutPolicy(approval=frozenset({25.0, 100.0}))
    waiting, decision = step(CANARY_10, GOOD, policy, NOW)
    assert (waiting.stage, waiting.percent, waiting.pending) == (
        Stage.AWAITING_APPROVAL,
        10.0,
        (Stage.CANARY, 25.0),
    )
    assert (decision.action, waiting.since) == ("await_approval", NOW)
    assert "canary 25% needs an operator's approval" in decision.reason
    still, decision = step(waiting, GOOD, policy, NOW + 1)
    assert (still, decision.action) == (waiting, "hold")
    assert decision.reason == "awaiting approval to enter canary 25%"
    approved, decision = apply(waiting, Command.APPROVE, policy, NOW + 2)
    assert (approved.stage, approved.percent, approved.step_index) == (Stage.CANARY, 25.0, 3)
    assert (approved.pending, approved.since, decision.action) == (None, NOW + 2, "promote")


@pytest.mark.parametrize("approval", [frozenset(), frozenset({100.0})])
def test_autonomous_always_needs_approval_even_with_good_evidence(
    approval: frozenset[float],
) -> None:
    policy = RolloutPolicy(autonomous=True, approval=approval)
    waiting, decision = step(PRIMARY, GOOD, policy, NOW)
    assert (waiting.stage, waiting.percent) == (Stage.AWAITING_APPROVAL, 100.0)
    assert waiting.pending == (Stage.AUTONOMOUS, 100.0)
    assert decision.action == "await_approval"
    final, _ = apply(waiting, Command.APPROVE, policy, NOW + 1)
    assert (final.stage, final.percent) == (Stage.AUTONOMOUS, 100.0)
    assert step(final, GOOD, policy, NOW + 2)[1].action == "hold"


def test_consecutive_failures_roll_back_at_the_limit_naming_gate_and_counts() -> None:
    state, reasons = CANARY_5, []
    for tick in range(3):
        state, decision = step(state, BAD, POLICY, NOW + tick)
        reasons.append((decision.action, decision.reason))
    gate_text = "agreement 0.826 (Wilson lower bound) below 0.95"
    assert reasons == [
        ("fail", f"{gate_text} (1 of 3 consecutive, 1 of 10 cumulative failures)"),
        ("fail", f"{gate_text} (2 of 3 consecutive, 2 of 10 cumulative failures)"),
        ("rollback", f"rolled back: {gate_text} (3 of 3 consecutive, 3 of 10 cumulative failures)"),
    ]
    assert (state.stage, state.percent, state.step_index) == (Stage.ROLLED_BACK, 0.0, -1)
    assert (state.since, state.reason) == (NOW + 2, reasons[-1][1])


def test_cumulative_failures_roll_back_even_with_successes_in_between() -> None:
    policy = RolloutPolicy(max_cumulative_failures=3)
    state, actions = SHADOW, []
    for stats in (BAD, GOOD, BAD, GOOD, BAD):
        state, decision = step(state, stats, policy, NOW)
        actions.append((decision.action, state.consecutive_failures, state.cumulative_failures))
    assert actions == [
        ("fail", 1, 1),
        ("promote", 0, 1),
        ("fail", 1, 2),
        ("promote", 0, 2),
        ("rollback", 1, 3),
    ]
    assert state.stage is Stage.ROLLED_BACK


def test_several_failing_gates_are_all_named() -> None:
    stats = WindowStats(100, 100, 100, 10, 50, 0, agent_p95=0.4, legacy_p95=0.1)
    _, decision = step(CANARY_5, stats, POLICY, NOW)
    assert decision.reason.startswith("error_rate 0.1 above 0.05; latency_ratio 4 above 3 (1 of 3")


def test_on_failure_hold_pauses_at_the_current_share_and_resumes_there() -> None:
    policy = RolloutPolicy(on_failure="hold", max_consecutive_failures=1)
    paused, decision = step(CANARY_5, BAD, policy, NOW)
    assert (paused.stage, paused.percent, decision.action) == (Stage.PAUSED, 5.0, "pause")
    assert paused.resume_to == (Stage.CANARY, 5.0, 1)
    assert decision.reason.startswith("paused at 5%: agreement")
    assert step(paused, GOOD, policy, NOW + 1)[0] == paused
    resumed, decision = apply(paused, Command.RESUME, policy, NOW + 2)
    assert (resumed.stage, resumed.percent, resumed.step_index) == (Stage.CANARY, 5.0, 1)
    assert (resumed.consecutive_failures, resumed.cumulative_failures) == (0, 1)


@pytest.mark.parametrize("stats", [GOOD, BAD, WindowStats()])
@pytest.mark.parametrize("state", [SHADOW, CANARY_5, PRIMARY])
def test_manual_mode_never_moves(state: RolloutState, stats: WindowStats) -> None:
    new, decision = step(state, stats, RolloutPolicy(auto=False), NOW)
    assert (new, decision.action, decision.reason) == (state, "hold", "manual mode")
    assert decision.gates


@pytest.mark.parametrize(
    ("state", "reason"),
    [
        (PAUSED_5, "paused: waiting for an operator to resume"),
        (ROLLED_BACK, "rolled back: waiting for an operator to resume from shadow"),
    ],
)
@pytest.mark.parametrize("stats", [GOOD, BAD])
def test_paused_and_rolled_back_routes_hold_but_still_report_gates(
    state: RolloutState, reason: str, stats: WindowStats
) -> None:
    new, decision = step(state, stats, POLICY, NOW)
    assert (new, decision.action, decision.reason) == (state, "hold", reason)
    assert decision.gates == evaluate_gates(stats, POLICY.gates, serving=state.percent > 0)


AUTO = RolloutPolicy(autonomous=True)


@pytest.mark.parametrize(
    ("state", "command", "percent", "policy", "where", "action"),
    [
        (SHADOW, Command.PROMOTE, None, POLICY, (Stage.CANARY, 1.0, 0), "promote"),
        (CANARY_5, Command.PROMOTE, None, POLICY, (Stage.CANARY, 10.0, 2), "promote"),
        (RolloutState(Stage.CANARY, 50.0, 4), Command.PROMOTE, None, POLICY, PRIMARY, "promote"),
        (PRIMARY, Command.PROMOTE, None, POLICY, PRIMARY, "hold"),
        (PRIMARY, Command.PROMOTE, None, AUTO, AUTONOMOUS, "promote"),
        (AUTONOMOUS, Command.PROMOTE, None, AUTO, AUTONOMOUS, "hold"),
        (AWAITING_25, Command.PROMOTE, None, POLICY, (Stage.CANARY, 25.0, 3), "promote"),
        (PAUSED_5, Command.PROMOTE, None, POLICY, PAUSED_5, "hold"),
        (ROLLED_BACK, Command.PROMOTE, None, POLICY, ROLLED_BACK, "hold"),
        (AWAITING_25, Command.APPROVE, None, POLICY, (Stage.CANARY, 25.0, 3), "promote"),
        (CANARY_5, Command.APPROVE, None, POLICY, CANARY_5, "hold"),
        (CANARY_5, Command.ROLLBACK, None, POLICY, ROLLED_BACK, "rollback"),
        (AUTONOMOUS, Command.ROLLBACK, None, POLICY, ROLLED_BACK, "rollback"),
        (ROLLED_BACK, Command.ROLLBACK, None, POLICY, ROLLED_BACK, "hold"),
        (CANARY_5, Command.PAUSE, None, POLICY, PAUSED_5, "pause"),
        (PAUSED_5, Command.PAUSE, None, POLICY, PAUSED_5, "hold"),
        (ROLLED_BACK, Command.PAUSE, None, POLICY, ROLLED_BACK, "hold"),
        (PAUSED_5, Command.RESUME, None, POLICY, CANARY_5, "resume"),
        (ROLLED_BACK, Command.RESUME, None, POLICY, SHADOW, "resume"),
        (CANARY_5, Command.RESUME, None, POLICY, CANARY_5, "hold"),
        (CANARY_5, Command.SET, 0.0, POLICY, SHADOW, "set"),
        (CANARY_5, Command.SET, 100.0, POLICY, PRIMARY, "set"),
        (AUTONOMOUS, Command.SET, 100.0, POLICY, PRIMARY, "set"),
        (SHADOW, Command.SET, 0.5, POLICY, (Stage.CANARY, 0.5, -1), "set"),
        (SHADOW, Command.SET, 7, POLICY, (Stage.CANARY, 7.0, 1), "set"),
        (ROLLED_BACK, Command.SET, 5.0, POLICY, CANARY_5, "set"),
        (AWAITING_25, Command.SET, 50.0, POLICY, (Stage.CANARY, 50.0, 4), "set"),
        (CANARY_5, "promote", None, POLICY, CANARY_10, "promote"),
    ],
)
def test_every_command_moves_or_holds_with_a_reason(
    state: RolloutState,
    command: Command,
    percent: float | None,
    policy: RolloutPolicy,
    where: RolloutState | tuple[Stage, float, int],
    action: str,
) -> None:
    expected = where if isinstance(where, tuple) else (where.stage, where.percent, where.step_index)
    new, decision = apply(state, command, policy, NOW, percent)
    assert (new.stage, new.percent, new.step_index) == expected
    assert decision.action == action
    assert decision.reason
    assert (decision.from_stage, decision.to_stage) == (state.stage, new.stage)
    if action == "hold":
        assert new == state
    else:
        assert (new.since, new.reason) == (NOW, decision.reason)
    assert new.pending is None or new.stage is Stage.AWAITING_APPROVAL


def test_pause_remembers_where_an_approval_wait_stood() -> None:
    paused, _ = apply(AWAITING_25, Command.PAUSE, POLICY, NOW)
    assert (paused.stage, paused.percent, paused.resume_to) == (
        Stage.PAUSED,
        10.0,
        (Stage.CANARY, 10.0, 2),
    )


def test_resume_after_rollback_restarts_from_shadow_with_both_counters_reset() -> None:
    new, _ = apply(ROLLED_BACK, Command.RESUME, POLICY, NOW)
    assert (new.consecutive_failures, new.cumulative_failures, new.since) == (0, 0, NOW)


def test_a_share_set_between_steps_promotes_to_the_next_step_above_it() -> None:
    state, _ = apply(SHADOW, Command.SET, POLICY, NOW, 0.5)
    assert next_target(state, POLICY) == (Stage.CANARY, 1.0, 0)
    state, _ = apply(SHADOW, Command.SET, POLICY, NOW, 7.0)
    assert next_target(state, POLICY) == (Stage.CANARY, 10.0, 2)


@pytest.mark.parametrize(
    ("command", "percent"),
    [
        (Command.SET, None),
        (Command.SET, -1.0),
        (Command.SET, 100.5),
        (Command.SET, math.nan),
        (Command.PROMOTE, 5.0),
        ("jump", None),
    ],
)
def test_bad_commands_raise_value_error(command: Command, percent: float | None) -> None:
    with pytest.raises(ValueError):
        apply(CANARY_5, command, POLICY, NOW, percent)


@pytest.mark.parametrize(
    "state",
    [
        SHADOW,
        CANARY_5,
        AWAITING_25,
        PAUSED_5,
        ROLLED_BACK,
        RolloutState(Stage.CANARY, 0.5, -1, since=12.25, reason="share set to canary 0.5%"),
    ],
)
def test_state_survives_a_json_round_trip(state: RolloutState) -> None:
    assert RolloutState.from_dict(json.loads(json.dumps(state.to_dict()))) == state


VALID = CANARY_5.to_dict()


@pytest.mark.parametrize(
    "data",
    [
        None,
        [],
        "canary",
        {},
        {k: v for k, v in VALID.items() if k != "stage"},
        {**VALID, "stage": "bogus"},
        {**VALID, "percent": "5"},
        {**VALID, "percent": True},
        {**VALID, "percent": 0.0},
        {**VALID, "percent": 101.0},
        {**VALID, "step_index": 1.5},
        {**VALID, "step_index": -2},
        {**VALID, "consecutive_failures": -1},
        {**VALID, "since": math.nan},
        {**VALID, "reason": ""},
        {**VALID, "reason": 7},
        {**VALID, "pending": ["canary", 10.0]},
        {**VALID, "stage": "awaiting_approval", "step_index": -1, "pending": ["canary"]},
        {**VALID, "stage": "awaiting_approval", "step_index": -1, "pending": None},
        {**VALID, "stage": "paused", "step_index": -1, "resume_to": ["paused", 5.0, 1]},
        {**VALID, "stage": "shadow", "percent": 5.0, "step_index": -1},
    ],
)
def test_from_dict_rejects_garbage_with_value_error(data: Any) -> None:
    with pytest.raises(ValueError):
        RolloutState.from_dict(data)


@pytest.mark.parametrize(
    "kwargs",
    [
        {"steps": (5.0, 1.0)},
        {"steps": (0.0, 5.0)},
        {"steps": (5.0, 100.0)},
        {"approval": frozenset({0.0})},
        {"max_consecutive_failures": 0},
        {"gates": {"min_samples": 0}},
        {"gates": {"min_agreement": 1.5}},
        {"gates": {"max_latency_ratio": 0.0}},
    ],
)
def test_an_impossible_policy_is_refused_when_built(kwargs: dict[str, Any]) -> None:
    with pytest.raises(ValueError):
        if "gates" in kwargs:
            Gates(**kwargs["gates"])
        else:
            RolloutPolicy(**kwargs)


@pytest.mark.parametrize(
    "kwargs",
    [{"samples": 1, "matches": 2}, {"agent_calls": 1, "agent_errors": 2}, {"fallbacks": 1}],
)
def test_impossible_window_stats_are_refused_when_built(kwargs: dict[str, int]) -> None:
    with pytest.raises(ValueError):
        WindowStats(**kwargs)


@st.composite
def window_stats(draw: st.DrawFn) -> WindowStats:
    def pair(limit: int) -> tuple[int, int]:
        whole = draw(st.integers(0, limit))
        part = draw(st.integers(0, whole) | st.integers(0, min(whole, 3)))
        return whole, part

    samples, misses = pair(300)
    calls, errors = pair(300)
    served, fallbacks = pair(100)
    p95 = st.none() | st.floats(0.0, 5.0)
    return WindowStats(
        samples, samples - misses, calls, errors, served, fallbacks, draw(p95), draw(p95)
    )


POLICIES = [
    POLICY,
    RolloutPolicy(approval=frozenset({5.0, 100.0}), autonomous=True),
    RolloutPolicy(on_failure="hold", max_consecutive_failures=1, max_cumulative_failures=2),
    RolloutPolicy(steps=(0.5, 50.0), gates=Gates(min_samples=10, max_latency_ratio=None)),
    RolloutPolicy(auto=False),
]
COMMANDS = st.tuples(st.sampled_from(list(Command)), st.floats(0.0, 100.0))


@settings(max_examples=300, deadline=None)
@given(
    policy=st.sampled_from(POLICIES),
    events=st.lists(window_stats() | COMMANDS, max_size=40),
)
def test_step_never_raises_keeps_share_in_range_and_never_promotes_without_samples(
    policy: RolloutPolicy, events: list[WindowStats | tuple[Command, float]]
) -> None:
    state = RolloutState()
    for tick, event in enumerate(events):
        now = NOW + tick
        if isinstance(event, tuple):
            command, share = event
            state, decision = apply(
                state, command, policy, now, share if command == "set" else None
            )
        else:
            before = state
            state, decision = step(state, event, policy, now)
            if event.samples < policy.gates.min_samples:
                assert decision.action not in ("promote", "await_approval")
                assert state.percent <= before.percent
        assert 0.0 <= state.percent <= 100.0
        assert decision.reason
        assert state.since == now or not decision.changed


def test_awaiting_approval_holds_on_good_evidence() -> None:
    new, decision = step(AWAITING_25, GOOD, POLICY, NOW)
    assert (new, decision.action) == (AWAITING_25, "hold")
    assert decision.reason == "awaiting approval to enter canary 25%"


def test_failures_still_count_while_awaiting_approval_and_can_roll_back() -> None:
    """The agent keeps serving its share while a human decides, so bad evidence still counts."""
    policy = RolloutPolicy(max_consecutive_failures=1)
    new, decision = step(AWAITING_25, BAD, policy, NOW)
    assert (new.stage, new.percent, new.pending, decision.action) == (
        Stage.ROLLED_BACK,
        0.0,
        None,
        "rollback",
    )


def test_an_agent_that_fails_every_call_is_rolled_back_without_any_comparison() -> None:
    """No comparisons ever decide, but the error rate has its own evidence."""
    failing = WindowStats(samples=0, agent_calls=150, agent_errors=150)
    policy = RolloutPolicy(max_consecutive_failures=2)
    state, first = step(CANARY_5, failing, policy, NOW)
    assert first.action == "fail" and "error_rate" in first.reason
    state, second = step(state, failing, policy, NOW + 1)
    assert (state.stage, second.action) == (Stage.ROLLED_BACK, "rollback")


def test_a_few_errors_on_a_few_calls_are_not_yet_a_failure() -> None:
    few = WindowStats(samples=3, matches=3, agent_calls=4, agent_errors=2)
    new, decision = step(CANARY_5, few, POLICY, NOW)
    assert (new, decision.action) == (CANARY_5, "hold")


@pytest.mark.parametrize(
    ("state", "policy", "action", "stage"),
    [
        (RolloutState(Stage.CANARY, 5.0, 1), RolloutPolicy(), "fail", Stage.CANARY),
        (
            RolloutState(Stage.CANARY, 5.0, 1, consecutive_failures=2, cumulative_failures=2),
            RolloutPolicy(),
            "rollback",
            Stage.ROLLED_BACK,
        ),
        (ROLLED_BACK, RolloutPolicy(), "hold", Stage.ROLLED_BACK),
        (RolloutState(Stage.CANARY, 5.0, 1), RolloutPolicy(auto=False), "hold", Stage.CANARY),
    ],
)
def test_a_failed_measurement_counts_like_a_failed_gate_where_the_rollout_moves(
    state: RolloutState, policy: RolloutPolicy, action: str, stage: Stage
) -> None:
    new, decision = measurement_failed(state, policy, 9.0, "4 queries in a row failed")
    assert (decision.action, new.stage) == (action, stage)
    assert "4 queries in a row failed" in decision.reason
    counted = action in ("fail", "rollback")
    assert new.cumulative_failures == state.cumulative_failures + counted
