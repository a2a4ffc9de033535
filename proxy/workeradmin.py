"""The supervisor's admin listener under ``run --workers N``: the same routes as
one process's (proxy/admin.py), answered for the pod as a whole.

Health and readiness ask every worker; while the pod drains, liveness stays
200 (as one process's does until it exits). ``/metrics`` scrapes every
worker at once over its unix socket and merges (proxy/metricsmerge.py), with
the supervisor's own series. Noise reads go to one running worker; rollout
reads too in fleet mode, and under local coordination to every worker, to
say when their shares differ. Writes go to one worker in fleet mode
(``coordination: redis``: any replica changes the whole fleet); under local
coordination each worker holds its own rollout state, so a write goes to
every worker, one write at a time, and succeeds only when all of them took
it. The bearer token is checked by the workers: the supervisor passes the
Authorization header through and holds no secret.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

import orjson
from aiohttp import web
from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    ProcessCollector,
    generate_latest,
)
from prometheus_client.metrics_core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from proxy.admin import Health
from proxy.metricsmerge import MetricsMerger
from proxy.worker import Answer, Worker, WorkerState, WorkerUnreachableError

PROBE_TIMEOUT = 0.8  # per worker; Kubernetes' probes time out after 1-2 s
SCRAPE_TIMEOUT = 5.0
ADMIN_TIMEOUT = 5.0  # well under the CLI's own 10 s, so the CLI hears which worker hung
SCRAPED = (WorkerState.RUNNING, WorkerState.STOPPING)  # a drain can be watched
TIMED_OUT = 504  # the worker got the request and may have acted on it


@dataclass
class Pool:
    """What the admin app knows of the workers; the supervisor keeps it current."""

    workers: Sequence[Worker]
    health: Health
    coordination: str
    merger: MetricsMerger = field(default_factory=MetricsMerger)
    scraped: dict[int, bool] = field(default_factory=dict)  # last scrape's success, by index
    # Local writes one at a time: two fanned out at once could reach the workers
    # in different orders and leave them at different shares.
    writes: asyncio.Lock = field(default_factory=asyncio.Lock)

    def running(self) -> list[Worker]:
        return [w for w in self.workers if w.state is WorkerState.RUNNING]


POOL = web.AppKey("pool", Pool)
REGISTRY = web.AppKey("registry", CollectorRegistry)


def _json(data: Any, status: int = 200) -> web.Response:
    return web.Response(status=status, body=orjson.dumps(data), content_type="application/json")


class PoolCollector(Collector):
    """The supervisor's own series, then the workers' merged with its process's."""

    def __init__(self, pool: Pool) -> None:
        self._pool = pool
        self._process = CollectorRegistry(auto_describe=False)
        ProcessCollector(registry=self._process)

    def collect(self) -> Iterable[Metric]:
        workers = self._pool.workers
        states = GaugeMetricFamily(
            "shadow_proxy_workers", "Worker processes by state.", labels=["state"]
        )
        for state in WorkerState:
            states.add_metric([state.value], sum(w.state is state for w in workers))
        yield states
        yield CounterMetricFamily(
            "shadow_proxy_worker_restarts",
            "Worker processes restarted after an unexpected exit.",
            value=sum(w.restarts for w in workers),
        )
        up = GaugeMetricFamily(
            "shadow_proxy_worker_up",
            "1 when this worker's metrics were scraped just now; 0: its last values are shown.",
            labels=["worker"],
        )
        for index, ok in sorted(self._pool.scraped.items()):
            up.add_metric([str(index)], float(ok))
        yield up
        yield from self._pool.merger.families(generate_latest(self._process).decode())


async def _scrape(pool: Pool, worker: Worker) -> None:
    generation = worker.generation  # a scrape that outlives its process is dropped
    try:
        async with asyncio.timeout(SCRAPE_TIMEOUT):
            answer = await worker.request("GET", "/metrics")
    except (WorkerUnreachableError, TimeoutError):
        pool.scraped[worker.index] = False
        return
    ok = answer.status == 200
    if ok:
        pool.merger.observe((worker.index, generation), answer.body.decode())
    pool.scraped[worker.index] = ok


