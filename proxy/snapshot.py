"""The settings a ``run --workers N`` supervisor started with, as a file its
workers load.

A worker that re-read the user's config file when it (re)starts could run
other restart-only settings (backends, listen, coordination, recording...)
than its siblings, and a file left invalid for a moment would turn one crash
into a crash loop. So the supervisor writes what it loaded once, in its
private runtime directory (0600: admin tokens and passwords are in it), and
every worker starts from that; its config watcher still watches the user's
file, from the fingerprint the file had when the supervisor read it, so a
restarted worker applies at once the hot-reloadable edits its siblings
applied while it was away (or rejects an invalid file, and keeps these).

The file is ``settings.model_dump(mode="json")`` (what ``check-config``
prints, which loads back the same) with the secrets in clear.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, cast

import orjson
from pydantic import BaseModel, SecretStr

from proxy.errors import ConfigError
from proxy.reload import Fingerprint
from proxy.settings import Settings, settings_from
from proxy.workerconfig import WorkerSpec, for_worker

NAME = "settings.json"


def write(directory: Path, settings: Settings, seen: Fingerprint) -> Path:
    """Write the snapshot into ``directory``; its path. ``seen``: the config
    file's fingerprint from before it was read."""
    data = settings.model_dump(mode="json")
    _reveal(settings, data)
    body = orjson.dumps({"settings": data, "config_fingerprint": seen})
    path = directory / NAME
    with os.fdopen(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600), "wb") as out:
        out.write(body)
    return path


def load(path: Path, spec: WorkerSpec) -> tuple[Settings, Fingerprint]:
    """This worker's settings from the snapshot, and the config file's
    fingerprint then; :class:`ConfigError` when it cannot."""
    try:
        data = orjson.loads(path.read_bytes())
        settings, seen = data["settings"], data["config_fingerprint"]
    except (OSError, orjson.JSONDecodeError, KeyError, TypeError) as exc:
        raise ConfigError(str(path), [f"cannot read the supervisor's settings: {exc}"]) from None
    fingerprint = None if seen is None else cast(Fingerprint, tuple(seen))
    return for_worker(settings_from(settings, source=str(path)), spec, str(path)), fingerprint


def _reveal(model: BaseModel, dumped: dict[str, Any]) -> None:
    """Put each secret's value where the dump masked it (``**********``)."""
    for name in type(model).model_fields:
        if name in dumped:
            _reveal_value(getattr(model, name), dumped, name)


def _reveal_value(value: Any, parent: Any, key: Any) -> None:
    if isinstance(value, SecretStr):
        parent[key] = value.get_secret_value()
        return
    child = parent[key]
    if isinstance(value, BaseModel) and isinstance(child, dict):
        _reveal(value, child)
    elif isinstance(value, dict) and isinstance(child, dict):
        for k, v in value.items():
            if k in child:
                _reveal_value(v, child, k)
    elif isinstance(value, list | tuple) and isinstance(child, list):
        for i, v in enumerate(value):
            _reveal_value(v, child, i)
