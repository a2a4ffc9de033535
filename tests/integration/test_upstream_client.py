"""The upstream client (``Upstream`` → ``Pool`` → ``Call`` → ``Connection``)
against real sockets: raw servers on 127.0.0.1:0 that send exact bytes and
count the connections they accept, so each test checks what a user of the
proxy would notice: the answer, the error kind, and how many connections the
backend saw.

Every scenario also runs on uvloop (``test_the_scenario_passes_on_uvloop``),
the loop production uses.
"""

from __future__ import annotations

import asyncio
import hashlib
import shutil
import socket
import ssl
import subprocess
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import uvloop
from fakes import Fake, RawConn, RawServer, dead_url, start_fake
from multidict import CIMultiDict, CIMultiDictProxy

from proxy.call import Call
from proxy.connection import HIGH_WATER, MAX_HEAD, READ_SIZE
from proxy.errors import (
    ConnectError,
    ConnectTimeoutError,
    DisconnectedError,
    InvalidResponseError,
)
from proxy.settings import Backend
from proxy.types import Failure
from proxy.upstream import Upstream

# -- helpers -------------------------------------------------------------------


class Upstreams:
    """Builds started upstreams to test backends; closes them all at the end."""

    def __init__(self) -> None:
        self._made: list[Upstream] = []

    async def __call__(self, url: str, **config: Any) -> Upstream:
        upstream = Upstream("agent", Backend(url=url, **config))
        await upstream.start()
        self._made.append(upstream)
        return upstream

    async def close(self) -> None:
        for upstream in self._made:
            await upstream.close()


@pytest.fixture
async def upstreams() -> AsyncIterator[Upstreams]:
    made = Upstreams()
    yield made
    await made.close()


Scenario = Callable[[Upstreams], Awaitable[None]]
SCENARIOS: list[Scenario] = []


def scenario(test: Scenario) -> Scenario:
    """Mark a test that needs nothing but ``upstreams``: it also runs on uvloop."""
    SCENARIOS.append(test)
    return test


@dataclass
class Answer:
    status: int
    reason: str
    headers: CIMultiDictProxy[str]
    body: bytes


async def fetch(
    upstream: Upstream,
    method: str = "GET",
    path: str = "/",
    headers: list[tuple[str, str]] | None = None,
    body: bytes | AsyncIterator[bytes] | None = None,
    total: float | None = None,
) -> Answer:
    """One whole exchange, as the proxy does it; ``total`` overrides the backend's timeout."""
    limit = upstream.timeout(total) if total is not None else None
    call = upstream.request(method, path, CIMultiDict(headers or []), body, timeout=limit)
    async with call as response:
        data = await response.read()
    return Answer(response.status, response.reason, response.headers, data)


def reply(body: bytes = b"ok", status: str = "200 OK", *headers: str) -> bytes:
    """A well-framed HTTP/1.1 response (Content-Length) with extra header lines."""
    lines = [f"HTTP/1.1 {status}", *headers, f"Content-Length: {len(body)}", "", ""]
    return "\r\n".join(lines).encode() + body


OK = reply()


def answering(*responses: bytes) -> Callable[[RawConn], Awaitable[None]]:
    """Each request on a connection gets the next response; the last one repeats."""

    async def handle(conn: RawConn) -> None:
        sent = 0
        while await conn.request() is not None:
            await conn.send(responses[min(sent, len(responses) - 1)])
            sent += 1

    return handle


def once_then(last: Callable[[RawConn], Awaitable[None]]) -> Callable[[RawConn], Awaitable[None]]:
    """The first connection answers one request, then does ``last``; later ones answer all."""

    async def handle(conn: RawConn) -> None:
        if conn.index > 0:
            return await answering(OK)(conn)
        await conn.request()
        await conn.send(OK)
        await last(conn)

    return handle


async def hang_up_after_reading(conn: RawConn) -> None:
    """Read the next request, then close without a word (the race with an idle close)."""
    await conn.request()


async def until(predicate: Callable[[], object], within: float = 2.0) -> None:
    """Wait for a condition nothing signals (a socket state, a pool count)."""
    async with asyncio.timeout(within):
        while not predicate():  # noqa: ASYNC110 - polling is the point
            await asyncio.sleep(0.002)


def failure_of(upstream: Upstream, exc: BaseException, total: float | None = None) -> Failure:
    return upstream.failure(exc, upstream.timeout(total) if total is not None else None)


# -- keep-alive and the pool's bound -------------------------------------------


@scenario
async def test_sequential_requests_share_one_keep_alive_connection(upstreams: Upstreams) -> None:
    async with RawServer(answering(OK)) as server:
        upstream = await upstreams(server.url)
        for _ in range(5):
            assert (await fetch(upstream)).body == b"ok"
        assert len(server.connections) == 1
        assert len(server.requests) == 5
        assert upstream.pool.idle == 1


@scenario
async def test_at_most_max_connections_open_and_the_next_request_waits_for_a_free_one(
    upstreams: Upstreams,
) -> None:
    go = asyncio.Semaphore(0)  # one permit per answer the server may send

    async def held(conn: RawConn) -> None:
        while await conn.request() is not None:
            await go.acquire()
            await conn.send(OK)

    async with RawServer(held) as server:
        upstream = await upstreams(server.url, max_connections=2)
        calls = [asyncio.create_task(fetch(upstream)) for _ in range(3)]
        await until(lambda: len(server.requests) == 2)
        await asyncio.sleep(0.05)  # room for a third connection, if one were to be made
        assert len(server.connections) == 2
        assert not any(call.done() for call in calls)

        go.release()  # one answer: its connection is freed and the third request takes it
        await until(lambda: len(server.requests) == 3)
        go.release()
        go.release()
        answers = await asyncio.gather(*calls)
        assert [a.status for a in answers] == [200, 200, 200]
        assert len(server.connections) == 2


