"""Noise cancellation: learn which fields differ between two answers of the same backend.

Diffy's idea, made automatic. When legacy answered the same request twice and
the two answers disagree at ``$.meta.ts``, the agent disagreeing with legacy at
``$.meta.ts`` says nothing about the agent. The proxy feeds each such pair's
differences to :meth:`NoiseLearner.observe`; paths that differ in at least
``threshold`` of the pairs (after ``min_pairs``) become noise, and
:meth:`NoiseLearner.adjust` discounts them from legacy-vs-agent comparisons.

Bounded and pure: at most ``max_fields`` paths are counted (the rest go into an
``overflow`` counter), no clock, no I/O. Counts age by halving every ``window``
pairs, so noise can be *un-learned*: a learned path whose rate falls below half
the threshold (hysteresis, so a borderline field does not flap) stops being
noise. That matters because discounting a field that has become deterministic
would hide real agent mistakes there. Frozen ``fields`` from config never age.
Whole answers (``$``, ``body``, ``status``) are counted but never learned: a
flaky legacy would otherwise switch off the comparison altogether.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence
from typing import Annotated, Any, Final, Literal, Self

import yaml
from pydantic import AfterValidator, BaseModel, ConfigDict, Field, model_validator

from comparators import Comparison, Difference, Result, Verdict, combine
from comparators.paths import Key, PathSet, Token, compile_path, generalize

NEVER_LEARNED: Final = frozenset({"$", "body", "status"})
"""Paths that stand for a whole answer: discounting them would disable comparison."""

_FIELD = re.compile(r"[A-Za-z_][\w-]*(?:\.[!#$%&'*+^_`|~\w-]+|\[(?:\d+|\*)\])*")
_INDEX = re.compile(r"\[\d+\]")
_UNLISTED = re.compile(r"; (\d+) not listed")  # json comparator: differences past max_differences


def _generalized(path: str) -> str:
    """``$.items[3].id`` -> ``$.items[*].id``; other paths (``tool_calls[2].name``) alike."""
    if path.startswith("$"):
        return generalize(path)
    return _INDEX.sub("[*]", path)


def _field(text: str) -> str:
    """A noise field: a JSON path (canonical form), or ``status``, ``body``, ``headers.<name>``."""
    text = text.strip()
    if text.startswith("$"):
        return compile_path(text).text  # PathSyntaxError (a ValueError) says where and why
    if not _FIELD.fullmatch(text):
        raise ValueError(
            f"bad path {text!r}: expected a JSON path ($.a.b, $.items[*].id, $..id) "
            "or an answer field (status, body, headers.<name>)"
        )
    return _generalized(text)


def _learnable(path: str) -> bool:
    """Not a whole answer, and valid as a frozen field (so freeze_yaml always loads back)."""
    if path in NEVER_LEARNED:
        return False
    try:
        return _field(path) == path
    except ValueError:
        return False


class NoiseSettings(BaseModel):
    """A route's ``noise:`` section. ``fields`` apply whenever set; ``enabled`` turns on
    the second calls that learn more."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    enabled: bool = Field(False, description="call a backend twice for a share of requests")
    percent: float = Field(
        5.0, ge=0, le=100, description="share of compared requests that get the second call"
    )
    backend: Literal["legacy", "agent"] = Field("legacy", description="the backend called twice")
    min_pairs: int = Field(20, ge=1, description="pairs needed before any field is learned")
    threshold: float = Field(
        0.1, gt=0, le=1, description="a field is noise when it differs in this share of pairs"
    )
    max_fields: int = Field(50, ge=1, description="field paths counted; more go to overflow")
    window: int | None = Field(
        None,
        ge=2,
        description="counts halve every this many pairs, so noise follows recent "
        "behaviour and can be un-learned (default: max(1000, 10 x min_pairs))",
    )
    fields: tuple[Annotated[str, AfterValidator(_field)], ...] = Field(
        (), description="frozen noise paths, always discounted (see freeze_yaml)"
    )
    gate: Literal["adjusted", "raw"] = Field(
        "adjusted", description="which agreement the rollout gates use"
    )

    @model_validator(mode="after")
    def _window_holds_min_pairs(self) -> Self:
        if self.window is not None and self.window < 2 * self.min_pairs:
            raise ValueError(
                f"window ({self.window}) must be at least 2 x min_pairs ({self.min_pairs}): "
                "halving the counts must not drop below min_pairs"
            )
        return self

    @property
    def effective_window(self) -> int:
        return self.window if self.window is not None else max(1000, 10 * self.min_pairs)


