"""The json comparator: structural diff, tolerances, ignores, unordered arrays, scoring."""

from __future__ import annotations

import tracemalloc
from typing import Any

import orjson
import pytest

from comparators import Difference, DiffKind, JsonComparator, Result, Sample, Verdict
from comparators.json_body import LARGE
from comparators.treediff import MAX_PAIRING

C, M, X, T = DiffKind.CHANGED, DiffKind.MISSING, DiffKind.EXTRA, DiffKind.TYPE


def run(legacy: Any, agent: Any, **options: Any) -> Result:
    """Compare two documents (given as Python values) with the given options."""
    comparator = JsonComparator(**options)
    return comparator(Sample(200, body=orjson.dumps(legacy)), Sample(200, body=orjson.dumps(agent)))


def diffs(result: Result) -> list[tuple[str, DiffKind, Any, Any]]:
    return [(d.path, d.kind, d.legacy, d.agent) for d in result.differences]


@pytest.mark.parametrize(
    ("legacy", "agent", "expected"),
    [
        ({"a": 1}, {"a": 1}, []),
        ({"a": 1}, {"a": 1.0}, []),
        ({"a": 1}, {"a": 2}, [("$.a", C, 1, 2)]),
        ({"a": True}, {"a": 1}, [("$.a", T, True, 1)]),
        ({"a": 0}, {"a": False}, [("$.a", T, 0, False)]),
        ({"a": None}, {"a": "null"}, [("$.a", T, None, "null")]),
        ({"a": "x"}, {"a": "y"}, [("$.a", C, "x", "y")]),
        ({"a": 1, "b": 2}, {"a": 1}, [("$.b", M, 2, None)]),
        ({"a": 1}, {"a": 1, "c": [3]}, [("$.c", X, None, [3])]),
        ({"a": {"b": 1}}, {"a": [1]}, [("$.a", T, {"b": 1}, [1])]),
        ([1, 2, 3], [1, 2], [("$[2]", M, 3, None)]),
        ([1], [1, 2], [("$[1]", X, None, 2)]),
        ([1, 2], [2, 1], [("$[0]", C, 1, 2), ("$[1]", C, 2, 1)]),
        ({"a b": [{"c": 1}]}, {"a b": [{"c": 2}]}, [('$["a b"][0].c', C, 1, 2)]),
        ("x", "x", []),
        (1, "1", [("$", T, 1, "1")]),
        ({}, {}, []),
        ([], [], []),
        ({}, [], [("$", T, {}, [])]),
    ],
)
def test_structural_differences_have_a_path_a_kind_and_both_values(
    legacy: Any, agent: Any, expected: list[tuple[str, DiffKind, Any, Any]]
) -> None:
    """Differences come in document order; bool is never a number; 1 equals 1.0."""
    result = run(legacy, agent)
    assert diffs(result) == expected
    assert result.verdict is (Verdict.MISMATCH if expected else Verdict.MATCH)


@pytest.mark.parametrize(
    ("options", "legacy", "agent", "equal"),
    [
        ({}, 1.0, 1.0000001, False),
        ({"abs_tol": 0.01}, 1.0, 1.005, True),
        ({"abs_tol": 0.01}, 1.0, 1.02, False),
        ({"rel_tol": 0.1}, 100, 109, True),
        ({"rel_tol": 0.1}, 100, 112, False),
        ({"abs_tol": 1}, True, False, False),
        ({"abs_tol": 1}, 2**64 - 1, 2**64 - 2, True),
    ],
)
def test_numbers_are_equal_within_the_tolerances(
    options: dict[str, Any], legacy: Any, agent: Any, equal: bool
) -> None:
    """abs_tol and rel_tol follow math.isclose; booleans get no tolerance."""
    assert run({"n": legacy}, {"n": agent}, **options).verdict is (
        Verdict.MATCH if equal else Verdict.MISMATCH
    )


