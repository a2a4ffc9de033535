"""The supervisor's admin app in front of two workers, each a real aiohttp app
on its own unix socket that a test can make refuse, fail or vanish."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient
from prometheus_client import CollectorRegistry, Counter, Gauge, generate_latest
from prometheus_client.parser import text_string_to_metric_families

from proxy import workeradmin
from proxy.admin import Health
from proxy.worker import Worker, WorkerState
from proxy.workeradmin import Pool, create_supervisor_admin


@dataclass
class FakeWorker:
    """A worker's admin app: counts what it is asked, answers as told, and
    holds a share that ``PUT /rollout/api/share`` sets (after ``delays[percent]``
    seconds, to make concurrent writes reach the workers in different orders)."""

    index: int
    write_status: int = 200
    ready: bool = True
    writes: list[tuple[str, str, bytes]] = field(default_factory=list)
    registry: CollectorRegistry = field(default_factory=CollectorRegistry)
    share: float = 0.0
    delays: dict[float, float] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.requests = Counter("app_requests", "Requests.", registry=self.registry)
        self.in_flight = Gauge("app_in_flight", "In flight.", registry=self.registry)

    def app(self) -> web.Application:
        app = web.Application()
        app.router.add_get("/metrics", self._metrics)
        app.router.add_get("/readyz", self._readyz)
        app.router.add_get("/healthz", self._readyz)
        app.router.add_get("/rollout", self._rollout)
        app.router.add_put("/rollout/{route}/share", self._write)
        app.router.add_post("/rollout/{route}/{command}", self._write)
        return app

    async def _metrics(self, request: web.Request) -> web.Response:
        return web.Response(body=generate_latest(self.registry))

    async def _readyz(self, request: web.Request) -> web.Response:
        return web.json_response({}, status=200 if self.ready else 503)

    async def _rollout(self, request: web.Request) -> web.Response:
        routes = {"api": {"stage": "canary", "percent": self.share, "reason": "set"}}
        return web.json_response({"from": self.index, "routes": routes})

    async def _write(self, request: web.Request) -> web.Response:
        auth = request.headers.get("Authorization", "")
        body = await request.read()
        self.writes.append((request.path, auth, body))
        if self.write_status != 200:
            answer = {"error": "conflict", "reason": "nothing pending"}
            return web.json_response(answer, status=self.write_status)
        if request.path.endswith("/share"):
            percent = float((await request.json())["percent"])
            await asyncio.sleep(self.delays.get(percent, 0.0))
            self.share = percent
        return web.json_response({"route": request.match_info["route"], "from": self.index})


@dataclass
class Setup:
    client: TestClient[Any, Any]
    pool: Pool
    fakes: list[FakeWorker]
    runners: list[web.AppRunner]

    async def stop_worker(self, index: int) -> None:
        """The worker's process is gone: nothing answers on its socket."""
        await self.runners[index].cleanup()


Factory = Callable[[str], Awaitable[Setup]]


@pytest.fixture
async def supervisor(tmp_path: Path, aiohttp_client: Any) -> AsyncIterator[Factory]:
    runners: list[web.AppRunner] = []
    pools: list[Pool] = []

    async def make(coordination: str = "local") -> Setup:
        fakes = [FakeWorker(0), FakeWorker(1)]
        workers = []
        for fake in fakes:
            runner = web.AppRunner(fake.app())
            await runner.setup()
            sock = tmp_path / f"w{fake.index}.sock"
            await web.UnixSite(runner, str(sock)).start()
            runners.append(runner)
            workers.append(Worker(fake.index, sock, WorkerState.RUNNING, generation=1))
        pool = Pool(workers, Health(ready=True), coordination)
        pools.append(pool)
        client = await aiohttp_client(create_supervisor_admin(pool))
        return Setup(client, pool, fakes, runners[-2:])

    yield make
    for pool in pools:
        for worker in pool.workers:
            await worker.detach()
    for runner in runners:
        await runner.cleanup()


AUTH = {"Authorization": "Bearer t0k3n"}


async def test_a_local_write_goes_to_every_worker_with_the_token(supervisor: Factory) -> None:
    s = await supervisor("local")
    response = await s.client.put("/rollout/api/share", json={"percent": 5}, headers=AUTH)
    assert response.status == 200
    assert (await response.json())["route"] == "api"
    for fake in s.fakes:
        assert fake.writes == [("/rollout/api/share", "Bearer t0k3n", b'{"percent": 5}')]


async def test_a_write_one_worker_refuses_answers_its_status_naming_it(supervisor: Factory) -> None:
    s = await supervisor("local")
    s.fakes[1].write_status = 409
    response = await s.client.post("/rollout/api/approve", headers=AUTH)
    assert response.status == 409
    body = await response.json()
    assert body["worker"] == 1 and body["applied_by_workers"] == [0]
    assert body["reason"] == "nothing pending"


async def test_no_local_write_is_sent_while_a_worker_is_not_running(supervisor: Factory) -> None:
    s = await supervisor("local")
    s.pool.workers[1].state = WorkerState.RESTARTING
    response = await s.client.post("/rollout/api/promote", headers=AUTH)
    assert response.status == 503
    body = await response.json()
    assert body["worker"] == 1 and "restarting" in body["reason"]
    assert [f.writes for f in s.fakes] == [[], []]


