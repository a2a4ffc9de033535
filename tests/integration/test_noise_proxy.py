"""Noise cancellation through the real proxy: a legacy whose answers carry a
fresh ``id`` and ``timestamp`` on every call is asked twice, those fields are
learned as noise, and the agreement the metrics and the rollout gates see is
the adjusted one — while a real disagreement still counts as one."""

from __future__ import annotations

import os
import time
from dataclasses import dataclass, field
from typing import Any

import pytest
import yaml
from aiohttp import web
from conftest import Proxy, ProxyFactory
from structlog.testing import capture_logs

from proxy.admin import Health, create_admin_app
from proxy.app import CORE
from proxy.settings import settings_from

NOISY = ("$.id", "$.timestamp")


@dataclass
class Service:
    """A JSON backend on 127.0.0.1:0 that answers ``/api/orders/<n>`` alike
    every time, except for a fresh ``id`` and ``timestamp`` when ``noisy``."""

    noisy: bool = True
    wrong: set[int] = field(default_factory=set)  # requests answered differently
    busy_every: int = 0  # every n-th call is a 429 (a legacy shedding load)
    calls: list[tuple[str, str]] = field(default_factory=list)  # method, path
    headers: list[dict[str, str]] = field(default_factory=list)  # lower-case names
    url: str = ""

    async def handle(self, request: web.Request) -> web.Response:
        await request.read()
        self.calls.append((request.method, request.path_qs))
        self.headers.append({k.lower(): v for k, v in request.headers.items()})
        if self.busy_every and len(self.calls) % self.busy_every == 0:
            return web.json_response({"error": "busy", "retry_after": 1}, status=429)
        n = int(request.match_info.get("n", "0"))
        doc: dict[str, Any] = {"order": n, "status": "shipped" if n not in self.wrong else "lost"}
        if self.noisy:
            doc["id"] = os.urandom(8).hex()
            doc["timestamp"] = f"{time.time_ns()}"
        return web.json_response(doc)


@pytest.fixture
def start(aiohttp_server: Any) -> Any:
    async def make(**knobs: Any) -> Service:
        service = Service(**knobs)
        app = web.Application()
        app.router.add_route("*", "/api/orders/{n}", service.handle)
        server = await aiohttp_server(app, host="127.0.0.1")
        service.url = str(server.make_url("")).rstrip("/")
        return service

    return make


def config(legacy: Service, agent: Service, noise: dict[str, Any], **route: Any) -> dict[str, Any]:
    return {
        "backends": {"legacy": {"url": legacy.url}, "agent": {"url": agent.url}},
        "routes": [
            {
                "name": "api",
                "match": {"prefix": "/api/"},
                "shadow": {"enabled": True},
                "noise": noise,
                **route,
            }
        ],
    }


def learning(min_pairs: int, **more: Any) -> dict[str, Any]:
    return {"enabled": True, "percent": 100, "min_pairs": min_pairs, **more}


async def send(proxy: Proxy, numbers: range, method: str = "GET") -> None:
    """One request at a time, each settled, so every pair is counted before the next."""
    for n in numbers:
        response = await proxy.client.request(method, f"/api/orders/{n}")
        assert response.status == 200
        await response.read()
        await proxy.settle()


class Counts:
    """Verdict and noise counters of route ``api`` at one moment."""

    def __init__(self, proxy: Proxy) -> None:
        self.match = proxy.verdict("match")
        self.mismatch = proxy.verdict("mismatch")
        self.discounted = lazy(proxy, "shadow_proxy_noise_discounted_total", route="api")
        stats = proxy.client.app[CORE].routing.runtimes["api"].window.stats(time.monotonic())
        self.samples, self.window_matches = stats.samples, stats.matches

    def since(self, before: Counts) -> dict[str, float]:
        names = ("match", "mismatch", "discounted", "samples", "window_matches")
        return {n: getattr(self, n) - getattr(before, n) for n in names}


