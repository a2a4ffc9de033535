"""``shadow-proxy run --workers 2`` as users run it: two worker processes behind
one port, one supervisor answering the admin port for both."""

from __future__ import annotations

import asyncio
import json
import math
import os
import signal
import socket
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import yaml
from fakes import Fake
from fleet import wait_until
from prometheus_client.parser import text_string_to_metric_families
from test_cli import Running, cli, start_cli
from test_drain import sigterm_under_load

pytestmark = pytest.mark.e2e
TOKEN = "workers-token"
REQUESTS = ("shadow_proxy_requests_total", {"route": "api", "backend": "legacy"})
Sample = tuple[str, dict[str, str]]


def config(legacy: Fake, agent: Fake, **extra: Any) -> dict[str, Any]:
    route: dict[str, Any] = {"name": "api", "match": {"prefix": "/api/"}}
    route["shadow"] = {"enabled": True}
    route.update(extra.pop("route", {}))
    return {
        "listen": {"host": "127.0.0.1", "port": 0},
        "admin": {"port": 0, "token": TOKEN},
        "backends": {"legacy": {"url": legacy.url}, "agent": {"url": agent.url}},
        "routes": [route],
        "logging": {"format": "json"},
        "shutdown": {"drain_delay": "0s", "timeout": "10s", "shadow_grace": "1s"},
        **extra,
    }


def total(text: str, sample: Sample) -> float:
    """The sum of every series of the sample's name that carries its labels."""
    name, labels = sample
    return sum(
        s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
        if s.name == name and all(s.labels.get(k) == v for k, v in labels.items())
    )


def workers_of(text: str, name: str) -> list[str]:
    """The worker label of each sample named ``name``."""
    return sorted(
        s.labels.get("worker", "-")
        for family in text_string_to_metric_families(text)
        for s in family.samples
        if s.name == name
    )


def started(proc: Running) -> dict[int, dict[str, Any]]:
    """The latest worker_started event of each worker index (pid, socket)."""
    return {e["worker"]: e for e in proc.events if e["event"] == "worker_started"}


async def worker_get(socket_path: str, path: str) -> str:
    """GET ``path`` from one worker's own admin socket, bypassing the supervisor."""
    connector = aiohttp.UnixConnector(path=socket_path)
    async with (
        aiohttp.ClientSession(connector=connector) as http,
        http.get(f"http://worker{path}") as response,
    ):
        assert response.status == 200, path
        return await response.text()


async def admin_get(proc: Running, path: str) -> str:
    async with aiohttp.ClientSession() as http, http.get(f"{proc.admin}{path}") as response:
        assert response.status == 200, (path, await response.text())
        return await response.text()


async def fresh_requests(url: str, count: int, concurrency: int = 8) -> list[int | str]:
    """``count`` GETs, each on a new connection (so the kernel picks a worker each time)."""
    outcomes: list[int | str] = []
    gate = asyncio.Semaphore(concurrency)
    connector = aiohttp.TCPConnector(force_close=True)
    async with aiohttp.ClientSession(connector=connector) as http:

        async def one(i: int) -> None:
            async with gate:
                try:
                    async with http.get(f"{url}/api/items/{i}") as response:
                        await response.read()
                        outcomes.append(response.status)
                except aiohttp.ClientError as exc:
                    outcomes.append(type(exc).__name__)

        await asyncio.gather(*(one(i) for i in range(count)))
    return outcomes


async def stop(proc: Running) -> None:
    proc.process.send_signal(signal.SIGTERM)
    assert await asyncio.wait_for(proc.process.wait(), timeout=20) == 0


Starter = Callable[..., Awaitable[Running]]


@pytest.fixture
async def start(tmp_path: Path) -> AsyncIterator[Starter]:
    """Start ``run --workers 2``; stop it (by PID) at the end if the test did not:
    SIGTERM, so the supervisor removes its runtime directory, then SIGKILL."""
    running: list[tuple[Running, asyncio.Task[None]]] = []

    async def go(config: dict[str, Any]) -> Running:
        proc = await start_cli(config, tmp_path, "--workers", "2")
        running.append((proc, asyncio.create_task(proc.read_events())))
        return proc

    yield go
    for proc, reader in running:
        if proc.process.returncode is None:
            proc.process.terminate()
            try:
                await asyncio.wait_for(proc.process.wait(), timeout=20)
            except TimeoutError:
                proc.process.kill()
                await proc.process.wait()
        await reader


