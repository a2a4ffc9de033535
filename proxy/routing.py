"""The routing the live path reads: the compiled route table, and each route's
runtime — its agent share, circuit breaker, evidence window and policies.

Swapped as a whole on a config reload (one attribute assignment, so a request
sees either the old routing or the new, never a mix). A route that survives a
reload keeps its rollout state, breaker and evidence; only its policies change.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, replace
from typing import Any

import structlog

from proxy.breaker import BreakerState, CircuitBreaker
from proxy.fallback import FallbackPolicy
from proxy.metrics import Metrics
from proxy.retry import RetryPolicy
from proxy.rollout import Command, RolloutPolicy, RolloutState, Stage, apply
from proxy.routes import RouteTable
from proxy.sampling import Sampler
from proxy.settings import Route, Settings
from proxy.types import Mode
from proxy.window import EvidenceWindow

log = structlog.get_logger("proxy.routing")


@dataclass(slots=True)
class RouteRuntime:
    """What changes while a route serves."""

    name: str
    policy: RolloutPolicy | None  # None: the agent never serves this route live
    state: RolloutState
    config_percent: float  # the config's share this state started from
    interval: float
    window: EvidenceWindow
    breaker: CircuitBreaker | None
    splitter: Sampler
    fallback: FallbackPolicy
    fallback_enabled: bool
    streamed: bool
    max_buffer: int
    retry: RetryPolicy
    last_evaluated: float = 0.0
    judged_until: float = 0.0  # evidence before this has already counted as a failure
    analysis_errors: int = 0  # measurements that failed in a row

    @property
    def percent(self) -> float:
        return self.state.percent if self.policy is not None else 0.0

    @property
    def autonomous(self) -> bool:
        return self.state.stage is Stage.AUTONOMOUS

    def agent_allowed(self, now: float) -> bool:
        return self.breaker is None or self.breaker.allow(now)

    def agent_open(self, now: float) -> bool:
        """Breaker open: shadowing pauses too (no probes are spent on it)."""
        return self.breaker is not None and self.breaker.state(now) is BreakerState.OPEN

    def agent_result(
        self, ok: bool, latency: float | None, now: float, mode: Mode, metrics: Metrics
    ) -> BreakerState | None:
        """One agent call as the gates judge it, in both places they read it from: this
        process's window (and the breaker), and the counter a fleet's PromQL sums."""
        self.window.agent_call(ok, latency, now)
        metrics.agent_call(self.name, mode, ok)
        return self.breaker.record(ok, now) if self.breaker is not None else None

    def served(self, fallback: bool, now: float, metrics: Metrics) -> None:
        """The split gave the agent a live request; ``fallback``: legacy answered it."""
        self.window.served(fallback, now)
        metrics.agent_served(self.name, fallback)

    def agent_cancelled(self, now: float) -> None:
        """A call abandoned mid-flight (its client left, or shutdown). A half-open
        breaker waits for its probes' results and would wait forever: the call
        proved nothing, so it counts as failed and the cooldown restarts. Closed,
        the breaker is not told: a client leaving says nothing about the agent."""
        breaker = self.breaker
        if breaker is not None and breaker.state(now) is BreakerState.HALF_OPEN:
            breaker.record(False, now)

    def saved(self) -> dict[str, Any]:
        return {"state": self.state.to_dict(), "config_percent": self.config_percent}


def _initial_state(
    route: Route, policy: RolloutPolicy, saved: Mapping[str, Any] | None, now: float
) -> tuple[RolloutState, str]:
    """Where a route starts: the state file, unless the config's share was edited."""
    assert route.rollout is not None
    configured = route.rollout.percent
    if isinstance(saved, Mapping) and saved.get("config_percent") == configured:
        try:
            state = RolloutState.from_dict(saved.get("state"))
        except ValueError as exc:  # a bad entry costs this route its history, not the start
            log.error("state_file_entry_ignored", route=route.name, error=str(exc))
        else:
            return replace(state, since=now), "state file"  # evidence restarts with the process
    state, _ = apply(RolloutState(since=now), Command.SET, policy, now, configured)
    return replace(state, reason=f"started at {configured:g}% from the config"), "config"


def conform(state: RolloutState, policy: RolloutPolicy, now: float) -> RolloutState:
    """A config that no longer allows the autonomous stage takes it away at once,
    whatever the state file or the previous config said."""
    autonomous = state.stage is Stage.AUTONOMOUS
    pending = state.pending is not None and state.pending[0] is Stage.AUTONOMOUS
    if policy.autonomous or not (autonomous or pending):
        return state
    new, _ = apply(state, Command.SET, policy, now, state.percent)
    return replace(new, reason="the config no longer allows the autonomous stage")


def build_runtime(
    route: Route,
    previous: RouteRuntime | None,
    saved: Mapping[str, Any] | None,
    now: float,
) -> RouteRuntime:
    rollout = route.rollout
    policy = rollout.to_policy() if rollout is not None else None
    configured = rollout.percent if rollout is not None else 0.0
    if policy is None:
        state = RolloutState(since=now, reason="no rollout configured")
    elif previous is not None and previous.policy is not None:
        state = previous.state
        if previous.config_percent != configured:  # the config's share was edited: it wins
            state, _ = apply(state, Command.SET, policy, now, configured)
            state = replace(state, reason=f"set to {configured:g}% by a config change")
    else:
        state, _ = _initial_state(route, policy, saved, now)
    if policy is not None:
        state = conform(state, policy, now)
    span = rollout.window if rollout is not None else 300.0
    window = previous.window if previous and previous.window.span == span else None
    breaker_policy = route.breaker.to_policy() if route.breaker.enabled else None
    breaker = previous.breaker if previous else None
    if breaker_policy is None:
        breaker = None
    elif breaker is None or breaker.policy != breaker_policy:
        breaker = CircuitBreaker(breaker_policy)
    return RouteRuntime(
        name=route.name,
        policy=policy,
        state=state,
        config_percent=configured,
        interval=rollout.interval if rollout is not None else 0.0,
        window=window or EvidenceWindow(span),
        breaker=breaker,
        splitter=Sampler(f"live:{route.name}", 0.0, route.sticky_key),
        fallback=route.fallback.to_policy(),
        fallback_enabled=route.fallback.enabled,
        streamed=route.fallback.mode == "streamed",
        max_buffer=route.fallback.max_buffer,
        retry=route.retries.to_policy(),
        last_evaluated=previous.last_evaluated if previous else now,
        judged_until=previous.judged_until if previous else 0.0,
        analysis_errors=previous.analysis_errors if previous else 0,
    )


class Routing:
    def __init__(
        self,
        settings: Settings,
        saved: Mapping[str, Mapping[str, Any]] | None = None,
        now: float = 0.0,
        previous: Routing | None = None,
    ) -> None:
        self.settings = settings
        self.table = RouteTable.from_settings(settings)
        before = previous.runtimes if previous is not None else {}
        self.runtimes: dict[str, RouteRuntime] = {
            r.name: build_runtime(r, before.get(r.name), (saved or {}).get(r.name), now)
            for r in settings.routes
        }

    def runtime(self, name: str) -> RouteRuntime | None:
        return self.runtimes.get(name)
