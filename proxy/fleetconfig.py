"""Config for running many replicas as one fleet: where the rollout state is
shared (``coordination``) and where the gates' evidence comes from
(``analysis``). Both default to ``local``: one process, its own traffic.

Redis holds the shared state (``proxy.fleet``); Prometheus answers the gates'
window statistics over every replica (``proxy.analysis``). The queries are
templates like Flagger's MetricTemplate: ``{{ route }}`` and ``{{ window }}``
are filled in at each evaluation.
"""

from __future__ import annotations

import os
import re
import socket
from typing import Self

from pydantic import BaseModel, ConfigDict, Field, SecretStr, field_validator, model_validator
from yarl import URL

from proxy.units import HttpUrl, PositiveDuration


class Model(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


def default_replica() -> str:
    """A Pod's name is its hostname; the pid tells two processes on one host apart."""
    return f"{socket.gethostname()}-{os.getpid()}"


class RedisSettings(Model):
    url: str = Field(
        "redis://127.0.0.1:6379/0",
        description="redis:// or rediss:// URL (or SHADOW_PROXY_REDIS__URL)",
    )
    password: SecretStr | None = Field(
        None, description="or SHADOW_PROXY_REDIS__PASSWORD, e.g. from a Secret"
    )
    key_prefix: str = Field(
        "shadow-proxy",
        pattern=r"^[A-Za-z0-9_.:-]{1,64}$",
        description="keys are <prefix>:...; one prefix per fleet",
    )
    replica: str | None = Field(
        None, max_length=128, description="this replica's name in the lease (default: host-pid)"
    )
    lease_ttl: PositiveDuration = Field(10.0, description="a dead leader is replaced within this")
    poll_interval: PositiveDuration = Field(2.0, description="backstop to pub/sub: re-read state")
    timeout: PositiveDuration = Field(1.0, description="longest wait for one Redis command")

    @field_validator("url")
    @classmethod
    def _redis_url(cls, value: str) -> str:
        url = URL(value)
        if url.scheme not in ("redis", "rediss") or not url.host:
            raise ValueError("must be a redis:// or rediss:// URL with a host")
        if url.raw_password is not None:
            raise ValueError("must not carry a password: set redis.password instead")
        return value

    @model_validator(mode="after")
    def _timings(self) -> Self:
        if self.lease_ttl < 1.0:
            raise ValueError("lease_ttl must be at least 1s (it is renewed every third of it)")
        if self.timeout >= self.lease_ttl / 3:
            raise ValueError("timeout must be under a third of lease_ttl, or renewals overlap")
        return self

    @property
    def replica_name(self) -> str:
        return self.replica or default_replica()


_VARIABLE = re.compile(r"\{\{\s*(\w+)\s*\}\}")
_MATCHER = r'\s*[A-Za-z_]\w*\s*(?:=~|!~|!=|=)\s*"(?:[^"\\\n]|\\.)*"\s*'
_SELECTOR = re.compile(rf"{_MATCHER}(?:,{_MATCHER})*")
TEMPLATE_VARIABLES = ("route", "window", "selector")

_EVIDENCE = 'route="{{ route }}"{{ selector }}'
DEFAULT_QUERIES = {
    "samples": "sum(increase(shadow_proxy_comparisons_total{"
    + _EVIDENCE
    + ',verdict=~"match|mismatch"}[{{ window }}]))',
    "matches": "sum(increase(shadow_proxy_comparisons_total{"
    + _EVIDENCE
    + ',verdict="match"}[{{ window }}]))',
    "agent_calls": "sum(increase(shadow_proxy_agent_calls_total{" + _EVIDENCE + "}[{{ window }}]))",
    "agent_errors": "sum(increase(shadow_proxy_agent_calls_total{"
    + _EVIDENCE
    + ',result="error"}[{{ window }}]))',
    "agent_served": "sum(increase(shadow_proxy_agent_served_total{"
    + _EVIDENCE
    + "}[{{ window }}]))",
    "fallbacks": "sum(increase(shadow_proxy_agent_served_total{"
    + _EVIDENCE
    + ',result="fallback"}[{{ window }}]))',
    "agent_p95": "histogram_quantile(0.95, sum by (le) (rate("
    "shadow_proxy_upstream_duration_seconds_bucket{" + _EVIDENCE + ',backend="agent"}'
    "[{{ window }}])))",
    "legacy_p95": "histogram_quantile(0.95, sum by (le) (rate("
    "shadow_proxy_upstream_duration_seconds_bucket{" + _EVIDENCE + ',backend="legacy",mode="live"}'
    "[{{ window }}])))",
}


class Queries(Model):
    """One PromQL template per window statistic the gates read. Each must give a
    single number; an empty result is "no data" (the rollout holds)."""

    samples: str = DEFAULT_QUERIES["samples"]
    matches: str = DEFAULT_QUERIES["matches"]
    agent_calls: str = DEFAULT_QUERIES["agent_calls"]
    agent_errors: str = DEFAULT_QUERIES["agent_errors"]
    agent_served: str = DEFAULT_QUERIES["agent_served"]
    fallbacks: str = DEFAULT_QUERIES["fallbacks"]
    agent_p95: str = DEFAULT_QUERIES["agent_p95"]
    legacy_p95: str = DEFAULT_QUERIES["legacy_p95"]

    @field_validator("*")
    @classmethod
    def _known_variables(cls, value: str) -> str:
        unknown = sorted({m.group(1) for m in _VARIABLE.finditer(value)} - {*TEMPLATE_VARIABLES})
        if unknown:
            known = ", ".join("{{ %s }}" % v for v in TEMPLATE_VARIABLES)  # noqa: UP031
            raise ValueError(f"unknown template variable {', '.join(unknown)}; known: {known}")
        if not value.strip():
            raise ValueError("must not be empty")
        return value


def render(template: str, **values: str) -> str:
    """Fill ``{{ name }}`` placeholders; names were checked when the config loaded."""
    return _VARIABLE.sub(lambda m: values[m.group(1)], template)


class PrometheusSettings(Model):
    url: HttpUrl = Field("http://127.0.0.1:9090", description="the Prometheus (or Thanos) HTTP API")
    timeout: PositiveDuration = Field(5.0, description="longest wait for one query")
    max_consecutive_errors: int = Field(
        4, ge=1, description="query errors in a row that count as one failed measurement"
    )
    min_window: PositiveDuration = Field(
        60.0,
        description="shortest range queried (at least 4 scrape intervals); less evidence than"
        " this since the last transition is no data",
    )
    selector: str = Field(
        "",
        description='label matchers that pick this fleet\'s series, e.g. namespace="shop",'
        'job="orders": {{ selector }} in the queries',
    )
    queries: Queries = Queries()

    @field_validator("selector")
    @classmethod
    def _matchers(cls, value: str) -> str:
        value = value.strip()
        if value and not _SELECTOR.fullmatch(value):
            raise ValueError('must be PromQL label matchers like namespace="shop",job="orders"')
        return value
