"""The admin listener: metrics and health, on a port apart from traffic.

Kept separate so a flood of client traffic cannot starve a scrape or a
probe, and so the admin port can stay on loopback while traffic is public.
"""

from __future__ import annotations

from dataclasses import dataclass

from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from proxy.metrics import Metrics


@dataclass(slots=True)
class Health:
    """Readiness as the orchestrator sees it: up after start, down once draining."""

    ready: bool = False
    draining: bool = False


METRICS = web.AppKey("metrics", Metrics)
HEALTH = web.AppKey("health", Health)


async def metrics_view(request: web.Request) -> web.Response:
    body = generate_latest(request.app[METRICS].registry)
    return web.Response(body=body, headers={"Content-Type": CONTENT_TYPE_LATEST})


async def healthz(request: web.Request) -> web.Response:
    return web.json_response({"status": "ok"})


async def readyz(request: web.Request) -> web.Response:
    health = request.app[HEALTH]
    if health.draining:
        return web.json_response({"status": "draining"}, status=503)
    if not health.ready:
        return web.json_response({"status": "starting"}, status=503)
    return web.json_response({"status": "ready"})


def create_admin_app(metrics: Metrics, health: Health) -> web.Application:
    app = web.Application()
    app[METRICS] = metrics
    app[HEALTH] = health
    app.router.add_get("/metrics", metrics_view)
    app.router.add_get("/healthz", healthz)
    app.router.add_get("/readyz", readyz)
    return app
