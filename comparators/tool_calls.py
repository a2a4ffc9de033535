"""``tool_calls``: did the agent call the same tools, with the same arguments?

Agents act through tools: two answers that read alike can still differ in what
they *did*. This compares the calls the proxy read from each answer
(``Sample.tool_calls``) as a multiset (``order: set``) or position by position
(``order: sequence``), with arguments compared exactly, as a subset (the agent
may pass more than legacy did), or not at all.

Set mode pairs agreeing calls with a maximum bipartite matching (augmenting
paths), so its verdict and score do not depend on the order of the calls, even
for ``subset`` where agreement is not an equivalence and a greedy pairing can
miss. Calls left over are then paired by name and best argument overlap, only
to explain *how* they differ. Both steps share one budget of argument
comparisons and of pairing steps, so an answer with thousands of calls costs
bounded work; the reason says when the budget ran out.

Paths: ``$.tool_calls[i]`` uses the legacy call's index for missing and
differing calls, the agent call's index for extra ones (indices into the
sample's own list, before ``ignore_tools`` filtering).
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from functools import cached_property
from typing import Annotated, Any, ClassVar, Final, Literal

from pydantic import ConfigDict, Field

from .json_body import PathText
from .paths import PathSet, compile_path
from .preview import preview
from .registry import register
from .treediff import Differ
from .types import Difference, DiffKind, Result, Sample, ToolCall, Verdict

MAX_CHECKS: Final = 10_000
"""Argument comparisons per exchange (pairing and explaining together)."""
MAX_STEPS: Final = 200_000
"""Candidate visits per exchange while pairing (each one a dict lookup)."""
_PRUNE_DEPTH: Final = 64  # subset pruning stops here; deeper extra keys count as differences
_NAMES_SHOWN: Final = 5

_Indexed = tuple[int, ToolCall]  # (index in the sample's tool_calls, the call)


@dataclass(slots=True)
class _Tally:
    """What a pairing found, for the Result and its reason."""

    matched: int = 0
    differences: list[Difference] = field(default_factory=list)
    missing: list[ToolCall] = field(default_factory=list)
    extra: list[ToolCall] = field(default_factory=list)
    changed: list[ToolCall] = field(default_factory=list)  # paired, but not agreeing (legacy's)


class _Budget:
    """Counts argument comparisons and pairing steps; once spent, calls compare as different."""

    __slots__ = ("exhausted", "left", "steps")

    def __init__(self, checks: int = MAX_CHECKS, steps: int = MAX_STEPS) -> None:
        self.left = checks
        self.steps = steps
        self.exhausted = False

    def take(self) -> bool:
        """One argument comparison, if any is left."""
        if self.left <= 0:
            self.exhausted = True
            return False
        self.left -= 1
        return True

    def step(self) -> bool:
        """One candidate visit, if any is left."""
        if self.steps <= 0:
            self.exhausted = True
            return False
        self.steps -= 1
        return True


def _prune(shape: Any, value: Any, depth: int = 0) -> Any:
    """``value`` without the object keys ``shape`` lacks, at any depth: the subset test.

    Arrays keep their length: an extra element is still a difference."""
    if depth >= _PRUNE_DEPTH:
        return value
    if type(shape) is dict and type(value) is dict:
        return {k: _prune(shape[k], v, depth + 1) for k, v in value.items() if k in shape}
    if type(shape) is list and type(value) is list:
        head = [_prune(s, v, depth + 1) for s, v in zip(shape, value, strict=False)]
        return head + value[len(shape) :]
    return value


def _shown(call: ToolCall) -> dict[str, Any]:
    """A call as a difference shows it; raw invalid arguments are cut short."""
    if call.valid:
        return {"name": call.name, "arguments": call.arguments}
    return {"name": call.name, "arguments": preview(str(call.arguments)), "valid": False}


def _names(calls: Iterable[ToolCall]) -> str:
    """``search, book (2)``: tool names in first-seen order, repeats counted."""
    counts = Counter(c.name for c in calls)
    shown = [f"{n} ({k})" if k > 1 else n for n, k in list(counts.items())[:_NAMES_SHOWN]]
    more = f" (+{len(counts) - _NAMES_SHOWN} more tools)" if len(counts) > _NAMES_SHOWN else ""
    return ", ".join(shown) + more


def _augment(
    root: int,
    candidates: Callable[[int], Iterable[int]],
    edge: Callable[[int, int], bool],
    owner: dict[int, int],
    budget: _Budget,
) -> bool:
    """Kuhn's augmenting path from legacy call ``root``, iterative (no recursion limit).

    ``owner`` maps an agent position to the legacy position it is paired with."""
    visited: set[int] = set()
    stack: list[tuple[int, Iterator[int]]] = [(root, iter(candidates(root)))]
    path: list[tuple[int, int]] = []  # the (legacy, agent) edges leading to each frame
    while stack:
        p, options = stack[-1]
        for q in options:
            if not budget.step():
                return False
            if q in visited or not edge(p, q):
                continue
            visited.add(q)
            if q not in owner:
                owner[q] = p
                for pp, qq in path:
                    owner[qq] = pp
                return True
            path.append((p, q))
            stack.append((owner[q], iter(candidates(owner[q]))))
            break
        else:
            stack.pop()
            if path:
                path.pop()
    return False


@register
@dataclass(frozen=True)
class ToolCallsComparator:
    """Tools called and their arguments; score is the share of calls that agree."""

    name: ClassVar[str] = "tool_calls"
    __pydantic_config__: ClassVar[ConfigDict] = ConfigDict(
        extra="forbid", use_attribute_docstrings=True
    )

    order: Literal["set", "sequence"] = "set"
    """`set`: the same calls in any order (a multiset); `sequence`: call i against call i."""
    arguments: Literal["exact", "subset", "ignore"] = "exact"
    """`exact`: equal arguments; `subset`: every legacy argument present and equal in the agent's
    call (extra object keys allowed, at any depth); `ignore`: names only."""
    ignore_arguments: tuple[PathText, ...] = ()
    """Path patterns inside the arguments (`$` is the arguments object) never compared,
    e.g. `$.request_id`, `$..trace`."""
    ignore_tools: tuple[str, ...] = ()
    """Tool names left out on both sides (e.g. logging or telemetry tools)."""
    max_differences: Annotated[int, Field(ge=0)] = 100
    """Keep at most this many differences per comparison (all still count in the score)."""

    @cached_property
    def _differ(self) -> Differ:
        return Differ(
            ignore=PathSet(compile_path(p) for p in self.ignore_arguments),
            unordered=PathSet(()),
            max_differences=self.max_differences,
        )

    def __call__(self, legacy: Sample, agent: Sample) -> Result:
        skip = set(self.ignore_tools)
        left = [(i, c) for i, c in enumerate(legacy.tool_calls) if c.name not in skip]
        right = [(j, c) for j, c in enumerate(agent.tool_calls) if c.name not in skip]
        if not left and not right:
            # Agreeing that no tool was needed is agreement, not absence of evidence.
            return Result(self.name, Verdict.MATCH, 1.0, reason="neither answer called a tool")
        budget = _Budget()
        pair = self._set if self.order == "set" else self._sequence
        tally = pair(left, right, budget)
        total = max(len(left), len(right))
        score = tally.matched / total
        diffs = tally.differences
        if tally.matched == total and not diffs:
            return Result(self.name, Verdict.MATCH, score)
        plural = "" if total == 1 else "s"
        parts = [f"{tally.matched} of {total} tool call{plural} agree"]
        for label, calls in (
            ("missing", tally.missing),
            ("extra", tally.extra),
            ("differing", tally.changed),
        ):
            if calls:
                parts.append(f"{label}: {_names(calls)}")
        if budget.exhausted:
            parts.append("comparison budget spent; later calls count as different")
        if len(diffs) > self.max_differences:
            parts.append(f"{len(diffs) - self.max_differences} differences not listed")
        kept = tuple(diffs[: self.max_differences])
        return Result(self.name, Verdict.MISMATCH, score, kept, "; ".join(parts))

    # -- agreement --------------------------------------------------------------

    def _agree(self, a: ToolCall, b: ToolCall) -> bool:
        """Same name, same validity, arguments equal under the mode."""
        if a.name != b.name or a.valid != b.valid:
            return False  # an invalid call never matches a valid one
        if self.arguments == "ignore":
            return True
        if not a.valid:
            return bool(a.arguments == b.arguments)  # raw texts
        differ = self._differ
        if differ.ignore.hit(differ.ignore.start):
            return True  # `$` itself is ignored
        theirs = _prune(a.arguments, b.arguments) if self.arguments == "subset" else b.arguments
        return differ.equal(a.arguments, theirs, differ.ignore.start, differ.unordered.start)

    def _explain(self, index: int, a: ToolCall, b: ToolCall) -> tuple[float, list[Difference]]:
        """How two same-name calls differ, and how much of the arguments agree (0..1)."""
        where = f"$.tool_calls[{index}]"
        if a.name != b.name:
            return 0.0, [Difference(f"{where}.name", DiffKind.CHANGED, a.name, b.name)]
        shown_a, shown_b = _shown(a)["arguments"], _shown(b)["arguments"]
        if a.valid != b.valid:
            agent = shown_b if b.valid else f"<invalid arguments: {shown_b}>"
            legacy = shown_a if a.valid else f"<invalid arguments: {shown_a}>"
            return 0.0, [Difference(f"{where}.arguments", DiffKind.TYPE, legacy, agent)]
        if not a.valid:
            return 0.0, [Difference(f"{where}.arguments", DiffKind.CHANGED, shown_a, shown_b)]
        theirs = _prune(a.arguments, b.arguments) if self.arguments == "subset" else b.arguments
        outcome = self._differ.diff(a.arguments, theirs)
        diffs = [
            Difference(f"{where}.arguments{d.path[1:]}", d.kind, d.legacy, d.agent)
            for d in outcome.differences
        ]
        return outcome.score, diffs

    # -- pairing ----------------------------------------------------------------

    def _set(self, left: list[_Indexed], right: list[_Indexed], budget: _Budget) -> _Tally:
        by_name: dict[str, list[int]] = {}
        for q, (_, call) in enumerate(right):
            by_name.setdefault(call.name, []).append(q)
        memo: dict[tuple[int, int], bool] = {}

        def candidates(p: int) -> Iterator[int]:
            name = left[p][1].name  # the same place first (answers usually agree), then in order
            if p < len(right) and right[p][1].name == name:
                yield p
            yield from (q for q in by_name.get(name, ()) if q != p)

        def edge(p: int, q: int) -> bool:
            if (p, q) not in memo:
                memo[p, q] = budget.take() and self._agree(left[p][1], right[q][1])
            return memo[p, q]

        owner: dict[int, int] = {}
        for p in range(len(left)):
            _augment(p, candidates, edge, owner, budget)
        tally = _Tally(matched=len(owner))
        paired = set(owner.values())
        free: dict[str, list[int]] = {}
        for q, (_, call) in enumerate(right):
            if q not in owner:
                free.setdefault(call.name, []).append(q)
        for p, (index, call) in enumerate(left):
            if p in paired:
                continue
            best: tuple[float, int, list[Difference]] | None = None
            for q in free.get(call.name, ()):  # leftovers: the best overlap explains how
                if not budget.take():
                    break
                overlap, found = self._explain(index, call, right[q][1])
                if best is None or overlap > best[0]:
                    best = (overlap, q, found)
            if best is None:
                tally.missing.append(call)
                where = f"$.tool_calls[{index}]"
                tally.differences.append(Difference(where, DiffKind.MISSING, _shown(call)))
            else:
                free[call.name].remove(best[1])
                tally.changed.append(call)
                tally.differences.extend(best[2])
        for q in sorted(q for group in free.values() for q in group):
            index, call = right[q]
            tally.extra.append(call)
            where = f"$.tool_calls[{index}]"
            tally.differences.append(Difference(where, DiffKind.EXTRA, None, _shown(call)))
        return tally

    def _sequence(self, left: list[_Indexed], right: list[_Indexed], budget: _Budget) -> _Tally:
        tally = _Tally()
        for (index, a), (_, b) in zip(left, right, strict=False):
            if budget.take() and self._agree(a, b):
                tally.matched += 1
                continue
            tally.changed.append(a)
            if budget.take():
                tally.differences.extend(self._explain(index, a, b)[1])
            else:
                where = f"$.tool_calls[{index}]"
                tally.differences.append(Difference(where, DiffKind.CHANGED, _shown(a), _shown(b)))
        for index, call in left[len(right) :]:
            tally.missing.append(call)
            where = f"$.tool_calls[{index}]"
            tally.differences.append(Difference(where, DiffKind.MISSING, _shown(call)))
        for index, call in right[len(left) :]:
            tally.extra.append(call)
            where = f"$.tool_calls[{index}]"
            tally.differences.append(Difference(where, DiffKind.EXTRA, None, _shown(call)))
        return tally
