"""The soak's checks, each PASS or FAIL with what was measured and what was expected.

The proxy's counters are checked against what the client sent and saw:
exactly where the proxy's semantics are exact (a live response is counted
once, by who served it; a fallback once, by the reason the client was told;
a shadow request that was sent ends completed, error or timeout), as bounds
where they are not (a comparison is skipped when the large-comparison lane is
busy, so matches are at most the agreeing answers asked for).
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Mapping
from dataclasses import dataclass

from bench.soak_answers import ANSWERS, FAULTS
from bench.soak_metrics import P, Scrape
from bench.soak_traffic import LIVE_ROUTE, Tally

SETTLED = ("completed", "error", "timeout")
# The fallback reason each fault must give on the live route (when the agent was chosen).
REASONS = {
    "slow": "timeout",
    "hang": "timeout",
    "reset": "error",
    "garbage": "error",
    "close": "error",
    "error500": "status",
    "huge": "too_large",
}
# Any request may meet an open breaker, and any may time out on a loaded machine.
ANY_TIME = frozenset({"fallback breaker_open", "fallback timeout"})


@dataclass(frozen=True)
class Check:
    name: str
    passed: bool
    measured: str
    expected: str


def counts(values: Mapping[str, float | int]) -> str:
    """``a 3, b 1`` sorted by name, zeros left out; ``-`` when empty."""
    parts = [f"{k} {int(v)}" for k, v in sorted(values.items()) if v]
    return ", ".join(parts) or "-"


def client(tally: Tally) -> Check:
    errors = tally.errors
    answered = sum(r.answered for r in tally.routes.values())
    total = sum(errors.values())
    return Check(
        "client errors",
        total == 0 and answered == tally.scheduled,
        f"{total} ({counts(errors)}); {answered} of {tally.scheduled} answered right",
        "0; all",
    )


def memory(growth_pct: float | None, limit: float) -> Check:
    measured = "-" if growth_pct is None else f"{growth_pct:+.2f}%"
    passed = growth_pct is not None and growth_pct < limit
    return Check("RSS growth after warm-up", passed, measured, f"< {limit:g}%")


def _same(name: str, measured: Mapping[str, float], expected: Mapping[str, int]) -> Check:
    keys = set(measured) | set(expected)
    equal = all(int(measured.get(k, 0)) == expected.get(k, 0) for k in keys)
    return Check(name, equal, counts(measured), f"= client's {counts(expected)}")


def metrics(scrape: Scrape, tally: Tally) -> list[Check]:
    found = []
    for name, route in tally.routes.items():
        served = scrape.by(P + "requests_total", "backend", route=name)
        found.append(_same(f"responses counted, route {name}", served, route.served))
        outcomes = scrape.by(P + "shadow_requests_total", "outcome", route=name)
        settled = sum(outcomes.get(k, 0) for k in SETTLED)
        sent = outcomes.get("sent", 0)
        found.append(
            Check(
                f"shadow requests sent = settled, route {name}",
                sent == settled and sent > 0,
                f"sent {int(sent)}, settled {int(settled)}",
                "equal, > 0",
            )
        )
        verdicts = scrape.by(P + "comparisons_total", "verdict", route=name)
        asked = {"match": route.faults["agree"], "mismatch": route.faults["disagree"]}
        bounded = all(0 < verdicts.get(v, 0) <= n for v, n in asked.items())
        found.append(
            Check(
                f"comparisons within what was asked, route {name}",
                bounded and verdicts.get("error", 0) > 0,
                counts(verdicts),
                f"0 < match <= {asked['match']}, 0 < mismatch <= {asked['mismatch']}, error > 0",
            )
        )
    told = sum((r.fallbacks for r in tally.routes.values()), Counter[str]())
    found.append(_same("fallbacks by reason", scrape.by(P + "fallbacks_total", "reason"), told))
    unmatched = scrape.total(P + "requests_total", route="unmatched")
    rejected = scrape.total(P + "rejected_requests_total")
    in_flight = scrape.total(P + "shadow_in_flight")
    found.append(
        Check(
            "nothing unmatched, rejected or left in flight",
            unmatched == rejected == in_flight == 0,
            f"unmatched {int(unmatched)}, rejected {int(rejected)}, in flight {int(in_flight)}",
            "all 0",
        )
    )
    return found


def fallbacks(tally: Tally) -> Check:
    """On the live route, the agent serves only its good answers, and every fault
    it was chosen for falls back to legacy for the reason that fault gives."""
    unexpected: Counter[str] = Counter()
    fell = 0
    for fault, outcomes in tally.routes[LIVE_ROUTE].handled.items():
        allowed = {"legacy", *ANY_TIME}
        allowed |= {"agent"} if fault in ANSWERS else {f"fallback {REASONS[fault]}"}
        for outcome, n in outcomes.items():
            fell += n if outcome.startswith("fallback") else 0
            if outcome not in allowed:
                unexpected[f"{fault} -> {outcome}"] += n
    return Check(
        "live route: each fault falls back for its reason",
        not unexpected and fell > 0,
        f"{fell} fallbacks" + (f"; unexpected: {counts(unexpected)}" if unexpected else ""),
        "reset/garbage/close error, error500 status, huge too_large; any: timeout",
    )


def injected(faults: Mapping[str, int]) -> Check:
    missing = sorted(k for k in FAULTS if not faults.get(k))
    return Check(
        "every agent fault injected",
        not missing,
        f"{len(FAULTS) - len(missing)} of {len(FAULTS)} kinds, {sum(faults.values())} in all",
        "each kind > 0" + (f" (missing {', '.join(missing)})" if missing else ""),
    )


def proxy_log(errors: Mapping[str, int]) -> Check:
    return Check("proxy log: no error events", not errors, counts(errors), "none")


def proxy_exit(code: int | None) -> Check:
    return Check("proxy exits 0 on SIGTERM", code == 0, str(code), "0")
