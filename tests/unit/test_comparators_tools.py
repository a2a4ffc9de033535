"""The tool_calls comparator: which tools the two answers called, and with what arguments."""

from __future__ import annotations

from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from comparators import (
    Difference,
    DiffKind,
    InvalidComparatorOptionsError,
    Sample,
    Verdict,
    build,
    options_schema,
)
from comparators.tool_calls import MAX_CHECKS, ToolCallsComparator
from comparators.types import ToolCall

settings.register_profile("tool_calls", database=None, deadline=None, max_examples=300)
PROFILE = settings.get_profile("tool_calls")


def call(name: str, arguments: Any = None, *, valid: bool = True) -> ToolCall:
    return ToolCall(name, arguments, valid)


def calls(*tool_calls: ToolCall) -> Sample:
    return Sample(200, body=b"{}", tool_calls=tool_calls)


W_PARIS = call("weather", {"city": "Paris"})
W_ROME = call("weather", {"city": "Rome"})
SEARCH = call("search", {"q": "news"})
BROKEN = call("weather", '{"city": "Par', valid=False)


@pytest.mark.parametrize(
    ("options", "legacy", "agent", "verdict", "score", "diffs"),
    [
        pytest.param({}, (), (), Verdict.MATCH, 1.0, (), id="no-calls-on-either-side"),
        pytest.param({}, (W_PARIS, SEARCH), (SEARCH, W_PARIS), Verdict.MATCH, 1.0, (), id="set"),
        pytest.param(
            {"order": "sequence"},
            (W_PARIS, SEARCH),
            (SEARCH, W_PARIS),
            Verdict.MISMATCH,
            0.0,
            (
                Difference("$.tool_calls[0].name", DiffKind.CHANGED, "weather", "search"),
                Difference("$.tool_calls[1].name", DiffKind.CHANGED, "search", "weather"),
            ),
            id="sequence-reordered",
        ),
        pytest.param(
            {},
            (W_PARIS, SEARCH),
            (W_PARIS,),
            Verdict.MISMATCH,
            0.5,
            (
                Difference(
                    "$.tool_calls[1]",
                    DiffKind.MISSING,
                    {"name": "search", "arguments": {"q": "news"}},
                ),
            ),
            id="missing-call",
        ),
        pytest.param(
            {},
            (W_PARIS,),
            (SEARCH, W_PARIS),
            Verdict.MISMATCH,
            0.5,
            (
                Difference(
                    "$.tool_calls[0]",
                    DiffKind.EXTRA,
                    None,
                    {"name": "search", "arguments": {"q": "news"}},
                ),
            ),
            id="extra-call-at-agent-index",
        ),
        pytest.param(
            {},
            (SEARCH, W_PARIS),
            (W_ROME, SEARCH),
            Verdict.MISMATCH,
            0.5,
            (Difference("$.tool_calls[1].arguments.city", DiffKind.CHANGED, "Paris", "Rome"),),
            id="changed-argument-at-legacy-index",
        ),
        pytest.param(
            {},
            (call("a"), call("a")),
            (call("a"),),
            Verdict.MISMATCH,
            0.5,
            (Difference("$.tool_calls[1]", DiffKind.MISSING, {"name": "a", "arguments": None}),),
            id="multiset-counts-duplicates",
        ),
        pytest.param(
            {"order": "sequence"},
            (W_PARIS, SEARCH),
            (W_PARIS,),
            Verdict.MISMATCH,
            0.5,
            (
                Difference(
                    "$.tool_calls[1]",
                    DiffKind.MISSING,
                    {"name": "search", "arguments": {"q": "news"}},
                ),
            ),
            id="sequence-shorter",
        ),
    ],
)
def test_calls_are_paired_and_differences_point_at_the_call(
    options: dict[str, Any],
    legacy: tuple[ToolCall, ...],
    agent: tuple[ToolCall, ...],
    verdict: Verdict,
    score: float,
    diffs: tuple[Difference, ...],
) -> None:
    """Score is agreeing calls / the longer list; each difference names the call and field."""
    result = build("tool_calls", options)(calls(*legacy), calls(*agent))
    assert (result.verdict, result.score, result.differences) == (verdict, score, diffs)


