"""Every Prometheus series the proxy exports, built on an injected registry.

Label values come from closed sets: route names from config (plus
``unmatched``), backend in {legacy, agent}, mode in {live, shadow}, outcomes
and verdicts from enums, and mismatch paths capped per route with the rest
counted as ``other``. Label children are cached so the hot path does a dict
lookup, not a label-tuple validation, per observation.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, disable_created_metrics
from prometheus_client.platform_collector import PlatformCollector
from prometheus_client.process_collector import ProcessCollector

from comparators import Comparison, Verdict
from proxy.agentmetrics import AgentMetrics
from proxy.agreement import RollingAgreement
from proxy.children import LabelChildren
from proxy.fallback import FallbackReason
from proxy.redaction import path_label
from proxy.types import Mode, ShadowOutcome

LATENCY_BUCKETS = (
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0,
)  # fmt: skip
OVERHEAD_BUCKETS = (
    0.00005, 0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1,
)  # fmt: skip
SCORE_BUCKETS = (0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 0.95, 0.99, 1.0)
OTHER_PATH = "other"
FLEET_OPERATIONS = ("read", "write", "lease", "subscribe")  # CoordinationError.operation


def status_class(status: int) -> str:
    return f"{status // 100}xx" if 100 <= status <= 599 else "other"


class Metrics:
    def __init__(
        self,
        registry: CollectorRegistry,
        routes: Sequence[str],
        *,
        mismatch_paths_per_route: int = 50,
        agreement_window: int = 200,
    ) -> None:
        self.registry = registry
        p = "shadow_proxy_"
        r = registry
        self._requests = Counter(
            p + "requests", "Live requests answered to clients, by the backend that served them.",
            ["route", "backend", "status_class"], registry=r,
        )  # fmt: skip
        self._upstream = Histogram(
            p + "upstream_duration_seconds", "Upstream exchange time, request to last byte.",
            ["route", "backend", "mode"], buckets=LATENCY_BUCKETS, registry=r,
        )  # fmt: skip
        self._upstream_errors = Counter(
            p + "upstream_errors", "Upstream exchanges that produced no usable answer.",
            ["route", "backend", "mode", "kind"], registry=r,
        )  # fmt: skip
        self._overhead = Histogram(
            p + "overhead_seconds", "Time spent in the proxy itself, upstream wait excluded.",
            ["route"], buckets=OVERHEAD_BUCKETS, registry=r,
        )  # fmt: skip
        self._rejected = Counter(
            p + "rejected_requests", "Requests refused by the proxy itself.",
            ["route", "reason"], registry=r,
        )  # fmt: skip
        self._shadow = Counter(
            p + "shadow_requests", "Shadow requests by outcome.", ["route", "outcome"], registry=r
        )
        self.shadow_in_flight = Gauge(
            p + "shadow_in_flight", "Shadow requests currently in flight.", registry=r
        )
        self._comparisons = Counter(
            p + "comparisons", "Comparisons by verdict.", ["route", "verdict"], registry=r
        )
        self._score = Histogram(
            p + "comparison_score", "Comparison score, 0 (nothing alike) to 1 (identical).",
            ["route"], buckets=SCORE_BUCKETS, registry=r,
        )  # fmt: skip
        self._agreement_gauge = Gauge(
            p + "agreement_ratio", "Matches over decided comparisons in the rolling window.",
            ["route"], registry=r,
        )  # fmt: skip
        self._mismatch = Counter(
            p + "mismatch_fields", "Differences by field path (indices folded to [*]).",
            ["route", "path"], registry=r,
        )  # fmt: skip
        self._percent = Gauge(
            p + "rollout_percent", "Share of live traffic the agent serves.", ["route"], registry=r
        )
        self._stage = Gauge(
            p + "rollout_stage", "1 for the route's current rollout stage.",
            ["route", "stage"], registry=r,
        )  # fmt: skip
        self._gate_value = Gauge(
            p + "rollout_gate_value", "Each gate's current value (NaN: no data).",
            ["route", "gate"], registry=r,
        )  # fmt: skip
        self._gate_threshold = Gauge(
            p + "rollout_gate_threshold", "Each gate's threshold.", ["route", "gate"], registry=r
        )
        self._transitions = Counter(
            p + "rollout_transitions", "Rollout stage changes by cause.",
            ["route", "from_stage", "to_stage", "reason"], registry=r,
        )  # fmt: skip
        self._fallbacks = Counter(
            p + "fallbacks", "Agent-chosen requests answered by legacy, by cause.",
            ["route", "reason"], registry=r,
        )  # fmt: skip
        self._circuit = Gauge(
            p + "circuit_state", "1 for the agent circuit breaker's current state.",
            ["route", "state"], registry=r,
        )  # fmt: skip
        self._retries = Counter(
            p + "retries", "Agent calls retried after a transient failure.", ["route"], registry=r
        )
        self._agent_calls = Counter(
            p + "agent_calls", "Agent calls as the rollout gates judge them: ok, or error"
            " (no answer, or a 5xx).", ["route", "mode", "result"], registry=r,
        )  # fmt: skip
        self._agent_served = Counter(
            p + "agent_served", "Live requests the split gave the agent, by who answered:"
            " agent, or legacy after a fallback.", ["route", "result"], registry=r,
        )  # fmt: skip
        self._analysis_errors = Counter(
            p + "analysis_errors", "Gate measurements that failed (a PromQL query error).",
            ["route"], registry=r,
        )  # fmt: skip
        self.fleet_connected = Gauge(
            p + "fleet_connected", "1 while this replica reaches the fleet's Redis.", registry=r
        )
        self.fleet_leader = Gauge(
            p + "fleet_leader", "1 while this replica holds the lease and runs the rollout.",
            registry=r,
        )  # fmt: skip
        self._fleet_errors = Counter(
            p + "fleet_errors", "Redis operations that failed, by operation.", ["operation"],
            registry=r,
        )  # fmt: skip
        self._reloads = Counter(
            p + "config_reloads", "Config file reloads by result.", ["result"], registry=r
        )
        self.agent = AgentMetrics(registry, agreement_window)  # tokens, tools, noise...
        self._paths_cap = mismatch_paths_per_route
        self._paths: dict[str, set[str]] = {}
        self._agreement_size = agreement_window
        self._agreement = {name: RollingAgreement(agreement_window) for name in routes}
        self._child = LabelChildren()
        for operation in FLEET_OPERATIONS:
            self._child(self._fleet_errors, operation)
        self._prime(routes)

    @classmethod
    def for_process(cls, routes: Sequence[str], **kwargs: Any) -> Metrics:
        """A fresh registry that also exports the process's CPU, memory and fds.

        Also turns off prometheus_client's ``*_created`` series (a process-wide
        switch, hence here at the edge): they double the exposition for a
        timestamp nobody queries.
        """
        disable_created_metrics()  # type: ignore[no-untyped-call]
        registry = CollectorRegistry()
        ProcessCollector(registry=registry)
        PlatformCollector(registry=registry)
        return cls(registry, routes, **kwargs)

    def add_routes(self, routes: Iterable[str]) -> None:
        """Routes that appeared in a reloaded config get their series and window."""
        new = [r for r in routes if r not in self._agreement]
        for route in new:
            self._agreement[route] = RollingAgreement(self._agreement_size)
        self._prime(new)

    def forget_rollout(self, route: str) -> None:
        """A reload removed the route's rollout: its gauges must not linger at old values."""
        gauges = (self._percent, self._stage, self._gate_value, self._gate_threshold)
        self._child.forget_route(gauges, route)

    def _prime(self, routes: Iterable[str]) -> None:
        """Create every known series at zero so rates work from the first scrape."""
        for route in routes:
            for outcome in ShadowOutcome:
                self._child(self._shadow, route, outcome.value)
            for verdict in Verdict:
                self._child(self._comparisons, route, verdict.value)
            self._child(self._overhead, route)

    def request(self, route: str, backend: str, status: int) -> None:
        self._child(self._requests, route, backend, status_class(status)).inc()

    def upstream(self, route: str, backend: str, mode: Mode, seconds: float) -> None:
        self._child(self._upstream, route, backend, mode.value).observe(seconds)

    def upstream_error(self, route: str, backend: str, mode: Mode, kind: str) -> None:
        self._child(self._upstream_errors, route, backend, mode.value, kind).inc()

    def overhead(self, route: str, seconds: float) -> None:
        self._child(self._overhead, route).observe(seconds)

    def rejected(self, route: str, reason: str) -> None:
        self._child(self._rejected, route, reason).inc()

    def shadow(self, route: str, outcome: ShadowOutcome) -> None:
        self._child(self._shadow, route, outcome.value).inc()

    def comparison(self, route: str, result: Comparison) -> None:
        self._child(self._comparisons, route, result.verdict.value).inc()
        if result.verdict not in (Verdict.MATCH, Verdict.MISMATCH):
            return
        self._child(self._score, route).observe(result.score)
        window = self._agreement.get(route)
        if window is not None:
            window.add(result.verdict is Verdict.MATCH)
            self._child(self._agreement_gauge, route).set(window.ratio())
        for path in {self._path_label(route, d.path) for d in result.differences}:
            self._child(self._mismatch, route, path).inc()

    def rollout(self, route: str, stage: str, percent: float, stages: Iterable[str]) -> None:
        if not self._child.has(self._percent, route):
            # A route under rollout can fall back: its fallback series start at zero,
            # so that rate() and increase() see the very first one.
            for reason in FallbackReason:
                self._child(self._fallbacks, route, reason.value)
            for mode in Mode:
                for result in ("ok", "error"):
                    self._child(self._agent_calls, route, mode.value, result)
            for served in ("agent", "fallback"):
                self._child(self._agent_served, route, served)
            self._child(self._analysis_errors, route)
        self._child(self._percent, route).set(percent)
        for name in stages:
            self._child(self._stage, route, name).set(1 if name == stage else 0)

    def gate(self, route: str, gate: str, value: float | None, threshold: float) -> None:
        self._child(self._gate_value, route, gate).set(math.nan if value is None else value)
        self._child(self._gate_threshold, route, gate).set(threshold)

    def transition(self, route: str, from_stage: str, to_stage: str, reason: str) -> None:
        self._child(self._transitions, route, from_stage, to_stage, reason).inc()

    def fallback(self, route: str, reason: str) -> None:
        self._child(self._fallbacks, route, reason).inc()

    def circuit(self, route: str, state: str, states: Iterable[str]) -> None:
        for name in states:
            self._child(self._circuit, route, name).set(1 if name == state else 0)

    def agent_call(self, route: str, mode: Mode, ok: bool) -> None:
        self._child(self._agent_calls, route, mode.value, "ok" if ok else "error").inc()

    def agent_served(self, route: str, fallback: bool) -> None:
        self._child(self._agent_served, route, "fallback" if fallback else "agent").inc()

    def analysis_error(self, route: str) -> None:
        self._child(self._analysis_errors, route).inc()

    def fleet_error(self, operation: str) -> None:
        self._child(self._fleet_errors, operation).inc()

    def retry(self, route: str) -> None:
        self._child(self._retries, route).inc()

    def reload(self, result: str) -> None:
        self._child(self._reloads, result).inc()

    def agreement(self, route: str) -> RollingAgreement | None:
        return self._agreement.get(route)

    def _path_label(self, route: str, path: str) -> str:
        label = path_label(path)
        seen = self._paths.setdefault(route, set())
        if label in seen:
            return label
        if len(seen) < self._paths_cap:
            seen.add(label)
            return label
        return OTHER_PATH
