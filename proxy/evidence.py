"""Where a legacy/agent pair of answers becomes evidence: the comparison, its
metrics, the mismatch log, and the route's rolling window for the gates.

Shared by the shadow path (legacy served, agent mirrored) and the agent path
(agent served, legacy called alongside), so both feed the rollout alike.
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from functools import partial

import structlog
from multidict import CIMultiDict

from comparators import (
    Comparison,
    Verdict,
)
from proxy.golden import Case
from proxy.judgement import Lane, judge
from proxy.logs import bounded
from proxy.metrics import Metrics
from proxy.noise import NoiseLearner
from proxy.recorder import Recorder
from proxy.redaction import Redactor
from proxy.routes import CompiledRoute
from proxy.settings import LoggingSettings
from proxy.tracecontext import TraceContext
from proxy.tracing import Tracing
from proxy.types import AGENT, Observation
from proxy.window import EvidenceWindow

log = structlog.get_logger("proxy.evidence")


@dataclass(frozen=True, slots=True)
class Exchange:
    """Which request a pair of answers belongs to, for logs and recorded cases."""

    route: str
    request_id: str
    trace_id: str | None
    method: str
    raw_path: str
    served_by: str  # who answered the client: legacy or agent
    request_headers: Mapping[str, str] = field(default_factory=dict)
    request_body: bytes | None = None  # None: not captured
    trace: TraceContext | None = None  # the comparison's span joins the request's trace


class Evidence:
    def __init__(
        self,
        metrics: Metrics,
        logging: LoggingSettings,
        redactor: Redactor | None = None,
        recorder: Recorder | None = None,
        learners: dict[str, NoiseLearner] | None = None,
        tracing: Tracing | None = None,
    ) -> None:
        """``learners``: each route's noise learner, shared with the admin API."""
        self._metrics = metrics
        self._redactor = redactor or Redactor()
        self._logging = logging
        self._lane = Lane()
        self._recorder = recorder
        self._learners = learners if learners is not None else {}
        self._tracing = tracing or Tracing()

    @property
    def recording(self) -> bool:
        return self._recorder is not None

    def close(self) -> None:
        self._lane.executor.shutdown(wait=False, cancel_futures=True)

    def learner(self, route: CompiledRoute) -> NoiseLearner | None:
        """The route's noise learner; what it learned survives a reload that
        leaves the route's noise settings as they were."""
        settings = route.noise
        old = self._learners.get(route.name)
        if old is not None and old.settings == settings:
            return old
        # A new learner starts afresh: what the old one learned leaves the metrics.
        gone = old.noisy() if old is not None else frozenset()
        if not settings.enabled and not settings.fields:
            self._learners.pop(route.name, None)
            if old is not None:
                self._metrics.agent.noise(route.name, (), (), gone)
            return None
        learner = self._learners[route.name] = NoiseLearner(settings)
        self._metrics.agent.noise(route.name, learner.noisy(), (), gone)
        return learner

    async def record(
        self,
        exchange: Exchange,
        route: CompiledRoute,
        live: Observation,
        agent: Observation,
        window: EvidenceWindow | None,
    ) -> Comparison:
        """Compare, discount noise, count, log, feed the window, maybe record: in
        a ``compare`` span of the request's trace when spans are exported."""
        if exchange.trace is None or not self._tracing.enabled:
            return await self._record(exchange, route, live, agent, window)
        with self._tracing.span("compare", exchange.trace, route=route.name) as span:
            result = await self._record(exchange, route, live, agent, window)
            reason = self._redactor.text(result.reason[:500]) if result.reason else None
            span.set(verdict=result.verdict.value, score=result.score, reason=reason)
        return result

    async def _record(
        self,
        exchange: Exchange,
        route: CompiledRoute,
        live: Observation,
        agent: Observation,
        window: EvidenceWindow | None,
    ) -> Comparison:
        if live.usage is None and route.reads_tool_calls:
            live = live.with_usage(route.agent)  # legacy's actions, read like the agent's
        raw = await judge(route.comparators, live, agent, self._lane)
        learner = self.learner(route)
        result = raw if learner is None else learner.adjust(raw)
        if learner is not None and raw.verdict in (Verdict.MATCH, Verdict.MISMATCH):
            self._metrics.agent.raw(route.name, raw.verdict is Verdict.MATCH)
        if result.verdict is not raw.verdict:
            self._metrics.agent.discounted(route.name)
        gated = raw if learner is not None and route.noise.gate == "raw" else result
        self._recorded(exchange, live, agent, gated, window)
        recorder = self._recorder
        if recorder is not None and recorder.wants(result.verdict):
            usage = agent.usage
            # Copied now: the case is built on the writer thread, and the live
            # path's header multidict may still change (a fallback's traceparent).
            headers = CIMultiDict(exchange.request_headers)
            recorder.offer(
                partial(
                    Case.of,
                    exchange,
                    headers,
                    exchange.request_body,
                    live,
                    agent,
                    result,
                    now=time.time(),
                    raw_verdict=raw.verdict if learner is not None else None,
                    usage=usage.as_json() if usage is not None else None,
                    tool_calls=usage.tool_calls if usage is not None else (),
                    trace_id=exchange.trace_id,
                    max_body_size=recorder.settings.max_body_size,
                )
            )
        return result

    async def noise_pair(
        self, route: CompiledRoute, backend: str, first: Observation, second: Observation
    ) -> None:
        """Two answers of one backend to one request: what differs is noise.

        Only answers with one status make a pair: a second call refused (429,
        401) or failed differs in every field, and counting it would teach the
        whole real answer as noise."""
        learner = self.learner(route)
        if learner is None or first.error is not None or second.error is not None:
            return
        if first.status != second.status:
            return
        pair = await judge(route.comparators, first, second, self._lane)
        if pair.verdict not in (Verdict.MATCH, Verdict.MISMATCH):
            return
        self._metrics.agent.noise_pair(route.name, backend)
        learned, unlearned = learner.record(pair.differences)
        for path in learned:
            log.info("noise_learned", route=route.name, field=path, backend=backend)
        for path in unlearned:
            log.info("noise_unlearned", route=route.name, field=path, backend=backend)
        if learned or unlearned:
            self._metrics.agent.noise(route.name, learner.noisy(), learned, unlearned)

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
                trace_id=exchange.trace_id,
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
            trace_id=exchange.trace_id,
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