@pytest.mark.parametrize(
    ("ignore", "legacy", "agent", "expected"),
    [
        (["$.ts"], {"ts": 1, "a": 1}, {"ts": 2, "a": 1}, []),
        (["$.ts"], {"ts": 1}, {}, []),
        (["$.meta"], {"meta": {"a": 1}}, {"meta": [1, 2]}, []),
        (
            ["$..id"],
            {"a": [{"id": 1, "v": 1}]},
            {"a": [{"id": 2, "v": 2}]},
            [("$.a[0].v", C, 1, 2)],
        ),
        (
            ["$.items[*].id"],
            {"items": [{"id": 1}]},
            {"items": [{"id": 2}, {"id": 3}]},
            [("$.items[1]", X, None, {"id": 3})],
        ),
        (["$[1]"], [1, 2], [1], []),
        (["$"], {"a": 1}, [2], []),
        (["$.*"], {"a": 1}, {"b": 2}, []),
    ],
)
def test_ignored_nodes_and_their_subtrees_never_show_up(
    ignore: list[str], legacy: Any, agent: Any, expected: list[tuple[str, DiffKind, Any, Any]]
) -> None:
    """An ignored path is never compared, whatever it holds on either side."""
    assert diffs(run(legacy, agent, ignore=tuple(ignore))) == expected


@pytest.mark.parametrize(
    ("options", "legacy", "agent", "expected"),
    [
        ({"unordered_arrays": True}, [1, 2, 3], [3, 1, 2], []),
        (
            {"unordered_arrays": True},
            [1, 1, 2],
            [1, 2, 2],
            [("$[1]", M, 1, None), ("$[1]", X, None, 2)],
        ),
        ({"unordered_arrays": True}, [{"a": [1, 2]}], [{"a": [2, 1]}], []),
        ({"unordered_arrays": True, "abs_tol": 0.1}, [1.0, 2.0], [2.05, 0.95], []),
        (
            {"unordered_arrays": True, "ignore": ("$[*].ts",)},
            [{"v": 1, "ts": 1}],
            [{"v": 1, "ts": 2}],
            [],
        ),
        (
            {"unordered_paths": ("$.tags",)},
            {"tags": ["a", "b"], "o": [1, 2]},
            {"tags": ["b", "a"], "o": [2, 1]},
            [("$.o[0]", C, 1, 2), ("$.o[1]", C, 2, 1)],
        ),
        ({"unordered_paths": ("$..tags",)}, {"x": {"tags": [1, 2]}}, {"x": {"tags": [2, 1]}}, []),
        ({"unordered_arrays": True}, [], [], []),
        ({"unordered_arrays": True}, [1], [], [("$[0]", M, 1, None)]),
    ],
)
def test_unordered_arrays_compare_as_multisets(
    options: dict[str, Any], legacy: Any, agent: Any, expected: list[tuple[str, DiffKind, Any, Any]]
) -> None:
    """Unpaired legacy elements are missing at their index, unpaired agent ones extra at theirs."""
    assert diffs(run(legacy, agent, **options)) == expected


def test_large_unordered_arrays_fall_back_to_canonical_multisets() -> None:
    """Beyond the pairing limit, elements pair by canonical JSON (key order does not matter)."""
    legacy = [{"a": i, "b": -i} for i in range(MAX_PAIRING + 50)]
    agent = [{"b": -i, "a": i} for i in reversed(range(1, MAX_PAIRING + 50))] + [{"a": "new"}]
    result = run(legacy, agent, unordered_arrays=True)
    assert diffs(result) == [("$[0]", M, {"a": 0, "b": 0}, None), ("$[305]", X, None, {"a": "new"})]


@pytest.mark.parametrize(
    ("legacy", "agent", "score"),
    [
        ({"a": 1, "b": 2, "c": 3, "d": 4}, {"a": 1, "b": 2, "c": 3, "d": 5}, 0.75),
        ({"a": 1}, {"a": 1, "x": {"p": 1, "q": [1, 2]}}, 0.25),
        ({"a": {"b": 1, "c": 2}}, {"a": 5}, 0.0),
        ({"a": [], "b": 1}, {"a": [], "b": 2}, 0.5),
        ({"a": {}, "b": {}}, {"a": {}, "b": []}, 0.5),
        ([1, 2, 3, 4], [1, 2, 3], 0.75),
    ],
)
def test_score_is_the_share_of_agreeing_leaves(legacy: Any, agent: Any, score: float) -> None:
    """Leaves count over both trees; a missing subtree counts all its leaves; {} is one leaf."""
    assert run(legacy, agent).score == pytest.approx(score)


