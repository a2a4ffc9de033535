"""Structural diff of two parsed JSON documents, with tolerances, ignores and unordered arrays.

It runs for every mirrored request, so it is written for that: the walk is an
explicit stack (no recursion limit on deep documents), the current path is a
linked cell ``(parent, key)`` that costs one small tuple per node and becomes
a string only when a difference is actually recorded, and ignore / unordered
patterns are matched incrementally (:class:`~comparators.paths.PathSet`).
"""

from __future__ import annotations

import math
from collections import defaultdict, deque
from dataclasses import dataclass, field
from typing import Any, Final, TypeAlias

import orjson

from .paths import Key, PathSet, State, format_path
from .types import Difference, DiffKind

MAX_PAIRING: Final = 256
"""Above this many elements per side, unordered arrays are paired by canonical JSON."""

Cell: TypeAlias = "tuple[Cell, Key] | None"
"""A concrete path as a linked list from the node up to the root (``None``)."""


class _Absent:
    """Marks the side of a pair where a key or index does not exist."""

    def __repr__(self) -> str:
        return "<absent>"


ABSENT: Final = _Absent()
_NUMBER = (int, float)  # bool is deliberately not here: type(True) is bool
_Task: TypeAlias = tuple[Any, Any, Cell, State, State]
_Indexed: TypeAlias = list[tuple[int, tuple[State, State]]]  # element index, its states


def _concrete(cell: Cell) -> tuple[Key, ...]:
    keys: list[Key] = []
    while cell is not None:
        cell, key = cell
        keys.append(key)
    return tuple(reversed(keys))


@dataclass(slots=True)
class Outcome:
    """What a diff found: the first ``max_differences`` differences and the leaf counts."""

    differences: list[Difference] = field(default_factory=list)
    total: int = 0  # differences found, including the ones not kept
    differing: int = 0  # leaves under a difference
    compared: int = 0  # leaves over the union of both trees, ignored ones excluded

    @property
    def score(self) -> float:
        if self.compared == 0:
            return 1.0
        return min(1.0, max(0.0, 1.0 - self.differing / self.compared))


