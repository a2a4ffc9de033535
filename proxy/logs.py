"""structlog set-up: JSON lines for machines, readable lines on a terminal.

Configured once by the CLI. Events are plain key/value data; the renderer is
the only thing that differs between production and a developer's terminal.
"""

from __future__ import annotations

import logging
import sys
from typing import Any, TextIO

import orjson
import structlog

from proxy.redaction import Redactor
from proxy.settings import LoggingSettings


def _dumps(event: Any, **_: Any) -> str:
    return orjson.dumps(event, default=repr).decode()


def configure(
    settings: LoggingSettings,
    stream: TextIO | None = None,
    redactor: Redactor | None = None,
    fields: dict[str, Any] | None = None,
) -> None:
    """structlog events and standard-library records (aiohttp's, asyncio's) alike
    become one line each on ``stream``, redacted last before rendering.
    ``fields`` go on every line (a worker's ``worker=<index>``)."""
    stream = stream or sys.stdout
    redactor = redactor or Redactor()
    fmt = settings.format
    if fmt == "auto":
        fmt = "console" if stream.isatty() else "json"
    renderer: Any = (
        structlog.dev.ConsoleRenderer(colors=stream.isatty())
        if fmt == "console"
        else structlog.processors.JSONRenderer(serializer=_dumps)
    )
    level = logging.getLevelNamesMapping()[settings.level.upper()]
    shared: list[Any] = [
        structlog.processors.add_log_level,
        structlog.processors.TimeStamper(fmt="iso", utc=True),
    ]
    if fields:
        shared.append(_Fields(fields))
    structlog.configure(
        processors=[
            structlog.contextvars.merge_contextvars,
            *shared,
            structlog.processors.format_exc_info,
            redactor,
            renderer,
        ],
        wrapper_class=structlog.make_filtering_bound_logger(level),
        # One write per line (PrintLogger writes the newline apart): under
        # `run --workers N` the processes share stdout, and a pipe keeps a
        # write of up to 4 KiB whole, so their lines never interleave.
        logger_factory=structlog.WriteLoggerFactory(stream),
        cache_logger_on_first_use=True,
    )
    handler = logging.StreamHandler(stream)
    handler.setLevel(level)  # filters may lower a record's level after the logger's check
    handler.setFormatter(
        structlog.stdlib.ProcessorFormatter(
            foreign_pre_chain=[
                structlog.stdlib.add_logger_name,
                structlog.stdlib.ExtraAdder(allow=("reason",)),
                *shared,
            ],
            processors=[
                structlog.stdlib.ProcessorFormatter.remove_processors_meta,
                structlog.processors.format_exc_info,
                redactor,
                renderer,
            ],
        )
    )
    root = logging.getLogger()
    root.handlers[:] = [handler]
    logging.captureWarnings(True)  # Python warnings too go through the redactor
    root.setLevel(max(level, logging.INFO))  # aiohttp's debug chatter stays out


class _Fields:
    """A processor adding the same key/values to every event."""

    def __init__(self, fields: dict[str, Any]) -> None:
        self._fields = dict(fields)

    def __call__(self, logger: Any, name: str, event: dict[str, Any]) -> dict[str, Any]:
        return {**self._fields, **event}


# Redaction sees this much past the limit, so a secret the cut would split
# (and no longer match) is masked whole first.
REDACTION_SLACK = 1024


def bounded(value: Any, limit: int, redactor: Redactor) -> Any:
    """A value for a log event: redacted, then truncated to ``limit``."""
    return truncate(redactor.value(truncate(value, limit + REDACTION_SLACK)), limit)


def truncate(value: Any, limit: int) -> Any:
    """Keep log events bounded: long strings and big containers are cut."""
    if isinstance(value, str):
        return value if len(value) <= limit else value[:limit] + f"…(+{len(value) - limit})"
    if isinstance(value, bytes):
        return truncate(value.decode("utf-8", "replace"), limit)
    if isinstance(value, dict | list):
        text = orjson.dumps(value, default=repr).decode()
        return value if len(text) <= limit else truncate(text, limit)
    return value
