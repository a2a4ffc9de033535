"""The replay report: its numbers from per-case results, and its renderings."""

from __future__ import annotations

import json
import re

import pytest

from comparators import Comparison, Difference, DiffKind, Verdict
from proxy.report import (
    CaseResult,
    build_report,
    percentile,
    render_html,
    render_text,
    report_json,
)

MATCH = Comparison(Verdict.MATCH, 1.0)


def mismatch(*paths: str, legacy: object = "a", agent: object = "b") -> Comparison:
    diffs = tuple(Difference(p, DiffKind.CHANGED, legacy, agent) for p in paths)
    return Comparison(Verdict.MISMATCH, 0.5, diffs, reason="json: differs")


def case(
    after: Comparison = MATCH,
    before: Verdict | None = Verdict.MATCH,
    *,
    id: str = "c-1",
    ms: float | None = 10.0,
    tokens: int | None = None,
    before_ms: float | None = None,
    before_tokens: int | None = None,
    error: str | None = None,
    excluded: bool = False,
) -> CaseResult:
    return CaseResult(
        id, "api", "legacy", before, after, before_ms, ms, before_tokens, tokens, error, excluded
    )


@pytest.mark.parametrize(
    ("values", "share", "expected"),
    [
        ([], 0.5, None),
        ([7.0], 0.5, 7.0),
        ([7.0], 0.95, 7.0),
        ([1.0, 2.0, 3.0, 4.0], 0.5, 2.0),
        ([4.0, 3.0, 2.0, 1.0], 0.5, 2.0),
        ([float(n) for n in range(1, 101)], 0.95, 95.0),
        ([float(n) for n in range(1, 101)], 0.5, 50.0),
        ([1.0, 100.0], 0.95, 100.0),
    ],
)
def test_percentiles_are_nearest_rank_over_observed_values(
    values: list[float], share: float, expected: float | None
) -> None:
    assert percentile(values, share) == expected


ERROR = Comparison.error("agent failed: cannot connect")
SKIP = Comparison.skipped("the request body was not recorded")


@pytest.mark.parametrize(
    ("results", "threshold", "after", "before", "passed"),
    [
        ([case(), case(), case(), case(mismatch("$.a"))], 0.75, 0.75, 1.0, True),
        ([case(), case(), case(), case(mismatch("$.a"))], 0.8, 0.75, 1.0, False),
        # an error is a failed case; a skipped one is evidence neither way
        ([case(), case(ERROR, error="x"), case(SKIP)], 0.5, 0.5, 1.0, True),
        # excluded cases leave both sides
        ([case(), case(mismatch("$.a"), Verdict.MISMATCH, excluded=True)], 1.0, 1.0, 1.0, True),
        # nothing decided: no agreement, never a pass
        ([case(SKIP)], 0.0, None, 1.0, False),
        ([case(MATCH, Verdict.MISMATCH), case(MATCH, None)], 0.9, 1.0, 0.0, True),
    ],
)
def test_agreement_is_matches_over_decided_cases_before_and_after(
    results: list[CaseResult],
    threshold: float,
    after: float | None,
    before: float | None,
    passed: bool,
) -> None:
    report = build_report(results, threshold=threshold)
    assert report.after.agreement == after
    assert report.before.agreement == before
    assert report.passed is passed


def test_each_mismatching_case_counts_once_per_generalized_field() -> None:
    results = [
        case(mismatch("$.items[0].price", "$.items[3].price", "$.total")),
        case(mismatch("$.items[1].price")),
        case(mismatch("status")),
        case(MATCH),
    ]
    report = build_report(results, threshold=0.9, top=2)
    assert report.fields == (("$.items[*].price", 2), ("$.total", 1))


def test_errors_are_grouped_by_reason_most_frequent_first() -> None:
    results = [
        case(ERROR, error="timeout after 5s", ms=None),
        case(ERROR, error="agent answered 503"),
        case(ERROR, error="agent answered 503"),
        case(),
    ]
    report = build_report(results, threshold=0.9)
    assert report.errors == (("agent answered 503", 2), ("timeout after 5s", 1))
    assert report.after.errors == 3
    assert not report.unreachable  # some answers came


