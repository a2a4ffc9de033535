"""Support tickets for the demo: the legacy keyword rules and a random ticket generator.

Kept pure (no I/O) so the rules can be pinned down as a table in tests and reused by
both fake services: the agent starts from the very same rules and then perturbs them,
which is what makes the two backends agree *mostly* rather than always or never.
"""

from __future__ import annotations

import hashlib
import random
import re
from dataclasses import dataclass
from typing import Any, Final

CATEGORIES: Final = ("billing", "technical", "account", "shipping", "other")
PRIORITIES: Final = ("low", "normal", "high", "urgent")

# fmt: off
# Keyword rules. A category scores one point per distinct keyword present; the highest
# score wins, ties go to the earlier row; no hit at all means "other".
CATEGORY_RULES: Final[tuple[tuple[str, tuple[str, ...]], ...]] = (
    ("billing", ("invoice", "charged", "charge", "refund", "payment", "billing",
                 "subscription", "receipt", "price")),
    ("technical", ("error", "crash", "crashes", "bug", "down", "outage", "timeout",
                   "broken", "slow", "api")),
    ("account", ("password", "login", "log in", "account", "username", "email address",
                 "2fa", "locked", "profile")),
    ("shipping", ("delivery", "shipping", "package", "parcel", "tracking", "courier",
                  "shipped", "arrived")),
)
# Priority rules: the first row with any keyword present wins; otherwise "normal".
PRIORITY_RULES: Final[tuple[tuple[str, tuple[str, ...]], ...]] = (
    ("urgent", ("urgent", "asap", "immediately", "emergency", "critical")),
    ("high", ("down", "outage", "refund", "charged twice", "cannot", "can't", "locked",
              "lost")),
    ("low", ("question", "wondering", "feedback", "suggestion", "whenever", "no rush")),
)
# fmt: on

STATUSES: Final = ("open", "pending", "solved", "closed")
_WORD_RE: Final = re.compile(r"[a-z0-9']+")


@dataclass(frozen=True)
class Classification:
    """What the rules say about one ticket; the agent starts from this and perturbs."""

    category: str
    priority: str

    @property
    def queue(self) -> str:
        return f"{self.category}-team"


def _normalise(text: str) -> str:
    """Lower-case words joined by single spaces and padded, so phrases match on words."""
    return " " + " ".join(_WORD_RE.findall(text.lower())) + " "


def classify(subject: str, body: str) -> Classification:
    """The legacy rules: pure, so tests can pin them down as a table."""
    text = _normalise(f"{subject} {body}")
    best, best_score = "other", 0
    for category, keywords in CATEGORY_RULES:
        score = sum(1 for kw in keywords if f" {kw} " in text)
        if score > best_score:
            best, best_score = category, score
    priority = "normal"
    for level, keywords in PRIORITY_RULES:
        if any(f" {kw} " in text for kw in keywords):
            priority = level
            break
    return Classification(best, priority)


def one_line(text: str, limit: int = 80) -> str:
    """Collapse whitespace and cap the length: summaries must stay one terminal line."""
    flat = " ".join(text.split())
    return flat if len(flat) <= limit else flat[: limit - 3] + "..."


def legacy_summary(ticket_id: str, subject: str, c: Classification) -> str:
    """The legacy service's fixed template, so the agent's paraphrases visibly differ."""
    return f"[{c.priority.upper()}] {c.category} ticket {ticket_id}: {one_line(subject)}"


# ---------------------------------------------------------------- ticket generator

# fmt: off
_SUBJECTS: Final[dict[str, tuple[str, ...]]] = {
    "billing": ("Double charge on my subscription", "Refund for last invoice",
                "Invoice shows the wrong price", "Payment failed at checkout"),
    "technical": ("App crashes on startup", "Error 500 when saving a report",
                  "Dashboard is broken", "API timeout on export"),
    "account": ("Password reset mail missing", "Locked out of my account",
                "Change the email address on my profile", "2FA codes not accepted"),
    "shipping": ("Package has not arrived", "Tracking number not working",
                 "Wrong delivery address on my order", "Courier left the parcel outside"),
    "other": ("Feature idea for the mobile app", "Partnership inquiry",
              "Compliment for your support team", "Do you have a dark mode"),
}
_BODIES: Final[dict[str, tuple[str, ...]]] = {
    "billing": ("I was charged twice this month.",
                "The invoice amount does not match the price on your website.",
                "I would like a refund for the unused period.",
                "My payment was declined although the card is valid."),
    "technical": ("The app shows an error and then crashes.",
                  "Every export ends with a timeout after 30 seconds.",
                  "The settings page is broken in Firefox.",
                  "Since the last update everything is very slow."),
    "account": ("I never received the password reset mail.",
                "My login keeps failing even with the right password.",
                "Please update my username to my new name.",
                "I am locked out after too many attempts."),
    "shipping": ("The tracking page has not changed in a week.",
                 "My package was shipped to my old flat.",
                 "The courier says the parcel was handed over but nothing arrived."),
    "other": ("I have an idea that could make the product better.",
              "Who can I talk to about working together?",
              "Your team was very helpful last time, thank you!",
              "Do you have an office in Berlin?"),
}
_PRIORITY_PHRASES: Final[dict[str, tuple[str, ...]]] = {
    "urgent": ("This is urgent, please help immediately.",
               "URGENT: our whole team is blocked."),
    "high": ("We cannot work like this.", "I lost a whole day over this."),
    "normal": ("Thanks.", "Could you take a look?", "Please advise."),
    "low": ("Just a question, no rush.", "Whenever you have time, this is only feedback."),
}
# fmt: on
_CATEGORY_WEIGHTS: Final = (25, 30, 20, 15, 10)  # same order as CATEGORIES
_PRIORITY_WEIGHTS: Final = (20, 62, 10, 8)  # low, normal, high, urgent
_GREETINGS: Final = ("Hi,", "Hello team,", "Good morning,", "")
_NAMES: Final = ("Ana", "Ben", "Chen", "Dana", "Emeka", "Farah", "Goran", "Hina")


def ticket_examples(rng: random.Random) -> dict[str, str]:
    """A realistic random ticket covering every category and priority over many draws."""
    category = rng.choices(CATEGORIES, weights=_CATEGORY_WEIGHTS)[0]
    priority = rng.choices(PRIORITIES, weights=_PRIORITY_WEIGHTS)[0]
    parts = (
        rng.choice(_GREETINGS),
        rng.choice(_BODIES[category]),
        rng.choice(_PRIORITY_PHRASES[priority]),
        f"- {rng.choice(_NAMES)}",
    )
    return {
        "ticket_id": f"T-{rng.randrange(100_000, 1_000_000)}",
        "subject": rng.choice(_SUBJECTS[category]),
        "body": " ".join(p for p in parts if p),
    }


def stored_ticket(ticket_id: str) -> dict[str, Any]:
    """A ticket as if read from a database: a pure function of the id (sha256-seeded)."""
    rng = random.Random(int.from_bytes(hashlib.sha256(ticket_id.encode()).digest()[:8], "big"))
    example = ticket_examples(rng)
    c = classify(example["subject"], example["body"])
    return {
        "ticket_id": ticket_id,
        "subject": example["subject"],
        "body": example["body"],
        "category": c.category,
        "priority": c.priority,
        "queue": c.queue,
        "status": rng.choice(STATUSES),
        "customer_id": f"C-{rng.randrange(1000, 10000)}",
        "created_at": f"2024-{rng.randint(1, 12):02d}-{rng.randint(1, 28):02d}T"
        f"{rng.randint(0, 23):02d}:{rng.randint(0, 59):02d}:00Z",
    }
