"""The messages passed between stages of the proxy: small, frozen, plain data."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from enum import StrEnum

from comparators import Sample
from proxy.casebody import inflate
from proxy.usage import AgentSettings, Usage, read_usage

LEGACY = "legacy"
AGENT = "agent"
PROXY = "proxy"  # answers the proxy gives itself (400, 413)


class Mode(StrEnum):
    LIVE = "live"
    SHADOW = "shadow"


class ShadowOutcome(StrEnum):
    """What happened to one candidate shadow request (a metric label)."""

    SENT = "sent"
    COMPLETED = "completed"
    ERROR = "error"
    TIMEOUT = "timeout"
    DROPPED_INFLIGHT = "dropped_inflight"
    DROPPED_RATE = "dropped_rate"
    DROPPED_MEMORY = "dropped_memory"  # shadow.max_capture_memory: bodies held at the bound
    DROPPED_BUDGET = "dropped_budget"  # the route's shadow token budget is spent for now
    SKIPPED_UNSAFE = "skipped_unsafe"
    SKIPPED_SIZE = "skipped_size"
    SKIPPED_SAMPLE = "skipped_sample"
    SKIPPED_BREAKER = "skipped_breaker"  # the agent's circuit is open: no calls, no cost
    CANCELLED = "cancelled"


@dataclass(frozen=True, slots=True)
class Failure:
    """An upstream exchange that produced no usable response."""

    kind: str  # connect | timeout | disconnect | invalid_response
    status: int  # what the client gets: 502 or 504
    reason: str  # safe to show the client
    detail: str = ""  # for logs only


@dataclass(frozen=True, slots=True)
class Observation:
    """One backend's answer to one request, as the comparison sees it.

    ``body`` is ``None`` when it was larger than the capture limit;
    ``error`` is set when there was no answer at all; ``usage`` is what an
    agent's answer said of its tokens and tool calls (None: not a known format).
    """

    backend: str
    status: int = 0
    headers: Mapping[str, str] = field(default_factory=dict)
    body: bytes | None = b""
    latency: float = 0.0
    error: str | None = None
    usage: Usage | None = None
    alternatives: tuple[Observation, ...] = ()  # more answers to the same request (quorum)

    def sample(self) -> Sample:
        usage = self.usage
        return Sample(
            self.status,
            self.headers,
            self.body or b"",
            usage.tool_calls if usage is not None else (),
            tuple(a.sample() for a in self.alternatives if a.error is None),
        )

    def with_usage(self, settings: AgentSettings) -> Observation:
        """This answer with the usage and tool calls its body reports (read in the
        format ``settings`` name, gzip inflated); unchanged when not in a known one."""
        if self.body is None or self.error is not None:
            return self
        plain = decoded(self)
        if isinstance(plain, str) or plain.body is None:
            return self
        usage = read_usage(settings, self.headers.get("content-type"), plain.body)
        return self if usage is None else replace(self, usage=usage)


# A compressed body is inflated for comparison up to this size (bombs stop here).
MAX_INFLATED_BYTES = 16 * 1024 * 1024


def decoded(observation: Observation) -> Observation | str:
    """The body as comparators and usage readers need it: gzip and deflate are
    inflated (bounded), the extra samples too; another encoding is a reason to
    skip, not a false mismatch."""
    alternatives = observation.alternatives
    if alternatives:
        plain = [a for a in map(decoded, alternatives) if not isinstance(a, str)]
        observation = replace(observation, alternatives=tuple(plain))
    encoding = observation.headers.get("content-encoding", "identity").strip().lower()
    if encoding in ("", "identity") or not observation.body:
        return observation
    body = inflate(observation.body, encoding, MAX_INFLATED_BYTES)
    if isinstance(body, str):
        return f"{observation.backend} body {body}"
    return replace(observation, body=body)
