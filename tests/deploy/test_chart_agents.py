"""The chart's side of agent observability, rendered offline: golden-suite
recording on a volume of its own (the root filesystem is read-only), span export
with its headers from a Secret, the refusals that keep a pod from being evicted
or a Secret from reaching the ConfigMap, and the proxy's own settings model
loading what the chart renders with the environment the pod gets."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import helm_python as helm
import pytest
from chart import (
    CHART,
    SIDECAR,
    STANDALONE,
    kubernetes_validate,
    manifests,
    merged,
    one,
    proxy_config,
    proxy_env,
    refusal,
)

from proxy.recorder import RecordingSettings
from proxy.settings import settings_from
from proxy.tracing import TracingSettings
from proxy.units import parse_size

RECORDINGS = "/var/lib/shadow-proxy/recordings"
OTLP = "http://otel-collector.observability:4318"
RECORDING_ON: dict[str, Any] = {"enabled": True}
CLAIM: dict[str, Any] = {"enabled": True, "existingClaim": "orders-cases"}
TRACING_ON: dict[str, Any] = {
    "otlpEndpoint": OTLP,
    "existingSecret": "otlp-auth",
    "headers": {"authorization": "bearer", "x-api-key": "key"},
}
# What the Secret holds, as the kubelet would put it in the pod's environment.
SECRET = {"bearer": "Bearer s3cret", "key": "k-123"}


def pod(docs: list[dict[str, Any]]) -> dict[str, Any]:
    spec: dict[str, Any] = one(docs, "Deployment")["spec"]["template"]["spec"]
    return spec


def proxy_container(docs: list[dict[str, Any]]) -> dict[str, Any]:
    return next(c for c in pod(docs)["containers"] if c["name"] == "shadow-proxy")


def recordings_volume(docs: list[dict[str, Any]]) -> dict[str, Any] | None:
    volumes = {v["name"]: v for v in pod(docs)["volumes"]}
    mounts = {m["name"]: m for m in proxy_container(docs)["volumeMounts"]}
    volume, mount = volumes.get("shadow-proxy-recordings"), mounts.get("shadow-proxy-recordings")
    assert (volume is None) == (mount is None), "a volume without its mount, or the reverse"
    if mount is not None:
        assert mount["mountPath"] == RECORDINGS and not mount.get("readOnly")
    return volume


def pod_environment(docs: list[dict[str, Any]], secret: dict[str, str]) -> dict[str, str]:
    """The proxy's environment as the kubelet resolves it, with ``secret`` as the Secret."""
    env: dict[str, str] = {}
    for name, value in proxy_env(docs).items():
        if isinstance(value, str):
            env[name] = value
        else:
            env[name] = secret[value["secretKeyRef"]["key"]]
    return env


# -- recording ---------------------------------------------------------------------------


@pytest.mark.parametrize("base", [SIDECAR, STANDALONE], ids=["sidecar", "standalone"])
def test_recording_is_off_by_default_and_adds_nothing(base: dict[str, Any]) -> None:
    docs = manifests(base)
    assert "recording" not in proxy_config(docs)
    assert recordings_volume(docs) is None
    assert settings_from(proxy_config(docs)).recording.enabled is False


def test_recording_to_an_empty_dir_writes_where_the_volume_is_mounted(tmp_path: Path) -> None:
    docs = manifests(merged(STANDALONE, recording=RECORDING_ON))
    assert recordings_volume(docs) == {
        "name": "shadow-proxy-recordings",
        "emptyDir": {"sizeLimit": "1Gi"},
    }
    settings = settings_from(proxy_config(docs)).recording
    assert settings.enabled is True
    assert settings.directory == Path(RECORDINGS)
    # The emptyDir per pod leaves the rolling update as it was.
    assert one(docs, "Deployment")["spec"]["strategy"]["type"] == "RollingUpdate"
    kubernetes_validate(docs, tmp_path)


def test_recording_to_a_claim_mounts_it_and_hands_it_from_pod_to_pod(tmp_path: Path) -> None:
    docs = manifests(merged(SIDECAR, replicaCount=1, recording=CLAIM))
    assert recordings_volume(docs) == {
        "name": "shadow-proxy-recordings",
        "persistentVolumeClaim": {"claimName": "orders-cases"},
    }
    assert one(docs, "Deployment")["spec"]["strategy"] == {"type": "Recreate"}
    assert pod(docs)["securityContext"]["fsGroup"] == 10001  # the proxy's group may write it
    assert settings_from(proxy_config(docs)).recording.directory == Path(RECORDINGS)
    kubernetes_validate(docs, tmp_path)


