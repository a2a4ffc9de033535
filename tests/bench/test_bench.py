"""The benchmark harness as a user runs it: a one-second pass over a few
scenarios with every peer, real servers, real load.

Only behaviour is asserted here, never performance: numbers on a shared
machine belong in the report, not in a test.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parents[2]
PEERS = {"shadow-proxy", "shadow-proxy-workers", "envoy", "nginx"}
SCENARIOS = ("passthrough", "mirror", "failing-refused", "fixed-rate")
FIGURES = {
    "rps", "p50_ms", "p99_ms", "added_p50_ms", "added_p99_ms", "errors", "requests",
    "cpu_s_per_1k", "peak_rss_mb", "mirrored", "rps_vs_passthrough", "p99_vs_passthrough",
    "runs",
}  # fmt: skip
pytestmark = pytest.mark.e2e


@pytest.fixture(scope="module")
def quick_run(tmp_path_factory: pytest.TempPathFactory) -> tuple[dict[str, Any], str, str]:
    tmp = tmp_path_factory.mktemp("bench")
    out, doc = tmp / "out.json", tmp / "out.md"
    argv = [sys.executable, "-m", "bench", "--quick", "--scenario", *SCENARIOS,
            "--rate", "200", "--json", str(out), "--doc", str(doc)]  # fmt: skip
    done = subprocess.run(argv, cwd=ROOT, capture_output=True, text=True, timeout=110, check=False)
    assert done.returncode == 0, done.stdout + done.stderr
    return json.loads(out.read_text()), doc.read_text(), done.stdout


def test_every_peer_serves_every_scenario_without_errors(quick_run: Any) -> None:
    report, _, _ = quick_run
    assert set(report["scenarios"]) == set(SCENARIOS)
    for name, scenario in report["scenarios"].items():
        expected = PEERS | ({"direct"} if name in ("passthrough", "fixed-rate") else set())
        assert set(scenario["peers"]) == expected, name
        for peer, figures in scenario["peers"].items():
            assert figures["requests"] > 0, (name, peer)
            assert figures["errors"] == 0, (name, peer, figures)


def test_nginx_and_envoy_mirror_everything_and_shadow_proxy_mirrors(quick_run: Any) -> None:
    peers = quick_run[0]["scenarios"]["mirror"]["peers"]
    assert peers["nginx"]["mirrored"] == pytest.approx(1.0, abs=0.02)
    assert peers["envoy"]["mirrored"] == pytest.approx(1.0, abs=0.02)
    assert peers["shadow-proxy"]["mirrored"] > 0
    assert peers["shadow-proxy-workers"]["mirrored"] > 0


def test_the_json_has_every_figure_for_every_peer(quick_run: Any) -> None:
    report, _, _ = quick_run
    for scenario in report["scenarios"].values():
        for peer, figures in scenario["peers"].items():
            assert set(figures) == FIGURES, peer
            if peer != "direct":  # a proxy is measured, not just loaded
                assert figures["cpu_s_per_1k"] > 0
                assert 1 < figures["peak_rss_mb"] < 1000
    assert {"shadow-proxy/envoy", "shadow-proxy-workers/envoy"} <= set(
        report["scenarios"]["mirror"]["ratios"]
    )
    fixed = report["scenarios"]["fixed-rate"]["peers"]["shadow-proxy"]
    assert fixed["added_p50_ms"] is not None
    assert {t["name"] for t in report["targets"]} >= {"peak RSS, any scenario"}


def test_the_doc_names_the_machine_and_the_date(quick_run: Any) -> None:
    report, doc, printed = quick_run
    assert report["date"] in doc
    assert str(report["machine"]["cpu"]) in doc
    assert "shadow-proxy/envoy" in doc and "## Targets" in doc
    assert "Targets" in printed and "mirrored" in printed
