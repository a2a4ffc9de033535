"""The shadow path: mirror a request to the agent, compare, record.

Nothing here is on the client's clock. :meth:`Shadow.admit` runs inside the
live handler and only decides (synchronously, no I/O); the agent call and the
comparison run in a background task. Every bound — sampling, in-flight,
rate, capture size, timeout — is counted when hit, and every agent-side
failure becomes data (an :class:`Observation` with an error), never an
exception in the live path.
"""

from __future__ import annotations

import asyncio
import math
import random
import time
from collections.abc import Mapping, Sequence
from dataclasses import replace

import structlog
from asyncio_throttle.throttler import Throttler
from multidict import CIMultiDict

from proxy.answer import Accounting, fetch
from proxy.capture import CaptureBudget
from proxy.evidence import Evidence, Exchange
from proxy.headers import REQUEST_ID, to_shadow
from proxy.job import ShadowJob
from proxy.metrics import Metrics
from proxy.routes import CompiledRoute
from proxy.routing import RouteRuntime
from proxy.settings import ShadowSettings
from proxy.shadowbudget import ShadowBudgets
from proxy.tasks import TaskSet
from proxy.tracecontext import TraceContext
from proxy.tracing import Tracing
from proxy.types import AGENT, LEGACY, Mode, Observation, ShadowOutcome
from proxy.upstream import Upstream

log = structlog.get_logger("proxy.shadow")


class RateGate:
    """A non-blocking face on asyncio-throttle: admit now or drop, never wait.

    ``Throttler.acquire`` sleeps until a slot frees; a shadow request that
    waits is worse than one dropped, so this peeks at the throttler's log of
    recent acquisitions (the same check ``acquire`` makes) and records one
    only when it is admitted.
    """

    def __init__(self, per_second: float) -> None:
        self.per_second = per_second
        limit = max(1, math.ceil(per_second))
        self._throttler = Throttler(rate_limit=limit, period=limit / per_second)

    def admit(self) -> bool:
        throttler = self._throttler
        throttler.flush()  # type: ignore[no-untyped-call]
        if len(throttler._task_logs) >= throttler.rate_limit:
            return False
        throttler._task_logs.append(time.monotonic())
        return True


