"""The fleet's shared rollout state in Redis: a hash per route, a leader lease, an event channel.

Every write is a compare-and-set on the route's version, in one Lua script that also checks
the writer's lease when the controller writes, and publishes the change. So a deposed leader
cannot overwrite the fleet, two admins cannot both win, and every follower hears of each
write (or reads it at its next poll). Redis keeps wall-clock times; each process keeps
monotonic ones, converted here at the edge.

Every failure to talk to Redis (refused, timed out, a reply that is not ours) is one
:class:`~proxy.errors.CoordinationError`: callers keep what they have and say so.
"""

from __future__ import annotations

import asyncio
import contextlib
import re
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, replace
from typing import Any, TypeVar

import orjson
import redis.asyncio as aioredis
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.exceptions import RedisError

from proxy.errors import CoordinationError
from proxy.fleetconfig import RedisSettings
from proxy.rollout import RolloutState

T = TypeVar("T")

# KEYS: route hash, lease. ARGV: expected version, record JSON, lease holder ("" = any
# writer, e.g. an admin), channel, route name. Returns the new version, 0 on a version
# conflict, -1 when the writer no longer holds the lease.
_WRITE = """
if ARGV[3] ~= '' and redis.call('GET', KEYS[2]) ~= ARGV[3] then return -1 end
local version = tonumber(redis.call('HGET', KEYS[1], 'version') or '0')
if version ~= tonumber(ARGV[1]) then return 0 end
version = version + 1
redis.call('HSET', KEYS[1], 'version', version, 'data', ARGV[2])
redis.call('PUBLISH', ARGV[4], ARGV[5] .. ' ' .. version)
return version
"""
# KEYS: lease. ARGV: holder, ttl ms. Take a free lease or renew our own; 1 if we hold it.
_HOLD = """
local holder = redis.call('GET', KEYS[1])
if holder == ARGV[1] then redis.call('PEXPIRE', KEYS[1], ARGV[2]) return 1 end
if not holder then redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2]) return 1 end
return 0
"""
_RELEASE = """
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end
return 0
"""

CONFLICT, NOT_LEADER = 0, -1
_CLIENT_NAME = re.compile(r"[^!-~]")  # CLIENT SETNAME takes printable ASCII without spaces


class InvalidRecordError(CoordinationError):
    """A route's key holds something this code did not write: that route is left
    alone (its replicas keep their split) until someone deletes the key."""


@dataclass(frozen=True, slots=True)
class Record:
    """One route's shared state as this process sees it (``state.since`` is monotonic).

    ``epoch`` is drawn when the record is created: a Redis that lost its data (a
    restart, a failover to a lagging replica) starts numbering again, and a new
    epoch tells the replicas that version 1 is news, not history."""

    version: int
    epoch: str
    state: RolloutState
    config_percent: float
    by: str