WITH_UNITS = call("weather", {"city": "Paris", "units": "C"})


@pytest.mark.parametrize(
    ("options", "legacy", "agent", "verdict", "diffs"),
    [
        pytest.param(
            {},
            W_PARIS,
            WITH_UNITS,
            Verdict.MISMATCH,
            (Difference("$.tool_calls[0].arguments.units", DiffKind.EXTRA, None, "C"),),
            id="exact-rejects-an-extra-argument",
        ),
        pytest.param({"arguments": "subset"}, W_PARIS, WITH_UNITS, Verdict.MATCH, (), id="subset"),
        pytest.param(
            {"arguments": "subset"},
            WITH_UNITS,
            W_PARIS,
            Verdict.MISMATCH,
            (Difference("$.tool_calls[0].arguments.units", DiffKind.MISSING, "C", None),),
            id="subset-needs-every-legacy-argument",
        ),
        pytest.param(
            {"arguments": "subset"},
            call("f", {"a": {"b": 1}, "xs": [{"k": 1}]}),
            call("f", {"a": {"b": 1, "c": 2}, "xs": [{"k": 1, "z": 0}], "d": 3}),
            Verdict.MATCH,
            (),
            id="subset-allows-extra-keys-at-any-depth",
        ),
        pytest.param(
            {"arguments": "subset"},
            call("f", {"xs": [1]}),
            call("f", {"xs": [1, 2]}),
            Verdict.MISMATCH,
            (Difference("$.tool_calls[0].arguments.xs[1]", DiffKind.EXTRA, None, 2),),
            id="subset-keeps-array-lengths",
        ),
        pytest.param({"arguments": "ignore"}, W_PARIS, W_ROME, Verdict.MATCH, (), id="ignore"),
        pytest.param(
            {"ignore_arguments": ["$.request_id", "$..trace"]},
            call("f", {"request_id": 1, "q": "x", "meta": {"trace": "a"}}),
            call("f", {"request_id": 2, "q": "x", "meta": {"trace": "b"}}),
            Verdict.MATCH,
            (),
            id="ignored-argument-paths",
        ),
        pytest.param(
            {}, call("f", {"n": 1}), call("f", {"n": 1.0}), Verdict.MATCH, (), id="1==1.0"
        ),
        pytest.param(
            {},
            call("f", {"n": 1}),
            call("f", {"n": True}),
            Verdict.MISMATCH,
            (Difference("$.tool_calls[0].arguments.n", DiffKind.TYPE, 1, True),),
            id="true-is-not-1",
        ),
        pytest.param(
            {},
            W_PARIS,
            BROKEN,
            Verdict.MISMATCH,
            (
                Difference(
                    "$.tool_calls[0].arguments",
                    DiffKind.TYPE,
                    {"city": "Paris"},
                    '<invalid arguments: {"city": "Par>',
                ),
            ),
            id="invalid-arguments-never-match-valid",
        ),
        pytest.param({}, BROKEN, BROKEN, Verdict.MATCH, (), id="same-invalid-text"),
        pytest.param(
            {},
            BROKEN,
            call("weather", "{", valid=False),
            Verdict.MISMATCH,
            (Difference("$.tool_calls[0].arguments", DiffKind.CHANGED, '{"city": "Par', "{"),),
            id="different-invalid-text",
        ),
    ],
)
def test_arguments_are_compared_as_the_mode_says(
    options: dict[str, Any],
    legacy: ToolCall,
    agent: ToolCall,
    verdict: Verdict,
    diffs: tuple[Difference, ...],
) -> None:
    """exact, subset and ignore modes, ignored paths, and calls with unparsable arguments."""
    result = build("tool_calls", options)(calls(legacy), calls(agent))
    assert (result.verdict, result.differences) == (verdict, diffs)


