"""Rollout controller core: where a route's live traffic goes next, and why (pure).

A thin async driver calls ``step()`` every interval with the evidence gathered since the last
transition, and ``apply()`` when a human sends a command. Neither reads a clock nor does I/O, so
every decision can be replayed from a table. Only evidence moves the share: missing data holds,
it never promotes and never counts as a failure.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field, replace
from enum import StrEnum
from itertools import pairwise
from typing import Any, Literal

from proxy.gates import GateResult, Gates, WindowStats, evaluate_gates, wilson_lower_bound

__all__ = [
    "Command",
    "Decision",
    "GateResult",
    "Gates",
    "RolloutPolicy",
    "RolloutState",
    "Stage",
    "WindowStats",
    "apply",
    "evaluate_gates",
    "measurement_failed",
    "next_target",
    "step",
    "wilson_lower_bound",
]


class Stage(StrEnum):
    SHADOW = "shadow"
    CANARY = "canary"
    PRIMARY = "primary"
    AUTONOMOUS = "autonomous"
    PAUSED = "paused"
    AWAITING_APPROVAL = "awaiting_approval"
    ROLLED_BACK = "rolled_back"


Position = tuple[Stage, float, int]  # (stage, percent, step_index)


class Command(StrEnum):
    PROMOTE = "promote"
    ROLLBACK = "rollback"
    PAUSE = "pause"
    RESUME = "resume"
    APPROVE = "approve"
    SET = "set"


_LIVE = frozenset({Stage.SHADOW, Stage.CANARY, Stage.PRIMARY, Stage.AUTONOMOUS})
_FIXED_PERCENT = {
    Stage.SHADOW: 0.0,
    Stage.ROLLED_BACK: 0.0,
    Stage.PRIMARY: 100.0,
    Stage.AUTONOMOUS: 100.0,
}


def _require(ok: bool, message: str) -> None:
    if not ok:
        raise ValueError(message)


@dataclass(frozen=True, slots=True)
class RolloutPolicy:
    auto: bool = True
    steps: tuple[float, ...] = (1.0, 5.0, 10.0, 25.0, 50.0)
    approval: frozenset[float] = frozenset()
    autonomous: bool = False
    gates: Gates = field(default_factory=Gates)
    max_consecutive_failures: int = 3
    max_cumulative_failures: int = 10
    on_failure: Literal["rollback", "hold"] = "rollback"

    def __post_init__(self) -> None:
        steps = self.steps
        _require(all(0.0 < s < 100.0 for s in steps), "steps must be in (0, 100)")
        _require(all(a < b for a, b in pairwise(steps)), "steps must increase")
        _require(all(0.0 < a <= 100.0 for a in self.approval), "approvals must be in (0, 100]")
        _require(self.max_consecutive_failures >= 1, "max_consecutive_failures must be >= 1")
        _require(self.max_cumulative_failures >= 1, "max_cumulative_failures must be >= 1")
        _require(self.on_failure in ("rollback", "hold"), "on_failure: rollback or hold")


def _check_position(stage: Stage, percent: float, what: str) -> None:
    _require(0.0 <= percent <= 100.0, f"{what}: percent must be in [0, 100]")
    if stage is Stage.CANARY:
        _require(0.0 < percent < 100.0, f"{what}: canary percent must be in (0, 100)")
    elif stage in _FIXED_PERCENT:
        _require(percent == _FIXED_PERCENT[stage], f"{what}: {stage} must be at {percent:g}%")


@dataclass(frozen=True, slots=True)
class RolloutState:
    """Invariants are enforced on construction, so a hand-edited state file cannot sneak in a
    canary at 0% or an approval wait with nowhere to go."""

    stage: Stage = Stage.SHADOW
    percent: float = 0.0
    step_index: int = -1
    pending: tuple[Stage, float] | None = None
    resume_to: tuple[Stage, float, int] | None = None
    consecutive_failures: int = 0
    cumulative_failures: int = 0
    since: float = 0.0
    reason: str = "initial"

    def __post_init__(self) -> None:
        _check_position(self.stage, self.percent, "state")
        _require(self.step_index >= -1, "step_index must be >= -1")
        _require(self.stage is Stage.CANARY or self.step_index == -1, "step_index outside canary")
        waiting = self.stage is Stage.AWAITING_APPROVAL
        _require((self.pending is not None) == waiting, "pending iff awaiting_approval")
        if self.pending is not None:
            _require(self.pending[0] in _LIVE - {Stage.SHADOW}, "pending must be a live stage")
            _check_position(*self.pending, "pending")
        paused = self.stage is Stage.PAUSED
        _require((self.resume_to is not None) == paused, "resume_to iff paused")
        if self.resume_to is not None:
            _require(self.resume_to[0] in _LIVE, "resume_to must be a live stage")
            _check_position(self.resume_to[0], self.resume_to[1], "resume_to")
        _require(min(self.consecutive_failures, self.cumulative_failures) >= 0, "counts >= 0")
        _require(math.isfinite(self.since) and bool(self.reason), "since finite, reason set")

    def to_dict(self) -> dict[str, Any]:
        pending, resume = self.pending, self.resume_to
        return {
            "stage": self.stage.value,
            "percent": self.percent,
            "step_index": self.step_index,
            "pending": None if pending is None else [pending[0].value, pending[1]],
            "resume_to": None if resume is None else [resume[0].value, resume[1], resume[2]],
            "consecutive_failures": self.consecutive_failures,
            "cumulative_failures": self.cumulative_failures,
            "since": self.since,
            "reason": self.reason,
        }

    @classmethod
    def from_dict(cls, data: Any) -> RolloutState:
        """Reads what ``to_dict`` wrote (after JSON); anything else is a ValueError."""
        _require(isinstance(data, dict), "rollout state must be a JSON object")
        try:
            pending, resume = data["pending"], data["resume_to"]
            _require(pending is None or _sized(pending, 2), "pending must be [stage, percent]")
            _require(resume is None or _sized(resume, 3), "resume_to: [stage, percent, index]")
            _require(isinstance(data["reason"], str), "reason must be a string")
            return cls(
                stage=Stage(data["stage"]),
                percent=_number(data["percent"]),
                step_index=_integer(data["step_index"]),
                pending=None if pending is None else (Stage(pending[0]), _number(pending[1])),
                resume_to=None
                if resume is None
                else (Stage(resume[0]), _number(resume[1]), _integer(resume[2])),
                consecutive_failures=_integer(data["consecutive_failures"]),
                cumulative_failures=_integer(data["cumulative_failures"]),
                since=_number(data["since"]),
                reason=data["reason"],
            )
        except KeyError as exc:
            raise ValueError(f"rollout state lacks {exc}") from exc


def _sized(value: Any, size: int) -> bool:
    return isinstance(value, list | tuple) and len(value) == size


def _number(value: Any) -> float:
    _require(isinstance(value, int | float) and not isinstance(value, bool), "expected a number")
    return float(value)


def _integer(value: Any) -> int:
    _require(isinstance(value, int) and not isinstance(value, bool), "expected an integer")
    return int(value)


@dataclass(frozen=True, slots=True)
class Decision:
    action: str
    reason: str
    from_stage: Stage
    to_stage: Stage
    gates: tuple[GateResult, ...] = ()
    from_percent: float = 0.0
    to_percent: float = 0.0

    def __post_init__(self) -> None:
        _require(bool(self.reason), "a decision always says why")

    @property
    def changed(self) -> bool:
        return self.from_stage != self.to_stage or self.from_percent != self.to_percent


def _where(stage: Stage, percent: float) -> str:
    return f"{stage} {percent:g}%"


def _step_index(percent: float, steps: tuple[float, ...]) -> int:
    """Index of the largest step at or below ``percent``; -1 below the first step."""
    return max((i for i, s in enumerate(steps) if s <= percent), default=-1)


def _place(percent: float, policy: RolloutPolicy) -> Position:
    """The live position for a share: 0 is shadow, 100 primary, anything between canary."""
    if percent == 0.0:
        return Stage.SHADOW, 0.0, -1
    if percent == 100.0:
        return Stage.PRIMARY, 100.0, -1
    return Stage.CANARY, percent, _step_index(percent, policy.steps)


def _position(state: RolloutState, policy: RolloutPolicy) -> Position:
    if state.stage in _LIVE:
        return state.stage, state.percent, state.step_index
    if state.resume_to is not None:
        return state.resume_to
    return _place(state.percent, policy)


def next_target(state: RolloutState, policy: RolloutPolicy) -> Position | None:
    """Where a promotion leads; None when nothing is ahead (or the route is stopped). Canary
    moves to the first step above the current share, so a share set by hand (0.5%) or steps
    changed by a config reload still lead somewhere sensible."""
    stage, percent = state.stage, state.percent
    if state.pending is not None:
        target, share = state.pending
        if target is Stage.AUTONOMOUS and not policy.autonomous:
            return None  # the policy took the autonomous stage away meanwhile
        return target, share, _step_index(share, policy.steps) if target is Stage.CANARY else -1
    if stage in (Stage.SHADOW, Stage.CANARY):
        for index, share in enumerate(policy.steps):
            if share > percent:
                return Stage.CANARY, share, index
        return Stage.PRIMARY, 100.0, -1
    if stage is Stage.PRIMARY and policy.autonomous:
        return Stage.AUTONOMOUS, 100.0, -1
    return None


def _move(
    state: RolloutState,
    to: Position,
    now: float,
    reason: str,
    pending: tuple[Stage, float] | None = None,
    resume_to: Position | None = None,
) -> RolloutState:
    stage, percent, index = to
    return replace(
        state,
        stage=stage,
        percent=percent,
        step_index=index if stage is Stage.CANARY else -1,
        pending=pending,
        resume_to=resume_to,
        since=now,
        reason=reason,
    )


def _pause(state: RolloutState, policy: RolloutPolicy, now: float, reason: str) -> RolloutState:
    """Frozen at the current share; RESUME returns to the live position underneath."""
    to = (Stage.PAUSED, state.percent, -1)
    return _move(state, to, now, reason, resume_to=_position(state, policy))


def _decide(
    old: RolloutState,
    new: RolloutState,
    action: str,
    reason: str,
    gates: tuple[GateResult, ...] = (),
) -> tuple[RolloutState, Decision]:
    decision = Decision(action, reason, old.stage, new.stage, gates, old.percent, new.percent)
    return new, decision


def step(
    state: RolloutState, stats: WindowStats, policy: RolloutPolicy, now: float
) -> tuple[RolloutState, Decision]:
    """One interval's decision from the evidence since ``state.since``."""
    serving = state.percent > 0.0
    gates = evaluate_gates(stats, policy.gates, serving=serving)

    def hold(reason: str, new: RolloutState = state) -> tuple[RolloutState, Decision]:
        return _decide(state, new, "hold", reason, gates)

    if state.stage is Stage.PAUSED:
        return hold("paused: waiting for an operator to resume")
    if state.stage is Stage.ROLLED_BACK:
        return hold("rolled back: waiting for an operator to resume from shadow")
    if not policy.auto:
        return hold("manual mode")
    limits = policy.gates
    # An agent that fails every call produces no comparisons at all: its error
    # and fallback rates are judged on their own counts, so it is still stopped.
    # Waiting for approval does not stop the counting either: the agent keeps
    # serving its current share meanwhile.
    failed = [g for g in gates if g.ok is False and _judged(g, stats, limits.min_samples)]
    if failed:
        return _fail(state, "; ".join(g.describe() for g in failed), gates, policy, now)
    if state.pending is not None:
        return hold(f"awaiting approval to enter {_where(*state.pending)}")
    if stats.samples < limits.min_samples:
        return hold(f"insufficient data: {stats.samples} of {limits.min_samples} samples")
    blocking = [g for g in gates if serving or g.name != "fallback_rate"]
    missing = [g.name for g in blocking if g.ok is None]
    if missing:
        return hold(f"no data for {', '.join(missing)}")
    good = replace(state, consecutive_failures=0)  # cumulative failures are kept on purpose
    target = next_target(good, policy)
    if target is None:
        return hold(
            f"all gates passed; {_where(state.stage, state.percent)} is the last stage", good
        )
    stage, percent, _ = target
    if stage is Stage.AUTONOMOUS or percent in policy.approval:
        reason = f"all gates passed; {_where(stage, percent)} needs an operator's approval"
        to = (Stage.AWAITING_APPROVAL, state.percent, -1)
        new = _move(good, to, now, reason, pending=(stage, percent))
        return _decide(state, new, "await_approval", reason, gates)
    reason = f"all gates passed; promoted to {_where(stage, percent)}"
    return _decide(state, _move(good, target, now, reason), "promote", reason, gates)


