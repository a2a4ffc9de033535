"""Human units in config: durations (``250ms``, ``30s``), sizes (``10MiB``), and the
URLs of the servers the proxy calls.

Config files are written by people; a bare number is accepted too (seconds,
bytes) so environment overrides stay easy to type.
"""

from __future__ import annotations

import math
import re
from typing import Annotated, Any

from pydantic import AfterValidator, BeforeValidator, WithJsonSchema
from yarl import URL

_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(ms|s|m|h)?\s*$")
_DURATION_SCALE = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, None: 1.0}

_SIZE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(B|KB|KiB|MB|MiB|GB|GiB)?\s*$")
_SIZE_SCALE = {
    None: 1,
    "B": 1,
    "KB": 1000,
    "KiB": 1024,
    "MB": 1000**2,
    "MiB": 1024**2,
    "GB": 1000**3,
    "GiB": 1024**3,
}


def parse_duration(value: Any) -> float:
    """Seconds from ``250ms``/``30s``/``5m``/``1h`` or a plain number of seconds."""
    if isinstance(value, bool):
        raise ValueError("expected a duration like '250ms' or '30s'")
    if isinstance(value, int | float):
        seconds = float(value)
    elif isinstance(value, str) and (m := _DURATION.match(value)):
        seconds = float(m.group(1)) * _DURATION_SCALE[m.group(2)]
    else:
        raise ValueError(f"expected a duration like '250ms' or '30s', got {value!r}")
    if seconds < 0:
        raise ValueError("a duration cannot be negative")
    if not math.isfinite(seconds):  # .nan would pass `< 0`, and asyncio.timeout(nan) fires at once
        raise ValueError(f"a duration must be a finite number, got {value!r}")
    return seconds


def parse_size(value: Any) -> int:
    """Bytes from ``512KiB``/``10MB``/``1GiB`` or a plain number of bytes."""
    if isinstance(value, bool):
        raise ValueError("expected a size like '64KiB' or '10MiB'")
    if isinstance(value, int):
        size = value
    elif isinstance(value, float) and value.is_integer():
        size = int(value)
    elif isinstance(value, str) and (m := _SIZE.match(value)):
        number = float(m.group(1)) * _SIZE_SCALE[m.group(2)]
        if not math.isfinite(number):  # 400 digits: int(inf) would raise OverflowError
            raise ValueError(f"a size must be a finite number, got {value!r}")
        size = int(number)
    else:
        raise ValueError(f"expected a size like '64KiB' or '10MiB', got {value!r}")
    if size < 0:
        raise ValueError("a size cannot be negative")
    return size


def _schema(number: str, pattern: str, example: str) -> dict[str, Any]:
    """A plain number, or a string with a unit."""
    return {
        "anyOf": [{"type": number, "minimum": 0}, {"type": "string", "pattern": pattern}],
        "description": example,
    }


Duration = Annotated[
    float,
    BeforeValidator(parse_duration),
    WithJsonSchema(_schema("number", _DURATION.pattern, "seconds, or '250ms', '30s', '5m'")),
]
ByteSize = Annotated[
    int,
    BeforeValidator(parse_size),
    WithJsonSchema(_schema("integer", _SIZE.pattern, "bytes, or '64KiB', '10MiB', '1GB'")),
]


def _positive(seconds: float) -> float:
    if seconds <= 0:
        raise ValueError("must be greater than zero")
    return seconds


# A timeout or a period: zero would mean "fail at once" or "spin".
PositiveDuration = Annotated[
    float,
    BeforeValidator(parse_duration),
    AfterValidator(_positive),
    WithJsonSchema(_schema("number", _DURATION.pattern, "seconds, or '250ms', '30s', '5m'")),
]


def http_url(value: str) -> str:
    """An absolute http(s) URL of a server the proxy calls, without a trailing slash."""
    url = URL(value)
    if url.scheme not in ("http", "https") or not url.host:
        raise ValueError("must be an absolute http:// or https:// URL with a host")
    if url.query_string or url.fragment:
        raise ValueError("must not carry a query string or fragment")
    if url.raw_user is not None or url.raw_password is not None:
        # They would be ignored (and shown wherever the URL is): say so.
        raise ValueError("must not carry credentials (user:password@)")
    return value.rstrip("/")


HttpUrl = Annotated[str, AfterValidator(http_url)]
