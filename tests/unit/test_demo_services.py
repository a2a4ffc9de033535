"""Demo services: the legacy rules table, and an agent that agrees mostly but not always."""

from __future__ import annotations

import random
import time
from collections import Counter
from collections.abc import Callable
from typing import Any

import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient
from pytest_aiohttp import AiohttpClient as ClientFactory

from proxy.demo.services import AGENT_MODEL, agent_app, legacy_app, ticket_examples
from proxy.demo.tickets import CATEGORIES, PRIORITIES, classify, stored_ticket


@pytest.mark.parametrize(
    ("subject", "body", "category", "priority"),
    [
        ("Refund for last invoice", "Please send it.", "billing", "high"),
        ("Invoice shows the wrong price", "Thanks.", "billing", "normal"),
        ("Double charge", "I was charged twice this month.", "billing", "high"),
        ("App crashes on startup", "Could you take a look?", "technical", "normal"),
        ("Dashboard is down", "Nothing loads.", "technical", "high"),
        ("API timeout on export", "URGENT: fix it asap", "technical", "urgent"),
        ("Locked out of my account", "", "account", "high"),
        ("Password reset mail missing", "Just a question, no rush.", "account", "low"),
        ("Change the email address on my profile", "", "account", "normal"),
        ("Package has not arrived", "Tracking says delivered.", "shipping", "normal"),
        ("Courier left the parcel outside", "emergency!", "shipping", "urgent"),
        ("Partnership inquiry", "Who can I talk to?", "other", "normal"),
        ("Do you have a dark mode", "Only feedback, whenever you like.", "other", "low"),
        # Words, not substrings: "pricey" is not "price", "downtown" is not "down".
        ("Pricey downtown office", "", "other", "normal"),
        # Ties go to the earlier row of the rules table (billing before technical).
        ("Payment error", "", "billing", "normal"),
        # More distinct keywords win over table order.
        ("Payment page crash", "error after error, totally broken", "technical", "normal"),
        # Urgent beats high when both are present.
        ("Site down", "urgent", "technical", "urgent"),
    ],
)
def test_legacy_rules_table(subject: str, body: str, category: str, priority: str) -> None:
    c = classify(subject, body)
    assert (c.category, c.priority, c.queue) == (category, priority, f"{category}-team")


def test_ticket_examples_cover_every_category_and_priority() -> None:
    rng = random.Random(7)
    tickets = [ticket_examples(rng) for _ in range(500)]
    labels = [classify(t["subject"], t["body"]) for t in tickets]
    assert {c.category for c in labels} == set(CATEGORIES)
    assert {c.priority for c in labels} == set(PRIORITIES)
    assert all(set(t) == {"ticket_id", "subject", "body"} for t in tickets)
    again = random.Random(7)
    assert tickets[:5] == [ticket_examples(again) for _ in range(5)]


def test_stored_ticket_is_a_pure_function_of_the_id() -> None:
    assert stored_ticket("T-1") == stored_ticket("T-1")
    assert stored_ticket("T-1") != stored_ticket("T-2")


async def test_legacy_classify(aiohttp_client: ClientFactory) -> None:
    client = await aiohttp_client(legacy_app(seed=1, latency_scale=0))
    ticket = {"ticket_id": "T-9", "subject": "Refund for last invoice", "body": "asap"}
    resp = await client.post("/api/classify", json=ticket)
    assert resp.status == 200
    data = await resp.json()
    assert data.pop("request_id") != ""
    assert data == {
        "ticket_id": "T-9",
        "category": "billing",
        "priority": "urgent",
        "queue": "billing-team",
        "summary": "[URGENT] billing ticket T-9: Refund for last invoice",
    }


async def test_legacy_latency_is_small(aiohttp_client: ClientFactory) -> None:
    client = await aiohttp_client(legacy_app(seed=1))
    ticket = ticket_examples(random.Random(0))
    start = time.perf_counter()
    for _ in range(5):
        assert (await client.post("/api/classify", json=ticket)).status == 200
    assert 5 * 0.002 <= time.perf_counter() - start < 5 * 0.1