@scenario
async def test_a_waiter_that_leaves_the_queue_does_not_take_a_slot_with_it(
    upstreams: Upstreams,
) -> None:
    go = asyncio.Event()

    async def held(conn: RawConn) -> None:
        while await conn.request() is not None:
            await go.wait()
            await conn.send(OK)

    async with RawServer(held) as server:
        upstream = await upstreams(server.url, max_connections=1)
        first = asyncio.create_task(fetch(upstream))
        await until(lambda: len(server.requests) == 1)
        cancelled = asyncio.create_task(fetch(upstream))
        with pytest.raises(TimeoutError):
            await fetch(upstream, total=0.05)  # timed out in the queue
        cancelled.cancel()  # queued too, behind the first

        with pytest.raises(asyncio.CancelledError):
            await cancelled

        go.set()
        assert (await first).status == 200
        assert (await fetch(upstream, total=1)).status == 200
        assert len(server.connections) == 1
        assert upstream.pool.open == 1


@scenario
async def test_a_request_arriving_as_a_connection_is_released_queues_behind_the_waiter(
    upstreams: Upstreams,
) -> None:
    """Served in arrival order: a newcomer cannot take the connection a woken
    waiter was promised, which could bounce that waiter until its deadline."""
    async with RawServer(answering(OK, OK, OK)) as server:
        upstream = await upstreams(server.url, max_connections=1)
        order: list[str] = []

        async def timed(name: str) -> None:
            await fetch(upstream, total=1)
            order.append(name)

        async with upstream.request("GET", "/", CIMultiDict()) as holder:
            waiter = asyncio.create_task(timed("waiter"))
            await asyncio.sleep(0)  # it queues behind the holder
            await holder.read()
            # Scheduled before the release wakes the waiter, so it runs first.
            newcomer = asyncio.create_task(timed("newcomer"))
        await asyncio.gather(waiter, newcomer)
        assert order == ["waiter", "newcomer"]
        assert len(server.connections) == 1


@scenario
async def test_a_waiter_cancelled_just_as_its_turn_came_passes_the_turn_on(
    upstreams: Upstreams,
) -> None:
    async with RawServer(answering(OK)) as server:
        upstream = await upstreams(server.url, max_connections=1)
        async with upstream.request("GET", "/", CIMultiDict()) as holder:
            woken = asyncio.create_task(fetch(upstream))
            after = asyncio.create_task(fetch(upstream, total=1))
            await asyncio.sleep(0)  # one step each: both queue behind the holder
            await holder.read()
        woken.cancel()  # its turn was given to it as the holder left; it never ran
        with pytest.raises(asyncio.CancelledError):
            await woken
        assert (await after).status == 200
        assert len(server.connections) == 1


# -- stale keep-alive connections ----------------------------------------------


@scenario
async def test_a_get_after_the_backend_closed_the_idle_connection_goes_on_a_new_one(
    upstreams: Upstreams,
) -> None:
    async def close_at_once(conn: RawConn) -> None:
        pass

    async with RawServer(once_then(close_at_once)) as server:
        upstream = await upstreams(server.url)
        await fetch(upstream)
        await asyncio.sleep(0.02)  # the close reaches the client while the connection idles
        assert (await fetch(upstream)).body == b"ok"
        assert len(server.connections) == 2


@scenario
async def test_a_get_racing_the_backends_idle_close_is_resent_once_on_a_new_connection(
    upstreams: Upstreams,
) -> None:
    async with RawServer(once_then(hang_up_after_reading)) as server:
        upstream = await upstreams(server.url)
        await fetch(upstream)
        answer = await fetch(upstream, path="/again")
        assert (answer.status, answer.body) == (200, b"ok")
        again = [r.connection for r in server.requests if r.request_line.startswith("GET /again")]
        assert again == [0, 1]


@scenario
async def test_a_post_racing_the_idle_close_is_never_resent(upstreams: Upstreams) -> None:
    async with RawServer(once_then(hang_up_after_reading)) as server:
        upstream = await upstreams(server.url)
        await fetch(upstream)
        with pytest.raises(DisconnectedError) as caught:
            await fetch(upstream, "POST", "/order", body=b"pay once")
        failure = failure_of(upstream, caught.value)
        assert (failure.kind, failure.status) == ("disconnect", 502)
        posts = [r for r in server.requests if r.request_line.startswith("POST")]
        assert len(posts) == 1
        assert len(server.connections) == 1


@scenario
async def test_a_streamed_put_racing_the_idle_close_is_never_resent(upstreams: Upstreams) -> None:
    async def body() -> AsyncIterator[bytes]:
        yield b"streamed once"

    async with RawServer(once_then(hang_up_after_reading)) as server:
        upstream = await upstreams(server.url)
        await fetch(upstream)
        with pytest.raises(DisconnectedError):
            await fetch(upstream, "PUT", "/doc", body=body())
        assert [r.body for r in server.requests if r.request_line.startswith("PUT")] == [
            b"streamed once"
        ]
        assert len(server.connections) == 1


@scenario
async def test_a_get_on_a_new_connection_that_is_dropped_is_not_resent(
    upstreams: Upstreams,
) -> None:
    async with RawServer(hang_up_after_reading) as server:
        upstream = await upstreams(server.url)
        with pytest.raises(DisconnectedError):
            await fetch(upstream)
        assert len(server.requests) == 1


