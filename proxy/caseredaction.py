"""A case with every secret masked before it is written (see proxy/redaction.py
for the rules): header values by name, JSON fields by name at any depth, and
text patterns wherever text sits."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import replace
from typing import Any

from comparators import Difference
from proxy.casebody import Body
from proxy.golden import Answer, Case
from proxy.redaction import MASK, Redactor


class _Cleaner:
    """Applies a :class:`Redactor` to every place a case can carry a secret."""

    def __init__(self, redactor: Redactor) -> None:
        self.r = redactor

    def value(self, value: Any) -> Any:
        r = self.r
        if isinstance(value, str):
            return r.text(value)
        if isinstance(value, bool) or value is None or isinstance(value, float):
            return value
        if isinstance(value, int):  # a card number sent as a JSON number (13 to 19 digits)
            return MASK if 10**12 <= value < 10**19 and r.text(str(value)) != str(value) else value
        if isinstance(value, Mapping):
            return {
                r.text(k) if isinstance(k, str) else k: MASK
                if isinstance(k, str) and v is not None and r.sensitive_key(k)
                else self.value(v)
                for k, v in value.items()
            }
        if isinstance(value, list | tuple):
            return [self.value(v) for v in value]
        return r.value(value)

    def headers(self, headers: Mapping[str, str]) -> dict[str, str]:
        return {k: MASK if self.r.sensitive_key(k) else self.r.text(v) for k, v in headers.items()}

    def body(self, body: Body | None) -> Body | None:
        return None if body is None else Body(body.kind, self.value(body.value))

    def answer(self, answer: Answer) -> Answer:
        error = None if answer.error is None else self.r.text(answer.error)
        return replace(
            answer, headers=self.headers(answer.headers), body=self.body(answer.body), error=error
        )

    def difference(self, d: Difference) -> Difference:
        if self.r.sensitive(d.path):  # about a secret: keep where and what kind, not the values
            return replace(d, path=self.r.text(d.path), legacy=MASK, agent=MASK)
        return replace(
            d, path=self.r.text(d.path), legacy=self.value(d.legacy), agent=self.value(d.agent)
        )


def redacted(case: Case, redactor: Redactor) -> Case:
    """The case with every secret masked: header values by name, JSON fields by
    name at any depth, and text patterns (e-mails, cards, bearer tokens, API
    keys, ``name=value`` pairs) everywhere text sits — path and query, bodies,
    difference values, reasons, errors, tool arguments, usage, label notes."""
    clean = _Cleaner(redactor)
    request = case.request
    comparison = case.comparison
    return replace(
        case,
        request=replace(
            request,
            path=redactor.text(request.path),
            headers=clean.headers(request.headers),
            body=clean.body(request.body),
        ),
        legacy=clean.answer(case.legacy),
        agent=clean.answer(case.agent),
        comparison=replace(
            comparison,
            reason=redactor.text(comparison.reason),
            differences=tuple(clean.difference(d) for d in comparison.differences),
        ),
        usage=None if case.usage is None else clean.value(case.usage),
        tool_calls=tuple(replace(t, arguments=clean.value(t.arguments)) for t in case.tool_calls),
        expected=None if case.expected is None else clean.answer(case.expected),
        label=None
        if case.label is None
        else replace(case.label, note=redactor.text(case.label.note)),
    )
