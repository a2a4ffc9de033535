"""``headers``: do the headers a client relies on (content type, caching...) agree?"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

from pydantic import ConfigDict

from .registry import register
from .types import Difference, DiffKind, Result, Sample, Verdict


@register
@dataclass(frozen=True)
class HeadersComparator:
    """Values of the named headers; other headers (dates, ids) differ by nature."""

    name: ClassVar[str] = "headers"
    __pydantic_config__: ClassVar[ConfigDict] = ConfigDict(
        extra="forbid", use_attribute_docstrings=True
    )

    names: tuple[str, ...]
    """Header names to compare, case-insensitive. A header absent on both sides agrees."""

    def __call__(self, legacy: Sample, agent: Sample) -> Result:
        if not self.names:
            return Result(self.name, Verdict.MATCH, 1.0, reason="no headers to compare")
        # Sample headers are lower-case by contract; names may come from config in any case.
        wanted = dict.fromkeys(n.lower() for n in self.names)
        diffs: list[Difference] = []
        for header in wanted:
            a, b = legacy.headers.get(header), agent.headers.get(header)
            if a == b:
                continue
            if b is None:
                kind = DiffKind.MISSING
            elif a is None:
                kind = DiffKind.EXTRA
            else:
                kind = DiffKind.CHANGED
            diffs.append(Difference(f"headers.{header}", kind, a, b))
        if not diffs:
            return Result(self.name, Verdict.MATCH, 1.0)
        score = 1.0 - len(diffs) / len(wanted)
        reason = "differing headers: " + ", ".join(d.path.removeprefix("headers.") for d in diffs)
        return Result(self.name, Verdict.MISMATCH, score, tuple(diffs), reason)
