"""Run a route's comparators and fold their results into one :class:`Comparison`.

Like Scientist's candidate block, a comparator can never hurt its caller: any
exception or wrong return becomes an ``error`` result, and the fold is a pure
function of the results, so the proxy can call :func:`compare` or
:func:`acompare` without a ``try``. Only cancellation of the caller's task
passes through :func:`acompare`: swallowing it would keep a shut-down shadow
task alive.
"""

from __future__ import annotations

import asyncio
import inspect
from collections.abc import Awaitable, Sequence
from typing import Any, TypeGuard

from .types import AsyncComparator, Comparator, Comparison, Result, Sample, Verdict

AnyComparator = Comparator | AsyncComparator

NEEDS_LOOP = "asynchronous comparator: it runs only under acompare (an event loop)"


def is_async(comparator: object) -> TypeGuard[AsyncComparator]:
    """True for comparators declaring ``asynchronous = True``: their call returns an awaitable."""
    return getattr(comparator, "asynchronous", False) is True


def _name(comparator: object) -> str:
    return str(getattr(comparator, "name", type(comparator).__name__))


def _error(name: str, exc: BaseException) -> Result:
    return Result(name, Verdict.ERROR, 0.0, reason=f"{type(exc).__name__}: {exc}")


def _checked(name: str, result: Any) -> Result:
    if isinstance(result, Result):
        return result
    if inspect.iscoroutine(result):
        result.close()  # never awaited: close it, or Python warns when it is collected
        reason = "TypeError: comparator returned a coroutine; declare `asynchronous = True`"
    else:
        reason = f"TypeError: comparator returned {type(result).__name__}, not Result"
    return Result(name, Verdict.ERROR, 0.0, reason=reason)


def _run(comparator: AnyComparator, legacy: Sample, agent: Sample) -> Result:
    name = _name(comparator)
    if is_async(comparator):
        # Calling it would create an awaitable nobody awaits (and maybe start I/O).
        return Result(name, Verdict.SKIPPED, 0.0, reason=NEEDS_LOOP)
    try:
        result = comparator(legacy, agent)
    except Exception as exc:
        return _error(name, exc)
    return _checked(name, result)


async def _arun(comparator: AsyncComparator, legacy: Sample, agent: Sample) -> Result:
    name = _name(comparator)
    try:
        awaitable: Awaitable[Result] = comparator(legacy, agent)
        result = await awaitable
    except asyncio.CancelledError as exc:
        task = asyncio.current_task()
        if task is not None and task.cancelling():
            raise  # our caller is being cancelled: let it go
        return _error(name, exc)  # the comparator cancelled something of its own
    except Exception as exc:
        return _error(name, exc)
    return _checked(name, result)


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


def compare(comparators: Sequence[AnyComparator], legacy: Sample, agent: Sample) -> Comparison:
    """Every comparator on one exchange; never raises. Asynchronous ones are skipped, saying so."""
    return combine([_run(c, legacy, agent) for c in comparators])


async def acompare(
    comparators: Sequence[AnyComparator], legacy: Sample, agent: Sample
) -> Comparison:
    """Every comparator on one exchange, the asynchronous ones awaited together.

    Synchronous comparators run inline, as in :func:`compare`; results keep the
    order of ``comparators``. Never raises, except ``CancelledError`` when the
    calling task is cancelled (the pending comparators are cancelled with it).
    """
    results: list[Result | None] = []
    waiting: list[tuple[int, AsyncComparator]] = []
    for comparator in comparators:
        if is_async(comparator):
            waiting.append((len(results), comparator))
            results.append(None)
        else:
            results.append(_run(comparator, legacy, agent))
    if len(waiting) == 1:  # no task needed for one
        index, comparator = waiting[0]
        results[index] = await _arun(comparator, legacy, agent)
    elif waiting:
        done = await asyncio.gather(*(_arun(c, legacy, agent) for _, c in waiting))
        for (index, _), result in zip(waiting, done, strict=True):
            results[index] = result
    return combine([r for r in results if r is not None])
