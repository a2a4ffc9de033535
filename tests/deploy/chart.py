"""Render and lint the Helm chart offline through the Helm SDK (helm-python-sdk)."""

from __future__ import annotations

import copy
import subprocess
import sys
from pathlib import Path
from typing import Any

import helm_python as helm
import pytest
import yaml
from kubernetes_validate.utils import latest_version

CHART = Path(__file__).resolve().parents[2] / "helm" / "shadow-proxy"
KUBERNETES = latest_version()
RELEASE = "orders"
NAMESPACE = "shop"

# The smallest values that render in each mode.
SIDECAR: dict[str, Any] = {
    "legacy": {"image": {"repository": "registry.example/orders", "tag": "1.4.2"}}
}
STANDALONE: dict[str, Any] = {
    "mode": "standalone",
    "legacy": {"url": "http://orders-legacy.shop.svc.cluster.local:8000"},
}

# Fleet values: the rollout state in Redis (password from a Secret), the gates'
# evidence from Prometheus.
REDIS_URL = "redis://redis-master.shop.svc.cluster.local:6379/0"
PROMETHEUS_URL = "http://prometheus-operated.monitoring.svc:9090"
FLEET_REDIS: dict[str, Any] = {
    "coordination": "redis",
    "redis": {"url": REDIS_URL, "existingSecret": "orders-redis"},
}
FLEET_PROMETHEUS: dict[str, Any] = {"analysis": "prometheus", "prometheus": {"url": PROMETHEUS_URL}}


def rollout_config(**rollout: Any) -> dict[str, Any]:
    """The chart's default routes, each with a rollout section (``{}``: auto mode)."""
    routes = yaml.safe_load((CHART / "values.yaml").read_text())["config"]["routes"]
    return {"routes": [{**route, "rollout": rollout} for route in routes]}


def merged(base: dict[str, Any], **extra: Any) -> dict[str, Any]:
    """A deep copy of ``base`` with ``extra`` laid over it, key by key."""
    out = copy.deepcopy(base)
    for key, value in extra.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = merged(out[key], **value)
        else:
            out[key] = copy.deepcopy(value)
    return out


def render(values: dict[str, Any] | None = None) -> dict[str, str]:
    """Template path -> rendered text, exactly as `helm template` would produce."""
    with helm.Chart.load(CHART) as chart:
        chart.validate_schema(values or {})
        return chart.render(values=values or {}, name=RELEASE, namespace=NAMESPACE, is_install=True)


def manifests(values: dict[str, Any] | None = None) -> list[dict[str, Any]]:
    """Every Kubernetes object the chart renders (NOTES.txt excluded)."""
    docs: list[dict[str, Any]] = []
    for path, text in render(values).items():
        if path.endswith(".txt"):
            continue
        docs.extend(d for d in yaml.safe_load_all(text) if d)
    return docs


def one(docs: list[dict[str, Any]], kind: str) -> dict[str, Any]:
    found = [d for d in docs if d["kind"] == kind]
    assert len(found) == 1, f"expected one {kind}, got {len(found)}"
    return found[0]


def proxy_config(docs: list[dict[str, Any]]) -> dict[str, Any]:
    """The proxy's config file as the ConfigMap carries it."""
    cm = next(d for d in docs if d["kind"] == "ConfigMap" and "proxy.yaml" in d["data"])
    cfg: dict[str, Any] = yaml.safe_load(cm["data"]["proxy.yaml"])
    return cfg


def refusal(values: dict[str, Any]) -> str:
    """The reason the chart gives for not rendering ``values`` (which pass the schema)."""
    with helm.Chart.load(CHART) as chart:
        chart.validate_schema(values)
        with pytest.raises(helm.HelmError) as raised:
            chart.render(values=values, name=RELEASE, namespace=NAMESPACE, is_install=True)
    return str(raised.value)


def proxy_env(docs: list[dict[str, Any]]) -> dict[str, Any]:
    """The proxy container's environment: name -> value or valueFrom."""
    pod = one(docs, "Deployment")["spec"]["template"]["spec"]
    proxy = next(c for c in pod["containers"] if c["name"] == "shadow-proxy")
    env = proxy.get("env", [])
    names = [e["name"] for e in env]
    assert len(names) == len(set(names)), names  # server-side apply rejects a name twice
    return {e["name"]: e.get("value", e.get("valueFrom")) for e in env}


def lint(values: dict[str, Any] | None = None) -> dict[str, Any]:
    report: dict[str, Any] = helm.lint(CHART, values or {}, strict=True)
    return report


def kubernetes_validate(docs: list[dict[str, Any]], tmp_path: Path) -> None:
    """`kubernetes-validate --strict` passes every object, and checks each core
    kind against its schema rather than skipping it for want of one."""
    paths = []
    for i, doc in enumerate(docs):
        path = tmp_path / f"{i:02d}-{doc['kind']}.yaml"
        path.write_text(yaml.safe_dump(doc))
        paths.append(str(path))
    result = subprocess.run(
        [Path(sys.executable).parent / "kubernetes-validate", "--strict", "-k", KUBERNETES, *paths],
        capture_output=True, text=True, check=False, timeout=60,
    )  # fmt: skip
    assert result.returncode == 0, result.stdout + result.stderr
    core = [p for p in paths if "monitoring.coreos.com" not in Path(p).read_text()]
    for path in core:
        assert f"WARN {path}" not in result.stdout, result.stdout