class _Matcher:
    """Does a difference's path lie at or under one of the fields?"""

    __slots__ = ("_json", "_plain")

    def __init__(self, fields: Iterable[str]) -> None:
        json_fields = [f for f in fields if f.startswith("$")]
        self._json = PathSet(compile_path(f) for f in json_fields)
        self._plain = tuple(f for f in fields if not f.startswith("$"))

    def covers(self, path: str) -> bool:
        if path.startswith("$"):
            return self._covers_json(path)
        g = _generalized(path)
        return any(g == p or g.startswith((p + ".", p + "[")) for p in self._plain)

    def _covers_json(self, path: str) -> bool:
        if not self._json:
            return False
        try:
            segments = compile_path(path).segments
        except ValueError:
            return False  # not a path we can place under a field
        state = self._json.start
        if self._json.hit(state):
            return True
        for seg in segments:
            if seg is Token.DESCEND:
                return False  # a pattern, not a place in a document
            key: Key = -1 if isinstance(seg, Token) else seg  # after '..': only [*] is left
            state, hit = self._json.advance(state, key)
            if hit:
                return True
            if not state:
                return False
        return False


class NoiseLearner:
    """One per route: counts same-backend pairs and discounts the paths that proved noisy."""

    def __init__(self, settings: NoiseSettings) -> None:
        self.settings = settings
        self._window = settings.effective_window
        self._frozen = frozenset(settings.fields)
        self._frozen_matcher = _Matcher(self._frozen)
        self._counts: dict[str, int] = {}  # generalized path -> pairs in which it differed
        self._learned: set[str] = set()
        self._noisy = _Matcher(self._frozen)
        self.pairs = 0
        """Pairs counted (halved every ``window`` pairs): the denominator of every rate."""
        self.overflow = 0
        """Path differences not counted because ``max_fields`` paths were tracked (monotonic)."""

    def observe(self, differences: Sequence[Difference]) -> list[str]:
        """Count one pair of same-backend answers; return the paths newly learned as noise."""
        return self.record(differences)[0]

    def record(self, differences: Sequence[Difference]) -> tuple[list[str], list[str]]:
        """Like :meth:`observe`, also returning the paths no longer noise (un-learned)."""
        self.pairs += 1
        seen = {
            _generalized(d.path) for d in differences if not self._frozen_matcher.covers(d.path)
        }
        for path in sorted(seen):
            if path in self._counts:
                self._counts[path] += 1
            elif len(self._counts) < self.settings.max_fields:
                self._counts[path] = 1
            else:
                self.overflow += 1
        if self.pairs >= self._window:
            self._age()
        return self._reclassify()

    def _age(self) -> None:
        """Halve every count; paths that reach zero leave the table and free their slot."""
        self.pairs //= 2
        self._counts = {p: c // 2 for p, c in self._counts.items() if c // 2}

    def _reclassify(self) -> tuple[list[str], list[str]]:
        s = self.settings
        learned: list[str] = []
        unlearned = sorted(p for p in self._learned if p not in self._counts)
        if self.pairs >= s.min_pairs:
            for path, count in self._counts.items():
                rate = count / self.pairs
                if path not in self._learned:
                    if rate >= s.threshold and _learnable(path):
                        learned.append(path)
                elif rate < s.threshold / 2:
                    unlearned.append(path)
        if learned or unlearned:
            self._learned.update(learned)
            self._learned.difference_update(unlearned)
            self._noisy = _Matcher(self._frozen | self._learned)
        return sorted(learned), sorted(unlearned)

    def noisy(self) -> frozenset[str]:
        """Learned and frozen noise paths (generalized)."""
        return frozenset(self._learned) | self._frozen

    def is_noise(self, path: str) -> bool:
        """Whether a difference at ``path`` is discounted (at or under a noisy path)."""
        return self._noisy.covers(path)

    def adjust(self, comparison: Comparison) -> Comparison:
        """The comparison with noisy differences removed; only a MISMATCH changes.

        Per comparator result: a mismatch whose differences were all noise becomes a
        match; one with differences left (or unlisted ones, past the json comparator's
        ``max_differences``) stays a mismatch with its score raised by the noise share
        of its differences: ``score + (1 - score) * noise / differences``. That is exact
        for the headers comparator and, assuming each difference weighs alike, for the
        json one; it gives 1.0 when all were noise. A mismatch without differences (a
        semantic score, a judge) has nothing to discount and stays. The results are
        then folded again with :func:`comparators.combine`.
        """
        if comparison.verdict is not Verdict.MISMATCH or not self._touches(comparison):
            return comparison
        kept = tuple(d for d in comparison.differences if not self.is_noise(d.path))
        if not comparison.results:
            removed = len(comparison.differences) - len(kept)
            verdict, score = self._rescore(comparison.score, comparison.reason, removed, kept)
            reason = _noise_reason(removed, comparison.reason, verdict)
            return Comparison(verdict, score, kept, (), reason)
        pairs = [self._adjust_result(r) for r in comparison.results]
        results = tuple(r for r, _ in pairs)
        removed = sum(n for _, n in pairs) or len(comparison.differences) - len(kept)
        folded = combine(results)
        if folded.verdict is Verdict.MATCH:
            return Comparison(Verdict.MATCH, folded.score, kept, results, _were_noise(removed))
        return Comparison(Verdict.MISMATCH, folded.score, kept, results, folded.reason)

    def _touches(self, comparison: Comparison) -> bool:
        mismatches = (r for r in comparison.results if r.verdict is Verdict.MISMATCH)
        paths = [d.path for d in comparison.differences]
        paths.extend(d.path for r in mismatches for d in r.differences)
        return any(self.is_noise(p) for p in paths)

    def _adjust_result(self, result: Result) -> tuple[Result, int]:
        if result.verdict is not Verdict.MISMATCH:
            return result, 0
        kept = tuple(d for d in result.differences if not self.is_noise(d.path))
        removed = len(result.differences) - len(kept)
        if not removed:
            return result, 0
        verdict, score = self._rescore(result.score, result.reason, removed, kept)
        reason = _noise_reason(removed, result.reason, verdict)
        return Result(result.comparator, verdict, score, kept, reason), removed

    @staticmethod
    def _rescore(
        score: float, reason: str, removed: int, kept: tuple[Difference, ...]
    ) -> tuple[Verdict, float]:
        unlisted = sum(int(n) for n in _UNLISTED.findall(reason))
        total = removed + len(kept) + unlisted
        new_score = min(1.0, max(0.0, score + (1.0 - score) * removed / total))
        if kept or unlisted:
            return Verdict.MISMATCH, new_score
        return Verdict.MATCH, 1.0

    def snapshot(self) -> list[dict[str, Any]]:
        """Frozen, then counted paths noisiest first: for the admin API and metrics."""
        rows = [_row(p, self.pairs, None, True, True) for p in sorted(self._frozen)]
        for path, count in sorted(self._counts.items(), key=lambda item: (-item[1], item[0])):
            rows.append(_row(path, self.pairs, count, path in self._learned, False))
        return rows

    def freeze_yaml(self, route: str) -> str:
        """A config snippet that freezes today's noise (learned and frozen) into the route."""
        fields = sorted(self.noisy())
        doc = {"routes": [{"name": route, "noise": {"fields": fields}}]}
        head = (
            f"# {len(self._learned)} learned noise field(s) after {self.pairs} pair(s), "
            f"{len(self._frozen)} frozen; merge into the route's noise section\n"
        )
        return head + yaml.safe_dump(doc, sort_keys=False, allow_unicode=True)


def _row(path: str, pairs: int, differed: int | None, noise: bool, frozen: bool) -> dict[str, Any]:
    rate = None if differed is None else round(differed / pairs, 4) if pairs else 0.0
    return {"path": path, "pairs": pairs, "differed": differed, "rate": rate, "noise": noise,
            "frozen": frozen}  # fmt: skip


def _were_noise(removed: int) -> str:
    return f"{removed} difference{'s were' if removed != 1 else ' was'} noise"


def _noise_reason(removed: int, reason: str, verdict: Verdict) -> str:
    if verdict is Verdict.MATCH:
        return f"all {_were_noise(removed)}" if removed != 1 else _were_noise(removed)
    noted = f"{removed} of them noise"
    return f"{reason}; {noted}" if reason else noted
