"""The fleet's shared state against a real redis-server: compare-and-set, the
lease and its fencing, clocks, bad records, and two in-process replicas that
seed, follow, hold when Redis goes away and re-seed when it comes back empty."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import pytest
from conftest import metric_value
from prometheus_client import CollectorRegistry
from redis_server import RedisServer

from proxy.controller import Controller
from proxy.errors import CoordinationError
from proxy.fleet import Fleet
from proxy.fleetconfig import RedisSettings
from proxy.fleetstore import CONFLICT, NOT_LEADER, FleetStore
from proxy.metrics import Metrics
from proxy.rollout import Command, RolloutState, Stage
from proxy.routing import Routing
from proxy.settings import Settings, settings_from


@pytest.fixture
async def redis(tmp_path: Path) -> AsyncIterator[RedisServer]:
    server = RedisServer(tmp_path / "redis")
    await server.start()
    try:
        yield server
    finally:
        await server.stop()


def redis_settings(server: RedisServer, **extra: Any) -> RedisSettings:
    options = {"lease_ttl": 3.0, "poll_interval": 0.2, "timeout": 0.5, **extra}
    return RedisSettings(url=server.url, key_prefix="test", **options)


def canary(percent: float, since: float) -> RolloutState:
    return RolloutState(Stage.CANARY, percent, 0, since=since, reason=f"at {percent:g}%")


async def test_two_writers_from_one_version_one_wins_the_other_conflicts(
    redis: RedisServer,
) -> None:
    a, b = FleetStore(redis_settings(redis), "a"), FleetStore(redis_settings(redis), "b")
    seeded = await a.write(
        "api", 0, RolloutState(since=time.monotonic()), 0.0, "e1", as_leader=False
    )
    assert seeded == 1
    first = await a.write("api", 1, canary(1, time.monotonic()), 0.0, "e1", as_leader=False)
    second = await b.write("api", 1, canary(5, time.monotonic()), 0.0, "e1", as_leader=False)
    assert (first, second) == (2, CONFLICT)
    record = await b.read("api")
    assert record is not None
    assert (record.version, record.state.percent, record.by) == (2, 1.0, "a")
    await a.close()
    await b.close()


async def test_a_deposed_leader_cannot_write_once_another_holds_the_lease(
    redis: RedisServer,
) -> None:
    a, b = FleetStore(redis_settings(redis), "a"), FleetStore(redis_settings(redis), "b")
    assert await a.hold_lease(0.3)
    assert not await b.hold_lease(0.3)  # held
    assert await a.hold_lease(0.3)  # renewed by its holder
    assert await a.write("api", 0, canary(1, time.monotonic()), 0.0, "e1", as_leader=True) == 1
    await asyncio.sleep(0.5)  # a stalls past its TTL: the lease is free
    assert await b.hold_lease(3.0)
    assert (
        await a.write("api", 1, canary(5, time.monotonic()), 0.0, "e1", as_leader=True)
        == NOT_LEADER
    )
    assert await b.write("api", 1, canary(5, time.monotonic()), 0.0, "e1", as_leader=True) == 2
    assert await a.write("api", 2, canary(10, time.monotonic()), 0.0, "e1", as_leader=False) == 3
    await a.release_lease()  # not a's to release: b keeps it
    assert not await a.hold_lease(3.0)
    await a.close()
    await b.close()


async def test_time_in_stage_survives_processes_with_different_monotonic_clocks(
    redis: RedisServer,
) -> None:
    """Each process's monotonic clock starts somewhere else; Redis keeps wall time."""
    wall = time.time
    a = FleetStore(redis_settings(redis), "a", clock=lambda: wall() - 1_000.0, wall=wall)
    b = FleetStore(redis_settings(redis), "b", clock=lambda: wall() + 50_000.0, wall=wall)
    await a.write("api", 0, canary(5, wall() - 1_000.0 - 42.0), 0.0, "e1", as_leader=False)
    record = await b.read("api")
    assert record is not None
    assert wall() + 50_000.0 - record.state.since == pytest.approx(42.0, abs=1.0)
    await a.close()
    await b.close()


@pytest.mark.parametrize(
    "data",
    [b"not json", b'{"state": {"stage": "canary"}}', b'{"state": null, "config_percent": 1}'],
)
async def test_a_record_that_is_not_ours_is_a_coordination_error_naming_the_key(
    redis: RedisServer, data: bytes
) -> None:
    await redis.command(b"HSET", b"test:route:api", b"version", b"3", b"data", data)
    store = FleetStore(redis_settings(redis), "a")
    with pytest.raises(CoordinationError, match="test:route:api is not a shadow-proxy"):
        await store.read("api")
    await store.close()


