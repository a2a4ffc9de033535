"""The text comparator: normalised fuzzy similarity against a threshold."""

from __future__ import annotations

import pytest

from comparators import Difference, DiffKind, Sample, TextComparator, Verdict
from comparators.text import normalize_text


def _run(comparator: TextComparator, legacy: bytes, agent: bytes) -> tuple[Verdict, float]:
    result = comparator(Sample(200, body=legacy), Sample(200, body=agent))
    return result.verdict, result.score


@pytest.mark.parametrize(
    ("text", "normal"),
    [
        ("  Hello,   World! ", "hello world"),
        ("Straße", "strasse"),
        ("«Bonjour» — l\u2019ami…", "bonjour lami"),
        ("a\tb\nc", "a b c"),
        ("", ""),
    ],
)
def test_normalize_casefolds_strips_punctuation_and_collapses_whitespace(
    text: str, normal: str
) -> None:
    """Normalisation removes differences a reader would not notice."""
    assert normalize_text(text) == normal


@pytest.mark.parametrize(
    ("options", "legacy", "agent", "verdict", "score"),
    [
        ({}, b"Hello, World!", b"hello world", Verdict.MATCH, 1.0),
        ({"normalize": False}, b"Hello, World!", b"hello world", Verdict.MISMATCH, None),
        ({}, b"", b"", Verdict.MATCH, 1.0),
        ({}, b"the cat sat on the mat", b"a dog ran in the park", Verdict.MISMATCH, None),
        ({"threshold": 0.0}, b"abc", b"xyz", Verdict.MATCH, 0.0),
        ({"threshold": 1.0}, b"abc", b"abd", Verdict.MISMATCH, None),
        ({"threshold": 0.6}, b"abcd", b"abce", Verdict.MATCH, 0.75),
    ],
)
def test_text_matches_when_similarity_reaches_the_threshold(
    options: dict[str, object], legacy: bytes, agent: bytes, verdict: Verdict, score: float | None
) -> None:
    """Score is rapidfuzz's ratio in [0, 1]; a match needs score >= threshold."""
    got_verdict, got_score = _run(TextComparator(**options), legacy, agent)  # type: ignore[arg-type]
    assert got_verdict is verdict
    assert 0.0 <= got_score <= 1.0
    if score is not None:
        assert got_score == pytest.approx(score)


def test_text_mismatch_shows_raw_texts_at_body() -> None:
    """The difference shows the texts as sent (not normalised), at path 'body'."""
    result = TextComparator()(Sample(200, body=b"Yes."), Sample(200, body=b"No!"))
    assert result.differences == (Difference("body", DiffKind.CHANGED, "Yes.", "No!"),)


ANSWER = TextComparator(path="$.answer")


@pytest.mark.parametrize(
    ("legacy", "agent", "verdict", "diffs"),
    [
        (b'{"answer": "Paris."}', b'{"answer": "paris", "extra": 1}', Verdict.MATCH, ()),
        (
            b'{"answer": "Paris"}',
            b'{"answer": "London"}',
            Verdict.MISMATCH,
            (Difference("$.answer", DiffKind.CHANGED, "Paris", "London"),),
        ),
        (
            b'{"answer": "Paris"}',
            b'{"reply": "Paris"}',
            Verdict.MISMATCH,
            (Difference("$.answer", DiffKind.MISSING, "Paris", None),),
        ),
        (
            b'{"reply": "Paris"}',
            b'{"answer": "Paris"}',
            Verdict.MISMATCH,
            (Difference("$.answer", DiffKind.EXTRA, None, "Paris"),),
        ),
        (
            b'{"answer": "Paris"}',
            b'{"answer": 3}',
            Verdict.MISMATCH,
            (Difference("$.answer", DiffKind.TYPE, "Paris", 3),),
        ),
        (b'{"reply": 1}', b'{"reply": 2}', Verdict.SKIPPED, ()),
        (b"not json", b'{"answer": "Paris"}', Verdict.SKIPPED, ()),
        (b'{"answer": 3}', b'{"answer": "3"}', Verdict.SKIPPED, ()),
    ],
)
def test_text_at_a_path_compares_one_json_string(
    legacy: bytes, agent: bytes, verdict: Verdict, diffs: tuple[Difference, ...]
) -> None:
    """With path set, absence is missing/extra, and a legacy body without that string is skipped."""
    result = ANSWER(Sample(200, body=legacy), Sample(200, body=agent))
    assert result.verdict is verdict
    assert result.differences == diffs
    assert result.reason or verdict is Verdict.MATCH


def test_text_at_a_path_with_invalid_agent_json_is_a_type_mismatch() -> None:
    """An agent body that is not JSON cannot contain the field: mismatch, score 0."""
    result = ANSWER(Sample(200, body=b'{"answer": "Paris"}'), Sample(200, body=b"Paris"))
    assert (result.verdict, result.score) == (Verdict.MISMATCH, 0.0)
    (diff,) = result.differences
    assert diff.kind is DiffKind.TYPE and diff.agent.startswith("<invalid JSON")
