"""Fleet mode as it runs: three ``shadow-proxy run`` replicas sharing one
rollout through a real Redis, judged through a real Prometheus scraping all
three, with client traffic flowing (and never failing) throughout."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest
from fakes import Fake
from fleet import (
    LEASE_TTL,
    POLL_INTERVAL,
    SLACK,
    Fleet,
    Sample,
    Timeline,
    replica_config,
    rollout,
    wait_until,
)
from prom import Prometheus, start_prometheus
from redis_server import RedisServer, free_port

pytestmark = pytest.mark.e2e
NAMES = ("r1", "r2", "r3")
IN_STEP = POLL_INTERVAL + SLACK  # how far behind the fleet one replica may be
BAD = b'{"ok": false}'  # the legacy fake answers {"ok": true}
FleetFactory = Callable[..., Awaitable[Fleet]]


@pytest.fixture
async def redis(tmp_path: Path) -> AsyncIterator[RedisServer]:
    server = RedisServer(tmp_path / "redis")
    try:
        await server.start()
        yield server
    finally:
        await server.stop()


@pytest.fixture
async def start_fleet(
    tmp_path: Path, legacy: Fake, agent: Fake, redis: RedisServer
) -> AsyncIterator[FleetFactory]:
    """Starts r1, r2, r3 on one Redis (and, if asked, a Prometheus scraping all
    three, started first so the leader's queries never find it missing), waits
    for a leader, and stops everything by PID after the test."""
    fleets: list[Fleet] = []
    proms: list[Prometheus] = []

    async def start(policy: dict[str, Any], *, prometheus: bool = False) -> Fleet:
        admin_ports = {name: free_port() if prometheus else 0 for name in NAMES}
        url = None
        if prometheus:
            targets = [f"127.0.0.1:{port}" for port in admin_ports.values()]
            proms.append(await start_prometheus(tmp_path, targets))
            url = proms[-1].url
        configs = {
            name: replica_config(
                name,
                legacy=legacy.url,
                agent=agent.url,
                redis=redis.url,
                rollout=policy,
                prometheus=url,
                admin_port=admin_ports[name],
            )
            for name in NAMES
        }
        fleet = await Fleet.start(configs, tmp_path)
        fleets.append(fleet)
        if proms:
            await proms[-1].wait_scraped()
        await wait_until(fleet.leader, lambda name: name is not None, LEASE_TTL + 5, "a leader")
        return fleet

    try:
        yield start
    finally:
        for fleet in fleets:
            print(fleet.diagnostics())  # shown when the test failed
            await fleet.stop()
        for prom in proms:
            prom.stop()


async def settled_within(fleet: Fleet, want: tuple[str, float], bound: float, what: str) -> None:
    """Every live replica reports ``want`` (stage, percent) within ``bound`` seconds."""
    start = time.monotonic()
    await wait_until(fleet.stages, lambda s: set(s.values()) == {want}, bound + 10, what)
    took = time.monotonic() - start
    assert took <= bound, f"{what}: took {took:.2f}s, more than {bound:g}s"


def at_least(percent: float) -> Callable[[Sample], bool]:
    return lambda sample: sample.percent >= percent


def spread(timeline: Timeline, names: list[str], reached: Callable[[Sample], bool]) -> float:
    """Seconds between the first and the last replica to be seen in a state."""
    firsts = {name: timeline.first(name, reached) for name in names}
    assert None not in firsts.values(), firsts
    times = [t for t in firsts.values() if t is not None]
    return max(times) - min(times)


def transitions(fleet: Fleet, **fields: Any) -> dict[str, list[dict[str, Any]]]:
    """The ``rollout_transition`` events each replica logged (only deciders log them)."""
    found = {r.name: r.logged("rollout_transition", **fields) for r in fleet.replicas}
    return {name: events for name, events in found.items() if events}


async def test_a_good_agent_advances_the_whole_fleet_in_lockstep(
    start_fleet: FleetFactory,
) -> None:
    fleet = await start_fleet(rollout(), prometheus=True)
    timeline = Timeline(fleet)
    traffic = fleet.start_traffic()
    try:
        await wait_until(
            fleet.stages, lambda s: set(s.values()) == {("primary", 100.0)}, 80, "all primary"
        )
    finally:
        await timeline.close()
    names = list(NAMES)
    for percent in (10.0, 50.0, 100.0):
        lag = spread(timeline, names, at_least(percent))
        assert lag <= IN_STEP, f"a replica reached {percent:g}% {lag:.2f}s after another"
    for name in names:
        seen = [s.percent for s in timeline.samples if s.replica == name]
        assert seen == sorted(seen), f"{name} went backwards: {seen}"
    # One decision for the fleet: three promotions in all, made by one replica.
    promotions = transitions(fleet, action="promote")
    assert len(promotions) == 1, promotions
    assert [e["to_percent"] for e in next(iter(promotions.values()))] == [10.0, 50.0, 100.0]
    assert traffic.failures == []
    assert all(traffic.total(name) > 0 for name in names)


async def test_a_bad_agent_is_rolled_back_on_every_replica_together(
    start_fleet: FleetFactory, agent: Fake
) -> None:
    agent.body = BAD
    fleet = await start_fleet(rollout(percent=10), prometheus=True)
    timeline = Timeline(fleet)
    traffic = fleet.start_traffic()
    try:
        await wait_until(
            fleet.stages, lambda s: set(s.values()) == {("rolled_back", 0.0)}, 60, "all rolled back"
        )
    finally:
        await timeline.close()
    lag = spread(timeline, list(NAMES), lambda s: s.stage == "rolled_back")
    assert lag <= IN_STEP, f"a replica rolled back {lag:.2f}s after another"
    assert max(s.percent for s in timeline.samples) == 10.0  # never promoted meanwhile
    rollbacks = transitions(fleet, action="rollback")
    assert len(rollbacks) == 1 and len(next(iter(rollbacks.values()))) == 1, rollbacks
    assert "agreement" in next(iter(rollbacks.values()))[0]["reason"]
    assert traffic.failures == []


async def test_when_the_leader_is_killed_another_takes_over_and_the_rollout_continues(
    start_fleet: FleetFactory,
) -> None:
    fleet = await start_fleet(rollout(approval=[50]))
    traffic = fleet.start_traffic()
    await wait_until(
        fleet.stages, lambda s: set(s.values()) == {("awaiting_approval", 10.0)}, 30, "at 10%"
    )
    old = await fleet.leader()
    assert old is not None
    killed = time.monotonic()
    await fleet.kill(fleet[old])
    new = await wait_until(fleet.leader, lambda n: n not in (None, old), 20, "a new leader")
    took = time.monotonic() - killed
    assert took <= LEASE_TTL + IN_STEP, f"the lease moved {took:.2f}s after the leader died"
    # The pending approval survived its leader: an operator approves on the follower.
    assert set((await fleet.stages()).values()) == {("awaiting_approval", 10.0)}
    follower = next(r for r in fleet.alive if r.name != new)
    status, body = await fleet.write(follower, "approve")
    assert status == 200, body
    await settled_within(fleet, ("canary", 50.0), IN_STEP, "approval on the survivors")
    await wait_until(
        fleet.stages, lambda s: set(s.values()) == {("primary", 100.0)}, 30, "all primary"
    )
    last = transitions(fleet, action="promote", to_percent=100.0, by="controller")
    assert list(last) == [new], last  # the new leader's gates made the last promotion
    assert traffic.failures == []


async def test_without_redis_every_replica_holds_its_split_and_resumes_when_it_returns(
    start_fleet: FleetFactory, redis: RedisServer
) -> None:
    fleet = await start_fleet(rollout(percent=10))
    await wait_until(fleet.stages, lambda s: set(s.values()) == {("canary", 10.0)}, 10, "at 10%")
    await redis.stop()
    cut = time.monotonic()
    connected = "shadow_proxy_fleet_connected"
    await wait_until(lambda: fleet.metrics(connected), lambda m: set(m.values()) == {0}, 10, "off")
    # Good evidence now piles up, but nobody may act on it: nobody leads.
    traffic = fleet.start_traffic()
    timeline = Timeline(fleet, period=0.25)
    try:
        await asyncio.sleep(5)  # the gates need 20 samples and a 1s interval
        status, body = await fleet.write(fleet["r2"], "share", 50)
        leading = await fleet.metrics("shadow_proxy_fleet_leader")
    finally:
        await timeline.close()
    assert status == 503 and body["error"] == "unavailable", (status, body)
    assert {(s.stage, s.percent) for s in timeline.samples} == {("canary", 10.0)}
    assert all(traffic.total(name) >= 20 for name in NAMES), traffic.served
    assert set(leading.values()) == {0}, leading
    # A leader cut off from Redis may keep its role until its lease would expire; not later.
    leading_after = [s for s in timeline.samples if s.leader and s.at > cut + LEASE_TTL + IN_STEP]
    assert leading_after == []
    for replica in fleet.replicas:  # one warning on losing Redis, not one per poll
        assert len(replica.logged("fleet_disconnected")) == 1, replica.name

    await redis.start()  # the same port, empty
    await wait_until(lambda: fleet.metrics(connected), lambda m: set(m.values()) == {1}, 10, "on")
    await wait_until(fleet.leader, lambda name: name is not None, LEASE_TTL + 5, "a leader")
    await wait_until(
        fleet.stages, lambda s: set(s.values()) == {("primary", 100.0)}, 30, "resumed to primary"
    )
    for replica in fleet.replicas:  # one outage: one warning, and one line when it is over
        said = [
            e for e in replica.events if e["event"] in ("fleet_connected", "fleet_disconnected")
        ]
        events = [e["event"] for e in said]
        assert events == ["fleet_connected", "fleet_disconnected", "fleet_connected"], (
            replica.name,
            said,
        )
    assert traffic.failures == []


async def test_an_admin_write_on_one_replica_reaches_the_others_within_a_poll(
    start_fleet: FleetFactory,
) -> None:
    fleet = await start_fleet(rollout(mode="manual"))
    traffic = fleet.start_traffic()
    status, body = await fleet.write(fleet["r2"], "promote")
    assert status == 200 and body["decision"]["to_stage"] == "canary", body
    await settled_within(fleet, ("canary", 10.0), IN_STEP, "promote on r2")
    status, body = await fleet.write(fleet["r3"], "share", 50)
    assert status == 200, body
    await settled_within(fleet, ("canary", 50.0), IN_STEP, "share 50 on r3")
    views = await fleet.views()
    versions = {v["routes"]["api"]["version"] for v in views.values()}
    assert len(versions) == 1 and None not in versions, views

    # The split itself moved on every replica, not just what the admin API shows.
    async def agent_served() -> list[int]:
        return [traffic.served[name, "agent"] for name in NAMES]

    await wait_until(agent_served, lambda n: min(n) > 0, 10, "the agent serving on every replica")
    assert traffic.failures == []
