"""The admin listener: metrics, health, and the rollout API, apart from traffic.

Kept separate so a flood of client traffic cannot starve a scrape or a
probe, and so the admin port can stay on loopback while traffic is public.
Reads are open (a dashboard or a probe needs no secret); writes need the
bearer token, compared in constant time, and are refused outright when no
token is configured.
"""

from __future__ import annotations

import hmac
import math
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import orjson
from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from proxy.controller import Controller, UnknownRouteError
from proxy.errors import CoordinationError
from proxy.metrics import Metrics
from proxy.noise import NoiseLearner
from proxy.rollout import Command, Decision, GateResult
from proxy.routing import RouteRuntime


@dataclass(slots=True)
class Health:
    """Readiness as the orchestrator sees it: up after start, down once draining."""

    ready: bool = False
    draining: bool = False


METRICS = web.AppKey("metrics", Metrics)
HEALTH = web.AppKey("health", Health)
ROLLOUT = web.AppKey("rollout", Controller)
NOISE = web.AppKey("noise", dict[str, NoiseLearner])
TOKEN = web.AppKey("token", str)
COMMANDS = {c.value: c for c in Command if c is not Command.SET}


def _json(data: Any, status: int = 200) -> web.Response:
    body = orjson.dumps(data, option=orjson.OPT_SERIALIZE_NUMPY)
    return web.Response(status=status, body=body, content_type="application/json")


async def metrics_view(request: web.Request) -> web.Response:
    body = generate_latest(request.app[METRICS].registry)
    return web.Response(body=body, headers={"Content-Type": CONTENT_TYPE_LATEST})


async def healthz(request: web.Request) -> web.Response:
    return _json({"status": "ok"})


async def readyz(request: web.Request) -> web.Response:
    health = request.app[HEALTH]
    if health.draining:
        return _json({"status": "draining"}, status=503)
    if not health.ready:
        return _json({"status": "starting"}, status=503)
    return _json({"status": "ready"})


def _gate(g: GateResult) -> dict[str, Any]:
    value = None if g.value is None or math.isnan(g.value) else g.value
    return {"name": g.name, "value": value, "threshold": g.threshold, "ok": g.ok}


def _decision(d: Decision | None) -> dict[str, Any] | None:
    if d is None:
        return None
    return {
        "action": d.action,
        "reason": d.reason,
        "from_stage": d.from_stage.value,
        "to_stage": d.to_stage.value,
        "gates": [_gate(g) for g in d.gates],
    }


def _route(rt: RouteRuntime, controller: Controller, now: float) -> dict[str, Any]:
    state = rt.state
    return {
        "mode": "auto" if rt.policy and rt.policy.auto else "manual",
        "stage": state.stage.value,
        "percent": state.percent,
        "pending": {"stage": state.pending[0].value, "percent": state.pending[1]}
        if state.pending
        else None,
        "reason": state.reason,
        "seconds_in_stage": round(max(0.0, now - state.since), 1),
        "consecutive_failures": state.consecutive_failures,
        "cumulative_failures": state.cumulative_failures,
        "breaker": rt.breaker.state(now).value if rt.breaker else None,
        "version": controller.coordination.version(rt.name),
        "last_decision": _decision(controller.last.get(rt.name)),
    }


async def rollout_view(request: web.Request) -> web.Response:
    controller = request.app[ROLLOUT]
    now = time.monotonic()
    routes = controller.routing().runtimes.values()
    body = {rt.name: _route(rt, controller, now) for rt in routes if rt.policy is not None}
    fleet = {
        "coordination": controller.coordination.name,
        "analysis": controller.analysis.name,
        **controller.coordination.status(),
    }
    return _json({"fleet": fleet, "routes": body})


Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def _authorized(handler: Handler) -> Handler:
    async def guarded(request: web.Request) -> web.StreamResponse:
        expected = request.app[TOKEN]
        if not expected:
            reason = "admin writes are disabled: no admin token is configured"
            return _json({"error": "forbidden", "reason": reason}, status=403)
        given = request.headers.get("Authorization", "")
        scheme, _, token = given.partition(" ")
        if scheme.lower() != "bearer" or not hmac.compare_digest(
            token.strip().encode(), expected.encode()
        ):
            body = {"error": "unauthorized", "reason": "a valid bearer token is required"}
            response = _json(body, status=401)
            response.headers["WWW-Authenticate"] = 'Bearer realm="shadow-proxy"'
            return response
        return await handler(request)

    return guarded