@pytest.mark.parametrize("arguments", ["exact", "subset", "ignore"])
def test_invalid_arguments_never_match_a_valid_call_in_any_mode(arguments: str) -> None:
    """Even when arguments are ignored, an unparsable call is not the call legacy made."""
    result = build("tool_calls", {"arguments": arguments})(calls(W_PARIS), calls(BROKEN))
    assert (result.verdict, result.score) == (Verdict.MISMATCH, 0.0)


def test_ignored_tools_are_left_out_on_both_sides() -> None:
    """A telemetry tool only the agent calls does not count against it."""
    comparator = build("tool_calls", {"ignore_tools": ["log"]})
    result = comparator(calls(W_PARIS), calls(call("log", {"m": 1}), W_PARIS, call("log")))
    assert (result.verdict, result.score) == (Verdict.MATCH, 1.0)


def test_subset_pairing_finds_the_crossing_assignment() -> None:
    """Greedy first fit would pair {a} with {a, b} and strand {a, b}; the matching does not."""
    legacy = calls(call("f", {"a": 1}), call("f", {"a": 1, "b": 2}))
    agent = calls(call("f", {"a": 1, "b": 2}), call("f", {"a": 1}))
    result = build("tool_calls", {"arguments": "subset"})(legacy, agent)
    assert (result.verdict, result.score) == (Verdict.MATCH, 1.0)


def test_reason_names_missing_extra_and_differing_tools() -> None:
    """The reason says how many calls agree and which tools are missing, extra or differ."""
    legacy = calls(W_PARIS, SEARCH, call("book"))
    agent = calls(W_ROME, call("pay"))
    result = ToolCallsComparator()(legacy, agent)
    assert result.reason == (
        "0 of 3 tool calls agree; missing: search, book; extra: pay; differing: weather"
    )


def test_reason_counts_repeated_tools() -> None:
    """A tool missing several times is named once, with its count."""
    result = ToolCallsComparator()(calls(SEARCH, SEARCH, W_PARIS), calls(W_PARIS))
    assert result.reason == "1 of 3 tool calls agree; missing: search (2)"


def test_differences_beyond_max_differences_are_counted_not_listed() -> None:
    """Long lists of differing calls keep at most max_differences entries and say so."""
    legacy = calls(*(call(f"t{i}") for i in range(10)))
    result = build("tool_calls", {"max_differences": 3})(legacy, calls())
    assert len(result.differences) == 3
    assert "7 differences not listed" in result.reason
    assert result.score == 0.0


def test_many_identical_calls_in_order_cost_one_check_each() -> None:
    """Thousands of calls in the same order still match: the same place is tried first."""
    many = calls(*(call("f", {"i": i}) for i in range(MAX_CHECKS)))
    result = ToolCallsComparator()(many, many)
    assert (result.verdict, result.score) == (Verdict.MATCH, 1.0)


def test_a_pathological_answer_spends_a_bounded_budget_and_says_so() -> None:
    """Hundreds of same-name calls in reverse order exceed the budget: the result is still a
    sound mismatch whose reason says the budget ran out (never an unbounded search)."""
    legacy = calls(*(call("f", {"i": i}) for i in range(300)))
    agent = calls(*(call("f", {"i": i}) for i in reversed(range(300))))
    result = build("tool_calls", {"arguments": "subset"})(legacy, agent)
    assert result.verdict is Verdict.MISMATCH
    assert 0.0 < result.score < 1.0
    assert "comparison budget spent" in result.reason


@pytest.mark.parametrize(
    ("options", "line"),
    [
        ({"order": "random"}, "tool_calls: order: Input should be 'set' or 'sequence'"),
        (
            {"arguments": "some"},
            "tool_calls: arguments: Input should be 'exact', 'subset' or 'ignore'",
        ),
        ({"ignore_arguments": ["$["]}, "tool_calls: ignore_arguments.0: bad path '$['"),
        ({"ignore_arguments": "$.a"}, "tool_calls: ignore_arguments: Input should be a valid list"),
        ({"ignore_tools": [1]}, "tool_calls: ignore_tools.0: Input should be a valid string"),
        ({"max_differences": -1}, "tool_calls: max_differences: Input should be greater than"),
        (
            {"colour": 1},
            "tool_calls: colour: Unexpected keyword argument (known options: arguments",
        ),
    ],
)
def test_bad_options_name_the_option_and_why(options: dict[str, Any], line: str) -> None:
    """Configuration mistakes fail at build time with the option and the reason."""
    with pytest.raises(InvalidComparatorOptionsError) as info:
        build("tool_calls", options)
    assert line in str(info.value)


