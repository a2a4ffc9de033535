"""W3C Trace Context parsing and propagation, as tables from the spec and its
test suite (w3c/trace-context test/test.py)."""

from __future__ import annotations

import re

import pytest

from proxy.tracecontext import (
    RANDOM,
    SAMPLED,
    TraceContext,
    new_span_id,
    new_trace_id,
    parse_traceparent,
    parse_tracestate,
)

TRACE = "12345678901234567890123456789012"
PARENT = "1234567890123456"
VALID = f"00-{TRACE}-{PARENT}-01"
TRACEPARENT = re.compile(r"00-([0-9a-f]{32})-([0-9a-f]{16})-([0-9a-f]{2})")


@pytest.mark.parametrize(
    ("header", "flags"),
    [
        (VALID, 0x01),
        (f"00-{TRACE}-{PARENT}-00", 0x00),
        (f"00-{TRACE}-{PARENT}-03", 0x03),  # level 2: sampled + random
        (f"00-{TRACE}-{PARENT}-ff", 0x03),  # unknown flags are zeroed
        (f"00-{TRACE}-{PARENT}-08", 0x00),
        (f" 00-{TRACE}-{PARENT}-01", 0x01),  # optional white space around the value
        (f"\t00-{TRACE}-{PARENT}-01", 0x01),
        (f"00-{TRACE}-{PARENT}-01 ", 0x01),
        (f"\t 00-{TRACE}-{PARENT}-01 \t", 0x01),
        (f"cc-{TRACE}-{PARENT}-01", 0x01),  # a future version, read by the spec's rule
        (f"cc-{TRACE}-{PARENT}-01-what-the-future-will-be-like", 0x01),
        (f"01-{TRACE}-{PARENT}-09-x", 0x01),
        ([VALID], 0x01),  # one header given as a list of values
    ],
)
def test_a_valid_traceparent_keeps_the_trace_and_the_known_flags(header, flags):
    """A valid traceparent yields its ids, and only the flags the spec defines."""
    assert parse_traceparent(header) == (TRACE, PARENT, flags)


@pytest.mark.parametrize(
    "header",
    [
        None,
        "",
        [],
        f"00-{TRACE}-{PARENT}-01.",  # version 00 allows nothing after the flags
        f"00-{TRACE}-{PARENT}-01-what-the-future-will-be-like",
        f"cc-{TRACE}-{PARENT}-01.what-the-future-will-not-be-like",
        f"ff-{TRACE}-{PARENT}-01",  # version ff is forbidden
        f".0-{TRACE}-{PARENT}-01",
        f"0.-{TRACE}-{PARENT}-01",
        f"000-{TRACE}-{PARENT}-01",
        f"0000-{TRACE}-{PARENT}-01",
        f"0-{TRACE}-{PARENT}-01",
        f"00-{'0' * 32}-{PARENT}-01",  # all-zero trace id
        f"00-.{TRACE[1:]}-{PARENT}-01",
        f"00-{TRACE[:-1]}.-{PARENT}-01",
        f"00-{TRACE}3-{PARENT}-01",  # trace id too long
        f"00-{TRACE[:-1]}-{PARENT}-01",  # too short
        f"00-{TRACE}-{'0' * 16}-01",  # all-zero parent id
        f"00-{TRACE}-.{PARENT[1:]}-01",
        f"00-{TRACE}-{PARENT[:-1]}.-01",
        f"00-{TRACE}-{PARENT}7-01",
        f"00-{TRACE}-{PARENT[:-1]}-01",
        f"00-{TRACE}-{PARENT}-.0",
        f"00-{TRACE}-{PARENT}-0.",
        f"00-{TRACE}-{PARENT}-001",
        f"00-{TRACE}-{PARENT}-1",
        f"00-{TRACE.upper()[:-1]}A-{PARENT}-01",  # hex is lower-case only
        f"00-{TRACE}-{PARENT[:-1]}A-01",
        f"00-{TRACE}-{PARENT}-0A",
        f"CC-{TRACE}-{PARENT}-01",
        f"cc-{'0' * 32}-{PARENT}-01",  # the zero rules hold for future versions too
        f"cc-{TRACE}-{PARENT}",  # a future version shorter than version 00
        f"00_{TRACE}_{PARENT}_01",
        [VALID, f"00-{'1' * 32}-{PARENT}-01"],  # two traceparent headers
    ],
)
def test_an_invalid_traceparent_is_rejected(header):
    """A traceparent the spec calls invalid parses to None."""
    assert parse_traceparent(header) is None


@pytest.mark.parametrize(
    ("header", "expected"),
    [
        ("foo=1", "foo=1"),
        ("foo=1,bar=2", "foo=1,bar=2"),
        (["foo=1,bar=2", "rojo=1,congo=2", "baz=3"], "foo=1,bar=2,rojo=1,congo=2,baz=3"),
        ("foo=1 \t , \t bar=2, \t baz=3", "foo=1,bar=2,baz=3"),
        ("\t foo=1 \t", "foo=1"),
        (["foo=1", ""], "foo=1"),  # an empty header among others is ignored
        (["", "foo=1"], "foo=1"),
        ("foo=1,,bar=2", "foo=1,bar=2"),  # empty members are allowed and dropped
        ("foo=a b", "foo=a b"),  # inner spaces belong to the value
        ("t@v=1", "t@v=1"),
        ("0tenant@sys=1", "0tenant@sys=1"),
        ("z" * 256 + "=1", "z" * 256 + "=1"),
        ("t" * 241 + "@" + "v" * 14 + "=1", "t" * 241 + "@" + "v" * 14 + "=1"),
        ("k=" + "v" * 256, "k=" + "v" * 256),
        ("", None),
        (" , ", None),
        ([], None),
        (None, None),
    ],
)
def test_a_valid_tracestate_is_kept_normalized(header, expected):
    """A valid tracestate is kept in order, without white space or empty members."""
    assert parse_tracestate(header) == expected


