"""The quorum comparator: several agent samples vote on a normalised answer."""

from __future__ import annotations

from decimal import Decimal
from typing import Any

import orjson
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
from comparators.quorum import QuorumComparator, canonical_number, normalize_answer

settings.register_profile("quorum", database=None, deadline=None, max_examples=300)
PROFILE = settings.get_profile("quorum")

ANSWER = QuorumComparator(field="$.answer")
MISSING: Any = object()


def body(answer: Any) -> bytes:
    """A JSON body with ``answer`` at $.answer; bytes pass through as they are."""
    if isinstance(answer, bytes):
        return answer
    return orjson.dumps({} if answer is MISSING else {"answer": answer})


def vote(comparator: QuorumComparator, legacy: Any, *answers: Any) -> Any:
    samples = [Sample(200, body=body(a)) for a in answers]
    agent = Sample(200, body=samples[0].body, alternatives=tuple(samples[1:]))
    return comparator(Sample(200, body=body(legacy)), agent)


@pytest.mark.parametrize(
    ("value", "normal"),
    [
        (" Paris! ", "paris"),
        ("The  Answer\tIS 42.", "the answer is 42"),
        ("42.0", "42"),
        (" +4.2e1 ", "42"),
        (42, "42"),
        (42.0, "42"),
        (0.1, "0.1"),
        ("-0", "0"),
        ("0.50", "0.5"),
        ("123456789012345678901234567890123", "123456789012345678901234567890123"),
        (True, "true"),
        (None, "null"),
        ({"b": 1, "a": [2]}, '{"a":[2],"b":1}'),
        ("", None),
        ("  ...  ", None),
    ],
)
def test_answers_are_normalised_before_voting(value: Any, normal: str | None) -> None:
    """Case, punctuation and spacing do not split votes; numbers vote by value; an empty
    answer casts no vote."""
    assert normalize_answer(value) == normal


@pytest.mark.parametrize(
    ("steps", "value", "normal"),
    [
        ((), " Paris! ", " Paris! "),
        (("case",), " Paris! ", " paris! "),
        (("whitespace",), " Paris  x ", "Paris x"),
        (("punctuation",), "Paris!", "Paris"),
        (("case", "whitespace", "punctuation"), "42.0", "420"),
        ((), 42.0, "42.0"),
    ],
)
def test_only_the_configured_steps_apply(steps: tuple[Any, ...], value: Any, normal: str) -> None:
    """Each normalisation step can be left out; without `numbers`, 42.0 is not 42."""
    assert normalize_answer(value, steps) == normal


def test_canonical_numbers_are_exact_beyond_28_digits() -> None:
    """Decimal.normalize would round to 28 digits and make different numbers vote together."""
    a = canonical_number(Decimal("1234567890123456789012345678901"))
    b = canonical_number(Decimal("1234567890123456789012345678902"))
    assert a != b
    assert canonical_number(Decimal("1.50e-40")) == "1.5E-40"