def lazy(proxy: Proxy, name: str, **labels: str) -> float:
    """A series that exists only once observed (conftest's reader calls its
    absence a typo); each name read here is asserted non-zero in some test, so
    a typo cannot pass for a zero."""
    return proxy.metrics.registry.get_sample_value(name, labels) or 0.0


def noise_fields(proxy: Proxy) -> set[str]:
    """The paths the ``shadow_proxy_noise_field`` metric shows for route ``api``."""
    family = proxy.metrics.registry.collect()
    return {
        sample.labels["path"]
        for metric in family
        if metric.name == "shadow_proxy_noise_field"
        for sample in metric.samples
        if sample.labels.get("route") == "api" and sample.value == 1
    }


async def admin_of(proxy: Proxy, aiohttp_client: Any) -> Any:
    """The admin API beside the proxy, sharing its noise learners, as the server wires them."""
    core = proxy.client.app[CORE]
    app = create_admin_app(proxy.metrics, Health(), core.controller, None, core.learners)
    return await aiohttp_client(app)


async def test_fields_that_differ_between_two_legacy_calls_are_learned_and_discounted(
    make_proxy: ProxyFactory, start: Any
) -> None:
    legacy, agent = await start(), await start()
    proxy = await make_proxy(**config(legacy, agent, learning(5)))
    with capture_logs() as logs:
        await send(proxy, range(5))
    learned = sorted(e["field"] for e in logs if e["event"] == "noise_learned")
    assert learned == sorted(NOISY)
    assert all(e["route"] == "api" and e["backend"] == "legacy" for e in logs
               if e["event"] == "noise_learned")  # fmt: skip
    for path in NOISY:
        assert lazy(proxy, "shadow_proxy_noise_field", route="api", path=path) == 1
    assert lazy(proxy, "shadow_proxy_noise_fields", route="api") == 2
    assert lazy(proxy, "shadow_proxy_noise_pairs_total", route="api", backend="legacy") == 5
    assert len(legacy.calls) == 10  # each request: the live call and the noise call
    assert proxy.verdict("mismatch") == 5  # before learning, the noise was a disagreement

    before = Counts(proxy)
    await send(proxy, range(5, 15))
    delta = Counts(proxy).since(before)
    # raw: every one differs at id and timestamp; adjusted: every one agrees
    assert delta == {"match": 10, "mismatch": 0, "discounted": 10, "samples": 10,
                     "window_matches": 10}  # fmt: skip
    raw_matches = delta["match"] - delta["discounted"]
    assert raw_matches / delta["samples"] == 0.0
    assert proxy.value("shadow_proxy_agreement_ratio", route="api") > 0.6


async def test_the_rollout_gate_sees_raw_verdicts_when_configured_so(
    make_proxy: ProxyFactory, start: Any
) -> None:
    legacy, agent = await start(), await start()
    proxy = await make_proxy(**config(legacy, agent, learning(3, gate="raw")))
    await send(proxy, range(3))
    assert lazy(proxy, "shadow_proxy_noise_fields", route="api") == 2
    before = Counts(proxy)
    await send(proxy, range(3, 9))
    delta = Counts(proxy).since(before)
    # still learned and counted as discounted, but the gates (and the
    # comparison counters) keep the raw disagreement
    assert delta == {"match": 0, "mismatch": 6, "discounted": 6, "samples": 6,
                     "window_matches": 0}  # fmt: skip


async def test_frozen_fields_are_discounted_from_the_first_request_without_second_calls(
    make_proxy: ProxyFactory, start: Any
) -> None:
    legacy, agent = await start(), await start()
    proxy = await make_proxy(**config(legacy, agent, {"fields": list(NOISY)}))
    await send(proxy, range(4))
    assert proxy.verdict("match") == 4 and proxy.verdict("mismatch") == 0
    assert lazy(proxy, "shadow_proxy_noise_discounted_total", route="api") == 4
    assert lazy(proxy, "shadow_proxy_noise_fields", route="api") == 2
    # both agreements are there to read: noise-adjusted for the gates, and raw
    assert proxy.value("shadow_proxy_agreement_ratio", route="api") == 1.0
    assert lazy(proxy, "shadow_proxy_raw_agreement_ratio", route="api") == 0.0
    assert len(legacy.calls) == 4  # learning is off: legacy is asked once per request