def _judged(gate: GateResult, stats: WindowStats, min_samples: int) -> bool:
    """Whether a failing gate rests on enough evidence to count as a failure."""
    if gate.name == "error_rate":
        return stats.agent_calls >= min_samples
    if gate.name == "fallback_rate":
        return stats.agent_served >= min_samples
    return stats.samples >= min_samples


def measurement_failed(
    state: RolloutState, policy: RolloutPolicy, now: float, what: str
) -> tuple[RolloutState, Decision]:
    """The evidence could not be measured (a metrics query kept failing): one failed interval,
    like a failing gate, so a dead metrics backend cannot hold a bad agent in place forever."""
    if state.stage in (Stage.PAUSED, Stage.ROLLED_BACK) or not policy.auto:
        return _decide(state, state, "hold", f"measurement failed ({what}); nothing to stop")
    return _fail(state, f"measurement failed: {what}", (), policy, now)


def _fail(
    state: RolloutState,
    what: str,
    gates: tuple[GateResult, ...],
    policy: RolloutPolicy,
    now: float,
) -> tuple[RolloutState, Decision]:
    """Count a failed interval; at either limit, stop the rollout as the policy says."""
    consecutive, cumulative = state.consecutive_failures + 1, state.cumulative_failures + 1
    counted = replace(state, consecutive_failures=consecutive, cumulative_failures=cumulative)
    limits = policy.max_consecutive_failures, policy.max_cumulative_failures
    why = (
        f"{what} ({consecutive} of {limits[0]} consecutive,"
        f" {cumulative} of {limits[1]} cumulative failures)"
    )
    if consecutive < limits[0] and cumulative < limits[1]:
        return _decide(state, counted, "fail", why, gates)
    if policy.on_failure == "rollback":
        reason = f"rolled back: {why}"
        new = _move(counted, (Stage.ROLLED_BACK, 0.0, -1), now, reason)
        return _decide(state, new, "rollback", reason, gates)
    reason = f"paused at {state.percent:g}%: {why}"
    return _decide(state, _pause(counted, policy, now, reason), "pause", reason, gates)


