"""Replay recorded cases against an agent and score its answers.

The nightly regression run: every recorded request goes to the agent again
(marked as a shadow request, so the agent's tools run dry), and the answer is
scored with the route's comparators against the expected one: the case's
human-approved ``expected`` answer, else the recorded agent answer when a
human said the agent was right, else the recorded legacy answer. Whatever
goes wrong with one call (refused, timed out, a 5xx) is that case's error
verdict, never an exception for the run.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

import aiohttp
from multidict import CIMultiDict
from yarl import URL

from comparators import AnyComparator, Comparison, Sample, build
from comparators.comparison import acompare
from comparators.types import ToolCall
from proxy.golden import Case, LabelVerdict, body_bytes
from proxy.headers import HOP_BY_HOP, SHADOW_MARKER
from proxy.noise import NoiseLearner
from proxy.redaction import MASK
from proxy.report import CaseResult
from proxy.settings import Route, Settings
from proxy.usage import AgentSettings, Usage, read_usage

MAX_ANSWER_BYTES = 16 * 1024 * 1024
# Not sent again: they describe the recorded connection or body (the body is
# re-serialized, aiohttp sets the length and negotiates its own encodings), or
# the recorded trace: a replay is not part of the production request's trace
# (the case keeps its trace id to find that one).
_NOT_REPLAYED = HOP_BY_HOP | {"host", "content-length", "content-encoding", "accept-encoding",
                              "expect", "traceparent", "tracestate",
                              SHADOW_MARKER.lower()}  # fmt: skip
DEFAULT_COMPARATORS: tuple[AnyComparator, ...] = (build("status", {}), build("json", {}))


@dataclass(frozen=True, slots=True)
class Scoring:
    """How one route's answers are judged and read."""

    comparators: tuple[AnyComparator, ...] = DEFAULT_COMPARATORS
    usage: Callable[[str | None, bytes], Usage | None] | None = None  # content type, body
    noise: NoiseLearner | None = None  # frozen noise fields from the route's config

    @property
    def samples(self) -> int:
        """Agent answers per case: the most any comparator asks for."""
        wanted = [getattr(c, "agent_samples", 1) for c in self.comparators]
        return max([1, *(n for n in wanted if isinstance(n, int))])


def _usage_reader(route: Route | None) -> Callable[[str | None, bytes], Usage | None]:
    """How the route's agent answers are read (its ``agent:`` section, else auto-detect)."""
    settings = route.agent if route is not None else AgentSettings()

    def read(content_type: str | None, body: bytes) -> Usage | None:
        try:
            return read_usage(settings, content_type, body)
        except Exception:  # an unreadable answer has no usage; it is not a failed case
            return None

    return read


def _noise(route: Route) -> NoiseLearner | None:
    """The route's frozen noise fields, discounted as the live comparison does;
    nothing is learned here (one replay is not two calls of one backend)."""
    noise = route.noise
    if not noise.fields or noise.gate == "raw":
        return None
    return NoiseLearner(noise)


def scoring_for(settings: Settings | None) -> Callable[[str], Scoring]:
    """Route name -> its comparators and usage reader, built once per route.

    A route the config does not have (or no config at all) gets the default
    comparators, status and json, as a route without ``compare:`` does.
    """
    routes = {r.name: r for r in settings.routes} if settings is not None else {}
    built: dict[str, Scoring] = {}

    def scoring(name: str) -> Scoring:
        if name not in built:
            route = routes.get(name)
            if route is None:
                built[name] = Scoring(DEFAULT_COMPARATORS, _usage_reader(None))
            else:
                chosen = tuple(s.build() for s in route.compare)
                built[name] = Scoring(chosen, _usage_reader(route), _noise(route))
        return built[name]

    return scoring


@dataclass(frozen=True, slots=True)
class ReplayOptions:
    agent: str  # base URL; a recorded path is appended to it
    concurrency: int = 8  # cases in flight
    request_timeout: float = 30.0  # seconds for one agent call, answer read included


@dataclass(frozen=True, slots=True)
class Answer:
    """One replayed answer; ``status`` 0 and ``error`` set when none came."""

    status: int = 0
    headers: Mapping[str, str] = field(default_factory=dict)
    body: bytes = b""
    latency_ms: float | None = None
    error: str | None = None


def replay_headers(recorded: Mapping[str, str]) -> CIMultiDict[str]:
    """The recorded headers that go to the agent, plus the shadow marker.

    Hop-by-hop headers (and those the recorded ``Connection`` named) stay
    behind, and so do redacted ones: ``Authorization: [REDACTED]`` would only
    earn a 401.
    """
    named = {t.strip().lower() for t in recorded.get("connection", "").split(",") if t.strip()}
    drop = _NOT_REPLAYED | named
    out = CIMultiDict((k, v) for k, v in recorded.items() if k.lower() not in drop and v != MASK)
    out[SHADOW_MARKER] = "1"
    return out


def _join(agent: str, path: str) -> URL:
    """The agent's base URL and the recorded path and query, sent as recorded."""
    return URL(agent.rstrip("/") + (path if path.startswith("/") else "/" + path), encoded=True)


def _failure(exc: BaseException, timeout: float) -> str:
    if isinstance(exc, TimeoutError):
        return f"timeout after {timeout:g}s"
    if isinstance(exc, aiohttp.ClientConnectorError):
        return f"cannot connect: {exc.os_error.strerror or exc.os_error}"
    if isinstance(exc, aiohttp.ClientPayloadError | aiohttp.ServerDisconnectedError):
        return "the agent closed the connection mid-answer"
    return f"{type(exc).__name__}: {exc}"[:300]