async def test_a_real_disagreement_in_another_field_stays_a_mismatch_without_the_noise(
    make_proxy: ProxyFactory, start: Any
) -> None:
    legacy, agent = await start(), await start(wrong={7})
    proxy = await make_proxy(**config(legacy, agent, learning(3)))
    await send(proxy, range(3))
    before = Counts(proxy)
    await send(proxy, range(6, 9))
    delta = Counts(proxy).since(before)
    assert delta == {"match": 2, "mismatch": 1, "discounted": 2, "samples": 3,
                     "window_matches": 2}  # fmt: skip
    assert proxy.value("shadow_proxy_mismatch_fields_total", route="api", path="$.status") == 1
    # learned fields no longer show up as mismatching once learned
    ids = proxy.value("shadow_proxy_mismatch_fields_total", route="api", path="$.id")
    assert ids == 3  # the three mismatches before learning, none after


async def test_noise_is_learned_from_two_calls_of_the_agent_too(
    make_proxy: ProxyFactory, start: Any
) -> None:
    legacy, agent = await start(noisy=False), await start()
    proxy = await make_proxy(**config(legacy, agent, learning(4, backend="agent")))
    await send(proxy, range(4))
    assert lazy(proxy, "shadow_proxy_noise_pairs_total", route="api", backend="agent") == 4
    assert lazy(proxy, "shadow_proxy_noise_pairs_total", route="api", backend="legacy") == 0
    assert (len(legacy.calls), len(agent.calls)) == (4, 8)
    for path in NOISY:
        assert lazy(proxy, "shadow_proxy_noise_field", route="api", path=path) == 1
    # legacy has no id at all: the agent's extra fields are what the learner discounts
    before = Counts(proxy)
    await send(proxy, range(4, 8))
    assert Counts(proxy).since(before)["match"] == 4


async def test_a_route_whose_method_is_not_mirrored_never_gets_a_second_legacy_call(
    make_proxy: ProxyFactory, start: Any
) -> None:
    legacy, agent = await start(), await start()
    proxy = await make_proxy(**config(legacy, agent, learning(1)))
    await send(proxy, range(5), method="POST")
    assert legacy.calls == [("POST", f"/api/orders/{n}") for n in range(5)]
    assert agent.calls == []
    assert lazy(proxy, "shadow_proxy_noise_pairs_total", route="api", backend="legacy") == 0
    assert proxy.outcome("skipped_unsafe") == 5


async def test_frozen_fields_discount_on_the_path_where_the_agent_serves(
    make_proxy: ProxyFactory, start: Any
) -> None:
    """Legacy called alongside the serving agent: its comparison is adjusted too."""
    legacy, agent = await start(), await start()
    cfg = config(legacy, agent, {"fields": list(NOISY)},
                 rollout={"mode": "manual", "percent": 100})  # fmt: skip
    proxy = await make_proxy(**cfg)
    for n in range(3):
        response = await proxy.client.get(f"/api/orders/{n}")
        assert response.headers["X-Served-By"] == "agent"
        await response.read()
    await proxy.settle()
    assert proxy.verdict("match") == 3 and proxy.verdict("mismatch") == 0
    stats = proxy.client.app[CORE].routing.runtimes["api"].window.stats(time.monotonic())
    assert (stats.samples, stats.matches) == (3, 3)


