"""Merging workers' expositions: sums for what counts, a worker label for gauges,
and counters that never go down when a worker is replaced or not scraped."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.metrics_core import Metric
from prometheus_client.parser import text_string_to_metric_families
from prometheus_client.registry import Collector

from proxy.metricsmerge import MetricsMerger


class Worker:
    """One worker's metrics, as its /metrics would expose them."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        self.requests = Counter("app_requests", "Requests.", ["route"], registry=r)
        self.in_flight = Gauge("app_in_flight", "In flight.", registry=r)
        self.share = Gauge("app_share", "Share.", ["route"], registry=r)
        self.latency = Histogram(
            "app_latency_seconds", "Latency.", ["route"], buckets=(0.1, 1.0), registry=r
        )

    def text(self) -> str:
        return generate_latest(self.registry).decode()


class Families(Collector):
    def __init__(self, families: list[Metric]) -> None:
        self._families = families

    def collect(self) -> list[Metric]:
        return self._families


def scraped(*workers: Worker) -> MetricsMerger:
    """A merger that has scraped each worker once (worker i, first generation)."""
    merger = MetricsMerger()
    for index, worker in enumerate(workers):
        merger.observe((index, 1), worker.text())
    return merger


def rendered(
    merger: MetricsMerger, own: str = ""
) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """The merged exposition as Prometheus reads it: (name, labels) -> value."""
    registry = CollectorRegistry(auto_describe=False)
    registry.register(Families(merger.families(own)))
    text = generate_latest(registry).decode()
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
        if not s.name.endswith("_created")
    }


def test_counters_with_equal_labels_are_summed_and_other_labels_kept_apart() -> None:
    a, b = Worker(), Worker()
    a.requests.labels("api").inc(3)
    b.requests.labels("api").inc(4)
    b.requests.labels("search").inc(1)
    merger = scraped(a, b)
    out = rendered(merger)
    assert out[("app_requests_total", (("route", "api"),))] == 7
    assert out[("app_requests_total", (("route", "search"),))] == 1


def test_gauges_keep_each_workers_value_under_a_worker_label() -> None:
    a, b = Worker(), Worker()
    a.in_flight.set(2)
    b.in_flight.set(5)
    a.share.labels("api").set(25)
    b.share.labels("api").set(25)
    merger = scraped(a, b)
    out = rendered(merger)
    assert out[("app_in_flight", (("worker", "0"),))] == 2
    assert out[("app_in_flight", (("worker", "1"),))] == 5
    assert out[("app_share", (("route", "api"), ("worker", "0")))] == 25
    assert out[("app_share", (("route", "api"), ("worker", "1")))] == 25
    assert ("app_in_flight", ()) not in out


def test_the_supervisors_own_series_join_as_worker_supervisor_by_the_same_rule() -> None:
    a, own = Worker(), Worker()
    a.requests.labels("api").inc(3)
    a.in_flight.set(2)
    own.requests.labels("api").inc(1)  # like its CPU seconds: part of the pod's
    own.in_flight.set(7)  # like its resident memory: its own
    merger = scraped(a)
    out = rendered(merger, own.text())
    assert out[("app_requests_total", (("route", "api"),))] == 4
    assert out[("app_in_flight", (("worker", "0"),))] == 2
    assert out[("app_in_flight", (("worker", "supervisor"),))] == 7


def test_histograms_sum_bucket_by_bucket_with_their_sum_and_count() -> None:
    a, b = Worker(), Worker()
    for value in (0.05, 0.5, 5.0):
        a.latency.labels("api").observe(value)
    b.latency.labels("api").observe(0.5)
    merger = scraped(a, b)
    out = rendered(merger)
    route = ("route", "api")
    assert out[("app_latency_seconds_bucket", (("le", "0.1"), route))] == 1
    assert out[("app_latency_seconds_bucket", (("le", "1.0"), route))] == 3
    assert out[("app_latency_seconds_bucket", (("le", "+Inf"), route))] == 4
    assert out[("app_latency_seconds_count", (route,))] == 4
    assert out[("app_latency_seconds_sum", (route,))] == 0.05 + 0.5 + 5.0 + 0.5


def test_a_replaced_worker_leaves_its_counts_in_the_sum_and_its_gauges_go() -> None:
    a, b = Worker(), Worker()
    a.requests.labels("api").inc(10)
    a.latency.labels("api").observe(0.5)
    a.in_flight.set(3)
    b.requests.labels("api").inc(4)
    merger = scraped(a, b)
    before = rendered(merger)[("app_requests_total", (("route", "api"),))]

    merger.retire((0, 1))  # worker 0's process died; generation 2 starts from zero
    fresh = Worker()
    fresh.requests.labels("api").inc(1)
    merger.observe((0, 2), fresh.text())
    out = rendered(merger)
    assert before == 14
    assert out[("app_requests_total", (("route", "api"),))] == 15
    assert out[("app_latency_seconds_count", (("route", "api"),))] == 1
    assert out[("app_in_flight", (("worker", "0"),))] == 0  # the new process's own value
    assert out[("app_in_flight", (("worker", "1"),))] == 0


def test_a_scrape_that_failed_keeps_the_workers_last_values() -> None:
    a, b = Worker(), Worker()
    a.requests.labels("api").inc(10)
    a.in_flight.set(1)
    b.requests.labels("api").inc(4)
    merger = scraped(a, b)
    b.requests.labels("api").inc(6)
    merger.observe((1, 1), b.text())  # worker 0 did not answer this time
    out = rendered(merger)
    assert out[("app_requests_total", (("route", "api"),))] == 20
    assert out[("app_in_flight", (("worker", "0"),))] == 1


def test_a_scrape_of_a_retired_process_that_arrives_late_is_not_counted_twice() -> None:
    a = Worker()
    a.requests.labels("api").inc(10)
    merger = scraped(a)
    late = a.text()
    merger.retire((0, 1))
    merger.observe((0, 1), late)  # a scrape that was under way when the process died
    assert rendered(merger)[("app_requests_total", (("route", "api"),))] == 10


def test_a_family_only_retired_workers_had_is_still_exposed() -> None:
    a = Worker()
    a.requests.labels("gone").inc(2)
    merger = scraped(a)
    merger.retire((0, 1))
    assert rendered(merger) == {("app_requests_total", (("route", "gone"),)): 2}
