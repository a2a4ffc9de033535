"""Comparators: decide whether the agent's answer agrees with the legacy one.

A stand-alone library (it imports nothing from ``proxy``): build comparators
by name from configuration with :func:`build`, run them with :func:`compare`.
Importing the package registers the built-ins: exact, headers, json, status, text.
"""

from __future__ import annotations

from . import exact, headers, json_body, status, text
from .comparison import combine, compare
from .errors import InvalidComparatorOptionsError, UnknownComparatorError
from .exact import ExactComparator
from .headers import HeadersComparator
from .json_body import JsonComparator
from .registry import build, known, options_schema, register
from .status import StatusComparator
from .text import TextComparator
from .types import (
    Comparator,
    Comparison,
    Difference,
    DiffKind,
    Result,
    Sample,
    Verdict,
)

del exact, headers, json_body, status, text  # imported for registration only

__all__ = [
    "Comparator",
    "Comparison",
    "DiffKind",
    "Difference",
    "ExactComparator",
    "HeadersComparator",
    "InvalidComparatorOptionsError",
    "JsonComparator",
    "Result",
    "Sample",
    "StatusComparator",
    "TextComparator",
    "UnknownComparatorError",
    "Verdict",
    "build",
    "combine",
    "compare",
    "known",
    "options_schema",
    "register",
]
