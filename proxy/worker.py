"""The supervisor's handle on one worker process: its state, its process, its
restart delay, and HTTP to its admin app over the worker's unix socket.

One :class:`Worker` lives as long as the supervisor and stands for a slot
(an index); each process started in it is a new *generation*, with a new
client, so a connection pooled to a dead process is never reused.
"""

from __future__ import annotations

import asyncio
import signal
from dataclasses import dataclass, field
from enum import StrEnum
from pathlib import Path
from typing import Any

import aiohttp
from multidict import CIMultiDict

BACKOFF_FIRST = 1.0
BACKOFF_MAX = 30.0
BACKOFF_RESET = 60.0  # a worker that ran this long restarts after BACKOFF_FIRST again
BASE = "http://worker"  # the host is ignored on a unix socket; it names the peer in errors
FORWARDED_HEADERS = ("Authorization", "Content-Type", "Accept")


def next_backoff(previous: float, ran_for: float) -> float:
    """The delay before restarting a worker that ran ``ran_for`` seconds after
    a restart delay of ``previous`` (0: its first exit): 1 s, doubling to 30 s,
    and 1 s again after a worker that had been running for a while."""
    if previous <= 0 or ran_for >= BACKOFF_RESET:
        return BACKOFF_FIRST
    return min(BACKOFF_MAX, previous * 2)


def exit_status(code: int) -> dict[str, Any]:
    """``{"code": 3}`` or ``{"signal": "SIGKILL"}``, for a log event."""
    if code >= 0:
        return {"code": code}
    try:
        return {"signal": signal.Signals(-code).name}
    except ValueError:
        return {"signal": -code}


class WorkerState(StrEnum):
    STARTING = "starting"  # spawned, not yet ready
    RUNNING = "running"  # answered /readyz once; serving
    RESTARTING = "restarting"  # exited unexpectedly; waiting out its backoff
    STOPPING = "stopping"  # asked to drain (SIGTERM)
    STOPPED = "stopped"  # exited after the supervisor asked


@dataclass(frozen=True, slots=True)
class Answer:
    """A worker's HTTP answer, whole (admin answers are small)."""

    status: int
    body: bytes
    content_type: str
    headers: CIMultiDict[str] = field(default_factory=CIMultiDict)


class WorkerUnreachableError(Exception):
    """No HTTP answer from the worker: connection refused or reset, or a timeout."""


@dataclass(slots=True)
class Worker:
    index: int
    socket: Path
    state: WorkerState = WorkerState.STARTING
    generation: int = 0
    process: asyncio.subprocess.Process | None = None
    started: float = 0.0  # loop time the current process was spawned
    backoff: float = 0.0  # the last restart's delay (0: none yet)
    restarts: int = 0
    _session: aiohttp.ClientSession | None = field(default=None, init=False, repr=False)

    @property
    def pid(self) -> int | None:
        return None if self.process is None else self.process.pid

    @property
    def alive(self) -> bool:
        return self.process is not None and self.process.returncode is None

    def attach(self, process: asyncio.subprocess.Process, now: float) -> None:
        """A new process in this slot: a new generation and a fresh client."""
        self.process = process
        self.generation += 1
        self.started = now
        self.state = WorkerState.STARTING

    async def detach(self) -> None:
        """The process is gone: close its client, and its stdin (see proxy/server.py)."""
        if self.process is not None and self.process.stdin is not None:
            self.process.stdin.close()
        session, self._session = self._session, None
        if session is not None:
            await session.close()

    def _client(self) -> aiohttp.ClientSession:
        if self._session is None:
            connector = aiohttp.UnixConnector(path=str(self.socket), limit=16)
            self._session = aiohttp.ClientSession(connector=connector, auto_decompress=False)
        return self._session

    async def request(
        self,
        method: str,
        path_qs: str,
        headers: CIMultiDict[str] | None = None,
        body: bytes = b"",
    ) -> Answer:
        """One exchange with the worker's admin app, or :class:`WorkerUnreachableError`.
        Unbounded: the caller sets the deadline (``asyncio.timeout``)."""
        sent = {k: v for k, v in (headers or {}).items() if k.title() in FORWARDED_HEADERS}
        try:
            async with self._client().request(method, BASE + path_qs, headers=sent, data=body) as r:
                data = await r.read()
                return Answer(r.status, data, r.content_type, CIMultiDict(r.headers))
        except (aiohttp.ClientError, OSError) as exc:
            raise WorkerUnreachableError(f"worker {self.index}: {exc}") from None

    async def probe(self, path: str, within: float) -> bool:
        """True when ``GET path`` answers 200 within ``within`` seconds."""
        try:
            async with asyncio.timeout(within):
                return (await self.request("GET", path)).status == 200
        except (WorkerUnreachableError, TimeoutError):
            return False
