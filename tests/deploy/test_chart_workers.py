"""``proxy.workers``: several proxy processes in the container, rendered offline."""

from __future__ import annotations

from typing import Any

import helm_python as helm
import pytest
from chart import (
    CHART,
    FLEET_REDIS,
    SIDECAR,
    manifests,
    merged,
    one,
    refusal,
    rollout_config,
)


def args(values: dict[str, Any]) -> list[str]:
    pod = one(manifests(values), "Deployment")["spec"]["template"]["spec"]
    proxy = next(c for c in pod["containers"] if c["name"] == "shadow-proxy")
    found: list[str] = proxy["args"]
    return found


def test_one_worker_runs_the_proxy_as_before() -> None:
    assert args(SIDECAR) == ["run", "--config", "/etc/shadow-proxy/proxy.yaml"]


def test_more_workers_are_passed_to_the_proxy() -> None:
    values = merged(SIDECAR, proxy={"workers": 4})
    assert args(values) == ["run", "--config", "/etc/shadow-proxy/proxy.yaml", "--workers", "4"]


def test_several_workers_with_a_local_auto_rollout_are_refused_with_the_way_out() -> None:
    values = merged(SIDECAR, replicaCount=1, proxy={"workers": 2}, config=rollout_config())
    message = refusal(values)
    assert "proxy.workers is 2 and route all rolls out in auto mode" in message
    assert "fleet.coordination=redis" in message and "proxy.workers=1" in message
    # Accepting one rollout per pod does not make one per worker acceptable.
    assert "proxy.workers is 2" in refusal(merged(values, fleet={"allowLocalAutoRollout": True}))


@pytest.mark.parametrize(
    "values",
    [
        merged(SIDECAR, proxy={"workers": 2}, config=rollout_config(mode="manual")),
        merged(SIDECAR, proxy={"workers": 2}, fleet=FLEET_REDIS, config=rollout_config()),
    ],
)
def test_manual_rollouts_or_a_fleet_render_with_several_workers(values: dict[str, Any]) -> None:
    assert args(values)[-2:] == ["--workers", "2"]


@pytest.mark.parametrize(
    ("workers", "reason"),
    [(0, "minimum: got 0, want 1"), (65, "maximum: got 65, want 64"), ("2", "want integer")],
)
def test_a_worker_count_out_of_range_is_rejected_by_the_schema(workers: Any, reason: str) -> None:
    values = merged(SIDECAR, proxy={"port": 8080, "adminPort": 9090, "workers": workers})
    with helm.Chart.load(CHART) as chart, pytest.raises(helm.HelmError) as raised:
        chart.validate_schema(values)
    assert "at '/proxy/workers'" in str(raised.value)
    assert reason in str(raised.value)