@scenario
async def test_a_get_is_resent_at_most_once(upstreams: Upstreams) -> None:
    async def drop_all_but_the_first(conn: RawConn) -> None:
        if conn.index == 0:
            await conn.request()
            await conn.send(OK)
        await conn.request()

    async with RawServer(drop_all_but_the_first) as server:
        upstream = await upstreams(server.url)
        await fetch(upstream)
        with pytest.raises(DisconnectedError):
            await fetch(upstream)
        assert len(server.requests) == 3  # the first, then the second twice
        assert len(server.connections) == 2


@scenario
async def test_a_get_is_not_resent_once_part_of_an_answer_came_back(upstreams: Upstreams) -> None:
    async def half_an_answer(conn: RawConn) -> None:
        await conn.request()
        await conn.send(b"HTTP/1.1 200 OK\r\n")

    async with RawServer(once_then(half_an_answer)) as server:
        upstream = await upstreams(server.url)
        await fetch(upstream)
        with pytest.raises(DisconnectedError):
            await fetch(upstream)
        assert len(server.requests) == 2
        assert len(server.connections) == 1


@scenario
async def test_an_idle_connection_older_than_the_keepalive_is_closed_not_reused(
    upstreams: Upstreams,
) -> None:
    async with RawServer(answering(OK)) as server:
        upstream = await upstreams(server.url)
        upstream.pool.keepalive = 0.03
        await fetch(upstream)
        await asyncio.sleep(0.06)
        await fetch(upstream)
        assert len(server.connections) == 2
        await until(server.connections[0].client_closed.is_set)


# -- response framings -----------------------------------------------------------

CHUNKED = (
    b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n6\r\n world\r\n0\r\n\r\n"
)
HTTP10 = b"HTTP/1.0 200 OK\r\n\r\nhello world"
CLOSE = b"HTTP/1.1 200 OK\r\nConnection: close\r\n\r\nhello world"
UNFRAMED = b"HTTP/1.1 200 OK\r\n\r\nhello world"


@pytest.mark.parametrize(
    ("response", "reused"),
    [
        (reply(b"hello world"), True),
        (CHUNKED, True),
        (HTTP10, False),
        (CLOSE, False),
        (UNFRAMED, False),
    ],
    ids=["content-length", "chunked", "http-1.0", "connection-close", "unframed"],
)
async def test_each_framing_gives_the_whole_body_and_only_framed_ones_keep_the_connection(
    upstreams: Upstreams, response: bytes, reused: bool
) -> None:
    async def handle(conn: RawConn) -> None:
        while await conn.request() is not None:
            await conn.send(response)
            if not reused:
                return  # the close ends the body

    async with RawServer(handle) as server:
        upstream = await upstreams(server.url)
        assert (await fetch(upstream)).body == b"hello world"
        assert (await fetch(upstream)).body == b"hello world"
        assert len(server.connections) == (1 if reused else 2)


@scenario
async def test_a_chunked_body_sent_in_pieces_arrives_whole(upstreams: Upstreams) -> None:
    async def piecemeal(conn: RawConn) -> None:
        await conn.request()
        for i in range(0, len(CHUNKED), 7):
            await conn.send(CHUNKED[i : i + 7])
            await asyncio.sleep(0.001)
        await conn.until_closed()

    async with RawServer(piecemeal) as server:
        upstream = await upstreams(server.url)
        assert (await fetch(upstream)).body == b"hello world"


@scenario
async def test_a_chunked_trailer_does_not_become_a_response_header(upstreams: Upstreams) -> None:
    response = CHUNKED.replace(b"0\r\n\r\n", b"0\r\nX-Trailer: late\r\n\r\n")
    async with RawServer(answering(response)) as server:
        upstream = await upstreams(server.url)
        answer = await fetch(upstream)
        assert answer.body == b"hello world"
        assert "X-Trailer" not in answer.headers
        assert (await fetch(upstream)).body == b"hello world"
        assert len(server.connections) == 1