@pytest.mark.parametrize(
    "header",
    [
        "foo=1,foo=1",  # duplicate keys
        "foo=1,foo=2",
        ["foo=1", "foo=2"],
        "foo =1",  # key grammar
        "FOO=1",
        "foo.bar=1",
        "1foo=1",
        "foo@=1,bar=2",
        "@foo=1,bar=2",
        "foo@@bar=1,bar=2",
        "foo@bar@baz=1,bar=2",
        "z" * 257 + "=1",
        "t" * 242 + "@v=1",
        "t@" + "v" * 15 + "=1",
        "t@1v=1",  # a system id starts with a letter
        "foo=bar=baz",  # value grammar
        "foo=,bar=3",
        "foo",
        "foo=1 x=2",
        "foo=\x7f",
        "foo=é",
        "k=" + "v" * 257,
        "foo=1,bad key=2",  # one bad member discards all
        ",".join(f"bar{i:02d}={i:02d}" for i in range(1, 34)),  # 33 members
    ],
)
def test_an_invalid_tracestate_is_discarded_whole(header):
    """A tracestate that breaks a rule of the spec is dropped entirely."""
    assert parse_tracestate(header) is None


def test_thirty_two_tracestate_members_are_kept_across_headers():
    """Up to 32 list members are allowed, counted over all tracestate headers."""
    headers = [
        ",".join(f"bar{i:02d}={i:02d}" for i in range(start, min(start + 10, 33)))
        for start in range(1, 33, 10)
    ]
    state = parse_tracestate(headers)
    assert state is not None
    assert state.split(",") == [f"bar{i:02d}={i:02d}" for i in range(1, 33)]
    assert parse_tracestate([*headers, "bar33=33"]) is None


@pytest.mark.parametrize(
    ("traceparent", "tracestate", "kept"),
    [
        (VALID, "foo=1,bar=2", "foo=1,bar=2"),
        (f"00-{TRACE}-{PARENT}-00", "foo=1", "foo=1"),
        (VALID, "foo=1,foo=2", None),  # invalid tracestate: the trace stays, the state goes
        (VALID, None, None),
    ],
)
def test_an_incoming_valid_traceparent_is_continued(traceparent, tracestate, kept):
    """A valid traceparent keeps its ids and flags; only a valid tracestate rides along."""
    context = TraceContext.incoming(traceparent, tracestate)
    assert (context.trace_id, context.parent_id, context.state) == (TRACE, PARENT, kept)
    assert context.sampled is traceparent.endswith("01")


@pytest.mark.parametrize(
    ("traceparent", "tracestate"),
    [
        (None, None),
        (None, "foo=1"),  # tracestate without traceparent is discarded
        (f"00-{'0' * 32}-{PARENT}-01", "foo=1,bar=2"),
        (f"ff-{TRACE}-{PARENT}-01", "foo=1"),
        ([VALID, VALID], "foo=1"),
    ],
)
def test_a_missing_or_invalid_traceparent_starts_a_new_trace(traceparent, tracestate):
    """Without a valid traceparent the proxy starts a trace: new ids, no parent, no tracestate."""
    context = TraceContext.incoming(traceparent, tracestate)
    assert re.fullmatch(r"[0-9a-f]{32}", context.trace_id)
    assert context.trace_id not in (TRACE, "0" * 32)
    assert context.parent_id is None
    assert context.state is None
    assert set(context.child()) == {"traceparent"}


@pytest.mark.parametrize(("sampled", "flags"), [(True, "03"), (False, "02")])
def test_a_new_trace_says_random_and_carries_the_sampling_decision(sampled, flags):
    """A new trace has the random flag and the sampled flag it was given (set by default)."""
    context = TraceContext.incoming("garbage", None, sampled=sampled)
    assert context.child()["traceparent"].endswith(f"-{flags}")
    assert context.flags == RANDOM | (SAMPLED if sampled else 0)
    assert TraceContext.new().sampled


def test_each_child_keeps_the_trace_and_gets_its_own_parent_id():
    """Every upstream call carries the same trace id and tracestate but a parent id of its own."""
    context = TraceContext.incoming(f"cc-{TRACE}-{PARENT}-01-future", "foo=1 , bar=2")
    children = [context.child() for _ in range(200)]
    parsed = [TRACEPARENT.fullmatch(child["traceparent"]) for child in children]
    assert all(match is not None for match in parsed)
    assert {m[1] for m in parsed} == {TRACE}  # type: ignore[index]
    assert {m[3] for m in parsed} == {"01"}  # type: ignore[index]  # propagated as version 00
    parents = {m[2] for m in parsed}  # type: ignore[index]
    assert len(parents) == 200
    assert PARENT not in parents
    assert {child["tracestate"] for child in children} == {"foo=1,bar=2"}


def test_a_child_names_the_span_id_it_is_given():
    """The span id of an exported span becomes the parent id the upstream sees."""
    context = TraceContext.incoming(VALID, None)
    assert context.child("00f067aa0ba902b7") == {"traceparent": f"00-{TRACE}-00f067aa0ba902b7-01"}


def test_generated_ids_are_well_formed_and_distinct():
    """New ids are lower-case hex of the spec's length, never all zero, and do not repeat."""
    spans = {new_span_id() for _ in range(1000)}
    traces = {new_trace_id() for _ in range(1000)}
    assert len(spans) == len(traces) == 1000
    assert all(re.fullmatch(r"[0-9a-f]{16}", s) and s != "0" * 16 for s in spans)
    assert all(re.fullmatch(r"[0-9a-f]{32}", t) and t != "0" * 32 for t in traces)
