"""Writes recorded cases to JSONL files off the event loop: every mismatch,
a random share of matches, optionally errors — the raw material of golden
suites (see proxy/golden.py for one case).

The loop only decides (:meth:`Recorder.wants`, one random draw) and hands a
case, or a function that builds one, to a bounded queue (:meth:`Recorder.offer`,
never blocks). One writer thread builds, redacts, serializes and appends.
When the queue is full the case is dropped and counted: recording is
evidence, never a reason to slow a request or grow memory.

Files are ``cases-<UTC time>-<pid>-<seq>.jsonl`` so their names sort by time;
a file rotates before it would pass ``max_file_size``, and the oldest files in
the directory (earlier runs included) are deleted before the directory would
pass ``max_total_size``. Under ``run --workers N`` the workers share the
directory, each with its share of the total: worker I's files are
``cases-<UTC time>-wI-<pid>-<seq>.jsonl``, and it counts and deletes only
those (so a restarted worker never deletes its siblings' files). A write
error (disk full, permissions) is logged once per episode, counted, and the
case dropped; it never reaches the caller.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import queue
import random
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from enum import StrEnum
from pathlib import Path
from typing import Any

import structlog
from pydantic import BaseModel, ConfigDict, Field, model_validator

from comparators import Verdict
from proxy.caseredaction import redacted
from proxy.golden import DEFAULT_MAX_BODY, Case
from proxy.redaction import Redactor
from proxy.units import ByteSize

log = structlog.get_logger("proxy.recorder")

PREFIX, SUFFIX = "cases-", ".jsonl"
MIN_FILE_SIZE = 1024
_STOP = object()


class RecordingSettings(BaseModel):
    """``recording:`` in the config: which compared requests become cases, and
    how much disk they may take."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    enabled: bool = False
    directory: Path = Field(Path("recordings"), description="where the JSONL files go")
    match_percent: float = Field(
        1.0, ge=0, le=100, description="share of matches recorded too (every mismatch is)"
    )
    record_errors: bool = Field(False, description="also record comparisons that errored")
    max_file_size: ByteSize = Field(
        10 * 1024**2, ge=MIN_FILE_SIZE, description="a file rotates before passing this"
    )
    max_total_size: ByteSize = Field(
        1024**3, description="oldest files are deleted to stay under this"
    )
    max_body_size: ByteSize = Field(
        DEFAULT_MAX_BODY, ge=0, description="a larger body is recorded as omitted"
    )
    queue_size: int = Field(1000, ge=1, le=100_000, description="cases waiting for the writer")

    @model_validator(mode="after")
    def _total_holds_a_file(self) -> RecordingSettings:
        if self.max_total_size < self.max_file_size:
            raise ValueError("max_total_size must be at least max_file_size")
        return self


class Outcome(StrEnum):
    """What became of one offered case (a metric label)."""

    WRITTEN = "written"
    QUEUE_FULL = "queue_full"  # the writer is behind: dropped, never waited for
    WRITE_ERROR = "write_error"  # disk full, permissions...
    BUILD_ERROR = "build_error"  # building or redacting the case raised
    TOO_LARGE = "too_large"  # one case larger than max_file_size
    CLOSED = "closed"  # offered after close(), or still queued when close timed out


@dataclass(frozen=True, slots=True)
class RecorderStats:
    outcomes: dict[Outcome, int] = field(default_factory=dict)
    bytes_written: int = 0
    files_deleted: int = 0


# Called from the writer thread (WRITTEN and most drops) or the caller's
# (QUEUE_FULL, CLOSED) with the outcome and the bytes written (0 for a drop).
Listener = Callable[[Outcome, int], None]
Offered = Case | Callable[[], Case]


