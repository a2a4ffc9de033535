"""The chart's fleet mode, rendered offline: the values that put the rollout
state in Redis and the evidence in Prometheus, the refusal of one rollout per
pod where the chart runs many pods, and the proxy's own settings model loading
what the chart renders."""

from __future__ import annotations

from typing import Any

import helm_python as helm
import pytest
from chart import (
    CHART,
    FLEET_PROMETHEUS,
    FLEET_REDIS,
    NAMESPACE,
    PROMETHEUS_URL,
    REDIS_URL,
    SIDECAR,
    STANDALONE,
    manifests,
    merged,
    proxy_config,
    proxy_env,
    refusal,
    rollout_config,
)

from proxy.fleetconfig import PrometheusSettings, RedisSettings
from proxy.settings import settings_from

AUTO = rollout_config()  # every route in auto mode (the default mode)
MANUAL = rollout_config(mode="manual", percent=5)


def test_many_pods_with_a_local_auto_rollout_are_refused_with_the_way_out() -> None:
    message = refusal(merged(SIDECAR, config=AUTO))
    assert "replicaCount is 2 and route all rolls out in auto mode" in message
    assert "fleet.coordination=local" in message
    assert "the pods would drift apart" in message
    assert "fleet.coordination=redis" in message
    assert "fleet.allowLocalAutoRollout=true" in message


def test_the_readme_shows_the_refusal_as_helm_prints_it() -> None:
    readme = (CHART.parents[1] / "README.md").read_text()
    shown = readme.split("**The refusal rule.**")[1].split("```\n")[1].split("```")[0]
    message = refusal(merged(SIDECAR, replicaCount=3, config=AUTO))
    assert " ".join(shown.split()) == "Error: " + message


def test_autoscaling_counts_as_many_pods_and_every_auto_route_is_named() -> None:
    search = {"name": "search", "match": {"prefix": "/s"}, "rollout": {"mode": "auto"}}
    two = {"routes": [*AUTO["routes"], search]}
    message = refusal(merged(STANDALONE, replicaCount=1, autoscaling={"enabled": True}, config=two))
    assert "autoscaling is enabled and routes all, search roll out in auto mode" in message


def test_a_route_override_is_judged_as_rendered() -> None:
    """routeOverrides can make an auto rollout manual (renders) or add one (refused)."""
    manual = merged(SIDECAR, config=AUTO, routeOverrides={"all": {"rollout": {"mode": "manual"}}})
    [route] = proxy_config(manifests(manual))["routes"]
    assert route["rollout"] == {"mode": "manual"}
    added = merged(SIDECAR, routeOverrides={"all": {"rollout": {"percent": 0}}})
    assert "route all rolls out in auto mode" in refusal(added)


@pytest.mark.parametrize(
    "values",
    [
        pytest.param(merged(SIDECAR, replicaCount=1, config=AUTO), id="one-replica"),
        pytest.param(merged(SIDECAR, replicaCount=3, config=MANUAL), id="manual-mode"),
        pytest.param(merged(SIDECAR, replicaCount=3), id="no-rollout"),
        pytest.param(
            merged(
                SIDECAR, replicaCount=3, config={"routes": [{**AUTO["routes"][0], "rollout": None}]}
            ),
            id="null-rollout",
        ),
        pytest.param(
            merged(SIDECAR, config=AUTO, fleet={"allowLocalAutoRollout": True}), id="overridden"
        ),
        pytest.param(merged(SIDECAR, replicaCount=3, config=AUTO, fleet=FLEET_REDIS), id="redis"),
        # The parent chart runs the pods: how many is not this chart's to know.
        pytest.param({"mode": "embedded", "replicaCount": 3, "config": AUTO}, id="embedded"),
    ],
)
def test_one_rollout_for_the_pods_renders(values: dict[str, Any]) -> None:
    cfg = proxy_config(manifests(values))
    assert cfg["routes"][0]["name"] == "all"
    if values.get("fleet", {}).get("coordination") == "redis":
        assert cfg["coordination"] == "redis"