async def test_the_freeze_snippet_pasted_into_the_config_discounts_from_the_first_request(
    make_proxy: ProxyFactory, start: Any, aiohttp_client: Any
) -> None:
    legacy, agent = await start(), await start()
    base = config(legacy, agent, learning(3))
    learner = await make_proxy(**base)
    await send(learner, range(3))
    admin = await admin_of(learner, aiohttp_client)
    response = await admin.get("/noise", params={"route": "api", "format": "yaml"})
    assert response.status == 200
    snippet = yaml.safe_load(await response.text())
    assert snippet["routes"][0]["name"] == "api"
    frozen = snippet["routes"][0]["noise"]["fields"]
    assert sorted(frozen) == sorted(NOISY)

    pasted = config(legacy, agent, {"fields": frozen})
    assert settings_from(pasted).routes[0].noise.fields == tuple(sorted(NOISY))
    proxy = await make_proxy(**pasted)
    await send(proxy, range(3))
    assert proxy.verdict("match") == 3 and proxy.verdict("mismatch") == 0


async def test_a_second_call_answered_with_another_status_teaches_no_noise(
    make_proxy: ProxyFactory, start: Any, aiohttp_client: Any
) -> None:
    """A 429 to the duplicate call is load shedding, not noise: were it counted,
    every field of the real answer would be learned and never compared again."""
    legacy, agent = await start(noisy=False, busy_every=2), await start(noisy=False)
    proxy = await make_proxy(**config(legacy, agent, learning(3)))
    await send(proxy, range(6))
    assert [c for c in legacy.calls if c[1] == "/api/orders/0"] == [("GET", "/api/orders/0")] * 2
    assert lazy(proxy, "shadow_proxy_noise_fields", route="api") == 0
    admin = await admin_of(proxy, aiohttp_client)
    shown = await (await admin.get("/noise", params={"route": "api"})).json()
    assert shown["routes"]["api"]["pairs"] == 0
    assert [f["path"] for f in shown["routes"]["api"]["fields"] if f["noise"]] == []
    agent.wrong = {9}
    await send(proxy, range(9, 10))
    assert proxy.verdict("mismatch") == 1  # $.status is still compared


async def test_the_second_legacy_call_carries_the_clients_headers_not_the_agents(
    make_proxy: ProxyFactory, start: Any
) -> None:
    legacy, agent = await start(), await start()
    cfg = config(legacy, agent, learning(1))
    cfg["shadow"] = {
        "drop_headers": ["Authorization"],
        "add_headers": {"X-Agent-Key": "agent-only"},
    }
    proxy = await make_proxy(**cfg)
    response = await proxy.client.get("/api/orders/1", headers={"Authorization": "Bearer user-1"})
    await response.read()
    await proxy.settle()
    live, second = legacy.headers
    assert agent.headers[0]["x-agent-key"] == "agent-only"
    assert live["authorization"] == second.get("authorization") == "Bearer user-1"
    assert "x-agent-key" not in second  # the agent's credential never goes to legacy
    assert "x-shadow-request" not in second


@pytest.mark.parametrize(
    ("reloaded", "kept"),
    [
        (learning(3), set(NOISY)),  # the same noise settings: what was learned stays
        (learning(4), set()),  # new settings: a fresh learner, the old fields leave the metric
        ({"enabled": False}, set()),  # learning off: nothing is discounted any more
    ],
)
async def test_a_reload_keeps_what_was_learned_only_while_the_noise_settings_stay(
    make_proxy: ProxyFactory, start: Any, reloaded: dict[str, Any], kept: set[str]
) -> None:
    legacy, agent = await start(), await start()
    proxy = await make_proxy(**config(legacy, agent, learning(3)))
    await send(proxy, range(3))
    assert noise_fields(proxy) == set(NOISY)
    proxy.client.app[CORE].apply(settings_from(config(legacy, agent, reloaded)))
    before = Counts(proxy)
    await send(proxy, range(3, 4))
    assert noise_fields(proxy) == kept
    assert lazy(proxy, "shadow_proxy_noise_fields", route="api") == len(kept)
    assert Counts(proxy).since(before)["match"] == (1 if kept else 0)
