"""``exact``: byte-for-byte equal bodies, for endpoints where any change matters."""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

from pydantic import ConfigDict

from .preview import preview
from .registry import register
from .types import Difference, DiffKind, Result, Sample, Verdict


@register
@dataclass(frozen=True)
class ExactComparator:
    """Body bytes; the difference carries short previews, never whole bodies."""

    name: ClassVar[str] = "exact"
    __pydantic_config__: ClassVar[ConfigDict] = ConfigDict(extra="forbid")

    def __call__(self, legacy: Sample, agent: Sample) -> Result:
        if legacy.body == agent.body:
            return Result(self.name, Verdict.MATCH, 1.0)
        diff = Difference("body", DiffKind.CHANGED, preview(legacy.body), preview(agent.body))
        reason = f"bodies differ ({len(legacy.body)} vs {len(agent.body)} bytes)"
        return Result(self.name, Verdict.MISMATCH, 0.0, (diff,), reason)