class Shadow:
    def __init__(
        self,
        agent: Upstream,
        settings: ShadowSettings,
        evidence: Evidence,
        metrics: Metrics,
        tasks: TaskSet,
        routes: Sequence[CompiledRoute],
        tracing: Tracing | None = None,
        legacy: Upstream | None = None,
    ) -> None:
        self.agent = agent
        self._tracing = tracing or Tracing()
        self._legacy = legacy  # asked twice for noise learning only
        self.settings = settings
        self.capture_limit = settings.capture_limit
        self._evidence = evidence
        self._metrics = metrics
        self._tasks = tasks
        self._timeout = agent.timeout(settings.timeout)
        self._gates = {r.name: RateGate(r.rate_limit) for r in routes if r.rate_limit}
        self._tokens = ShadowBudgets(metrics.agent)
        self._tokens.configure(routes)
        self.in_flight = 0
        self.budget = CaptureBudget(settings.capture_memory)

    def reconfigure(self, settings: ShadowSettings, routes: Sequence[CompiledRoute]) -> None:
        """A reloaded config: new bounds apply to new requests; rate gates of
        routes whose limit did not change keep their history."""
        self.settings = settings
        self.capture_limit = settings.capture_limit
        self.budget.limit = settings.capture_memory
        self._timeout = self.agent.timeout(settings.timeout)
        gates = {}
        for r in routes:
            if r.rate_limit:
                old = self._gates.get(r.name)
                gates[r.name] = (
                    old if old and old.per_second == r.rate_limit else RateGate(r.rate_limit)
                )
        self._gates = gates
        self._tokens.configure(routes)

    def _keeps(self, route: CompiledRoute) -> bool:
        """Does anything need legacy's own request headers after the live call?"""
        noise = route.noise
        return self._evidence.recording or (noise.enabled and noise.backend == LEGACY)

    def admit(
        self,
        route: CompiledRoute,
        method: str,
        raw_path: str,
        upstream_headers: CIMultiDict[str],
        trace: TraceContext,
        query: Mapping[str, str],
        content_length: int | None,
        client_ip: str | None = None,
        runtime: RouteRuntime | None = None,
    ) -> ShadowJob | None:
        """Decide whether this request is mirrored; count the reason when not."""
        name = route.name
        outcome = None
        sampler = route.sampler
        if not route.may_mirror(method):
            outcome = ShadowOutcome.SKIPPED_UNSAFE
        elif sampler is not None and not sampler.sampled(upstream_headers, query, client_ip):
            outcome = ShadowOutcome.SKIPPED_SAMPLE
        elif runtime is not None and runtime.agent_open(time.monotonic()):
            outcome = ShadowOutcome.SKIPPED_BREAKER  # no agent calls at all while open
        elif content_length is not None and content_length > self.capture_limit:
            outcome = ShadowOutcome.SKIPPED_SIZE
        elif self.in_flight >= self.settings.max_in_flight:
            outcome = ShadowOutcome.DROPPED_INFLIGHT
        elif (gate := self._gates.get(name)) is not None and not gate.admit():
            outcome = ShadowOutcome.DROPPED_RATE
        elif (reserved := self._tokens.reserve(name)) is None:
            outcome = ShadowOutcome.DROPPED_BUDGET
        if outcome is not None:
            self._metrics.shadow(name, outcome)
            return None

        request_id = upstream_headers.get(REQUEST_ID)
        if request_id is None:  # both backends see the same id, so their logs join
            request_id = upstream_headers[REQUEST_ID] = f"{random.getrandbits(64):016x}"
        job = ShadowJob(
            route=route,
            method=method,
            raw_path=raw_path,
            headers=to_shadow(
                upstream_headers, add=self.settings.add_headers, drop=self.settings.drop_headers
            ),
            legacy_headers=CIMultiDict(upstream_headers) if self._keeps(route) else None,
            request_id=request_id,
            trace=trace,
            budget=self.budget,
            launch=self._launch,
            runtime=runtime,
            reserved=reserved,
        )
        self.in_flight += 1  # the slot is held from here until its task ends
        self._metrics.shadow_in_flight.set(self.in_flight)
        return job

    def _launch(self, job: ShadowJob) -> None:
        """Start an admitted job (``ShadowJob.start``) once its live exchange has
        ended, whatever the end: the agent is called, and the comparison made,
        never while the client still waits (and with nothing left to wait for)."""
        task = self._tasks.spawn(self._run(job), name=f"shadow:{job.route.name}")
        # A callback, not a finally: a task cancelled before it ever ran
        # (at shutdown) must still give its slot back and be counted.
        task.add_done_callback(lambda t: self._finished(job, t))

    def _finished(self, job: ShadowJob, task: asyncio.Task[None]) -> None:
        self.in_flight -= 1
        self._metrics.shadow_in_flight.set(self.in_flight)
        job.ended = True
        job.budget.give(job.held)
        job.held = 0
        self._tokens.refund(job)
        if task.cancelled():
            self._metrics.shadow(job.route.name, ShadowOutcome.CANCELLED)

    async def _run(self, job: ShadowJob) -> None:
        name = job.route.name
        # Started when the live exchange ended (both are set), or early when the
        # outcome is known: a body too large to keep, an answer too large to compare.
        body, live = job.body, job.live
        if isinstance(body, ShadowOutcome) or body is None:
            self._metrics.shadow(name, body or ShadowOutcome.CANCELLED)
            return
        if live is None:  # not reached: an answer is observed before an early start
            live = Observation(LEGACY, error="no live answer")
        exchange = Exchange(
            name, job.request_id, job.trace.trace_id, job.method, job.raw_path, LEGACY,
            job.legacy_headers or {}, body, job.trace,
        )  # fmt: skip
        if _over_capture(live):  # nothing to compare the agent's answer with: don't pay for it
            outcome = job.too_large()
            self._metrics.shadow(name, outcome)
            self._evidence.skip(exchange, _NOT_KEPT[outcome])
            return
        # A failed legacy call still sends the agent its copy: nothing gets
        # compared, but the agent's result feeds the breaker and the gates.
        if job.runtime is not None and not job.runtime.agent_allowed(time.monotonic()):
            # Checked again at dispatch: half-open, a shadow may be one of the
            # probes (taking its slot, and always reporting back), or not go.
            self._metrics.shadow(name, ShadowOutcome.SKIPPED_BREAKER)
            return
        self._metrics.shadow(name, ShadowOutcome.SENT)
        agent = await self._call_agent(job, body)
        if job.route.agent_samples > 1 and agent.error is None:  # a quorum votes on them
            more = [
                self._call_agent(job, body, extra=True) for _ in range(job.route.agent_samples - 1)
            ]
            agent = replace(agent, alternatives=tuple(await asyncio.gather(*more)))
        runtime = job.runtime
        if runtime is not None and live.error is None:
            runtime.window.legacy_call(live.latency, time.monotonic())
        window = runtime.window if runtime is not None else None
        await self._evidence.record(exchange, job.route, live, agent, window)
        if _over_capture(live) or _over_capture(agent):
            self._metrics.shadow(name, job.too_large())
        elif job.route.noise.enabled and random.random() * 100 < job.route.noise.percent:
            await self._noise(job, body, live, agent)

    async def _noise(
        self, job: ShadowJob, body: bytes, live: Observation, agent: Observation
    ) -> None:
        """A second answer from the same backend, off the client's clock: what
        differs between the two is noise, not disagreement."""
        route = job.route
        backend = route.noise.backend
        if backend == LEGACY:
            if self._legacy is None or live.error is not None:
                return
            second = await self._call(self._legacy, job, body, "noise", Mode.SHADOW)
            await self._evidence.noise_pair(route, LEGACY, live, second)
            return
        if agent.error is not None:
            return
        if agent.alternatives:  # a quorum's samples: no need to ask again
            second = agent.alternatives[0]
        else:
            second = await self._call_agent(job, body, extra=True)
        await self._evidence.noise_pair(route, AGENT, agent, second)

    async def _call(
        self, upstream: Upstream, job: ShadowJob, body: bytes, span_name: str, mode: Mode
    ) -> Observation:
        """One call made for the comparison alone (a second legacy answer), bounded
        like the rest of the shadow work; failures are data."""
        span = self._tracing.span(span_name, job.trace, route=job.route.name, backend=upstream.name)
        headers = CIMultiDict(job.legacy_headers or ())  # legacy's request, not the agent's
        headers.update(span.headers())
        account = Accounting(self._metrics, job.route, mode, agent=False)
        answer = await fetch(
            upstream, job.method, job.raw_path, headers, body, job.capture(), self._timeout, span,
            account,
        )  # fmt: skip
        return answer.observation

    async def _call_agent(self, job: ShadowJob, body: bytes, extra: bool = False) -> Observation:
        """The agent's answer, read for its usage and charged to the route's
        budget. ``extra``: one more sample for a quorum or the noise learner;
        it costs tokens like any other but is not another shadow request."""
        name = job.route.name
        span = self._tracing.span("shadow", job.trace, route=name, backend=AGENT, mode="shadow")
        headers = CIMultiDict(job.headers) if extra else job.headers  # extras run together
        headers.update(span.headers())
        account = Accounting(self._metrics, job.route, Mode.SHADOW, agent=True)
        try:
            answer = await fetch(
                self.agent, job.method, job.raw_path, headers, body, job.capture(), self._timeout,
                span, account,
            )  # fmt: skip
        except asyncio.CancelledError:
            if job.runtime is not None and not extra:  # a probe must report back
                job.runtime.agent_cancelled(time.monotonic())
            raise
        observation, failure = answer.observation, answer.failure
        self._tokens.charge(job, observation.usage)
        if failure is not None:  # every agent-side failure is data, never an exception
            log.info("shadow_failed", route=name, request_id=job.request_id, detail=failure.detail)
        if not extra:
            if failure is not None:
                timed_out = failure.kind == "timeout"
                outcome = ShadowOutcome.TIMEOUT if timed_out else ShadowOutcome.ERROR
                self._metrics.shadow(name, outcome)
                self._agent_result(job, False, None)
            else:
                self._metrics.shadow(name, ShadowOutcome.COMPLETED)
                ok = observation.status < 500
                self._agent_result(job, ok, observation.latency if ok else None)
        return observation

    def _agent_result(self, job: ShadowJob, ok: bool, latency: float | None) -> None:
        if job.runtime is not None:  # the breaker and the gates count it
            job.runtime.agent_result(ok, latency, time.monotonic(), Mode.SHADOW, self._metrics)


_NOT_KEPT = {
    ShadowOutcome.SKIPPED_SIZE: "legacy body exceeds the capture limit",
    ShadowOutcome.DROPPED_MEMORY: "legacy body not kept: shadow.max_capture_memory is full",
}


def _over_capture(observation: Observation) -> bool:
    return observation.error is None and observation.body is None
