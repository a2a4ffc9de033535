"""``run --workers N``: one supervisor, N worker processes behind one port.

Each worker is a full proxy (``python -m proxy run ... --worker-index I``)
whose listener binds the same port with SO_REUSEPORT, so the kernel spreads
connections among them; its admin app listens on a unix socket in a private
directory (0700, removed on exit). The supervisor serves the public admin
port for the pod (proxy/workeradmin.py), restarts a worker that dies, and
drains them all on SIGTERM.

Workers are fresh interpreters, not forks: a restart happens while the
supervisor's event loop runs, and a fork of a process with a running loop
(threads, uvloop's handles, open sockets) is unsafe; a fresh process also
runs exactly the code path a single ``run`` does.
"""

from __future__ import annotations

import asyncio
import contextlib
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

import structlog
from aiohttp import web

from proxy.admin import Health
from proxy.server import public_url
from proxy.settings import Settings
from proxy.worker import Worker, WorkerState
from proxy.workeradmin import Pool, create_supervisor_admin

log = structlog.get_logger("proxy.workers")

BACKOFF_FIRST = 1.0
BACKOFF_MAX = 30.0
BACKOFF_RESET = 60.0  # a worker that ran this long restarts after BACKOFF_FIRST again
READY_TIMEOUT = 60.0  # a worker not ready by then is killed (and counts as failed)
READY_POLL = 0.05
PROBE_TIMEOUT = 1.0
STOP_MARGIN = 5.0  # past the workers' own drain budget, before SIGKILL


class WorkerStartError(Exception):
    """A worker failed before it was ready at startup; the pod does not start."""

    def __init__(self, index: int, code: int) -> None:
        self.index = index
        self.code = code
        super().__init__(f"worker {index} exited with status {code} before it was ready")


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


