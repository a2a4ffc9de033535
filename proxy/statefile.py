"""The rollout state file: where each route's stage and share survive a restart.

Written atomically (a temporary file in the same directory, fsync, rename), so
a crash mid-write leaves the previous state, never half of one. Each route
also records the config's ``percent`` it was started from: if the config file
says something else at the next start, someone edited it, and that edit wins.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import orjson

from proxy import atomicfile

VERSION = 1


def load(path: Path) -> dict[str, dict[str, Any]]:
    """Route name -> saved entry; an absent file is an empty state."""
    try:
        raw = path.read_bytes()
    except FileNotFoundError:
        return {}
    data = orjson.loads(raw)
    if not isinstance(data, dict) or data.get("version") != VERSION:
        raise ValueError(f"{path}: not a version {VERSION} shadow-proxy state file")
    routes = data.get("routes")
    if not isinstance(routes, dict):
        raise ValueError(f"{path}: 'routes' must be an object")
    return routes


def save(path: Path, routes: dict[str, dict[str, Any]]) -> None:
    payload = orjson.dumps({"version": VERSION, "routes": routes}, option=orjson.OPT_INDENT_2)
    path.parent.mkdir(parents=True, exist_ok=True)
    atomicfile.replace(path, payload)
