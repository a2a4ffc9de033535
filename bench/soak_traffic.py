"""The soak's mixed traffic: an open loop of GETs and POSTs, small and large,
some streamed, each naming the agent fault it wants, every answer checked.

A request is drawn from a fixed set of templates (route, kind, method, path,
body) whose expected answers are computed once from ``soak_answers``: on
every route legacy's bytes are right, and on the live-share route the agent's
two good answers are right too when ``X-Served-By: agent`` says it served.
Anything else (a status other than 200, other bytes, a broken connection, no
answer in ``CLIENT_TIMEOUT``) is a client error, classified and counted.
"""

from __future__ import annotations

import asyncio
import random
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from time import perf_counter

from bench.openloop import MAX_CONNECTIONS, Connection, ticks
from bench.soak_answers import (
    ANSWERS,
    FAULT_HEADER,
    POSTS,
    agent_body,
    draw_fault,
    legacy_body,
)

CLIENT_TIMEOUT = 30.0
SHADOW_ROUTE = "shadow"  # legacy serves; the agent is mirrored
LIVE_ROUTE = "live"  # the agent serves a share, legacy falls back
# (route, kind) -> weight in percent
MIX = {
    (SHADOW_ROUTE, "items"): 25, (SHADOW_ROUTE, "orders"): 12, (SHADOW_ROUTE, "report"): 6,
    (SHADOW_ROUTE, "upload"): 5, (SHADOW_ROUTE, "stream"): 7,
    (LIVE_ROUTE, "items"): 20, (LIVE_ROUTE, "orders"): 12, (LIVE_ROUTE, "report"): 5,
    (LIVE_ROUTE, "upload"): 3, (LIVE_ROUTE, "stream"): 5,
}  # fmt: skip
VARIANTS = {"items": 50, "report": 10, "orders": 20, "upload": 6, "stream": 10}
UPLOAD_SIZES = (64, 96, 128, 256, 384, 512)  # KiB
MAX_EXAMPLES = 10


@dataclass(frozen=True)
class Template:
    route: str
    kind: str
    method: str
    path: str
    body: bytes
    legacy: bytes  # what legacy answers
    agent: frozenset[bytes]  # what the agent may serve: its agreeing and disagreeing answers

    def request(self, host: str, fault: str) -> bytes:
        lines = [f"{self.method} {self.path} HTTP/1.1", f"Host: {host}", "User-Agent: soak"]
        lines.append(f"{FAULT_HEADER}: {fault}")
        if self.method == "POST":
            kind = "application/json" if self.kind == "orders" else "application/octet-stream"
            lines += [f"Content-Type: {kind}", f"Content-Length: {len(self.body)}"]
        return ("\r\n".join(lines) + "\r\n\r\n").encode() + self.body


def _body(kind: str, i: int, rng: random.Random) -> bytes:
    if kind == "upload":
        return rng.randbytes(UPLOAD_SIZES[i % len(UPLOAD_SIZES)] * 1024)
    if kind == "orders":
        lines = ",".join(f'{{"sku":"SKU-{rng.randrange(10**5):05d}","qty":{q}}}' for q in range(8))
        return f'{{"customer":"C-{i:04d}","lines":[{lines}],"note":"order {i}"}}'.encode()
    return b""


def build_templates(seed: int) -> dict[tuple[str, str], list[Template]]:
    rng = random.Random(seed)
    table: dict[tuple[str, str], list[Template]] = {}
    for route, kind in MIX:
        method = "POST" if kind in POSTS else "GET"
        found = []
        for i in range(VARIANTS[kind]):
            path = f"/{route}/{kind}" if method == "POST" else f"/{route}/{kind}/{i}"
            body = _body(kind, i, rng)
            legacy = legacy_body(method, path, body)
            agent = frozenset(agent_body(method, path, body, a) for a in ANSWERS)
            found.append(Template(route, kind, method, path, body, legacy, agent))
        table[route, kind] = found
    return table


@dataclass
class RouteTally:
    """What the client saw on one route."""

    requests: int = 0
    answered: int = 0  # answers judged right
    latencies: list[float] = field(default_factory=list)
    served: Counter[str] = field(default_factory=Counter)  # X-Served-By of right answers
    fallbacks: Counter[str] = field(default_factory=Counter)  # X-Fallback-Reason
    faults: Counter[str] = field(default_factory=Counter)  # asked for
    # fault asked for -> how it was answered: agent, legacy, or "fallback <reason>"
    handled: defaultdict[str, Counter[str]] = field(default_factory=lambda: defaultdict(Counter))
    errors: Counter[str] = field(default_factory=Counter)  # by class


