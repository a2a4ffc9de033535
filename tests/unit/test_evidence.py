"""The comparison's edge: compressed bodies are compared as their content."""

from __future__ import annotations

import gzip
import zlib

import pytest

from comparators import Verdict, build
from proxy.call import Timeout
from proxy.errors import ConnectTimeoutError
from proxy.judgement import MAX_INFLATED_BYTES, decoded, judge
from proxy.types import Observation
from proxy.upstream import failure_of

JSON = [build("status", {}), build("json", {})]


def obs(body: bytes, encoding: str | None = None, backend: str = "agent") -> Observation:
    headers = {"content-encoding": encoding} if encoding else {}
    return Observation(backend, 200, headers, body)


@pytest.mark.parametrize(
    ("encode", "name"),
    [(gzip.compress, "gzip"), (zlib.compress, "deflate"), (lambda b: b, "identity")],
)
async def test_compressed_answers_are_compared_by_content(encode: object, name: str) -> None:
    doc = b'{"category": "billing", "n": [1, 2]}'
    live = obs(encode(doc), name, "legacy")  # type: ignore[operator]
    agent = obs(doc)
    assert (await judge(JSON, live, agent)).verdict is Verdict.MATCH


async def test_an_unreadable_encoding_skips_instead_of_calling_it_a_mismatch() -> None:
    result = await judge(JSON, obs(b"\x1f\x8b garbage", "gzip", "legacy"), obs(b"{}"))
    assert result.verdict is Verdict.SKIPPED
    assert "not valid gzip" in result.reason
    result = await judge(JSON, obs(b"...", "br", "legacy"), obs(b"{}"))
    assert result.reason == "legacy body is br-encoded"


def test_a_compression_bomb_stops_at_the_inflate_limit() -> None:
    bomb = gzip.compress(b"0" * (MAX_INFLATED_BYTES + 1))
    assert decoded(obs(bomb, "gzip")) == f"agent body inflates past {MAX_INFLATED_BYTES} bytes"


def test_a_connect_timeout_is_a_connect_failure_so_nothing_was_sent() -> None:
    """Retries and fallback rely on this: only 'connect' proves the agent never got it."""
    failure = failure_of(ConnectTimeoutError(1), "agent", Timeout(total=5, connect=1))
    assert (failure.kind, failure.status) == ("connect", 504)
    assert failure.reason == "agent: connect timed out after 1s"
