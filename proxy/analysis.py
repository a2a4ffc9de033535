"""Where the rollout gates' window statistics come from: this process's own
evidence window, or PromQL over every replica of a fleet.

Both answer ``measure(rt, since, now)`` with a :class:`WindowStats`, so the
controller does not care which one it holds. The Prometheus side turns each
statistic's query template into one number; everything that can go wrong on
the way (no answer, an HTTP error, a body that is not Prometheus', a result
that is not one finite number) becomes an :class:`AnalysisError` naming the
statistic, the query and the cause, since the operator fixing it needs all
three. "No data" is not an error: it holds the rollout, like the local window.
The parsing and conversion functions are pure and tested as tables.
"""

from __future__ import annotations

import asyncio
import errno
import json
import math
import os
import time
from collections.abc import Callable, Mapping
from typing import Any

import aiohttp

from proxy.errors import AnalysisError
from proxy.fleetconfig import PrometheusSettings, render
from proxy.gates import WindowStats
from proxy.routing import RouteRuntime

COUNTS = ("samples", "matches", "agent_calls", "agent_errors", "agent_served", "fallbacks")
LATENCIES = ("agent_p95", "legacy_p95")
STATISTICS = COUNTS + LATENCIES
_BOUNDS = (("matches", "samples"), ("agent_errors", "agent_calls"), ("fallbacks", "agent_served"))
_SHOWN = 200  # characters of a body or label set quoted in an error


class QueryError(AnalysisError):
    """A measurement failed at one statistic's query. The controller handles it as any
    AnalysisError (it counts them per route, a limit of its own like Argo's
    consecutiveErrorLimit); the parts are kept for tests and logs."""

    def __init__(self, statistic: str, query: str, cause: str) -> None:
        super().__init__(f"{statistic}: {cause} (query: {query})")
        self.statistic = statistic
        self.query = query
        self.cause = cause


class LocalAnalysis:
    """This process's own traffic: the route's evidence window. It cannot fail."""

    name = "local"
    max_consecutive_errors = 1

    async def start(self) -> None:
        pass

    async def close(self) -> None:
        pass

    async def measure(self, rt: RouteRuntime, since: float, now: float) -> WindowStats:
        return rt.window.stats(now, since=since)


def duration(seconds: float) -> str:
    """A PromQL range: whole seconds when exact, else milliseconds (Prometheus 2.x
    takes integers with a unit, never ``1.5s``)."""
    ms = max(1, round(seconds * 1000))
    return f"{ms // 1000}s" if ms % 1000 == 0 else f"{ms}ms"


def _number(text: Any) -> float:
    """A sample value: Prometheus sends it as a string ("1.5", "NaN", "+Inf")."""
    if not isinstance(text, str):
        raise ValueError(f"sample value {text!r} is not a string")
    try:
        return float(text)
    except ValueError:
        raise ValueError(f"sample value {text!r} is not a number") from None


def result_value(body: Any) -> float | None:
    """The one number in a successful /api/v1/query answer; None for an empty
    vector (no series: no data). ValueError says what else came back."""
    if not isinstance(body, dict) or body.get("status") != "success":
        raise ValueError(f"not a successful Prometheus answer: {_shorten(body)}")
    data = body.get("data")
    if not isinstance(data, dict):
        raise ValueError(f"answer without data: {_shorten(body)}")
    kind, result = data.get("resultType"), data.get("result")
    if kind == "scalar" and isinstance(result, list) and len(result) == 2:
        return _number(result[1])
    if kind != "vector" or not isinstance(result, list):
        raise ValueError(f"expected a vector or a scalar, got {kind!r}")
    if not result:
        return None
    if len(result) > 1:
        labels = ", ".join(_shorten(s.get("metric") if isinstance(s, dict) else s) for s in result)
        raise ValueError(
            f"{len(result)} series, expected one (aggregate the query, e.g. sum(...)): {labels}"
        )
    sample = result[0]
    value = sample.get("value") if isinstance(sample, dict) else None
    if not isinstance(value, list) or len(value) != 2:
        raise ValueError(f"malformed sample {_shorten(sample)}")
    return _number(value[1])


def error_text(status: int, body: str) -> str:
    """Prometheus' own words for a failed query (``errorType: error``), else the body."""
    try:
        parsed = json.loads(body)
    except ValueError:
        parsed = None
    if isinstance(parsed, dict) and isinstance(parsed.get("error"), str):
        kind = parsed.get("errorType")
        said = f"{kind}: {parsed['error']}" if isinstance(kind, str) else parsed["error"]
        return f"HTTP {status}: {said}"
    return f"HTTP {status}: {_shorten(body)}"


def count(value: float | None) -> int:
    """A count from increase(): extrapolated, so rounded; no series is zero."""
    if value is None:
        return 0
    if not math.isfinite(value):
        raise ValueError(f"count is {value}, not a finite number")
    rounded = math.floor(value + 0.5)
    if rounded < 0:
        raise ValueError(f"count is {value:g}, below zero")
    return rounded


