"""Many workers' Prometheus expositions as one, as if one process had served it all.

Counter, histogram and summary samples with the same name and labels are
summed. Gauges (and untyped samples) cannot be summed meaningfully — a
share, a stage, a start time — so each worker's keep their values under an
extra label, ``worker="<index>"``. Summary quantiles are gauges in this sense.
The supervisor's own exposition (its ``process_*`` series) joins by the same
rule, as ``worker="supervisor"``: its CPU seconds add to the pod's.

Sums must never go down, or ``rate()`` sees a counter reset that did not
happen. So the merger keeps each worker's last scrape; a scrape that failed
reuses it, and when a worker process is replaced its last counter values
move to a *retired* total that every later merge adds in. What a dead worker
counted after its last scrape is lost: the sums undercount, never reset.

Pure: text in, ``Metric`` families out; the caller scrapes and renders.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from prometheus_client.metrics_core import Metric
from prometheus_client.parser import text_string_to_metric_families

WORKER_LABEL = "worker"
SUPERVISOR = "supervisor"  # the worker label of the supervisor's own gauges
SUMMED_TYPES = frozenset({"counter", "histogram", "summary"})

Labels = tuple[tuple[str, str], ...]
SampleKey = tuple[str, Labels]  # (sample name, sorted labels)
WorkerId = tuple[int, int]  # (index, generation): a generation is one process


@dataclass(slots=True)
class Family:
    name: str
    documentation: str
    type: str
    samples: dict[SampleKey, float] = field(default_factory=dict)


def _summed(type_: str, labels: dict[str, str]) -> bool:
    return type_ in SUMMED_TYPES and "quantile" not in labels


def parse(text: str) -> dict[str, Family]:
    """Family name -> its samples, from one exposition (``*_created`` left out:
    a creation time neither sums nor helps, and the proxy turns them off)."""
    families: dict[str, Family] = {}
    for metric in text_string_to_metric_families(text):
        family = families.setdefault(
            metric.name, Family(metric.name, metric.documentation, metric.type)
        )
        for s in metric.samples:
            if s.name.endswith("_created"):
                continue
            key = (s.name, tuple(sorted(s.labels.items())))
            family.samples[key] = family.samples.get(key, 0.0) + float(s.value)
    return families


class MetricsMerger:
    """The last exposition of each live worker, and the retired sums."""

    def __init__(self) -> None:
        self._last: dict[WorkerId, dict[str, Family]] = {}
        self._retired: dict[str, Family] = {}
        self._gone: set[WorkerId] = set()

    def observe(self, worker: WorkerId, text: str) -> None:
        """A successful scrape. One of a worker already retired (a scrape that
        raced its exit) is ignored: its values are in the retired sums."""
        if worker in self._gone:
            return
        self._last[worker] = parse(text)

    def retire(self, worker: WorkerId) -> None:
        """The worker's process is gone: keep its summed samples for good."""
        self._gone.add(worker)
        for name, family in self._last.pop(worker, {}).items():
            summed = {k: v for k, v in family.samples.items() if _summed(family.type, dict(k[1]))}
            if not summed:  # gauges go with their process
                continue
            kept = self._retired.setdefault(name, Family(name, family.documentation, family.type))
            for key, value in summed.items():
                kept.samples[key] = kept.samples.get(key, 0.0) + value

    def families(self, own: str = "") -> list[Metric]:
        """The merged exposition: workers in index order, the supervisor's ``own``
        exposition, then what only retired workers had."""
        merged: dict[str, Family] = {}
        for worker in sorted(self._last):
            for family in self._last[worker].values():
                self._add(merged, family, str(worker[0]))
        for family in parse(own).values():
            self._add(merged, family, SUPERVISOR)
        for family in self._retired.values():
            self._add(merged, family, None)
        return [_metric(f) for f in merged.values()]

    @staticmethod
    def _add(merged: dict[str, Family], family: Family, index: str | None) -> None:
        out = merged.setdefault(family.name, Family(family.name, family.documentation, family.type))
        for (name, labels), value in family.samples.items():
            if _summed(family.type, dict(labels)):
                key = (name, labels)
                out.samples[key] = out.samples.get(key, 0.0) + value
            elif index is not None:  # a gauge: this worker's own series
                key = (name, tuple(sorted((*labels, (WORKER_LABEL, index)))))
                out.samples[key] = value


def _metric(family: Family) -> Metric:
    metric = Metric(family.name, family.documentation, family.type)
    for (name, labels), value in family.samples.items():
        metric.add_sample(name, dict(labels), value)
    return metric
