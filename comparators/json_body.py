"""``json``: field-by-field agreement of JSON bodies, the comparator most routes want.

The legacy answer is the reference: when it is not JSON there is nothing to
hold the agent to (skipped); when it is and the agent's is not, the agent is
plainly wrong (mismatch). Everything else is delegated to :class:`Differ`.
"""

from __future__ import annotations

import json
import math
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

# Past this size (the legacy body's) a pair is a large one, and memory
# decides how it is parsed. orjson first builds a document model of its own,
# about ten times the body's size: a 1 MB answer peaks at 17 MB for a 5 MB
# tree. The standard library's parser builds the tree directly (about 1.5x
# the time; large pairs are compared on their own thread, a quarter of the
# time). And the two trees are not kept at once: the legacy tree is reduced
# to its canonical bytes before the agent's is built, and parsed again only
# when the two differ and must be walked (the walk costs far more).
# Integers past 64 bits, which orjson reads as floats, stay exact there.
LARGE = 64 * 1024


def _valid_path(text: str) -> str:
    compile_path(text)  # raises a ValueError that names the position
    return text


PathText = Annotated[str, AfterValidator(_valid_path)]


def _parse(body: bytes, large: bool = False) -> tuple[Any, str | None]:
    """The document, or an explanation of why there is none."""
    if not body.strip():
        return None, "empty body"
    try:
        return _load(body, large), None
    except ValueError as exc:  # orjson's and json's JSONDecodeError, bad UTF-8
        return None, str(exc)


def _load(body: bytes, large: bool) -> Any:
    if large:
        try:
            return json.loads(body, parse_constant=_no_constant, parse_float=_finite)
        except RecursionError:
            pass  # deeper than json's parser goes: orjson takes 1024 levels
    return orjson.loads(body)


def _no_constant(name: str) -> Any:
    raise ValueError(f"{name} is not JSON")  # like orjson: no NaN, no Infinity


def _finite(text: str) -> float:
    value = float(text)
    if math.isinf(value):
        raise ValueError(f"number {text[:40]} is out of range")  # like orjson
    return value


def _same(a: Any, b: Any) -> bool:
    """Equal documents, checked in C: agreeing answers (the common case once an
    agent is good) skip the walk. ``==`` alone would take ``true`` for ``1``,
    so equal trees are confirmed by their canonical serialization."""
    try:
        if a != b:
            return False
    except RecursionError:  # too deep: the walk decides
        return False
    canonical = _canonical(a)
    return canonical is not None and canonical == _canonical(b)


def _canonical(doc: Any) -> bytes | None:
    """The document serialized with sorted keys: equal bytes, equal documents
    (None when it cannot be: too deep, or an integer past 64 bits)."""
    try:
        return orjson.dumps(doc, option=orjson.OPT_SORT_KEYS)
    except (RecursionError, orjson.JSONEncodeError):  # the walk decides
        return None


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
        large = len(legacy.body) > LARGE
        legacy_doc, legacy_error = _parse(legacy.body, large)
        if legacy_error is not None:
            return Result(
                self.name, Verdict.SKIPPED, 0.0, reason=f"legacy body is not JSON: {legacy_error}"
            )
        if agent.body == legacy.body:  # the same bytes: nothing to walk
            return Result(self.name, Verdict.MATCH, 1.0)
        if large:
            legacy_key, legacy_doc = _canonical(legacy_doc), None  # one tree at a time
            agent_doc, agent_error = _parse(agent.body, large)
            same = agent_error is None and legacy_key is not None
            same = same and legacy_key == _canonical(agent_doc)
            if not same:
                legacy_doc = _load(legacy.body, large)  # they differ: both are walked
        else:
            agent_doc, agent_error = _parse(agent.body)
            same = agent_error is None and _same(legacy_doc, agent_doc)
        if same:
            return Result(self.name, Verdict.MATCH, 1.0)
        if agent_error is not None:
            diff = Difference("$", DiffKind.TYPE, legacy_doc, f"<invalid JSON: {agent_error}>")
            reason = f"agent body is not JSON: {agent_error} ({preview(agent.body, 60)!r})"
            return Result(self.name, Verdict.MISMATCH, 0.0, (diff,), reason)
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
