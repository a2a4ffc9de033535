"""The rollout driver: feeds each route's evidence to the pure ``step()`` every
interval, applies admin commands, and publishes the result — the share the
live path reads, the gauges, a log event per transition, the state file.

All decisions live in ``proxy.rollout``; this file only moves data around.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, Protocol

import structlog

from proxy import statefile
from proxy.analysis import LocalAnalysis
from proxy.breaker import BreakerState
from proxy.errors import AnalysisError, CoordinationError
from proxy.metrics import Metrics
from proxy.rollout import (
    Command,
    Decision,
    RolloutPolicy,
    RolloutState,
    Stage,
    WindowStats,
    apply,
    measurement_failed,
    step,
)
from proxy.routing import RouteRuntime, Routing, conform

log = structlog.get_logger("proxy.rollout")

_TICK = 0.25  # seconds between checks for due routes; each route keeps its own interval

Change = Callable[[RolloutState], tuple[RolloutState, Decision]]
Kept = tuple[RolloutState, Decision] | None


class UnknownRouteError(KeyError):
    """An admin command named a route without a rollout."""


class Analysis(Protocol):
    """Where the gates' window statistics come from (``proxy.analysis``)."""

    name: str
    max_consecutive_errors: int

    async def start(self) -> None: ...

    async def close(self) -> None: ...

    async def measure(self, rt: RouteRuntime, since: float, now: float) -> WindowStats:
        """The evidence since ``since``; AnalysisError when it cannot be measured."""


class Coordination(Protocol):
    """Who decides, and where a decision is kept: this process (``LocalCoordination``)
    or the fleet (``proxy.fleet.Fleet``)."""

    name: str

    def leading(self) -> bool: ...

    def version(self, route: str) -> int | None: ...

    def status(self) -> dict[str, Any]: ...

    async def update(self, rt: RouteRuntime, change: Change, *, as_leader: bool) -> Kept:
        """``change`` applied to the route's current state, kept: ``(state, decision)``, or
        None when the controller should decide again later. CoordinationError: not kept."""


class LocalCoordination:
    """One process: it always leads, and its own state is the state."""

    name = "local"

    def leading(self) -> bool:
        return True

    def version(self, route: str) -> int | None:
        return None

    def status(self) -> dict[str, Any]:
        return {"replica": None, "leader": True, "connected": True}

    async def update(self, rt: RouteRuntime, change: Change, *, as_leader: bool) -> Kept:
        return change(rt.state)


