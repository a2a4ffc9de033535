"""Wiring: settings in, a ready-to-serve aiohttp application out.

Upstream connection pools and the shadow task set are opened and closed in
``cleanup_ctx``, so whoever runs the app (the CLI, the demo, a test client)
gets the same startup and the same drain.
"""

from __future__ import annotations

from collections.abc import AsyncIterator

import structlog
from aiohttp import web

from proxy.admin import HEALTH, Health
from proxy.live import LiveHandler
from proxy.metrics import Metrics
from proxy.routes import RouteTable
from proxy.settings import Settings
from proxy.shadow import Shadow
from proxy.tasks import TaskSet
from proxy.types import AGENT, LEGACY
from proxy.upstream import Upstream

log = structlog.get_logger("proxy.app")

SETTINGS = web.AppKey("settings", Settings)
METRICS = web.AppKey("metrics", Metrics)
ROUTES = web.AppKey("routes", RouteTable)
HANDLER = web.AppKey("handler", LiveHandler)
TASKS = web.AppKey("tasks", TaskSet)


def build_metrics(settings: Settings, *, process: bool = False) -> Metrics:
    names = RouteTable.from_settings(settings).names
    options = {
        "mismatch_paths_per_route": settings.metrics.mismatch_paths_per_route,
        "agreement_window": settings.metrics.agreement_window,
    }
    if process:
        return Metrics.for_process(names, **options)
    from prometheus_client import CollectorRegistry

    return Metrics(CollectorRegistry(), names, **options)


def create_app(
    settings: Settings, metrics: Metrics, health: Health | None = None
) -> web.Application:
    app = web.Application()
    app[SETTINGS] = settings
    app[METRICS] = metrics
    app[HEALTH] = health or Health()
    app[ROUTES] = RouteTable.from_settings(settings)
    app.cleanup_ctx.append(_runtime)
    app.router.add_route("*", "/{tail:.*}", _handle)
    return app


async def _handle(request: web.Request) -> web.StreamResponse:
    return await request.app[HANDLER](request)


async def _runtime(app: web.Application) -> AsyncIterator[None]:
    settings = app[SETTINGS]
    metrics = app[METRICS]
    table = app[ROUTES]
    tasks = TaskSet()
    legacy = Upstream(LEGACY, settings.backends.legacy)
    agent = Upstream(AGENT, settings.backends.agent) if settings.backends.agent else None
    await legacy.start()
    shadow = None
    if agent is not None:
        await agent.start()
        live_wait = settings.backends.legacy.timeout + settings.listen.send_timeout
        shadow = Shadow(
            agent, settings.shadow, settings.logging, metrics, tasks, table.routes, live_wait
        )
    app[HANDLER] = LiveHandler(table, legacy, shadow, metrics, settings.listen.send_timeout)
    app[TASKS] = tasks
    app[HEALTH].ready = True
    try:
        yield
    finally:
        app[HEALTH].ready = False
        pending = len(tasks)
        cancelled = await tasks.drain(settings.shutdown.shadow_grace)
        if pending:
            log.info("shadow_drained", pending=pending, cancelled=cancelled)
        await legacy.close()
        if agent is not None:
            await agent.close()