async def test_ticket_lookup_and_health(aiohttp_client: ClientFactory) -> None:
    for app in (legacy_app(latency_scale=0), agent_app(error_rate=0, latency_scale=0)):
        client = await aiohttp_client(app)
        resp = await client.get("/api/tickets/T-123")
        assert resp.status == 200
        data = await resp.json()
        assert data["ticket_id"] == "T-123"
        assert data["subject"] == stored_ticket("T-123")["subject"]
        assert (await client.get("/api/tickets/bad!id")).status == 404
        health = await (await client.get("/healthz")).json()
        assert health["status"] == "ok"
        assert health["requests"] == 2


@pytest.mark.parametrize("make_app", [legacy_app, agent_app])
@pytest.mark.parametrize(
    "payload",
    [
        b"{not json",
        b"\xff\xfe",
        b"[1, 2]",
        b'{"ticket_id": "T-1", "subject": "x"}',
        b'{"ticket_id": 5, "subject": "x", "body": "y"}',
    ],
)
async def test_malformed_payload_is_400_json(
    aiohttp_client: ClientFactory, make_app: Callable[..., web.Application], payload: bytes
) -> None:
    client = await aiohttp_client(make_app(latency_scale=0))
    resp = await client.post(
        "/api/classify", data=payload, headers={"Content-Type": "application/json"}
    )
    assert resp.status == 400
    assert resp.content_type == "application/json"
    assert "error" in await resp.json()


async def _classify_many(client: TestClient[Any, Any], n: int) -> list[tuple[dict[str, Any], Any]]:
    rng = random.Random(42)
    out = []
    for _ in range(n):
        ticket = ticket_examples(rng)
        resp = await client.post("/api/classify", json=ticket)
        out.append((ticket, (resp.status, await resp.json())))
    return out


async def test_agent_mostly_agrees_with_legacy(aiohttp_client: ClientFactory) -> None:
    legacy = await aiohttp_client(legacy_app(seed=3, latency_scale=0))
    agent = await aiohttp_client(agent_app(seed=3, latency_scale=0))
    legacy_answers = await _classify_many(legacy, 300)
    agent_answers = await _classify_many(agent, 300)
    fields = ("category", "priority", "queue")
    statuses: Counter[int] = Counter()
    agree = compared = 0
    for (_, (_, old)), (_, (status, new)) in zip(legacy_answers, agent_answers, strict=True):
        statuses[status] += 1
        if status != 200:
            assert new["error"]
            continue
        compared += 1
        agree += all(old[f] == new[f] for f in fields)
        assert new["summary"] != old["summary"]
        assert new["request_id"] != old["request_id"]
        assert 0.55 <= new["confidence"] <= 0.99
        assert new["model"] == AGENT_MODEL
    assert set(statuses) <= {200, 503}
    assert 0 < statuses[503] < 20  # error_rate 0.02 by default
    assert 0.80 <= agree / compared <= 0.99


async def test_agent_is_deterministic_given_the_seed(aiohttp_client: ClientFactory) -> None:
    first = await aiohttp_client(agent_app(seed=5, latency_scale=0))
    second = await aiohttp_client(agent_app(seed=5, latency_scale=0))
    other = await aiohttp_client(agent_app(seed=6, latency_scale=0))
    a, b, c = [await _classify_many(x, 40) for x in (first, second, other)]
    assert a == b
    assert a != c


async def test_agent_errors_and_dry_run_header(aiohttp_client: ClientFactory) -> None:
    client = await aiohttp_client(agent_app(error_rate=1.0, latency_scale=0))
    ticket = ticket_examples(random.Random(1))
    resp = await client.post("/api/classify", json=ticket, headers={"X-Shadow-Request": "1"})
    assert resp.status == 503
    assert (await resp.json())["error"] == "agent unavailable"
    assert resp.headers["X-Agent-Dry-Run"] == "1"
    resp = await client.post("/api/classify", json=ticket)
    assert "X-Agent-Dry-Run" not in resp.headers
    health = await (await client.get("/healthz")).json()
    assert (health["requests"], health["dry_runs"]) == (2, 1)


async def test_agent_is_slower_than_legacy(aiohttp_client: ClientFactory) -> None:
    client = await aiohttp_client(agent_app(error_rate=0))
    ticket = ticket_examples(random.Random(0))
    start = time.perf_counter()
    assert (await client.post("/api/classify", json=ticket)).status == 200
    assert time.perf_counter() - start >= 0.03
