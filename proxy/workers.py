"""``run --workers N``: one supervisor, N worker processes behind one port.

Each worker is a full proxy (``python -P -m proxy run ... --worker-index I``)
whose listener binds the same port with SO_REUSEPORT, so the kernel spreads
connections among them (proxy/sharedport.py: the port is checked free and
held first); its admin app listens on a unix socket in a private directory
(0700, removed by the supervisor on exit), where the settings every worker
starts from are too (proxy/snapshot.py). The supervisor serves the public
admin port for the pod (proxy/workeradmin.py), restarts a worker that dies,
and drains them all on SIGTERM.

Workers are fresh interpreters, not forks: a restart happens while the
supervisor's event loop runs, and a fork of a process with a running loop
(threads, uvloop's handles, open sockets) is unsafe; a fresh process also
runs exactly the code path a single ``run`` does.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
from pathlib import Path

import structlog
from aiohttp import web

from proxy import snapshot
from proxy.admin import Health
from proxy.reload import Fingerprint
from proxy.server import public_url
from proxy.settings import Settings
from proxy.sharedport import reserve_port
from proxy.worker import Worker, WorkerState, exit_status, next_backoff
from proxy.workeradmin import Pool, create_supervisor_admin

log = structlog.get_logger("proxy.workers")

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


class Supervisor:
    def __init__(
        self, settings: Settings, config_path: Path, count: int, seen: Fingerprint = None
    ) -> None:
        """``seen``: the config file's fingerprint from before ``settings`` were read."""
        self.settings = settings
        # Absolute, with its symlinks kept: a ConfigMap's proxy.yaml -> ..data/proxy.yaml
        # is swapped by relinking ..data, which the workers' watchers must follow.
        self.config_path = config_path.absolute()
        self.count = count
        self.seen = seen
        self.health = Health()
        self.port = 0
        self.workers: list[Worker] = []
        self.pool = Pool(self.workers, self.health, settings.coordination)
        self._admin = web.AppRunner(
            create_supervisor_admin(self.pool), access_log=None, handle_signals=False
        )
        self._reserved: list[socket.socket] = []
        self._runtime: Path | None = None
        self._snapshot = Path()
        self._stopping = asyncio.Event()
        self._watchers: list[asyncio.Task[None]] = []

    async def start(self) -> None:
        """Reserve the port, open the admin listener, start every worker and wait
        until all are ready; on any failure undo it all and raise."""
        s = self.settings
        try:
            self._reserved, self.port = reserve_port(s.listen.host, s.listen.port)
            runtime = self._runtime_dir()
            self.workers += [Worker(i, runtime / f"w{i}.sock") for i in range(self.count)]
            await self._admin.setup()
            await web.TCPSite(self._admin, s.admin.host, s.admin.port, reuse_address=True).start()
            for worker in self.workers:
                await self._spawn(worker)
            await self._all_ready()
        except BaseException:
            await self._close()
            raise
        self.health.ready = True
        loop = asyncio.get_running_loop()
        self._watchers = [
            loop.create_task(self._watch(w), name=f"worker-{w.index}") for w in self.workers
        ]
        for worker, task in zip(self.workers, self._watchers, strict=True):
            task.add_done_callback(functools.partial(watch_ended, worker.index))
        host, port = self._admin.addresses[0][:2]
        log.info(
            "listening",
            proxy=public_url(s.listen.host, self.port),
            admin=public_url(host, port),
            workers=self.count,
        )

    def _runtime_dir(self) -> Path:
        """The private runtime directory with the settings snapshot in it. One
        removed under a running pod (a /tmp cleaner) is replaced by a new one,
        never re-made under its old, predictable name."""
        if self._runtime is None or not self._runtime.is_dir():
            if self._runtime is not None:
                log.warning("runtime_dir_missing", path=str(self._runtime))
            self._runtime = Path(tempfile.mkdtemp(prefix="shadow-proxy-"))  # mode 0700
            self._snapshot = snapshot.write(self._runtime, self.settings, self.seen)
        return self._runtime

    async def _spawn(self, worker: Worker) -> None:
        worker.socket = self._runtime_dir() / worker.socket.name
        worker.socket.unlink(missing_ok=True)
        process = await asyncio.create_subprocess_exec(
            # -P: the working directory is not put on sys.path, so a proxy/
            # package there is never the one run.
            sys.executable, "-P", "-m", "proxy", "run", "--config", str(self.config_path),
            "--workers", str(self.count), "--worker-index", str(worker.index),
            "--worker-port", str(self.port), "--worker-socket", str(worker.socket),
            "--worker-settings", str(self._snapshot),
            # The worker stops when this pipe closes: when the supervisor is gone.
            stdin=subprocess.PIPE,
            # Its own session: a ^C on a terminal reaches the supervisor
            # alone, which then drains the workers in order.
            start_new_session=True,
        )  # fmt: skip
        worker.attach(process, asyncio.get_running_loop().time())
        log.info("worker_started", worker=worker.index, pid=process.pid, socket=str(worker.socket))
        if self._stopping.is_set():  # stop() began while this one was being spawned
            worker.state = WorkerState.STOPPING
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
        self._stopping.set()  # from now on, a worker spawned gets SIGTERM at once (_spawn)
        s = self.settings.shutdown
        grace = s.drain_delay + s.timeout + s.shadow_grace + STOP_MARGIN
        for worker in self.workers:
            if worker.alive:
                worker.state = WorkerState.STOPPING
                self._signal(worker, signal.SIGTERM)
        try:
            async with asyncio.timeout(grace):
                await self._all_exited()
        except TimeoutError:
            for worker in self.workers:  # one spawned during the drain too
                if worker.alive:
                    log.error("worker_killed", worker=worker.index, after_s=grace)
                    self._signal(worker, signal.SIGKILL)
            await self._all_exited()
        for worker in self.workers:
            if worker.state is WorkerState.STOPPING and worker.process is not None:
                code = worker.process.returncode or 0
                log.info("worker_stopped", worker=worker.index, **exit_status(code))
            worker.state = WorkerState.STOPPED
            await worker.detach()
        await self._admin.cleanup()
        for sock in self._reserved:
            sock.close()
        if self._runtime is not None:
            shutil.rmtree(self._runtime, ignore_errors=True)

    async def _all_exited(self) -> None:
        """Until no worker process runs and no watcher is left to start one."""
        loop = asyncio.get_running_loop()
        while True:
            running = [w.process for w in self.workers if w.process and w.alive]
            exits = {loop.create_task(process.wait()) for process in running}
            watching = {t for t in self._watchers if not t.done()}
            if not exits and not watching:
                return
            try:
                await asyncio.wait(exits | watching, return_when=asyncio.FIRST_COMPLETED)
            finally:
                for task in exits:
                    task.cancel()


def watch_ended(index: int, task: asyncio.Task[None]) -> None:
    """A watcher that raised no longer restarts its worker: say so, loudly."""
    if not task.cancelled() and (exc := task.exception()) is not None:
        log.error("worker_watch_failed", worker=index, error=repr(exc), exc_info=exc)


async def supervise(
    settings: Settings, stop: asyncio.Event, config_path: Path, count: int, seen: Fingerprint = None
) -> None:
    """Run ``count`` workers until ``stop`` is set, then drain them all. A stop
    while the workers are starting undoes the start at once. ``seen``: the
    config file's fingerprint from before ``settings`` were read."""
    supervisor = Supervisor(settings, config_path, count, seen)
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
