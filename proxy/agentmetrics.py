"""What the agent costs and does, as Prometheus series on the proxy's registry.

Token usage and operation time follow the OpenTelemetry GenAI semantic
conventions, under the names an OpenTelemetry Collector would give them in
Prometheus (``gen_ai.client.token.usage`` becomes ``gen_ai_client_token_usage``,
with the spec's buckets and attribute names), so dashboards built for other
GenAI clients read them unchanged. The rest are ``shadow_proxy_`` series.

Model and tool names come from the agent's answers, not from config, so they
go through an allow-list: the configured names, then the first few seen, then
``other``. Label cardinality stays bounded whatever the agent says.
"""

from __future__ import annotations

from collections.abc import Iterable

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

from comparators import ToolOutcome
from proxy.agreement import RollingAgreement
from proxy.children import LabelChildren
from proxy.recorder import Outcome
from proxy.redaction import path_label
from proxy.tracing import Span
from proxy.types import Mode, Observation
from proxy.usage import AgentSettings, Usage, UsageReader

# The spec's explicit bucket boundaries (gen_ai.client.token.usage, .operation.duration).
TOKEN_BUCKETS = (
    1, 4, 16, 64, 256, 1024, 4096, 16384, 65536, 262144, 1048576, 4194304, 16777216, 67108864,
)  # fmt: skip
DURATION_BUCKETS = (
    0.01, 0.02, 0.04, 0.08, 0.16, 0.32, 0.64, 1.28, 2.56, 5.12, 10.24, 20.48, 40.96, 81.92,
)  # fmt: skip
OTHER = "other"
UNKNOWN = "unknown"


class AllowList:
    """Configured names pass; then the first ``learn`` distinct names seen; then ``other``."""

    __slots__ = ("_learn", "_seen")

    def __init__(self, names: Iterable[str] = (), learn: int = 10) -> None:
        self._seen = dict.fromkeys(names)
        self._learn = len(self._seen) + learn

    def __call__(self, name: str | None) -> str:
        if not name:
            return UNKNOWN
        if name in self._seen:
            return name
        if len(self._seen) < self._learn and len(name) <= 64 and name.isprintable():
            self._seen[name] = None
            return name
        return OTHER


