"""A replay's report: what changed between the recorded agent and the replayed one.

Pure functions from per-case results to report data (:func:`build_report`),
and separate renderers: a terminal table, JSON, and one self-contained HTML
file. Cases hold user data, so the HTML escapes every value it prints and
loads nothing from anywhere (no scripts, no links, no fonts): it can be
attached to a CI run and opened offline.
"""

from __future__ import annotations

import html
import math
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

from comparators import Comparison, Verdict
from comparators.paths import generalize

# Decided cases count towards agreement; a skipped one (an excluded case, a
# body that was never recorded) is evidence neither way.
_DECIDED = (Verdict.MATCH, Verdict.MISMATCH, Verdict.ERROR)
MAX_CASE_ROWS = 200  # mismatching cases listed in the HTML and JSON, first ones first
MAX_SHOWN = 300  # characters of one value (a reason, a differing field) in a rendering


@dataclass(frozen=True, slots=True)
class CaseResult:
    """One recorded case, replayed and scored.

    ``before`` is the verdict recorded with the case (the agent of then
    against legacy); ``after`` is the replayed agent against the expected
    answer. ``error`` is set when the replay got no usable answer (refused,
    timed out, 5xx): then ``after`` is an error verdict too.
    """

    id: str
    route: str
    expected_from: str  # expected | agent | legacy
    before: Verdict | None
    after: Comparison
    before_latency_ms: float | None = None
    after_latency_ms: float | None = None
    before_tokens: int | None = None
    after_tokens: int | None = None  # every sample's tokens together: what the replay cost
    error: str | None = None
    excluded: bool = False


@dataclass(frozen=True, slots=True)
class Side:
    """The numbers for one side (before or after) of the report."""

    matches: int
    mismatches: int
    errors: int
    skipped: int
    latency_p50_ms: float | None
    latency_p95_ms: float | None
    tokens_total: int | None  # None: no case reported tokens
    tokens_cases: int  # cases whose tokens are known

    @property
    def decided(self) -> int:
        return self.matches + self.mismatches + self.errors

    @property
    def agreement(self) -> float | None:
        """Matches over decided cases; None when nothing was decided."""
        return self.matches / self.decided if self.decided else None

    @property
    def tokens_mean(self) -> float | None:
        if self.tokens_total is None or not self.tokens_cases:
            return None
        return self.tokens_total / self.tokens_cases


@dataclass(frozen=True, slots=True)
class Report:
    cases: int
    excluded: int
    threshold: float
    before: Side
    after: Side
    fields: tuple[tuple[str, int], ...]  # generalized path, mismatching cases that differ there
    errors: tuple[tuple[str, int], ...]  # replay error reason, cases
    mismatches: tuple[CaseResult, ...]  # the first MAX_CASE_ROWS mismatching or failed cases
    unreachable: bool  # every replayed case failed without an answer

    @property
    def passed(self) -> bool:
        agreement = self.after.agreement
        return agreement is not None and agreement >= self.threshold


def percentile(values: Sequence[float], share: float) -> float | None:
    """Nearest-rank percentile (a value that was observed); None for no values."""
    if not values:
        return None
    ordered = sorted(values)
    rank = max(1, math.ceil(share * len(ordered)))
    return ordered[min(rank, len(ordered)) - 1]


def _side(verdicts: Sequence[Verdict | None], latencies: Iterable[float | None],
          tokens: Sequence[int | None]) -> Side:  # fmt: skip
    counts = Counter(verdicts)
    known_latency = [v for v in latencies if v is not None]
    known_tokens = [t for t in tokens if t is not None]
    return Side(
        matches=counts[Verdict.MATCH],
        mismatches=counts[Verdict.MISMATCH],
        errors=counts[Verdict.ERROR],
        skipped=len(verdicts) - sum(counts[v] for v in _DECIDED),
        latency_p50_ms=percentile(known_latency, 0.50),
        latency_p95_ms=percentile(known_latency, 0.95),
        tokens_total=sum(known_tokens) if known_tokens else None,
        tokens_cases=len(known_tokens),
    )


def _fields(results: Iterable[CaseResult], top: int) -> tuple[tuple[str, int], ...]:
    """Each mismatching case counts once per generalized path it differs at."""
    counts: Counter[str] = Counter()
    for result in results:
        if result.after.verdict is Verdict.MISMATCH:
            counts.update({generalize(d.path) for d in result.after.differences})
    return tuple(sorted(counts.items(), key=lambda kv: (-kv[1], kv[0]))[:top])


