"""Label children of Prometheus metrics, cached by their label values.

``metric.labels(...)`` validates the label tuple on every call; the hot path
does one dict lookup instead. Children removed from a metric (a route that
lost its rollout, an un-learned noise field) leave the cache with it.
"""

from __future__ import annotations

from typing import Any


class LabelChildren:
    __slots__ = ("_children",)

    def __init__(self) -> None:
        self._children: dict[tuple[Any, ...], Any] = {}

    def __call__(self, metric: Any, *labels: str) -> Any:
        key = (id(metric), *labels)
        child = self._children.get(key)
        if child is None:
            child = self._children[key] = metric.labels(*labels)
        return child

    def has(self, metric: Any, *labels: str) -> bool:
        return (id(metric), *labels) in self._children

    def forget(self, metric: Any, *labels: str) -> None:
        """Remove one series (when it exists) from the metric and the cache."""
        if self._children.pop((id(metric), *labels), None) is not None:
            metric.remove(*labels)

    def forget_route(self, metrics: tuple[Any, ...], route: str) -> None:
        """Remove every series of ``metrics`` whose first label is ``route``."""
        by_id = {id(m): m for m in metrics}
        for key in [k for k in self._children if k[0] in by_id and k[1] == route]:
            by_id[key[0]].remove(*key[1:])
            del self._children[key]
