"""Legacy faults while live traffic flows: every client gets a clean 502 or
504 JSON answer (or, once the head went out, a cut it can see), nothing hangs,
the metrics blame legacy and not the agent, and nothing leaks."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass

import aiohttp
import faults
import orjson
import pytest
from conftest import ProxyFactory
from fakes import Fake, RawServer, dead_url
from leaks import watch

N = 24


@dataclass(frozen=True)
class Fault:
    name: str  # "down": nothing listens; else a fault backend from faults.py
    status: int | None  # the client's status; None: the head went out, then a cut
    kind: str  # upstream_errors_total{kind}
    reason: str = ""  # the JSON body's reason


FAULTS = [
    Fault("down", 502, "connect", "legacy: cannot connect: connection refused"),
    Fault("slow", 504, "timeout", f"legacy: no complete answer within {faults.TIMEOUT:g}s"),
    Fault("reset_before_answer", 502, "disconnect",
          "legacy: connection closed before the answer ended"),
    Fault("reset_mid_body", None, "disconnect"),
]  # fmt: skip


@asynccontextmanager
async def legacy_backend(fault: Fault) -> AsyncIterator[str]:
    if fault.name == "down":
        yield dead_url()
        return
    async with RawServer(faults.backend(fault.name)) as server:
        yield server.url


@pytest.mark.parametrize("fault", FAULTS, ids=[f.name for f in FAULTS])
async def test_legacy_fault_gives_every_client_a_clean_error_and_blames_legacy(
    make_proxy: ProxyFactory, agent: Fake, fault: Fault
) -> None:
    async with legacy_backend(fault) as legacy_url:
        proxy = await make_proxy(
            backends={
                "legacy": {"url": legacy_url, "timeout": faults.timeout(fault.name)},
                "agent": {"url": agent.url},
            },
            routes=[{"name": "api", "match": {"prefix": "/api/"}, "shadow": {"enabled": True}}],
        )
        async with watch(proxy):
            answers = await faults.burst(proxy, N)  # bounded: nothing hangs
            for status, headers, body in answers:
                if fault.status is None:  # never a short answer that looks whole
                    assert status == 200
                    assert isinstance(body, aiohttp.ClientPayloadError)
                    continue
                assert status == fault.status
                assert headers["Content-Type"] == "application/json"
                assert isinstance(body, bytes)
                error = "gateway_timeout" if status == 504 else "bad_gateway"
                expected = {"error": error, "reason": fault.reason, "backend": "legacy"}
                assert orjson.loads(body) == expected
                port = legacy_url.rsplit(":", 1)[1]
                assert b"127.0.0.1" not in body and port.encode() not in body
            await proxy.settle()
            errors = proxy.value(
                "shadow_proxy_upstream_errors_total",
                route="api", backend="legacy", mode="live", kind=fault.kind,
            )  # fmt: skip
            assert errors == N
            status_class = f"{fault.status // 100}xx" if fault.status else "2xx"
            served = proxy.value(
                "shadow_proxy_requests_total",
                route="api", backend="legacy", status_class=status_class,
            )  # fmt: skip
            assert served == N
            # the agent still got its copies, and nothing was blamed on it
            assert len(agent.seen) == N
            assert (proxy.outcome("sent"), proxy.outcome("completed")) == (N, N)
            assert proxy.verdict("skipped") == N
