"""``json``: field-by-field agreement of JSON bodies, the comparator most routes want.

The legacy answer is the reference: when it is not JSON there is nothing to
hold the agent to (skipped); when it is and the agent's is not, the agent is
plainly wrong (mismatch). Everything else is delegated to :class:`Differ`.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cached_property
from typing import Annotated, Any, ClassVar

import orjson
from pydantic import AfterValidator, ConfigDict, Field

from .paths import PathSet, compile_path
from .preview import preview
from .registry import register
from .treediff import Differ
from .types import Difference, DiffKind, Result, Sample, Verdict


def _valid_path(text: str) -> str:
    compile_path(text)  # raises a ValueError that names the position
    return text


PathText = Annotated[str, AfterValidator(_valid_path)]


def _parse(body: bytes) -> tuple[Any, str | None]:
    """The document, or an explanation of why there is none."""
    if not body.strip():
        return None, "empty body"
    try:
        return orjson.loads(body), None
    except orjson.JSONDecodeError as exc:
        return None, str(exc)


def _same(a: Any, b: Any) -> bool:
    """Equal documents, checked in C: agreeing answers (the common case once an
    agent is good) skip the walk. ``==`` alone would take ``true`` for ``1``,
    so equal trees are confirmed by their canonical serialization."""
    try:
        if a != b:
            return False
        return orjson.dumps(a, option=orjson.OPT_SORT_KEYS) == orjson.dumps(
            b, option=orjson.OPT_SORT_KEYS
        )
    except (RecursionError, orjson.JSONEncodeError):  # too deep: the walk decides
        return False


@register
@dataclass(frozen=True)
class JsonComparator:
    """Structural diff of JSON bodies; score is the share of leaves that agree."""

    name: ClassVar[str] = "json"
    __pydantic_config__: ClassVar[ConfigDict] = ConfigDict(
        extra="forbid", use_attribute_docstrings=True
    )

    ignore: tuple[PathText, ...] = ()
    """Path patterns never compared (the node and its subtree), e.g. `$.meta`, `$..request_id`."""
    abs_tol: Annotated[float, Field(ge=0)] = 0.0
    """Numbers within this absolute distance are equal (math.isclose)."""
    rel_tol: Annotated[float, Field(ge=0)] = 0.0
    """Numbers within this relative distance are equal (math.isclose)."""
    unordered_arrays: bool = False
    """Compare every array as a multiset."""
    unordered_paths: tuple[PathText, ...] = ()
    """Compare only the arrays at these path patterns as multisets."""
    max_differences: Annotated[int, Field(ge=0)] = 100
    """Keep at most this many differences per comparison (all still count in the score)."""

    @cached_property
    def _differ(self) -> Differ:
        return Differ(
            ignore=PathSet(compile_path(p) for p in self.ignore),
            unordered=PathSet(compile_path(p) for p in self.unordered_paths),
            unordered_all=self.unordered_arrays,
            abs_tol=self.abs_tol,
            rel_tol=self.rel_tol,
            max_differences=self.max_differences,
        )

    def __call__(self, legacy: Sample, agent: Sample) -> Result:
        if not legacy.body.strip() and not agent.body.strip():
            return Result(self.name, Verdict.SKIPPED, 0.0, reason="both bodies are empty")
        legacy_doc, legacy_error = _parse(legacy.body)
        if legacy_error is not None:
            return Result(
                self.name, Verdict.SKIPPED, 0.0, reason=f"legacy body is not JSON: {legacy_error}"
            )
        if agent.body == legacy.body:  # the same bytes: nothing to walk
            return Result(self.name, Verdict.MATCH, 1.0)
        agent_doc, agent_error = _parse(agent.body)
        if agent_error is not None:
            diff = Difference("$", DiffKind.TYPE, legacy_doc, f"<invalid JSON: {agent_error}>")
            reason = f"agent body is not JSON: {agent_error} ({preview(agent.body, 60)!r})"
            return Result(self.name, Verdict.MISMATCH, 0.0, (diff,), reason)
        if _same(legacy_doc, agent_doc):
            return Result(self.name, Verdict.MATCH, 1.0)
        try:
            outcome = self._differ.diff(legacy_doc, agent_doc)
        except (RecursionError, orjson.JSONEncodeError) as exc:
            # Only reachable with nested unordered arrays hundreds of levels deep.
            reason = f"document too deeply nested to compare: {type(exc).__name__}: {exc}"
            return Result(self.name, Verdict.ERROR, 0.0, reason=reason)
        if outcome.total == 0:
            return Result(self.name, Verdict.MATCH, outcome.score)
        plural = "" if outcome.total == 1 else "s"
        reason = f"{outcome.total} difference{plural} in {outcome.compared} compared leaves"
        if cut := outcome.total - len(outcome.differences):
            reason += f"; {cut} not listed (max_differences={self.max_differences})"
        return Result(
            self.name, Verdict.MISMATCH, outcome.score, tuple(outcome.differences), reason
        )