@pytest.mark.parametrize(
    ("options", "legacy", "answers", "verdict", "score", "reason"),
    [
        pytest.param({}, "Paris", ("paris", "PARIS.", " Paris "), Verdict.MATCH, 1.0,
                     "winner 'paris' with 3/3 votes", id="unanimous"),
        pytest.param({}, "Paris", ("Paris", "Rome", "paris"), Verdict.MATCH, 2 / 3,
                     "winner 'paris' with 2/3 votes", id="majority"),
        pytest.param({}, "Paris", ("Rome", "rome", "Paris"), Verdict.MISMATCH, 1 / 3,
                     "winner 'rome' with 2/3 votes; legacy says 'paris'", id="wrong-winner"),
        pytest.param({}, "Paris", ("Paris", "Rome", "Oslo"), Verdict.MISMATCH, 1 / 3,
                     "no winner: 3 answers tie with 1/3 votes each", id="three-way-tie"),
        pytest.param({"samples": 4}, "Paris", ("Paris", "Rome", "paris", "rome"),
                     Verdict.MISMATCH, 0.5, "no winner: 2 answers tie with 2/4 votes each",
                     id="tie-including-legacy"),
        pytest.param({"min_confidence": 0.8}, "Paris", ("Paris", "Rome", "Paris"),
                     Verdict.MISMATCH, 2 / 3,
                     "winner 'paris' with 2/3 votes agrees with legacy, below min_confidence 0.8",
                     id="below-min-confidence"),
        pytest.param({"min_confidence": 0.4}, "Paris", ("Paris", "Rome", "Oslo", MISSING, "paris"),
                     Verdict.MATCH, 0.4, "winner 'paris' with 2/5 votes (1 abstained)",
                     id="plurality-above-min-confidence"),
        pytest.param({}, "Paris", ("Paris", MISSING, "Paris"), Verdict.MATCH, 2 / 3,
                     "winner 'paris' with 2/3 votes (1 abstained)", id="missing-field-abstains"),
        pytest.param({}, "Paris", (b"<html>", "Paris", b""), Verdict.MISMATCH, 1 / 3,
                     "winner 'paris' with 1/3 votes (2 abstained) agrees with legacy, "
                     "below min_confidence 0.5", id="not-json-abstains-but-counts-in-n"),
        pytest.param({}, "Paris", ("", "  ", MISSING), Verdict.MISMATCH, 0.0,
                     "no agent sample gave an answer (3 abstained)", id="all-abstain"),
        pytest.param({"samples": 5}, 42, ("42.0", 42, "4.2e1"), Verdict.MATCH, 3 / 5,
                     "winner '42' with 3/5 votes (3 of 5 samples arrived)", id="fewer-arrived"),
        pytest.param({"samples": 4, "min_confidence": 0.6}, "Paris", ("Paris", "Paris"),
                     Verdict.MISMATCH, 2 / 4,
                     "winner 'paris' with 2/4 votes (2 of 4 samples arrived) agrees with legacy, "
                     "below min_confidence 0.6", id="lost-samples-count-against-confidence"),
        pytest.param({}, MISSING, ("Paris", "Paris"), Verdict.SKIPPED, 0.0,
                     "legacy has no answer: $.answer is absent", id="legacy-without-answer"),
        pytest.param({}, b"oops", ("Paris", "Paris"), Verdict.SKIPPED, 0.0,
                     "legacy has no answer: body is not JSON", id="legacy-not-json"),
        pytest.param({}, "Paris", ("Paris",), Verdict.SKIPPED, 0.0,
                     "1 agent sample of 3 asked for: no vote", id="one-sample-is-no-vote"),
    ],
)  # fmt: skip
def test_samples_vote_and_the_winner_is_held_to_legacy(
    options: dict[str, Any],
    legacy: Any,
    answers: tuple[Any, ...],
    verdict: Verdict,
    score: float,
    reason: str,
) -> None:
    """The most common answer wins with confidence votes/N; it matches when it is legacy's
    answer with enough confidence; the score is the share of samples agreeing with legacy."""
    result = vote(QuorumComparator(field="$.answer", **options), legacy, *answers)
    assert result.verdict is verdict
    assert result.score == pytest.approx(score)
    assert reason in result.reason


@pytest.mark.parametrize(
    ("answers", "diff"),
    [
        (("Rome", "Rome", "Paris"), Difference("$.answer", DiffKind.CHANGED, "paris", "rome")),
        (("Rome", "Oslo"), Difference("$.answer", DiffKind.CHANGED, "paris", ["oslo", "rome"])),
        ((MISSING, MISSING), Difference("$.answer", DiffKind.MISSING, "paris", None)),
    ],
)
def test_a_lost_vote_shows_legacy_and_the_winner_at_the_field(
    answers: tuple[Any, ...], diff: Difference
) -> None:
    """The difference names the field and shows normalised answers (the tied ones, sorted)."""
    assert vote(ANSWER, "Paris", *answers).differences == (diff,)


def test_whole_body_text_votes_when_no_field_is_set() -> None:
    """Without `field`, each body's text is the answer (plain text agents)."""
    result = vote(QuorumComparator(), b"Paris.", b"paris", b" PARIS ", b"Rome")
    assert (result.verdict, result.score) == (Verdict.MATCH, 2 / 3)
    assert vote(QuorumComparator(), b"", b"a", b"a").verdict is Verdict.SKIPPED