async def metrics_view(request: web.Request) -> web.Response:
    pool = request.app[POOL]
    serving = [w for w in pool.workers if w.state in SCRAPED]
    for worker in pool.workers:
        if worker not in serving:
            pool.scraped.pop(worker.index, None)
    await asyncio.gather(*(_scrape(pool, w) for w in serving))
    body = generate_latest(request.app[REGISTRY])
    return web.Response(body=body, headers={"Content-Type": CONTENT_TYPE_LATEST})


async def _probe(pool: Pool, path: str) -> dict[str, str]:
    """Each worker's answer to a probe: ok, or why not."""

    async def one(worker: Worker) -> str:
        if worker.state is not WorkerState.RUNNING:
            return worker.state.value
        try:
            async with asyncio.timeout(PROBE_TIMEOUT):
                answer = await worker.request("GET", path)
        except (WorkerUnreachableError, TimeoutError):
            return "not answering"
        return "ok" if answer.status == 200 else f"answered {answer.status}"

    answers = await asyncio.gather(*(one(w) for w in pool.workers))
    return {str(w.index): a for w, a in zip(pool.workers, answers, strict=True)}


async def healthz(request: web.Request) -> web.Response:
    pool = request.app[POOL]
    if pool.health.draining:  # alive until it exits, as one process is: no probe kills a drain
        return _json({"status": "ok", "draining": True})
    workers = await _probe(pool, "/healthz")
    if all(a == "ok" for a in workers.values()):
        return _json({"status": "ok", "workers": len(workers)})
    return _json({"status": "unhealthy", "workers": workers}, status=503)


async def readyz(request: web.Request) -> web.Response:
    pool = request.app[POOL]
    if pool.health.draining:
        return _json({"status": "draining"}, status=503)
    if not pool.health.ready:
        return _json({"status": "starting"}, status=503)
    workers = await _probe(pool, "/readyz")
    if pool.health.draining:  # began while the workers were asked
        return _json({"status": "draining"}, status=503)
    if all(a == "ok" for a in workers.values()):
        return _json({"status": "ready", "workers": len(workers)})
    return _json({"status": "not_ready", "workers": workers}, status=503)


def _relay(answer: Answer) -> web.Response:
    response = web.Response(status=answer.status, body=answer.body)
    response.content_type = answer.content_type
    if "WWW-Authenticate" in answer.headers:
        response.headers["WWW-Authenticate"] = answer.headers["WWW-Authenticate"]
    return response


async def _exchange(worker: Worker, request: web.Request, body: bytes) -> Answer:
    """The worker's answer to the request; a 502 answer when there is none."""
    try:
        async with asyncio.timeout(ADMIN_TIMEOUT):
            return await worker.request(
                request.method, request.path_qs, request.headers.copy(), body
            )
    except WorkerUnreachableError as exc:
        data = {"error": "bad_gateway", "reason": str(exc), "worker": worker.index}
        return Answer(502, orjson.dumps(data), "application/json")
    except TimeoutError:
        reason = f"worker {worker.index}: no answer within {ADMIN_TIMEOUT:g}s"
    data = {"error": "gateway_timeout", "reason": reason, "worker": worker.index}
    return Answer(TIMED_OUT, orjson.dumps(data), "application/json")


def _no_worker() -> web.Response:
    return _json({"error": "unavailable", "reason": "no worker is running"}, status=503)


async def first_view(request: web.Request) -> web.Response:
    """GET /noise (what that worker learned from its share), and GET /rollout
    in fleet mode: the first running worker's answer."""
    running = request.app[POOL].running()
    if not running:
        return _no_worker()
    return _relay(await _exchange(running[0], request, b""))


