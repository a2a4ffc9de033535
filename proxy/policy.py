"""Per-route config for serving live traffic from the agent: the rollout
(how the share moves), fallback (when legacy answers instead), retries and
the circuit breaker. Validated here; turned into the pure cores' policies
(``proxy.rollout``, ``proxy.fallback``, ``proxy.retry``, ``proxy.breaker``)
by the ``to_*`` methods, once per load.
"""

from __future__ import annotations

from itertools import pairwise
from typing import Literal, Self

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from comparators.paths import compile_path
from proxy.breaker import BreakerPolicy
from proxy.fallback import FallbackPolicy
from proxy.retry import RetryPolicy
from proxy.rollout import Gates, RolloutPolicy
from proxy.units import ByteSize, Duration


class Model(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class GatesConfig(Model):
    min_samples: int = Field(100, ge=1, description="decided comparisons needed in the window")
    min_agreement: float = Field(
        0.95, ge=0, le=1, description="lower bound of the 95% Wilson interval of agreement"
    )
    max_error_rate: float = Field(0.05, ge=0, le=1, description="agent errors / agent calls")
    max_fallback_rate: float = Field(0.05, ge=0, le=1, description="fallbacks / agent-served")
    max_latency_ratio: float | None = Field(
        3.0, gt=0, description="agent p95 / legacy p95; null disables the gate"
    )


class RolloutConfig(Model):
    """How the agent's live share moves. Absent: the agent never serves live."""

    mode: Literal["auto", "manual"] = Field(
        "auto", description="auto: gates move the share; manual: only config and admin do"
    )
    percent: float = Field(0.0, ge=0, le=100, description="share at start (manual: the share)")
    steps: tuple[float, ...] = Field((1.0, 5.0, 10.0, 25.0, 50.0), min_length=1)
    approval: tuple[float, ...] = Field(
        (), description="step percents (100: primary) a human approves"
    )
    autonomous: bool = Field(False, description="allow agent-only serving (always approved)")
    interval: Duration = Field(30.0, description="how often the gates are evaluated")
    window: Duration = Field(  # bounded: one bucket per second (1e19 s crashed at startup)
        300.0, le=86_400, description="rolling window of evidence (at most a day)"
    )
    gates: GatesConfig = GatesConfig()
    max_consecutive_failures: int = Field(3, ge=1)
    max_cumulative_failures: int = Field(10, ge=1)
    on_failure: Literal["rollback", "hold"] = "rollback"

    def to_policy(self) -> RolloutPolicy:
        g = self.gates
        return RolloutPolicy(
            auto=self.mode == "auto",
            steps=self.steps,
            approval=frozenset(self.approval),
            autonomous=self.autonomous,
            gates=Gates(
                min_samples=g.min_samples,
                min_agreement=g.min_agreement,
                max_error_rate=g.max_error_rate,
                max_fallback_rate=g.max_fallback_rate,
                max_latency_ratio=g.max_latency_ratio,
            ),
            max_consecutive_failures=self.max_consecutive_failures,
            max_cumulative_failures=self.max_cumulative_failures,
            on_failure=self.on_failure,
        )

    @field_validator("steps")
    @classmethod
    def _increasing(cls, value: tuple[float, ...]) -> tuple[float, ...]:
        if any(not 0 < s < 100 for s in value):
            raise ValueError("each step must be between 0 and 100, exclusive")
        if any(b <= a for a, b in pairwise(value)):
            raise ValueError("steps must increase")
        return value

    @model_validator(mode="after")
    def _known_approvals(self) -> Self:
        unknown = sorted(set(self.approval) - {*self.steps, 100.0})
        if unknown:
            raise ValueError(f"approval lists {unknown}, which are neither steps nor 100")
        if self.interval <= 0 or self.window <= 0:
            raise ValueError("interval and window must be greater than zero")
        return self


class ConfidenceConfig(Model):
    path: str = Field(description="JSON path of a number in the agent's answer")
    min: float = Field(description="below this, legacy answers instead", allow_inf_nan=False)

    @field_validator("path")
    @classmethod
    def _path(cls, value: str) -> str:
        compile_path(value, concrete=True)
        return value


class FallbackConfig(Model):
    """When legacy answers in place of the agent."""

    enabled: bool = True
    mode: Literal["buffered", "streamed"] = Field(
        "buffered", description="buffered: check the whole answer first; streamed: commit early"
    )
    max_buffer: ByteSize = Field(1024 * 1024, description="largest agent answer checked (buffered)")
    on_error: bool = Field(True, description="connection error or timeout")
    on_5xx: bool = True
    statuses: tuple[int, ...] = Field((), description="more statuses that trigger fallback")
    expect_json: bool = False
    required_fields: tuple[str, ...] = Field((), description="JSON paths that must be present")
    confidence: ConfidenceConfig | None = None

    @field_validator("required_fields")
    @classmethod
    def _paths(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        for path in value:
            compile_path(path, concrete=True)
        return value

    def to_policy(self) -> FallbackPolicy:
        confidence = self.confidence
        return FallbackPolicy(
            on_error=self.on_error,
            on_5xx=self.on_5xx,
            statuses=frozenset(self.statuses),
            expect_json=self.expect_json,
            required_fields=self.required_fields,
            confidence_path=confidence.path if confidence else None,
            min_confidence=confidence.min if confidence else None,
        )

    @field_validator("statuses")
    @classmethod
    def _statuses(cls, value: tuple[int, ...]) -> tuple[int, ...]:
        if any(not 100 <= s <= 599 for s in value):
            raise ValueError("statuses must be HTTP status codes (100-599)")
        return value


class RetryConfig(Model):
    attempts: int = Field(2, ge=1, le=10, description="total agent attempts, the first included")
    backoff: Duration = Field(0.05, description="base of the jittered exponential backoff")
    max_backoff: Duration = 1.0

    def to_policy(self) -> RetryPolicy:
        return RetryPolicy(attempts=self.attempts, base=self.backoff, cap=self.max_backoff)


class BreakerConfig(Model):
    enabled: bool = True
    window: Duration = Field(30.0, description="rolling window of agent results")
    min_requests: int = Field(20, ge=1)
    failure_rate: float = Field(0.5, gt=0, le=1)
    cooldown: Duration = Field(30.0, description="open this long, then half-open")
    probes: int = Field(3, ge=1, description="successes in half-open that close it")

    def to_policy(self) -> BreakerPolicy:
        return BreakerPolicy(
            window=self.window,
            min_requests=self.min_requests,
            failure_rate=self.failure_rate,
            cooldown=self.cooldown,
            probes=self.probes,
        )
