"""Where a legacy/agent pair of answers becomes evidence: the comparison, its
metrics, the mismatch log, and the route's rolling window for the gates.

Shared by the shadow path (legacy served, agent mirrored) and the agent path
(agent served, legacy called alongside), so both feed the rollout alike.
"""

from __future__ import annotations

import asyncio
import time
import zlib
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, replace

import structlog

from comparators import Comparator, Comparison, Verdict, compare
from proxy.headers import trace_id
from proxy.logs import bounded
from proxy.metrics import Metrics
from proxy.redaction import Redactor
from proxy.settings import LoggingSettings
from proxy.types import AGENT, Observation
from proxy.window import EvidenceWindow

log = structlog.get_logger("proxy.evidence")

# Bodies above this are compared on a worker thread so the loop keeps serving
# (about 0.5 ms of diffing for 16 KiB of JSON). A 1 MB document takes tens of
# milliseconds to parse and walk, holding the GIL all the while, so large
# comparisons run one at a time and use at most LARGE_COMPARE_SHARE of the
# time: after one that took t seconds the lane rests t * (1/share - 1). A
# large pair arriving while the lane is busy or resting is skipped (and
# counted), never queued: the live path keeps the rest of the CPU.
INLINE_COMPARE_BYTES = 16 * 1024
LARGE_COMPARE_SHARE = 0.25
BUSY = "large comparisons are at their CPU share (one at a time, 25% of the time)"
# A compressed body is inflated for comparison up to this size (bombs stop here).
MAX_INFLATED_BYTES = 16 * 1024 * 1024


@dataclass(frozen=True, slots=True)
class Exchange:
    """Which request a pair of answers belongs to, for logs."""

    route: str
    request_id: str
    traceparent: str | None
    method: str
    raw_path: str
    served_by: str  # who answered the client: legacy or agent


def decoded(observation: Observation) -> Observation | str:
    """The body as the comparators need it: gzip and deflate are inflated (bounded);
    another encoding is a reason to skip, not a false mismatch."""
    encoding = observation.headers.get("content-encoding", "identity").strip().lower()
    if encoding in ("", "identity") or not observation.body:
        return observation
    wbits = {"gzip": 16 + zlib.MAX_WBITS, "x-gzip": 16 + zlib.MAX_WBITS, "deflate": zlib.MAX_WBITS}
    if encoding not in wbits:
        return f"{observation.backend} body is {encoding}-encoded"
    inflater = zlib.decompressobj(wbits[encoding])
    try:
        body = inflater.decompress(observation.body, MAX_INFLATED_BYTES)
    except zlib.error:
        return f"{observation.backend} body is not valid {encoding}"
    if inflater.unconsumed_tail:
        return f"{observation.backend} body inflates past {MAX_INFLATED_BYTES} bytes"
    if not inflater.eof:  # zlib returns what it has: a cut stream would be compared as if whole
        return f"{observation.backend} body is not valid {encoding} (truncated)"
    return replace(observation, body=body)


class Lane:
    """The one worker thread for large comparisons, and its rest.

    Its own thread, not the loop's default pool: every thread that allocates
    gets its own malloc arena, and a parsed 1 MB document left behind in
    several of them is memory the process never gets back.
    """

    __slots__ = ("busy", "executor", "rest_until")

    def __init__(self) -> None:
        self.busy = False
        self.rest_until = 0.0
        self.executor = ThreadPoolExecutor(1, thread_name_prefix="compare")

    def free(self, now: float) -> bool:
        return not self.busy and now >= self.rest_until

    def ran(self, started: float, ended: float) -> None:
        self.busy = False
        self.rest_until = ended + (ended - started) * (1 / LARGE_COMPARE_SHARE - 1)


