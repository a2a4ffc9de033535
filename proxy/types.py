"""The messages passed between stages of the proxy: small, frozen, plain data."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from enum import StrEnum

from comparators import Sample

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
    ``error`` is set when there was no answer at all.
    """

    backend: str
    status: int = 0
    headers: Mapping[str, str] = field(default_factory=dict)
    body: bytes | None = b""
    latency: float = 0.0
    error: str | None = None

    def sample(self) -> Sample:
        return Sample(self.status, self.headers, self.body or b"")
