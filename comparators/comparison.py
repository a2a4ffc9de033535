"""Run a route's comparators and fold their results into one :class:`Comparison`.

Like Scientist's candidate block, a comparator can never hurt its caller: any
exception becomes an ``error`` result, and the fold is a pure function of the
results, so the proxy can call :func:`compare` without a ``try``.
"""

from __future__ import annotations

from collections.abc import Sequence

from .types import Comparator, Comparison, Result, Sample, Verdict


def _run(comparator: Comparator, legacy: Sample, agent: Sample) -> Result:
    name = str(getattr(comparator, "name", type(comparator).__name__))
    try:
        result = comparator(legacy, agent)
    except Exception as exc:
        return Result(name, Verdict.ERROR, 0.0, reason=f"{type(exc).__name__}: {exc}")
    if not isinstance(result, Result):
        reason = f"TypeError: comparator returned {type(result).__name__}, not Result"
        return Result(name, Verdict.ERROR, 0.0, reason=reason)
    return result


def _reasons(results: Sequence[Result], verdict: Verdict) -> str:
    return "; ".join(f"{r.comparator}: {r.reason}" for r in results if r.verdict is verdict)


def combine(results: Sequence[Result]) -> Comparison:
    """Worst verdict wins (error > mismatch > match > skipped); score averages the verdicts."""
    if not results:
        return Comparison.skipped("no comparators")
    verdicts = {r.verdict for r in results}
    scored = [r.score for r in results if r.verdict in (Verdict.MATCH, Verdict.MISMATCH)]
    score = sum(scored) / len(scored) if scored else 0.0
    for verdict in (Verdict.ERROR, Verdict.MISMATCH, Verdict.MATCH, Verdict.SKIPPED):
        if verdict in verdicts:
            break
    reason = "" if verdict is Verdict.MATCH else _reasons(results, verdict)
    differences = tuple(d for r in results for d in r.differences)
    return Comparison(verdict, score, differences, tuple(results), reason)


def compare(comparators: Sequence[Comparator], legacy: Sample, agent: Sample) -> Comparison:
    """Every comparator on one exchange; never raises."""
    return combine([_run(c, legacy, agent) for c in comparators])
