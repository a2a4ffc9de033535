"""JSON paths that say where an in-house agent API puts its tokens and tool calls.

In-house agents answer in their own shapes; a route's config names the
fields instead of the proxy guessing. Paths use the comparators' syntax
(``$.a.b``, ``$.a[0]``, ``$['x']``), concrete only, checked when the config
loads so a typo fails at startup naming the field, not silently per request.
"""

from __future__ import annotations

import math
from typing import Any

from pydantic import BaseModel, ConfigDict, field_validator

from comparators.paths import PathPattern, compile_path, get
from comparators.types import ToolOutcome
from proxy.usageformats import Tally, ToolDraft, count

_OUTCOMES = {
    "ok": ToolOutcome.OK,
    "success": ToolOutcome.OK,
    "succeeded": ToolOutcome.OK,
    "error": ToolOutcome.ERROR,
    "failed": ToolOutcome.ERROR,
    "failure": ToolOutcome.ERROR,
    "invalid_arguments": ToolOutcome.INVALID_ARGUMENTS,
}
_MISSING = object()


class UsageMapping(BaseModel):
    """Where each fact sits in the answer. ``tool_calls`` is the path to a list;
    ``tool_name``, ``tool_arguments`` and ``tool_outcome`` are read from each of
    its items, as a key (``name``) or a path from the item (``$.function.name``).
    A tool outcome is ``ok``/``error``/``invalid_arguments`` (or ``success``,
    ``failed``...) or a boolean success flag; confidence is a number in [0, 1]."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    input_tokens: str | None = None
    output_tokens: str | None = None
    model: str | None = None
    confidence: str | None = None
    tool_calls: str | None = None
    tool_name: str = "name"
    tool_arguments: str = "arguments"
    tool_outcome: str | None = None

    @field_validator("input_tokens", "output_tokens", "model", "confidence", "tool_calls")
    @classmethod
    def _path(cls, value: str | None) -> str | None:
        if value is not None:
            _compile(value)
        return value

    @field_validator("tool_name", "tool_arguments", "tool_outcome")
    @classmethod
    def _field(cls, value: str | None) -> str | None:
        if value is not None and (not value or value.startswith("$")):
            _compile(value)
        return value


def _compile(text: str) -> PathPattern:
    try:
        return compile_path(text, concrete=True)
    except ValueError as exc:
        raise ValueError(str(exc)) from None


def _at(doc: Any, text: str | None) -> Any:
    """The value at a path (or an item's plain key); ``_MISSING`` when absent."""
    if text is None:
        return _MISSING
    if not text.startswith("$"):
        return doc.get(text, _MISSING) if type(doc) is dict else _MISSING
    try:
        return get(doc, text)
    except KeyError:
        return _MISSING


def _confidence(value: Any) -> float | None:
    if type(value) in (int, float) and math.isfinite(value) and 0 <= value <= 1:
        return float(value)
    return None


def _outcome(value: Any) -> ToolOutcome | None:
    if type(value) is bool:
        return ToolOutcome.OK if value else ToolOutcome.ERROR
    if type(value) is str:
        return _OUTCOMES.get(value.strip().lower())
    return None


def read_mapped(t: Tally, doc: Any, mapping: UsageMapping, key: int) -> None:
    """Read one JSON document (a body, or one event of a stream: later events
    overwrite counts and add tool calls, keyed apart by ``key``)."""
    for path, attr in ((mapping.input_tokens, "input"), (mapping.output_tokens, "output")):
        value = count(_at(doc, path))
        if value is not None:
            setattr(t, attr, value)
    model = _at(doc, mapping.model)
    t.set_model(model)
    confidence = _confidence(_at(doc, mapping.confidence))
    if confidence is not None:
        t.confidence = confidence
    calls = _at(doc, mapping.tool_calls)
    if type(calls) is not list:
        return
    for i, call in enumerate(calls):
        name = _at(call, mapping.tool_name)
        draft = t.tools[key, i] = ToolDraft(name if type(name) is str else "")
        draft.outcome = _outcome(_at(call, mapping.tool_outcome))
        arguments = _at(call, mapping.tool_arguments)
        if arguments is _MISSING or arguments is None:
            draft.has_value = True  # a call without arguments
        else:
            t.whole(draft, arguments)