async def test_two_workers_share_the_port_and_the_merged_counter_is_their_sum(
    start: Starter, legacy: Fake, agent: Fake
) -> None:
    proc = await start(config(legacy, agent))
    assert sorted(started(proc)) == [0, 1]
    outcomes = await fresh_requests(proc.proxy, 200)
    assert outcomes == [200] * 200

    merged = await wait_until(
        lambda: admin_get(proc, "/metrics"), lambda t: total(t, REQUESTS) >= 200, 5, "200 counted"
    )
    own = [await worker_get(w["socket"], "/metrics") for w in started(proc).values()]
    served = [total(text, REQUESTS) for text in own]
    assert all(n > 0 for n in served), f"one worker served everything: {served}"
    assert total(merged, REQUESTS) == sum(served) == 200
    # Gauges keep each worker's value apart; the supervisor adds its own series.
    assert workers_of(merged, "process_resident_memory_bytes") == ["0", "1", "supervisor"]
    assert total(merged, ("shadow_proxy_workers", {"state": "running"})) == 2
    assert total(merged, ("shadow_proxy_worker_restarts_total", {})) == 0
    # Each worker mirrored its share: every request reached the agent once.
    sent = ("shadow_proxy_shadow_requests_total", {"route": "api", "outcome": "sent"})
    await wait_until(
        lambda: admin_get(proc, "/metrics"), lambda t: total(t, sent) == 200, 5, "200 mirrored"
    )

    async def seen() -> int:
        return len(agent.seen)

    await wait_until(seen, lambda n: n == 200, 5, "200 at the agent")
    worker_lines = [e for e in proc.events if e["event"] == "worker_listening"]
    assert sorted(e["worker"] for e in worker_lines) == [0, 1]
    await stop(proc)
    assert not Path(started(proc)[0]["socket"]).parent.exists()  # the runtime dir is gone


async def test_sigterm_under_load_loses_nothing_and_exits_0(
    legacy: Fake, agent: Fake, tmp_path: Path
) -> None:
    legacy.delay = 0.05  # requests are always in flight
    proc = await start_cli(
        config(legacy, agent, shutdown={"drain_delay": "500ms", "timeout": "10s"}),
        tmp_path, "--workers", "2",
    )  # fmt: skip
    sockets = [w["socket"] for w in started(proc).values()]

    async def both_served() -> float:
        """When each worker had served some of the load (its own metrics say)."""
        while True:
            try:
                counts = [total(await worker_get(s, "/metrics"), REQUESTS) for s in sockets]
            except (aiohttp.ClientError, OSError, AssertionError):
                counts = []  # draining already
            if len(counts) == 2 and all(n > 0 for n in counts):
                return time.monotonic()
            await asyncio.sleep(0.05)

    watching = asyncio.create_task(both_served())
    load, signalled = await sigterm_under_load(proc)
    assert proc.process.returncode == 0
    try:
        both = await asyncio.wait_for(watching, timeout=1)  # the workers are gone: now or never
    except TimeoutError:
        both = math.inf
    assert both < signalled, "the SIGTERM came before both workers had served"
    before = [o for o in load.outcomes if o.started < signalled - 0.01]
    assert len(before) > 50, "the load did not get going"
    assert {o.status for o in load.outcomes if o.status is not None} == {200}
    assert [o for o in before if o.status != 200] == []
    stopped = [e for e in proc.events if e["event"] == "worker_stopped"]
    assert sorted((e["worker"], e["code"]) for e in stopped) == [(0, 0), (1, 0)]
    assert proc.events[-1]["event"] == "stopped" and "worker" not in proc.events[-1]


