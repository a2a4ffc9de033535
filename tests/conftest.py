"""Shared fixtures: fake backends, a proxy built from settings, metric reading."""

from __future__ import annotations

import asyncio
import os
import sys
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest
from aiohttp.test_utils import TestClient
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.parser import text_string_to_metric_families

sys.path.insert(0, str(Path(__file__).parent))

from fakes import Fake, RawServer, answer_ok, start_fake

from proxy.app import TASKS, build_metrics, create_app
from proxy.metrics import Metrics
from proxy.settings import Settings, settings_from


@pytest.fixture(autouse=True)
def _no_env_overrides(monkeypatch: pytest.MonkeyPatch) -> None:
    """Tests state their settings; a developer's SHADOW_PROXY_* must not leak in."""
    for name in list(os.environ):
        if name.startswith("SHADOW_PROXY_"):
            monkeypatch.delenv(name)


@pytest.fixture
async def legacy(aiohttp_server: Any) -> Fake:
    return await start_fake(Fake("legacy"), aiohttp_server)


@pytest.fixture
async def agent(aiohttp_server: Any) -> Fake:
    return await start_fake(Fake("agent"), aiohttp_server)


@pytest.fixture
async def raw_legacy() -> AsyncIterator[RawServer]:
    """A legacy that records the exact bytes of each whole request and answers 200."""
    async with RawServer(answer_ok) as server:
        yield server


@pytest.fixture
async def collector(aiohttp_server: Any) -> AsyncIterator[Any]:
    """A fake OTLP/HTTP collector (tests/otlp.py); exports it holds are let go at the end."""
    from otlp import start_collector  # opentelemetry-proto: only the tracing tests need it

    state = await start_collector(aiohttp_server)
    yield state
    state.release.set()


class Proxy:
    def __init__(self, client: TestClient[Any, Any], settings: Settings, metrics: Metrics) -> None:
        self.client = client
        self.settings = settings
        self.metrics = metrics

    def value(self, name: str, **labels: str) -> float:
        return metric_value(self.metrics.registry, name, **labels)

    def total(self, name: str, **labels: str) -> float:
        return metric_sum(self.metrics.registry, name, **labels)

    async def settle(self, within: float = 5.0) -> None:
        """Wait until background work (shadows, parallel legacy calls, comparisons) is done.

        A shadow slot is taken when a request is admitted, and its task starts when
        the live exchange has ended, which may be just after the client read its answer."""
        async with asyncio.timeout(within):
            while True:
                await self.client.app[TASKS].join()
                if self.value("shadow_proxy_shadow_in_flight") == 0:
                    return
                await asyncio.sleep(0.005)

    def outcome(self, name: str, route: str = "api") -> float:
        return self.value("shadow_proxy_shadow_requests_total", route=route, outcome=name)

    def verdict(self, name: str, route: str = "api") -> float:
        return self.value("shadow_proxy_comparisons_total", route=route, verdict=name)


ProxyFactory = Callable[..., Awaitable[Proxy]]


@pytest.fixture
def make_proxy(aiohttp_client: Any) -> ProxyFactory:
    async def make(**config: Any) -> Proxy:
        settings = settings_from(config)
        metrics = build_metrics(settings)
        client = await aiohttp_client(create_app(settings, metrics))
        return Proxy(client, settings, metrics)

    return make


def metric_value(registry: CollectorRegistry, name: str, **labels: str) -> float:
    """Read one sample from the exposition text, as Prometheus would see it.

    A series not (yet) observed reads 0; a metric name that does not exist at
    all is an error, so a typo cannot pass for a zero.
    """
    return next(iter(_matching(registry, name, labels)), 0.0)


def metric_sum(registry: CollectorRegistry, name: str, **labels: str) -> float:
    """The sum over every series of ``name`` that carries ``labels`` (the
    rest of its labels any value), as ``sum(name{labels})`` in PromQL."""
    return sum(_matching(registry, name, labels))


def _matching(registry: CollectorRegistry, name: str, labels: dict[str, str]) -> list[float]:
    text = generate_latest(registry).decode()
    known = False
    values = []
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name != name:
                continue
            known = True
            if all(sample.labels.get(k) == v for k, v in labels.items()):
                values.append(float(sample.value))
    if not known and not any(name.startswith(f) for f in _LAZY_FAMILIES):
        raise KeyError(f"no metric named {name!r} in the exposition")
    return values


# Families with labels that have no series until first observed.
_LAZY_FAMILIES = (
    "shadow_proxy_requests_total",
    "shadow_proxy_upstream_duration_seconds",
    "shadow_proxy_upstream_errors_total",
    "shadow_proxy_rejected_requests_total",
    "shadow_proxy_comparison_score",
    "shadow_proxy_agreement_ratio",
    "shadow_proxy_mismatch_fields_total",
    "shadow_proxy_fallbacks_total",
    "shadow_proxy_retries_total",
    "gen_ai_client_token_usage",
    "gen_ai_client_operation_duration_seconds",
    "shadow_proxy_agent_tokens_per_request",
    "shadow_proxy_agent_usage_missing_total",
    "shadow_proxy_agent_tool_calls_total",
    "shadow_proxy_shadow_token_budget_remaining",
    "shadow_proxy_noise_",
    "shadow_proxy_raw_agreement_ratio",
)
