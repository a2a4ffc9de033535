"""``quorum``: several agent answers vote; the agent agrees when the winner is legacy's answer.

An LLM agent answers the same question differently from one call to the next,
so one sample says little about how often it is right. Asking it ``samples``
times (the proxy reads :attr:`QuorumComparator.agent_samples` and passes the
extra answers in ``Sample.alternatives``) and taking the most common
normalised answer gives both an answer and a confidence: votes / N.

Decisions, so that every outcome is explained rather than guessed:

- N is the number of samples that arrived (the proxy may lose some); the
  reason says when fewer arrived than were asked for. One sample is no vote:
  the result is skipped.
- A sample whose field is missing, whose body is not JSON, or whose answer
  normalises to nothing abstains: it still counts in N, for no value.
- A tie for the most votes has no winner: a mismatch (the agent did not settle
  on an answer), as is a vote where every sample abstained.
- The score is the share of samples that agree with legacy, which is the
  winner's confidence when the winner is legacy's answer (a confident wrong
  answer does not raise the route's agreement).
- Legacy without the field (or not JSON) gives nothing to hold the vote to:
  skipped, as in the ``text`` and ``json`` comparators.
"""

from __future__ import annotations

import re
from collections import Counter
from dataclasses import dataclass
from decimal import Decimal, InvalidOperation
from typing import Annotated, Any, ClassVar, Final, Literal

import orjson
from pydantic import AfterValidator, ConfigDict, Field

from .paths import compile_path, get
from .preview import preview
from .registry import register
from .text import _punctuation
from .types import Difference, DiffKind, Result, Sample, Verdict

Step = Literal["case", "whitespace", "punctuation", "numbers"]
STEPS: Final[tuple[Step, ...]] = ("case", "whitespace", "punctuation", "numbers")
MAX_SAMPLES: Final = 16
"""Each sample is one more agent call, paid in tokens: the option stops at this many."""

_NUMBER = re.compile(r"[+-]?(?:\d+(?:\.\d*)?|\.\d+)(?:[eE][+-]?\d+)?")
_PLAIN_EXPONENT: Final = 30  # beyond this, canonical numbers keep scientific notation


def _concrete_path(text: str) -> str:
    compile_path(text, concrete=True)  # raises a ValueError that says what is wrong
    return text


def canonical_number(value: Decimal) -> str:
    """``42.0`` and ``4.2e1`` -> ``42``; ``0.50`` -> ``0.5``; ``-0`` -> ``0``.

    Exact: trailing zeros are moved into the exponent by hand, because
    ``Decimal.normalize`` rounds to the context's 28 digits."""
    sign, digits, exponent = value.as_tuple()
    if not isinstance(exponent, int):  # infinity or NaN: not from JSON, but never a crash
        return str(value)
    significant = "".join(map(str, digits)).lstrip("0")
    if not significant:
        return "0"
    stripped = significant.rstrip("0")
    exponent += len(significant) - len(stripped)
    exact = Decimal((sign, tuple(map(int, stripped)), exponent))
    return format(exact, "f") if abs(exponent) <= _PLAIN_EXPONENT else str(exact)


def normalize_answer(value: Any, steps: tuple[Step, ...] = STEPS) -> str | None:
    """The vote a value casts, or None when it casts none (an empty answer).

    Numbers (and strings that are only a number, with ``numbers``) become
    canonical; other strings are casefolded, stripped of punctuation and of
    extra whitespace as ``steps`` ask, in that order; ``true``/``false``/
    ``null`` and objects/arrays vote as their JSON text (keys sorted), with no
    other step applied inside them.
    """
    if type(value) in (int, float):
        if "numbers" in steps:
            return canonical_number(Decimal(repr(value)))
        return orjson.dumps(value).decode()
    if not isinstance(value, str):
        return orjson.dumps(value, option=orjson.OPT_SORT_KEYS).decode()
    text = value
    if "numbers" in steps and _NUMBER.fullmatch(text.strip()):
        try:
            return canonical_number(Decimal(text.strip()))
        except InvalidOperation:  # pragma: no cover - the pattern admits only decimals
            pass
    if "case" in steps:
        text = text.casefold()
    if "punctuation" in steps:
        text = text.translate(_punctuation())
    if "whitespace" in steps:
        text = " ".join(text.split())
    return text if text.strip() else None