async def test_a_killed_worker_is_restarted_and_the_merged_counter_never_goes_down(
    start: Starter, legacy: Fake, agent: Fake
) -> None:
    proc = await start(config(legacy, agent))
    assert await fresh_requests(proc.proxy, 60) == [200] * 60
    before = await wait_until(
        lambda: admin_get(proc, "/metrics"), lambda t: total(t, REQUESTS) == 60, 5, "60 counted"
    )
    victim = started(proc)[0]
    os.kill(victim["pid"], signal.SIGKILL)

    def restarted() -> Any:
        return next(
            (e for e in proc.events if e["event"] == "worker_ready" and e["pid"] != victim["pid"]
             and e["worker"] == 0), None,
        )  # fmt: skip

    async def probe() -> Any:
        return restarted()

    await wait_until(probe, lambda e: e is not None, 15, "worker 0 restarted")
    exited = next(e for e in proc.events if e["event"] == "worker_exited")
    assert (exited["worker"], exited["signal"]) == (0, "SIGKILL")
    after_restart = await admin_get(proc, "/metrics")
    # Worker 0's 60-odd requests died with it; the merged counter keeps them.
    assert total(after_restart, REQUESTS) == total(before, REQUESTS)
    assert total(after_restart, ("shadow_proxy_worker_restarts_total", {})) == 1

    assert await fresh_requests(proc.proxy, 60) == [200] * 60
    fresh = started(proc)[0]
    assert fresh["pid"] != victim["pid"]
    assert total(await worker_get(fresh["socket"], "/metrics"), REQUESTS) > 0
    final = await wait_until(
        lambda: admin_get(proc, "/metrics"), lambda t: total(t, REQUESTS) == 120, 5, "120"
    )
    assert total(final, REQUESTS) == 120
    await stop(proc)


async def test_a_share_set_through_the_supervisor_reaches_every_worker(
    start: Starter, legacy: Fake, agent: Fake, tmp_path: Path
) -> None:
    manual = {"rollout": {"mode": "manual"}}
    proc = await start(config(legacy, agent, route=manual, state_file=str(tmp_path / "s.json")))
    url = f"{proc.admin}/rollout/api/share"
    async with aiohttp.ClientSession() as http:
        async with http.put(url, json={"percent": 25}) as refused:
            assert refused.status == 401
            body = await refused.json()
            assert body["worker"] == 0 and body["applied_by_workers"] == []
        auth = {"Authorization": f"Bearer {TOKEN}"}
        async with http.put(url, json={"percent": 25}, headers=auth) as response:
            assert response.status == 200, await response.text()
    for worker in started(proc).values():
        rollout = json.loads(await worker_get(worker["socket"], "/rollout"))
        assert rollout["routes"]["api"]["percent"] == 25, worker["worker"]
    merged = await admin_get(proc, "/metrics")
    for index in ("0", "1"):
        share = ("shadow_proxy_rollout_percent", {"route": "api", "worker": index})
        assert total(merged, share) == 25
    agreed = json.loads(await admin_get(proc, "/rollout"))
    assert agreed["routes"]["api"]["percent"] == 25 and "workers_disagree" not in agreed

    # Behind the supervisor's back, on worker 1's own socket: the pod's view says so.
    connector = aiohttp.UnixConnector(path=started(proc)[1]["socket"])
    async with (
        aiohttp.ClientSession(connector=connector) as http,
        http.put("http://worker/rollout/api/share", json={"percent": 10}, headers=auth) as r,
    ):
        assert r.status == 200, await r.text()
    split = json.loads(await admin_get(proc, "/rollout"))
    assert {k: v["percent"] for k, v in split["workers_disagree"]["api"].items()} == {
        "0": 25,
        "1": 10,
    }
    await stop(proc)


async def test_a_reload_to_an_auto_rollout_is_rejected_by_every_worker(
    start: Starter, legacy: Fake, agent: Fake, tmp_path: Path
) -> None:
    data = config(
        legacy, agent, route={"rollout": {"mode": "manual"}}, reload_interval="100ms",
        state_file=str(tmp_path / "state.json"),
    )  # fmt: skip
    proc = await start(data)
    data["routes"][0]["rollout"] = {"mode": "auto"}
    path = tmp_path / "proxy.yaml"
    path.with_suffix(".new").write_text(yaml.safe_dump(data))
    os.replace(path.with_suffix(".new"), path)  # as an editor or a ConfigMap update does

    async def rejected() -> list[dict[str, Any]]:
        return [e for e in proc.events if e["event"] == "config_rejected"]

    found = await wait_until(rejected, lambda r: len(r) == 2, 10, "both workers reject it")
    assert sorted(e["worker"] for e in found) == [0, 1]
    assert all("routes.0.rollout.mode" in e["problems"][0] for e in found)
    rollout = json.loads(await admin_get(proc, "/rollout"))
    assert rollout["routes"]["api"]["mode"] == "manual"
    await stop(proc)