def build_report(results: Sequence[CaseResult], *, threshold: float, top: int = 10) -> Report:
    scored = [r for r in results if not r.excluded]
    failed = [r for r in scored if r.error is not None]
    errors = Counter(r.error or "" for r in failed)
    bad = (Verdict.MISMATCH, Verdict.ERROR)
    return Report(
        cases=len(results),
        excluded=len(results) - len(scored),
        threshold=threshold,
        before=_side(
            [r.before for r in scored],
            (r.before_latency_ms for r in scored),
            [r.before_tokens for r in scored],
        ),
        after=_side(
            [r.after.verdict for r in scored],
            (r.after_latency_ms for r in scored),
            [r.after_tokens for r in scored],
        ),
        fields=_fields(scored, top),
        errors=tuple(sorted(errors.items(), key=lambda kv: (-kv[1], kv[0]))[:top]),
        mismatches=tuple(r for r in scored if r.after.verdict in bad)[:MAX_CASE_ROWS],
        unreachable=_unreachable(scored),
    )


def _unreachable(results: Sequence[CaseResult]) -> bool:
    """Every case that was sent got no answer at all (refused, timed out): the
    agent URL is wrong or the agent is down, which is not a verdict on it."""
    sent = [r for r in results if r.error is not None or r.after_latency_ms is not None]
    return bool(sent) and all(r.after_latency_ms is None for r in sent)


# -- rendering --------------------------------------------------------------


def _pct(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.1%}"


def _ms(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.1f} ms"


def _num(value: float | None) -> str:
    if value is None:
        return "n/a"
    return f"{value:,.0f}" if float(value).is_integer() else f"{value:,.1f}"


def _short(value: Any, limit: int = MAX_SHOWN) -> str:
    text = value if isinstance(value, str) else repr(value)
    return text if len(text) <= limit else text[: limit - 1] + "…"


def _summary_rows(report: Report) -> list[tuple[str, str, str]]:
    b, a = report.before, report.after
    return [
        ("agreement", _pct(b.agreement), _pct(a.agreement)),
        ("matches", str(b.matches), str(a.matches)),
        ("mismatches", str(b.mismatches), str(a.mismatches)),
        ("errors", str(b.errors), str(a.errors)),
        ("skipped", str(b.skipped), str(a.skipped)),
        ("latency p50", _ms(b.latency_p50_ms), _ms(a.latency_p50_ms)),
        ("latency p95", _ms(b.latency_p95_ms), _ms(a.latency_p95_ms)),
        ("tokens total", _num(b.tokens_total), _num(a.tokens_total)),
        ("tokens per case", _num(b.tokens_mean), _num(a.tokens_mean)),
    ]


def _verdict_line(report: Report) -> str:
    word = "PASS" if report.passed else "FAIL"
    return f"{word}: agreement {_pct(report.after.agreement)}, threshold {report.threshold:.1%}"


def render_text(report: Report) -> str:
    """The terminal table."""
    lines = [f"cases: {report.cases} ({report.excluded} excluded)", ""]
    rows = [("", "before", "after"), *_summary_rows(report)]
    widths = [max(len(row[i]) for row in rows) for i in range(3)]
    for row in rows:
        lines.append(f"{row[0]:<{widths[0]}}  {row[1]:>{widths[1]}}  {row[2]:>{widths[2]}}")
    if report.fields:
        lines += ["", "mismatches by field:"]
        lines += [f"  {count:>5}  {_short(path, 120)}" for path, count in report.fields]
    if report.errors:
        lines += ["", "errors:"]
        lines += [f"  {count:>5}  {_short(reason, 120)}" for reason, count in report.errors]
    lines += ["", _verdict_line(report)]
    return "\n".join(lines) + "\n"


def _side_json(side: Side) -> dict[str, Any]:
    return {
        "agreement": side.agreement,
        "matches": side.matches,
        "mismatches": side.mismatches,
        "errors": side.errors,
        "skipped": side.skipped,
        "latency_ms": {"p50": _round(side.latency_p50_ms), "p95": _round(side.latency_p95_ms)},
        "tokens": {"total": side.tokens_total, "cases": side.tokens_cases,
                   "mean": side.tokens_mean},
    }  # fmt: skip


def _round(value: float | None) -> float | None:
    return None if value is None else round(value, 3)


