"""The rollout part of the demo's live summary: per route, the stage, the
agent's share, each gate against its threshold, fallbacks by reason and the
breaker — read from the proxy's own metrics, like a dashboard would."""

from __future__ import annotations

import math
from collections import defaultdict
from typing import Any

from prometheus_client import CollectorRegistry


def render_rollout(registry: CollectorRegistry) -> str:
    stage: dict[str, str] = {}
    percent: dict[str, float] = {}
    gates: dict[str, dict[str, list[float]]] = defaultdict(
        lambda: defaultdict(lambda: [math.nan] * 2)
    )
    fallbacks: dict[str, dict[str, float]] = defaultdict(dict)
    circuit: dict[str, str] = {}
    for metric in registry.collect():
        for s in metric.samples:
            labels: dict[str, Any] = s.labels
            route = labels.get("route", "")
            if s.name == "shadow_proxy_rollout_stage" and s.value == 1:
                stage[route] = labels["stage"]
            elif s.name == "shadow_proxy_rollout_percent":
                percent[route] = s.value
            elif s.name == "shadow_proxy_rollout_gate_value":
                gates[route][labels["gate"]][0] = s.value
            elif s.name == "shadow_proxy_rollout_gate_threshold":
                gates[route][labels["gate"]][1] = s.value
            elif s.name == "shadow_proxy_fallbacks_total" and s.value:
                fallbacks[route][labels["reason"]] = s.value
            elif s.name == "shadow_proxy_circuit_state" and s.value == 1:
                circuit[route] = labels["state"]
    lines = []
    for route in sorted(percent):
        lines.append(
            f"rollout      {route}: {stage.get(route, '?')} {percent[route]:g}%"
            f"  breaker {circuit.get(route, 'off')}"
        )
        shown = []
        for name, (value, threshold) in sorted(gates[route].items()):
            text = "no data" if math.isnan(value) else f"{value:.3g}"
            shown.append(f"{name} {text} (limit {threshold:g})")
        if shown:
            lines.append("  gates      " + ", ".join(shown))
        if fallbacks[route]:
            by_reason = ", ".join(f"{r} {int(n)}" for r, n in sorted(fallbacks[route].items()))
            lines.append(f"  fallbacks  {by_reason}")
    return "\n".join(lines)