@dataclass
class Tally:
    """What the client saw, filled in as the run goes (progress reads it)."""

    routes: dict[str, RouteTally] = field(
        default_factory=lambda: {r: RouteTally() for r in (SHADOW_ROUTE, LIVE_ROUTE)}
    )
    scheduled: int = 0
    lags: list[float] = field(default_factory=list)  # send time - scheduled time
    examples: list[str] = field(default_factory=list)  # the first client errors, described
    peak_connections: int = 0

    @property
    def requests(self) -> int:
        return sum(r.requests for r in self.routes.values())

    @property
    def errors(self) -> Counter[str]:
        return sum((r.errors for r in self.routes.values()), Counter())


def judge(template: Template, status: int, headers: dict[bytes, bytes], body: bytes) -> str | None:
    """None when the answer is right; else the class of client error."""
    served = headers.get(b"x-served-by", b"").decode()
    if status != 200:
        return "legacy_failed" if served == "legacy" and status in (502, 504) else "status"
    if served == "legacy":
        return None if body == template.legacy else "body"
    if served == "agent" and template.route == LIVE_ROUTE:
        return None if body in template.agent else "body"
    return "served_by"


class Client:
    def __init__(self, host: str, port: int, tally: Tally) -> None:
        self.host, self.port = host, port
        self.tally = tally
        self.idle: list[Connection] = []
        self.open = 0

    async def one(self, scheduled: float, template: Template, fault: str) -> None:
        route = self.tally.routes[template.route]
        route.requests += 1
        route.faults[fault] += 1
        self.tally.lags.append(perf_counter() - scheduled)
        conn = self.idle.pop() if self.idle else None
        if conn is None:
            if self.open >= MAX_CONNECTIONS:
                self._error(route, "transport", f"{MAX_CONNECTIONS} connections already open")
                return
            self.open += 1  # counted now, given back when it closes
            self.tally.peak_connections = max(self.tally.peak_connections, self.open)
        chunks: list[bytes] = []
        try:
            async with asyncio.timeout(CLIENT_TIMEOUT):
                if conn is None:
                    conn = await Connection.open(self.host, self.port)
                status, headers, keep = await conn.exchange(
                    template.request(f"{self.host}:{self.port}", fault), chunks.append
                )
        except (TimeoutError, OSError, asyncio.IncompleteReadError, ValueError, IndexError) as exc:
            kind = "timeout" if isinstance(exc, TimeoutError) else "transport"
            self._error(route, kind, f"{template.method} {template.path} fault={fault}: {exc!r}")
            if conn is not None:
                conn.close()
            self.open -= 1
            return
        if keep:
            self.idle.append(conn)
        else:
            conn.close()
            self.open -= 1
        body = b"".join(chunks)
        if (error := judge(template, status, headers, body)) is not None:
            served = headers.get(b"x-served-by", b"-").decode()
            detail = f"status {status}, served by {served}, {len(body)} bytes"
            self._error(route, error, f"{template.method} {template.path} fault={fault}: {detail}")
            return
        served = headers[b"x-served-by"].decode()
        reason = headers.get(b"x-fallback-reason", b"").decode()
        route.answered += 1
        route.latencies.append(perf_counter() - scheduled)
        route.served[served] += 1
        if reason:
            route.fallbacks[reason] += 1
        route.handled[fault][f"fallback {reason}" if reason else served] += 1

    def _error(self, route: RouteTally, kind: str, detail: str) -> None:
        route.errors[kind] += 1
        if len(self.tally.examples) < MAX_EXAMPLES:
            self.tally.examples.append(f"{kind}: {detail}")

    def close(self) -> None:
        for conn in self.idle:
            conn.close()


async def run(
    url_host: str, port: int, rate: float, duration: float, seed: int, tally: Tally
) -> None:
    """Send ``rate`` requests a second for ``duration`` seconds, open loop, then
    wait (at most ``CLIENT_TIMEOUT``) for the last answers."""
    table = build_templates(seed)
    keys, weights = list(MIX), list(MIX.values())
    rng = random.Random(seed + 1)
    client = Client(url_host, port, tally)
    tasks: set[asyncio.Task[None]] = set()
    tally.scheduled = int(rate * duration)
    async for scheduled in ticks(rate, tally.scheduled):
        template = rng.choice(table[rng.choices(keys, weights)[0]])
        task = asyncio.create_task(client.one(scheduled, template, draw_fault(rng)))
        tasks.add(task)
        task.add_done_callback(tasks.discard)
    if tasks:
        await asyncio.wait(set(tasks), timeout=CLIENT_TIMEOUT + 5)
    for task in tasks:  # never answered: they count as not answered right
        task.cancel()
    client.close()