def test_options_schema_documents_every_option() -> None:
    """The config file's JSON Schema lists each option with its choices and a description."""
    schema = options_schema("tool_calls")
    props = schema["properties"]
    assert set(props) == {
        "order",
        "arguments",
        "ignore_arguments",
        "ignore_tools",
        "max_differences",
    }
    assert props["order"]["enum"] == ["set", "sequence"]
    assert props["arguments"]["enum"] == ["exact", "subset", "ignore"]
    assert all(p.get("description") for p in props.values())
    assert schema["additionalProperties"] is False


# -- properties ---------------------------------------------------------------------------

arguments = st.dictionaries(
    st.sampled_from(["a", "b", "id"]), st.integers(0, 2) | st.booleans(), max_size=3
)
tool_calls = st.builds(
    ToolCall,
    st.sampled_from(["f", "g", "h"]),
    arguments,
    st.booleans(),
)
call_lists = st.lists(tool_calls, max_size=6)
modes = st.fixed_dictionaries(
    {"arguments": st.sampled_from(["exact", "subset", "ignore"])},
    optional={"ignore_arguments": st.just(["$.id"])},
)


@settings(PROFILE)
@given(modes, call_lists, call_lists, st.randoms(use_true_random=False))
def test_set_mode_does_not_depend_on_call_order(
    options: dict[str, Any], legacy: list[ToolCall], agent: list[ToolCall], rnd: Any
) -> None:
    """Shuffling either side's calls never changes a set comparison's verdict or score."""
    comparator = build("tool_calls", options)
    before = comparator(calls(*legacy), calls(*agent))
    rnd.shuffle(legacy)
    rnd.shuffle(agent)
    after = comparator(calls(*legacy), calls(*agent))
    assert (after.verdict, after.score) == (before.verdict, before.score)


@settings(PROFILE)
@given(modes, st.sampled_from(["set", "sequence"]), call_lists, call_lists)
def test_score_is_a_share_and_match_means_every_call_agrees(
    options: dict[str, Any], order: str, legacy: list[ToolCall], agent: list[ToolCall]
) -> None:
    """Score is in [0, 1]; a match is exactly score 1 with no differences; a mismatch says why."""
    result = build("tool_calls", {**options, "order": order})(calls(*legacy), calls(*agent))
    assert 0.0 <= result.score <= 1.0
    assert (result.verdict is Verdict.MATCH) == (result.score == 1.0)
    assert result.verdict is not Verdict.MATCH or not result.differences
    assert result.verdict is Verdict.MATCH or (result.differences and result.reason)
    assert len(result.differences) <= max(len(legacy), len(agent)) * 4


@settings(PROFILE)
@given(modes, st.sampled_from(["set", "sequence"]), call_lists)
def test_any_list_of_calls_agrees_with_itself(
    options: dict[str, Any], order: str, same: list[ToolCall]
) -> None:
    """Identity, invalid calls included: the same calls on both sides are a match."""
    result = build("tool_calls", {**options, "order": order})(calls(*same), calls(*same))
    assert (result.verdict, result.score) == (Verdict.MATCH, 1.0)


@settings(PROFILE)
@given(st.sampled_from(["exact", "ignore"]), call_lists, call_lists)
def test_exact_and_ignore_scores_are_symmetric(
    mode: str, legacy: list[ToolCall], agent: list[ToolCall]
) -> None:
    """Where agreement is symmetric, swapping the sides gives the same score."""
    comparator = build("tool_calls", {"arguments": mode})
    forward = comparator(calls(*legacy), calls(*agent))
    backward = comparator(calls(*agent), calls(*legacy))
    assert forward.score == backward.score
