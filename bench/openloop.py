"""Two load generators wrk cannot be: a fixed-rate open loop, and SSE streams.

Run as a subprocess (``python -m bench.openloop rate|sse URL ...``, a JSON
line on stdout), so the harness's own threads never delay a send.

* ``rate``: requests at fixed times (``rate`` per second), whether or not
  earlier ones have answered; each latency is measured from its *scheduled*
  send time, so a stall is counted in full (no coordinated omission).
  Keep-alive connections come from a pool; a new one is opened when none is
  free.
* ``sse``: ``streams`` concurrent clients, each reading one event stream after
  another, their starts spread over half a second; the time to the first
  byte of the body is recorded.

A minimal HTTP/1.1 client on asyncio streams (uvloop), to keep the
generator's own cost, and so its noise, small.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
from collections.abc import AsyncIterator, Callable
from functools import partial
from time import perf_counter
from urllib.parse import urlsplit

import uvloop

from bench.stats import percentile

MAX_CONNECTIONS = 4000
STAGGER = 0.5  # seconds over which the SSE clients start (a stream lasts about 0.4 s)


class Connection:
    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader = reader
        self.writer = writer

    @classmethod
    async def open(cls, host: str, port: int) -> Connection:
        reader, writer = await asyncio.open_connection(host, port, limit=1 << 20)
        return cls(reader, writer)

    def close(self) -> None:
        self.writer.close()

    async def get(
        self, request: bytes, first_byte: Callable[[], None] | None = None
    ) -> tuple[int, bool]:
        """Send one request, read the whole answer: (status, still usable)."""
        on_data = None
        if first_byte is not None:
            fired = first_byte

            def on_data(_: bytes) -> None:
                nonlocal fired
                if fired is not None:
                    fired()
                    fired = None

        status, _, keep = await self.exchange(request, on_data)
        return status, keep

    async def exchange(
        self, request: bytes, on_data: Callable[[bytes], None] | None = None
    ) -> tuple[int, dict[bytes, bytes], bool]:
        """Send one request, read the whole answer: (status, headers with lower-case
        names and values, still usable); each piece of the body goes to ``on_data``."""
        self.writer.write(request)
        head = await self.reader.readuntil(b"\r\n\r\n")
        lines = head.split(b"\r\n")
        status = int(lines[0].split()[1])
        headers = {}
        for line in lines[1:]:
            name, _, value = line.partition(b":")
            headers[name.strip().lower()] = value.strip().lower()
        keep = headers.get(b"connection") != b"close"
        if b"chunked" in headers.get(b"transfer-encoding", b""):
            await self._chunked(on_data)
        elif b"content-length" in headers:
            left = int(headers[b"content-length"])
            while left > 0:
                data = await self.reader.read(min(left, 1 << 20))
                if not data:
                    raise ConnectionError("closed mid-body")
                if on_data is not None:
                    on_data(data)
                left -= len(data)
        else:
            while data := await self.reader.read(1 << 20):
                if on_data is not None:
                    on_data(data)
            keep = False
        return status, headers, keep

    async def _chunked(self, on_data: Callable[[bytes], None] | None) -> None:
        reader = self.reader
        while True:
            size = int((await reader.readuntil(b"\r\n")).split(b";")[0], 16)
            if size == 0:
                while await reader.readuntil(b"\r\n") != b"\r\n":
                    pass  # trailers
                return
            chunk = await reader.readexactly(size + 2)
            if on_data is not None:
                on_data(chunk[:-2])


async def ticks(rate: float, total: int) -> AsyncIterator[float]:
    """``total`` send times, ``rate`` per second, each yielded when it comes."""
    start = perf_counter() + 0.01
    for i in range(total):
        scheduled = start + i / rate
        # uvloop's timers count whole milliseconds and may fire early: never send early
        while (delay := scheduled - perf_counter()) > 0:  # noqa: ASYNC110
            await asyncio.sleep(delay)
        yield scheduled


def _stamp(times: list[float]) -> None:
    times.append(perf_counter())


def _request(host: str, port: int, path: str) -> bytes:
    return f"GET {path} HTTP/1.1\r\nHost: {host}:{port}\r\nUser-Agent: bench\r\n\r\n".encode()


async def fixed_rate(url: str, rate: float, duration: float) -> dict[str, object]:
    parts = urlsplit(url)
    host, port, path = parts.hostname or "127.0.0.1", parts.port or 80, parts.path or "/"
    request = _request(host, port, path)
    idle: list[Connection] = []
    latencies: list[float] = []
    lags: list[float] = []
    counts = {"errors": 0, "open": 0, "peak_open": 0}

    async def one(scheduled: float) -> None:
        lags.append(perf_counter() - scheduled)
        conn = idle.pop() if idle else None
        try:
            if conn is None:
                if counts["open"] >= MAX_CONNECTIONS:
                    counts["errors"] += 1
                    return
                counts["open"] += 1
                counts["peak_open"] = max(counts["peak_open"], counts["open"])
                conn = await Connection.open(host, port)
            status, keep = await conn.get(request)
        except (OSError, asyncio.IncompleteReadError, ValueError, IndexError):
            counts["errors"] += 1
            if conn is not None:
                conn.close()
                counts["open"] -= 1
            return
        if 200 <= status < 400:
            latencies.append(perf_counter() - scheduled)
        else:
            counts["errors"] += 1
        if keep:
            idle.append(conn)
        else:
            conn.close()
            counts["open"] -= 1

    tasks: set[asyncio.Task[None]] = set()
    total = int(rate * duration)
    async for scheduled in ticks(rate, total):
        task = asyncio.create_task(one(scheduled))
        tasks.add(task)
        task.add_done_callback(tasks.discard)
    if tasks:
        await asyncio.wait(set(tasks), timeout=30)
    for conn in idle:
        conn.close()
    return {
        "scheduled": total,
        "requests": len(latencies),
        "errors": counts["errors"] + len(tasks),  # still unanswered after 30 s count too
        "p50": percentile(latencies, 50),
        "p99": percentile(latencies, 99),
        "lag_p50": percentile(lags, 50),
        "lag_p99": percentile(lags, 99),
        "peak_connections": counts["peak_open"],
    }


async def sse(url: str, streams: int, duration: float) -> dict[str, object]:
    parts = urlsplit(url)
    host, port, path = parts.hostname or "127.0.0.1", parts.port or 80, parts.path or "/"
    request = _request(host, port, path)
    ttfbs: list[float] = []
    counts = {"errors": 0, "requests": 0}
    end = perf_counter() + duration

    async def client(k: int) -> None:
        await asyncio.sleep(k * STAGGER / streams)  # spread out, not in lock-step
        conn: Connection | None = None
        while perf_counter() < end:
            try:
                if conn is None:
                    conn = await Connection.open(host, port)
                sent = perf_counter()
                first: list[float] = []
                status, keep = await conn.get(request, partial(_stamp, first))
            except (OSError, asyncio.IncompleteReadError, ValueError, IndexError):
                counts["errors"] += 1
                if conn is not None:
                    conn.close()
                conn = None
                await asyncio.sleep(0.01)
                continue
            if 200 <= status < 400 and first:
                ttfbs.append(first[0] - sent)
                counts["requests"] += 1
            else:
                counts["errors"] += 1
            if not keep:
                conn.close()
                conn = None
        if conn is not None:
            conn.close()

    await asyncio.gather(*(client(k) for k in range(streams)))
    return {
        "requests": counts["requests"],
        "errors": counts["errors"],
        "p50": percentile(ttfbs, 50),
        "p99": percentile(ttfbs, 99),
    }


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.openloop")
    sub = parser.add_subparsers(dest="mode", required=True)
    rate = sub.add_parser("rate", help="fixed-rate open loop")
    rate.add_argument("url")
    rate.add_argument("--rate", type=float, default=500)
    rate.add_argument("--duration", type=float, default=5)
    stream = sub.add_parser("sse", help="concurrent SSE streams, time to first byte")
    stream.add_argument("url")
    stream.add_argument("--streams", type=int, default=20)
    stream.add_argument("--duration", type=float, default=5)
    args = parser.parse_args(argv)
    if args.mode == "rate":
        result = uvloop.run(fixed_rate(args.url, args.rate, args.duration))
    else:
        result = uvloop.run(sse(args.url, args.streams, args.duration))
    json.dump(result, sys.stdout)
    sys.stdout.write("\n")


if __name__ == "__main__":
    main()
