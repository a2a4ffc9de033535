"""Comparators: decide whether the agent's answer agrees with the legacy one.

A stand-alone library (it imports nothing from ``proxy``): build comparators
by name from configuration with :func:`build`, run them with :func:`compare`.
Importing the package registers the built-ins: exact, headers, json, judge,
quorum, semantic, status, text, tool_calls. ``judge`` and ``semantic`` are
asynchronous: run them with :func:`acompare`.
"""

from __future__ import annotations

from . import exact, headers, json_body, judge, quorum, semantic, status, text, tool_calls
from .comparison import AnyComparator, acompare, combine, compare, is_async
from .errors import InvalidComparatorOptionsError, UnknownComparatorError
from .exact import ExactComparator
from .headers import HeadersComparator
from .json_body import JsonComparator
from .judge import JudgeComparator
from .quorum import QuorumComparator
from .registry import build, known, options_schema, register
from .semantic import SemanticComparator
from .status import StatusComparator
from .text import TextComparator
from .tool_calls import ToolCallsComparator
from .types import (
    AsyncComparator,
    Comparator,
    Comparison,
    Difference,
    DiffKind,
    Result,
    Sample,
    ToolCall,
    ToolOutcome,
    Verdict,
)

del exact, headers, json_body, judge, quorum, semantic, status, text, tool_calls  # registered

__all__ = [
    "AnyComparator",
    "AsyncComparator",
    "Comparator",
    "Comparison",
    "DiffKind",
    "Difference",
    "ExactComparator",
    "HeadersComparator",
    "InvalidComparatorOptionsError",
    "JsonComparator",
    "JudgeComparator",
    "QuorumComparator",
    "Result",
    "Sample",
    "SemanticComparator",
    "StatusComparator",
    "TextComparator",
    "ToolCall",
    "ToolCallsComparator",
    "ToolOutcome",
    "UnknownComparatorError",
    "Verdict",
    "acompare",
    "build",
    "combine",
    "compare",
    "is_async",
    "known",
    "options_schema",
    "register",
]
