"""Fleet coordination: many replicas, one rollout, through Redis (``coordination: redis``).

One replica holds the lease and runs the rollout controller; every replica (the leader
included) applies each new state it hears of — at once through pub/sub, or at the next
poll when a message was lost. Admin commands on any replica go through the same
compare-and-set, so the whole fleet follows them.

When Redis cannot be reached, nothing moves: each replica keeps the split it last knew
(fail static), nobody leads, and the metrics and one log line per change of connectivity
say so. When Redis is back — even emptied by a restart — the replicas seed it again with
the state they hold and carry on.
"""

from __future__ import annotations

import asyncio
import contextlib
import secrets
import time
from collections.abc import Callable
from dataclasses import replace
from typing import Any

import structlog

from proxy.controller import Change, Kept
from proxy.errors import CoordinationError
from proxy.fleetconfig import RedisSettings
from proxy.fleetstore import CONFLICT, NOT_LEADER, FleetStore, InvalidRecordError, Record
from proxy.metrics import Metrics
from proxy.rollout import RolloutState
from proxy.routing import RouteRuntime, Routing

log = structlog.get_logger("proxy.fleet")

Adopt = Callable[[RouteRuntime, RolloutState, str], None]
_ATTEMPTS = 3  # an operator's command retried on a version conflict