@register
@dataclass(frozen=True)
class QuorumComparator:
    """Majority vote of several agent samples on a normalised answer, against legacy's."""

    name: ClassVar[str] = "quorum"
    __pydantic_config__: ClassVar[ConfigDict] = ConfigDict(
        extra="forbid", use_attribute_docstrings=True
    )

    samples: Annotated[int, Field(ge=2, le=MAX_SAMPLES)] = 3
    """Agent answers to obtain per request (each one is an agent call), 2 to 16."""
    field: Annotated[str, AfterValidator(_concrete_path)] | None = None
    """Concrete path of the answer in JSON bodies (e.g. `$.answer`); unset: the whole body text."""
    normalize: tuple[Step, ...] = STEPS
    """Steps applied before voting: `case`, `whitespace`, `punctuation`, `numbers`
    (a number, or a string that is only a number, in canonical form: `42.0` -> `42`)."""
    min_confidence: Annotated[float, Field(ge=0.0, le=1.0)] = 0.5
    """Minimum share of all samples (votes / N) the winner needs for a match."""

    @property
    def agent_samples(self) -> int:
        """How many agent answers the proxy should obtain (the contract's attribute)."""
        return self.samples

    def _answer(self, body: bytes) -> tuple[str | None, str]:
        """The normalised answer in a body, or None and why there is none."""
        if self.field is None:
            text = body.decode("utf-8", errors="replace")
            return normalize_answer(text, self.normalize), "empty body"
        try:
            doc = orjson.loads(body)
        except orjson.JSONDecodeError as exc:
            return None, f"body is not JSON: {exc}"
        try:
            value = get(doc, self.field)
        except KeyError:
            return None, f"{self.field} is absent"
        try:
            return normalize_answer(value, self.normalize), f"{self.field} is empty"
        except orjson.JSONEncodeError as exc:  # nested deeper than orjson writes
            return None, f"{self.field} cannot be compared: {exc}"

    def __call__(self, legacy: Sample, agent: Sample) -> Result:
        where = self.field or "body"
        expected, why = self._answer(legacy.body)
        if expected is None:
            return Result(self.name, Verdict.SKIPPED, 0.0, reason=f"legacy has no answer: {why}")
        voters = (agent, *agent.alternatives)
        arrived = len(voters)
        if arrived < 2:
            reason = f"1 agent sample of {self.samples} asked for: no vote"
            return Result(self.name, Verdict.SKIPPED, 0.0, reason=reason)
        # N is the samples asked for: one that failed to arrive is an abstention, so
        # two agreeing answers of four asked are 2/4, not a confident 2/2.
        n = max(self.samples, arrived)
        votes = Counter(a for a in (self._answer(v.body)[0] for v in voters) if a is not None)
        agreeing = votes.get(expected, 0)
        score = agreeing / n
        notes = [f"{arrived} of {self.samples} samples arrived"] if arrived < self.samples else []
        if abstained := arrived - votes.total():
            notes.append(f"{abstained} abstained")
        note = f" ({', '.join(notes)})" if notes else ""
        ranked = votes.most_common()
        if not ranked:
            diff = Difference(where, DiffKind.MISSING, preview(expected), None)
            reason = f"no agent sample gave an answer{note}"
            return Result(self.name, Verdict.MISMATCH, 0.0, (diff,), reason)
        winner, top = ranked[0]
        if len(ranked) > 1 and ranked[1][1] == top:
            tied = sorted(value for value, count in ranked if count == top)
            shown = [preview(t, 60) for t in tied[:3]]
            diff = Difference(where, DiffKind.CHANGED, preview(expected), shown)
            reason = f"no winner: {len(tied)} answers tie with {top}/{n} votes each{note}"
            return Result(self.name, Verdict.MISMATCH, score, (diff,), reason)
        confidence = top / n
        said = f"winner {preview(winner, 60)!r} with {top}/{n} votes{note}"
        if winner != expected:
            diff = Difference(where, DiffKind.CHANGED, preview(expected), preview(winner))
            reason = f"{said}; legacy says {preview(expected, 60)!r}"
            return Result(self.name, Verdict.MISMATCH, score, (diff,), reason)
        if confidence < self.min_confidence:
            # The answer is right, the agent is not sure of it: no field differs.
            reason = f"{said} agrees with legacy, below min_confidence {self.min_confidence}"
            return Result(self.name, Verdict.MISMATCH, score, reason=reason)
        return Result(self.name, Verdict.MATCH, score, reason=said)
