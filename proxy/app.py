"""Wiring: settings in, a ready-to-serve aiohttp application out.

Upstream connection pools, the shadow task set and the rollout controller are
opened and closed in ``cleanup_ctx``, so whoever runs the app (the CLI, the
demo, a test client) gets the same startup and the same drain. Everything
that must outlive one request but can change at run time — the route table,
shares, breakers — sits in one :class:`~proxy.routing.Routing`, read by the
live path and swapped whole on reload.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import TYPE_CHECKING, Literal

import structlog
from aiohttp import web
from aiohttp.typedefs import Handler
from prometheus_client import CollectorRegistry

from comparators import SemanticComparator
from comparators.semantic import EMBEDDER
from proxy import statefile
from proxy.admin import HEALTH, Health
from proxy.agentpath import AgentPath
from proxy.analysis import PrometheusAnalysis
from proxy.controller import Controller
from proxy.evidence import Evidence
from proxy.live import LiveHandler
from proxy.metrics import Metrics
from proxy.noise import NoiseLearner
from proxy.recorder import Recorder
from proxy.reload import ConfigWatcher, Fingerprint, Loader
from proxy.routes import RouteTable
from proxy.routing import Routing
from proxy.settings import Settings, load_settings
from proxy.shadow import Shadow
from proxy.tasks import TaskSet
from proxy.tracing import Tracing
from proxy.types import AGENT, LEGACY
from proxy.upstream import Upstream

if TYPE_CHECKING:
    from proxy.fleet import Fleet

log = structlog.get_logger("proxy.app")

SETTINGS = web.AppKey("settings", Settings)
METRICS = web.AppKey("metrics", Metrics)
HANDLER = web.AppKey("handler", LiveHandler)
TASKS = web.AppKey("tasks", TaskSet)
CONTROLLER = web.AppKey("controller", Controller)


def build_metrics(settings: Settings, *, process: bool = False) -> Metrics:
    names = RouteTable.from_settings(settings).names
    options = {
        "mismatch_paths_per_route": settings.metrics.mismatch_paths_per_route,
        "agreement_window": settings.metrics.agreement_window,
    }
    if process:
        metrics = Metrics.for_process(names, **options)
    else:
        metrics = Metrics(CollectorRegistry(), names, **options)
    m = settings.metrics
    metrics.agent.allow(m.models, m.tools, m.learn_labels)
    return metrics


def load_routing(settings: Settings) -> Routing:
    """The starting routing: the config, with rollout state from the state file."""
    saved = {}
    if settings.coordination == "redis":
        if settings.state_file is not None:
            log.info("state_file_unused", path=str(settings.state_file), reason="Redis holds it")
    elif settings.state_file is not None:
        try:
            saved = statefile.load(settings.state_file)
        except (OSError, ValueError) as exc:  # start from the config, which is the safe side
            log.error("state_file_unreadable", path=str(settings.state_file), error=str(exc))
    return Routing(settings, saved, now=time.monotonic())


# Parts of the config that belong to sockets and pools opened at start.
RESTART_ONLY = (
    "listen",
    "admin",
    "backends",
    "shutdown",
    "logging",
    "redaction",
    "state_file",
    "metrics",
    "reload_interval",
    "coordination",
    "redis",
    "analysis",
    "prometheus",
    "recording",
    "tracing",
)


class Core:
    """The pieces both listeners share: routing, the controller, and (once the
    app runs) the live handler and shadow path that a reload reconfigures."""

    def __init__(
        self,
        settings: Settings,
        metrics: Metrics,
        config_path: Path | None = None,
        load: Loader = load_settings,
        seen: Fingerprint | Literal["now"] = "now",
        worker: int | None = None,
    ) -> None:
        self.settings = settings
        self.metrics = metrics
        self.config_path = config_path
        self.load = load  # how a reload reads config_path (a worker's takes its share)
        self.seen = seen  # config_path's fingerprint when ``settings`` were read
        self.worker = worker  # the index under run --workers: its recordings carry it
        self.routing = load_routing(settings)
        local = settings.coordination == "local"
        analysis = PrometheusAnalysis(settings.prometheus) if settings.analysis != "local" else None
        state_file = settings.state_file if local else None
        self.controller = Controller(lambda: self.routing, metrics, state_file, analysis=analysis)
        self.fleet: Fleet | None = None
        if local:  # one process is its own fleet: it leads, and its state is at hand
            metrics.fleet_leader.set(1)
            metrics.fleet_connected.set(1)
        else:
            from proxy.fleet import Fleet  # Redis' client (~8 MB) only for a fleet

            self.fleet = Fleet(settings.redis, lambda: self.routing, metrics, self.controller.adopt)
            self.controller.coordination = self.fleet
        self.handler: LiveHandler | None = None
        self.shadow: Shadow | None = None
        self.learners: dict[str, NoiseLearner] = {}  # noise, by route; the admin API reads them

    def apply(self, new: Settings) -> list[str]:
        """Take a reloaded config; return what only a restart would apply."""
        old = self.settings
        ignored = [f for f in RESTART_ONLY if getattr(new, f) != getattr(old, f)]
        effective = new.model_copy(update={f: getattr(old, f) for f in RESTART_ONLY})
        before = self.routing
        self.routing = Routing(effective, now=time.monotonic(), previous=before)
        self.metrics.add_routes(self.routing.table.names)
        for name, rt in before.runtimes.items():
            after = self.routing.runtime(name)
            if rt.policy is not None and (after is None or after.policy is None):
                self.metrics.forget_rollout(name)
        self.settings = effective
        if self.shadow is not None:
            self.shadow.reconfigure(effective.shadow, self.routing.table.routes)
        if self.handler is not None:
            self.handler.routing = self.routing
            self.handler.force_header = effective.routing.force_header
            if self.handler.agent is not None:  # bounded by the same shadow.max_in_flight
                self.handler.agent.max_parallel = effective.shadow.max_in_flight
        self.controller.publish_all()
        self.controller.save()
        return ignored


def create_app(
    settings: Settings,
    metrics: Metrics,
    health: Health | None = None,
    core: Core | None = None,
) -> web.Application:
    app = web.Application(middlewares=[_unroutable])
    app[SETTINGS] = settings
    app[METRICS] = metrics
    app[HEALTH] = health or Health()
    app[CORE] = core or Core(settings, metrics)
    app[CONTROLLER] = app[CORE].controller
    app.cleanup_ctx.append(_runtime)
    app.router.add_route("*", "/{tail:.*}", _handle, expect_handler=_expect_in_dispatch)
    return app


CORE = web.AppKey("core", Core)


async def _handle(request: web.Request) -> web.StreamResponse:
    """In-process test clients run the app itself: its router hands every request
    to the same entry point the server uses (``proxy.runner``)."""
    return await request.app[HANDLER].handle(request)


async def _expect_in_dispatch(request: web.Request) -> None:
    """``Expect`` is answered by ``LiveHandler.handle``, as when the server runs it."""


@web.middleware
async def _unroutable(request: web.Request, handler: Handler) -> web.StreamResponse:
    """CONNECT and ``OPTIONS *`` have no path the router could match: the live
    handler answers them (and refuses the tunnel), not a bare 404."""
    if request.match_info.http_exception is None:
        return await handler(request)
    return await _handle(request)


async def _warm_semantic() -> None:
    """Load the embedding model in the background: the first comparison would
    otherwise wait seconds for it."""
    reason = await EMBEDDER.warm()
    if reason is None:
        log.info("semantic_model_ready")
    else:
        log.warning("semantic_model_unavailable", reason=reason)


async def _runtime(app: web.Application) -> AsyncIterator[None]:
    settings = app[SETTINGS]
    metrics = app[METRICS]
    core = app[CORE]
    tasks = TaskSet()
    legacy = Upstream(LEGACY, settings.backends.legacy)
    agent = Upstream(AGENT, settings.backends.agent) if settings.backends.agent else None
    await legacy.start()
    shadow = agent_path = None
    tracing = Tracing(settings.tracing)
    redactor = settings.redaction.redactor()
    recorder = None
    if settings.recording.enabled:
        recorder = Recorder(
            settings.recording, redactor, listener=metrics.agent.recorded, worker=core.worker
        )
    evidence = Evidence(metrics, settings.logging, redactor, recorder, core.learners, tracing)
    if agent is not None:
        await agent.start()
        routes = core.routing.table.routes
        shadow = core.shadow = Shadow(
            agent, settings.shadow, evidence, metrics, tasks, routes, tracing, legacy
        )
        agent_path = AgentPath(
            agent,
            legacy,
            evidence,
            metrics,
            tasks,
            settings.listen.send_timeout,
            settings.shadow.max_in_flight,
            tracing=tracing,
        )
    handler = core.handler = LiveHandler(
        core.routing,
        legacy,
        shadow,
        agent_path,
        metrics,
        settings.listen.send_timeout,
        settings.routing.force_header,
        tracing,
    )
    app[HANDLER] = handler
    app[TASKS] = tasks
    stop = asyncio.Event()
    services: list[asyncio.Task[None]] = []
    # Not in ``tasks``: that set is the bounded shadow work drained at shutdown;
    # the controller lives as long as the app, held here and awaited below.
    loop = asyncio.get_running_loop()
    await core.controller.analysis.start()
    if core.fleet is not None:
        await core.fleet.start()
        services.append(loop.create_task(core.fleet.run(stop), name="fleet"))
    services.append(loop.create_task(core.controller.run(stop), name="rollout-controller"))
    if core.config_path is not None:
        watcher = ConfigWatcher(
            core.config_path, settings.reload_interval, core.apply, metrics, core.load, core.seen
        )
        services.append(loop.create_task(watcher.run(stop), name="config-watcher"))
    warming = None
    routes = core.routing.table.routes
    if any(isinstance(c, SemanticComparator) for r in routes for c in r.comparators):
        warming = loop.create_task(_warm_semantic(), name="semantic-model")
    app[HEALTH].ready = True
    try:
        yield
    finally:
        app[HEALTH].ready = False
        stop.set()
        if warming is not None:  # a load still running finishes on its thread, unwaited
            warming.cancel()
        for failed in await asyncio.gather(*services, return_exceptions=True):
            if isinstance(failed, Exception):  # still drain, release the lease, close
                log.error("service_failed", error=repr(failed))
        if core.fleet is not None:
            await core.fleet.close()
        await core.controller.analysis.close()
        pending = len(tasks)
        cancelled = await tasks.drain(settings.shutdown.shadow_grace)
        if pending:
            log.info("shadow_drained", pending=pending, cancelled=cancelled)
        core.controller.save()
        evidence.close()
        if recorder is not None:
            await recorder.aclose(settings.shutdown.shadow_grace)
        await tracing.close()
        await legacy.close()
        if agent is not None:
            await agent.close()