class FleetStore:
    def __init__(
        self,
        settings: RedisSettings,
        replica: str,
        clock: Callable[[], float] = time.monotonic,
        wall: Callable[[], float] = time.time,
    ) -> None:
        self.replica = replica
        self._timeout = settings.timeout
        self._clock, self._wall = clock, wall
        prefix = settings.key_prefix
        self._prefix = prefix
        self.lease_key = f"{prefix}:leader"
        self.channel = f"{prefix}:events"
        password = settings.password.get_secret_value() if settings.password else None
        self._redis = aioredis.Redis.from_url(
            settings.url,
            password=password,
            socket_timeout=settings.timeout,
            socket_connect_timeout=settings.timeout,
            retry=Retry(NoBackoff(), 0),  # the loops retry on their own schedule
            client_name=_CLIENT_NAME.sub("_", f"shadow-proxy:{replica}")[:128],
        )
        self._write = self._redis.register_script(_WRITE)
        self._hold = self._redis.register_script(_HOLD)
        self._release = self._redis.register_script(_RELEASE)

    def key(self, route: str) -> str:
        return f"{self._prefix}:route:{route}"

    async def close(self) -> None:
        await self._redis.aclose()

    async def _call(self, operation: str, action: Callable[[], Awaitable[T]]) -> T:
        try:
            async with asyncio.timeout(self._timeout):
                return await action()
        except (RedisError, OSError, TimeoutError) as exc:
            await self._drop_idle()
            cause = str(exc) or type(exc).__name__
            raise CoordinationError(operation, f"Redis {operation} failed: {cause}") from None

    async def _drop_idle(self) -> None:
        """Idle pooled connections opened before an outage are dead too, but would fail
        only when next used: a second outage, logged after Redis is back."""
        with contextlib.suppress(RedisError, OSError):
            await self._redis.connection_pool.disconnect(inuse_connections=False)

    async def read(self, route: str) -> Record | None:
        """The route's record; None when Redis has none (never written, or Redis was emptied)."""
        key = self.key(route)
        version, data = await self._call("read", lambda: self._redis.hmget(key, "version", "data"))
        return None if version is None else self._decode(route, version, data)

    async def write(
        self,
        route: str,
        expected: int,
        state: RolloutState,
        config_percent: float,
        epoch: str,
        *,
        as_leader: bool,
    ) -> int:
        """The new version; ``CONFLICT`` if someone wrote first, ``NOT_LEADER`` if the lease
        moved. ``expected`` 0 creates the record."""
        data = self._encode(state, config_percent, epoch)
        holder = self.replica if as_leader else ""
        keys = [self.key(route), self.lease_key]
        args: list[bytes | str | int] = [expected, data, holder, self.channel, route]
        reply = await self._call("write", lambda: self._write(keys=keys, args=args))
        return int(reply)

    async def hold_lease(self, ttl: float) -> bool:
        """Take the lease if free, renew it if ours; False when another replica holds it."""
        args: list[str | int] = [self.replica, max(1, round(ttl * 1000))]
        reply = await self._call("lease", lambda: self._hold(keys=[self.lease_key], args=args))
        return int(reply) == 1

    async def release_lease(self) -> None:
        keys, args = [self.lease_key], [self.replica]
        await self._call("lease", lambda: self._release(keys=keys, args=args))

    async def events(self, stop: asyncio.Event) -> AsyncIterator[str]:
        """Route names as writes are published, until ``stop`` is set or the connection
        breaks (CoordinationError; the caller reconnects). ``stop`` is checked at every
        idle read, not left to cancellation: a cancel that races the read's own timeout
        can be swallowed (Python 3.11's asyncio.timeout), and shutdown would wait forever."""
        pubsub = self._redis.pubsub(ignore_subscribe_messages=True)
        try:
            await self._call("subscribe", lambda: pubsub.subscribe(self.channel))
            while not stop.is_set():
                try:  # a bounded wait: an idle channel is not a timeout error
                    message = await pubsub.get_message(timeout=self._timeout)
                except (RedisError, OSError) as exc:
                    await self._drop_idle()
                    raise CoordinationError("subscribe", f"Redis subscribe failed: {exc}") from None
                if message is not None and message.get("type") == "message":
                    route, _, _ = bytes(message["data"]).decode(errors="replace").partition(" ")
                    yield route
        finally:
            with contextlib.suppress(RedisError, OSError):
                await pubsub.aclose()  # type: ignore[no-untyped-call]

    def _encode(self, state: RolloutState, config_percent: float, epoch: str) -> bytes:
        shared = state.to_dict()
        shared["since"] = self._wall() - (self._clock() - state.since)
        record = {
            "state": shared,
            "config_percent": config_percent,
            "epoch": epoch,
            "by": self.replica,
        }
        return orjson.dumps(record)

    def _decode(self, route: str, version: Any, data: Any) -> Record:
        """A record this code wrote; anything else is a CoordinationError naming the key."""
        try:
            record = orjson.loads(data)
            shared = record["state"]
            state = RolloutState.from_dict(shared)
            since = self._clock() - max(0.0, self._wall() - state.since)
            percent, epoch, by = record["config_percent"], record["epoch"], record["by"]
            if not isinstance(percent, int | float) or isinstance(percent, bool):
                raise ValueError("config_percent must be a number")
            if not isinstance(epoch, str) or not isinstance(by, str):
                raise ValueError("epoch and by must be strings")
            state = replace(state, since=since)
            return Record(int(version), epoch, state, float(percent), by)
        except (orjson.JSONDecodeError, KeyError, TypeError, ValueError) as exc:
            reason = f"{self.key(route)} is not a shadow-proxy rollout record: {exc}"
            raise InvalidRecordError("read", reason) from None