async def call(http: aiohttp.ClientSession, options: ReplayOptions, case: Case) -> Answer:
    """One request to the agent; every failure is an :class:`Answer` with an error."""
    started = time.monotonic()
    request = case.request
    try:
        async with asyncio.timeout(options.request_timeout):
            async with http.request(
                request.method,
                _join(options.agent, request.path),
                headers=replay_headers(request.headers),
                data=body_bytes(request.body),
                allow_redirects=False,
            ) as response:
                body = await response.content.read(MAX_ANSWER_BYTES + 1)
                if len(body) > MAX_ANSWER_BYTES:
                    return Answer(error=f"answer larger than {MAX_ANSWER_BYTES} bytes")
                headers = {k.lower(): v for k, v in response.headers.items()}
                return Answer(response.status, headers, body, (time.monotonic() - started) * 1e3)
    except (TimeoutError, aiohttp.ClientError, OSError, ValueError) as exc:
        return Answer(error=_failure(exc, options.request_timeout))


def expected_of(case: Case) -> tuple[str, Sample] | str:
    """Which answer the replay must give, and that answer; or why it cannot be scored."""
    label = case.label.verdict if case.label is not None else None
    if case.expected is not None:
        source, answer = "expected", case.expected
    elif label is LabelVerdict.AGENT:
        source, answer = "agent", case.agent
    else:
        source, answer = "legacy", case.legacy
    if answer.error is not None:
        return f"the recorded {source} answer is an error: {answer.error}"
    sample = answer.sample()
    if sample is None:
        return f"the recorded {source} answer's body was omitted, so there is nothing to compare"
    if source == "agent":
        sample = replace(sample, tool_calls=case.tool_calls)
    return source, sample


def _tokens(usage: Any) -> int | None:
    """Input plus output tokens, from a ``Usage`` or its recorded JSON; None when unknown."""
    if usage is None:
        return None
    if isinstance(usage, Mapping):
        counts = [usage.get("input_tokens"), usage.get("output_tokens")]
    else:
        counts = [getattr(usage, "input_tokens", None), getattr(usage, "output_tokens", None)]
    known = [n for n in counts if isinstance(n, int) and not isinstance(n, bool)]
    return sum(known) if known else None


def _sample(answer: Answer, scoring: Scoring) -> tuple[Sample, int | None]:
    usage = None
    if scoring.usage is not None:
        usage = scoring.usage(answer.headers.get("content-type"), answer.body)
    tools: tuple[ToolCall, ...] = tuple(getattr(usage, "tool_calls", ()) or ())
    return Sample(answer.status, answer.headers, answer.body, tools), _tokens(usage)


def _before(case: Case) -> dict[str, Any]:
    return {
        "id": case.id,
        "route": case.route,
        "before": case.comparison.verdict,
        "before_latency_ms": case.agent.latency_ms if case.agent.error is None else None,
        "before_tokens": _tokens(case.usage),
    }


async def score(
    http: aiohttp.ClientSession, options: ReplayOptions, case: Case, scoring: Scoring
) -> CaseResult:
    """Replay one case (as many times as the comparators want samples) and judge it."""
    base = _before(case)
    if case.label is not None and case.label.verdict is LabelVerdict.EXCLUDE:
        skipped = Comparison.skipped("excluded by a human label")
        return CaseResult(**base, expected_from="", after=skipped, excluded=True)
    target = expected_of(case)
    if isinstance(target, str):
        return CaseResult(**base, expected_from="", after=Comparison.skipped(target))
    source, expected = target
    if body_bytes(case.request.body) is None:
        reason = "the request body was not recorded, so it cannot be sent again"
        return CaseResult(**base, expected_from=source, after=Comparison.skipped(reason))
    answers = [await call(http, options, case) for _ in range(scoring.samples)]
    first = answers[0]
    error = first.error
    if error is None and first.status >= 500 > expected.status:
        error = f"agent answered {first.status}"
    if error is not None:
        return CaseResult(**base, expected_from=source, after=Comparison.error(error),
                          after_latency_ms=first.latency_ms, error=error)  # fmt: skip
    samples = [_sample(a, scoring) for a in answers if a.error is None]
    extra = tuple(s for s, _ in samples[1:])
    agent_sample = replace(samples[0][0], alternatives=extra)
    comparison = await acompare(scoring.comparators, expected, agent_sample)
    if scoring.noise is not None:
        comparison = scoring.noise.adjust(comparison)
    return CaseResult(
        **base,
        expected_from=source,
        after=comparison,
        after_latency_ms=first.latency_ms,
        after_tokens=samples[0][1],  # like the recorded usage: the first answer's
    )


async def replay(
    cases: Sequence[Case],
    options: ReplayOptions,
    scoring: Callable[[str], Scoring],
    progress: Callable[[CaseResult], object] | None = None,
) -> list[CaseResult]:
    """Every case, ``options.concurrency`` at a time; results in the cases' order."""
    concurrency = max(1, options.concurrency)
    results: list[CaseResult | None] = [None] * len(cases)
    pending: Iterable[int] = iter(range(len(cases)))
    connector = aiohttp.TCPConnector(limit=concurrency, force_close=False)
    async with aiohttp.ClientSession(connector=connector) as http:

        async def worker() -> None:
            for index in pending:
                case = cases[index]
                result = await score(http, options, case, scoring(case.route))
                results[index] = result
                if progress is not None:
                    progress(result)

        async with asyncio.TaskGroup() as group:
            for _ in range(min(concurrency, len(cases))):
                group.create_task(worker())
    return [r for r in results if r is not None]
