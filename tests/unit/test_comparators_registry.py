"""Registry: building comparators by name with validated options."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar

import pytest

import comparators
from comparators import (
    InvalidComparatorOptionsError,
    JsonComparator,
    Result,
    Sample,
    UnknownComparatorError,
    Verdict,
    build,
    known,
    options_schema,
    register,
    registry,
)


def test_known_lists_the_builtins_sorted() -> None:
    """Importing the package registers every built-in comparator."""
    assert {"exact", "headers", "json", "status", "text"} <= set(known())
    assert known() == sorted(known())


def test_unknown_name_lists_the_known_ones() -> None:
    """A typo in the config fails with every name the user could have meant."""
    with pytest.raises(UnknownComparatorError) as info:
        build("jsn", {})
    assert str(info.value).startswith("unknown comparator 'jsn'; known: exact, headers, json")
    assert isinstance(info.value, ValueError)


@pytest.mark.parametrize(
    ("name", "options", "lines"),
    [
        ("json", {"abs_tol": "x"}, ["json: abs_tol: Input should be a valid number"]),
        ("json", {"abs_tol": -1}, ["json: abs_tol: Input should be greater than or equal to 0"]),
        ("json", {"ignore": "$.a"}, ["json: ignore: Input should be a valid list"]),
        ("json", {"ignore": ["$.ok", "$["]}, ["json: ignore.1: bad path '$['"]),
        ("json", {"colour": 1}, ["json: colour: Unexpected keyword argument (known options: "]),
        ("headers", {}, ["headers: names: Field required"]),
        ("text", {"threshold": 1.5}, ["text: threshold: Input should be less than or equal to 1"]),
        ("text", {"path": "$..a"}, ["text: path: bad path '$..a'", "wildcards"]),
        ("status", {"same_class": "maybe"}, ["status: same_class: Input should be a valid bool"]),
        ("exact", {"x": 1}, ["exact: x: Unexpected keyword argument (known options: none)"]),
    ],
)
def test_bad_options_name_the_option_and_the_reason(
    name: str, options: dict[str, Any], lines: list[str]
) -> None:
    """Each validation error becomes one line: comparator, option path, reason."""
    with pytest.raises(InvalidComparatorOptionsError) as info:
        build(name, options)
    for line in lines:
        assert line in str(info.value)


def test_every_bad_option_gets_its_own_line() -> None:
    """Several mistakes are reported together, one per line."""
    with pytest.raises(InvalidComparatorOptionsError) as info:
        build("json", {"abs_tol": "x", "max_differences": -1, "nope": True})
    assert len(str(info.value).splitlines()) == 3


@pytest.mark.parametrize(
    ("name", "options", "expected"),
    [
        ("json", {}, JsonComparator()),
        ("json", {"ignore": ["$.a"], "abs_tol": "0.5"}, JsonComparator(("$.a",), abs_tol=0.5)),
        ("status", {"same_class": True}, comparators.StatusComparator(same_class=True)),
        ("headers", {"names": ["ETag"]}, comparators.HeadersComparator(names=("ETag",))),
    ],
)
def test_build_returns_an_equal_frozen_instance(
    name: str, options: dict[str, Any], expected: object
) -> None:
    """Valid options (coerced like config values) give the same value as direct construction."""
    built = build(name, options)
    assert built == expected
    assert built.name == name
    hash(built)  # frozen value objects, usable as dict keys


def test_options_schema_is_a_closed_json_schema_with_defaults() -> None:
    """The config JSON Schema forbids unknown options and documents each one."""
    schema = options_schema("json")
    assert schema["type"] == "object"
    assert schema["additionalProperties"] is False
    assert schema["properties"]["abs_tol"]["default"] == 0.0
    assert schema["properties"]["ignore"]["type"] == "array"
    assert "description" in schema["properties"]["ignore"]
    assert "name" not in schema["properties"]
    assert options_schema("headers")["required"] == ["names"]


@pytest.fixture
def scratch_registry(monkeypatch: pytest.MonkeyPatch) -> None:
    """Registrations made by a test disappear after it."""
    monkeypatch.setattr(registry, "_REGISTRY", dict(registry._REGISTRY))


@pytest.mark.usefixtures("scratch_registry")
def test_register_adds_a_third_party_comparator_that_forbids_unknown_options() -> None:
    """A registered dataclass is buildable by name, and extra options are rejected by default."""

    @register
    @dataclass(frozen=True)
    class Always:
        name: ClassVar[str] = "test-always"
        verdict: Verdict = Verdict.MATCH

        def __call__(self, legacy: Sample, agent: Sample) -> Result:
            return Result(self.name, self.verdict, 1.0)

    assert "test-always" in known()
    assert build("test-always", {"verdict": "mismatch"}) == Always(Verdict.MISMATCH)
    with pytest.raises(InvalidComparatorOptionsError, match="test-always: extra"):
        build("test-always", {"extra": 1})


@pytest.mark.usefixtures("scratch_registry")
def test_register_refuses_a_taken_name_and_classes_without_one() -> None:
    """Name clashes and nameless classes fail loudly at import time."""

    @dataclass(frozen=True)
    class Clash:
        name: ClassVar[str] = "json"

        def __call__(self, legacy: Sample, agent: Sample) -> Result:
            raise NotImplementedError

    with pytest.raises(ValueError, match="already taken"):
        register(Clash)

    class Nameless:
        def __call__(self, legacy: Sample, agent: Sample) -> Result:
            raise NotImplementedError

    with pytest.raises(TypeError, match="name"):
        register(Nameless)  # type: ignore[type-var]