async def test_an_unreachable_redis_is_a_coordination_error_for_every_operation(
    redis: RedisServer,
) -> None:
    store = FleetStore(redis_settings(redis), "a")
    events = store.events(asyncio.Event())
    listening = asyncio.ensure_future(events.__anext__())
    await asyncio.sleep(0.2)
    await redis.stop()
    with pytest.raises(CoordinationError) as failed:
        await asyncio.wait_for(listening, timeout=5)
    assert failed.value.operation == "subscribe"
    state = RolloutState(since=time.monotonic())
    operations: list[tuple[str, Callable[[], Any]]] = [
        ("read", lambda: store.read("api")),
        ("write", lambda: store.write("api", 0, state, 0.0, "e1", as_leader=False)),
        ("lease", lambda: store.hold_lease(3.0)),
    ]
    for name, call in operations:
        with pytest.raises(CoordinationError, match=f"Redis {name} failed") as error:
            await call()
        assert error.value.operation == name
    await events.aclose()
    await store.close()


def settings(
    server: RedisServer, replica: str, percent: float = 0.0, poll: str = "200ms"
) -> Settings:
    return settings_from(
        {
            "backends": {"legacy": {"url": "http://l"}, "agent": {"url": "http://a"}},
            "routes": [
                {
                    "name": "api",
                    "match": {"prefix": "/"},
                    "rollout": {"mode": "manual", "percent": percent},
                }
            ],
            "coordination": "redis",
            "redis": {
                "url": server.url,
                "key_prefix": "test",
                "replica": replica,
                "lease_ttl": "3s",
                "poll_interval": poll,
                "timeout": "500ms",
            },
        }
    )


class Replica:
    """The controller and the fleet driver of one proxy, without its listeners."""

    def __init__(self, settings: Settings) -> None:
        self.routing = Routing(settings, now=time.monotonic())
        self.metrics = Metrics(CollectorRegistry(), ["api"])
        self.controller = Controller(lambda: self.routing, self.metrics, None)
        self.fleet = Fleet(
            settings.redis, lambda: self.routing, self.metrics, self.controller.adopt
        )
        self.controller.coordination = self.fleet
        self.stop = asyncio.Event()
        self.task: asyncio.Task[None] | None = None

    @property
    def state(self) -> RolloutState:
        return self.routing.runtimes["api"].state

    def reload(self, settings: Settings) -> None:
        """What Core.apply does with the routing on a config reload."""
        self.routing = Routing(settings, now=time.monotonic(), previous=self.routing)

    async def start(self) -> Replica:
        await self.fleet.start()
        self.task = asyncio.create_task(self.fleet.run(self.stop))
        return self

    async def close(self) -> None:
        self.stop.set()
        if self.task is not None:
            await self.task
        await self.fleet.close()

    def connected(self) -> float:
        return metric_value(self.metrics.registry, "shadow_proxy_fleet_connected")


async def until(check: Callable[[], bool], within: float = 5.0) -> None:
    deadline = time.monotonic() + within
    while time.monotonic() < deadline:
        if check():
            return
        await asyncio.sleep(0.02)
    raise AssertionError(f"not true within {within:g}s")


async def test_replicas_seed_follow_hold_without_redis_and_reseed_it_when_it_returns(
    redis: RedisServer,
) -> None:
    one = await Replica(settings(redis, "one")).start()
    two = await Replica(settings(redis, "two")).start()
    try:
        assert one.fleet.version("api") == two.fleet.version("api") == 1  # seeded, then adopted
        decision = await two.controller.command("api", Command.SET, 25.0)  # an admin on two
        assert decision.action == "set"
        await until(lambda: one.state.percent == 25.0)
        assert one.fleet.version("api") == two.fleet.version("api") == 2

        await redis.stop()  # fail static: both keep 25%, and the admin API cannot move it
        await until(lambda: one.connected() == 0 and two.connected() == 0)
        with pytest.raises(CoordinationError):
            await one.controller.command("api", Command.SET, 50.0)
        await asyncio.sleep(0.5)
        assert one.state.percent == two.state.percent == 25.0

        before = one.fleet.known["api"]
        await redis.start()  # back, and empty: re-seeded, numbered from 1 in a new epoch
        await until(lambda: one.connected() == 1 and two.connected() == 1)
        await until(lambda: one.fleet.known["api"][0] != before[0])
        await until(lambda: one.fleet.known["api"] == two.fleet.known["api"])
        assert one.state.percent == two.state.percent == 25.0
        await one.controller.command("api", Command.ROLLBACK)
        await until(lambda: two.state.stage is Stage.ROLLED_BACK, within=1.0)
    finally:
        await one.close()
        await two.close()


async def test_a_replica_started_with_an_edited_share_moves_the_fleet_to_it(
    redis: RedisServer,
) -> None:
    one = await Replica(settings(redis, "one", percent=5.0)).start()
    two = await Replica(settings(redis, "two", percent=5.0)).start()
    try:
        await one.controller.command("api", Command.SET, 10.0)
        await until(lambda: two.state.percent == 10.0)
        three = await Replica(settings(redis, "three", percent=50.0)).start()  # a new config
        try:
            await until(lambda: one.state.percent == two.state.percent == 50.0)
            assert three.state.percent == 50.0
            await asyncio.sleep(0.5)  # the replicas on the old config do not push it back
            assert one.state.percent == two.state.percent == three.state.percent == 50.0
        finally:
            await three.close()
    finally:
        await one.close()
        await two.close()


