"""Leak checks for a proxy after a burst of traffic: tasks, upstream
connections and memory come back to where they were before it.

``async with watch(proxy):`` takes the baseline (live tasks, traced memory)
on entry and, when the body succeeded, checks on exit that

* the upstream pools have nothing in use and no more open than their bound;
* once the keep-alive connections are let go (the client's, and the idle
  ones in the pools), every task started since has ended: the proxy's, and
  the fake backends' per-connection ones, which end only when the proxy
  closed its side;
* traced memory, after a garbage collection, is within ``margin`` bytes of
  the baseline, and the shadow capture budget holds nothing.
"""

from __future__ import annotations

import asyncio
import gc
import tracemalloc
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any

from conftest import Proxy

from proxy.app import HANDLER
from proxy.upstream import Upstream

MIB = 1024 * 1024


@dataclass(frozen=True)
class Baseline:
    tasks: frozenset[asyncio.Task[Any]]
    memory: int  # bytes traced by tracemalloc


def upstreams(proxy: Proxy) -> list[Upstream]:
    """The live Upstream objects: legacy, and the agent when one is configured
    (the shadow path and the agent path share it)."""
    handler = proxy.client.app[HANDLER]
    return [handler.legacy] + ([handler.shadow.agent] if handler.shadow is not None else [])


def assert_pools_idle(proxy: Proxy) -> None:
    """No pooled connection in use, none beyond the bound."""
    for upstream in upstreams(proxy):
        pool = upstream.pool
        assert pool.open - pool.idle == 0, f"{upstream.name}: {pool.open - pool.idle} in use"
        assert pool.open <= pool.limit, f"{upstream.name}: {pool.open} open > {pool.limit}"


async def assert_tasks_back(before: Baseline, within: float = 8.0) -> None:
    """Poll until no more tasks run than at the baseline.

    Counted, not matched one by one: a periodic loop (the rollout controller's
    tick) replaces its own short-lived task, so one of the baseline's may have
    ended and come back as a new one.
    """
    loop = asyncio.get_running_loop()
    deadline = loop.time() + within
    while True:
        if len(asyncio.all_tasks()) <= len(before.tasks):
            return
        new = [t for t in asyncio.all_tasks() if t not in before.tasks]
        if loop.time() > deadline:
            raise AssertionError(f"{len(new)} tasks still running: {new}")
        await asyncio.sleep(0.05)


def assert_memory_back(proxy: Proxy, before: Baseline, margin: int) -> None:
    shadow = proxy.client.app[HANDLER].shadow
    if shadow is not None:
        assert shadow.budget.used == 0, f"{shadow.budget.used} bytes still held for comparison"
    gc.collect()
    grown = tracemalloc.get_traced_memory()[0] - before.memory
    assert grown < margin, f"traced memory grew by {grown / MIB:.1f} MiB"


def peak_growth(before: Baseline) -> int:
    """The most memory traced at once since the baseline, over it."""
    return tracemalloc.get_traced_memory()[1] - before.memory


@asynccontextmanager
async def watch(proxy: Proxy, margin: int = 2 * MIB) -> AsyncIterator[Baseline]:
    """Baseline on entry; on a clean exit, settle the proxy and check for leaks."""
    started = not tracemalloc.is_tracing()
    if started:
        tracemalloc.start()
    try:
        gc.collect()
        tracemalloc.reset_peak()
        before = Baseline(frozenset(asyncio.all_tasks()), tracemalloc.get_traced_memory()[0])
        yield before
        await proxy.settle()
        assert_pools_idle(proxy)
        connector = proxy.client.session.connector
        assert connector is not None
        await connector.close()  # the client's keep-alive connections
        for upstream in upstreams(proxy):
            upstream.pool.close()  # its idle connections; the app closes it again at exit
        await assert_tasks_back(before)
        assert_memory_back(proxy, before, margin)
    finally:
        if started:
            tracemalloc.stop()