async def judge(
    comparators: Sequence[Comparator],
    live: Observation,
    agent: Observation,
    lane: Lane | None = None,
) -> Comparison:
    """Compare two answers; failures and oversize bodies are verdicts, not raises."""
    if live.error is not None:
        return Comparison.skipped(f"legacy failed: {live.error}")
    if agent.error is not None:
        return Comparison.error(f"agent failed: {agent.error}")
    if agent.status >= 500 > live.status:  # the agent failed; that is not disagreement
        return Comparison.error(f"agent answered {agent.status}")
    if live.body is None:
        return Comparison.skipped("legacy body exceeds the capture limit")
    if agent.body is None:
        return Comparison.skipped("agent body exceeds the capture limit")
    live_plain = decoded(live)
    if isinstance(live_plain, str):
        return Comparison.skipped(live_plain)
    agent_plain = decoded(agent)
    if isinstance(agent_plain, str):
        return Comparison.skipped(agent_plain)
    legacy_sample, agent_sample = live_plain.sample(), agent_plain.sample()
    if len(legacy_sample.body) + len(agent_sample.body) <= INLINE_COMPARE_BYTES:
        return compare(comparators, legacy_sample, agent_sample)
    loop = asyncio.get_running_loop()
    if lane is None:
        return await loop.run_in_executor(None, compare, comparators, legacy_sample, agent_sample)
    started = loop.time()
    if not lane.free(started):
        return Comparison.skipped(BUSY)
    lane.busy = True
    try:
        return await loop.run_in_executor(
            lane.executor, compare, comparators, legacy_sample, agent_sample
        )
    finally:
        lane.ran(started, loop.time())


class Evidence:
    def __init__(
        self, metrics: Metrics, logging: LoggingSettings, redactor: Redactor | None = None
    ) -> None:
        self._metrics = metrics
        self._redactor = redactor or Redactor()
        self._logging = logging
        self._lane = Lane()

    def close(self) -> None:
        self._lane.executor.shutdown(wait=False, cancel_futures=True)

    async def record(
        self,
        exchange: Exchange,
        comparators: Sequence[Comparator],
        live: Observation,
        agent: Observation,
        window: EvidenceWindow | None,
    ) -> Comparison:
        result = await judge(comparators, live, agent, self._lane)
        return self._recorded(exchange, live, agent, result, window)

    def skip(self, exchange: Exchange, reason: str) -> Comparison:
        """A comparison that cannot be made, known before the agent is called."""
        none = Observation(AGENT)
        return self._recorded(exchange, none, none, Comparison.skipped(reason), None)

    def _recorded(
        self,
        exchange: Exchange,
        live: Observation,
        agent: Observation,
        result: Comparison,
        window: EvidenceWindow | None,
    ) -> Comparison:
        self._metrics.comparison(exchange.route, result)
        if window is not None and result.verdict in (Verdict.MATCH, Verdict.MISMATCH):
            window.comparison(result.verdict is Verdict.MATCH, time.monotonic())
        if result.verdict is Verdict.MISMATCH:
            self._log_mismatch(exchange, live, agent, result)
        elif result.verdict in (Verdict.ERROR, Verdict.SKIPPED):
            log.info(
                f"comparison_{result.verdict.value}",
                route=exchange.route,
                request_id=exchange.request_id,
                trace_id=trace_id(exchange.traceparent),
                reason=result.reason,
            )
        return result

    def _log_mismatch(
        self, exchange: Exchange, live: Observation, agent: Observation, result: Comparison
    ) -> None:
        cap, chars = self._logging.max_differences, self._logging.max_value_chars
        redactor = self._redactor
        # Redacted here only so truncation cannot split a secret; the log's own
        # redactor masks whole differences about sensitive fields, as for any event.
        differences = [
            {
                "path": d.path,
                "kind": d.kind.value,
                "legacy": bounded(d.legacy, chars, redactor),
                "agent": bounded(d.agent, chars, redactor),
            }
            for d in result.differences[:cap]
        ]
        log.info(
            "mismatch",
            route=exchange.route,
            request_id=exchange.request_id,
            trace_id=trace_id(exchange.traceparent),
            served_by=exchange.served_by,
            method=exchange.method,
            path=bounded(exchange.raw_path, chars, redactor),
            legacy_ms=round(live.latency * 1000, 2),
            agent_ms=round(agent.latency * 1000, 2),
            legacy_status=live.status,
            agent_status=agent.status,
            score=round(result.score, 4),
            differences=differences,
            differences_omitted=max(0, len(result.differences) - cap),
        )
