"""The port ``run --workers N`` shares among its workers: found free, then held.

The workers' listeners bind it with SO_REUSEPORT, and so could the workers of
a second ``run --workers`` on the same port: the kernel would split the
traffic between two pods without a word. So the supervisor first binds a
probe socket *without* SO_REUSEPORT (with SO_REUSEADDR, which only lets it
pass the TIME_WAIT connections of an earlier run): anything serving the port
(one process, another pod's workers, another program) makes that bind fail
with EADDRINUSE, as one process's own bind would.

Then it holds the port with a socket bound, never listening, with
SO_REUSEPORT alone: the workers (SO_REUSEPORT too) can join it, but a second
supervisor's probe cannot, even at a moment when none of this pod's workers
listens (while they start or restart). After an earlier non-SO_REUSEPORT
listener on this port its TIME_WAIT connections refuse that bind for up to a
minute; the hold then falls back to SO_REUSEADDR, which the probe can pass
while no worker of this pod listens.
"""

from __future__ import annotations

import errno
import socket
from typing import Any

Address = tuple[Any, ...]


def reserve_port(host: str, port: int) -> tuple[list[socket.socket], int]:
    """One held socket per address of ``host``, and the port (a concrete one
    for port 0); :class:`OSError` worded as asyncio words it for one process
    when the port is served already."""
    infos = socket.getaddrinfo(host or None, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    held: list[socket.socket] = []
    try:
        for family, kind, proto, _, address in dict.fromkeys(infos):
            where = (address[0], port, *address[2:])
            try:
                if port:  # port 0 finds a free one: nobody serves it
                    _bind(family, kind, proto, where, reuse_address=True, reuse_port=False).close()
                held.append(_hold(family, kind, proto, where))
            except OSError as exc:
                reason = f"error while attempting to bind on address {where[:2]!r}: "
                raise OSError(exc.errno, reason + (exc.strerror or "").lower()) from None
            port = held[-1].getsockname()[1]
    except BaseException:
        for sock in held:
            sock.close()
        raise
    return held, port


def _hold(family: int, kind: int, proto: int, where: Address) -> socket.socket:
    try:
        return _bind(family, kind, proto, where, reuse_address=False, reuse_port=True)
    except OSError as exc:
        if exc.errno != errno.EADDRINUSE:
            raise
        return _bind(family, kind, proto, where, reuse_address=True, reuse_port=True)


def _bind(
    family: int, kind: int, proto: int, where: Address, *, reuse_address: bool, reuse_port: bool
) -> socket.socket:
    sock = socket.socket(family, kind, proto)
    try:
        if reuse_address:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        if reuse_port:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        if family == socket.AF_INET6:
            sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
        sock.bind(where)
    except BaseException:
        sock.close()
        raise
    return sock