async def test_a_fleet_write_goes_to_one_worker_only(supervisor: Factory) -> None:
    s = await supervisor("redis")
    response = await s.client.post("/rollout/api/promote", headers=AUTH)
    assert response.status == 200
    assert [len(f.writes) for f in s.fakes] == [1, 0]


async def test_reads_go_to_the_first_running_worker(supervisor: Factory) -> None:
    s = await supervisor("local")
    s.pool.workers[0].state = WorkerState.RESTARTING
    response = await s.client.get("/rollout")
    assert (await response.json())["from"] == 1


async def test_a_worker_that_stopped_answering_is_a_502_naming_it(supervisor: Factory) -> None:
    s = await supervisor("local")
    await s.stop_worker(1)
    response = await s.client.put("/rollout/api/share", json={"percent": 5}, headers=AUTH)
    assert response.status == 502
    body = await response.json()
    assert body["worker"] == 1 and body["applied_by_workers"] == [0]


def samples(text: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


async def test_a_worker_that_cannot_be_scraped_keeps_its_last_values(supervisor: Factory) -> None:
    s = await supervisor("local")
    s.fakes[0].requests.inc(3)
    s.fakes[1].requests.inc(4)
    s.fakes[1].in_flight.set(2)
    first = samples(await (await s.client.get("/metrics")).text())
    assert first[("app_requests_total", ())] == 7
    assert first[("shadow_proxy_worker_up", (("worker", "1"),))] == 1

    await s.stop_worker(1)
    s.fakes[0].requests.inc(1)
    second = samples(await (await s.client.get("/metrics")).text())
    assert second[("app_requests_total", ())] == 8
    assert second[("app_in_flight", (("worker", "1"),))] == 2
    assert second[("shadow_proxy_worker_up", (("worker", "1"),))] == 0
    assert second[("shadow_proxy_workers", (("state", "running"),))] == 2


async def test_readiness_names_the_worker_that_is_not_ready(supervisor: Factory) -> None:
    s = await supervisor("local")
    assert (await s.client.get("/readyz")).status == 200
    s.fakes[1].ready = False
    response = await s.client.get("/readyz")
    assert response.status == 503
    assert (await response.json())["workers"] == {"0": "ok", "1": "answered 503"}
    s.pool.health.draining = True
    assert await (await s.client.get("/readyz")).json() == {"status": "draining"}


async def test_liveness_fails_while_a_worker_is_down(supervisor: Factory) -> None:
    s = await supervisor("local")
    assert (await s.client.get("/healthz")).status == 200
    s.pool.workers[0].state = WorkerState.RESTARTING
    await s.stop_worker(1)
    response = await s.client.get("/healthz")
    assert response.status == 503
    assert (await response.json())["workers"] == {"0": "restarting", "1": "not answering"}


async def test_liveness_stays_200_while_the_pod_drains(supervisor: Factory) -> None:
    s = await supervisor("local")
    s.pool.health.draining = True
    s.pool.workers[0].state = WorkerState.STOPPING
    s.pool.workers[1].state = WorkerState.STOPPING
    await s.stop_worker(1)  # exited already; the other still drains
    response = await s.client.get("/healthz")
    assert response.status == 200
    assert (await s.client.get("/readyz")).status == 503


async def test_two_writes_at_once_leave_every_worker_at_the_same_share(supervisor: Factory) -> None:
    s = await supervisor("local")
    # Unserialised, worker 0 would apply 20 last and worker 1 would apply 10 last.
    s.fakes[0].delays = {20.0: 0.3}
    s.fakes[1].delays = {10.0: 0.3}

    async def put(percent: float) -> int:
        body = {"percent": percent}
        response = await s.client.put("/rollout/api/share", json=body, headers=AUTH)
        return response.status

    assert await asyncio.gather(put(20), put(10)) == [200, 200]
    assert s.fakes[0].share == s.fakes[1].share
    assert "workers_disagree" not in await (await s.client.get("/rollout")).json()


async def test_a_rollout_read_says_when_the_workers_shares_differ(supervisor: Factory) -> None:
    s = await supervisor("local")
    s.fakes[0].share, s.fakes[1].share = 20, 10
    body = await (await s.client.get("/rollout")).json()
    assert body["from"] == 0
    assert body["workers_disagree"] == {
        "api": {"0": {"stage": "canary", "percent": 20}, "1": {"stage": "canary", "percent": 10}}
    }
    s.fakes[1].share = 20
    assert "workers_disagree" not in await (await s.client.get("/rollout")).json()


async def test_a_worker_that_times_out_on_a_write_may_have_applied_it(
    supervisor: Factory, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(workeradmin, "ADMIN_TIMEOUT", 0.2)
    s = await supervisor("local")
    s.fakes[1].delays = {5.0: 2.0}
    response = await s.client.put("/rollout/api/share", json={"percent": 5}, headers=AUTH)
    assert response.status == 504
    body = await response.json()
    assert body["worker"] == 1 and body["error"] == "gateway_timeout"
    assert body["applied_by_workers"] == [0]
    assert body["maybe_applied_by_workers"] == [1]


async def test_the_supervisors_own_process_series_are_in_the_merged_metrics(
    supervisor: Factory,
) -> None:
    s = await supervisor("local")
    merged = samples(await (await s.client.get("/metrics")).text())
    assert merged[("process_resident_memory_bytes", (("worker", "supervisor"),))] > 0