def test_max_differences_keeps_the_first_ones_and_says_how_many_were_cut() -> None:
    """Only the first N differences are kept, but all of them count in the score."""
    result = run(list(range(10)), list(range(1, 11)), max_differences=3)
    assert [d.path for d in result.differences] == ["$[0]", "$[1]", "$[2]"]
    assert "10 differences" in result.reason and "7 not listed" in result.reason
    assert result.score == 0.0


@pytest.mark.parametrize(
    ("legacy", "agent", "verdict"),
    [
        (b"", b"", Verdict.SKIPPED),
        (b"  ", b"{}", Verdict.SKIPPED),
        (b"<html>", b"{}", Verdict.SKIPPED),
        (b"\xff", b"{}", Verdict.SKIPPED),
        (b"{}", b"", Verdict.MISMATCH),
        (b"{}", b"{", Verdict.MISMATCH),
        (b"[1]", b"[1] trailing", Verdict.MISMATCH),
    ],
)
def test_unparsable_bodies_skip_for_legacy_and_mismatch_for_agent(
    legacy: bytes, agent: bytes, verdict: Verdict
) -> None:
    """Legacy is the reference: no legacy JSON, no verdict; no agent JSON, a type mismatch."""
    result = JsonComparator()(Sample(200, body=legacy), Sample(200, body=agent))
    assert result.verdict is verdict
    assert result.reason
    if verdict is Verdict.MISMATCH:
        (diff,) = result.differences
        assert (diff.path, diff.kind, result.score) == ("$", DiffKind.TYPE, 0.0)
        assert diff.agent.startswith("<invalid JSON: ")


def test_deeply_nested_documents_are_compared_without_recursion() -> None:
    """Documents as deep as the parser allows are diffed (the walk is iterative)."""
    deep = b"[" * 1000 + b"1" + b"]" * 1000
    other = b"[" * 1000 + b"2" + b"]" * 1000
    result = JsonComparator()(Sample(200, body=deep), Sample(200, body=other))
    assert result.verdict is Verdict.MISMATCH
    assert result.differences[0].path == "$" + "[0]" * 1000


def test_deep_nested_unordered_arrays_are_an_error_result_not_an_exception() -> None:
    """The one recursive case (unordered inside unordered, ~1000 deep) reports an error."""
    deep = b"[" * 1000 + b"1" + b"]" * 1000
    other = b"[" * 1000 + b"2" + b"]" * 1000
    result = JsonComparator(unordered_arrays=True)(Sample(200, body=deep), Sample(200, body=other))
    assert result.verdict in (Verdict.ERROR, Verdict.MISMATCH)


def test_differences_are_difference_objects() -> None:
    """The json comparator speaks the shared contract types."""
    assert run({"a": 1}, {"a": 2}).differences == (Difference("$.a", C, 1, 2),)


@pytest.mark.parametrize(
    ("legacy", "agent"),
    [
        (b'{"a":1,"b":[true,{"c":null}]}', b'{"b": [true, {"c": null}], "a": 1}'),
        (b'{"a":1}', b'{"a":1}'),
    ],
)
def test_equal_documents_match_whole_in_any_key_order_or_spacing(
    legacy: bytes, agent: bytes
) -> None:
    result = JsonComparator()(Sample(200, body=legacy), Sample(200, body=agent))
    assert (result.verdict, result.score, result.differences) == (Verdict.MATCH, 1.0, ())


