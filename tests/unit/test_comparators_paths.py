"""Path patterns: parsing, matching concrete paths, formatting, generalising, lookup."""

from __future__ import annotations

from typing import Any

import pytest

from comparators.paths import PathSet, compile_path, format_path, generalize, get


@pytest.mark.parametrize(
    ("text", "canonical"),
    [
        ("$", "$"),
        ("$.a.b", "$.a.b"),
        ("$['a b']", '$["a b"]'),
        ('$["a"]', "$.a"),
        ("$[0][12]", "$[0][12]"),
        ("$.*", "$[*]"),
        ("$[*].id", "$[*].id"),
        ("$..id", "$..id"),
        ("$..['a.b']", '$..["a.b"]'),
        ("$..[*]", "$..[*]"),
        ("$.user-id", "$.user-id"),
        ("  $.a  ", "$.a"),
        (r"$['it\'s']", '$["it\'s"]'),
        (r'$["say \"hi\""]', r'$["say \"hi\""]'),
        ("$['*']", '$["*"]'),
    ],
)
def test_compile_path_accepts_the_grammar_and_prints_a_canonical_form(
    text: str, canonical: str
) -> None:
    """Every supported form parses, and its canonical text parses back to the same pattern."""
    pattern = compile_path(text)
    assert pattern.text == canonical
    assert compile_path(canonical) == pattern


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("a.b", "starts with '$'"),
        ("", "starts with '$'"),
        ("$.", "expected a key or '*' after '.'"),
        ("$..", "expected a key or '*' after '..'"),
        ("$...a", "expected a key or '*' after '..'"),
        ("$[", "expected a quoted key, an index or '*'"),
        ("$[0", "expected ']'"),
        ("$[x]", "expected a quoted key, an index or '*'"),
        ("$[-1]", "negative indices are not supported"),
        ("$['a", "unterminated quoted key"),
        ("$.0", "write [0] for an index"),
        ("$ .a", "unexpected ' '"),
        ("$a", "unexpected 'a'"),
    ],
)
def test_compile_path_rejects_bad_syntax_with_a_message_saying_why(text: str, message: str) -> None:
    """Bad syntax raises ValueError naming the path, the position and what was expected."""
    with pytest.raises(ValueError, match="bad path") as info:
        compile_path(text)
    assert message in str(info.value)


@pytest.mark.parametrize("text", ["$.*", "$..a", "$[*]", "$.a[*].b"])
def test_concrete_compile_rejects_wildcards(text: str) -> None:
    """Where one exact path is needed, '*' and '..' are syntax errors."""
    with pytest.raises(ValueError, match="wildcards"):
        compile_path(text, concrete=True)


@pytest.mark.parametrize(
    ("pattern", "path", "expected"),
    [
        ("$", (), True),
        ("$", ("a",), False),
        ("$.a", ("a",), True),
        ("$.a", ("a", "b"), False),
        ("$.a", ("b",), False),
        ("$[0]", (0,), True),
        ("$[0]", ("0",), False),
        ("$['0']", (0,), False),
        ("$.*", ("x",), True),
        ("$.*", (3,), True),
        ("$.*", (), False),
        ("$[*].id", (2, "id"), True),
        ("$[*].id", (2, "id", "x"), False),
        ("$..id", ("id",), True),
        ("$..id", ("a", 0, "b", "id"), True),
        ("$..id", ("id", "x"), False),
        ("$..id", (), False),
        ("$.a..b.c", ("a", "b", "c"), True),
        ("$.a..b.c", ("a", "x", "b", "b", "c"), True),
        ("$.a..b.c", ("a", "b", "c", "d"), False),
        ("$..[*]", (1, "a"), True),
        ("$..a..a", ("a", "a"), True),
        ("$..a..a", ("a",), False),
    ],
)
def test_pattern_matches_exactly_the_concrete_paths_it_describes(
    pattern: str, path: tuple[str | int, ...], expected: bool
) -> None:
    """A pattern matches a whole concrete path, never a prefix; keys and indices never mix."""
    assert compile_path(pattern).matches(path) is expected


def test_path_set_matches_if_any_pattern_does() -> None:
    """A PathSet is the union of its patterns, and an empty set matches nothing."""
    paths = PathSet([compile_path("$.a"), compile_path("$..id")])
    assert paths.matches(("a",))
    assert paths.matches(("x", 0, "id"))
    assert not paths.matches(("b",))
    assert not PathSet([]).matches(())


@pytest.mark.parametrize(
    ("path", "text"),
    [
        ((), "$"),
        (("a", 0, "b"), "$.a[0].b"),
        (("a b",), '$["a b"]'),
        (("0",), '$["0"]'),
        (("*",), '$["*"]'),
        (("",), '$[""]'),
        (('q"uote',), r'$["q\"uote"]'),
        (("é",), '$["é"]'),
        (("snake_case", "kebab-case"), "$.snake_case.kebab-case"),
    ],
)
def test_format_path_quotes_keys_that_are_not_identifiers(
    path: tuple[str | int, ...], text: str
) -> None:
    """Formatted paths are readable and parse back to the same concrete path."""
    assert format_path(path) == text
    assert compile_path(text).concrete == path


@pytest.mark.parametrize(
    ("text", "general"),
    [
        ("$.items[3].price", "$.items[*].price"),
        ("$[0][1]", "$[*][*]"),
        ('$["a[0]"]', '$["a[0]"]'),
        ("$.a", "$.a"),
        ("status", "status"),
        ("headers.content-type", "headers.content-type"),
        ("body", "body"),
    ],
)
def test_generalize_replaces_indices_only(text: str, general: str) -> None:
    """Indices become [*] for low-cardinality labels; keys and non-$ paths stay as they are."""
    assert generalize(text) == general


@pytest.mark.parametrize(
    ("doc", "path", "value"),
    [
        ({"a": [1, {"b": "x"}]}, "$.a[1].b", "x"),
        ({"a": None}, "$.a", None),
        ([5], "$[0]", 5),
        ({"a": 1}, "$", {"a": 1}),
    ],
)
def test_get_returns_the_value_at_a_concrete_path(doc: Any, path: str, value: Any) -> None:
    """get() walks keys and indices of a parsed document."""
    assert get(doc, path) == value


@pytest.mark.parametrize(
    ("doc", "path"),
    [
        ({"a": 1}, "$.b"),
        ({"a": [1]}, "$.a[1]"),
        ({"a": "text"}, "$.a[0]"),
        ({"a": 1}, "$.a.b"),
        ([1], "$.a"),
        ({"0": 1}, "$[0]"),
    ],
)
def test_get_raises_key_error_when_the_path_is_absent(doc: Any, path: str) -> None:
    """An absent path (or one through the wrong type) is a KeyError naming the path."""
    with pytest.raises(KeyError, match=r"\$"):
        get(doc, path)


def test_get_refuses_wildcards() -> None:
    """get() needs one exact path; a wildcard pattern is a ValueError."""
    with pytest.raises(ValueError, match="wildcards"):
        get({"a": 1}, compile_path("$.*"))
