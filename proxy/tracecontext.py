"""W3C Trace Context (``traceparent`` / ``tracestate``), parsed and propagated (pure).

The proxy is one hop of a distributed trace: it keeps the caller's trace id,
or starts a new trace when the caller sent none or sent one that does not
parse (https://www.w3.org/TR/trace-context-2/). Every upstream call it makes
(live, shadow, fallback, each retry attempt) is a separate child with its own
parent id, so the agent's trace shows each call on its own.

Parsing follows the spec and its test suite (w3c/trace-context ``test/test.py``):

- ``traceparent`` version ``00`` is exactly ``00-<32 hex>-<16 hex>-<2 hex>``,
  lower-case hex only; all-zero trace or parent ids are invalid; version ``ff``
  is invalid. A higher version is read by the spec's forward-compatible rule
  (the version-00 fields first, then the end or a ``-``) and propagated as 00.
- Several ``traceparent`` headers make it invalid (which one would be right?).
- Flags other than *sampled* (bit 0) and *random* (bit 1, level 2) are zeroed,
  as the spec requires of a vendor that does not know them.
- ``tracestate`` is read only with a valid ``traceparent``. Headers are joined
  with commas; empty members and optional white space are dropped; at most 32
  members; keys and values follow the spec's grammar; a duplicate key, a bad
  member or too many members discard the whole ``tracestate`` (the test
  suite's strict level), never the trace.

Sampled flag of a trace the proxy starts: **set**, unless the caller says
otherwise (``Tracing.incoming`` applies its ``sample_ratio`` when span export
is on, so the agent records the traces whose proxy spans are exported).
The proxy writes the trace id into every log event and recorded case, so
the agent should record its side too: with the flag clear, a parent-based
agent would drop exactly the traces a mismatch points at, which is worse than
having no proxy in front of it at all.
"""

from __future__ import annotations

import random
import re
from collections.abc import Sequence
from dataclasses import dataclass

SAMPLED = 0x01
RANDOM = 0x02  # level 2: the trace id's right-most 7 bytes are random
_KNOWN_FLAGS = SAMPLED | RANDOM
_ZERO_TRACE = "0" * 32
_ZERO_SPAN = "0" * 16
_OWS = " \t"
_MAX_MEMBERS = 32

_V00 = re.compile(r"(00)-([0-9a-f]{32})-([0-9a-f]{16})-([0-9a-f]{2})")
# A future version: the version-00 fields, then the end or "-" and anything.
_FUTURE = re.compile(r"([0-9a-f]{2})-([0-9a-f]{32})-([0-9a-f]{16})-([0-9a-f]{2})(?:-.*)?", re.S)
_KEY = re.compile(
    r"[a-z][a-z0-9_\-*/]{0,255}"  # simple-key
    r"|[a-z0-9][a-z0-9_\-*/]{0,240}@[a-z][a-z0-9_\-*/]{0,13}"  # tenant@system
)
_VALUE = re.compile(r"[\x20-\x2b\x2d-\x3c\x3e-\x7e]{0,255}[\x21-\x2b\x2d-\x3c\x3e-\x7e]")

Header = str | Sequence[str] | None  # one value, all values of a repeated header, or none


def new_span_id() -> str:
    """16 lower-case hex digits, never all zero (the spec's invalid id)."""
    while True:
        value = random.getrandbits(64)
        if value:
            return f"{value:016x}"


def new_trace_id() -> str:
    """32 lower-case hex digits, random throughout (so the *random* flag holds)."""
    while True:
        value = random.getrandbits(128)
        if value:
            return f"{value:032x}"


def _single(value: Header) -> str | None:
    """The one header value; a repeated ``traceparent`` is as bad as a wrong one."""
    if value is None or isinstance(value, str):
        return value
    return value[0] if len(value) == 1 else None


def parse_traceparent(value: Header) -> tuple[str, str, int] | None:
    """``(trace_id, parent_id, flags)`` of a valid ``traceparent``, else None."""
    text = _single(value)
    if text is None:
        return None
    text = text.strip(_OWS)
    if text.startswith("ff"):
        return None
    match = (_V00 if text.startswith("00") else _FUTURE).fullmatch(text)
    if match is None:
        return None
    _, trace, parent, flags = match.groups()
    if trace == _ZERO_TRACE or parent == _ZERO_SPAN:
        return None
    return trace, parent, int(flags, 16) & _KNOWN_FLAGS


def parse_tracestate(value: Header) -> str | None:
    """The ``tracestate`` to propagate: normalized (members joined by ``,`` in
    order, no white space, no empty members), or None when there is none or it
    is invalid."""
    if value is None:
        return None
    text = value if isinstance(value, str) else ",".join(value)
    members: list[str] = []
    keys: set[str] = set()
    for raw in text.split(","):
        member = raw.strip(_OWS)
        if not member:
            continue
        key, eq, val = member.partition("=")
        if not eq or not _KEY.fullmatch(key) or not _VALUE.fullmatch(val) or key in keys:
            return None
        keys.add(key)
        members.append(member)
        if len(members) > _MAX_MEMBERS:
            return None
    return ",".join(members) or None


@dataclass(frozen=True, slots=True)
class TraceContext:
    """Where one proxied request stands in its distributed trace.

    ``parent_id`` is the caller's span id, or None when the proxy started the
    trace. ``state`` is the validated, normalized ``tracestate`` (None: none).
    """

    trace_id: str
    parent_id: str | None
    flags: int
    state: str | None = None

    @classmethod
    def incoming(
        cls, traceparent: Header, tracestate: Header = None, *, sampled: bool = True
    ) -> TraceContext:
        """The caller's trace when its ``traceparent`` is valid, else a new one
        (``sampled`` decides the new trace's flag; its ``tracestate`` is dropped)."""
        parsed = parse_traceparent(traceparent)
        if parsed is None:
            return cls.new(sampled=sampled)
        trace, parent, flags = parsed
        return cls(trace, parent, flags, parse_tracestate(tracestate))

    @classmethod
    def new(cls, *, sampled: bool = True) -> TraceContext:
        """A trace the proxy starts: random ids, so the *random* flag is set."""
        return cls(new_trace_id(), None, RANDOM | (SAMPLED if sampled else 0), None)

    @property
    def sampled(self) -> bool:
        return bool(self.flags & SAMPLED)

    def traceparent(self, span_id: str) -> str:
        """The version-00 ``traceparent`` naming ``span_id`` as the parent."""
        return f"00-{self.trace_id}-{span_id}-{self.flags & _KNOWN_FLAGS:02x}"

    def child(self, span_id: str | None = None) -> dict[str, str]:
        """Headers for one upstream call: this trace, a new parent id (``span_id``,
        or a fresh one), and the ``tracestate`` unchanged when there is one."""
        headers = {"traceparent": self.traceparent(span_id or new_span_id())}
        if self.state:
            headers["tracestate"] = self.state
        return headers
