"""The Helm chart, proven offline: Helm's own lint and render (through the Helm
SDK), Kubernetes schemas for every rendered object, and the proxy's own config
check on the ConfigMap the chart renders."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import helm_python as helm
import pytest
import yaml
from chart import (
    CHART,
    FLEET_PROMETHEUS,
    FLEET_REDIS,
    NAMESPACE,
    RELEASE,
    SIDECAR,
    STANDALONE,
    kubernetes_validate,
    lint,
    manifests,
    merged,
    one,
    proxy_config,
    rollout_config,
)

from proxy.app import RESTART_ONLY
from proxy.units import parse_duration

BIN = Path(sys.executable).parent


MONITORING_ON = {
    "monitoring": {
        "serviceMonitor": {"enabled": True},
        "prometheusRule": {"enabled": True},
        "dashboard": {"enabled": True},
    }
}

# The matrix every check below runs over: each mode, monitoring on and off, the
# admin token from the chart or from an existing Secret, autoscaling, fleet mode.
MATRIX: dict[str, dict[str, Any]] = {
    "sidecar": SIDECAR,
    "standalone": STANDALONE,
    "embedded": {"mode": "embedded"},
    "sidecar-monitoring": merged(SIDECAR, **MONITORING_ON),
    "standalone-monitoring": merged(STANDALONE, **MONITORING_ON),
    "existing-secret": merged(
        SIDECAR, adminToken={"existingSecret": "ops-token", "existingSecretKey": "t"}
    ),
    "no-token-autoscaling": merged(
        STANDALONE, adminToken={"enabled": False}, autoscaling={"enabled": True}
    ),
    "persistent-state": merged(SIDECAR, replicaCount=1, state={"existingClaim": "proxy-state"}),
    "fleet": merged(
        SIDECAR,
        replicaCount=3,
        fleet=merged(FLEET_REDIS, **FLEET_PROMETHEUS),
        config=rollout_config(),
        **MONITORING_ON,
    ),
    "recording-tracing": merged(
        STANDALONE,
        recording={"enabled": True},
        tracing={
            "otlpEndpoint": "http://otel:4318",
            "existingSecret": "otlp",
            "headers": {"authorization": "auth"},
        },
    ),
    "recording-claim": merged(
        SIDECAR, replicaCount=1, recording={"enabled": True, "existingClaim": "cases"}
    ),
    "workers": merged(SIDECAR, proxy={"workers": 4}, config=rollout_config(mode="manual")),
    "local-auto-allowed": merged(
        STANDALONE,
        autoscaling={"enabled": True},
        fleet={"allowLocalAutoRollout": True},
        config=rollout_config(),
    ),
}


def container(docs: list[dict[str, Any]], name: str) -> dict[str, Any]:
    pod = one(docs, "Deployment")["spec"]["template"]["spec"]
    return next(c for c in pod["containers"] if c["name"] == name)


@pytest.mark.parametrize("case", MATRIX)
def test_strict_lint_finds_nothing(case: str) -> None:
    report = lint(MATRIX[case])
    assert report["messages"] == [] and report["errors"] == [], report


@pytest.mark.parametrize("case", MATRIX)
def test_every_rendered_object_passes_kubernetes_strict_validation(
    case: str, tmp_path: Path
) -> None:
    docs = manifests(MATRIX[case])
    assert docs
    kubernetes_validate(docs, tmp_path)


@pytest.mark.parametrize(
    "case", ["sidecar", "standalone", "embedded", "fleet", "recording-tracing"]
)
def test_the_rendered_config_passes_check_config(case: str, tmp_path: Path) -> None:
    path = tmp_path / "proxy.yaml"
    path.write_text(yaml.safe_dump(proxy_config(manifests(MATRIX[case]))))
    result = subprocess.run(
        [BIN / "shadow-proxy", "check-config", str(path)],
        capture_output=True, text=True, check=False, timeout=30,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    normalized = yaml.safe_load(result.stdout)
    assert normalized["admin"]["host"] == "0.0.0.0"  # opened deliberately: probes and scrapes
    assert normalized["routes"][0]["shadow"]["percent"] == 10


def test_sidecar_runs_legacy_in_the_pod_and_the_service_points_at_the_proxy() -> None:
    docs = manifests(
        merged(
            SIDECAR,
            service={"type": "LoadBalancer"},
            legacy={"port": 7000, "env": [{"name": "A", "value": "1"}]},
        )
    )
    assert proxy_config(docs)["backends"]["legacy"]["url"] == "http://127.0.0.1:7000"
    legacy = container(docs, "legacy")
    assert legacy["image"] == "registry.example/orders:1.4.2"
    assert legacy["ports"] == [{"name": "legacy", "containerPort": 7000, "protocol": "TCP"}]
    assert legacy["env"] == [{"name": "A", "value": "1"}]
    services = {s["metadata"]["name"]: s["spec"] for s in docs if s["kind"] == "Service"}
    assert set(services) == {"orders-shadow-proxy", "orders-shadow-proxy-admin"}
    client = services["orders-shadow-proxy"]
    assert [(p["name"], p["targetPort"]) for p in client["ports"]] == [("http", "http")]
    # Admin stays inside the cluster whatever the client Service's type.
    admin = services["orders-shadow-proxy-admin"]
    assert admin["type"] == "ClusterIP"
    assert [(p["name"], p["targetPort"]) for p in admin["ports"]] == [("admin", "admin")]
    proxy_ports = {p["name"]: p["containerPort"] for p in container(docs, "shadow-proxy")["ports"]}
    assert proxy_ports == {"http": 8080, "admin": 9090}


def test_the_pod_is_ready_only_once_legacy_accepts_connections() -> None:
    probe = container(manifests(SIDECAR), "legacy")["readinessProbe"]
    assert probe["tcpSocket"] == {"port": "legacy"}
    custom = {"httpGet": {"path": "/health", "port": 8000}}
    docs = manifests(merged(SIDECAR, legacy={"readinessProbe": custom}))
    assert container(docs, "legacy")["readinessProbe"] == custom


def test_without_a_service_account_of_its_own_the_pod_uses_the_given_one() -> None:
    def account(values: dict[str, Any]) -> str:
        name: str = one(manifests(values), "Deployment")["spec"]["template"]["spec"][
            "serviceAccountName"
        ]
        return name

    assert account(merged(SIDECAR, serviceAccount={"create": False})) == "default"
    named = merged(SIDECAR, serviceAccount={"create": False, "name": "orders"})
    assert account(named) == "orders"
    assert not [d for d in manifests(named) if d["kind"] == "ServiceAccount"]


def test_a_state_claim_is_held_by_one_pod_at_a_time() -> None:
    spec = one(manifests(MATRIX["persistent-state"]), "Deployment")["spec"]
    assert spec["strategy"] == {"type": "Recreate"}


def test_standalone_runs_only_the_proxy_in_front_of_the_legacy_url() -> None:
    docs = manifests(STANDALONE)
    pod = one(docs, "Deployment")["spec"]["template"]["spec"]
    assert [c["name"] for c in pod["containers"]] == ["shadow-proxy"]
    assert proxy_config(docs)["backends"]["legacy"]["url"] == STANDALONE["legacy"]["url"]


def test_embedded_renders_config_and_token_but_no_workload() -> None:
    kinds = sorted(d["kind"] for d in manifests({"mode": "embedded"}))
    assert kinds == ["ConfigMap", "Secret"]


def test_probes_drain_and_a_writable_state_volume() -> None:
    docs = manifests(SIDECAR)
    proxy = container(docs, "shadow-proxy")
    assert proxy["readinessProbe"]["httpGet"] == {"path": "/readyz", "port": "admin"}
    assert proxy["livenessProbe"]["httpGet"] == {"path": "/healthz", "port": "admin"}
    mounts = {m["mountPath"]: m for m in proxy["volumeMounts"]}
    assert not mounts["/var/lib/shadow-proxy"].get("readOnly", False)
    assert proxy_config(docs)["state_file"] == "/var/lib/shadow-proxy/state.json"

    # The drain fits in the grace period: preStop, then the proxy's shutdown phases.
    shutdown = {k: parse_duration(v) for k, v in proxy_config(docs)["shutdown"].items()}
    pre_stop = proxy["lifecycle"]["preStop"]["sleep"]["seconds"]
    grace = one(docs, "Deployment")["spec"]["template"]["spec"]["terminationGracePeriodSeconds"]
    assert pre_stop + sum(shutdown.values()) < grace
    # Legacy, in the same pod, keeps answering while the proxy drains requests to it.
    legacy_pre_stop = container(docs, "legacy")["lifecycle"]["preStop"]["sleep"]["seconds"]
    assert legacy_pre_stop >= pre_stop + shutdown["drain_delay"] + shutdown["timeout"]
    assert legacy_pre_stop < grace


def test_pods_are_hardened() -> None:
    docs = manifests(SIDECAR)
    pod = one(docs, "Deployment")["spec"]["template"]["spec"]
    assert pod["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}
    # The proxy's user is its own; legacy, in sidecar mode, keeps its image's user.
    assert "runAsUser" not in pod["securityContext"]
    assert container(docs, "shadow-proxy")["securityContext"]["runAsNonRoot"] is True
    assert pod["automountServiceAccountToken"] is False
    for c in pod["containers"]:
        assert c["securityContext"]["allowPrivilegeEscalation"] is False, c["name"]
        assert c["securityContext"]["capabilities"]["drop"] == ["ALL"], c["name"]
    assert container(docs, "shadow-proxy")["securityContext"]["readOnlyRootFilesystem"] is True


def test_admin_token_comes_from_the_charts_secret_or_an_existing_one() -> None:
    docs = manifests(merged(SIDECAR, adminToken={"value": "s3cret-token"}))
    secret = one(docs, "Secret")
    assert secret["data"]["token"] == "czNjcmV0LXRva2Vu"  # base64 of the value
    assert proxy_config(docs)["admin"]["token_file"] == "/var/run/secrets/shadow-proxy/token"
    volumes = {v["name"]: v for v in one(docs, "Deployment")["spec"]["template"]["spec"]["volumes"]}
    assert volumes["shadow-proxy-token"]["secret"]["secretName"] == secret["metadata"]["name"]

    generated = one(manifests(SIDECAR), "Secret")["data"]["token"]
    assert len(generated) >= 40  # a random token when none is given

    docs = manifests(MATRIX["existing-secret"])
    assert not [d for d in docs if d["kind"] == "Secret"]
    volumes = {v["name"]: v for v in one(docs, "Deployment")["spec"]["template"]["spec"]["volumes"]}
    assert volumes["shadow-proxy-token"]["secret"] == {
        "secretName": "ops-token",
        "items": [{"key": "t", "path": "token"}],
    }

    docs = manifests(MATRIX["no-token-autoscaling"])
    assert "token_file" not in proxy_config(docs)["admin"]
    assert not [d for d in docs if d["kind"] == "Secret"]


def test_autoscaling_owns_the_replica_count_and_scales_on_the_proxys_cpu() -> None:
    docs = manifests(MATRIX["no-token-autoscaling"])
    assert "replicas" not in one(docs, "Deployment")["spec"]
    hpa = one(docs, "HorizontalPodAutoscaler")["spec"]
    assert hpa["maxReplicas"] == 10
    # Not the pod's CPU: a legacy container without a CPU request would leave it undefined.
    assert [m["containerResource"]["container"] for m in hpa["metrics"]] == ["shadow-proxy"]
    assert one(manifests(SIDECAR), "Deployment")["spec"]["replicas"] == 2


def _restart_checksum(values: dict[str, Any]) -> str:
    pod = one(manifests(values), "Deployment")["spec"]["template"]
    checksum: str = pod["metadata"]["annotations"]["checksum/restart"]
    return checksum


def test_a_new_split_reloads_in_place_without_rolling_pods() -> None:
    before = _restart_checksum(SIDECAR)
    routes = yaml.safe_load((CHART / "values.yaml").read_text())["config"]["routes"]
    routes[0]["shadow"]["percent"] = 50
    routes.append({"name": "new", "match": {"prefix": "/new"}})
    split = merged(SIDECAR, config={"routes": routes})
    assert _restart_checksum(split) == before
    assert proxy_config(manifests(split))["routes"][0]["shadow"]["percent"] == 50


# A user's change to each setting the proxy does not hot-reload.
RESTART_CHANGES: dict[str, Any] = {
    "listen": {"send_timeout": "7s"},
    "admin": {"token": "inline-token"},
    "backends": {"legacy": {"timeout": "9s"}},
    "shutdown": {"timeout": "9s"},
    "logging": {"level": "debug"},
    "redaction": {"fields": ["date_of_birth"]},
    "state_file": "/elsewhere/state.json",
    "metrics": {"agreement_window": 50},
    "reload_interval": "9s",
}


# The settings the chart writes from values of its own (`fleet`, `recording`,
# `tracing`), restart-only too: each maps to the values before and after a user's change.
CHART_RESTART_CHANGES: dict[str, tuple[dict[str, Any], dict[str, Any]]] = {
    "coordination": (SIDECAR, merged(SIDECAR, fleet=FLEET_REDIS)),
    "redis": (
        merged(SIDECAR, fleet=FLEET_REDIS),
        merged(SIDECAR, fleet=merged(FLEET_REDIS, redis={"leaseTtl": "20s"})),
    ),
    "analysis": (SIDECAR, merged(SIDECAR, fleet=FLEET_PROMETHEUS)),
    "prometheus": (
        merged(SIDECAR, fleet=FLEET_PROMETHEUS),
        merged(SIDECAR, fleet=merged(FLEET_PROMETHEUS, prometheus={"minWindow": "1m"})),
    ),
    "recording": (
        merged(SIDECAR, recording={"enabled": True}),
        merged(SIDECAR, recording={"enabled": True, "matchPercent": 5}),
    ),
    "tracing": (SIDECAR, merged(SIDECAR, tracing={"otlpEndpoint": "http://otel:4318"})),
}


def test_every_restart_only_setting_has_a_change_to_try() -> None:
    assert set(RESTART_CHANGES) == set(RESTART_ONLY) - set(CHART_RESTART_CHANGES)


def test_set_changes_one_routes_split_by_name() -> None:
    """What `helm upgrade --set routeOverrides.all.shadow.percent=50` does."""
    values = merged(SIDECAR, **helm.parse_set_string("routeOverrides.all.shadow.percent=50"))
    [route] = proxy_config(manifests(values))["routes"]
    assert route["shadow"] == {"enabled": True, "percent": 50}
    assert route["name"] == "all" and route["compare"] == ["status", "json"]
    assert _restart_checksum(values) == _restart_checksum(SIDECAR)


@pytest.mark.parametrize("key", RESTART_CHANGES)
def test_what_hot_reload_cannot_apply_rolls_the_pods(key: str) -> None:
    """Every setting the proxy ignores on reload either changes the pods'
    checksum or is owned by the chart, so a user's change is never half-applied."""
    changed = merged(SIDECAR, config={key: RESTART_CHANGES[key]})
    if proxy_config(manifests(changed)).get(key) == proxy_config(manifests(SIDECAR)).get(key):
        assert key == "state_file"  # owned by the chart: the user's value never reaches the proxy
        return
    assert _restart_checksum(changed) != _restart_checksum(SIDECAR)


