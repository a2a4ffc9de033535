"""Processes the harness starts: free ports, start, wait, stop by PID, and
CPU and memory read from /proc for a process and its descendants.

Every server runs in its own session, so a Ctrl-C at the terminal reaches
only the harness, which then stops each server itself (SIGTERM, then SIGKILL).
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import threading
import time
from collections.abc import Sequence
from pathlib import Path

CLK_TCK = os.sysconf("SC_CLK_TCK")
PAGE = os.sysconf("SC_PAGE_SIZE")
LOOPBACK = "127.0.0.1"


class StartError(RuntimeError):
    """A server exited or never answered on its port."""


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind((LOOPBACK, 0))
        return int(sock.getsockname()[1])


def refusing_port() -> socket.socket:
    """A socket bound to a free port and never listening: a connect is refused,
    and no other process can take the port while the socket stays open."""
    sock = socket.socket()
    sock.bind((LOOPBACK, 0))
    return sock


class Proc:
    """One server process, its output in ``log``."""

    def __init__(self, name: str, argv: Sequence[str], log: Path, cwd: Path) -> None:
        self.name = name
        self.log = log
        with log.open("wb") as out:
            self.popen = subprocess.Popen(
                list(argv),
                cwd=cwd,
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        self.pid = self.popen.pid

    def tail(self, lines: int = 15) -> str:
        try:
            text = self.log.read_text(errors="replace")
        except OSError:
            return ""
        return "\n".join(text.splitlines()[-lines:])

    def wait_port(self, port: int, timeout: float = 20.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.popen.poll() is not None:
                raise StartError(f"{self.name} exited with {self.popen.returncode}:\n{self.tail()}")
            with contextlib.suppress(OSError), socket.create_connection((LOOPBACK, port), 0.2):
                return
            time.sleep(0.05)
        raise StartError(f"{self.name} did not answer on port {port} in {timeout:g}s")

    def stop(self, timeout: float = 5.0) -> None:
        """SIGTERM, then SIGKILL for it and whatever it started."""
        if self.popen.poll() is not None:
            return
        tree = tree_pids(self.pid)
        with contextlib.suppress(ProcessLookupError):
            os.kill(self.pid, signal.SIGTERM)
        try:
            self.popen.wait(timeout)
        except subprocess.TimeoutExpired:
            for pid in tree:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
            self.popen.wait()


def _stat_fields(pid: int) -> list[str] | None:
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    # the command name (field 2) may hold spaces and parentheses: split after the last ")"
    return text[text.rindex(")") + 2 :].split()


def tree_pids(root: int) -> list[int]:
    """``root`` and its descendants, alive now."""
    children: dict[int, list[int]] = {}
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit():
            continue
        fields = _stat_fields(int(entry.name))
        if fields is not None:
            children.setdefault(int(fields[1]), []).append(int(entry.name))
    found, todo = [], [root]
    while todo:
        pid = todo.pop()
        found.append(pid)
        todo.extend(children.get(pid, ()))
    return found


def cpu_seconds(pids: Sequence[int]) -> float:
    """User + system time of these processes and of their reaped children."""
    ticks = 0
    for pid in pids:
        fields = _stat_fields(pid)
        if fields is not None:  # utime, stime, cutime, cstime are fields 14-17
            ticks += sum(int(f) for f in fields[11:15])
    return ticks / CLK_TCK


def rss_bytes(pids: Sequence[int]) -> int:
    total = 0
    for pid in pids:
        with contextlib.suppress(OSError, IndexError, ValueError):
            total += int(Path(f"/proc/{pid}/statm").read_text().split()[1]) * PAGE
    return total


def hwm_bytes(pid: int) -> int:
    """The kernel's own peak RSS of one process (VmHWM)."""
    with contextlib.suppress(OSError):
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
    return 0


class Usage:
    """CPU time and peak RSS of a process tree over a block, sampled in a thread.

    The tree is re-read every second (nginx and Envoy do not fork under load);
    RSS, summed over the tree, every ``interval``. A single process's own
    VmHWM is also taken, so a spike between two samples is not missed.
    """

    def __init__(self, root: int, interval: float = 0.05) -> None:
        self.root = root
        self.interval = interval
        self.cpu = 0.0
        self.peak_rss = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._sample, daemon=True)
        self._cpu0 = 0.0

    def __enter__(self) -> Usage:
        self._pids = tree_pids(self.root)
        self._cpu0 = cpu_seconds(self._pids)
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()
        pids = tree_pids(self.root)
        self.cpu = cpu_seconds(pids) - self._cpu0
        biggest = max((hwm_bytes(pid) for pid in pids), default=0)
        self.peak_rss = max(self.peak_rss, rss_bytes(pids), biggest if len(pids) == 1 else 0)

    def _sample(self) -> None:
        refreshed = time.monotonic()
        pids = self._pids
        while not self._stop.wait(self.interval):
            if time.monotonic() - refreshed > 1.0:
                pids, refreshed = tree_pids(self.root), time.monotonic()
            self.peak_rss = max(self.peak_rss, rss_bytes(pids))
