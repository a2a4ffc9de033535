"""The proxy's own account of a soak: its ``/metrics``, read once and summed by label."""

from __future__ import annotations

import urllib.request
from collections.abc import Mapping
from typing import Any

from prometheus_client.parser import text_string_to_metric_families

from bench.procs import LOOPBACK

P = "shadow_proxy_"


class Scrape:
    """One read of ``/metrics``: every sample, summed by label on demand."""

    def __init__(self, text: str) -> None:
        self.samples = [
            (s.name, s.labels, s.value)
            for family in text_string_to_metric_families(text)
            for s in family.samples
        ]

    @classmethod
    def read(cls, admin_port: int) -> Scrape:
        url = f"http://{LOOPBACK}:{admin_port}/metrics"
        with urllib.request.urlopen(url, timeout=10) as response:
            return cls(response.read().decode())

    def total(self, name: str, **labels: str) -> float:
        return sum(v for n, got, v in self._matching(name, labels))

    def by(self, name: str, label: str, **labels: str) -> dict[str, float]:
        found: dict[str, float] = {}
        for _, got, value in self._matching(name, labels):
            found[got[label]] = found.get(got[label], 0.0) + value
        return found

    def _matching(
        self, name: str, labels: Mapping[str, str]
    ) -> list[tuple[str, dict[str, str], float]]:
        return [
            s
            for s in self.samples
            if s[0] == name and all(s[1].get(k) == v for k, v in labels.items())
        ]


def account(scrape: Scrape, routes: list[str]) -> dict[str, Any]:
    """The figures the report prints: shadow outcomes, comparisons, fallbacks."""
    return {
        "shadow_outcomes": {
            r: scrape.by(P + "shadow_requests_total", "outcome", route=r) for r in routes
        },
        "comparisons": {r: scrape.by(P + "comparisons_total", "verdict", route=r) for r in routes},
        "fallbacks": scrape.by(P + "fallbacks_total", "reason"),
        "retries": scrape.total(P + "retries_total"),
        "shadow_in_flight": scrape.total(P + "shadow_in_flight"),
    }
