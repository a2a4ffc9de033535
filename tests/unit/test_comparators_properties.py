"""Properties of the json comparator over generated documents."""

from __future__ import annotations

from typing import Any

import orjson
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from comparators import JsonComparator, Sample, Verdict
from comparators.paths import compile_path, format_path

# No example database: tests must not write into the source tree.
settings.register_profile("comparators", database=None, deadline=None, max_examples=200)
PROFILE = settings.get_profile("comparators")

keys = st.sampled_from(["a", "b", "id", "x y", "0", ""])
scalars = (
    st.none()
    | st.booleans()
    | st.integers(-(2**63), 2**64 - 1)
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=5)
)
documents = st.recursive(
    scalars,
    lambda children: st.lists(children, max_size=4) | st.dictionaries(keys, children, max_size=4),
    max_leaves=25,
)
options = st.fixed_dictionaries(
    {},
    optional={
        "abs_tol": st.floats(0, 10),
        "rel_tol": st.floats(0, 1),
        "unordered_arrays": st.booleans(),
        "unordered_paths": st.just(("$..a", "$[*]")),
        "max_differences": st.integers(0, 5),
    },
)


def sample(doc: Any) -> Sample:
    return Sample(200, body=orjson.dumps(doc))


def concrete_paths(doc: Any, prefix: tuple[str | int, ...] = ()) -> list[tuple[str | int, ...]]:
    """Every concrete path in a document, root first."""
    paths = [prefix]
    if isinstance(doc, dict):
        for k, v in doc.items():
            paths += concrete_paths(v, (*prefix, k))
    elif isinstance(doc, list):
        for i, v in enumerate(doc):
            paths += concrete_paths(v, (*prefix, i))
    return paths


def as_pattern(path: tuple[str | int, ...], wildcard: int) -> str:
    """A pattern for a path, with some segments generalised, drawn from the doc itself."""
    if wildcard == 1 and path:
        return "$.." + format_path(path[-1:])[1:].lstrip(".")
    if wildcard == 2 and path:
        return format_path(path[:-1]) + "[*]"
    return format_path(path)


@PROFILE
@given(documents, options)
def test_any_document_diffed_with_itself_is_a_match(doc: Any, opts: dict[str, Any]) -> None:
    """Identity: a document always agrees with itself, with score 1 and no differences."""
    result = JsonComparator(**opts)(sample(doc), sample(doc))
    assert (result.verdict, result.score, result.differences) == (Verdict.MATCH, 1.0, ())


@st.composite
def docs_with_ignores(draw: st.DrawFn) -> tuple[Any, Any, tuple[str, ...]]:
    legacy, agent = draw(documents), draw(documents)
    paths = concrete_paths(legacy) + concrete_paths(agent)
    chosen = draw(st.lists(st.sampled_from(paths), max_size=3))
    ignore = tuple(as_pattern(p, draw(st.integers(0, 2))) for p in chosen)
    return legacy, agent, ignore


@PROFILE
@given(docs_with_ignores(), st.booleans())
def test_differences_never_fall_under_an_ignored_path(
    case: tuple[Any, Any, tuple[str, ...]], unordered: bool
) -> None:
    """No difference is at, or inside, a path matched by an ignore pattern."""
    legacy, agent, ignore = case
    result = JsonComparator(ignore=ignore, unordered_arrays=unordered, max_differences=1000)(
        sample(legacy), sample(agent)
    )
    patterns = [compile_path(p) for p in ignore]
    for diff in result.differences:
        path = compile_path(diff.path).concrete
        for depth in range(len(path) + 1):
            assert not any(p.matches(path[:depth]) for p in patterns), (diff.path, ignore)


@settings(PROFILE, max_examples=500, suppress_health_check=[HealthCheck.too_slow])
@given(st.binary(max_size=64) | documents.map(orjson.dumps), st.binary(max_size=64), options)
def test_json_comparator_never_raises_and_scores_within_bounds(
    legacy: bytes, agent: bytes, opts: dict[str, Any]
) -> None:
    """Arbitrary bytes give a result, never an exception, and the score stays in [0, 1]."""
    result = JsonComparator(**opts)(Sample(200, body=legacy), Sample(200, body=agent))
    assert 0.0 <= result.score <= 1.0
    assert result.verdict is not Verdict.ERROR


@PROFILE
@given(documents, documents, options)
def test_score_is_within_bounds_and_one_only_for_a_match(
    legacy: Any, agent: Any, opts: dict[str, Any]
) -> None:
    """Any two documents score in [0, 1]; a match scores exactly 1 and a mismatch less."""
    result = JsonComparator(**opts)(sample(legacy), sample(agent))
    assert 0.0 <= result.score <= 1.0
    assert (result.verdict is Verdict.MATCH) == (result.score == 1.0)
    assert (result.verdict is Verdict.MATCH) == (not result.differences) or opts.get(
        "max_differences"
    ) == 0
