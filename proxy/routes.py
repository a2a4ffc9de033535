"""The route table: which configured route a request belongs to (pure).

Routes are tried in order and the first match wins, like nginx ``location``
blocks written top to bottom. Everything a request needs later (comparators,
body limit, sampler) is prepared here once, at startup.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import comparators
from proxy.noise import NoiseSettings
from proxy.sampling import Sampler
from proxy.settings import UNMATCHED_ROUTE, Route, Settings
from proxy.usage import AgentSettings

SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})


def _path_matcher(route: Route) -> Callable[[str], bool]:
    m = route.match
    if m.exact is not None:
        exact = m.exact
        return lambda path: path == exact
    if m.prefix is not None:
        prefix = m.prefix
        return lambda path: path.startswith(prefix)
    assert m.regex is not None  # guaranteed by PathMatch validation
    pattern = re.compile(m.regex)
    return lambda path: pattern.fullmatch(path) is not None


@dataclass(frozen=True, slots=True)
class CompiledRoute:
    """A route with everything precomputed for the hot path."""

    name: str
    matches_path: Callable[[str], bool]
    methods: frozenset[str]
    body_limit: int
    capture_limit: int
    preserve_host: bool
    shadow: bool
    mirrorable_methods: frozenset[str] | None  # None: every method (side-effect free)
    sampler: Sampler | None
    rate_limit: float | None
    token_budget: int | None  # agent tokens per minute for shadow calls
    comparators: tuple[comparators.AnyComparator, ...]
    noise: NoiseSettings = field(default_factory=NoiseSettings)
    agent: AgentSettings = field(default_factory=AgentSettings)
    agent_samples: int = 1  # agent answers the comparators want per request (quorum)
    reads_tool_calls: bool = False  # a tool_calls comparator: legacy's calls are read too

    def matches(self, method: str, path: str) -> bool:
        return (not self.methods or method in self.methods) and self.matches_path(path)

    def may_mirror(self, method: str) -> bool:
        return self.mirrorable_methods is None or method in self.mirrorable_methods


def compile_route(route: Route, settings: Settings) -> CompiledRoute:
    shadow = route.shadow
    built = tuple(spec.build() for spec in route.compare)
    return CompiledRoute(
        name=route.name,
        matches_path=_path_matcher(route),
        methods=frozenset(route.match.methods),
        body_limit=settings.route_body_limit(route),
        capture_limit=settings.shadow.capture_limit,
        preserve_host=route.preserve_host,
        shadow=shadow.enabled,
        mirrorable_methods=None if route.side_effect_free else SAFE_METHODS,
        sampler=Sampler(route.name, shadow.percent, shadow.sticky_key) if shadow.enabled else None,
        rate_limit=shadow.rate_limit,
        token_budget=shadow.token_budget,
        comparators=built,
        noise=route.noise,
        agent=route.agent,
        agent_samples=max((getattr(c, "agent_samples", 1) for c in built), default=1),
        reads_tool_calls=any(isinstance(c, comparators.ToolCallsComparator) for c in built),
    )


def unmatched_route(settings: Settings) -> CompiledRoute:
    """Where requests no route claims go: legacy, no shadow."""
    return CompiledRoute(
        name=UNMATCHED_ROUTE,
        matches_path=lambda path: True,
        methods=frozenset(),
        body_limit=settings.max_body_size,
        capture_limit=settings.shadow.capture_limit,
        preserve_host=False,
        shadow=False,
        mirrorable_methods=frozenset(),
        sampler=None,
        rate_limit=None,
        token_budget=None,
        comparators=(),
    )


class RouteTable:
    def __init__(
        self,
        routes: Sequence[CompiledRoute],
        fallback: CompiledRoute,
        keep_escaped_slashes: bool = False,
    ) -> None:
        self.routes = tuple(routes)
        self.fallback = fallback
        # How paths are read for matching (see proxy/target.py): listen.escaped_slashes.
        self.keep_escaped_slashes = keep_escaped_slashes

    @classmethod
    def from_settings(cls, settings: Settings) -> RouteTable:
        compiled = [compile_route(r, settings) for r in settings.routes]
        keep = settings.listen.escaped_slashes == "keep"
        return cls(compiled, unmatched_route(settings), keep)

    @property
    def names(self) -> tuple[str, ...]:
        return (*(r.name for r in self.routes), self.fallback.name)

    def match(self, method: str, path: str) -> CompiledRoute:
        for route in self.routes:
            if route.matches(method, path):
                return route
        return self.fallback