@pytest.mark.parametrize("key", CHART_RESTART_CHANGES)
def test_a_change_to_the_charts_own_settings_rolls_the_pods(key: str) -> None:
    """coordination, redis, analysis, prometheus, recording and tracing are read once, at start."""
    before, after = CHART_RESTART_CHANGES[key]
    assert proxy_config(manifests(after))[key] != proxy_config(manifests(before)).get(key)
    assert _restart_checksum(after) != _restart_checksum(before)


def test_a_new_admin_token_rolls_the_pods() -> None:
    """The proxy reads its token file once, at start."""
    token = merged(SIDECAR, adminToken={"value": "another-token"})
    assert _restart_checksum(token) != _restart_checksum(SIDECAR)


BAD_VALUES = [
    ({"mode": "canary"}, "/mode"),
    ({**SIDECAR, "replicas": 3}, "additional properties 'replicas' not allowed"),
    ({"legacy": {"image": {"repository": ""}}}, "/legacy/image/repository"),
    ({"legacy": {"image": {"repository": "orders"}}}, "/legacy/image/tag"),
    ({"mode": "standalone"}, "/legacy/url"),
    ({**STANDALONE, "legacy": {"url": "orders:8000"}}, "/legacy/url"),
    ({**SIDECAR, "agent": {"url": "agent"}}, "/agent/url"),
    ({**SIDECAR, "proxy": {"port": 70000, "adminPort": 9090}}, "/proxy/port"),
    ({**SIDECAR, "image": {"repository": "x", "tag": ""}}, "/image/tag"),
    ({**SIDECAR, "state": {"sizeLimit": "lots"}}, "/state/sizeLimit"),
    ({**SIDECAR, "podDisruptionBudget": {"maxUnavailable": "half"}}, "/podDisruptionBudget"),
    ({**SIDECAR, "config": {"routes": [{"match": {"prefix": "/"}}]}}, "/config/routes/0"),
    ({**SIDECAR, "monitoring": {"prometheusRules": {"enabled": True}}}, "'prometheusRules'"),
    ({**SIDECAR, "monitoring": {"prometheusRule": {"agreementTarget": 95}}}, "agreementTarget"),
    ({**SIDECAR, "monitoring": {"prometheusRule": {"for": "ten minutes"}}}, "/for"),
    ({**SIDECAR, "fleet": {"coordination": "etcd"}}, "/fleet/coordination"),
    ({**SIDECAR, "fleet": {"analysis": "datadog"}}, "/fleet/analysis"),
    ({**SIDECAR, "fleet": {"coordination": "redis"}}, "/fleet/redis/url"),
    ({**SIDECAR, "fleet": {"analysis": "prometheus"}}, "/fleet/prometheus/url"),
    (
        {**SIDECAR, "fleet": {"coordination": "redis", "redis": {"url": "redis://:pw@r:6379/0"}}},
        "/fleet/redis/url",
    ),
    ({**SIDECAR, "fleet": {"redis": {"url": "http://redis:6379"}}}, "/fleet/redis/url"),
    ({**SIDECAR, "fleet": {"redis": {"leaseTtl": "ten seconds"}}}, "/fleet/redis/leaseTtl"),
    ({**SIDECAR, "fleet": {"redis": {"keyPrefix": "a b"}}}, "/fleet/redis/keyPrefix"),
    ({**SIDECAR, "fleet": {"redis": {"password": "pw"}}}, "'password' not allowed"),
    ({**SIDECAR, "fleet": {"prometheus": {"maxConsecutiveErrors": 0}}}, "maxConsecutiveErrors"),
    ({**SIDECAR, "fleet": {"prometheus": {"queries": {"sample": "up"}}}}, "'sample' not allowed"),
    ({**SIDECAR, "fleet": {"allowLocalAutoRollout": "yes"}}, "/fleet/allowLocalAutoRollout"),
]