class Controller:
    def __init__(
        self,
        routing: Callable[[], Routing],
        metrics: Metrics,
        state_file: Path | None,
        clock: Callable[[], float] = time.monotonic,
        analysis: Analysis | None = None,
    ) -> None:
        self.routing = routing  # a getter: a reload swaps the routing it returns
        self._metrics = metrics
        self._state_file = state_file
        self._clock = clock
        self.analysis: Analysis = analysis or LocalAnalysis()
        self.coordination: Coordination = LocalCoordination()
        self.last: dict[str, Decision] = {}
        self._breakers: dict[str, BreakerState] = {}

    async def run(self, stop: asyncio.Event) -> None:
        self.publish_all()
        while not stop.is_set():
            try:
                await asyncio.wait_for(stop.wait(), timeout=_TICK)
            except TimeoutError:
                await self.tick(self._clock())

    async def tick(self, now: float) -> list[Decision]:
        """Evaluate every route whose interval has passed (on the leader only)."""
        decisions = []
        leading = self.coordination.leading()
        for rt in list(self.routing().runtimes.values()):
            self._publish_breaker(rt, now)
            if not leading or rt.policy is None or now - rt.last_evaluated < rt.interval:
                continue
            rt.last_evaluated = now
            decision = await self._evaluate(rt, rt.policy, now)
            if decision is not None:
                decisions.append(decision)
        return decisions

    async def _evaluate(
        self, rt: RouteRuntime, policy: RolloutPolicy, now: float
    ) -> Decision | None:
        # Each failure is counted on fresh evidence: without this, one bad
        # minute inside a five-minute window would count at every tick.
        measured = rt.state
        since = max(measured.since, rt.judged_until)
        try:
            stats = await self.analysis.measure(rt, since, now)
        except AnalysisError as exc:
            return await self._unmeasured(rt, policy, now, str(exc))
        rt.analysis_errors = 0

        def judge(state: RolloutState) -> tuple[RolloutState, Decision]:
            if _position(state) != _position(measured):  # an operator moved it meanwhile
                reason = "the stage changed while the evidence was measured; judged next time"
                return state, Decision("hold", reason, state.stage, state.stage)
            return step(state, stats, policy, now)

        return await self._change(rt, judge, now)

    async def _unmeasured(
        self, rt: RouteRuntime, policy: RolloutPolicy, now: float, error: str
    ) -> Decision | None:
        """A failed measurement holds; enough of them in a row count as one failed interval."""
        self._metrics.analysis_error(rt.name)
        rt.analysis_errors = errors = rt.analysis_errors + 1
        limit = self.analysis.max_consecutive_errors
        log.warning("analysis_failed", route=rt.name, error=error, consecutive=errors, limit=limit)
        if errors < limit:
            reason = f"measurement failed ({errors} of {limit} in a row): {error}"
            self.last[rt.name] = decision = Decision("hold", reason, rt.state.stage, rt.state.stage)
            return decision
        rt.analysis_errors = 0
        what = f"{limit} queries in a row failed, the last: {error}"
        change: Change = lambda state: measurement_failed(state, policy, now, what)  # noqa: E731
        return await self._change(rt, change, now)

    async def _change(
        self, rt: RouteRuntime, change: Change, now: float, by: str = "controller"
    ) -> Decision | None:
        try:
            kept = await self.coordination.update(rt, change, as_leader=by == "controller")
        except CoordinationError:
            if by != "controller":
                raise
            return None  # fail static: the coordination has logged and counted it
        if kept is None:
            return None
        new, decision = kept
        current = self.routing().runtime(rt.name) or rt  # a reload may have swapped it
        if by == "controller" and decision.action in ("fail", "rollback", "pause"):
            current.judged_until = now
        if self._publish(current, new, decision, by):
            self.save()
        return decision

    async def command(self, route: str, command: Command, percent: float | None = None) -> Decision:
        """An operator's command; ValueError for a bad percent, CoordinationError when the
        fleet's state cannot be reached."""
        rt = self.routing().runtime(route)
        if rt is None or rt.policy is None:
            raise UnknownRouteError(route)
        policy, now = rt.policy, self._clock()
        apply(rt.state, command, policy, now, percent)  # a bad percent fails before any I/O
        change: Change = lambda state: apply(state, command, policy, now, percent)  # noqa: E731
        decision = await self._change(rt, change, now, by="operator")
        assert decision is not None  # only the controller's own writes can be dropped
        return decision

    def adopt(self, rt: RouteRuntime, state: RolloutState, by: str) -> None:
        """A state another replica decided (fleet mode): serve it, show it, say so.
        This replica's config still bounds it (no autonomous stage it does not allow)."""
        if rt.policy is not None:
            state = conform(state, rt.policy, self._clock())
        old, rt.state = rt.state, state
        self._metrics.rollout(rt.name, state.stage, state.percent, Stage)
        if (old.stage, old.percent) != (state.stage, state.percent):
            log.info(
                "fleet_state_applied",
                route=rt.name,
                by=by,
                from_stage=old.stage.value,
                to_stage=state.stage.value,
                from_percent=old.percent,
                to_percent=state.percent,
                reason=state.reason,
            )

    def publish_all(self) -> None:
        now = self._clock()
        for rt in self.routing().runtimes.values():
            self._publish_breaker(rt, now)
            if rt.policy is not None:
                self._metrics.rollout(rt.name, rt.state.stage, rt.percent, Stage)

    def _publish(
        self, rt: RouteRuntime, new: RolloutState, decision: Decision, by: str = "controller"
    ) -> bool:
        old = rt.state
        rt.state = new
        self.last[rt.name] = decision
        for gate in decision.gates:
            self._metrics.gate(rt.name, gate.name, gate.value, gate.threshold)
        self._metrics.rollout(rt.name, new.stage, new.percent, Stage)
        if not decision.changed:
            if decision.action == "fail":
                log.warning("rollout_gate_failed", route=rt.name, reason=decision.reason)
            return new != old
        self._metrics.transition(rt.name, old.stage, new.stage, decision.action)
        emit = log.warning if decision.action in ("rollback", "pause") else log.info
        emit(
            "rollout_transition",
            route=rt.name,
            by=by,
            action=decision.action,
            from_stage=old.stage.value,
            to_stage=new.stage.value,
            from_percent=old.percent,
            to_percent=new.percent,
            reason=decision.reason,
        )
        return True

    def _publish_breaker(self, rt: RouteRuntime, now: float) -> None:
        if rt.breaker is None:
            return
        state = rt.breaker.state(now)
        before = self._breakers.get(rt.name, BreakerState.CLOSED)
        self._breakers[rt.name] = state
        self._metrics.circuit(rt.name, state, BreakerState)
        if state is not before:
            log.warning(
                "circuit_state",
                route=rt.name,
                from_state=before.value,
                to_state=state.value,
            )

    def save(self) -> None:
        if self._state_file is None:
            return
        routes = {n: rt.saved() for n, rt in self.routing().runtimes.items() if rt.policy}
        try:
            statefile.save(self._state_file, routes)
        except OSError as exc:
            log.error("state_file_write_failed", path=str(self._state_file), error=str(exc))


def _position(state: RolloutState) -> tuple[object, ...]:
    return state.stage, state.percent, state.pending, state.resume_to
