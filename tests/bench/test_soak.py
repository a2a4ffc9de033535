"""The soak harness: its checks can fail (pure tables), and a shortened soak
(25 s of mixed traffic through the real proxy while the agent fails at
random) passes them all and prints its figures.

Only behaviour is asserted, never performance: the RSS bound is the soak's
own check, not a timing.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from bench import soak_checks
from bench.soak_answers import FAULTS, agent_body, huge_body, legacy_body
from bench.soak_memory import RssSeries, growth
from bench.soak_traffic import (
    LIVE_ROUTE,
    SHADOW_ROUTE,
    Tally,
    build_templates,
    judge,
)

ROOT = Path(__file__).resolve().parents[2]
DURATION = 25
CHECKS = {
    "client errors", "RSS growth after warm-up", "fallbacks by reason",
    "live route: each fault falls back for its reason", "every agent fault injected",
    "nothing unmatched, rejected or left in flight", "proxy log: no error events",
    "proxy exits 0 on SIGTERM",
}  # fmt: skip
FIGURES = (
    "requests sent", "req/s", "client errors", "latency p50 / p99, all",
    "RSS baseline / peak / final", "RSS growth after warm-up", "agent faults injected",
    "shadow outcomes, shadow", "comparisons, live", "fallbacks by reason",
)  # fmt: skip
MB = 1024 * 1024


@pytest.fixture(scope="module")
def short_soak(tmp_path_factory: pytest.TempPathFactory) -> tuple[dict[str, Any], str]:
    out = tmp_path_factory.mktemp("soak") / "soak.json"
    # Half make soak's default rate: the short run shares the CI box with nothing
    # else, yet must leave the 2 cores room for the proxy, its backends and the client.
    argv = [sys.executable, "-m", "bench.soak", "--duration", str(DURATION), "--rate", "120"]
    argv += ["--json", str(out)]
    done = subprocess.run(argv, cwd=ROOT, capture_output=True, text=True, timeout=110, check=False)
    assert done.returncode == 0, done.stdout + done.stderr
    return json.loads(out.read_text()), done.stdout


@pytest.mark.e2e
def test_a_short_soak_passes_every_check_without_a_client_error(short_soak: Any) -> None:
    report, _ = short_soak
    assert report["passed"]
    assert {c["name"] for c in report["checks"]} >= CHECKS
    assert all(c["passed"] for c in report["checks"]), report["checks"]
    figures = report["figures"]
    assert figures["client_errors"] == 0
    assert figures["requests"] == figures["scheduled"] > 0
    assert figures["memory"]["growth_pct"] < 10


@pytest.mark.e2e
def test_every_fault_reaches_the_proxy_and_the_live_route_falls_back(short_soak: Any) -> None:
    figures = short_soak[0]["figures"]
    assert all(figures["agent_faults"].get(kind, 0) > 0 for kind in FAULTS)
    assert set(figures["proxy"]["fallbacks"]) >= {"error", "status", "timeout", "too_large"}
    assert figures["live_served"]["agent"] > 0 and figures["live_served"]["legacy"] > 0
    assert figures["proxy"]["comparisons"][SHADOW_ROUTE]["mismatch"] > 0


@pytest.mark.e2e
def test_the_printed_report_shows_the_figures_and_a_verdict_per_check(short_soak: Any) -> None:
    report, printed = short_soak
    for label in FIGURES:
        assert label in printed, label
    assert printed.count(" PASS") >= len(report["checks"])
    assert "soak: PASS (0 failed)" in printed


def test_the_client_accepts_legacy_everywhere_and_the_agent_only_on_the_live_route() -> None:
    table = build_templates(seed=7)
    shadow, live = table[SHADOW_ROUTE, "orders"][0], table[LIVE_ROUTE, "items"][3]
    legacy, agent = {b"x-served-by": b"legacy"}, {b"x-served-by": b"agent"}
    good = agent_body(live.method, live.path, live.body, "disagree")
    assert judge(shadow, 200, legacy, legacy_body("POST", shadow.path, shadow.body)) is None
    assert judge(live, 200, agent, good) is None
    assert judge(shadow, 200, agent, agent_body("POST", shadow.path, shadow.body, "agree")) == (
        "served_by"
    )
    assert judge(live, 200, agent, huge_body()) == "body"
    assert judge(live, 200, legacy, good) == "body"
    assert judge(live, 502, legacy, b"{}") == "legacy_failed"
    assert judge(live, 500, agent, b"{}") == "status"


def test_a_fault_the_agent_served_or_a_wrong_fallback_reason_fails_the_check() -> None:
    tally = Tally()
    handled = tally.routes[LIVE_ROUTE].handled
    handled["agree"].update({"agent": 5, "legacy": 4, "fallback timeout": 1})
    handled["error500"].update({"legacy": 3, "fallback status": 2})
    assert soak_checks.fallbacks(tally).passed
    handled["huge"]["fallback error"] += 1  # huge must be too_large
    assert not soak_checks.fallbacks(tally).passed
    del handled["huge"]
    handled["reset"]["agent"] += 1
    assert not soak_checks.fallbacks(tally).passed


def test_one_client_error_or_an_unanswered_request_fails_the_client_check() -> None:
    tally = Tally()
    tally.scheduled = tally.routes[SHADOW_ROUTE].answered = 10
    assert soak_checks.client(tally).passed
    tally.routes[LIVE_ROUTE].errors["transport"] += 1
    assert not soak_checks.client(tally).passed
    tally.routes[LIVE_ROUTE].errors.clear()
    tally.scheduled = 11
    assert not soak_checks.client(tally).passed


@pytest.mark.parametrize(
    ("samples_mb", "growth_pct", "passed"),
    [
        ([50, 60, 60, 60, 61, 60, 61, 61], 1.67, True),  # a ramp in warm-up is not growth
        ([60, 60, 60, 60, 66, 80, 66, 66], 10.0, False),  # 10% is over the limit
        ([60, 60, 60, 60, 90, 60, 60, 60], 0.0, True),  # a spike is not a leak
        ([60, 60, 60, 60, 62, 64, 66, 68], 10.0, False),  # a steady climb is
    ],
)
def test_rss_growth_compares_the_end_of_warmup_with_the_end_of_the_run(
    samples_mb: list[int], growth_pct: float, passed: bool
) -> None:
    series = RssSeries([(float(t), mb * MB) for t, mb in enumerate(samples_mb)])
    found = growth(series, warmup=3.0)
    assert found is not None
    assert round(found.ratio * 100, 2) == growth_pct
    assert found.peak == max(samples_mb[4:]) * MB
    assert soak_checks.memory(found.ratio * 100, 10).passed is passed
