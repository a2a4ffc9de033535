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

from proxy.settings import LoggingSettings


def _dumps(event: Any, **_: Any) -> str:
    return orjson.dumps(event, default=repr).decode()


def configure(settings: LoggingSettings, stream: TextIO | None = None) -> None:
    stream = stream or sys.stdout
    fmt = settings.format
    if fmt == "auto":
        fmt = "console" if stream.isatty() else "json"
    renderer: Any = (
        structlog.dev.ConsoleRenderer(colors=stream.isatty())
        if fmt == "console"
        else structlog.processors.JSONRenderer(serializer=_dumps)
    )
    structlog.configure(
        processors=[
            structlog.contextvars.merge_contextvars,
            structlog.processors.add_log_level,
            structlog.processors.TimeStamper(fmt="iso", utc=True),
            structlog.processors.format_exc_info,
            renderer,
        ],
        wrapper_class=structlog.make_filtering_bound_logger(
            logging.getLevelNamesMapping()[settings.level.upper()]
        ),
        logger_factory=structlog.PrintLoggerFactory(stream),
        cache_logger_on_first_use=True,
    )


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