async def _run(
    request: web.Request, command: Command, percent: float | None = None
) -> web.Response:
    controller = request.app[ROLLOUT]
    route = request.match_info["route"]
    try:
        decision = await controller.command(route, command, percent)
    except CoordinationError as exc:
        reason = f"the fleet's shared state could not be updated, nothing changed: {exc}"
        return _json({"error": "unavailable", "reason": reason}, status=503)
    except UnknownRouteError:
        reason = f"no route named {route!r} has a rollout"
        return _json({"error": "not_found", "reason": reason}, status=404)
    except ValueError as exc:
        return _json({"error": "bad_request", "reason": str(exc)}, status=400)
    body = {"route": route, "decision": _decision(decision)}
    if command is not Command.SET and decision.action == "hold":
        # Nothing happened (approve with nothing pending, resume while running):
        # a conflict, so scripts and the CLI do not mistake it for success.
        return _json({**body, "error": "conflict", "reason": decision.reason}, status=409)
    return _json(body)


async def command_view(request: web.Request) -> web.Response:
    name = request.match_info["command"]
    command = COMMANDS.get(name)
    if command is None:
        reason = f"unknown command {name!r}; known: {', '.join(sorted(COMMANDS))}"
        return _json({"error": "not_found", "reason": reason}, status=404)
    return await _run(request, command)


async def share_view(request: web.Request) -> web.Response:
    try:
        data = orjson.loads(await request.read())
        percent = float(data["percent"])
    except (orjson.JSONDecodeError, KeyError, TypeError, ValueError):
        reason = 'the body must be JSON like {"percent": 5}'
        return _json({"error": "bad_request", "reason": reason}, status=400)
    return await _run(request, Command.SET, percent)


async def noise_view(request: web.Request) -> web.Response:
    """What each route learned as noise; ``?format=yaml`` gives the config snippet
    that freezes it (``routes[].noise.fields``), to paste and review."""
    learners = request.app[NOISE]
    route = request.query.get("route")
    if route is not None and route not in learners:
        return _json({"error": "unknown_route", "reason": f"no noise learned for {route!r}"}, 404)
    chosen = {route: learners[route]} if route is not None else learners
    if request.query.get("format") == "yaml":
        docs = [learner.freeze_yaml(name) for name, learner in sorted(chosen.items())]
        text = "---\n".join(docs)  # one YAML document per route
        return web.Response(text=text, content_type="application/yaml")
    body = {
        name: {"pairs": learner.pairs, "overflow": learner.overflow, "fields": learner.snapshot()}
        for name, learner in sorted(chosen.items())
    }
    return _json({"routes": body})


def create_admin_app(
    metrics: Metrics,
    health: Health,
    controller: Controller | None = None,
    token: str | None = None,
    learners: dict[str, NoiseLearner] | None = None,
) -> web.Application:
    app = web.Application(client_max_size=64 * 1024)
    app[METRICS] = metrics
    app[HEALTH] = health
    app[TOKEN] = token or ""
    app.router.add_get("/metrics", metrics_view)
    app.router.add_get("/healthz", healthz)
    app.router.add_get("/readyz", readyz)
    app[NOISE] = learners if learners is not None else {}
    app.router.add_get("/noise", noise_view)
    if controller is not None:
        app[ROLLOUT] = controller
        app.router.add_get("/rollout", rollout_view)
        app.router.add_post("/rollout/{route}/{command}", _authorized(command_view))
        app.router.add_put("/rollout/{route}/share", _authorized(share_view))
    return app
