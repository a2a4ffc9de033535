"""The port ``run --workers`` shares: refused when anything serves it, held so
that a second pod is refused even while none of this pod's workers listens,
and open to this pod's workers."""

from __future__ import annotations

import socket
from collections.abc import Iterator

import pytest

from proxy.sharedport import reserve_port

HOST = "127.0.0.1"


def worker_listener(port: int) -> socket.socket:
    """A worker's listener, as aiohttp opens it (reuse_address, reuse_port)."""
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    sock.bind((HOST, port))
    sock.listen()
    return sock


@pytest.fixture
def held() -> Iterator[int]:
    sockets, port = reserve_port(HOST, 0)
    yield port
    for sock in sockets:
        sock.close()


def test_a_held_port_refuses_a_second_pod_even_while_no_worker_listens(held: int) -> None:
    with pytest.raises(OSError) as raised:
        reserve_port(HOST, held)
    assert f"('{HOST}', {held}): address already in use" in str(raised.value)


def test_the_pods_own_workers_join_the_held_port_and_a_second_pod_is_still_refused(
    held: int,
) -> None:
    with (
        worker_listener(held),
        worker_listener(held),
        pytest.raises(OSError, match="address already in use"),
    ):
        reserve_port(HOST, held)


def test_a_port_one_process_serves_is_refused() -> None:
    with socket.socket() as one:
        one.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        one.bind((HOST, 0))
        one.listen()
        with pytest.raises(OSError, match="address already in use"):
            reserve_port(HOST, one.getsockname()[1])


def test_the_time_wait_connections_of_an_earlier_process_do_not_block_the_port() -> None:
    with socket.socket() as earlier:
        earlier.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        earlier.bind((HOST, 0))
        earlier.listen()
        port = earlier.getsockname()[1]
        client = socket.create_connection((HOST, port))
        accepted, _ = earlier.accept()
        accepted.close()  # the server closes first: its side goes to TIME_WAIT
        client.recv(1)
        client.close()
    sockets, got = reserve_port(HOST, port)
    try:
        assert got == port
        worker_listener(port).close()
    finally:
        for sock in sockets:
            sock.close()