def test_redis_coordination_wires_the_secret_the_pod_name_and_the_config() -> None:
    values = merged(
        SIDECAR,
        replicaCount=3,
        config=AUTO,
        fleet=merged(
            FLEET_REDIS,
            redis={"existingSecretKey": "password", "leaseTtl": "15s"},
            **FLEET_PROMETHEUS,
        ),
    )
    docs = manifests(values)
    env = proxy_env(docs)
    assert env["SHADOW_PROXY_REDIS__REPLICA"] == {"fieldRef": {"fieldPath": "metadata.name"}}
    assert env["SHADOW_PROXY_REDIS__PASSWORD"] == {
        "secretKeyRef": {"name": "orders-redis", "key": "password"}
    }
    cfg = proxy_config(docs)
    assert "password" not in cfg["redis"]  # never in the ConfigMap
    # What the proxy makes of it, with the environment the pod gets.
    settings = settings_from(cfg)
    assert (settings.coordination, settings.analysis) == ("redis", "prometheus")
    assert settings.redis.url == REDIS_URL
    assert settings.redis.key_prefix == "orders-shadow-proxy"
    assert settings.redis.lease_ttl == 15.0
    assert settings.prometheus.url == PROMETHEUS_URL


def test_without_a_secret_there_is_no_password_and_a_users_env_wins() -> None:
    own = {"name": "SHADOW_PROXY_REDIS__REPLICA", "value": "orders-a"}
    values = merged(
        SIDECAR, fleet={**FLEET_REDIS, "redis": {"url": REDIS_URL}}, proxy={"env": [own]}
    )
    env = proxy_env(manifests(values))
    assert env == {"SHADOW_PROXY_REDIS__REPLICA": "orders-a"}


def test_local_coordination_adds_nothing_to_the_pod() -> None:
    assert proxy_env(manifests(merged(SIDECAR, fleet=FLEET_PROMETHEUS))) == {}


def test_the_charts_fleet_defaults_are_the_proxys() -> None:
    """values.yaml spells the proxy's defaults out; they must not drift apart."""
    fleet = {**FLEET_REDIS, **FLEET_PROMETHEUS}
    settings = settings_from(proxy_config(manifests(merged(SIDECAR, fleet=fleet))))
    chart_owned = {"url", "key_prefix", "replica", "password"}
    assert settings.redis.model_dump(exclude=chart_owned) == RedisSettings().model_dump(
        exclude=chart_owned
    )
    assert settings.prometheus.model_dump(exclude={"url"}) == PrometheusSettings().model_dump(
        exclude={"url"}
    )


def test_each_release_keeps_its_own_keys_unless_told_otherwise() -> None:
    values = merged(SIDECAR, fleet=FLEET_REDIS)
    prefixes = set()
    for release in ("orders", "payments"):
        with helm.Chart.load(CHART) as chart:
            rendered = chart.render(values=values, name=release, namespace=NAMESPACE)
        cm = next(t for p, t in rendered.items() if p.endswith("configmap.yaml"))
        prefixes.add(next(ln.split()[-1] for ln in cm.splitlines() if "key_prefix:" in ln))
    assert prefixes == {"orders-shadow-proxy", "payments-shadow-proxy"}
    shared = merged(values, fleet={"redis": {"keyPrefix": "orders-fleet"}})
    assert proxy_config(manifests(shared))["redis"]["key_prefix"] == "orders-fleet"


def test_query_overrides_reach_the_config_and_the_rest_keep_their_defaults() -> None:
    mine = (
        'sum(increase(shadow_proxy_comparisons_total{route="{{ route }}",namespace="shop"}'
        "[{{ window }}]))"
    )
    fleet = merged(FLEET_PROMETHEUS, prometheus={"queries": {"samples": mine}})
    cfg = proxy_config(manifests(merged(SIDECAR, fleet=fleet)))
    assert cfg["prometheus"]["queries"] == {"samples": mine}
    queries = settings_from(cfg).prometheus.queries
    assert queries.samples == mine
    assert queries.matches == PrometheusSettings().queries.matches


@pytest.mark.parametrize("key", ["coordination", "redis", "analysis", "prometheus"])
def test_fleet_settings_under_config_are_refused_naming_the_place_to_put_them(key: str) -> None:
    value = {"url": "http://elsewhere:1"} if key in ("redis", "prometheus") else "redis"
    message = refusal(merged(SIDECAR, config={key: value}))
    assert f"config.{key} is set by the chart from fleet.{key}: set fleet.{key} instead" in message


def test_a_selector_reaches_the_config_and_scopes_every_default_query() -> None:
    fleet = merged(FLEET_PROMETHEUS, prometheus={"selector": 'namespace="shop",job="orders"'})
    settings = settings_from(proxy_config(manifests(merged(SIDECAR, fleet=fleet))))
    assert settings.prometheus.selector == 'namespace="shop",job="orders"'
    assert all("{{ selector }}" in q for q in settings.prometheus.queries.model_dump().values())
