"""The status, headers and exact comparators."""

from __future__ import annotations

import pytest

from comparators import (
    Difference,
    DiffKind,
    ExactComparator,
    HeadersComparator,
    Sample,
    StatusComparator,
    Verdict,
)


@pytest.mark.parametrize(
    ("same_class", "legacy", "agent", "verdict"),
    [
        (False, 200, 200, Verdict.MATCH),
        (False, 200, 201, Verdict.MISMATCH),
        (True, 200, 201, Verdict.MATCH),
        (True, 204, 299, Verdict.MATCH),
        (True, 200, 404, Verdict.MISMATCH),
        (True, 404, 400, Verdict.MATCH),
        (True, 404, 500, Verdict.MISMATCH),
    ],
)
def test_status_compares_codes_or_classes(
    same_class: bool, legacy: int, agent: int, verdict: Verdict
) -> None:
    """Statuses must be equal, or only share their hundred with same_class."""
    result = StatusComparator(same_class=same_class)(Sample(legacy), Sample(agent))
    assert result.verdict is verdict
    assert result.score == (1.0 if verdict is Verdict.MATCH else 0.0)
    if verdict is Verdict.MISMATCH:
        assert result.differences == (Difference("status", DiffKind.CHANGED, legacy, agent),)


@pytest.mark.parametrize(
    ("names", "legacy", "agent", "verdict", "score", "diffs"),
    [
        ((), {"a": "1"}, {}, Verdict.MATCH, 1.0, []),
        (("Content-Type",), {"content-type": "a"}, {"content-type": "a"}, Verdict.MATCH, 1.0, []),
        (("etag",), {}, {}, Verdict.MATCH, 1.0, []),
        (
            ("content-type", "etag"),
            {"content-type": "json", "etag": "1"},
            {"content-type": "html", "etag": "1"},
            Verdict.MISMATCH,
            0.5,
            [Difference("headers.content-type", DiffKind.CHANGED, "json", "html")],
        ),
        (
            ("ETag", "Cache-Control"),
            {"etag": "1"},
            {"cache-control": "no-store"},
            Verdict.MISMATCH,
            0.0,
            [
                Difference("headers.etag", DiffKind.MISSING, "1", None),
                Difference("headers.cache-control", DiffKind.EXTRA, None, "no-store"),
            ],
        ),
        (
            ("etag", "ETAG"),
            {"etag": "1"},
            {"etag": "2"},
            Verdict.MISMATCH,
            0.0,
            [
                Difference("headers.etag", DiffKind.CHANGED, "1", "2"),
            ],
        ),
    ],
)
def test_headers_compares_the_named_headers_case_insensitively(
    names: tuple[str, ...],
    legacy: dict[str, str],
    agent: dict[str, str],
    verdict: Verdict,
    score: float,
    diffs: list[Difference],
) -> None:
    """Score is the share of named headers that agree; absence on one side is missing/extra."""
    result = HeadersComparator(names=names)(Sample(200, legacy), Sample(200, agent))
    assert (result.verdict, result.score, list(result.differences)) == (verdict, score, diffs)


@pytest.mark.parametrize(
    ("legacy", "agent", "verdict"),
    [
        (b"", b"", Verdict.MATCH),
        (b"abc", b"abc", Verdict.MATCH),
        (b"abc", b"abd", Verdict.MISMATCH),
        (b'{"a":1}', b'{"a": 1}', Verdict.MISMATCH),
    ],
)
def test_exact_needs_identical_bytes(legacy: bytes, agent: bytes, verdict: Verdict) -> None:
    """Any byte difference, even whitespace, is a mismatch with score 0."""
    result = ExactComparator()(Sample(200, body=legacy), Sample(200, body=agent))
    assert result.verdict is verdict
    assert result.score == (1.0 if verdict is Verdict.MATCH else 0.0)


def test_exact_difference_carries_short_decoded_previews() -> None:
    """Previews are at most 120 characters, decoded with replacement, marked when cut."""
    result = ExactComparator()(Sample(200, body=b"x" * 10_000), Sample(200, body=b"\xff\xfeok"))
    (diff,) = result.differences
    assert (diff.path, diff.kind) == ("body", DiffKind.CHANGED)
    assert len(diff.legacy) == 120 and diff.legacy.endswith("…")
    assert diff.agent == "\ufffd\ufffdok"