def reserve_port(host: str, port: int) -> tuple[list[socket.socket], int]:
    """Bind, without listening, a SO_REUSEPORT socket on each address of ``host``.

    Port 0 becomes a concrete port the workers then share, and the port stays
    this pod's while workers come and go. A bound socket that does not listen
    gets no connections: the kernel spreads them among the workers' listeners.
    """
    infos = socket.getaddrinfo(host or None, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    sockets: list[socket.socket] = []
    try:
        for family, kind, proto, _, address in dict.fromkeys(infos):
            sock = socket.socket(family, kind, proto)
            sockets.append(sock)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
            if family == socket.AF_INET6:
                sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
            where = (address[0], port, *address[2:])
            try:
                sock.bind(where)
            except OSError as exc:  # worded as asyncio words it for one process
                reason = f"error while attempting to bind on address {where[:2]!r}: "
                raise OSError(exc.errno, reason + (exc.strerror or "").lower()) from None
            port = sock.getsockname()[1]
    except BaseException:
        for sock in sockets:
            sock.close()
        raise
    return sockets, port


class Supervisor:
    def __init__(self, settings: Settings, config_path: Path, count: int) -> None:
        self.settings = settings
        self.config_path = config_path.resolve()
        self.count = count
        self.health = Health()
        self.port = 0
        self.workers: list[Worker] = []
        self.pool = Pool(self.workers, self.health, settings.coordination)
        self._admin = web.AppRunner(
            create_supervisor_admin(self.pool), access_log=None, handle_signals=False
        )
        self._reserved: list[socket.socket] = []
        self._runtime: Path | None = None
        self._stopping = asyncio.Event()
        self._watchers: list[asyncio.Task[None]] = []

    async def start(self) -> None:
        """Reserve the port, open the admin listener, start every worker and wait
        until all are ready; on any failure undo it all and raise."""
        s = self.settings
        try:
            self._reserved, self.port = reserve_port(s.listen.host, s.listen.port)
            self._runtime = Path(tempfile.mkdtemp(prefix="shadow-proxy-"))  # mode 0700
            self.workers += [Worker(i, self._runtime / f"w{i}.sock") for i in range(self.count)]
            await self._admin.setup()
            await web.TCPSite(self._admin, s.admin.host, s.admin.port, reuse_address=True).start()
            for worker in self.workers:
                await self._spawn(worker)
            await self._all_ready()
        except BaseException:
            await self._close()
            raise
        self.health.ready = True
        self._watchers = [
            asyncio.get_running_loop().create_task(self._watch(w), name=f"worker-{w.index}")
            for w in self.workers
        ]
        host, port = self._admin.addresses[0][:2]
        log.info(
            "listening",
            proxy=public_url(s.listen.host, self.port),
            admin=public_url(host, port),
            workers=self.count,
        )

    async def _spawn(self, worker: Worker) -> None:
        worker.socket.parent.mkdir(mode=0o700, exist_ok=True)  # the last worker out removes it
        worker.socket.unlink(missing_ok=True)
        process = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "proxy", "run", "--config", str(self.config_path),
            "--workers", str(self.count), "--worker-index", str(worker.index),
            "--worker-port", str(self.port), "--worker-socket", str(worker.socket),
            # The worker stops when this pipe closes: when the supervisor is gone.
            stdin=subprocess.PIPE,
            # Its own session: a ^C on a terminal reaches the supervisor
            # alone, which then drains the workers in order.
            start_new_session=True,
        )  # fmt: skip
        worker.attach(process, asyncio.get_running_loop().time())
        log.info("worker_started", worker=worker.index, pid=process.pid, socket=str(worker.socket))
        if self._stopping.is_set():  # stop() began while this one was being spawned
            self._signal(worker, signal.SIGTERM)

    async def _ready(self, worker: Worker) -> bool:
        """Wait until the worker answers /readyz; False if it exits (or hangs) first."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + READY_TIMEOUT
        while worker.alive:
            if await worker.probe("/readyz", PROBE_TIMEOUT):
                worker.state = WorkerState.RUNNING
                log.info("worker_ready", worker=worker.index, pid=worker.pid)
                return True
            if loop.time() > deadline:
                log.error("worker_not_ready", worker=worker.index, after_s=READY_TIMEOUT)
                self._signal(worker, signal.SIGKILL)
                break
            await asyncio.sleep(READY_POLL)
        return False

    async def _all_ready(self) -> None:
        """Every worker ready, or :class:`WorkerStartError` for the first that failed."""
        loop = asyncio.get_running_loop()
        pending = {loop.create_task(self._ready(w)): w for w in self.workers}
        failed = None
        while pending and failed is None:
            done, _ = await asyncio.wait(pending, return_when=asyncio.FIRST_COMPLETED)
            for task in done:
                worker = pending.pop(task)
                if not task.result() and failed is None:
                    failed = worker
        for task in pending:
            task.cancel()
        if failed is None:
            return
        assert failed.process is not None
        code = await failed.process.wait()
        log.error("worker_failed_to_start", worker=failed.index, **exit_status(code))
        raise WorkerStartError(failed.index, code if code > 0 else 1)

    async def _watch(self, worker: Worker) -> None:
        """Restart the worker, with backoff, each time it exits unasked."""
        loop = asyncio.get_running_loop()
        while worker.process is not None:
            code = await worker.process.wait()
            await self._gone(worker)
            if self._stopping.is_set():
                return
            ran = loop.time() - worker.started
            worker.restarts += 1
            worker.state = WorkerState.RESTARTING
            worker.backoff = next_backoff(worker.backoff, ran)
            log.warning(
                "worker_exited", worker=worker.index, pid=worker.pid, **exit_status(code),
                ran_s=round(ran, 1), restart_in_s=worker.backoff,
            )  # fmt: skip
            while True:  # until a new process runs
                if await self._stopped_within(worker.backoff):
                    return
                try:
                    await self._spawn(worker)
                    break
                except OSError as exc:  # fork failed, too many open files...
                    worker.backoff = next_backoff(worker.backoff, 0.0)
                    log.error(
                        "worker_spawn_failed", worker=worker.index, error=str(exc),
                        retry_in_s=worker.backoff,
                    )  # fmt: skip
            await self._ready(worker)  # if it fails, the loop sees it exit

    async def _stopped_within(self, delay: float) -> bool:
        try:
            await asyncio.wait_for(self._stopping.wait(), timeout=delay)
        except TimeoutError:
            return False
        return True

    async def _gone(self, worker: Worker) -> None:
        """A worker process ended: its client closes, its counters are retired."""
        await worker.detach()
        self.pool.merger.retire((worker.index, worker.generation))
        self.pool.scraped.pop(worker.index, None)

    def _signal(self, worker: Worker, sig: signal.Signals) -> None:
        if worker.alive and worker.process is not None:
            with contextlib.suppress(ProcessLookupError):
                worker.process.send_signal(sig)

    async def stop(self) -> None:
        """Readiness 503, SIGTERM to every worker, wait for their drains, close."""
        self.health.draining = True
        log.info("draining", workers=self.count)
        await self._close()
        log.info("stopped")

    async def _close(self) -> None:
        self._stopping.set()
        s = self.settings.shutdown
        grace = s.drain_delay + s.timeout + s.shadow_grace + STOP_MARGIN
        alive = [w for w in self.workers if w.alive]
        for worker in alive:
            worker.state = WorkerState.STOPPING
            self._signal(worker, signal.SIGTERM)
        loop = asyncio.get_running_loop()
        waits = [loop.create_task(w.process.wait()) for w in alive if w.process is not None]
        if waits:
            await asyncio.wait(waits, timeout=grace)
        for worker in alive:
            if worker.alive:
                log.error("worker_killed", worker=worker.index, after_s=grace)
                self._signal(worker, signal.SIGKILL)
        await asyncio.gather(*waits)
        for worker in alive:
            code = worker.process.returncode if worker.process else None
            log.info("worker_stopped", worker=worker.index, **exit_status(code or 0))
        await asyncio.gather(*self._watchers)
        for worker in self.workers:
            worker.state = WorkerState.STOPPED
            await worker.detach()
        await self._admin.cleanup()
        for sock in self._reserved:
            sock.close()
        if self._runtime is not None:
            shutil.rmtree(self._runtime, ignore_errors=True)


async def supervise(settings: Settings, stop: asyncio.Event, config_path: Path, count: int) -> None:
    """Run ``count`` workers until ``stop`` is set, then drain them all. A stop
    while the workers are starting undoes the start at once."""
    supervisor = Supervisor(settings, config_path, count)
    loop = asyncio.get_running_loop()
    starting = loop.create_task(supervisor.start())
    stopped = loop.create_task(stop.wait())
    await asyncio.wait((starting, stopped), return_when=asyncio.FIRST_COMPLETED)
    stopped.cancel()
    if not starting.done():
        starting.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await starting
        log.info("stopped", during="start")
        return
    starting.result()  # WorkerStartError, OSError
    try:
        await stop.wait()
    finally:
        await supervisor.stop()
