"""Strict reading of recorded cases' JSON: a wrong type or an unknown field is
a :class:`CaseError` naming where, never a silently misread case."""

from __future__ import annotations

from collections.abc import Sequence
from enum import StrEnum
from typing import Any, TypeVar

E = TypeVar("E", bound=StrEnum)


class CaseError(ValueError):
    """A line that is not a valid case: where (file, line) and what is wrong."""

    def __init__(self, problem: str, line: int | None = None, path: str | None = None) -> None:
        self.problem, self.line, self.path = problem, line, path
        where = ":".join(str(p) for p in (path, line) if p is not None)
        super().__init__(f"{where}: {problem}" if where else problem)


def json_kind(value: Any) -> str:
    names = {
        dict: "an object",
        list: "a list",
        str: "a string",
        bool: "a boolean",
        type(None): "null",
    }
    return names.get(
        type(value), "a number" if isinstance(value, int | float) else type(value).__name__
    )


def json_object(
    value: Any, where: str, keys: Sequence[str] | None, required: Sequence[str]
) -> dict[str, Any]:
    if not isinstance(value, dict):
        raise CaseError(f"{where}: expected an object, got {json_kind(value)}")
    if keys is not None and (unknown := sorted(set(value) - set(keys))):
        raise CaseError(f"{where}: unknown field {unknown[0]!r} (known: {', '.join(keys)})")
    if missing := [k for k in required if k not in value]:
        raise CaseError(f"{where}: missing field {missing[0]!r}")
    return value


def json_list(value: Any, where: str) -> list[Any]:
    if not isinstance(value, list):
        raise CaseError(f"{where}: expected a list, got {json_kind(value)}")
    return value


def json_str(value: Any, where: str) -> str:
    if not isinstance(value, str):
        raise CaseError(f"{where}: expected a string, got {json_kind(value)}")
    return value


def json_int(value: Any, where: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise CaseError(f"{where}: expected an integer, got {json_kind(value)}")
    return value


def json_number(value: Any, where: str) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise CaseError(f"{where}: expected a number, got {json_kind(value)}")
    return float(value)


def json_headers(value: Any, where: str) -> dict[str, str]:
    headers = json_object(value, where, None, ())
    for name, v in headers.items():
        json_str(v, f"{where}.{name}")
    return headers


def json_enum(enum: type[E], value: Any, where: str) -> E:
    try:
        return enum(value)
    except ValueError:
        known = ", ".join(e.value for e in enum)
        raise CaseError(f"{where}: expected one of {known}, got {value!r}") from None
