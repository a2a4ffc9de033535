"""The supervisor's admin listener under ``run --workers N``: the same routes as
one process's (proxy/admin.py), answered for the pod as a whole.

Health and readiness ask every worker. ``/metrics`` scrapes every worker at
once over its unix socket and merges (proxy/metricsmerge.py), with the
supervisor's own series. Rollout and noise reads go to one running worker.
Writes go to one worker in fleet mode (``coordination: redis``: any replica
changes the whole fleet); under local coordination each worker holds its own
rollout state, so a write goes to every worker, and succeeds only when all of
them took it. The bearer token is checked by the workers: the supervisor
passes the Authorization header through and holds no secret.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

import orjson
from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest
from prometheus_client.metrics_core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from proxy.admin import Health
from proxy.metricsmerge import MetricsMerger
from proxy.worker import Answer, Worker, WorkerState, WorkerUnreachableError

PROBE_TIMEOUT = 0.8  # per worker; Kubernetes' probes time out after 1-2 s
SCRAPE_TIMEOUT = 5.0
ADMIN_TIMEOUT = 10.0
SCRAPED = (WorkerState.RUNNING, WorkerState.STOPPING)  # a drain can be watched


@dataclass
class Pool:
    """What the admin app knows of the workers; the supervisor keeps it current."""

    workers: Sequence[Worker]
    health: Health
    coordination: str
    merger: MetricsMerger = field(default_factory=MetricsMerger)
    scraped: dict[int, bool] = field(default_factory=dict)  # last scrape's success, by index

    def running(self) -> list[Worker]:
        return [w for w in self.workers if w.state is WorkerState.RUNNING]


POOL = web.AppKey("pool", Pool)
REGISTRY = web.AppKey("registry", CollectorRegistry)


def _json(data: Any, status: int = 200) -> web.Response:
    return web.Response(status=status, body=orjson.dumps(data), content_type="application/json")


class PoolCollector(Collector):
    """The supervisor's own series, then the workers' merged."""

    def __init__(self, pool: Pool) -> None:
        self._pool = pool

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
        yield from self._pool.merger.families()


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
    workers = await _probe(request.app[POOL], "/healthz")
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
        reason = str(exc)
    except TimeoutError:
        reason = f"worker {worker.index}: no answer within {ADMIN_TIMEOUT:g}s"
    data = {"error": "bad_gateway", "reason": reason, "worker": worker.index}
    return Answer(502, orjson.dumps(data), "application/json")


def _no_worker() -> web.Response:
    return _json({"error": "unavailable", "reason": "no worker is running"}, status=503)


async def read_view(request: web.Request) -> web.Response:
    """GET /rollout, GET /noise: any worker knows (under local coordination
    every worker got every write)."""
    running = request.app[POOL].running()
    if not running:
        return _no_worker()
    return _relay(await _exchange(running[0], request, b""))


async def write_view(request: web.Request) -> web.Response:
    pool = request.app[POOL]
    body = await request.read()
    if pool.coordination != "local":  # one replica's write is the fleet's
        running = pool.running()
        if not running:
            return _no_worker()
        return _relay(await _exchange(running[0], request, body))
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
    return _failure(*failed[0], applied)


def _failure(worker: Worker, answer: Answer, applied: list[int]) -> web.Response:
    """The first failing worker's answer, naming it and the workers that did apply."""
    try:
        data = orjson.loads(answer.body)
    except orjson.JSONDecodeError:
        data = None
    if not isinstance(data, dict):
        data = {"error": "failed", "reason": answer.body.decode("utf-8", "replace")[:500]}
    data = {**data, "worker": worker.index, "applied_by_workers": applied}
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
    app.router.add_get("/rollout", read_view)
    app.router.add_get("/noise", read_view)
    app.router.add_post("/rollout/{route}/{command}", write_view)
    app.router.add_put("/rollout/{route}/share", write_view)
    return app
