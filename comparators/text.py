"""``text``: fuzzy agreement of prose, where an agent rarely answers word for word.

Exact and structural comparison fail on free text: two correct answers differ
in case, spacing and punctuation. This compares normalised text with an edit
similarity (``rapidfuzz.fuzz.ratio``) against a threshold, either on the
whole body or on one string field of a JSON body.
"""

from __future__ import annotations

import sys
import unicodedata
from dataclasses import dataclass
from functools import cache
from typing import Annotated, Any, ClassVar

import orjson
from pydantic import AfterValidator, ConfigDict, Field

from .paths import compile_path, get
from .preview import preview
from .registry import register
from .types import Difference, DiffKind, Result, Sample, Verdict

_ABSENT: Any = object()


def _concrete_path(text: str) -> str:
    compile_path(text, concrete=True)  # raises a ValueError that says what is wrong
    return text


@cache
def _punctuation() -> dict[int, None]:
    """Deletion table for Unicode punctuation (categories P*) in the BMP, built on first use."""
    top = min(sys.maxunicode, 0xFFFF)
    return {c: None for c in range(top + 1) if unicodedata.category(chr(c)).startswith("P")}


def normalize_text(text: str) -> str:
    """Casefold, drop punctuation, collapse and strip whitespace."""
    return " ".join(text.casefold().translate(_punctuation()).split())


def similarity(a: str, b: str) -> float:
    """Edit similarity in [0, 1]; two empty strings are identical (1.0)."""
    from rapidfuzz import fuzz  # 2.5 MB resident: loaded once a text comparison runs

    return float(fuzz.ratio(a, b)) / 100.0


def _json_kind(value: Any) -> str:
    return {dict: "object", list: "array", str: "string", bool: "boolean"}.get(
        type(value), "null" if value is None else "number"
    )


@register
@dataclass(frozen=True)
class TextComparator:
    """Normalised edit similarity of the bodies, or of one string field of JSON bodies."""

    name: ClassVar[str] = "text"
    __pydantic_config__: ClassVar[ConfigDict] = ConfigDict(
        extra="forbid", use_attribute_docstrings=True
    )

    threshold: Annotated[float, Field(ge=0.0, le=1.0)] = 0.9
    """Minimum similarity (0..1) for a match."""
    path: Annotated[str, AfterValidator(_concrete_path)] | None = None
    """Concrete path of a string field in JSON bodies (e.g. `$.answer`); unset: whole body."""
    normalize: bool = True
    """Casefold, strip punctuation and collapse whitespace before comparing."""

    def __call__(self, legacy: Sample, agent: Sample) -> Result:
        if self.path is None:
            texts: tuple[str, str] | Result = (
                legacy.body.decode("utf-8", errors="replace"),
                agent.body.decode("utf-8", errors="replace"),
            )
        else:
            texts = self._extract(self.path, legacy.body, agent.body)
        if isinstance(texts, Result):
            return texts
        a, b = texts
        # The difference shows the raw texts: normalised ones are harder to recognise in logs.
        if self.normalize:
            score = similarity(normalize_text(a), normalize_text(b))
        else:
            score = similarity(a, b)
        if score >= self.threshold:
            return Result(self.name, Verdict.MATCH, score)
        diff = Difference(self.path or "body", DiffKind.CHANGED, preview(a), preview(b))
        reason = f"similarity {score:.3f} below threshold {self.threshold}"
        return Result(self.name, Verdict.MISMATCH, score, (diff,), reason)

    def _extract(self, path: str, legacy: bytes, agent: bytes) -> tuple[str, str] | Result:
        """Both strings at ``path``, or the Result that explains why there are none."""
        try:
            a = _lookup(orjson.loads(legacy), path)
        except orjson.JSONDecodeError as exc:
            return self._result(Verdict.SKIPPED, f"legacy body is not JSON: {exc}")
        try:
            b = _lookup(orjson.loads(agent), path)
        except orjson.JSONDecodeError as exc:
            diff = Difference(path, DiffKind.TYPE, _short(a), f"<invalid JSON: {exc}>")
            return self._result(Verdict.MISMATCH, f"agent body is not JSON: {exc}", diff)
        if a is _ABSENT and b is _ABSENT:
            return self._result(Verdict.SKIPPED, f"{path} is absent from both bodies")
        if a is _ABSENT:
            diff = Difference(path, DiffKind.EXTRA, None, _short(b))
            return self._result(Verdict.MISMATCH, f"{path} is absent from the legacy body", diff)
        if not isinstance(a, str):
            reason = f"legacy value at {path} is a {_json_kind(a)}, not a string"
            return self._result(Verdict.SKIPPED, reason)
        if b is _ABSENT:
            diff = Difference(path, DiffKind.MISSING, preview(a), None)
            return self._result(Verdict.MISMATCH, f"{path} is absent from the agent body", diff)
        if not isinstance(b, str):
            diff = Difference(path, DiffKind.TYPE, preview(a), b)
            reason = f"agent value at {path} is a {_json_kind(b)}, not a string"
            return self._result(Verdict.MISMATCH, reason, diff)
        return a, b

    def _result(self, verdict: Verdict, reason: str, *diffs: Difference) -> Result:
        return Result(self.name, verdict, 0.0, diffs, reason)


def _short(value: Any) -> Any:
    return preview(value) if isinstance(value, str) else value


def _lookup(doc: Any, path: str) -> Any:
    try:
        return get(doc, path)
    except KeyError:
        return _ABSENT