def test_recording_values_reach_the_proxys_settings() -> None:
    values = {
        "enabled": True,
        "sizeLimit": "4Gi",
        "matchPercent": 2.5,
        "recordErrors": True,
        "maxFileSize": "32MiB",
        "maxTotalSize": "3GiB",
        "maxBodySize": 65536,
        "queueSize": 50,
    }
    settings = settings_from(proxy_config(manifests(merged(SIDECAR, recording=values))))
    assert settings.recording.model_dump(exclude={"directory"}) == {
        "enabled": True,
        "match_percent": 2.5,
        "record_errors": True,
        "max_file_size": 32 * 1024**2,
        "max_total_size": 3 * 1024**3,
        "max_body_size": 65536,
        "queue_size": 50,
    }


def test_the_charts_recording_defaults_are_the_proxys_but_the_total_fits_the_volume() -> None:
    """values.yaml spells the proxy's defaults out, except the total: the proxy's
    1 GiB would not fit the chart's 1Gi emptyDir with room for the blocks."""
    chart = settings_from(proxy_config(manifests(merged(SIDECAR, recording=RECORDING_ON))))
    owned = {"enabled", "directory", "max_total_size"}
    assert chart.recording.model_dump(exclude=owned) == RecordingSettings().model_dump(
        exclude=owned
    )
    assert chart.recording.max_total_size <= 0.9 * 1024**3 < RecordingSettings().max_total_size


@pytest.mark.parametrize(
    ("size_limit", "max_total", "renders"),
    [
        ("1Gi", "900MiB", True),
        ("1Gi", "921MiB", True),  # 90% of 1Gi is 921.6MiB
        ("1Gi", "922MiB", False),
        ("1Gi", "1GiB", False),  # the whole volume: evicted once the blocks add up
        ("1Gi", "2GiB", False),
        ("2Gi", "1900MB", True),  # decimal units: 1.9e9 bytes of 2147483648
        ("2Gi", "2000MB", False),
        ("100Mi", 94371840, True),  # bytes: 90Mi exactly
        ("100Mi", 94371841, False),
        ("1024Ki", "900KiB", False),  # under the 10MiB maxFileSize default: refused for that
    ],
)
def test_the_total_must_leave_room_in_the_empty_dir(
    size_limit: str, max_total: str | int, renders: bool
) -> None:
    recording = {"enabled": True, "sizeLimit": size_limit, "maxTotalSize": max_total}
    values = merged(SIDECAR, recording=recording)
    if renders:
        total = proxy_config(manifests(values))["recording"]["max_total_size"]
        assert parse_size(total) == parse_size(max_total)
        return
    message = refusal(values)
    if parse_size(max_total) < parse_size("10MiB"):
        assert "recording.maxTotalSize (900KiB) must be at least recording.maxFileSize" in message
    else:
        assert f"recording.maxTotalSize ({max_total}) must be at most 90% of " in message
        assert f"recording.sizeLimit ({size_limit})" in message
        assert "the kubelet evicts a pod whose emptyDir passes its sizeLimit" in message
        assert "use recording.existingClaim" in message


def test_a_claim_is_not_held_to_the_empty_dirs_size_limit() -> None:
    """The chart cannot see a claim's size: values.yaml tells the user to size it."""
    claim = merged(CLAIM, maxTotalSize="50GiB")
    cfg = proxy_config(manifests(merged(SIDECAR, replicaCount=1, recording=claim)))
    assert cfg["recording"]["max_total_size"] == "50GiB"


def test_a_total_under_one_file_is_refused_before_the_proxy_would() -> None:
    message = refusal(merged(SIDECAR, recording={**RECORDING_ON, "maxTotalSize": "5MiB"}))
    assert "recording.maxTotalSize (5MiB) must be at least recording.maxFileSize (10MiB)" in message


@pytest.mark.parametrize(
    "extra",
    [{"replicaCount": 2}, {"replicaCount": 1, "autoscaling": {"enabled": True}}],
    ids=["replicas", "autoscaling"],
)
def test_a_claim_written_by_many_pods_is_refused(extra: dict[str, Any]) -> None:
    message = refusal(merged(STANDALONE, recording=CLAIM, **extra))
    assert "recording.existingClaim is written by one pod" in message
    assert "replicaCount 1 and no autoscaling" in message


@pytest.mark.parametrize("key", ["recording", "tracing"])
def test_recording_and_tracing_under_config_are_refused_naming_the_place(key: str) -> None:
    message = refusal(merged(SIDECAR, config={key: {"enabled": True}}))
    assert f"config.{key} is set by the chart from {key}: set {key}.* instead" in message


def test_recording_works_in_embedded_mode_through_the_named_templates() -> None:
    """A parent chart's pod gets the volume from shadow-proxy.volumes and the
    mount from shadow-proxy.container; the size check holds there too."""
    cfg = proxy_config(manifests({"mode": "embedded", "recording": RECORDING_ON}))
    assert cfg["recording"]["directory"] == RECORDINGS
    too_big = {"mode": "embedded", "recording": {**RECORDING_ON, "maxTotalSize": "1GiB"}}
    assert "must be at most 90% of recording.sizeLimit" in refusal(too_big)