def _case_json(result: CaseResult) -> dict[str, Any]:
    return {
        "id": result.id,
        "route": result.route,
        "expected_from": result.expected_from,
        "before": None if result.before is None else result.before.value,
        "after": result.after.verdict.value,
        "score": result.after.score,
        "reason": result.after.reason,
        "error": result.error,
        "latency_ms": _round(result.after_latency_ms),
        "tokens": result.after_tokens,
        "differences": [
            {"path": d.path, "kind": d.kind.value, "expected": d.legacy, "agent": d.agent}
            for d in result.after.differences[:20]
        ],
    }


def report_json(report: Report) -> dict[str, Any]:
    """The JSON file: the same numbers as the table, plus the failing cases."""
    return {
        "passed": report.passed,
        "threshold": report.threshold,
        "cases": report.cases,
        "excluded": report.excluded,
        "before": _side_json(report.before),
        "after": _side_json(report.after),
        "mismatches_by_field": [{"path": p, "cases": n} for p, n in report.fields],
        "errors": [{"reason": r, "cases": n} for r, n in report.errors],
        "failing_cases": [_case_json(r) for r in report.mismatches],
    }


_CSS = """
body{font:14px/1.4 system-ui,sans-serif;margin:2em;color:#222}
h1{font-size:1.4em}h2{font-size:1.1em;margin-top:1.6em}
table{border-collapse:collapse;margin:.5em 0}
td,th{border:1px solid #ccc;padding:.25em .6em;text-align:left;vertical-align:top}
th{background:#f3f3f3}td.n{text-align:right}
.pass{color:#176317}.fail{color:#a31515}
code{font:12px ui-monospace,monospace;white-space:pre-wrap;word-break:break-all}
"""


def _e(value: Any) -> str:
    return html.escape(_short(value), quote=True)


def _table(head: Sequence[str], rows: Iterable[Sequence[Any]], numeric: int = 0) -> str:
    """Columns from ``numeric`` on are right-aligned (0: none)."""
    out = ["<table><tr>", *(f"<th>{_e(h)}</th>" for h in head), "</tr>"]
    for row in rows:
        out.append("<tr>")
        for i, cell in enumerate(row):
            cls = ' class="n"' if numeric and i >= numeric else ""
            out.append(f"<td{cls}>{_e(cell)}</td>")
        out.append("</tr>")
    out.append("</table>")
    return "".join(out)


def _case_html(result: CaseResult) -> str:
    diffs = "<br>".join(
        f"<code>{_e(d.path)}</code>: {_e(d.kind.value)} — expected <code>{_e(d.legacy)}</code>,"
        f" agent <code>{_e(d.agent)}</code>"
        for d in result.after.differences[:10]
    )
    cells = [result.id, result.route, result.expected_from, result.after.verdict.value]
    tds = "".join(f"<td>{_e(c)}</td>" for c in cells)
    return f"<tr>{tds}<td>{_e(result.error or result.after.reason)}<br>{diffs}</td></tr>"


def render_html(report: Report, title: str = "shadow-proxy replay") -> str:
    """One HTML file with everything inline; every value is escaped."""
    verdict_class = "pass" if report.passed else "fail"
    parts = [
        "<!DOCTYPE html><html lang=en><head><meta charset=utf-8>",
        f"<title>{_e(title)}</title><style>{_CSS}</style></head><body>",
        f"<h1>{_e(title)}</h1>",
        f'<p class="{verdict_class}"><strong>{_e(_verdict_line(report))}</strong></p>',
        f"<p>{report.cases} cases, {report.excluded} excluded.</p>",
        "<h2>Before and after</h2>",
        _table(("", "before (recorded)", "after (replay)"), _summary_rows(report), numeric=1),
    ]
    if report.fields:
        parts += ["<h2>Mismatches by field</h2>",
                  _table(("field", "cases"), report.fields, numeric=1)]  # fmt: skip
    if report.errors:
        parts += ["<h2>Errors</h2>", _table(("reason", "cases"), report.errors, numeric=1)]
    if report.mismatches:
        head = "".join(f"<th>{h}</th>" for h in ("case", "route", "expected", "verdict", "why"))
        rows = "".join(_case_html(r) for r in report.mismatches)
        parts += ["<h2>Failing cases</h2>", f"<table><tr>{head}</tr>{rows}</table>"]
    parts.append("</body></html>\n")
    return "".join(parts)