@pytest.mark.parametrize(
    ("results", "unreachable"),
    [
        ([case(ERROR, error="cannot connect", ms=None)] * 3, True),
        ([case(ERROR, error="cannot connect", ms=None), case(SKIP, ms=None)], True),
        ([case(ERROR, error="cannot connect", ms=None), case(ERROR, error="503", ms=3.0)], False),
        ([case(SKIP, ms=None)], False),  # nothing was sent
    ],
)
def test_an_agent_that_answered_nothing_sent_is_unreachable(
    results: list[CaseResult], unreachable: bool
) -> None:
    assert build_report(results, threshold=0.9).unreachable is unreachable


def test_latency_and_tokens_compare_the_recorded_agent_with_the_replayed_one() -> None:
    results = [
        case(ms=float(n), before_ms=float(10 * n), tokens=n, before_tokens=None)
        for n in range(1, 21)
    ]
    report = build_report(results, threshold=0.9)
    assert (report.after.latency_p50_ms, report.after.latency_p95_ms) == (10.0, 19.0)
    assert (report.before.latency_p50_ms, report.before.latency_p95_ms) == (100.0, 190.0)
    assert report.after.tokens_total == 210 and report.after.tokens_mean == 10.5
    assert report.before.tokens_total is None and report.before.tokens_mean is None


def test_the_terminal_table_shows_before_and_after_and_the_verdict() -> None:
    results = [case(), case(mismatch("$.category"), id="c-2")]
    text = render_text(build_report(results, threshold=0.9))
    assert re.search(r"agreement\s+100\.0%\s+50\.0%", text)
    assert "$.category" in text
    assert text.rstrip().endswith("FAIL: agreement 50.0%, threshold 90.0%")


def test_the_json_report_lists_failing_cases_with_their_differences() -> None:
    results = [case(), case(mismatch("$.category", legacy="billing", agent="other"), id="c-2")]
    data = json.loads(json.dumps(report_json(build_report(results, threshold=0.5))))
    assert data["passed"] is True
    assert data["after"]["agreement"] == 0.5
    assert data["mismatches_by_field"] == [{"path": "$.category", "cases": 1}]
    [failing] = data["failing_cases"]
    assert failing["id"] == "c-2"
    assert failing["differences"][0] == {
        "path": "$.category", "kind": "changed", "expected": "billing", "agent": "other"
    }  # fmt: skip


HOSTILE = '<script>alert("x")</script><img src=x onerror=alert(1)>'


def hostile_report() -> str:
    results = [
        case(mismatch(f"$['{HOSTILE}']", legacy=HOSTILE, agent={"v": HOSTILE}), id=HOSTILE),
        case(ERROR, error=HOSTILE, id="c-3"),
    ]
    return render_html(build_report(results, threshold=0.9), title=HOSTILE)


def test_user_data_in_the_html_report_is_escaped() -> None:
    page = hostile_report()
    assert "<script" not in page.lower()
    assert "<img" not in page.lower()
    assert "&lt;script&gt;" in page  # shown, as text


def test_the_html_report_loads_nothing_from_anywhere() -> None:
    page = hostile_report().lower()
    tags = re.findall(r"<[a-z!][^>]*>", page)
    assert tags and not [t for t in tags if re.search(r"\b(src|href|action|data)\s*=", t)]
    assert {re.match(r"<!?(\w+)", t).group(1) for t in tags} <= {  # type: ignore[union-attr]
        "doctype", "html", "head", "meta", "title", "style", "body", "h1", "h2", "p",
        "strong", "table", "tr", "th", "td", "br", "code",
    }  # fmt: skip
    style = page[page.index("<style>") : page.index("</style>")]
    assert "url(" not in style and "@import" not in style


def test_long_values_are_cut_in_the_html_report() -> None:
    results = [case(mismatch("$.text", legacy="x" * 50_000, agent="y"))]
    page = render_html(build_report(results, threshold=0.9))
    assert "x" * 1000 not in page
    assert "…" in page
