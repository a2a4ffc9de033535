"""Properties of the comparators over generated answers: the json comparator's
diff (identity, ignores, bounds), then every registered comparator with its options
on any pair of answers, compare() on any set of them, and decoded() bodies."""

from __future__ import annotations

import gzip
import zlib
from typing import Any

import orjson
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from comparators import (
    Comparator,
    Comparison,
    Difference,
    JsonComparator,
    Result,
    Sample,
    Verdict,
    build,
    compare,
    known,
)
from comparators.paths import compile_path, format_path
from proxy.judgement import decoded
from proxy.types import Observation

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


# Every registered comparator, every option it has, on any pair of answers.

paths = st.sampled_from(["$", "$.a", "$.b[0]", "$..id", "$[*]", "$.*", "$['x y']"])
concrete = st.sampled_from(["$.a", "$.b[0]", "$['x y']", "$"])
# Waiting on a model or an LLM: fuzzed in their own files (test_comparators_async, test_judge).
ASYNC = {"semantic", "judge"}
OPTIONS: dict[str, st.SearchStrategy[dict[str, Any]]] = {
    "exact": st.just({}),
    "status": st.fixed_dictionaries({}, optional={"same_class": st.booleans()}),
    "headers": st.fixed_dictionaries(
        {"names": st.lists(st.sampled_from(["Content-Type", "etag", "X-A", ""]), max_size=3)}
    ),
    "json": st.fixed_dictionaries(
        {},
        optional={
            "ignore": st.lists(paths, max_size=2),
            "abs_tol": st.floats(0, allow_nan=False),
            "rel_tol": st.floats(0, allow_nan=False),
            "unordered_arrays": st.booleans(),
            "unordered_paths": st.lists(paths, max_size=2),
            "max_differences": st.integers(0, 3),
        },
    ),
    "text": st.fixed_dictionaries(
        {},
        optional={"threshold": st.floats(0, 1), "path": concrete, "normalize": st.booleans()},
    ),
    "tool_calls": st.fixed_dictionaries(
        {},
        optional={
            "order": st.sampled_from(["set", "sequence"]),
            "arguments": st.sampled_from(["exact", "subset", "ignore"]),
            "ignore_arguments": st.lists(paths, max_size=2),
            "ignore_tools": st.lists(st.sampled_from(["a", "x"]), max_size=2),
            "max_differences": st.integers(0, 5),
        },
    ),
    "quorum": st.fixed_dictionaries(
        {},
        optional={
            "samples": st.integers(2, 16),
            "field": st.none() | concrete,
            "normalize": st.lists(
                st.sampled_from(["case", "whitespace", "punctuation", "numbers"]), max_size=4
            ),
            "min_confidence": st.floats(0, 1),
        },
    ),
}
comparators = st.sampled_from(sorted(OPTIONS)).flatmap(
    lambda name: OPTIONS[name].map(lambda opts: build(name, opts))
)
ODD_BODIES = [
    b"", b" ", b"null", b"NaN", b"Infinity", b"-Infinity", b'{"a": NaN}', b"1e400", b"-1e-400",
    b'{"a": 123456789012345678901234567890}', b"9" * 400, b'"\\ud800"', b"\xef\xbb\xbf{}",
    '{"a": "ü"}'.encode("utf-16"), b"[" * 1023 + b"]" * 1023, b"[" * 5000 + b"]" * 5000,
    b'{"a":' * 600 + b"1" + b"}" * 600, b'{"a": 1, "a": 2}', b"\x1f\x8b\x08\x00garbage",
    b'"\xed\xa0\x80"', b"\xff\xfe", b'{"a": "\x00\x1b[31m"}',
]  # fmt: skip
bodies = (
    st.sampled_from(ODD_BODIES)
    | documents.map(orjson.dumps)
    | st.binary(max_size=40)
    | st.text(max_size=20).map(str.encode)
)
headers = st.dictionaries(
    st.sampled_from(["content-type", "etag", "x-a", "content-encoding"]),
    st.sampled_from(["application/json", "text/html; charset=latin-1", "gzip", "", "ü"]),
    max_size=3,
)
samples = st.builds(Sample, st.integers(0, 999) | st.integers(), headers, bodies)


def sound(result: Result) -> None:
    """A verdict the proxy can count: bounded score, a Difference per reported field."""
    assert isinstance(result, Result)
    assert 0.0 <= result.score <= 1.0
    assert all(isinstance(d, Difference) for d in result.differences)
    if result.verdict is Verdict.ERROR:  # the one error a comparator may report itself
        assert result.reason.startswith("document too deeply nested"), result.reason


