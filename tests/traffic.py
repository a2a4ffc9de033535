"""Client traffic for end-to-end tests: a steady stream of GETs to each proxy,
counting who served each answer and every failure a client would notice."""

from __future__ import annotations

import asyncio
import contextlib
from collections import Counter

import aiohttp


class Traffic:
    """Steady GETs to each replica (one client each), counting answers by who
    served them and every failure a client would notice."""

    def __init__(self, proxies: dict[str, str], period: float = 0.04) -> None:
        self.period = period
        self.served: Counter[tuple[str, str]] = Counter()
        self.failures: list[str] = []
        self._session = aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=10))
        self._stops: dict[str, asyncio.Event] = {}
        self._tasks: dict[str, asyncio.Task[None]] = {}
        for name, url in proxies.items():
            self._stops[name] = asyncio.Event()
            self._tasks[name] = asyncio.create_task(self._client(name, url))

    def total(self, replica: str | None = None) -> int:
        return sum(n for (name, _), n in self.served.items() if replica in (None, name))

    async def _client(self, name: str, url: str) -> None:
        stop, n = self._stops[name], 0
        while not stop.is_set():
            n += 1
            try:
                async with self._session.get(f"{url}/api/items/{n}") as response:
                    await response.read()
                    if response.status != 200:
                        self.failures.append(f"{name}: status {response.status}")
                    self.served[name, response.headers.get("X-Served-By", "?")] += 1
            except (aiohttp.ClientError, TimeoutError) as exc:
                self.failures.append(f"{name}: {exc!r}")
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), timeout=self.period)

    async def halt(self, replica: str) -> None:
        """Stop sending to one replica, its last request answered."""
        self._stops[replica].set()
        await self._tasks[replica]

    async def close(self) -> None:
        for name in self._tasks:
            await self.halt(name)
        await self._session.close()
