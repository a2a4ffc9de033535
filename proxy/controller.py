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

import structlog

from proxy import statefile
from proxy.breaker import BreakerState
from proxy.metrics import Metrics
from proxy.rollout import Command, Decision, RolloutState, Stage, apply, step
from proxy.routing import RouteRuntime, Routing

log = structlog.get_logger("proxy.rollout")

_TICK = 0.25  # seconds between checks for due routes; each route keeps its own interval


class UnknownRouteError(KeyError):
    """An admin command named a route without a rollout."""


class Controller:
    def __init__(
        self,
        routing: Callable[[], Routing],
        metrics: Metrics,
        state_file: Path | None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.routing = routing  # a getter: a reload swaps the routing it returns
        self._metrics = metrics
        self._state_file = state_file
        self._clock = clock
        self.last: dict[str, Decision] = {}
        self._breakers: dict[str, BreakerState] = {}

    async def run(self, stop: asyncio.Event) -> None:
        self.publish_all()
        while not stop.is_set():
            try:
                await asyncio.wait_for(stop.wait(), timeout=_TICK)
            except TimeoutError:
                self.tick(self._clock())

    def tick(self, now: float) -> list[Decision]:
        """Evaluate every route whose interval has passed."""
        decisions = []
        changed = False
        for rt in self.routing().runtimes.values():
            self._publish_breaker(rt, now)
            if rt.policy is None or now - rt.last_evaluated < rt.interval:
                continue
            rt.last_evaluated = now
            # Each failure is counted on fresh evidence: without this, one bad
            # minute inside a five-minute window would count at every tick.
            stats = rt.window.stats(now, since=max(rt.state.since, rt.judged_until))
            new, decision = step(rt.state, stats, rt.policy, now)
            if decision.action in ("fail", "rollback", "pause"):
                rt.judged_until = now
            changed |= self._publish(rt, new, decision)
            decisions.append(decision)
        if changed:
            self.save()
        return decisions

    def command(self, route: str, command: Command, percent: float | None = None) -> Decision:
        """An operator's command; ValueError for a bad percent."""
        rt = self.routing().runtime(route)
        if rt is None or rt.policy is None:
            raise UnknownRouteError(route)
        now = self._clock()
        new, decision = apply(rt.state, command, rt.policy, now, percent)
        if self._publish(rt, new, decision, by="operator"):
            self.save()
        return decision

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