@pytest.mark.parametrize(("values", "where"), BAD_VALUES)
def test_bad_values_are_rejected_naming_the_field(values: dict[str, Any], where: str) -> None:
    with helm.Chart.load(CHART) as chart, pytest.raises(helm.HelmValuesError) as raised:
        chart.validate_schema(values)
    assert where in str(raised.value)


@pytest.mark.parametrize(
    ("values", "message"),
    [
        (merged(SIDECAR, legacy={"port": 8080}), "legacy.port must differ"),
        (merged(SIDECAR, proxy={"adminPort": 8080}), "proxy.port and proxy.adminPort must differ"),
        (merged(SIDECAR, adminToken={"value": "a", "existingSecret": "b"}), "not both"),
        (merged(SIDECAR, state={"existingClaim": "pvc"}), "replicaCount 1 and no autoscaling"),
        (
            merged(SIDECAR, routeOverrides={"al": {"shadow": {"percent": 5}}}),
            "routeOverrides names routes that config.routes does not have: al",
        ),
    ],
)
def test_contradictory_values_fail_to_render_with_a_reason(
    values: dict[str, Any], message: str
) -> None:
    with helm.Chart.load(CHART) as chart, pytest.raises(helm.HelmError) as raised:
        chart.render(values=values, name=RELEASE, namespace=NAMESPACE)
    assert message in str(raised.value)