def test_an_answer_nested_too_deep_to_serialise_is_no_answer() -> None:
    """An object answer deeper than orjson writes is skipped (legacy) or abstains (agent),
    never an exception."""
    deep = b'{"answer":' + b'{"a":' * 300 + b"1" + b"}" * 301
    assert vote(ANSWER, deep, "x", "x").reason.startswith("legacy has no answer: $.answer cannot")
    result = vote(ANSWER, "x", deep, "x", "x")
    assert (result.verdict, result.reason) == (
        Verdict.MATCH,
        "winner 'x' with 2/3 votes (1 abstained)",
    )


def test_the_proxy_learns_how_many_samples_to_get() -> None:
    """`agent_samples` (the contract's attribute) is the configured number of samples."""
    assert build("quorum", {"samples": 5}).agent_samples == 5  # type: ignore[attr-defined]
    assert QuorumComparator().agent_samples == 3


@pytest.mark.parametrize(
    ("options", "line"),
    [
        ({"samples": 1}, "quorum: samples: Input should be greater than or equal to 2"),
        ({"samples": 17}, "quorum: samples: Input should be less than or equal to 16"),
        ({"field": "$..answer"}, "quorum: field: bad path '$..answer'"),
        ({"field": "answer"}, "quorum: field: bad path 'answer' at position 0"),
        ({"normalize": ["lower"]}, "quorum: normalize.0: Input should be 'case', 'whitespace'"),
        ({"normalize": "case"}, "quorum: normalize: Input should be a valid list"),
        (
            {"min_confidence": 1.5},
            "quorum: min_confidence: Input should be less than or equal to 1",
        ),
        ({"votes": 3}, "quorum: votes: Unexpected keyword argument (known options: field"),
    ],
)
def test_bad_options_name_the_option_and_why(options: dict[str, Any], line: str) -> None:
    """Configuration mistakes fail at build time with the option and the reason."""
    with pytest.raises(InvalidComparatorOptionsError) as info:
        build("quorum", options)
    assert line in str(info.value)


def test_options_schema_documents_every_option() -> None:
    """The config file's JSON Schema lists each option with its bounds and a description."""
    props = options_schema("quorum")["properties"]
    assert set(props) == {"samples", "field", "normalize", "min_confidence"}
    assert (props["samples"]["minimum"], props["samples"]["maximum"]) == (2, 16)
    assert props["normalize"]["items"]["enum"] == ["case", "whitespace", "punctuation", "numbers"]
    assert all(p.get("description") for p in props.values())


# -- properties ---------------------------------------------------------------------------

answers = st.sampled_from(["Paris", "paris.", "Rome", "42", "42.0", "", MISSING]) | st.integers(
    40, 43
)


@settings(PROFILE)
@given(answers, st.lists(answers, min_size=2, max_size=8), st.randoms(use_true_random=False))
def test_the_order_of_samples_does_not_change_the_outcome(
    legacy: Any, samples: list[Any], rnd: Any
) -> None:
    """The vote is a count: shuffling the samples changes neither verdict, score nor reason."""
    before = vote(ANSWER, legacy, *samples)
    rnd.shuffle(samples)
    after = vote(ANSWER, legacy, *samples)
    assert (after.verdict, after.score, after.reason) == (
        before.verdict,
        before.score,
        before.reason,
    )


@settings(PROFILE)
@given(
    answers,
    st.lists(answers, min_size=1, max_size=8),
    st.floats(0.0, 1.0),
    st.integers(2, 16),
)
def test_a_match_is_legacy_winning_with_enough_confidence(
    legacy: Any, samples: list[Any], min_confidence: float, asked: int
) -> None:
    """Score is a share in [0, 1]; a match always has a winner equal to legacy's answer
    holding at least min_confidence of the samples."""
    comparator = QuorumComparator(samples=asked, field="$.answer", min_confidence=min_confidence)
    result = vote(comparator, legacy, *samples)
    assert 0.0 <= result.score <= 1.0
    if result.verdict is Verdict.MATCH:
        expected = normalize_answer(orjson.loads(body(legacy))["answer"])
        votes = [normalize_answer(a) for a in samples if a is not MISSING]
        others = set(votes) - {expected, None}
        n = max(asked, len(samples))  # samples asked for and lost are abstentions
        assert votes.count(expected) / n >= min_confidence
        assert votes.count(expected) > max((votes.count(v) for v in others), default=0)
        assert result.score == votes.count(expected) / n
