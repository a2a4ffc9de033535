"""A fleet of real ``shadow-proxy run`` processes for end-to-end tests: the
replicas, read and steered through their admin APIs, and a timeline of what
each one reports. Every process is stopped by its PID, even when a test fails.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import sys
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import aiohttp
import yaml
from prometheus_client.parser import text_string_to_metric_families
from redis_server import stop_process
from traffic import Traffic

CLI = str(Path(sys.executable).parent / "shadow-proxy")
TOKEN = "fleet-token"
ROUTE = "api"
LEASE_TTL, POLL_INTERVAL = 3.0, 1.0
SLACK = 0.75  # sampling period, HTTP round trips and a busy 2-core machine
T = TypeVar("T")


def rollout(**overrides: Any) -> dict[str, Any]:
    """A rollout that moves in seconds: two steps, a 1s interval, 20 samples."""
    gates = {"min_samples": 20, "min_agreement": 0.8, "max_latency_ratio": None}
    return {
        "mode": "auto", "percent": 0, "steps": [10, 50], "interval": "1s", "window": "10s",
        "gates": gates, "max_consecutive_failures": 2, "on_failure": "rollback", **overrides,
    }  # fmt: skip


def replica_config(
    name: str,
    *,
    legacy: str,
    agent: str,
    redis: str,
    rollout: dict[str, Any],
    prometheus: str | None = None,
    admin_port: int = 0,
) -> dict[str, Any]:
    """One replica's file: the fleet's files differ only in ``redis.replica`` and ports."""
    config: dict[str, Any] = {
        "listen": {"host": "127.0.0.1", "port": 0},
        "admin": {"port": admin_port, "token": TOKEN},
        "backends": {"legacy": {"url": legacy}, "agent": {"url": agent}},
        "routes": [
            {
                "name": ROUTE,
                "match": {"prefix": "/api/"},
                "shadow": {"enabled": True},
                "rollout": rollout,
            },
        ],
        "logging": {"format": "json"},
        "shutdown": {"drain_delay": "0s", "timeout": "3s", "shadow_grace": "1s"},
        "coordination": "redis",
        "redis": {
            "url": redis,
            "replica": name,
            "lease_ttl": f"{LEASE_TTL}s",
            "poll_interval": f"{POLL_INTERVAL}s",
            "timeout": "500ms",
        },
        "analysis": "local",
    }
    if prometheus is not None:
        config["analysis"] = "prometheus"
        config["prometheus"] = {"url": prometheus, "timeout": "1s", "min_window": "3s"}
    return config


async def wait_until(
    probe: Callable[[], Awaitable[T]],
    until: Callable[[T], bool],
    within: float,
    what: str,
    interval: float = 0.1,
) -> T:
    """The first value of ``probe()`` that passes ``until``; an AssertionError naming
    ``what`` and the last value seen when none does within ``within`` seconds."""
    deadline = time.monotonic() + within
    last: Any = "nothing yet"
    while True:
        try:
            value = await probe()
            if until(value):
                return value
            last = value
        except (aiohttp.ClientError, OSError, TimeoutError) as exc:
            last = exc
        if time.monotonic() > deadline:
            raise AssertionError(f"{what}: not within {within:g}s; last seen: {last!r}")
        await asyncio.sleep(interval)


@dataclass
class Replica:
    name: str
    directory: Path
    process: asyncio.subprocess.Process
    proxy: str = ""
    admin: str = ""
    events: list[dict[str, Any]] = field(default_factory=list)
    reader: asyncio.Task[None] | None = None
    killed: bool = False

    @classmethod
    async def start(cls, name: str, config: dict[str, Any], directory: Path) -> Replica:
        path = _write_config(config, directory)
        env = {k: v for k, v in os.environ.items() if not k.startswith("SHADOW_PROXY_")}
        with (directory / "stderr.log").open("wb") as stderr:
            process = await asyncio.create_subprocess_exec(
                CLI, "run", "--config", str(path),
                stdin=asyncio.subprocess.DEVNULL, stdout=asyncio.subprocess.PIPE,
                stderr=stderr, env=env,
            )  # fmt: skip
        replica = cls(name, directory, process)
        listening: asyncio.Future[dict[str, Any] | None] = asyncio.Future()
        replica.reader = asyncio.create_task(replica._read(listening))
        try:
            event = await asyncio.wait_for(asyncio.shield(listening), timeout=20)
        except TimeoutError:
            event = None
        if event is None:
            await replica.stop()
            raise AssertionError(f"{name} did not start listening: {replica.stderr()}")
        replica.proxy, replica.admin = event["proxy"], event["admin"]
        return replica

    async def _read(self, listening: asyncio.Future[dict[str, Any] | None]) -> None:
        assert self.process.stdout is not None
        async for line in self.process.stdout:
            try:
                event = json.loads(line)
            except ValueError:
                event = {"event": "unparsed", "line": line.decode(errors="replace")}
            self.events.append(event)
            if event.get("event") == "listening" and not listening.done():
                listening.set_result(event)
        if not listening.done():
            listening.set_result(None)  # exited before listening

    @property
    def alive(self) -> bool:
        return not self.killed and self.process.returncode is None

    def logged(self, event: str, **fields: Any) -> list[dict[str, Any]]:
        return [
            e for e in self.events
            if e.get("event") == event and all(e.get(k) == v for k, v in fields.items())
        ]  # fmt: skip

    def stderr(self, lines: int = 30) -> str:
        text = (self.directory / "stderr.log").read_text(errors="replace")
        return "\n".join(text.splitlines()[-lines:])

    async def kill(self) -> None:
        """SIGKILL: a crash, no goodbye (the lease is left to expire)."""
        self.killed = True
        with contextlib.suppress(ProcessLookupError):
            self.process.kill()
        await self.process.wait()

    async def stop(self) -> None:
        await stop_process(self.process)
        if self.reader is not None:
            await self.reader


def _write_config(config: dict[str, Any], directory: Path) -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / "proxy.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


@dataclass
class Sample:
    at: float  # monotonic, when the answer arrived
    replica: str
    stage: str
    percent: float
    version: int | None
    leader: bool


class Fleet:
    """Three (or more) replicas of one fleet, read through their admin APIs."""

    def __init__(self, replicas: list[Replica]) -> None:
        self.replicas = replicas
        self.traffic: Traffic | None = None
        self._http = aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=5))

    @classmethod
    async def start(cls, configs: dict[str, dict[str, Any]], directory: Path) -> Fleet:
        started = await asyncio.gather(
            *(Replica.start(n, c, directory / n) for n, c in configs.items()),
            return_exceptions=True,
        )
        replicas = [r for r in started if isinstance(r, Replica)]
        fleet = cls(replicas)
        if len(replicas) < len(started):
            await fleet.stop()
            raise next(e for e in started if isinstance(e, BaseException))
        return fleet

    def __getitem__(self, name: str) -> Replica:
        return next(r for r in self.replicas if r.name == name)

    @property
    def alive(self) -> list[Replica]:
        return [r for r in self.replicas if r.alive]

    def start_traffic(self, period: float = 0.04) -> Traffic:
        self.traffic = Traffic({r.name: r.proxy for r in self.alive}, period)
        return self.traffic

    async def view(self, replica: Replica) -> dict[str, Any]:
        async with self._http.get(f"{replica.admin}/rollout") as response:
            assert response.status == 200, await response.text()
            return dict(await response.json())

    async def views(self) -> dict[str, dict[str, Any]]:
        alive = self.alive
        views = await asyncio.gather(*(self.view(r) for r in alive))
        return {r.name: v for r, v in zip(alive, views, strict=True)}

    async def samples(self) -> list[Sample]:
        async def one(replica: Replica) -> Sample:
            view = await self.view(replica)
            route = view["routes"][ROUTE]
            at = time.monotonic()
            leader = bool(view["fleet"]["leader"])
            return Sample(at, replica.name, route["stage"], route["percent"], route["version"],
                          leader)  # fmt: skip

        return list(await asyncio.gather(*(one(r) for r in self.alive)))

    async def shares(self) -> dict[str, float]:
        return {s.replica: s.percent for s in await self.samples()}

    async def stages(self) -> dict[str, tuple[str, float]]:
        return {s.replica: (s.stage, s.percent) for s in await self.samples()}

    async def leaders(self) -> list[str]:
        return [name for name, v in (await self.views()).items() if v["fleet"]["leader"]]

    async def leader(self) -> str | None:
        """The one replica that says it leads; None while none (or more than one) does."""
        leaders = await self.leaders()
        return leaders[0] if len(leaders) == 1 else None

    async def metric(self, replica: Replica, name: str, **labels: str) -> float:
        """One sample of the replica's /metrics, parsed as Prometheus would (0 if absent)."""
        async with self._http.get(f"{replica.admin}/metrics") as response:
            text = await response.text()
        for family in text_string_to_metric_families(text):
            for sample in family.samples:
                if sample.name == name and all(
                    sample.labels.get(k) == v for k, v in labels.items()
                ):
                    return float(sample.value)
        return 0.0

    async def metrics(self, name: str, **labels: str) -> dict[str, float]:
        alive = self.alive
        values = await asyncio.gather(*(self.metric(r, name, **labels) for r in alive))
        return {r.name: v for r, v in zip(alive, values, strict=True)}

    async def write(
        self, replica: Replica, command: str, percent: float | None = None
    ) -> tuple[int, dict[str, Any]]:
        """An admin write with the token: a command, or ``share`` with a percent."""
        headers = {"Authorization": f"Bearer {TOKEN}"}
        url = f"{replica.admin}/rollout/{ROUTE}/{command}"
        if command == "share":
            request = self._http.put(url, json={"percent": percent}, headers=headers)
        else:
            request = self._http.post(url, headers=headers)
        async with request as response:
            return response.status, dict(await response.json())

    async def kill(self, replica: Replica) -> None:
        if self.traffic is not None:
            await self.traffic.halt(replica.name)
        await replica.kill()

    async def stop(self) -> None:
        try:
            if self.traffic is not None:
                await self.traffic.close()
        finally:
            await asyncio.gather(*(r.stop() for r in self.replicas), return_exceptions=True)
            await self._http.close()

    def diagnostics(self) -> str:
        """Each replica's last fleet/rollout log events and stderr, for a failure message."""
        parts = []
        for r in self.replicas:
            events = [
                e for e in r.events
                if str(e.get("event", "")).startswith(("fleet", "roll", "unparsed"))
                or e.get("level") in ("error", "critical")
            ]  # fmt: skip
            parts.append(f"--- {r.name}: {events[-12:]}\n{r.stderr(10)}")
        return "\n".join(parts)


class Timeline:
    """Every replica's route as sampled every ``period`` seconds, in the background."""

    def __init__(self, fleet: Fleet, period: float = 0.1) -> None:
        self.fleet = fleet
        self.period = period
        self.samples: list[Sample] = []
        self._stop = asyncio.Event()
        self._task = asyncio.create_task(self._run())

    async def _run(self) -> None:
        while not self._stop.is_set():
            await self._sample()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._stop.wait(), timeout=self.period)
        await self._sample()  # one begun after close(): what the caller saw is in

    async def _sample(self) -> None:
        with contextlib.suppress(aiohttp.ClientError, TimeoutError):
            self.samples.extend(await self.fleet.samples())

    async def close(self) -> None:
        self._stop.set()
        await self._task

    def first(self, replica: str, when: Callable[[Sample], bool]) -> float | None:
        return next((s.at for s in self.samples if s.replica == replica and when(s)), None)