@pytest.mark.parametrize(
    ("legacy", "agent"),
    [(b'{"a":[1,true]}', b'{"a":[true,1]}'), (b'{"a":{"b":1}}', b'{"a":{"b":true}}')],
)
def test_values_python_calls_equal_but_json_does_not_are_still_told_apart(
    legacy: bytes, agent: bytes
) -> None:
    """Python's ``True == 1`` must not let the fast path call these the same."""
    result = JsonComparator()(Sample(200, body=legacy), Sample(200, body=agent))
    assert result.verdict is Verdict.MISMATCH


def _large(doc: Any) -> Any:
    """``doc`` beside a filler that takes its JSON past the large-document size."""
    return {"filler": ["x" * 64] * (LARGE // 64), "doc": doc}


@pytest.mark.parametrize(
    ("legacy", "agent"),
    [
        ({"a": 1, "b": [True, None]}, {"b": [True, None], "a": 1}),
        ({"a": 1}, {"a": 1.0}),
        ({"a": [1, True]}, {"a": [True, 1]}),
        ({"a": True}, {"a": 1}),
        ({"a": "x", "b": 2}, {"a": "y"}),
    ],
)
def test_large_documents_get_the_same_verdicts_as_small_ones(legacy: Any, agent: Any) -> None:
    """Past the large size the documents are parsed another way and matched by
    their canonical bytes, one at a time; what differs is still walked and named."""
    small = run(legacy, agent)
    large = run(_large(legacy), _large(agent))
    assert len(orjson.dumps(_large(legacy))) > LARGE
    assert large.verdict is small.verdict
    assert diffs(large) == [(f"$.doc{p[1:]}", k, a, b) for p, k, a, b in diffs(small)]


@pytest.mark.parametrize("bad", [b"NaN", b"-Infinity", b"1e400"])
def test_large_legacy_answers_follow_the_same_json_rules(bad: bytes) -> None:
    """No NaN, no Infinity, no number past a double's range, large or small."""
    body = orjson.dumps(_large(None)).replace(b'"doc":null', b'"doc":' + bad)
    for size in (body, b'{"doc":' + bad + b"}"):
        result = JsonComparator()(Sample(200, body=size), Sample(200, body=b"{}"))
        assert result.verdict is Verdict.SKIPPED
        assert result.reason.startswith("legacy body is not JSON")


def test_a_large_document_deeper_than_the_stdlib_parser_goes_is_still_compared() -> None:
    deep = b"[" * 1000 + b"1" + b"]" * 1000
    body = b'{"filler":"' + b"x" * LARGE + b'","doc":' + deep + b"}"
    other = body.replace(b"[1]", b"[2]")
    result = JsonComparator()(Sample(200, body=body), Sample(200, body=other))
    assert result.verdict is Verdict.MISMATCH
    assert result.differences[0].path == "$.doc" + "[0]" * 1000


def test_a_large_legacy_answer_against_invalid_agent_json_is_a_type_mismatch() -> None:
    body = orjson.dumps(_large({"a": 1}))
    result = JsonComparator()(Sample(200, body=body), Sample(200, body=body[:-1]))
    (diff,) = result.differences
    assert (result.verdict, diff.path, diff.kind) == (Verdict.MISMATCH, "$", DiffKind.TYPE)
    assert diff.agent.startswith("<invalid JSON: ")


def test_comparing_two_large_answers_costs_about_one_parsed_tree_of_memory() -> None:
    """Not two trees, and not orjson's document model (about ten times the
    body) on top: agreeing 1 MB answers peak below two trees (one, plus the
    text and the canonical bytes of both)."""
    doc = {"items": [{"id": i, "name": f"item {i}", "tags": ["a", "b"]} for i in range(20000)]}
    legacy = orjson.dumps(doc)
    agent = orjson.dumps(doc, option=orjson.OPT_SORT_KEYS | orjson.OPT_INDENT_2)
    tracemalloc.start()
    try:
        tree = orjson.loads(legacy)
        one_tree = tracemalloc.get_traced_memory()[0]
        del tree
        tracemalloc.reset_peak()
        result = JsonComparator()(Sample(200, body=legacy), Sample(200, body=agent))
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert result.verdict is Verdict.MATCH
    assert peak < 2 * one_tree, (peak, one_tree)