@pytest.mark.parametrize(
    ("extra", "problem", "way_out"),
    [
        (
            "state_file: state.json\nroutes: [{name: api, match: {prefix: /}, rollout: {}}]",
            "routes.0.rollout.mode: route 'api' rolls out in auto mode",
            "use rollout.mode: manual, coordination: redis, or one worker",
        ),
        (
            "routes: [{name: api, match: {prefix: /}, rollout: {mode: manual, percent: 5}}]",
            "routes.0.rollout: route 'api' has a rollout, but with --workers 2, coordination:"
            " local and no state_file",
            "set state_file, use coordination: redis, or one worker",
        ),
        (
            "recording: {enabled: true, max_total_size: 1KiB, max_file_size: 1KiB}",
            "recording.max_total_size: 1024 bytes divided among 2 workers leaves each 512",
            "raise it or use fewer workers",
        ),
    ],
    ids=["auto-rollout", "no-state-file", "recording-too-small"],
)
def test_what_two_local_workers_cannot_run_is_refused_at_start(
    tmp_path: Path, extra: str, problem: str, way_out: str
) -> None:
    path = tmp_path / "proxy.yaml"
    path.write_text(
        "backends: {legacy: {url: 'http://127.0.0.1:9'}, agent: {url: 'http://127.0.0.1:9'}}\n"
        + extra
        + "\n"
    )
    result = cli("run", "--config", str(path), "--workers", "2")
    assert result.returncode == 2
    assert problem in result.stderr
    assert way_out in result.stderr
    assert "Traceback" not in result.stderr


@pytest.mark.parametrize("given", ["0", "65", "two", "1.5"])
def test_a_worker_count_that_is_not_1_to_64_is_a_clear_error(given: str) -> None:
    result = cli("run", "--config", "config/proxy.yaml", "--workers", given)
    assert result.returncode == 2
    expected = f"argument --workers: {given!r} is not a whole number of worker processes from 1"
    assert expected in result.stderr
    assert "Traceback" not in result.stderr


def test_a_worker_that_cannot_start_stops_the_pod_with_its_error(tmp_path: Path) -> None:
    path = tmp_path / "proxy.yaml"
    path.write_text(
        yaml.safe_dump(
            {
                "listen": {"host": "127.0.0.1", "port": 0},
                "admin": {"port": 0, "token_file": str(tmp_path / "missing-token")},
                "backends": {"legacy": {"url": "http://127.0.0.1:9"}},
            }
        )
    )
    result = cli("run", "--config", str(path), "--workers", "2")
    assert result.returncode == 2
    assert "admin.token_file: cannot read: No such file or directory" in result.stderr
    assert "before it was ready" in result.stderr
    assert "Traceback" not in result.stderr


async def test_a_second_supervisor_on_the_same_port_is_refused_like_one_process(
    start: Starter, legacy: Fake, agent: Fake, tmp_path: Path
) -> None:
    """Its workers would join the first pod's SO_REUSEPORT group and take half
    of its traffic without a word."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    data = config(legacy, agent)
    data["listen"]["port"] = port
    first = await start(data)
    assert first.proxy == f"http://127.0.0.1:{port}"
    second = tmp_path / "second.yaml"
    second.write_text(yaml.safe_dump(data))
    result = cli("run", "--config", str(second), "--workers", "2", timeout=20)
    assert result.returncode == 1
    assert result.stderr.startswith("error: cannot listen:")
    assert f"('127.0.0.1', {port}): address already in use" in result.stderr.lower()
    assert "Traceback" not in result.stderr
    assert await fresh_requests(first.proxy, 20) == [200] * 20
    await stop(first)
