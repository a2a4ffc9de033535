"""Fake legacy and agent services for the demo: a support-ticket classifier.

The demo needs two backends that *mostly* agree, so that mirroring, comparison,
agreement metrics and the rollout gates have realistic material to work on
without any real model. The legacy service is a deterministic keyword classifier;
the agent reuses the same rules and then perturbs them (wrong labels, paraphrased
summaries, extra fields, slower and sometimes failing), like an LLM would.

All randomness comes from a `random.Random(seed)` kept in the app state, and every
handler draws all its random numbers in one synchronous block, so a given seed and
request order always give the same answers.
"""

from __future__ import annotations

import asyncio
import json
import random
import re
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Final

from aiohttp import web

from proxy.demo.tickets import (
    CATEGORIES,
    PRIORITIES,
    STATUSES,
    Classification,
    classify,
    legacy_summary,
    one_line,
    stored_ticket,
    ticket_examples,
)

__all__ = [
    "AGENT_MODEL",
    "DRY_RUN_HEADER",
    "SHADOW_HEADER",
    "agent_app",
    "legacy_app",
    "ticket_examples",
]

SHADOW_HEADER: Final = "X-Shadow-Request"
DRY_RUN_HEADER: Final = "X-Agent-Dry-Run"
AGENT_MODEL: Final = "demo-agent-1"
_TICKET_ID_RE: Final = re.compile(r"^[A-Za-z0-9_-]{1,64}$")

# Paraphrases of the legacy summary with their weights. The first four stay close
# enough to pass a ~0.5 edit-similarity check; the last, rare one reorders everything
# and usually fails it, like an off-style model answer would.
_AGENT_SUMMARIES: Final = (
    "Customer reports a {category} issue ({priority} priority): {subject}",
    "The user needs help with {category}: {subject_lc}. Priority: {priority}.",
    '{priority_cap}-priority {category} request about "{subject}".',
    "Ticket about {subject_lc}; {category}, {priority}.",
    "{subject} - looks like a {category} problem; routing to {queue}.",
)
_SUMMARY_WEIGHTS: Final = (24, 24, 24, 23, 5)


# ---------------------------------------------------------------- aiohttp apps


@dataclass
class _State:
    """Per-app mutable state; counters let tests and the demo see what was served."""

    service: str
    rng: random.Random
    latency_scale: float
    error_rate: float = 0.0
    wrong_label_rate: float = 0.0
    requests: int = 0
    dry_runs: int = 0


_STATE: Final = web.AppKey("demo_service_state", _State)


class _BadRequest(Exception):
    pass


def _error(status: int, message: str, **extra: str) -> web.Response:
    return web.json_response({"error": message, **extra}, status=status)


async def _read_ticket(request: web.Request) -> dict[str, str]:
    """Parse and validate the classify payload; a bad one is the client's fault (400)."""
    try:
        data = json.loads(await request.read())
    except ValueError as exc:  # JSONDecodeError and UnicodeDecodeError
        raise _BadRequest("malformed JSON body") from exc
    if not isinstance(data, dict):
        raise _BadRequest("body must be a JSON object")
    for field in ("ticket_id", "subject", "body"):
        if not isinstance(data.get(field), str):
            raise _BadRequest(f"field {field!r} must be a string")
    return {k: data[k] for k in ("ticket_id", "subject", "body")}


def _hex_id(rng: random.Random) -> str:
    return f"{rng.getrandbits(64):016x}"


async def _healthz(request: web.Request) -> web.Response:
    st = request.app[_STATE]
    return web.json_response(
        {"status": "ok", "service": st.service, "requests": st.requests, "dry_runs": st.dry_runs}
    )


def _count(request: web.Request) -> _State:
    st = request.app[_STATE]
    st.requests += 1
    if request.headers.get(SHADOW_HEADER) == "1":
        st.dry_runs += 1
    return st


async def _legacy_classify(request: web.Request) -> web.Response:
    st = _count(request)
    try:
        ticket = await _read_ticket(request)
    except _BadRequest as exc:
        return _error(400, str(exc))
    delay = st.rng.uniform(0.002, 0.015) * st.latency_scale
    request_id = _hex_id(st.rng)
    c = classify(ticket["subject"], ticket["body"])
    await asyncio.sleep(delay)
    return web.json_response(
        {
            "ticket_id": ticket["ticket_id"],
            "category": c.category,
            "priority": c.priority,
            "queue": c.queue,
            "summary": legacy_summary(ticket["ticket_id"], ticket["subject"], c),
            "request_id": request_id,
        }
    )


async def _legacy_ticket(request: web.Request) -> web.Response:
    st = _count(request)
    ticket_id = request.match_info["id"]
    delay = st.rng.uniform(0.002, 0.015) * st.latency_scale
    await asyncio.sleep(delay)
    if not _TICKET_ID_RE.match(ticket_id):
        return _error(404, "no such ticket", ticket_id=ticket_id[:64])
    return web.json_response(stored_ticket(ticket_id))


