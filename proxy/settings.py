"""The one settings model, loaded at the edge (CLI) and passed down.

A YAML file gives the values; ``SHADOW_PROXY_*`` environment variables (``__``
between nested names) override them, so a Helm chart can change one knob
without templating the whole file.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any, Literal, Self

import yaml
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    GetJsonSchemaHandler,
    SecretStr,
    ValidationError,
    ValidationInfo,
    field_validator,
    model_validator,
)
from pydantic.json_schema import JsonSchemaValue
from pydantic_core import core_schema
from pydantic_settings import (
    BaseSettings,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
    SettingsError,
)

import comparators
from proxy.errors import ConfigError
from proxy.fleetconfig import PrometheusSettings, RedisSettings
from proxy.headers import invalid_header, is_token
from proxy.noise import NoiseSettings
from proxy.policy import BreakerConfig, FallbackConfig, RetryConfig, RolloutConfig
from proxy.recorder import RecordingSettings
from proxy.redaction import Redactor
from proxy.tracing import TracingSettings
from proxy.units import ByteSize, Duration, HttpUrl, PositiveDuration
from proxy.usage import AgentSettings

UNMATCHED_ROUTE = "unmatched"


class Model(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class Listener(Model):
    host: str = "0.0.0.0"
    port: int = Field(8080, ge=0, le=65535, description="0 picks a free port")
    send_timeout: Duration = Field(
        60.0, description="longest wait for a client to accept the next chunk"
    )
    escaped_slashes: Literal["reject", "keep"] = Field(
        "reject",
        description="a path with %2F or %5C: reject (400), or keep them encoded as data "
        "(never a separator when matching routes; forwarded unchanged)",
    )


class AdminListener(Model):
    host: str = "127.0.0.1"
    port: int = Field(9090, ge=0, le=65535, description="0 picks a free port")
    token: SecretStr | None = Field(
        None, description="bearer token for admin writes (or SHADOW_PROXY_ADMIN__TOKEN)"
    )
    token_file: Path | None = Field(None, description="read the token from this file instead")

    def write_token(self) -> str | None:
        """The token admin writes need; None disables writes."""
        if self.token_file is not None:
            return self.token_file.read_text(encoding="utf-8").strip() or None
        return self.token.get_secret_value() if self.token else None


class Backend(Model):
    url: HttpUrl = Field(description="http(s)://host:port[/base-path] of the backend")
    connect_timeout: PositiveDuration = 2.0
    timeout: PositiveDuration = Field(
        30.0, description="total time for one exchange, body included"
    )
    max_connections: int = Field(512, ge=1, description="pooled connections to this backend")


class Backends(Model):
    legacy: Backend
    agent: Backend | None = None


class StickyKey(Model):
    """Where to find the value hashed for deterministic choices: exactly one."""

    header: str | None = None
    cookie: str | None = None
    query: str | None = None
    client_ip: bool = Field(False, description="the client's address")

    @model_validator(mode="after")
    def _exactly_one(self) -> Self:
        given = [n for n in ("header", "cookie", "query", "client_ip") if getattr(self, n)]
        if len(given) != 1:
            raise ValueError("set exactly one of header, cookie, query, client_ip")
        return self


class RouteShadow(Model):
    enabled: bool = False
    percent: float = Field(100.0, ge=0, le=100, description="share of requests mirrored")
    sticky_key: StickyKey | None = None
    rate_limit: float | None = Field(None, gt=0, description="shadow requests per second")
    token_budget: int | None = Field(
        None,
        ge=1,
        description="agent tokens per minute the route's shadow calls may use; over it, "
        "shadowing pauses (dropped_budget) until the minute's allowance refills",
    )


class PathMatch(Model):
    exact: str | None = None
    prefix: str | None = None
    regex: str | None = Field(None, description="matched against the whole path")
    methods: tuple[str, ...] = Field((), description="empty means any method")

    @model_validator(mode="after")
    def _exactly_one(self) -> Self:
        given = [n for n in ("exact", "prefix", "regex") if getattr(self, n) is not None]
        if len(given) != 1:
            raise ValueError("set exactly one of exact, prefix, regex")
        if self.regex is not None:
            try:
                re.compile(self.regex)
            except RecursionError:  # "(" a thousand deep; its message varies with the stack
                raise ValueError("regex does not compile: nested too deeply") from None
            except (re.error, OverflowError) as exc:  # OverflowError: a{99999999999}
                raise ValueError(f"regex does not compile: {exc}") from None
        return self

    @field_validator("methods")
    @classmethod
    def _methods(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        for method in value:
            if not is_token(method):
                raise ValueError(f"{method!r} is not an HTTP method")
        return tuple(m.upper() for m in value)


class ComparatorSpec(BaseModel):
    """``{name: json, ignore: [...]}`` or just ``json``; options are checked now."""

    model_config = ConfigDict(extra="allow", frozen=True)
    name: str

    @model_validator(mode="before")
    @classmethod
    def _shorthand(cls, value: Any) -> Any:
        return {"name": value} if isinstance(value, str) else value

    @model_validator(mode="after")
    def _buildable(self) -> Self:
        self.build()  # an unknown name or a bad option fails at load time
        return self

    @property
    def options(self) -> dict[str, Any]:
        return dict(self.model_extra or {})

    def build(self) -> comparators.AnyComparator:
        return comparators.build(self.name, self.options)

    @classmethod
    def __get_pydantic_json_schema__(
        cls, schema: core_schema.CoreSchema, handler: GetJsonSchemaHandler
    ) -> JsonSchemaValue:
        variants: list[JsonSchemaValue] = [{"type": "string", "enum": comparators.known()}]
        for name in comparators.known():
            options = comparators.options_schema(name)
            variants.append(
                {
                    "type": "object",
                    "title": f"{name} comparator",
                    "properties": {"name": {"const": name}, **options.get("properties", {})},
                    "required": ["name", *options.get("required", [])],
                    "additionalProperties": False,
                }
            )
        return {"oneOf": variants}


class Route(Model):
    name: str = Field(pattern=r"^[A-Za-z0-9_][A-Za-z0-9_.-]*$", max_length=64)
    match: PathMatch
    preserve_host: bool = Field(False, description="send the client's Host upstream")
    max_body_size: ByteSize | None = Field(None, description="default: the top-level one")
    side_effect_free: bool = Field(False, description="allow mirroring non-GET/HEAD/OPTIONS")
    shadow: RouteShadow = RouteShadow()
    rollout: RolloutConfig | None = Field(None, description="absent: legacy serves all live")
    sticky_key: StickyKey | None = Field(None, description="who stays on the agent (live share)")
    fallback: FallbackConfig = FallbackConfig()
    retries: RetryConfig = RetryConfig()
    breaker: BreakerConfig = BreakerConfig()
    compare: tuple[ComparatorSpec, ...] = (
        ComparatorSpec(name="status"),
        ComparatorSpec(name="json"),
    )
    noise: NoiseSettings = Field(
        NoiseSettings(), description="learn which fields differ between two calls of one backend"
    )
    agent: AgentSettings = Field(
        AgentSettings(),
        description="how to read the agent's answers for tokens and tool calls "
        "(OpenAI, Anthropic, or JSON paths for an in-house API)",
    )

    @field_validator("name")
    @classmethod
    def _not_reserved(cls, value: str) -> str:
        if value == UNMATCHED_ROUTE:
            raise ValueError(f"{UNMATCHED_ROUTE!r} is reserved for requests no route matches")
        return value


class ShadowSettings(Model):
    max_in_flight: int = Field(256, ge=1, description="shadow requests in flight, all routes")
    timeout: Duration = Field(5.0, description="total time for one shadow exchange")
    capture_limit: ByteSize = Field(
        1024 * 1024, description="largest request or response body kept for comparison"
    )
    max_capture_memory: ByteSize | None = Field(
        None,
        description="bodies held for comparison by all shadow requests together; "
        "a request whose bodies do not fit is dropped (dropped_memory). "
        "Default: 4 x capture_limit",
    )
    add_headers: dict[str, str] = Field(default_factory=dict)
    drop_headers: tuple[str, ...] = ()

    @field_validator("add_headers")
    @classmethod
    def _valid_headers(cls, value: dict[str, str]) -> dict[str, str]:
        for name, text in value.items():
            if problem := invalid_header(name, text):
                raise ValueError(problem)
        return value

    @field_validator("drop_headers")
    @classmethod
    def _valid_names(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        for name in value:
            if not is_token(name):
                raise ValueError(f"{name!r} is not a valid header name")
        return value

    @property
    def capture_memory(self) -> int:
        """The bound in force: the configured one, or four bodies' worth.

        Large pairs are compared one at a time, a quarter of the time (the
        comparison lane), so holding more of them mostly holds bodies whose
        comparison is then skipped.
        """
        if self.max_capture_memory is None:
            return 4 * self.capture_limit
        return self.max_capture_memory

    @model_validator(mode="after")
    def _room_for_one(self) -> Self:
        if self.max_capture_memory is not None and self.max_capture_memory < self.capture_limit:
            raise ValueError(
                "max_capture_memory must be at least capture_limit, or no large body fits"
            )
        return self


class MetricsSettings(Model):
    mismatch_paths_per_route: int = Field(50, ge=1, description="distinct path labels per route")
    agreement_window: int = Field(  # bounded: a deque of this length per route (2**63 crashed)
        200, ge=1, le=1_000_000, description="comparisons in the rolling agreement"
    )
    models: tuple[str, ...] = Field(
        (), description="model names kept as label values; others: the first few seen, then other"
    )
    tools: tuple[str, ...] = Field(
        (), description="tool names kept as label values; others: the first few seen, then other"
    )
    learn_labels: int = Field(
        10, ge=0, le=100, description="model and tool names learned from answers beyond the lists"
    )


class LoggingSettings(Model):
    level: Literal["debug", "info", "warning", "error"] = "info"
    format: Literal["auto", "json", "console"] = Field(
        "auto", description="auto: console on a terminal, JSON lines otherwise"
    )
    max_differences: int = Field(20, ge=0, description="differences per mismatch event")
    max_value_chars: int = Field(200, ge=16, description="longer values are truncated")


class RedactionSettings(Model):
    """What never reaches a log line or a recorded sample. Each list adds to the
    built-in one (see proxy/redaction.py), so a config cannot unmask Authorization."""

    headers: tuple[str, ...] = Field((), description="more header names whose values are masked")
    fields: tuple[str, ...] = Field(
        (), description="more JSON field / query parameter names whose values are masked"
    )
    patterns: tuple[str, ...] = Field((), description="more regular expressions to mask")

    @field_validator("patterns")
    @classmethod
    def _compiles(cls, patterns: tuple[str, ...]) -> tuple[str, ...]:
        for i, pattern in enumerate(patterns):
            shown = repr(pattern) if len(pattern) <= 60 else repr(pattern[:57]) + "..."
            try:
                compiled = re.compile(pattern)
            except re.error as exc:
                raise ValueError(f"pattern {i} ({shown}) is not a valid regex: {exc}") from None
            except (OverflowError, RecursionError):  # a{99999999999}, ((((...
                raise ValueError(f"pattern {i} ({shown}) is too large to compile") from None
            if compiled.match(""):
                raise ValueError(f"pattern {i} ({shown}) matches the empty string")
        return patterns

    def redactor(self) -> Redactor:
        return Redactor(self.headers, self.fields, self.patterns)


class RoutingSettings(Model):
    force_header: str | None = Field(
        None, description="a request header whose value legacy|agent forces the backend"
    )


class ShutdownSettings(Model):
    drain_delay: Duration = Field(0.0, description="keep serving after readiness turns 503")
    timeout: Duration = Field(30.0, description="wait this long for in-flight live requests")
    shadow_grace: Duration = Field(5.0, description="then give shadow work this long")


class Settings(BaseSettings):
    model_config = SettingsConfigDict(
        env_prefix="SHADOW_PROXY_",
        env_nested_delimiter="__",
        extra="forbid",
        frozen=True,
    )

    listen: Listener = Listener()
    admin: AdminListener = AdminListener()
    backends: Backends
    shadow: ShadowSettings = ShadowSettings()
    max_body_size: ByteSize = Field(64 * 1024 * 1024, description="request body limit (413)")
    routes: tuple[Route, ...] = ()
    routing: RoutingSettings = RoutingSettings()
    state_file: Path | None = Field(None, description="where rollout state survives restarts")
    reload_interval: Duration = Field(2.0, description="how often the config file is checked")
    metrics: MetricsSettings = MetricsSettings()
    logging: LoggingSettings = LoggingSettings()
    redaction: RedactionSettings = RedactionSettings()
    shutdown: ShutdownSettings = ShutdownSettings()
    coordination: Literal["local", "redis"] = Field(
        "local", description="where rollout state lives: this process, or Redis for a fleet"
    )
    redis: RedisSettings = RedisSettings()
    analysis: Literal["local", "prometheus"] = Field(
        "local", description="where the gates' evidence comes from: this process, or PromQL"
    )
    prometheus: PrometheusSettings = PrometheusSettings()
    recording: RecordingSettings = Field(
        RecordingSettings(), description="golden-suite cases written to JSONL, redacted"
    )
    tracing: TracingSettings = Field(
        TracingSettings(), description="OpenTelemetry span export over OTLP (off by default)"
    )

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        return (env_settings, init_settings)  # the environment overrides the file

    @field_validator("routes")
    @classmethod
    def _consistent(cls, routes: tuple[Route, ...], info: ValidationInfo) -> tuple[Route, ...]:
        # A field validator (not a model one), so the problem is named `routes`, not
        # `(top level)`; `backends` is declared earlier, so it is in info.data when valid.
        names = [r.name for r in routes]
        duplicates = sorted({n for n in names if names.count(n) > 1})
        if duplicates:
            raise ValueError(f"route names must be unique; repeated: {', '.join(duplicates)}")
        needs_agent = [r.name for r in routes if r.shadow.enabled or r.rollout]
        backends = info.data.get("backends")
        if needs_agent and backends is not None and backends.agent is None:
            raise ValueError(
                f"routes {', '.join(needs_agent)} enable shadow or rollout"
                " but backends.agent is not set"
            )
        return routes

    def route_body_limit(self, route: Route | None) -> int:
        if route is None or route.max_body_size is None:
            return self.max_body_size
        return route.max_body_size


def load_settings(path: str | Path) -> Settings:
    """Read, parse and validate one YAML file, or raise :class:`ConfigError`."""
    source = str(path)
    try:
        text = Path(path).read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError(source, [f"cannot read file: {exc.strerror or exc}"]) from None
    except ValueError as exc:  # not UTF-8, or a NUL in the path
        raise ConfigError(source, [f"cannot read file: {exc}"]) from None
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise ConfigError(source, [f"not valid YAML: {exc}".replace("\n", " ")]) from None
    except RecursionError:  # PyYAML recurses once per nesting level
        raise ConfigError(source, ["not valid YAML: nested too deeply"]) from None
    except ValueError as exc:  # e.g. an integer longer than int() accepts (4300 digits)
        raise ConfigError(source, [f"not valid YAML: {exc}"]) from None
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise ConfigError(source, ["the top level must be a mapping of settings"])
    return settings_from(data, source=source)


def settings_from(data: dict[str, Any], *, source: str = "<config>") -> Settings:
    # Keys go to BaseSettings.__init__ as keywords: a non-string key would raise
    # TypeError; `_env_file`, `_secrets_dir`, `_cli_parse_args`... would reach
    # pydantic-settings' own options (read other files, parse sys.argv); and names
    # there are case-insensitive (`Listen:` passed, and `BACKENDS:` beside `backends:`
    # was dropped silently). So the top level is checked here, exactly.
    odd = [key for key in data if key not in Settings.model_fields]
    problems = [f"{_dotted([key])}: Extra inputs are not permitted" for key in odd]
    try:
        settings = Settings(**{k: v for k, v in data.items() if k not in odd})
    except ValidationError as exc:
        problems += format_errors(exc)
    except SettingsError as exc:  # an environment override that is not valid JSON
        problems.append(_environment_problem(exc))
    except RecursionError:  # a JSON environment value nested thousands deep
        problems.append("(environment): a SHADOW_PROXY_* value is nested too deeply")
    if problems:
        raise ConfigError(source, problems)
    return settings


def _environment_problem(exc: SettingsError) -> str:
    """``routes: the environment override SHADOW_PROXY_ROUTES... is not valid JSON (...)``."""
    found = re.search(r'field "(\w+)"', str(exc))
    field = found.group(1) if found else "(environment)"
    cause = f" ({exc.__cause__})" if exc.__cause__ else ""
    variable = f"SHADOW_PROXY_{field.upper()}..." if found else "a SHADOW_PROXY_* variable"
    return f"{field}: the environment override {variable} is not valid JSON{cause}"


def format_errors(exc: ValidationError) -> list[str]:
    """One line per problem: ``routes.0.match: set exactly one of exact, prefix, regex``."""
    lines = []
    for error in exc.errors(include_url=False):
        loc = _dotted(error["loc"])
        message = error["msg"].removeprefix("Value error, ")
        # A comparator reports one bad option per line; each stays its own problem.
        lines += [f"{loc}: {line}" for line in message.splitlines() or [""]]
    return lines


def _dotted(loc: tuple[int | str, ...] | list[Any]) -> str:
    """``routes.0.match``; a key with a newline or an escape code is quoted, so a
    problem stays one line and cannot paint the operator's terminal."""
    parts = (str(part) for part in loc)
    return ".".join(p if p.isprintable() and p else repr(p) for p in parts) or "(top level)"