class AgentMetrics:
    def __init__(self, registry: CollectorRegistry, agreement_window: int = 200) -> None:
        r = registry
        p = "shadow_proxy_"
        genai = ["route", "mode", "gen_ai_operation_name", "gen_ai_provider_name"]
        self._tokens = Histogram(
            "gen_ai_client_token_usage", "Tokens used per agent answer (OpenTelemetry GenAI).",
            [*genai, "gen_ai_response_model", "gen_ai_token_type"], buckets=TOKEN_BUCKETS,
            registry=r,
        )  # fmt: skip
        self._duration = Histogram(
            "gen_ai_client_operation_duration_seconds",
            "Agent operation time, request to last byte (OpenTelemetry GenAI).",
            [*genai, "gen_ai_response_model", "error_type"], buckets=DURATION_BUCKETS, registry=r,
        )  # fmt: skip
        self._per_request = Histogram(
            p + "agent_tokens_per_request", "Input plus output tokens per agent answer.",
            ["route", "mode"], buckets=TOKEN_BUCKETS, registry=r,
        )  # fmt: skip
        self._missing = Counter(
            p + "agent_usage_missing", "Agent answers in a known format that reported no"
            " token usage (a stream cut short, or usage not requested).", ["route", "mode"],
            registry=r,
        )  # fmt: skip
        self._tools = Counter(
            p + "agent_tool_calls", "Tool calls in agent answers, by tool and outcome.",
            ["route", "tool", "outcome"], registry=r,
        )  # fmt: skip
        self._budget = Gauge(
            p + "shadow_token_budget_remaining", "Tokens left in the route's shadow budget.",
            ["route"], registry=r,
        )  # fmt: skip
        self._noise_pairs = Counter(
            p + "noise_pairs", "Pairs of answers from one backend compared to learn noise.",
            ["route", "backend"], registry=r,
        )  # fmt: skip
        self._noise_fields = Gauge(
            p + "noise_fields", "Field paths treated as noise (learned and configured).",
            ["route"], registry=r,
        )  # fmt: skip
        self._noise_field = Gauge(
            p + "noise_field", "1 for each field path learned as noise.", ["route", "path"],
            registry=r,
        )  # fmt: skip
        self._raw_agreement = Gauge(
            p + "raw_agreement_ratio", "Matches over decided comparisons in the rolling window,"
            " before noise was discounted (routes that learn or freeze noise).", ["route"],
            registry=r,
        )  # fmt: skip
        self._raw_windows: dict[str, RollingAgreement] = {}
        self._window = agreement_window
        self._discounted = Counter(
            p + "noise_discounted", "Mismatches that were all noise, counted as matches.",
            ["route"], registry=r,
        )  # fmt: skip
        self._recorded = Counter(
            p + "recorded_cases", "Cases written to the golden-suite recording, or dropped.",
            ["outcome"], registry=r,
        )  # fmt: skip
        for outcome in Outcome:
            self._recorded.labels(outcome.value)
        self.models = AllowList()
        self.tools = AllowList()
        self._child = LabelChildren()

    def allow(self, models: Iterable[str], tools: Iterable[str], learn: int) -> None:
        self.models = AllowList(models, learn)
        self.tools = AllowList(tools, learn)

    def answer(
        self, route: str, mode: Mode, settings: AgentSettings, answer: Observation, span: Span
    ) -> Observation:
        """An agent's answer with its usage read from the captured body, counted
        and set on its span. A body past the capture limit is not read."""
        answer = answer.with_usage(settings)
        if answer.usage is not None:
            self.usage(route, mode, answer.usage, answer.latency, answer.status)
            span.set(genai_attributes(answer.usage))
        return answer

    def cut(
        self,
        route: str,
        mode: Mode,
        settings: AgentSettings,
        content_type: str | None,
        body: bytes | None,
        seconds: float,
        error: str,
    ) -> None:
        """An answer that broke off after its head (``body``: what arrived, None
        past the capture limit): when what arrived is in a known format, it is
        counted as a failed operation whose usage is missing, as a cut stream is."""
        if body is None:
            return
        reader = UsageReader(settings, content_type)
        reader.feed(body)
        usage = reader.finish(complete=False)
        if usage is not None:
            self.usage(route, mode, usage, seconds, 0, error)

    def usage(
        self,
        route: str,
        mode: Mode,
        usage: Usage,
        seconds: float,
        status: int,
        error: str | None = None,
    ) -> None:
        """One agent answer in a known format; ``error``: it failed that way
        (the spec's ``error.type``), else a 4xx/5xx status names the error."""
        base = (route, mode.value, usage.operation, usage.provider or UNKNOWN)
        model = self.models(usage.model)
        if error is None:
            error = f"{status // 100}xx" if status >= 400 else ""
        self._child(self._duration, *base, model, error).observe(seconds)
        whole = usage.complete and not usage.truncated
        for call in usage.tool_calls:
            outcome = call.outcome
            if outcome is None and (call.valid or whole):  # a cut-off call is not the agent's
                outcome = ToolOutcome.OK if call.valid else ToolOutcome.INVALID_ARGUMENTS
            if outcome is not None:
                self._child(self._tools, route, self.tools(call.name), outcome.value).inc()
        if not usage.reported:
            if status < 400:  # an error answer has its error type; it owes no usage
                self._child(self._missing, route, mode.value).inc()
            return
        total = 0
        for kind, count in (("input", usage.input_tokens), ("output", usage.output_tokens)):
            if count is not None:
                self._child(self._tokens, *base, model, kind).observe(count)
                total += count
        self._child(self._per_request, route, mode.value).observe(total)

    def budget(self, route: str, remaining: float) -> None:
        self._child(self._budget, route).set(remaining)

    def forget_budget(self, route: str) -> None:
        """The route has no budget any more (a reload): a stale level would mislead."""
        self._child.forget(self._budget, route)

    def noise_pair(self, route: str, backend: str) -> None:
        self._child(self._noise_pairs, route, backend).inc()

    def noise(
        self,
        route: str,
        fields: Iterable[str],
        learned: Iterable[str],
        unlearned: Iterable[str] = (),
    ) -> None:
        """The route's noise fields now; ``learned`` and ``unlearned`` changed just now.
        Paths are bounded by the learner's ``max_fields``, and redacted like mismatch paths."""
        self._child(self._noise_fields, route).set(len(set(fields)))
        for path in learned:
            self._child(self._noise_field, route, path_label(path)).set(1)
        for path in unlearned:
            self._child.forget(self._noise_field, route, path_label(path))

    def raw(self, route: str, matched: bool) -> None:
        """A raw verdict (match or mismatch) on a route where noise is discounted."""
        window = self._raw_windows.get(route)
        if window is None:
            window = self._raw_windows[route] = RollingAgreement(self._window)
        window.add(matched)
        self._child(self._raw_agreement, route).set(window.ratio())

    def discounted(self, route: str) -> None:
        self._child(self._discounted, route).inc()

    def recorded(self, outcome: Outcome, size: int = 0) -> None:
        """The recorder's listener (called from its writer thread: counters are thread-safe)."""
        self._recorded.labels(outcome.value).inc()


def genai_attributes(usage: Usage) -> dict[str, str | int | None]:
    """OpenTelemetry GenAI span attributes of one answer (None: not said)."""
    return {
        "gen_ai.operation.name": usage.operation,
        "gen_ai.provider.name": usage.provider,
        "gen_ai.response.model": usage.model,
        "gen_ai.usage.input_tokens": usage.input_tokens,
        "gen_ai.usage.output_tokens": usage.output_tokens,
    }
