"""Replacing a file whole or not at all.

The new content goes to a temporary file in the same directory, is synced, and
is renamed over the old one: a reader, or a crash, sees the old file or the
new one, never half of one.
"""

from __future__ import annotations

import contextlib
import os
import tempfile
from pathlib import Path


def replace(path: Path, data: bytes, *, keep_mode: bool = False) -> None:
    """Make ``path`` hold ``data``. The new file is 0600, or with ``keep_mode``
    has the permission bits the old one had (when it can tell)."""
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as file:
            file.write(data)
            file.flush()
            os.fsync(file.fileno())
        if keep_mode:
            with contextlib.suppress(OSError):
                os.chmod(tmp, path.stat().st_mode & 0o7777)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
