"""The soak's agent: a raw asyncio HTTP/1.1 server that fails on purpose.

``python -m bench.faulty_agent --port N --slow SECONDS``. Each request gets
the fault its ``X-Soak-Fault`` header names (or one drawn with the weights of
``soak_answers.FAULTS``): a good or a disagreeing answer, or a slow one, no
answer, a reset mid-body, bytes that are not HTTP, a 500, 2 MiB, or a close
before any answer. Raw sockets, because aiohttp would not send a broken
answer. ``GET /__soak/faults`` (asked directly, not through the proxy)
answers the count of each fault injected. Stopped by SIGTERM.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import random
import socket
import struct
from collections import Counter
from dataclasses import dataclass

import uvloop

from bench.procs import LOOPBACK
from bench.soak_answers import FAULT_HEADER, FAULTS, agent_body, draw_fault, huge_body

STATS_PATH = "/__soak/faults"
HANG_LIMIT = 120.0  # seconds a hung answer waits for the proxy to give up
GARBAGE = b"\x16\x03\x01\x02\x00SOAK garbage, not HTTP \xff\xfe\r\n\r\n\x00\x01"
_HUGE = huge_body()


@dataclass(frozen=True)
class Request:
    method: str
    path: str
    headers: dict[str, str]  # lower-case names
    body: bytes


async def read_request(reader: asyncio.StreamReader) -> Request | None:
    """The next request on the connection, or None when the peer closed it."""
    try:
        head = await reader.readuntil(b"\r\n\r\n")
    except asyncio.IncompleteReadError:
        return None
    lines = head.decode("latin-1").split("\r\n")
    method, target, _ = lines[0].split(" ", 2)
    headers = {}
    for line in lines[1:]:
        if line:
            name, _, value = line.partition(":")
            headers[name.strip().lower()] = value.strip()
    if "chunked" in headers.get("transfer-encoding", "").lower():
        parts = []
        while size := int((await reader.readuntil(b"\r\n")).split(b";")[0], 16):
            parts.append((await reader.readexactly(size + 2))[:-2])
        while await reader.readuntil(b"\r\n") != b"\r\n":
            pass  # trailers
        body = b"".join(parts)
    else:
        body = await reader.readexactly(int(headers.get("content-length", "0")))
    return Request(method, target.split("?", 1)[0], headers, body)


def response(status: int, body: bytes, length: int | None = None) -> bytes:
    reason = {200: "OK", 500: "Internal Server Error"}[status]
    size = len(body) if length is None else length
    head = f"HTTP/1.1 {status} {reason}\r\nContent-Type: application/json\r\n"
    return f"{head}Content-Length: {size}\r\n\r\n".encode() + body


class Agent:
    def __init__(self, slow: float, seed: int | None) -> None:
        self.slow = slow
        self.rng = random.Random(seed)
        self.faults: Counter[str] = Counter()

    async def connection(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while (request := await read_request(reader)) is not None:
                if not await self.answer(request, reader, writer):
                    break
        except (OSError, asyncio.IncompleteReadError, asyncio.LimitOverrunError, ValueError):
            pass  # the proxy gave up on this connection: nothing to answer
        finally:
            writer.close()

    async def answer(
        self, request: Request, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> bool:
        """Answer (or not) one request; False: the connection is done."""
        if request.path == STATS_PATH:
            writer.write(response(200, json.dumps(dict(self.faults)).encode()))
            return True
        fault = request.headers.get(FAULT_HEADER.lower(), "")
        if fault not in FAULTS:
            fault = draw_fault(self.rng)
        self.faults[fault] += 1
        good = agent_body(request.method, request.path, request.body, fault)
        if fault == "slow":
            await asyncio.sleep(self.slow)
        if fault in ("agree", "disagree", "slow"):
            writer.write(response(200, good))
        elif fault == "error500":
            writer.write(response(500, b'{"error": "the agent failed"}'))
        elif fault == "huge":
            writer.write(response(200, _HUGE))
        elif fault == "hang":
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(reader.read(), HANG_LIMIT)  # until the proxy closes
            return False
        elif fault == "reset":
            writer.write(response(200, good[: len(good) // 2], length=len(good)))
            await writer.drain()
            sock = writer.get_extra_info("socket")
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            writer.transport.abort()  # linger 0: the close sends a RST
            return False
        elif fault == "garbage":
            writer.write(GARBAGE)
            await writer.drain()
            return False
        else:  # close: nothing at all
            return False
        await writer.drain()
        return True


async def serve(port: int, slow: float, seed: int | None) -> None:
    agent = Agent(slow, seed)
    server = await asyncio.start_server(
        agent.connection, LOOPBACK, port, backlog=1024, limit=1 << 20
    )
    async with server:
        await server.serve_forever()


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.faulty_agent")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--slow", type=float, default=1.5, help="seconds a slow answer takes")
    parser.add_argument("--seed", type=int, help="for faults drawn without the header")
    args = parser.parse_args()
    uvloop.run(serve(args.port, args.slow, args.seed))


if __name__ == "__main__":
    main()