@scenario
async def test_a_body_cut_short_of_its_content_length_is_a_disconnect(
    upstreams: Upstreams,
) -> None:
    async def cut(conn: RawConn) -> None:
        await conn.request()
        await conn.send(b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\nonly ten b")

    async with RawServer(cut) as server:
        upstream = await upstreams(server.url)
        async with upstream.request("GET", "/", CIMultiDict()) as response:
            assert response.status == 200  # the head was fine: the cut shows in the body
            with pytest.raises(DisconnectedError) as caught:
                await response.read()
        failure = failure_of(upstream, caught.value)
        assert (failure.kind, failure.status) == ("disconnect", 502)
        assert failure.reason == "agent: connection closed before the answer ended"


@scenario
async def test_a_chunked_body_cut_before_its_last_chunk_is_a_disconnect(
    upstreams: Upstreams,
) -> None:
    async def cut(conn: RawConn) -> None:
        await conn.request()
        await conn.send(CHUNKED.removesuffix(b"0\r\n\r\n"))

    async with RawServer(cut) as server:
        upstream = await upstreams(server.url)
        with pytest.raises(DisconnectedError):
            await fetch(upstream)


@scenario
async def test_a_connection_close_answer_is_not_reused_even_if_the_backend_keeps_it_open(
    upstreams: Upstreams,
) -> None:
    async with RawServer(answering(reply(b"ok", "200 OK", "Connection: close"))) as server:
        upstream = await upstreams(server.url)
        await fetch(upstream)
        await fetch(upstream)
        assert len(server.connections) == 2
        await until(server.connections[0].client_closed.is_set)


# -- bodiless answers --------------------------------------------------------------


@scenario
async def test_a_head_answer_ends_at_its_head_and_the_connection_serves_the_next_request(
    upstreams: Upstreams,
) -> None:
    head = b"HTTP/1.1 200 OK\r\nContent-Length: 1000\r\nContent-Type: text/plain\r\n\r\n"

    async def handle(conn: RawConn) -> None:
        while (request := await conn.request()) is not None:
            await conn.send(head if request.request_line.startswith("HEAD") else OK)

    async with RawServer(handle) as server:
        upstream = await upstreams(server.url)
        answer = await fetch(upstream, "HEAD", total=1)
        assert (answer.status, answer.body) == (200, b"")
        assert answer.headers["Content-Length"] == "1000"
        assert (await fetch(upstream, total=1)).body == b"ok"
        assert len(server.connections) == 1


@scenario
async def test_a_head_answer_announcing_a_chunked_body_ends_at_its_head(
    upstreams: Upstreams,
) -> None:
    head = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n"
    async with RawServer(answering(head, OK)) as server:
        upstream = await upstreams(server.url)
        assert (await fetch(upstream, "HEAD", total=1)).body == b""
        assert (await fetch(upstream, total=1)).body == b"ok"
        assert len(server.connections) == 1


@pytest.mark.parametrize(
    "response",
    [
        b"HTTP/1.1 204 No Content\r\n\r\n",
        b'HTTP/1.1 304 Not Modified\r\nETag: "v1"\r\nContent-Length: 500\r\n\r\n',
    ],
    ids=["204", "304-with-length"],
)
async def test_204_and_304_end_without_a_body_and_keep_the_connection(
    upstreams: Upstreams, response: bytes
) -> None:
    async with RawServer(answering(response, OK)) as server:
        upstream = await upstreams(server.url)
        assert (await fetch(upstream, total=1)).body == b""
        assert (await fetch(upstream, total=1)).body == b"ok"
        assert len(server.connections) == 1


# -- interim answers -------------------------------------------------------------

EARLY_HINTS = b"HTTP/1.1 103 Early Hints\r\nLink: </style.css>; rel=preload\r\n\r\n"
FINAL = reply(b"ok", "200 OK", "X-Final: yes")


@pytest.mark.parametrize("split", [False, True], ids=["one-packet", "two-packets"])
async def test_early_hints_are_skipped_and_only_the_final_answer_arrives(
    upstreams: Upstreams, split: bool
) -> None:
    async def hints(conn: RawConn) -> None:
        while await conn.request() is not None:
            if split:
                await conn.send(b"HTTP/1.1 100 Continue\r\n\r\n" + EARLY_HINTS)
                await asyncio.sleep(0.01)
                await conn.send(FINAL)
            else:
                await conn.send(EARLY_HINTS + FINAL)

    async with RawServer(hints) as server:
        upstream = await upstreams(server.url)
        answer = await fetch(upstream, total=1)
        assert (answer.status, answer.reason, answer.body) == (200, "OK", b"ok")
        assert list(answer.headers.items()) == [("X-Final", "yes"), ("Content-Length", "2")]
        assert (await fetch(upstream, total=1)).body == b"ok"
        assert len(server.connections) == 1


# -- invalid answers -----------------------------------------------------------------


@scenario
async def test_garbage_instead_of_an_answer_is_an_invalid_response_502(
    upstreams: Upstreams,
) -> None:
    async with RawServer(answering(b"NOT HTTP AT ALL\r\n\r\n")) as server:
        upstream = await upstreams(server.url)
        with pytest.raises(InvalidResponseError) as caught:
            await fetch(upstream)
        failure = failure_of(upstream, caught.value)
        assert (failure.kind, failure.status) == ("invalid_response", 502)
        assert failure.reason == "agent: invalid HTTP response"


@scenario
async def test_an_unasked_protocol_switch_is_an_invalid_response(upstreams: Upstreams) -> None:
    switch = (
        b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\r\n"
    )
    async with RawServer(answering(switch)) as server:
        upstream = await upstreams(server.url)
        with pytest.raises(InvalidResponseError):
            await fetch(upstream, total=1)


@pytest.mark.parametrize(
    "framing",
    [
        b"Content-Length: 3\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n0\r\n\r\n",
        b"Content-Length: 3\r\nContent-Length: 4\r\n\r\nabcd",
        b"Content-Length: -3\r\n\r\nabc",
    ],
    ids=["length-and-chunked", "two-lengths", "negative-length"],
)
async def test_an_answer_with_ambiguous_framing_is_invalid_not_guessed(
    upstreams: Upstreams, framing: bytes
) -> None:
    async with RawServer(answering(b"HTTP/1.1 200 OK\r\n" + framing)) as server:
        upstream = await upstreams(server.url)
        with pytest.raises(InvalidResponseError):
            await fetch(upstream, total=1)


@pytest.mark.parametrize("shape", ["many-headers", "one-huge-header"])
async def test_a_head_larger_than_max_head_is_an_invalid_response(
    upstreams: Upstreams, shape: str
) -> None:
    if shape == "many-headers":
        lines = b"".join(b"X-Filler-%05d: %s\r\n" % (i, b"v" * 40) for i in range(MAX_HEAD // 50))
    else:
        lines = b"X-Huge: " + b"v" * (MAX_HEAD + 1) + b"\r\n"
    response = b"HTTP/1.1 200 OK\r\n" + lines + b"Content-Length: 2\r\n\r\nok"
    async with RawServer(answering(response)) as server:
        upstream = await upstreams(server.url)
        with pytest.raises(InvalidResponseError, match="larger than"):
            await fetch(upstream, total=1)
        await until(server.connections[0].client_closed.is_set)


@scenario
async def test_an_endless_head_is_cut_at_max_head_not_at_the_timeout(upstreams: Upstreams) -> None:
    """A header line that never ends must not be buffered until the deadline."""

    async def endless(conn: RawConn) -> None:
        await conn.request()
        await conn.send(b"HTTP/1.1 200 OK\r\nX-Endless: ")
        while True:
            await conn.send(b"v" * 65536)

    async with RawServer(endless) as server:
        upstream = await upstreams(server.url)
        started = time.monotonic()
        with pytest.raises(InvalidResponseError, match="larger than"):
            await fetch(upstream, total=3)
        assert time.monotonic() - started < 1


@scenario
async def test_bytes_after_the_answer_are_dropped_with_the_connection(
    upstreams: Upstreams,
) -> None:
    async with RawServer(answering(OK + b"EXTRA")) as server:
        upstream = await upstreams(server.url)
        answer = await fetch(upstream)
        assert (answer.status, answer.body) == (200, b"ok")
        assert (await fetch(upstream)).body == b"ok"
        assert len(server.connections) == 2


@scenario
async def test_a_second_answer_glued_to_the_first_is_not_mixed_into_it(
    upstreams: Upstreams,
) -> None:
    glued = OK + reply(b"unasked", "201 Created", "X-Unasked: 1")
    async with RawServer(answering(glued)) as server:
        upstream = await upstreams(server.url)
        answer = await fetch(upstream)
        assert (answer.status, answer.body) == (200, b"ok")
        assert list(answer.headers.items()) == [("Content-Length", "2")]
        assert (await fetch(upstream)).body == b"ok"
        assert len(server.connections) == 2


@scenario
async def test_bytes_arriving_on_an_idle_connection_retire_it(upstreams: Upstreams) -> None:
    async def chatty(conn: RawConn) -> None:
        await asyncio.sleep(0.01)
        await conn.send(reply(b"nobody asked"))
        await conn.until_closed()

    async with RawServer(once_then(chatty)) as server:
        upstream = await upstreams(server.url)
        await fetch(upstream)
        await until(server.connections[0].client_closed.is_set)
        assert (await fetch(upstream)).body == b"ok"
        assert len(server.connections) == 2


# -- timeouts and connect failures ------------------------------------------------


async def silent(conn: RawConn) -> None:
    await conn.request()
    await conn.until_closed()


@scenario
async def test_no_head_within_the_total_timeout_is_a_504_naming_the_seconds(
    upstreams: Upstreams,
) -> None:
    async with RawServer(silent) as server:
        upstream = await upstreams(server.url)
        started = time.monotonic()
        with pytest.raises(TimeoutError) as caught:
            await fetch(upstream, total=0.1)
        assert 0.09 <= time.monotonic() - started < 1  # uvloop's clock is in milliseconds
        failure = failure_of(upstream, caught.value, total=0.1)
        assert failure == Failure("timeout", 504, "agent: no complete answer within 0.1s",
                                  failure.detail)  # fmt: skip
        await until(server.connections[0].client_closed.is_set)


@scenario
async def test_a_body_still_trickling_at_the_total_timeout_is_a_timeout(
    upstreams: Upstreams,
) -> None:
    async def trickle(conn: RawConn) -> None:
        await conn.request()
        await conn.send(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n")
        closed = asyncio.create_task(conn.until_closed())
        while not closed.done():
            await conn.send(b"1\r\nx\r\n")
            await asyncio.sleep(0.02)

    async with RawServer(trickle) as server:
        upstream = await upstreams(server.url)
        got = b""
        with pytest.raises(TimeoutError) as caught:
            async with upstream.request(
                "GET", "/", CIMultiDict(), timeout=upstream.timeout(0.15)
            ) as response:
                assert response.status == 200
                async for chunk in response.chunks():
                    got += chunk
        assert got.startswith(b"xx")
        failure = failure_of(upstream, caught.value, total=0.15)
        assert (failure.kind, failure.status) == ("timeout", 504)
        assert failure.reason == "agent: no complete answer within 0.15s"
        await until(server.connections[0].client_closed.is_set)


@scenario
async def test_a_refused_connect_is_a_502_connect_failure(upstreams: Upstreams) -> None:
    upstream = await upstreams(dead_url())
    with pytest.raises(ConnectError) as caught:
        await fetch(upstream)
    failure = failure_of(upstream, caught.value)
    assert (failure.kind, failure.status) == ("connect", 502)
    assert failure.reason == "agent: cannot connect: connection refused"
    assert upstream.pool.open == 0


@pytest.fixture
def full_backlog() -> Iterator[str]:
    """A URL whose listener never accepts and whose backlog is full: SYNs go unanswered."""
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(0)
    address = listener.getsockname()
    fillers = []
    for _ in range(3):
        filler = socket.socket()
        filler.setblocking(False)
        filler.connect_ex(address)
        fillers.append(filler)
    probe = socket.socket()
    probe.settimeout(0.1)
    try:
        probe.connect(address)
    except TimeoutError:
        pass
    else:
        pytest.skip("this kernel completes connects past a full listen backlog")
    finally:
        probe.close()
    yield f"http://127.0.0.1:{address[1]}"
    for sock in (*fillers, listener):
        sock.close()


async def test_a_connect_that_hangs_is_a_504_connect_failure_after_the_connect_timeout(
    upstreams: Upstreams, full_backlog: str
) -> None:
    upstream = await upstreams(full_backlog, connect_timeout=0.1, timeout=5)
    started = time.monotonic()
    with pytest.raises(ConnectTimeoutError) as caught:
        await fetch(upstream)
    assert time.monotonic() - started < 1
    failure = failure_of(upstream, caught.value)
    assert (failure.kind, failure.status) == ("connect", 504)
    assert failure.reason == "agent: connect timed out after 0.1s"
    assert upstream.pool.open == 0


async def test_the_total_timeout_also_bounds_a_hanging_connect(
    upstreams: Upstreams, full_backlog: str
) -> None:
    upstream = await upstreams(full_backlog, connect_timeout=5)
    started = time.monotonic()
    with pytest.raises(TimeoutError):
        await fetch(upstream, total=0.1)
    assert time.monotonic() - started < 1
    assert upstream.pool.open == 0


@pytest.fixture
def certificate(tmp_path: Path) -> tuple[Path, ssl.SSLContext]:
    """A self-signed certificate for 127.0.0.1, and a server context that presents it."""
    if shutil.which("openssl") is None:
        pytest.skip("needs the openssl command to make a certificate")
    cert, key = tmp_path / "cert.pem", tmp_path / "key.pem"
    subprocess.run(
        ["openssl", "req", "-x509", "-nodes", "-days", "1", "-subj", "/CN=127.0.0.1",
         "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1",
         "-addext", "subjectAltName=IP:127.0.0.1", "-keyout", key, "-out", cert],
        check=True, capture_output=True,
    )  # fmt: skip
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(cert, key)
    return cert, context


async def test_a_tls_backend_is_reached_over_verified_keep_alive_connections(
    upstreams: Upstreams, certificate: tuple[Path, ssl.SSLContext], monkeypatch: pytest.MonkeyPatch
) -> None:
    cert, context = certificate
    monkeypatch.setenv("SSL_CERT_FILE", str(cert))  # the default context trusts it
    async with RawServer(answering(OK), tls=context) as server:
        upstream = await upstreams(server.url)
        for _ in range(3):
            assert (await fetch(upstream, total=2)).body == b"ok"
        assert len(server.connections) == 1


async def test_a_tls_backend_with_an_untrusted_certificate_is_a_connect_failure(
    upstreams: Upstreams, certificate: tuple[Path, ssl.SSLContext]
) -> None:
    async with RawServer(answering(OK), tls=certificate[1]) as server:
        upstream = await upstreams(server.url)
        with pytest.raises(ConnectError) as caught:
            await fetch(upstream, total=2)
        failure = failure_of(upstream, caught.value)
        assert (failure.kind, failure.status) == ("connect", 502)
        assert "certificate verify failed" in failure.reason
        assert server.requests == []


# -- uploads -----------------------------------------------------------------------


async def pieces(*parts: bytes) -> AsyncIterator[bytes]:
    for part in parts:
        await asyncio.sleep(0)
        yield part


@scenario
async def test_a_bytes_body_goes_out_with_its_content_length(upstreams: Upstreams) -> None:
    big = bytes(range(256)) * 4096  # 1 MiB: written apart from the head
    async with RawServer(answering(OK)) as server:
        upstream = await upstreams(server.url)
        await fetch(upstream, "POST", body=b"small")
        await fetch(upstream, "POST", body=big)
        small, large = server.requests
        assert (small.header("Content-Length"), small.body, small.chunked) == (["5"], b"small",
                                                                               False)  # fmt: skip
        assert (large.header("Content-Length"), large.body) == ([str(len(big))], big)


@scenario
async def test_a_streamed_body_with_a_content_length_streams_with_that_length(
    upstreams: Upstreams,
) -> None:
    async with RawServer(answering(OK)) as server:
        upstream = await upstreams(server.url)
        body = pieces(b"hello ", b"", b"world")
        await fetch(upstream, "PUT", headers=[("Content-Length", "11")], body=body)
        (seen,) = server.requests
        assert (seen.header("Content-Length"), seen.header("Transfer-Encoding")) == (["11"], [])
        assert seen.body == b"hello world"


@scenario
async def test_a_streamed_body_without_a_length_goes_chunked_and_arrives_exactly(
    upstreams: Upstreams,
) -> None:
    async with RawServer(answering(OK)) as server:
        upstream = await upstreams(server.url)
        body = pieces(b"hello ", b"", b"world", b"\r\n0\r\n\r\n")  # an empty piece ends nothing
        answer = await fetch(upstream, "POST", body=body)
        assert answer.body == b"ok"
        (seen,) = server.requests
        assert seen.chunked
        assert seen.header("Transfer-Encoding") == ["chunked"]
        assert seen.header("Content-Length") == []
        assert seen.body == b"hello world\r\n0\r\n\r\n"
        assert (await fetch(upstream)).body == b"ok"  # the framing left the connection clean
        assert len(server.connections) == 1


async def test_a_large_streamed_upload_reaches_an_aiohttp_backend_intact(
    upstreams: Upstreams, aiohttp_server: Any
) -> None:
    fake = await start_fake(Fake("agent"), aiohttp_server)
    upstream = await upstreams(fake.url)
    block = bytes(range(256)) * 256  # 64 KiB
    digest = hashlib.sha256(block * 128).hexdigest()
    answer = await fetch(upstream, "POST", "/upload", body=pieces(*[block] * 128))
    assert answer.status == 200
    assert fake.seen[-1].body_sha256 == digest
    assert fake.seen[-1].body_size == 128 * len(block)


class ClientLeftError(Exception):
    """Stands in for the proxy's own 'the client went away' error."""


@scenario
async def test_an_upload_that_fails_surfaces_its_own_exception(upstreams: Upstreams) -> None:
    gone = ClientLeftError("the client left")

    async def body() -> AsyncIterator[bytes]:
        yield b"part"
        await asyncio.sleep(0.01)
        raise gone

    async def read_all(conn: RawConn) -> None:
        await conn.head_only()
        received.append(await conn.until_closed())

    received: list[bytes] = []
    async with RawServer(read_all) as server:
        upstream = await upstreams(server.url)
        with pytest.raises(ClientLeftError) as caught:
            await fetch(upstream, "POST", body=body())
        assert caught.value is gone
        await until(lambda: received)
        assert received == [b"4\r\npart\r\n"]  # never the last chunk: the backend sees a cut
        assert upstream.pool.open == 0


@scenario
async def test_an_upload_failing_while_the_answer_streams_ends_the_read_with_its_exception(
    upstreams: Upstreams,
) -> None:
    fail = asyncio.Event()

    async def body() -> AsyncIterator[bytes]:
        yield b"part"
        await fail.wait()
        raise ClientLeftError

    async def early(conn: RawConn) -> None:
        await conn.head_only()
        await conn.send(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n")
        await conn.until_closed()

    async with RawServer(early) as server:
        upstream = await upstreams(server.url)
        async with upstream.request("POST", "/", CIMultiDict(), body()) as response:
            chunks = response.chunks()
            assert await anext(chunks) == b"abc"
            fail.set()
            with pytest.raises(ClientLeftError):
                await anext(chunks)
        await until(server.connections[0].client_closed.is_set)


@scenario
async def test_an_early_answer_reaches_the_caller_before_the_upload_ends(
    upstreams: Upstreams,
) -> None:
    never = asyncio.Event()
    finished: list[str] = []

    async def endless_body() -> AsyncIterator[bytes]:
        try:
            yield b"x" * 1000
            await never.wait()
            yield b"never sent"
        finally:
            finished.append("upload stopped")

    async def too_large(conn: RawConn) -> None:
        await conn.head_only()
        await conn.send(reply(b"too large", "413 Payload Too Large", "Connection: close"))
        await conn.until_closed()

    async with RawServer(too_large) as server:
        upstream = await upstreams(server.url)
        answer = await fetch(upstream, "POST", body=endless_body(), total=2)
        assert (answer.status, answer.body) == (413, b"too large")
        await until(lambda: finished)
        await until(server.connections[0].client_closed.is_set)


# -- flow control --------------------------------------------------------------------

BLOCK = bytes(range(256)) * 256  # 64 KiB


async def download(conn: RawConn) -> None:
    """8 MiB with a Content-Length, written as fast as the client takes it."""
    while await conn.request() is not None:
        await conn.send(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n" % (128 * len(BLOCK)))
        for _ in range(128):
            await conn.send(BLOCK)


@scenario
async def test_a_slow_reader_holds_the_backend_back_instead_of_buffering_its_answer(
    upstreams: Upstreams,
) -> None:
    async with RawServer(download) as server:
        upstream = await upstreams(server.url, timeout=20)
        digest = hashlib.sha256()
        size = 0
        most = 0
        largest = 0
        paused = False
        async with upstream.request("GET", "/", CIMultiDict()) as response:
            conn = response._conn  # the connection under test: how much it holds
            assert conn is not None
            async for chunk in response.chunks():
                digest.update(chunk)
                size += len(chunk)
                largest = max(largest, len(chunk))
                await asyncio.sleep(0.001)  # a slow client
                most = max(most, conn._buffered)
                paused = paused or conn._read_paused
        assert size == 128 * len(BLOCK)
        assert digest.hexdigest() == hashlib.sha256(BLOCK * 128).hexdigest()
        assert paused
        assert most <= HIGH_WATER + READ_SIZE  # the mark, plus at most one socket read
        assert largest <= READ_SIZE < 256 * 1024  # smaller reads than the transports' own
        assert len(server.connections) == 1


@scenario
async def test_a_connection_left_paused_by_a_large_whole_body_still_serves_the_next_request(
    upstreams: Upstreams,
) -> None:
    body = b"b" * (HIGH_WATER + 1000)  # past the mark in the read that completes it
    async with RawServer(answering(reply(body))) as server:
        upstream = await upstreams(server.url)
        whole: list[bytes] = []
        async with upstream.request("GET", "/", CIMultiDict(), timeout=upstream.timeout(1)) as r:

            def arrived() -> bool:
                got = r.whole_body()
                if got is not None:
                    whole.append(got)
                return bool(whole)

            await until(arrived)
        assert whole == [body]
        assert (await fetch(upstream, total=1)).body == body
        assert len(server.connections) == 1


@scenario
async def test_a_connection_whose_answer_was_left_unread_still_serves_the_next_request(
    upstreams: Upstreams,
) -> None:
    body = b"b" * (HIGH_WATER + 1000)
    async with RawServer(answering(reply(body))) as server:
        upstream = await upstreams(server.url)
        async with upstream.request("GET", "/", CIMultiDict()) as response:
            assert response.status == 200
            await asyncio.sleep(0.05)  # all of it arrives; the caller reads none of it
        assert (await fetch(upstream, total=1)).body == body


@scenario
async def test_a_close_after_a_large_unread_answer_is_noticed_while_the_connection_idles(
    upstreams: Upstreams,
) -> None:
    """A POST must not be sent on a connection the backend closed while reading was paused."""
    body = b"b" * (HIGH_WATER + 1000)

    async def answer_then_close(conn: RawConn) -> None:
        if conn.index == 0:
            await conn.request()
            await conn.send(reply(body))
        else:
            await answering(OK)(conn)

    async with RawServer(answer_then_close) as server:
        upstream = await upstreams(server.url)
        async with upstream.request("GET", "/", CIMultiDict()) as response:
            assert response.status == 200
            await asyncio.sleep(0.05)  # all of it and the close arrive; none of it is read
        assert (await fetch(upstream, "POST", body=b"once", total=1)).body == b"ok"
        assert len(server.connections) == 2


# -- whole_body ------------------------------------------------------------------------


@scenario
async def test_whole_body_gives_a_small_answer_that_came_with_its_head(
    upstreams: Upstreams,
) -> None:
    async with RawServer(answering(reply(b"hello"), reply(b""))) as server:
        upstream = await upstreams(server.url)
        async with upstream.request("GET", "/", CIMultiDict()) as response:
            assert response.whole_body() == b"hello"
        async with upstream.request("GET", "/", CIMultiDict()) as response:
            assert response.whole_body() == b""


@scenario
async def test_whole_body_is_none_while_a_body_is_still_coming(upstreams: Upstreams) -> None:
    rest = asyncio.Event()

    async def slow(conn: RawConn) -> None:
        await conn.request()
        await conn.send(b"HTTP/1.1 200 OK\r\nContent-Length: 11\r\n\r\nhello")
        await rest.wait()
        await conn.send(b" world")
        await conn.until_closed()

    async with RawServer(slow) as server:
        upstream = await upstreams(server.url)
        async with upstream.request("GET", "/", CIMultiDict()) as response:
            assert response.whole_body() is None
            rest.set()
            assert await response.read() == b"hello world"


# -- headers -----------------------------------------------------------------------------


@scenario
async def test_request_headers_keep_their_order_spelling_and_repeats(
    upstreams: Upstreams,
) -> None:
    async with RawServer(answering(OK)) as server:
        upstream = await upstreams(server.url)
        sent = [("X-B", "1"), ("x-a", "2"), ("X-B", "3"), ("Accept", "*/*")]
        await fetch(upstream, headers=sent)
        (seen,) = server.requests
        assert seen.headers == [("Host", f"127.0.0.1:{server.port}"), *sent]


@scenario
async def test_host_is_the_backends_unless_the_caller_sets_one(upstreams: Upstreams) -> None:
    async with RawServer(answering(OK)) as server:
        upstream = await upstreams(server.url)
        await fetch(upstream)
        await fetch(upstream, headers=[("X-First", "1"), ("Host", "public.example")])
        default, given = server.requests
        assert default.header("Host") == [f"127.0.0.1:{server.port}"]
        assert given.headers == [("X-First", "1"), ("Host", "public.example")]


@scenario
async def test_the_backends_base_path_prefixes_every_request_path(upstreams: Upstreams) -> None:
    async with RawServer(answering(OK)) as server:
        upstream = await upstreams(server.url + "/base/")
        await fetch(upstream, path="/items?id=1&x=%2F")
        assert server.requests[0].request_line == "GET /base/items?id=1&x=%2F HTTP/1.1"


@scenario
async def test_a_header_with_a_line_break_is_refused_before_anything_is_sent(
    upstreams: Upstreams,
) -> None:
    async with RawServer(answering(OK)) as server:
        upstream = await upstreams(server.url)
        for value in ("a\r\nX-Injected: 1", "a\nb", "a\rb"):
            with pytest.raises(ValueError, match="line break"):
                upstream.request("GET", "/", CIMultiDict({"X-Evil": value}))
        await asyncio.sleep(0.01)
        assert server.connections == []


@scenario
async def test_repeated_response_headers_all_arrive_in_order(upstreams: Upstreams) -> None:
    response = reply(b"ok", "200 OK", "Set-Cookie: a=1", "X-Other: x", "Set-Cookie: b=2")
    async with RawServer(answering(response)) as server:
        upstream = await upstreams(server.url)
        answer = await fetch(upstream)
        assert answer.headers.getall("set-cookie") == ["a=1", "b=2"]
        assert answer.headers["x-other"] == "x"


# -- closing ------------------------------------------------------------------------------


@scenario
async def test_closing_the_upstream_closes_its_idle_connections(upstreams: Upstreams) -> None:
    async with RawServer(answering(OK)) as server:
        upstream = await upstreams(server.url)
        await asyncio.gather(fetch(upstream), fetch(upstream))
        assert upstream.pool.idle == 2
        await upstream.close()
        await until(lambda: all(c.client_closed.is_set() for c in server.connections))
        assert len(server.connections) == 2


@scenario
async def test_a_connection_busy_when_the_upstream_closes_is_closed_when_released(
    upstreams: Upstreams,
) -> None:
    async with RawServer(answering(OK)) as server:
        upstream = await upstreams(server.url)
        call: Call = upstream.request("GET", "/", CIMultiDict())
        async with call as response:
            await upstream.close()
            assert await response.read() == b"ok"
        await until(server.connections[0].client_closed.is_set)


# -- the same on uvloop ----------------------------------------------------------------------


@pytest.mark.parametrize(
    "test", SCENARIOS, ids=[t.__name__.removeprefix("test_") for t in SCENARIOS]
)
def test_the_scenario_passes_on_uvloop(test: Scenario) -> None:
    """Production runs on uvloop, whose transports differ in detail from asyncio's."""

    async def run() -> None:
        made = Upstreams()
        try:
            await test(made)
        finally:
            await made.close()

    with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
        runner.run(run())