def _agent_delay(st: _State) -> float:
    """30-120 ms normally; about 3% of calls hit a ~400 ms 'long generation' tail."""
    slow = st.rng.random() < 0.03
    base = st.rng.uniform(0.35, 0.45) if slow else st.rng.uniform(0.03, 0.12)
    return base * st.latency_scale


def _perturb(st: _State, c: Classification) -> tuple[Classification, bool]:
    """Start from the rules and sometimes be wrong, as a real model would."""
    rng = st.rng
    wrong_category = rng.random() < st.wrong_label_rate
    wrong_priority = rng.random() < st.wrong_label_rate / 2
    other_category = rng.choice([x for x in CATEGORIES if x != c.category])
    step = rng.choice((-1, 1))
    category = other_category if wrong_category else c.category
    priority = c.priority
    if wrong_priority:
        idx = PRIORITIES.index(c.priority) + step
        priority = PRIORITIES[idx if 0 <= idx < len(PRIORITIES) else idx - 2 * step]
    return Classification(category, priority), wrong_category or wrong_priority


async def _agent_classify(request: web.Request) -> web.Response:
    st = _count(request)
    try:
        ticket = await _read_ticket(request)
    except _BadRequest as exc:
        return _error(400, str(exc))
    rng = st.rng
    delay = _agent_delay(st)
    request_id = _hex_id(rng)
    failed = rng.random() < st.error_rate
    c, perturbed = _perturb(st, classify(ticket["subject"], ticket["body"]))
    confidence = rng.uniform(0.55, 0.8) if perturbed else rng.uniform(0.75, 0.99)
    template = rng.choices(_AGENT_SUMMARIES, weights=_SUMMARY_WEIGHTS)[0]
    await asyncio.sleep(delay)
    if failed:
        return _error(
            503, "agent unavailable", detail="model backend overloaded", request_id=request_id
        )
    subject = one_line(ticket["subject"])
    summary = template.format(
        category=c.category,
        priority=c.priority,
        queue=c.queue,
        subject=subject,
        subject_lc=subject.lower(),
        priority_cap=c.priority.capitalize(),
    )
    return web.json_response(
        {
            "ticket_id": ticket["ticket_id"],
            "category": c.category,
            "priority": c.priority,
            "queue": c.queue,
            "summary": summary,
            "request_id": request_id,
            "confidence": round(confidence, 3),
            "model": AGENT_MODEL,
        }
    )


async def _agent_ticket(request: web.Request) -> web.Response:
    st = _count(request)
    ticket_id = request.match_info["id"]
    delay = _agent_delay(st)
    failed = st.rng.random() < st.error_rate
    stale = st.rng.random() < st.wrong_label_rate / 2
    stale_status = st.rng.choice(STATUSES)
    await asyncio.sleep(delay)
    if failed:
        return _error(503, "agent unavailable", detail="model backend overloaded")
    if not _TICKET_ID_RE.match(ticket_id):
        return _error(404, "no such ticket", ticket_id=ticket_id[:64])
    ticket = stored_ticket(ticket_id)
    if stale:  # the agent reads from a lagging replica now and then
        ticket["status"] = stale_status
    return web.json_response(ticket)


async def _mark_dry_run(request: web.Request, response: web.StreamResponse) -> None:
    """Echo that shadow traffic ran with tools in dry-run, so the proxy can verify it."""
    if request.headers.get(SHADOW_HEADER) == "1":
        response.headers[DRY_RUN_HEADER] = "1"


_Handler = Callable[[web.Request], Awaitable[web.Response]]


def _make_app(state: _State, classify_h: _Handler, ticket_h: _Handler) -> web.Application:
    app = web.Application()
    app[_STATE] = state
    app.router.add_post("/api/classify", classify_h)
    app.router.add_get("/api/tickets/{id}", ticket_h)
    app.router.add_get("/healthz", _healthz)
    return app


def legacy_app(seed: int = 0, *, latency_scale: float = 1.0) -> web.Application:
    """The rules-based legacy classifier. `latency_scale=0` removes sleeps for tests."""
    state = _State("legacy", random.Random(seed), latency_scale)
    return _make_app(state, _legacy_classify, _legacy_ticket)


def agent_app(
    seed: int = 0,
    *,
    error_rate: float = 0.02,
    wrong_label_rate: float = 0.08,
    latency_scale: float = 1.0,
) -> web.Application:
    """The 'LLM agent': mostly agrees with legacy, differs realistically, slower, flakier."""
    state = _State(
        "agent",
        random.Random(seed),
        latency_scale,
        error_rate=error_rate,
        wrong_label_rate=wrong_label_rate,
    )
    app = _make_app(state, _agent_classify, _agent_ticket)
    app.on_response_prepare.append(_mark_dry_run)
    return app
