"""The rollout driver and the route runtime around the pure step(): fresh
evidence per failure, config that takes a stage away, bad state-file entries."""

from __future__ import annotations

from typing import Any

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.parser import text_string_to_metric_families

from proxy.controller import Controller
from proxy.fallback import FallbackReason
from proxy.metrics import Metrics
from proxy.rollout import RolloutState, Stage
from proxy.routing import Routing
from proxy.settings import settings_from


def settings(**rollout: Any) -> Any:
    return settings_from(
        {
            "backends": {"legacy": {"url": "http://l"}, "agent": {"url": "http://a"}},
            "routes": [
                {
                    "name": "api",
                    "match": {"prefix": "/"},
                    "rollout": {
                        "interval": "10s",
                        "window": "300s",
                        "gates": {"min_samples": 10, "max_latency_ratio": None},
                        **rollout,
                    },
                }
            ],
        }
    )


def controller(routing: Routing) -> Controller:
    metrics = Metrics(CollectorRegistry(), ["api", "unmatched"])
    return Controller(lambda: routing, metrics, None)


async def test_one_bad_patch_of_evidence_counts_as_one_failure_not_three() -> None:
    """A 300 s window judged every 10 s would otherwise re-count the same bad
    minute at every tick and roll back on a single blip."""
    routing = Routing(settings(percent=5), now=0.0)
    rt = routing.runtimes["api"]
    drive = controller(routing)
    for t in range(1, 13):  # a bad patch: every comparison disagrees
        rt.window.comparison(False, float(t))
        rt.window.agent_call(True, 0.01, float(t))
    await drive.tick(13.0)
    assert rt.state.consecutive_failures == 1
    for t in range(14, 60):  # then quiet: no new evidence at all
        await drive.tick(float(t))
    assert rt.state.stage is Stage.CANARY
    assert rt.state.consecutive_failures == 1


def test_a_config_without_autonomous_takes_the_stage_away_on_reload() -> None:
    routing = Routing(settings(autonomous=True), now=0.0)
    rt = routing.runtimes["api"]
    rt.state = RolloutState(stage=Stage.AUTONOMOUS, percent=100.0)
    reloaded = Routing(settings(autonomous=False), now=1.0, previous=routing)
    state = reloaded.runtimes["api"].state
    assert (state.stage, state.percent) == (Stage.PRIMARY, 100.0)
    assert "no longer allows" in state.reason


def test_a_pending_autonomous_approval_is_dropped_when_the_config_disallows_it() -> None:
    routing = Routing(settings(autonomous=True), now=0.0)
    rt = routing.runtimes["api"]
    rt.state = RolloutState(
        stage=Stage.AWAITING_APPROVAL, percent=100.0, pending=(Stage.AUTONOMOUS, 100.0)
    )
    reloaded = Routing(settings(autonomous=False), now=1.0, previous=routing)
    assert reloaded.runtimes["api"].state.stage is Stage.PRIMARY


def test_a_bad_state_file_entry_starts_that_route_from_the_config() -> None:
    for entry in ({"config_percent": 10.0, "state": {"stage": "nope"}},
                  {"config_percent": 10.0}, "garbage", None):  # fmt: skip
        routing = Routing(settings(percent=10), saved={"api": entry}, now=0.0)
        assert routing.runtimes["api"].state.percent == 10.0


def test_a_route_under_rollout_exports_its_fallback_series_from_zero() -> None:
    """Prometheus' increase() cannot see a counter's first increment if the
    series is born at 1: the first fallback would be invisible to alerts."""
    routing = Routing(settings(percent=5), now=0.0)
    registry = CollectorRegistry()
    Controller(lambda: routing, Metrics(registry, ["api"]), None).publish_all()
    text = generate_latest(registry).decode()
    fallbacks = {
        s.labels["reason"]: s.value
        for family in text_string_to_metric_families(text)
        if family.name == "shadow_proxy_fallbacks"
        for s in family.samples
        if s.name.endswith("_total") and s.labels["route"] == "api"
    }
    assert set(fallbacks) == {r.value for r in FallbackReason}
    assert set(fallbacks.values()) == {0.0}