async def rollout_view(request: web.Request) -> web.Response:
    """GET /rollout under local coordination: the first running worker's answer,
    with ``workers_disagree`` added when the workers' shares differ."""
    pool = request.app[POOL]
    running = pool.running()
    if pool.coordination != "local" or not running:
        return await first_view(request)
    async with pool.writes:  # not halfway through a write
        answers = await asyncio.gather(*(_exchange(w, request, b"") for w in running))
    if answers[0].status != 200:
        return _relay(answers[0])
    views = {w.index: _shares(a) for w, a in zip(running, answers, strict=True) if a.status == 200}
    disagree = disagreements(views)
    if not disagree:
        return _relay(answers[0])
    return _json({**orjson.loads(answers[0].body), "workers_disagree": disagree})


Share = dict[str, Any]  # {"stage": ..., "percent": ...}


def _shares(answer: Answer) -> dict[str, Share]:
    """Route -> stage and percent, from one worker's GET /rollout."""
    try:
        routes = orjson.loads(answer.body)["routes"]
        return {n: {"stage": r["stage"], "percent": r["percent"]} for n, r in routes.items()}
    except (orjson.JSONDecodeError, KeyError, TypeError, AttributeError):
        return {}


def disagreements(views: dict[int, dict[str, Share]]) -> dict[str, dict[str, Share | None]]:
    """For each route on which the workers differ, each worker's stage and percent
    (None: the worker has no such route)."""
    names = sorted({name for view in views.values() for name in view})
    out: dict[str, dict[str, Share | None]] = {}
    for name in names:
        each = {str(i): view.get(name) for i, view in views.items()}
        if len({orjson.dumps(v) for v in each.values()}) > 1:
            out[name] = each
    return out


async def write_view(request: web.Request) -> web.Response:
    pool = request.app[POOL]
    body = await request.read()
    if pool.coordination != "local":  # one replica's write is the fleet's
        running = pool.running()
        if not running:
            return _no_worker()
        return _relay(await _exchange(running[0], request, body))
    async with pool.writes:
        return await _fan_out(pool, request, body)


async def _fan_out(pool: Pool, request: web.Request, body: bytes) -> web.Response:
    for worker in pool.workers:
        if worker.state is not WorkerState.RUNNING:
            reason = (
                f"worker {worker.index} is {worker.state.value}: nothing was changed, "
                "since each worker holds its own rollout; try again when all run"
            )
            return _json({"error": "unavailable", "reason": reason, "worker": worker.index}, 503)
    workers = list(pool.workers)
    answers = await asyncio.gather(*(_exchange(w, request, body) for w in workers))
    results = list(zip(workers, answers, strict=True))
    applied = [w.index for w, a in results if 200 <= a.status < 300]
    failed = [(w, a) for w, a in results if w.index not in applied]
    if not failed:
        return _relay(answers[0])
    unsure = [w.index for w, a in failed if a.status == TIMED_OUT]
    return _failure(*failed[0], applied, unsure)


def _failure(worker: Worker, answer: Answer, applied: list[int], unsure: list[int]) -> web.Response:
    """The first failing worker's answer, naming it, the workers that did apply,
    and those that timed out: they may have applied it."""
    try:
        data = orjson.loads(answer.body)
    except orjson.JSONDecodeError:
        data = None
    if not isinstance(data, dict):
        data = {"error": "failed", "reason": answer.body.decode("utf-8", "replace")[:500]}
    data = {**data, "worker": worker.index, "applied_by_workers": applied}
    if unsure:  # asked, no answer in time: they may have applied it, or not
        data["maybe_applied_by_workers"] = unsure
    return _relay(Answer(answer.status, orjson.dumps(data), "application/json", answer.headers))


def create_supervisor_admin(pool: Pool) -> web.Application:
    app = web.Application(client_max_size=64 * 1024)
    app[POOL] = pool
    registry = CollectorRegistry(auto_describe=False)
    registry.register(PoolCollector(pool))
    app[REGISTRY] = registry
    app.router.add_get("/metrics", metrics_view)
    app.router.add_get("/healthz", healthz)
    app.router.add_get("/readyz", readyz)
    app.router.add_get("/rollout", rollout_view)
    app.router.add_get("/noise", first_view)
    app.router.add_post("/rollout/{route}/{command}", write_view)
    app.router.add_put("/rollout/{route}/share", write_view)
    return app
