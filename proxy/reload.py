"""Watching the config file and re-applying it without dropping a request.

Polls the file's identity (inode, device, size, mtime of whatever the path
resolves to): a Kubernetes ConfigMap mount swaps a ``..data`` symlink to a
new directory rather than rewriting the file, and polling the resolved file
sees that where an inotify watch on the old inode would not. An invalid new
file is rejected with a log event and a metric; the running config stays.
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import Callable
from pathlib import Path
from typing import Literal

import structlog

from proxy.errors import ConfigError
from proxy.metrics import Metrics
from proxy.settings import Settings, load_settings

log = structlog.get_logger("proxy.reload")

Fingerprint = tuple[str, int, int, int, int] | None
Loader = Callable[[Path], Settings]  # a file's settings, or ConfigError


def fingerprint(path: Path) -> Fingerprint:
    try:
        st = os.stat(path)  # follows symlinks: the file the path means now
    except OSError:
        return None
    return (os.path.realpath(path), st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns)


class ConfigWatcher:
    def __init__(
        self,
        path: Path,
        interval: float,
        apply: Callable[[Settings], list[str]],
        metrics: Metrics,
        load: Loader = load_settings,
        seen: Fingerprint | Literal["now"] = "now",
    ) -> None:
        """``load``: how the file becomes settings; a worker under ``run --workers``
        passes its own, which divides budgets and refuses what N workers cannot run.
        ``seen``: the file's fingerprint when the running settings were read from
        it (a worker's: when its supervisor read it), so an edit made since is
        applied at the first check; by default, the file as it is now."""
        self.path = path
        self.interval = interval
        self._apply = apply
        self._metrics = metrics
        self._load = load
        self._seen = fingerprint(path) if seen == "now" else seen

    async def run(self, stop: asyncio.Event) -> None:
        """Check at once, then every ``interval`` until ``stop``."""
        self.check()
        while not stop.is_set():
            try:
                await asyncio.wait_for(stop.wait(), timeout=self.interval)
            except TimeoutError:
                self.check()

    def check(self) -> bool:
        """Reload if the file changed; True when a new config was applied."""
        now = fingerprint(self.path)
        if now is None or now == self._seen:
            return False
        self._seen = now
        try:
            settings = self._load(self.path)
        except ConfigError as exc:
            self._metrics.reload("rejected")
            log.error("config_rejected", path=str(self.path), problems=exc.problems)
            return False
        ignored = self._apply(settings)
        self._metrics.reload("applied")
        log.info("config_reloaded", path=str(self.path), needs_restart=ignored or None)
        return True