def apply(
    state: RolloutState,
    command: Command,
    policy: RolloutPolicy,
    now: float,
    percent: float | None = None,
) -> tuple[RolloutState, Decision]:
    """A human's command. Commands that make no sense in the current stage are a "hold" with a
    reason rather than an exception: the admin API reports them, it does not crash on them."""
    command = Command(command)
    _require(percent is None or command is Command.SET, f"{command} takes no percent")
    stage, where = state.stage, _where(state.stage, state.percent)

    def noop(reason: str) -> tuple[RolloutState, Decision]:
        return _decide(state, state, "hold", reason)

    def move(
        to: Position, action: str, reason: str, cumulative: int = -1
    ) -> tuple[RolloutState, Decision]:
        # A human's decision starts a fresh consecutive count; only a restart clears the total.
        fresh = replace(state, consecutive_failures=0)
        if cumulative >= 0:
            fresh = replace(fresh, cumulative_failures=cumulative)
        return _decide(state, _move(fresh, to, now, reason), action, reason)

    if command is Command.SET:
        if percent is None or not 0.0 <= percent <= 100.0:
            raise ValueError(f"SET needs a percent in [0, 100], got {percent!r}")
        to = _place(float(percent), policy)
        return move(to, "set", f"share set to {_where(to[0], to[1])} by an operator")
    if command is Command.ROLLBACK:
        if stage is Stage.ROLLED_BACK:
            return noop("already rolled back")
        reason = f"rolled back from {where} by an operator"
        new = _move(state, (Stage.ROLLED_BACK, 0.0, -1), now, reason)
        return _decide(state, new, "rollback", reason)
    if command is Command.PAUSE:
        if stage in (Stage.PAUSED, Stage.ROLLED_BACK):
            return noop(f"already {stage}: nothing to pause")
        reason = f"paused at {state.percent:g}% by an operator"
        return _decide(state, _pause(state, policy, now, reason), "pause", reason)
    if command is Command.RESUME:
        if stage is Stage.PAUSED:
            to = _position(state, policy)
            return move(to, "resume", f"resumed at {_where(to[0], to[1])} by an operator")
        if stage is Stage.ROLLED_BACK:
            return move(_place(0.0, policy), "resume", "restarted from shadow by an operator", 0)
        return noop(f"{where} is neither paused nor rolled back: nothing to resume")
    if command is Command.APPROVE and stage is not Stage.AWAITING_APPROVAL:
        return noop(f"nothing awaits approval at {where}")
    target = next_target(state, policy)  # PROMOTE or APPROVE: a human's promote is an approval
    if target is None or stage in (Stage.PAUSED, Stage.ROLLED_BACK):
        return noop(f"nothing to promote to from {where}")
    verb = "approved" if command is Command.APPROVE else "promoted"
    return move(target, "promote", f"{verb} to {_where(target[0], target[1])} by an operator")