def test_every_registered_comparator_is_fuzzed() -> None:
    """A comparator registered later must get an options strategy here too."""
    assert sorted(OPTIONS) == sorted(set(known()) - ASYNC)


@settings(PROFILE, max_examples=300, suppress_health_check=[HealthCheck.too_slow])
@given(comparators, samples, samples)
def test_any_comparator_on_any_pair_gives_a_sound_result(
    comparator: Comparator, legacy: Sample, agent: Sample
) -> None:
    """Called directly (no safety net), any comparator with any options on any two
    answers (deep, huge, NaN-like, non-UTF-8 bodies; odd statuses) returns a Result."""
    sound(comparator(legacy, agent))


@settings(PROFILE, max_examples=200, suppress_health_check=[HealthCheck.too_slow])
@given(comparators, samples)
def test_any_answer_agrees_with_itself(comparator: Comparator, answer: Sample) -> None:
    """Identity: an answer compared with itself matches with score 1, or is skipped
    (legacy not JSON, a text field absent), never a mismatch."""
    result = comparator(answer, answer)
    assert result.verdict in (Verdict.MATCH, Verdict.SKIPPED), result
    assert result.verdict is not Verdict.MATCH or result.score == 1.0


SYMMETRIC = {"exact", "status", "headers"}


@settings(PROFILE, max_examples=200, suppress_health_check=[HealthCheck.too_slow])
@given(
    comparators.filter(lambda c: c.name in SYMMETRIC or getattr(c, "path", "") is None),
    samples,
    samples,
)
def test_comparators_without_a_reference_side_are_symmetric(
    comparator: Comparator, a: Sample, b: Sample
) -> None:
    """exact, status, headers and whole-body text judge a pair the same either way round."""
    one, other = comparator(a, b), comparator(b, a)
    assert (one.verdict, one.score) == (other.verdict, other.score)


@settings(PROFILE, max_examples=200, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(comparators, max_size=4), samples, samples)
def test_compare_folds_any_comparators_into_one_comparison(
    chosen: list[Comparator], legacy: Sample, agent: Sample
) -> None:
    """compare() on any set of comparators gives one Comparison: a result per comparator,
    a bounded score, and the worst verdict (no comparators: skipped)."""
    comparison = compare(chosen, legacy, agent)
    assert isinstance(comparison, Comparison)
    assert len(comparison.results) == len(chosen)
    assert 0.0 <= comparison.score <= 1.0
    verdicts = {r.verdict for r in comparison.results}
    worst = next(
        (v for v in (Verdict.ERROR, Verdict.MISMATCH, Verdict.MATCH) if v in verdicts), None
    )
    assert comparison.verdict is (worst or Verdict.SKIPPED)


def _truncated(data: bytes) -> bytes:
    return gzip.compress(data)[:-8]  # the stream ends before its trailer


ENCODINGS = ["gzip", "x-gzip", "deflate", "GZIP ", "br", "compress", "gzip, br", "identity", ""]
INFLATABLE = {"gzip": gzip.compress, "x-gzip": gzip.compress, "deflate": zlib.compress}
EVERY = [
    build(n, {"names": ["content-type"]} if n == "headers" else {})
    for n in known()
    if n not in ASYNC
]


@settings(PROFILE, max_examples=200, suppress_health_check=[HealthCheck.too_slow])
@given(
    st.sampled_from(ENCODINGS), st.sampled_from([*INFLATABLE.values(), _truncated, bytes]), bodies
)
def test_a_declared_encoding_is_undone_or_the_pair_is_skipped(
    encoding: str, encode: Any, body: bytes
) -> None:
    """Whatever Content-Encoding claims (gzip over plain bytes, truncated gzip, br), the
    body inflates to exactly what was compressed, or decoded() says why it is skipped;
    what it returns goes through every comparator without an error."""
    sent = encode(body)
    observation = Observation("agent", 200, {"content-encoding": encoding}, sent)
    plain = decoded(observation)
    name = encoding.strip().lower()
    if name in ("", "identity") or not sent:
        assert plain is observation
    elif encode is INFLATABLE.get(name):
        assert not isinstance(plain, str) and plain.body == body
    else:  # the bytes are not what the header claims, or not an encoding we undo
        assert isinstance(plain, str) and plain.startswith("agent body "), plain
        return
    comparison = compare(EVERY, plain.sample(), plain.sample())
    assert comparison.verdict in (Verdict.MATCH, Verdict.SKIPPED), comparison