class Recorder:
    """Build one where recording is enabled (``settings.enabled``); it starts
    its writer thread at once. Close it on shutdown (:meth:`aclose`)."""

    def __init__(
        self,
        settings: RecordingSettings,
        redactor: Redactor | None = None,
        *,
        rng: random.Random | None = None,
        listener: Listener | None = None,
        clock: Callable[[], float] = time.time,
        worker: int | None = None,
    ) -> None:
        """``worker``: this process's index under ``run --workers``, in its file names."""
        self.settings = settings
        self._redactor = redactor or Redactor()
        self._rng = rng or random.Random()
        self._listener = listener
        self._queue: queue.Queue[Any] = queue.Queue(settings.queue_size)
        self._files = _Files(settings, clock, worker)
        self._counts = dict.fromkeys(Outcome, 0)
        self._bytes = 0
        self._lock = threading.Lock()
        self._closed = False
        self._abandon = False
        self._stopping = threading.Event()
        self._failing = False
        self._thread = threading.Thread(target=self._run, name="recorder", daemon=True)
        self._thread.start()

    def wants(self, verdict: Verdict) -> bool:
        """Should a comparison with this verdict be recorded? Cheap: call it
        before building a case. Skipped comparisons are never recorded."""
        if verdict is Verdict.MISMATCH:
            return True
        if verdict is Verdict.MATCH:
            return self._rng.random() * 100 < self.settings.match_percent
        return verdict is Verdict.ERROR and self.settings.record_errors

    def offer(self, case: Offered) -> bool:
        """Queue a case (or a function building one, run on the writer thread)
        for writing; ``False`` when it was dropped. Never blocks, never raises."""
        if self._closed:
            self._count(Outcome.CLOSED)
            return False
        try:
            self._queue.put_nowait(case)
        except queue.Full:
            self._count(Outcome.QUEUE_FULL)
            return False
        return True

    def stats(self) -> RecorderStats:
        with self._lock:
            return RecorderStats(dict(self._counts), self._bytes, self._files.deleted)

    def close(self, timeout: float = 5.0) -> bool:
        """Write what is queued, for at most ``timeout`` seconds; ``True`` when
        all of it was. Blocks: from the loop, ``await aclose()``."""
        self._closed = True
        self._stopping.set()
        with contextlib.suppress(queue.Full):  # else the writer stops once the queue is empty
            self._queue.put_nowait(_STOP)
        self._thread.join(max(0.0, timeout))
        if self._thread.is_alive():
            self._abandon = True  # the writer counts the rest as CLOSED and stops
            return False
        self._discard()  # offered in the instant close() began
        return True

    async def aclose(self, grace: float = 5.0) -> bool:
        """:meth:`close` without blocking the loop."""
        return await asyncio.to_thread(self.close, grace)

    def _count(self, outcome: Outcome, size: int = 0) -> None:
        with self._lock:  # the loop's thread and the writer's both count
            self._counts[outcome] += 1
            self._bytes += size
        if self._listener is not None:
            try:
                self._listener(outcome, size)
            except Exception:  # a metrics hook must not stop the recorder
                log.exception("recording_listener_failed")

    def _discard(self) -> None:
        while True:
            try:
                item = self._queue.get_nowait()
            except queue.Empty:
                return
            if item is not _STOP:
                self._count(Outcome.CLOSED)

    def _run(self) -> None:
        while True:
            item = self._queue.get()
            if item is _STOP:
                break
            if self._abandon:
                self._count(Outcome.CLOSED)
            else:
                self._write(item)
            if self._stopping.is_set() and self._queue.empty():
                break  # close() found the queue full: no room for _STOP
        try:
            self._files.close()
        except OSError as exc:
            self._failed(exc)

    def _write(self, item: Offered) -> None:
        try:
            case = item() if callable(item) else item
            line = redacted(case, self._redactor).to_line()
        except Exception:
            log.exception("recording_build_failed")
            self._count(Outcome.BUILD_ERROR)
            return
        if len(line) > self.settings.max_file_size:
            self._count(Outcome.TOO_LARGE)
            return
        try:
            self._files.append(line)
        except OSError as exc:
            self._failed(exc)
            return
        if self._failing:
            self._failing = False
            log.info("recording_recovered", directory=str(self.settings.directory))
        self._count(Outcome.WRITTEN, len(line))

    def _failed(self, exc: OSError) -> None:
        self._count(Outcome.WRITE_ERROR)
        if not self._failing:  # once per episode, not once per case
            self._failing = True
            log.warning("recording_failed", directory=str(self.settings.directory), error=str(exc))


class _Files:
    """The directory's case files: the one being appended to, and the sizes of
    the others (oldest first) so the total bound needs no listing per write."""

    def __init__(
        self, settings: RecordingSettings, clock: Callable[[], float], worker: int | None
    ) -> None:
        self.settings = settings
        self.clock = clock
        self._tag = "" if worker is None else f"w{worker}-"  # one process: every case file
        self.deleted = 0
        self._closed: deque[tuple[Path, int]] | None = None  # found on the first write
        self._fd: int | None = None
        self._path = Path()
        self._size = 0
        self._sequence = 0

    def append(self, line: bytes) -> None:
        if self._fd is not None and self._size + len(line) > self.settings.max_file_size:
            self.close()
        closed = self._known()
        total = sum(size for _, size in closed) + self._size
        while closed and total + len(line) > self.settings.max_total_size:
            path, size = closed[0]
            path.unlink(missing_ok=True)
            closed.popleft()
            total -= size
            self.deleted += 1
        if self._fd is None:
            self._open()
        assert self._fd is not None
        view = memoryview(line)
        try:
            while view:  # unbuffered, so an error belongs to this line and no other
                view = view[os.write(self._fd, view) :]
        except OSError:
            self._cut()
            raise
        self._size += len(line)

    def close(self) -> None:
        fd, self._fd = self._fd, None
        if fd is None:
            return
        try:
            os.close(fd)
        finally:
            if self._closed is not None:
                self._closed.append((self._path, self._size))
            self._size = 0

    def _known(self) -> deque[tuple[Path, int]]:
        if self._closed is None:
            directory = self.settings.directory
            directory.mkdir(parents=True, exist_ok=True)
            own = f"*-{self._tag}*" if self._tag else "*"
            found = sorted(directory.glob(f"{PREFIX}{own}{SUFFIX}"))
            self._closed = deque((p, p.stat().st_size) for p in found)
        return self._closed

    def _open(self) -> None:
        self._sequence += 1
        stamp = datetime.fromtimestamp(self.clock(), UTC).strftime("%Y%m%dT%H%M%S.%f")[:-3]
        name = f"{PREFIX}{stamp}Z-{self._tag}{os.getpid()}-{self._sequence:04d}{SUFFIX}"
        self.settings.directory.mkdir(parents=True, exist_ok=True)  # removed while running?
        path = self.settings.directory / name
        self._fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
        self._path, self._size = path, 0

    def _cut(self) -> None:
        """After a failed write: cut the partial line so the file stays valid
        JSONL, and start a new file next time."""
        with contextlib.suppress(OSError):  # else the reader reports the cut line by number
            os.ftruncate(self._fd or -1, self._size)
        with contextlib.suppress(OSError):
            self.close()
