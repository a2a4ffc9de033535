"""Path patterns for JSON: ``$``, ``.key``, ``['key']``, ``[N]``, ``[*]``, ``.*``, ``..key``.

JSONPath libraries *query documents*; a diff instead walks two documents and
must ask, for every node it visits, "is this node's path ignored?". So the
patterns here match *concrete paths* (tuples of keys and indices), and a
:class:`PathSet` can match several patterns incrementally, one path segment at
a time, so the diff never rebuilds or re-scans whole paths.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable
from dataclasses import dataclass
from enum import Enum
from functools import lru_cache
from typing import Any, TypeAlias, cast

Key: TypeAlias = str | int
"""One step of a concrete path: an object key (``str``) or an array index (``int``)."""


class Token(Enum):
    """The two non-literal pattern segments."""

    ANY = "[*]"  # any one key or index
    DESCEND = ".."  # zero or more keys/indices; always followed by a literal or ANY


Segment: TypeAlias = str | int | Token

_DOT_KEY = re.compile(r"[\w-]+")
_INDEX = re.compile(r"-?\d+")
_PLAIN_KEY = re.compile(r"[A-Za-z_][A-Za-z0-9_-]*")  # printed without quotes


@dataclass(frozen=True, slots=True)
class PathPattern:
    """A compiled path pattern; ``text`` is the canonical spelling."""

    text: str
    segments: tuple[Segment, ...]

    @property
    def is_concrete(self) -> bool:
        """True when the pattern names exactly one path (no ``*`` or ``..``)."""
        return not any(isinstance(s, Token) for s in self.segments)

    @property
    def concrete(self) -> tuple[Key, ...]:
        """The concrete path this pattern names; ValueError if it has wildcards."""
        if not self.is_concrete:
            raise ValueError(f"path {self.text!r} has wildcards where a concrete path is needed")
        return cast("tuple[Key, ...]", self.segments)

    def matches(self, concrete: tuple[Key, ...]) -> bool:
        """Whether the concrete path is exactly one the pattern describes."""
        return PathSet((self,)).matches(concrete)

    def __str__(self) -> str:
        return self.text


class PathSyntaxError(ValueError):
    """A path pattern that does not parse; the message says where and why."""


def _fail(text: str, pos: int, why: str) -> PathSyntaxError:
    return PathSyntaxError(f"bad path {text!r} at position {pos}: {why}")


@lru_cache(maxsize=512)
def compile_path(text: str, *, concrete: bool = False) -> PathPattern:
    """Parse a pattern; with ``concrete=True`` wildcards are rejected too."""
    src = text.strip()
    if not src.startswith("$"):
        raise _fail(text, 0, "a path starts with '$'")
    segments: list[Segment] = []
    i, n = 1, len(src)
    while i < n:
        if src.startswith("..", i):
            segments.append(Token.DESCEND)
            i += 2
            if i < n and src[i] == "[":
                i = _bracket(src, i, segments)
            else:
                i = _dotted(src, i, segments, after="'..'")
        elif src[i] == ".":
            i = _dotted(src, i + 1, segments, after="'.'")
        elif src[i] == "[":
            i = _bracket(src, i, segments)
        else:
            raise _fail(text, i, f"unexpected {src[i]!r}; expected '.', '..' or '['")
    pattern = PathPattern(format_pattern(segments), tuple(segments))
    if concrete and not pattern.is_concrete:
        raise _fail(text, 0, "wildcards ('*', '..') are not allowed here")
    return pattern


def _dotted(src: str, i: int, out: list[Segment], *, after: str) -> int:
    if src.startswith("*", i):
        out.append(Token.ANY)
        return i + 1
    m = _DOT_KEY.match(src, i)
    if m is None:
        raise _fail(src, i, f"expected a key or '*' after {after}")
    key = m.group()
    if key.isdigit():
        raise _fail(src, i, f"write [{key}] for an index or ['{key}'] for a key")
    out.append(key)
    return m.end()


def _bracket(src: str, i: int, out: list[Segment]) -> int:
    i += 1  # past '['
    if i < len(src) and src[i] in "'\"":
        key, i = _quoted(src, i)
        out.append(key)
    elif src.startswith("*", i):
        out.append(Token.ANY)
        i += 1
    else:
        m = _INDEX.match(src, i)
        if m is None:
            raise _fail(src, i, "expected a quoted key, an index or '*' inside [...]")
        if m.group().startswith("-"):
            raise _fail(src, i, "negative indices are not supported")
        out.append(int(m.group()))
        i = m.end()
    if not src.startswith("]", i):
        raise _fail(src, i, "expected ']'")
    return i + 1


def _quoted(src: str, i: int) -> tuple[str, int]:
    """Read a quoted key at ``src[i]``; JSON escapes work in both quote styles."""
    quote, start, chars = src[i], i, ['"']
    i += 1
    while i < len(src):
        c = src[i]
        if c == quote:
            try:
                return json.loads("".join([*chars, '"']), strict=False), i + 1
            except ValueError as exc:
                raise _fail(src, start, f"bad escape in quoted key ({exc})") from None
        if c == "\\" and i + 1 < len(src):
            nxt = src[i + 1]
            chars.append(nxt if nxt == "'" else c + nxt)
            i += 2
            continue
        chars.append('\\"' if c == '"' else c)
        i += 1
    raise _fail(src, start, f"unterminated quoted key (missing {quote})")


def _format_segment(seg: Segment) -> str:
    if isinstance(seg, Token):
        return seg.value
    if isinstance(seg, int):
        return f"[{seg}]"
    if _PLAIN_KEY.fullmatch(seg):
        return f".{seg}"
    return f"[{json.dumps(seg, ensure_ascii=False)}]"


def format_pattern(segments: Iterable[Segment]) -> str:
    """Canonical text of a pattern; ``..`` absorbs the dot of a following ``.key``."""
    parts = ["$"]
    for seg in segments:
        text = _format_segment(seg)
        if parts[-1] == ".." and text.startswith("."):
            text = text[1:]
        parts.append(text)
    return "".join(parts)


def format_path(concrete: Iterable[Key]) -> str:
    """``('a', 0, 'b c')`` -> ``$.a[0]["b c"]``; parses back to the same path."""
    return "$" + "".join(_format_segment(k) for k in concrete)


@lru_cache(maxsize=4096)
def generalize(text_path: str) -> str:
    """Replace every index with ``[*]``, for low-cardinality metric labels.

    Paths that are not ``$``-paths (``status``, ``headers.x``, ``body``) and
    paths that do not parse are returned unchanged.
    """
    try:
        pattern = compile_path(text_path)
    except ValueError:
        return text_path
    return format_pattern(Token.ANY if type(s) is int else s for s in pattern.segments)


def get(doc: Any, pattern: PathPattern | str) -> Any:
    """The value at a concrete path; KeyError (with the path) when it is absent."""
    if isinstance(pattern, str):
        pattern = compile_path(pattern, concrete=True)
    node = doc
    for key in pattern.concrete:
        if isinstance(key, str):
            found = type(node) is dict and key in node
        else:
            found = type(node) is list and key < len(node)
        if not found:
            raise KeyError(pattern.text)
        node = node[key]
    return node


State: TypeAlias = frozenset[tuple[int, int]]
"""Live (pattern number, position) pairs of a :class:`PathSet` walk."""

_DEAD: State = frozenset()
_MEMO_LIMIT = 4096
_ANY_INDEX = -1  # patterns never name a negative index


class PathSet:
    """Several patterns matched as one small NFA, one path segment at a time.

    A walker keeps a :data:`State` per node: ``advance(parent_state, key)``
    gives the child's state and whether some pattern matches the child
    exactly. A dead (empty) state stays dead, so most subtrees cost one
    truthiness test. Transitions are memoised (bounded): documents of one API
    repeat the same keys, so ``..key`` patterns cost a dict lookup per node.
    """

    __slots__ = ("_ends", "_memo", "_names_indices", "_segs", "start")

    def __init__(self, patterns: Iterable[PathPattern]) -> None:
        self._segs = tuple(p.segments for p in patterns)
        self._ends = tuple(len(s) for s in self._segs)
        self._names_indices = any(type(x) is int for segs in self._segs for x in segs)
        self._memo: dict[tuple[State, Key], tuple[State, bool]] = {}
        self.start: State = frozenset((i, 0) for i in range(len(self._segs)))

    def __bool__(self) -> bool:
        return bool(self._segs)

    def advance(self, state: State, key: Key) -> tuple[State, bool]:
        """The child's state, and whether a pattern matches the child's path."""
        if not state:
            return state, False
        if type(key) is int and not self._names_indices:
            key = _ANY_INDEX  # all indices behave alike: one memo entry, not one per index
        found = self._memo.get((state, key))
        if found is None:
            child = self._step(state, key)
            found = child, self.hit(child)
            if len(self._memo) >= _MEMO_LIMIT:
                self._memo.clear()
            self._memo[state, key] = found
        return found

    def step(self, state: State, key: Key) -> State:
        return self.advance(state, key)[0]

    def _step(self, state: State, key: Key) -> State:
        out: set[tuple[int, int]] = set()
        for n, pos in state:
            segs = self._segs[n]
            if pos == self._ends[n]:
                continue
            seg = segs[pos]
            if seg is Token.DESCEND:
                out.add((n, pos))  # the '..' swallows this key
                nxt = segs[pos + 1]
                if nxt is Token.ANY or nxt == key:
                    out.add((n, pos + 2))
            elif seg is Token.ANY or seg == key:
                out.add((n, pos + 1))
        return frozenset(out) if out else _DEAD

    def hit(self, state: State) -> bool:
        ends = self._ends
        return any(pos == ends[n] for n, pos in state)

    def matches(self, concrete: Iterable[Key]) -> bool:
        """Whether any pattern matches the whole concrete path."""
        state = self.start
        for key in concrete:
            state = self.step(state, key)
            if not state:
                return False
        return self.hit(state)