@dataclass(frozen=True, slots=True)
class Differ:
    """The configured diff. Per-call state lives in :class:`Outcome`; the only shared
    state is the bounded transition memo of the PathSets, so threads may share a Differ.
    """

    ignore: PathSet
    unordered: PathSet
    unordered_all: bool = False
    abs_tol: float = 0.0
    rel_tol: float = 0.0
    max_differences: int = 100

    def diff(self, legacy: Any, agent: Any) -> Outcome:
        out = Outcome()
        ign = self.ignore.start
        if ign and self.ignore.hit(ign):
            return out  # '$' itself is ignored
        stack: list[_Task] = [(legacy, agent, None, ign, self.unordered.start)]
        while stack:
            a, b, cell, ign, uno = stack.pop()
            if a is ABSENT or b is ABSENT:
                kind = DiffKind.EXTRA if a is ABSENT else DiffKind.MISSING
                self._record(out, cell, kind, a, b, self.leaves(b if a is ABSENT else a, ign))
                continue
            ta, tb = type(a), type(b)
            if ta is dict and tb is dict:
                stack.extend(reversed(self._dict_children(out, a, b, cell, ign, uno)))
            elif ta is list and tb is list:
                if self.unordered_all or (uno and self.unordered.hit(uno)):
                    stack.extend(reversed(self._unordered_children(out, a, b, cell, ign, uno)))
                else:
                    stack.extend(reversed(self._list_children(out, a, b, cell, ign, uno)))
            elif ta in (dict, list) or tb in (dict, list) or not self._same_type(a, b):
                leaves = max(self.leaves(a, ign), self.leaves(b, ign))
                self._record(out, cell, DiffKind.TYPE, a, b, leaves)
            elif self._scalar_equal(a, b):
                out.compared += 1
            else:
                self._record(out, cell, DiffKind.CHANGED, a, b, 1)
        return out

    def _record(
        self, out: Outcome, cell: Cell, kind: DiffKind, a: Any, b: Any, leaves: int
    ) -> None:
        out.total += 1
        out.differing += leaves
        out.compared += leaves
        if len(out.differences) < self.max_differences:
            legacy = None if a is ABSENT else a
            agent = None if b is ABSENT else b
            out.differences.append(Difference(format_path(_concrete(cell)), kind, legacy, agent))

    def _ignore_step(self, ign: State, key: Key) -> State | None:
        """The child's ignore state, or None when the child (and so its subtree) is ignored."""
        ign, hit = self.ignore.advance(ign, key)
        return None if hit else ign

    def _child(self, ign: State, uno: State, key: Key) -> tuple[State, State] | None:
        """Both child states, or None when the child is ignored."""
        if ign:
            child = self._ignore_step(ign, key)
            if child is None:
                return None
            ign = child
        return ign, (self.unordered.step(uno, key) if uno else uno)

    def _dict_children(
        self, out: Outcome, a: dict[str, Any], b: dict[str, Any], cell: Cell, ign: State, uno: State
    ) -> list[_Task]:
        tasks: list[_Task] = []
        for key, value in a.items():
            states = self._child(ign, uno, key)
            if states is not None:
                tasks.append((value, b.get(key, ABSENT), (cell, key), *states))
        for key, value in b.items():
            if key not in a and (states := self._child(ign, uno, key)) is not None:
                tasks.append((ABSENT, value, (cell, key), *states))
        if not tasks:
            out.compared += 1  # two (effectively) empty objects agree on one leaf
        return tasks

    def _list_children(
        self, out: Outcome, a: list[Any], b: list[Any], cell: Cell, ign: State, uno: State
    ) -> list[_Task]:
        tasks: list[_Task] = []
        la, lb = len(a), len(b)
        for i in range(max(la, lb)):
            states = self._child(ign, uno, i)
            if states is not None:
                left = a[i] if i < la else ABSENT
                tasks.append((left, b[i] if i < lb else ABSENT, (cell, i), *states))
        if not tasks:
            out.compared += 1
        return tasks

    def _unordered_children(
        self, out: Outcome, a: list[Any], b: list[Any], cell: Cell, ign: State, uno: State
    ) -> list[_Task]:
        """Pair equal elements; only the unpaired ones go on as missing/extra."""
        paired, missing, extra = self._pair(a, b, ign, uno)
        for i, states in paired:
            out.compared += self.leaves(a[i], states[0])
        tasks: list[_Task] = [(a[i], ABSENT, (cell, i), *s) for i, s in missing]
        tasks += [(ABSENT, b[j], (cell, j), *s) for j, s in extra]
        if not tasks and not paired:
            out.compared += 1
        return tasks

    def _pair(
        self, a: list[Any], b: list[Any], ign: State, uno: State
    ) -> tuple[_Indexed, _Indexed, _Indexed]:
        """Greedy multiset matching: (paired, unpaired legacy, unpaired agent) with states.

        A paired element takes the legacy index's states, so index-specific
        patterns inside unordered arrays follow the legacy side.
        """
        left = [(i, s) for i in range(len(a)) if (s := self._child(ign, uno, i)) is not None]
        right = [(j, s) for j in range(len(b)) if (s := self._child(ign, uno, j)) is not None]
        paired: _Indexed = []
        missing: _Indexed = []
        if len(left) > MAX_PAIRING or len(right) > MAX_PAIRING:
            # Canonical serialisations: linear, but tolerances and nested ignores do not apply.
            pending: defaultdict[bytes, deque[tuple[int, tuple[State, State]]]] = defaultdict(deque)
            for j, s in right:
                pending[orjson.dumps(b[j], option=orjson.OPT_SORT_KEYS)].append((j, s))
            for i, s in left:
                candidates = pending.get(orjson.dumps(a[i], option=orjson.OPT_SORT_KEYS))
                if candidates:
                    candidates.popleft()
                    paired.append((i, s))
                else:
                    missing.append((i, s))
            extra = sorted(x for q in pending.values() for x in q)
            return paired, missing, extra
        free = dict(right)  # agent index -> states, in order
        for i, s in left:
            match = i if i in free and self.equal(a[i], b[i], *s) else None  # same place first
            if match is None:
                match = next((j for j in free if j != i and self.equal(a[i], b[j], *s)), None)
            if match is None:
                missing.append((i, s))
            else:
                del free[match]
                paired.append((i, s))
        return paired, missing, list(free.items())

    def equal(self, a: Any, b: Any, ign: State, uno: State) -> bool:
        """Whether :meth:`diff` would find nothing, without building any difference."""
        stack: list[tuple[Any, Any, State, State]] = [(a, b, ign, uno)]
        while stack:
            a, b, ign, uno = stack.pop()
            ta, tb = type(a), type(b)
            if ta is dict:
                if tb is not dict:
                    return False
                if not ign:  # the common case: no ignore pattern is live below here
                    if len(a) != len(b) or any(key not in b for key in a):
                        return False
                    for key, value in a.items():
                        stack.append((value, b[key], ign, self.unordered.step(uno, key)))
                    continue
                for key in a.keys() | b.keys():
                    states = self._child(ign, uno, key)
                    if states is None:
                        continue
                    if key not in a or key not in b:
                        return False
                    stack.append((a[key], b[key], *states))
            elif ta is list:
                if tb is not list:
                    return False
                if self.unordered_all or (uno and self.unordered.hit(uno)):
                    _, missing, extra = self._pair(a, b, ign, uno)
                    if missing or extra:
                        return False
                    continue
                for i in range(max(len(a), len(b))):
                    states = self._child(ign, uno, i)
                    if states is None:
                        continue
                    if i >= len(a) or i >= len(b):
                        return False
                    stack.append((a[i], b[i], *states))
            elif tb is dict or tb is list or not self._scalar_equal(a, b):
                return False
        return True

    def leaves(self, node: Any, ign: State) -> int:
        """Leaves under ``node`` that are not ignored; an (effectively) empty container is one."""
        count = 0
        stack: list[tuple[Any, State]] = [(node, ign)]
        while stack:
            node, ign = stack.pop()
            kind = type(node)
            if kind is dict or kind is list:
                before = len(stack)
                items = node.items() if kind is dict else enumerate(node)
                for key, child in items:
                    if not ign:
                        stack.append((child, ign))
                    elif (child_ign := self._ignore_step(ign, key)) is not None:
                        stack.append((child, child_ign))
                if len(stack) == before:
                    count += 1
            else:
                count += 1
        return count

    @staticmethod
    def _same_type(a: Any, b: Any) -> bool:
        ta, tb = type(a), type(b)
        return ta is tb or (ta in _NUMBER and tb in _NUMBER)

    def _scalar_equal(self, a: Any, b: Any) -> bool:
        ta, tb = type(a), type(b)
        if ta in _NUMBER and tb in _NUMBER:
            if a == b:
                return True
            if not (self.abs_tol or self.rel_tol):
                return False
            try:
                return math.isclose(a, b, rel_tol=self.rel_tol, abs_tol=self.abs_tol)
            except OverflowError:  # an int too large for a float
                return False
        return ta is tb and a == b