# -- tracing -------------------------------------------------------------------------------


def test_tracing_is_off_by_default_and_adds_nothing() -> None:
    docs = manifests(SIDECAR)
    assert "tracing" not in proxy_config(docs)
    assert proxy_env(docs) == {}
    assert settings_from(proxy_config(docs)).tracing.enabled is False


def test_tracing_headers_come_from_the_secret_through_the_environment(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    docs = manifests(merged(STANDALONE, tracing={**TRACING_ON, "sampleRatio": 0.25}))
    cfg = proxy_config(docs)
    assert cfg["tracing"]["otlp_endpoint"] == OTLP
    assert "headers" not in cfg["tracing"]  # the ConfigMap never holds them
    assert proxy_env(docs) == {
        "SHADOW_PROXY_TRACING__HEADERS__AUTHORIZATION": {
            "secretKeyRef": {"name": "otlp-auth", "key": "bearer"}
        },
        "SHADOW_PROXY_TRACING__HEADERS__X-API-KEY": {
            "secretKeyRef": {"name": "otlp-auth", "key": "key"}
        },
    }
    kubernetes_validate(docs, tmp_path)
    # What the proxy makes of it, with the environment the pod gets.
    for name, value in pod_environment(docs, SECRET).items():
        monkeypatch.setenv(name, value)
    tracing = settings_from(cfg).tracing
    assert tracing.traces_url() == OTLP + "/v1/traces"
    assert tracing.sample_ratio == 0.25
    headers = {name: secret.get_secret_value() for name, secret in tracing.headers.items()}
    assert headers == {"authorization": "Bearer s3cret", "x-api-key": "k-123"}


def test_the_charts_tracing_defaults_are_the_proxys() -> None:
    cfg = proxy_config(manifests(merged(SIDECAR, tracing={"otlpEndpoint": OTLP})))
    owned = {"otlp_endpoint", "headers"}
    assert settings_from(cfg).tracing.model_dump(exclude=owned) == TracingSettings().model_dump(
        exclude=owned
    )


def test_a_users_env_wins_over_a_tracing_header() -> None:
    own = {"name": "SHADOW_PROXY_TRACING__HEADERS__AUTHORIZATION", "value": "Bearer mine"}
    env = proxy_env(manifests(merged(SIDECAR, tracing=TRACING_ON, proxy={"env": [own]})))
    assert env["SHADOW_PROXY_TRACING__HEADERS__AUTHORIZATION"] == "Bearer mine"
    assert "SHADOW_PROXY_TRACING__HEADERS__X-API-KEY" in env


def test_without_an_endpoint_the_headers_secret_is_not_wired() -> None:
    """Export off: no span leaves the pod, so no Secret needs to exist either."""
    tracing = {key: value for key, value in TRACING_ON.items() if key != "otlpEndpoint"}
    docs = manifests(merged(SIDECAR, tracing=tracing))
    assert proxy_env(docs) == {} and "tracing" not in proxy_config(docs)


def test_headers_without_a_secret_are_refused_naming_the_missing_value() -> None:
    tracing = {"otlpEndpoint": OTLP, "headers": {"authorization": "bearer"}}
    message = refusal(merged(SIDECAR, tracing=tracing))
    assert "tracing.headers (authorization) name keys of a Secret" in message
    assert "set tracing.existingSecret" in message


@pytest.mark.parametrize(
    ("values", "where"),
    [
        ({"tracing": {"otlpEndpoint": "otel:4318"}}, "/tracing/otlpEndpoint"),
        ({"tracing": {"sampleRatio": 1.5}}, "/tracing/sampleRatio"),
        ({"tracing": {"timeout": "ten seconds"}}, "/tracing/timeout"),
        ({"tracing": {"headers": {"bad header": "k"}}}, "/tracing/headers"),
        ({"tracing": {"headers": {"authorization": "a/b"}}}, "/tracing/headers/authorization"),
        ({"tracing": {"token": "x"}}, "'token' not allowed"),
        ({"recording": {"sizeLimit": "lots"}}, "/recording/sizeLimit"),
        ({"recording": {"sizeLimit": "1GiB"}}, "/recording/sizeLimit"),  # not a quantity
        ({"recording": {"maxTotalSize": "1Gi"}}, "/recording/maxTotalSize"),  # not the proxy's
        ({"recording": {"matchPercent": 150}}, "/recording/matchPercent"),
        ({"recording": {"enabled": "yes"}}, "/recording/enabled"),
        ({"recording": {"directory": "/data"}}, "'directory' not allowed"),
    ],
)
def test_bad_recording_and_tracing_values_are_rejected_naming_the_field(
    values: dict[str, Any], where: str
) -> None:
    with helm.Chart.load(CHART) as chart, pytest.raises(helm.HelmValuesError) as raised:
        chart.validate_schema(merged(SIDECAR, **values))
    assert where in str(raised.value)