class Fleet:
    name = "redis"

    def __init__(
        self,
        settings: RedisSettings,
        routing: Callable[[], Routing],
        metrics: Metrics,
        adopt: Adopt,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.settings = settings
        self.replica = settings.replica_name
        self._routing = routing
        self._metrics = metrics
        self._adopt = adopt
        self._clock = clock
        self.store = FleetStore(settings, self.replica, clock)
        self.connected: bool | None = None  # None: not tried yet
        self._lease_until = 0.0  # monotonic: how long our last renewal lets us lead
        self._leading = False
        self.known: dict[str, tuple[str, int]] = {}  # the (epoch, version) each state came from
        self._config: dict[str, float] = {}  # the config share this replica has told the fleet
        self._locks: dict[str, asyncio.Lock] = {}
        self._invalid_routes: set[str] = set()  # logged once each

    def leading(self) -> bool:
        return self._leading and self._clock() < self._lease_until

    def version(self, route: str) -> int | None:
        known = self.known.get(route)
        return known[1] if known is not None else None

    def status(self) -> dict[str, Any]:
        connected = bool(self.connected)
        return {"replica": self.replica, "leader": self.leading(), "connected": connected}

    async def update(self, rt: RouteRuntime, change: Change, *, as_leader: bool) -> Kept:
        """Apply ``change`` to the fleet's freshest state of the route and write it back.

        Returns ``(state, decision)``; None when the controller lost the lease or another
        write came first (the next tick decides again on fresh state). An operator's
        command is retried on a conflict. CoordinationError when Redis is unreachable.
        """
        name = rt.name
        async with self._lock(name):
            for _ in range(_ATTEMPTS):
                try:
                    record = await self.store.read(name)
                    rt = self._routing().runtime(name) or rt  # a reload may have swapped it
                    if record is not None:  # a local reload's drift gives way, as in a poll
                        self._take(rt, record, record.config_percent == rt.config_percent)
                    new, decision = change(rt.state)
                    if new == rt.state:
                        return new, decision
                    version = await self._write(rt, new, record, as_leader=as_leader)
                except InvalidRecordError:
                    raise  # not an outage: Redis answered, with something that is not ours
                except CoordinationError as exc:
                    self._failed(exc)
                    raise
                self._seen(True)
                if version == NOT_LEADER:
                    self._lose_lease("another replica holds the lease")
                    return None
                if version != CONFLICT:
                    return new, decision
                if as_leader:
                    return None
        raise CoordinationError("write", f"{name}: the state kept changing; try again")

    async def start(self) -> None:
        """Join the fleet: adopt its state, or seed it; an unreachable Redis is not fatal."""
        await self._sync()

    async def close(self) -> None:
        if self._leading:
            with contextlib.suppress(CoordinationError):
                await self.store.release_lease()  # the next leader need not wait out the TTL
        self._set_leading(False)
        await self.store.close()

    async def run(self, stop: asyncio.Event) -> None:
        tasks = [
            asyncio.create_task(self._every(stop, self.settings.lease_ttl / 3, self._renew)),
            asyncio.create_task(self._every(stop, self.settings.poll_interval, self._sync)),
            asyncio.create_task(self._listen(stop)),
        ]
        try:
            await stop.wait()
        finally:
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)

    async def _every(self, stop: asyncio.Event, period: float, job: Callable[[], Any]) -> None:
        while not stop.is_set():
            try:
                await job()
            except Exception:  # a bug must not end the loop: the fleet would go quiet
                log.exception("fleet_loop_failed", job=job.__name__)
            await _pause(stop, period)

    async def _renew(self) -> None:
        sent = self._clock()
        try:
            held = await self.store.hold_lease(self.settings.lease_ttl)
        except CoordinationError as exc:
            self._failed(exc)  # a leader that cannot renew cannot write either: it stops
            self._lose_lease(str(exc))  # leading now; the lease is still its own if it returns
            return
        self._seen(True)
        if not held:
            if self._leading:
                self._lose_lease("another replica holds the lease")
            return
        # Count the TTL from before the request: Redis may have set it a little later.
        self._lease_until = sent + self.settings.lease_ttl
        if not self._leading:
            self._set_leading(True)
            log.info("fleet_leader_acquired", replica=self.replica)

    def _lose_lease(self, reason: str) -> None:
        if self._leading:
            log.warning("fleet_leader_lost", replica=self.replica, reason=reason)
        self._set_leading(False)

    def _set_leading(self, leading: bool) -> None:
        self._leading = leading
        if not leading:
            self._lease_until = 0.0
        self._metrics.fleet_leader.set(1 if leading else 0)

    async def _listen(self, stop: asyncio.Event) -> None:
        """Pub/sub: a write elsewhere is applied here at once. Polling covers the gaps."""
        while not stop.is_set():
            try:
                async for route in self.store.events(stop):
                    await self._refresh(route)
            except CoordinationError as exc:
                self._failed(exc)
            await _pause(stop, self.settings.poll_interval)

    async def _refresh(self, route: str, *, reconcile: bool = False) -> None:
        """Read one route and adopt what is new (pub/sub), or also reconcile it with
        this replica's config (the poll). CoordinationError when Redis is unreachable."""
        async with self._lock(route):
            try:
                record = await self.store.read(route)
            except InvalidRecordError as exc:
                self._invalid(route, exc)
                return
            self._invalid_routes.discard(route)
            rt = self._routing().runtime(route)  # looked up after the wait: a reload swaps it
            if rt is None or rt.policy is None:
                return
            if reconcile:
                await self._reconcile(rt, record)
            elif record is not None:
                self._take(rt, record)

    async def _sync(self) -> None:
        """Poll every route: adopt newer states, push this replica's config edits,
        seed what Redis lacks (first start, or a Redis restarted empty)."""
        names = [rt.name for rt in self._routing().runtimes.values() if rt.policy is not None]
        try:
            for name in names:
                await self._refresh(name, reconcile=True)
        except CoordinationError as exc:
            self._failed(exc)
            return
        self._seen(True)

    async def _reconcile(self, rt: RouteRuntime, record: Record | None) -> None:
        if record is None:
            why = "seeded" if rt.name not in self.known else "re-seeded after Redis lost it"
            version = await self._write(rt, rt.state, None, as_leader=False)
            if version > 0:
                log.info("fleet_state_seeded", route=rt.name, version=version, how=why)
            return
        if record.config_percent == rt.config_percent:
            # The fleet already has this config's share (this replica's, or one that
            # reloaded the same edit first): the fleet's state wins over a local reload.
            self._config[rt.name] = rt.config_percent
            self._take(rt, record, same_version=True)
            return
        if self._config.get(rt.name) != rt.config_percent:  # started or reloaded with an edit
            version = await self._write(rt, rt.state, record, as_leader=False)
            if version > 0:
                log.info("fleet_config_share_pushed", route=rt.name, percent=rt.state.percent)
                return
        self._take(rt, record)

    async def _write(
        self, rt: RouteRuntime, state: RolloutState, record: Record | None, *, as_leader: bool
    ) -> int:
        """Write ``state`` over ``record`` (None: create it, in a new epoch)."""
        expected = record.version if record is not None else 0
        epoch = record.epoch if record is not None else secrets.token_hex(6)
        version = await self.store.write(
            rt.name, expected, state, rt.config_percent, epoch, as_leader=as_leader
        )
        if version > 0:
            self.known[rt.name] = (epoch, version)
            self._config[rt.name] = rt.config_percent
        return version

    def _take(self, rt: RouteRuntime, record: Record, same_version: bool = False) -> None:
        """Adopt a record newer than what this replica holds, or from another epoch;
        ``same_version``: also one this replica's own state has drifted from (a reload)."""
        known = self.known.get(rt.name)
        if known is not None and known[0] == record.epoch:  # same numbering: compare
            older = record.version < known[1]
            if older or (record.version == known[1] and not same_version):
                return
        self.known[rt.name] = (record.epoch, record.version)
        if replace(record.state, since=0.0) != replace(rt.state, since=0.0):
            self._adopt(rt, record.state, record.by)

    def _lock(self, route: str) -> asyncio.Lock:
        lock = self._locks.get(route)
        if lock is None:
            lock = self._locks[route] = asyncio.Lock()
        return lock

    def _invalid(self, route: str, exc: CoordinationError) -> None:
        """One route's record is not ours: that route holds, the others carry on."""
        self._metrics.fleet_error(exc.operation)
        if route not in self._invalid_routes:
            self._invalid_routes.add(route)
            log.error("fleet_record_invalid", route=route, error=str(exc), holding="last split")

    def _failed(self, exc: CoordinationError) -> None:
        self._metrics.fleet_error(exc.operation)
        if self.connected is not False:  # once per outage, not once per poll
            log.warning(
                "fleet_disconnected", replica=self.replica, error=str(exc), holding="last split"
            )
        self._seen(False)

    def _seen(self, connected: bool) -> None:
        if connected and self.connected is not True:
            log.info("fleet_connected", replica=self.replica)
        self.connected = connected
        self._metrics.fleet_connected.set(1 if connected else 0)


async def _pause(stop: asyncio.Event, seconds: float) -> None:
    """Sleep, waking early at shutdown."""
    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(stop.wait(), timeout=seconds)
