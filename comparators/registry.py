"""Comparators by name, so configuration can say ``json`` and get a validated instance.

Each comparator class is a frozen stdlib dataclass whose fields are its
options. Options are validated by pydantic through a ``TypeAdapter`` of the
class itself, so the same class gives validation, defaults, and the JSON
Schema used for the config file, without a second "options model" to keep in
sync. Every mistake surfaces at startup as one readable error.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Any, TypeVar

from pydantic import ConfigDict, TypeAdapter, ValidationError
from pydantic_core import ErrorDetails

from .errors import InvalidComparatorOptionsError, UnknownComparatorError
from .types import AsyncComparator, Comparator

__all__ = [
    "InvalidComparatorOptionsError",
    "UnknownComparatorError",
    "build",
    "known",
    "options_schema",
    "register",
]

AnyComparator = Comparator | AsyncComparator
C = TypeVar("C", bound=type[Comparator] | type[AsyncComparator])

_REGISTRY: dict[str, type[AnyComparator]] = {}
_ADAPTERS: dict[type[AnyComparator], TypeAdapter[Any]] = {}

# pydantic speaks Python; config authors write YAML, where tuples are lists.
_FRIENDLY = {"tuple_type": "Input should be a valid list"}


def register(cls: C) -> C:
    """Class decorator: make ``cls`` buildable by its ``name``.

    Unknown options are always an error: a class without its own
    ``__pydantic_config__`` gets ``extra="forbid"``.
    """
    name = getattr(cls, "name", None)
    if not isinstance(name, str) or not name:
        raise TypeError(f"{cls.__qualname__} needs a non-empty `name: ClassVar[str]`")
    if not dataclasses.is_dataclass(cls):
        raise TypeError(f"{cls.__qualname__} must be a dataclass (its fields are its options)")
    existing = _REGISTRY.get(name)
    if existing is not None and existing is not cls:
        raise ValueError(f"comparator name {name!r} is already taken by {existing.__qualname__}")
    if "__pydantic_config__" not in vars(cls):
        cls.__pydantic_config__ = ConfigDict(extra="forbid")
    _REGISTRY[name] = cls
    _ADAPTERS.pop(cls, None)
    return cls


def known() -> list[str]:
    """Registered names, sorted, for error messages and ``--help``."""
    return sorted(_REGISTRY)


def _lookup(name: str) -> type[AnyComparator]:
    try:
        return _REGISTRY[name]
    except KeyError:
        raise UnknownComparatorError(
            f"unknown comparator {name!r}; known: {', '.join(known())}"
        ) from None


def _adapter(cls: type[AnyComparator]) -> TypeAdapter[Any]:
    adapter = _ADAPTERS.get(cls)
    if adapter is None:
        adapter = _ADAPTERS[cls] = TypeAdapter(cls)
    return adapter


def _describe(name: str, cls: type[AnyComparator], err: ErrorDetails) -> str:
    where = ".".join(str(part) for part in err["loc"]) or "(options)"
    if err["type"] == "value_error" and "error" in err.get("ctx", {}):
        why = str(err["ctx"]["error"])
    else:
        why = _FRIENDLY.get(err["type"], err["msg"])
    if err["type"] == "unexpected_keyword_argument":
        fields = sorted(f.name for f in dataclasses.fields(cls))  # type: ignore[arg-type]
        why += f" (known options: {', '.join(fields) or 'none'})"
    return f"{name}: {where}: {why}"


def build(name: str, options: Mapping[str, Any]) -> AnyComparator:
    """A validated comparator instance, or an error naming what is wrong."""
    cls = _lookup(name)
    try:
        comparator: AnyComparator = _adapter(cls).validate_python(dict(options))
    except ValidationError as exc:
        lines = [_describe(name, cls, err) for err in exc.errors()]
        raise InvalidComparatorOptionsError("\n".join(lines)) from None
    return comparator


def options_schema(name: str) -> dict[str, Any]:
    """JSON Schema of a comparator's options, for the config file's schema."""
    return _adapter(_lookup(name)).json_schema()