def latency(value: float | None) -> float | None:
    """A p95 in seconds; NaN (a histogram with no observations in the window) is no data."""
    if value is None or math.isnan(value):
        return None
    if math.isinf(value) or value < 0:
        raise ValueError(f"p95 is {value:g}, not a finite latency of zero or more")
    return value


def to_stats(values: Mapping[str, float | None], queries: Mapping[str, str]) -> WindowStats:
    """WindowStats from each statistic's number. Counts of different queries are
    extrapolated (and scraped) apart, so a part can exceed its whole by a little:
    clamped, as the whole is what was observed."""
    numbers: dict[str, Any] = {}
    for name in STATISTICS:
        try:
            numbers[name] = (count if name in COUNTS else latency)(values.get(name))
        except ValueError as exc:
            raise QueryError(name, queries.get(name, "?"), str(exc)) from None
    for part, whole in _BOUNDS:
        if values.get(part) is None and numbers[whole] > 0:
            # A whole with no parts means the part's query selects nothing (a typo, a
            # selector): read as zero it would pass its gate without evidence.
            cause = f"no series, while {whole} is {numbers[whole]}: the query selects nothing"
            raise QueryError(part, queries.get(part, "?"), cause)
        numbers[part] = min(numbers[part], numbers[whole])
    return WindowStats(**numbers)


def _shorten(value: Any) -> str:
    text = value if isinstance(value, str) else json.dumps(value, sort_keys=True, default=str)
    text = " ".join(text.split())
    return text if len(text) <= _SHOWN else text[: _SHOWN - 3] + "..."


class PrometheusAnalysis:
    """The fleet's evidence: each statistic is one PromQL query over every replica."""

    name = "prometheus"

    def __init__(
        self, settings: PrometheusSettings, clock: Callable[[], float] = time.time
    ) -> None:
        self._clock = clock
        self._session: aiohttp.ClientSession | None = None
        self.settings = settings
        self.max_consecutive_errors = settings.max_consecutive_errors

    async def start(self) -> None:
        if self._session is None:
            self._session = aiohttp.ClientSession()

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None

    async def __aenter__(self) -> PrometheusAnalysis:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def measure(self, rt: RouteRuntime, since: float, now: float) -> WindowStats:
        """The route's statistics over the last ``min(window, now - since)`` seconds;
        a shorter stretch than ``min_window`` is no data (the rollout holds)."""
        settings = self.settings
        seconds = min(rt.window.span, now - since)
        if seconds < settings.min_window:
            return WindowStats()
        templates = settings.queries.model_dump()
        selector = f",{settings.selector}" if settings.selector else ""
        queries = {
            name: render(
                templates[name], route=rt.name, window=duration(seconds), selector=selector
            )
            for name in STATISTICS
        }
        at = self._clock()  # one instant for all: parts and wholes see the same scrapes
        results = await asyncio.gather(
            *(self._query(name, queries[name], at) for name in STATISTICS),
            return_exceptions=True,
        )
        values: dict[str, float | None] = {}
        failed: list[QueryError] = []
        for name, result in zip(STATISTICS, results, strict=True):
            if isinstance(result, QueryError):
                failed.append(result)
            elif isinstance(result, BaseException):
                raise result  # a bug, not a measurement
            else:
                values[name] = result
        if failed:
            first = failed[0]
            if len(failed) > 1:
                more = f"; {len(failed) - 1} more of the {len(STATISTICS)} queries failed too"
                raise QueryError(first.statistic, first.query, first.cause + more)
            raise first
        return to_stats(values, queries)

    async def _query(self, statistic: str, query: str, at: float) -> float | None:
        """One instant query; every way it can fail becomes an AnalysisError."""
        if self._session is None:
            raise RuntimeError("PrometheusAnalysis.start() was not called")
        url = f"{self.settings.url}/api/v1/query"
        timeout = self.settings.timeout
        params = {"query": query, "time": f"{at:.3f}", "timeout": f"{timeout:g}"}
        try:
            async with self._session.get(
                url, params=params, timeout=aiohttp.ClientTimeout(total=timeout)
            ) as response:
                body = await response.text(errors="replace")
                status = response.status
        except TimeoutError:
            raise QueryError(
                statistic, query, f"no answer from {self.settings.url} within {timeout:g}s"
            ) from None
        except aiohttp.ClientConnectorError as exc:
            # asyncio says "Connect call failed"; errno says why (a TLS error's is junk)
            code = None if isinstance(exc, aiohttp.ClientSSLError) else exc.os_error.errno
            reason = os.strerror(code) if code is not None and code in errno.errorcode else str(exc)
            cause = f"cannot connect to {self.settings.url}: {reason}"
            raise QueryError(statistic, query, cause) from None
        except aiohttp.ClientError as exc:
            cause = f"cannot query {self.settings.url}: {str(exc) or type(exc).__name__}"
            raise QueryError(statistic, query, cause) from None
        if status != 200:
            raise QueryError(statistic, query, error_text(status, body))
        try:
            return result_value(json.loads(body))
        except json.JSONDecodeError:
            shown = _shorten(body) or "(empty body)"
            raise QueryError(statistic, query, f"the answer is not JSON: {shown}") from None
        except ValueError as exc:
            raise QueryError(statistic, query, str(exc)) from None