async def test_a_replica_joining_on_the_same_config_takes_the_fleets_state(
    redis: RedisServer,
) -> None:
    one = await Replica(settings(redis, "one", percent=5.0)).start()
    try:
        await one.controller.command("api", Command.SET, 25.0)
        two = await Replica(settings(redis, "two", percent=5.0)).start()
        try:
            assert two.state.percent == 25.0
            assert two.state.stage is Stage.CANARY
        finally:
            await two.close()
    finally:
        await one.close()


async def test_a_write_reaches_the_other_replicas_through_pub_sub_long_before_a_poll(
    redis: RedisServer,
) -> None:
    one = await Replica(settings(redis, "one", poll="30s")).start()
    two = await Replica(settings(redis, "two", poll="30s")).start()
    try:
        await asyncio.sleep(0.3)  # both subscribed
        for percent in (1.0, 5.0, 50.0):
            await two.controller.command("api", Command.SET, percent)
            assert two.state.percent == percent
            await until(lambda: one.state.percent == two.state.percent, within=1.0)
    finally:
        await one.close()
        await two.close()


async def test_a_redis_that_lost_its_data_numbers_from_one_and_every_replica_still_follows(
    redis: RedisServer,
) -> None:
    """A replica started during the outage seeds version 1 in a new epoch: the
    others, which knew version 2, must take it and everything after it."""
    one = await Replica(settings(redis, "one", percent=5.0)).start()
    try:
        await one.controller.command("api", Command.SET, 25.0)
        await redis.stop()
        await redis.start()
        two = await Replica(settings(redis, "two", percent=5.0)).start()  # seeds 5%, v1
        try:
            await until(lambda: one.state.percent == 5.0)
            await two.controller.command("api", Command.SET, 50.0)
            await until(lambda: one.state.percent == 50.0)
            assert one.fleet.known["api"] == two.fleet.known["api"]
        finally:
            await two.close()
    finally:
        await one.close()


async def test_a_late_reload_of_the_same_edit_does_not_undo_what_the_fleet_did_since(
    redis: RedisServer,
) -> None:
    """ConfigMap updates reach pods up to a minute apart: the first reload pushes the
    edited share, and a later one of the same edit gives way to the fleet's state."""
    one = await Replica(settings(redis, "one", percent=5.0)).start()
    two = await Replica(settings(redis, "two", percent=5.0)).start()
    try:
        one.reload(settings(redis, "one", percent=10.0))
        await until(lambda: two.state.percent == 10.0)
        await one.controller.command("api", Command.PAUSE)
        await until(lambda: two.state.stage is Stage.PAUSED)
        two.reload(settings(redis, "two", percent=10.0))  # its local share: a SET to 10%
        await until(lambda: two.state.stage is Stage.PAUSED)
        await asyncio.sleep(0.5)
        assert one.state.stage is two.state.stage is Stage.PAUSED
    finally:
        await one.close()
        await two.close()


async def test_a_record_that_is_not_ours_holds_that_route_without_calling_it_an_outage(
    redis: RedisServer,
) -> None:
    one = await Replica(settings(redis, "one", percent=5.0)).start()
    try:
        await redis.command(b"HSET", b"test:route:api", b"version", b"9", b"data", b"{}")
        await asyncio.sleep(0.6)  # three polls
        assert one.state.percent == 5.0
        assert one.connected() == 1
        with pytest.raises(CoordinationError, match="not a shadow-proxy rollout record"):
            await one.controller.command("api", Command.SET, 50.0)
        await redis.command(b"DEL", b"test:route:api")  # the way out: delete the key
        await until(lambda: one.fleet.version("api") == 1)
        await one.controller.command("api", Command.SET, 50.0)
        assert one.state.percent == 50.0
    finally:
        await one.close()


async def test_a_state_the_local_config_forbids_is_bounded_by_it_when_adopted(
    redis: RedisServer,
) -> None:
    """A replica whose config no longer allows the autonomous stage (no fallback to
    legacy) never serves it, whatever the fleet's record says."""
    one = await Replica(settings(redis, "one", percent=5.0)).start()
    try:
        epoch, version = one.fleet.known["api"]
        autonomous = RolloutState(Stage.AUTONOMOUS, 100.0, since=time.monotonic(), reason="x")
        writer = FleetStore(redis_settings(redis), "elsewhere")
        assert await writer.write("api", version, autonomous, 5.0, epoch, as_leader=False) > 0
        await writer.close()
        await until(lambda: one.fleet.version("api") == version + 1)
        assert (one.state.stage, one.state.percent) == (Stage.PRIMARY, 100.0)
        assert not one.routing.runtimes["api"].autonomous
    finally:
        await one.close()
