"""What the soak's backends answer, as pure functions of the request, so the
client can check every byte it gets without asking anyone.

Legacy answers one JSON document per request (``legacy_body``); the stream
kind sends the same kind of document in pieces. The agent, when it behaves,
answers the same document with its keys sorted and other spacing (``agree``:
a JSON comparison matches, the bytes differ) or with one field changed
(``disagree``). Its faults are named in ``FAULTS``; the client picks one per
request and names it in the ``X-Soak-Fault`` header (without it, the agent
draws one itself with the same weights).
"""

from __future__ import annotations

import hashlib
import json
import random
from typing import Any

FAULT_HEADER = "X-Soak-Fault"
# Kind -> weight (percent). agree and disagree are answers; the rest are faults.
FAULTS: dict[str, int] = {
    "agree": 50,
    "disagree": 15,
    "slow": 4,  # the right answer, after 1.5 x the agent's timeout
    "hang": 3,  # no answer at all until the proxy gives up
    "reset": 5,  # half the body, then a TCP reset
    "garbage": 5,  # bytes that are not HTTP
    "error500": 6,  # a JSON error with status 500
    "huge": 4,  # 2 MiB of valid JSON, over the capture limit and the fallback buffer
    "close": 8,  # the connection closed before any answer
}
ANSWERS = ("agree", "disagree")
HUGE_BYTES = 2 * 1024 * 1024
STREAM_PIECES = 5
STREAM_GAP = 0.02  # seconds between two pieces of a streamed answer
KINDS = ("items", "report", "orders", "upload", "stream")
POSTS = frozenset({"orders", "upload"})


def draw_fault(rng: random.Random) -> str:
    return rng.choices(list(FAULTS), weights=list(FAULTS.values()))[0]


def _number(path: str) -> int:
    tail = path.rsplit("/", 1)[-1]
    return int(tail) if tail.isdigit() else 0


def _row(n: int, i: int) -> dict[str, Any]:
    return {
        "line": i,
        "sku": f"SKU-{n:03d}-{i:05d}",
        "quantity": (n * 7 + i) % 13 + 1,
        "unit_price": round(((n + 1) * (i + 3)) % 9973 / 100, 2),
        "notes": "priority handling" if i % 5 == 0 else "standard",
    }


def legacy_doc(method: str, path: str, body: bytes) -> Any:
    """The document legacy answers: items and stream are small, report is
    50-200 KB, orders and upload digest the request body."""
    kind = path.strip("/").split("/")[1] if path.count("/") >= 2 else ""
    n = _number(path)
    if kind == "report":
        rows = [_row(n, i) for i in range(500 + n * 150)]
        return {"report": n, "status": "accepted", "total": len(rows), "rows": rows}
    if kind == "stream":
        return [{"event": i, "report": n, "status": "accepted"} for i in range(STREAM_PIECES)]
    if method == "POST":
        return {
            "status": "accepted",
            "received": len(body),
            "sha256": hashlib.sha256(body).hexdigest(),
            "kind": kind,
        }
    return {"id": n, "kind": "item", "name": f"item-{n}", "price": n * 1.25, "status": "accepted"}


def _dump(doc: Any) -> bytes:
    return json.dumps(doc, separators=(",", ":")).encode()


def legacy_body(method: str, path: str, body: bytes) -> bytes:
    return _dump(legacy_doc(method, path, body))


def legacy_pieces(method: str, path: str, body: bytes) -> list[bytes]:
    """A streamed answer's pieces; joined, they are ``legacy_body``."""
    doc = legacy_doc(method, path, body)
    if not isinstance(doc, list):
        return [_dump(doc)]
    pieces = [b"[" + _dump(doc[0])]
    pieces += [b"," + _dump(item) for item in doc[1:]]
    pieces[-1] += b"]"
    return pieces


def _disagree(doc: Any) -> Any:
    """One field changed: the status of the document (or of its first event)."""
    if isinstance(doc, list):
        return [{**doc[0], "status": "rejected"}, *doc[1:]]
    return {**doc, "status": "rejected"}


def agent_body(method: str, path: str, body: bytes, fault: str) -> bytes:
    """The agent's answer when ``fault`` is ``agree`` or ``disagree``."""
    doc = legacy_doc(method, path, body)
    if fault == "disagree":
        doc = _disagree(doc)
    return json.dumps(doc, sort_keys=True, separators=(", ", ": ")).encode()


def huge_body() -> bytes:
    """Valid JSON, ``HUGE_BYTES`` long."""
    head, tail = b'{"status": "accepted", "padding": "', b'"}'
    return head + b"x" * (HUGE_BYTES - len(head) - len(tail)) + tail