def test_the_values_schema_is_a_valid_json_schema() -> None:
    result = subprocess.run(
        [BIN / "check-jsonschema", "--check-metaschema", str(CHART / "values.schema.json")],
        capture_output=True, text=True, check=False, timeout=60,
    )  # fmt: skip
    assert result.returncode == 0, result.stdout + result.stderr


def test_chart_image_and_package_versions_agree() -> None:
    pyproject = (CHART.parents[1] / "pyproject.toml").read_text()
    version = next(ln.split('"')[1] for ln in pyproject.splitlines() if ln.startswith("version"))
    meta = yaml.safe_load((CHART / "Chart.yaml").read_text())
    values = yaml.safe_load((CHART / "values.yaml").read_text())
    assert meta["appVersion"] == values["image"]["tag"] == version


def test_a_parent_chart_can_embed_the_sidecar_with_the_named_templates(tmp_path: Path) -> None:
    """What the README tells users to write in their own chart renders to a valid
    pod whose volumes point at the ConfigMap and Secret this chart renders."""
    parent = tmp_path / "orders"
    (parent / "templates").mkdir(parents=True)
    shutil.copytree(CHART, parent / "charts" / "shadow-proxy")
    (parent / "Chart.yaml").write_text(
        "apiVersion: v2\nname: orders\nversion: 1.0.0\n"
        "dependencies:\n  - name: shadow-proxy\n    version: 0.1.0\n"
    )
    (parent / "values.yaml").write_text(
        yaml.safe_dump({"shadow-proxy": {"mode": "embedded", "legacy": {"port": 8000}}})
    )
    readme = (CHART.parents[1] / "README.md").read_text()
    snippet = readme.split("<!-- embedded-example -->")[1].split("```yaml\n")[1].split("```")[0]
    (parent / "templates" / "deployment.yaml").write_text(snippet)
    with helm.Chart.load(parent) as chart:
        rendered = chart.render(values={}, name=RELEASE, namespace=NAMESPACE, is_install=True)
    docs = [
        d for path, text in rendered.items() if not path.endswith(".txt")
        for d in yaml.safe_load_all(text) if d
    ]  # fmt: skip
    pod = one(docs, "Deployment")["spec"]["template"]["spec"]
    assert [c["name"] for c in pod["containers"]] == ["orders", "shadow-proxy"]
    proxy_port = next(p for p in pod["containers"][1]["ports"] if p["name"] == "http")
    [service_port] = one(docs, "Service")["spec"]["ports"]
    assert service_port["targetPort"] == proxy_port["containerPort"]
    volumes = {v["name"]: v for v in pod["volumes"]}
    assert (
        volumes["shadow-proxy-config"]["configMap"]["name"]
        == one(docs, "ConfigMap")["metadata"]["name"]
    )
    assert (
        volumes["shadow-proxy-token"]["secret"]["secretName"]
        == one(docs, "Secret")["metadata"]["name"]
    )
    annotations = one(docs, "Deployment")["spec"]["template"]["metadata"]["annotations"]
    assert len(annotations["checksum/shadow-proxy"]) == 64
    kubernetes_validate([one(docs, "Deployment")], tmp_path)
    assert proxy_config(docs)["backends"]["legacy"]["url"] == "http://127.0.0.1:8000"
