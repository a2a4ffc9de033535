"""A real ``redis-server`` for tests: on loopback, no persistence, stopped by PID.

It keeps its port across ``stop()`` and ``start()``, so a test can take Redis
away from a fleet and bring it back (empty) where the fleet expects it.
"""

from __future__ import annotations

import asyncio
import contextlib
import shutil
import socket
from pathlib import Path

import pytest


def free_port() -> int:
    """A loopback port nothing listens on right now (the kernel's pick, released)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


async def stop_process(process: asyncio.subprocess.Process, grace: float = 10.0) -> None:
    """SIGTERM, then SIGKILL if it does not exit within ``grace``: this process only."""
    if process.returncode is None:
        with contextlib.suppress(ProcessLookupError):
            process.terminate()
        try:
            await asyncio.wait_for(process.wait(), timeout=grace)
        except TimeoutError:
            with contextlib.suppress(ProcessLookupError):
                process.kill()
            await process.wait()


class RedisServer:
    def __init__(self, directory: Path) -> None:
        self.directory = directory
        self.port = free_port()
        self.process: asyncio.subprocess.Process | None = None
        directory.mkdir(parents=True, exist_ok=True)

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    async def start(self, within: float = 10.0) -> None:
        """Start (again, on the same port, empty) and return once it answers PING."""
        assert self.process is None or self.process.returncode is not None, "already running"
        binary = shutil.which("redis-server") or shutil.which("/usr/sbin/redis-server")
        if binary is None:
            pytest.fail("redis-server is not installed: run `make system-deps` (Debian package)")
        (self.directory / "dump.rdb").unlink(missing_ok=True)  # a restart starts empty
        with (self.directory / "redis.log").open("ab") as log:
            self.process = await asyncio.create_subprocess_exec(
                binary,
                "--port", str(self.port),
                "--bind", "127.0.0.1",
                "--save", "",
                "--appendonly", "no",
                "--dir", str(self.directory),
                stdin=asyncio.subprocess.DEVNULL, stdout=log, stderr=log,
            )  # fmt: skip
        async with asyncio.timeout(within):
            while not await self.ping():
                assert self.process.returncode is None, f"redis-server exited: {self.log_tail()}"
                await asyncio.sleep(0.05)

    async def stop(self) -> None:
        if self.process is not None:
            await stop_process(self.process)

    async def ping(self) -> bool:
        return await self.command(b"PING") == b"+PONG"

    async def command(self, *words: bytes) -> bytes | None:
        """One command in RESP; the first line of the reply, or None if nobody answers."""
        request = b"*%d\r\n" % len(words) + b"".join(b"$%d\r\n%s\r\n" % (len(w), w) for w in words)
        try:
            reader, writer = await asyncio.open_connection("127.0.0.1", self.port)
        except OSError:
            return None
        try:
            writer.write(request)
            await writer.drain()
            return (await asyncio.wait_for(reader.readline(), timeout=2)).rstrip(b"\r\n")
        except (OSError, TimeoutError):
            return None
        finally:
            writer.close()
            with contextlib.suppress(OSError):
                await writer.wait_closed()

    def log_tail(self, lines: int = 20) -> str:
        path = self.directory / "redis.log"
        text = path.read_text(errors="replace") if path.exists() else ""
        return "\n".join(text.splitlines()[-lines:])
