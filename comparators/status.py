"""``status``: do both backends answer with the same HTTP status (or status class)?"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

from pydantic import ConfigDict

from .registry import register
from .types import Difference, DiffKind, Result, Sample, Verdict


@register
@dataclass(frozen=True)
class StatusComparator:
    """Status codes; same_class tolerates e.g. 200 vs 201 where only success matters."""

    name: ClassVar[str] = "status"
    __pydantic_config__: ClassVar[ConfigDict] = ConfigDict(
        extra="forbid", use_attribute_docstrings=True
    )

    same_class: bool = False
    """Compare 2xx/3xx/4xx/5xx classes instead of exact codes."""

    def __call__(self, legacy: Sample, agent: Sample) -> Result:
        a, b = legacy.status, agent.status
        equal = a // 100 == b // 100 if self.same_class else a == b
        if equal:
            return Result(self.name, Verdict.MATCH, 1.0)
        diff = Difference("status", DiffKind.CHANGED, a, b)
        return Result(self.name, Verdict.MISMATCH, 0.0, (diff,), f"status {a} != {b}")
