"""The backends: nginx serving fixed answers fast, so the proxies are the bottleneck.

* ``legacy``: a fixed JSON body on every path, ``/big`` (~1 MB of JSON) and
  ``/sse`` (an event stream: one event at once, then four more 100 ms apart);
* agent ``same``: the same answers as JSON with the keys in another order,
  so the comparison matches but has to walk both documents (identical bytes
  would let it stop at a byte compare);
* agent ``slow``: the same JSON after one second;
* agent ``500``: a JSON error with status 500;
* agent ``refused``: a port that refuses connections.

Each is its own nginx process, with a stub_status counter the harness reads
before and after a run to know how many requests each backend received.
"""

from __future__ import annotations

import json
import socket
import urllib.request
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from pathlib import Path

from bench import nginxconf
from bench.procs import LOOPBACK, Proc, free_port, refusing_port

SMALL = {
    "ticket_id": "T-2024-118734",
    "category": "billing",
    "subcategory": "refund_request",
    "priority": "high",
    "confidence": 0.93,
    "language": "en",
    "sentiment": {"label": "negative", "score": -0.62},
    "tags": ["refund", "double-charge", "card"],
    "entities": [
        {"type": "order", "value": "ORD-55812"},
        {"type": "amount", "value": "49.99 EUR"},
    ],
    "route_to": "billing-tier-2",
    "sla_hours": 8,
    "summary": "Customer was charged twice for one order and asks for a refund.",
}
SMALL_BODY = json.dumps(SMALL, separators=(",", ":"))
AGENT_SMALL_BODY = json.dumps(SMALL, sort_keys=True, separators=(",", ":"))
BIG_ITEMS = 2350  # about 1 MB, under shadow-proxy's default 1 MiB capture limit
SSE_EVENTS = 5
SSE_GAP = 0.1
AGENTS = ("same", "slow", "500", "refused")


def big_body(agent: bool = False) -> str:
    items = [dict(SMALL, ticket_id=f"T-{i:06d}", sla_hours=i % 48) for i in range(BIG_ITEMS)]
    doc = {"count": len(items), "items": items}
    return json.dumps(doc, separators=(",", ":"), sort_keys=agent)


def _quoted(text: str) -> str:
    """A single-quoted nginx string (our bodies hold no quote, backslash or $)."""
    assert not set("'\\$") & set(text), text
    return f"'{text}'"


def _sse_location() -> str:
    steps = []
    for n in range(SSE_EVENTS):
        if n:
            steps.append(f"echo_sleep {SSE_GAP};")
        steps.append(f'echo "data: {{\\"n\\":{n}}}"; echo; echo_flush;')
    body = "\n            ".join(steps)
    return f"""        location = /sse {{
            default_type text/event-stream;
            add_header Cache-Control no-cache;
            {body}
        }}
"""


def backend_conf(prefix: Path, kind: str, port: int) -> str:
    """``kind``: legacy, same, slow or 500."""
    (prefix / "www").mkdir(parents=True, exist_ok=True)
    (prefix / "www" / "big.json").write_text(big_body(agent=kind != "legacy"))
    small = _quoted(SMALL_BODY if kind == "legacy" else AGENT_SMALL_BODY)
    if kind == "slow":
        answer = f"echo_sleep 1; echo {small};"
    elif kind == "500":
        answer = f"""return 500 {_quoted('{"error":"internal","detail":"agent failed"}')};"""
    else:
        answer = f"return 200 {small};"
    big = "try_files /big.json =404;" if kind in ("legacy", "same") else answer
    sse = _sse_location() if kind in ("legacy", "same") else ""
    server = f"""    server {{
        listen {LOOPBACK}:{port} backlog=4096;
        root {prefix}/www;
        sendfile on;
        tcp_nopush on;
{nginxconf.status_location()}        location = /big {{ {big} }}
{sse}        location / {{ {answer} }}
    }}"""
    return nginxconf.main_conf(prefix, server, echo=True)


@dataclass(frozen=True)
class Backend:
    name: str
    port: int
    proc: Proc | None  # None: the refusing port

    @property
    def url(self) -> str:
        return f"http://{LOOPBACK}:{self.port}"

    def requests(self) -> int | None:
        """The request counter (status reads included), or None: no counter."""
        if self.proc is None:
            return None
        url = self.url + nginxconf.STATUS_PATH
        with urllib.request.urlopen(url, timeout=5) as response:
            return nginxconf.parse_requests(response.read().decode())


def received(before: int | None, after: int | None) -> int | None:
    """Requests between two counter reads, less the first read itself."""
    return None if before is None or after is None else after - before - 1


@dataclass(frozen=True)
class Backends:
    legacy: Backend
    agents: dict[str, Backend]

    def all(self) -> list[Backend]:
        return [self.legacy, *self.agents.values()]


def start_backend(stack: ExitStack, root: Path, kind: str) -> Backend:
    prefix = root / f"backend-{kind}"
    prefix.mkdir(parents=True)
    port = free_port()
    conf = prefix / "nginx.conf"
    conf.write_text(backend_conf(prefix, kind, port))
    proc = Proc(f"backend {kind}", nginxconf.argv(prefix, conf), prefix / "out.log", prefix)
    stack.callback(proc.stop)
    proc.wait_port(port)
    return Backend(kind, port, proc)


@contextmanager
def running_backends(root: Path) -> Iterator[Backends]:
    """Legacy and every agent, stopped (by PID) when the block ends."""
    with ExitStack() as stack:
        legacy = start_backend(stack, root, "legacy")
        agents = {kind: start_backend(stack, root, kind) for kind in AGENTS if kind != "refused"}
        refuser: socket.socket = stack.enter_context(refusing_port())
        agents["refused"] = Backend("refused", int(refuser.getsockname()[1]), None)
        yield Backends(legacy, agents)
