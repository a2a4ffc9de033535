"""The settings a supervisor started with, as the file its workers start from:
the same settings back (secrets included), private, and the config file's
fingerprint from before it was read so a worker's watcher sees later edits."""

from __future__ import annotations

import stat
from pathlib import Path
from typing import Any

import pytest
import yaml

from proxy import snapshot
from proxy.app import build_metrics
from proxy.errors import ConfigError
from proxy.reload import ConfigWatcher, fingerprint
from proxy.settings import Settings, load_settings
from proxy.workerconfig import WorkerSpec, for_worker, loader

SPEC = WorkerSpec(1, 2, 18080, Path("/run/w1.sock"))
CONFIG: dict[str, Any] = {
    "listen": {"port": 0},
    "admin": {"token": "admin-s3cret"},
    "backends": {"legacy": {"url": "http://127.0.0.1:8001"}, "agent": {"url": "http://a:2"}},
    "routes": [
        {
            "name": "api",
            "match": {"prefix": "/"},
            "shadow": {"enabled": True, "percent": 40, "rate_limit": 10},
            "compare": ["status", {"name": "json", "ignore": ["$.id"]}],
            "rollout": {"mode": "manual", "percent": 5, "gates": {"max_latency_ratio": None}},
        }
    ],
    "state_file": "state.json",
    "coordination": "redis",
    "redis": {"url": "redis://127.0.0.1:6379/0", "password": "redis-s3cret"},
    "tracing": {"headers": {"Authorization": "Bearer t"}},
    "recording": {"enabled": True, "directory": "cases", "max_total_size": "64MiB"},
}


@pytest.fixture
def config_file(tmp_path: Path) -> Path:
    path = tmp_path / "proxy.yaml"
    path.write_text(yaml.safe_dump(CONFIG))
    return path


def test_a_worker_loads_back_the_supervisors_settings_with_their_secrets(
    config_file: Path, tmp_path: Path
) -> None:
    seen = fingerprint(config_file)
    settings = load_settings(config_file)
    path = snapshot.write(tmp_path, settings, seen)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    loaded, loaded_seen = snapshot.load(path, SPEC)
    assert loaded == for_worker(settings, SPEC)
    assert loaded.admin.write_token() == "admin-s3cret"
    assert loaded.redis.password is not None
    assert loaded.redis.password.get_secret_value() == "redis-s3cret"
    assert loaded.tracing.headers["Authorization"].get_secret_value() == "Bearer t"
    assert loaded_seen == seen


def test_an_unreadable_snapshot_is_a_config_error_naming_it(tmp_path: Path) -> None:
    path = tmp_path / "settings.json"
    path.write_text("{not json")
    with pytest.raises(ConfigError) as raised:
        snapshot.load(path, SPEC)
    assert raised.value.source == str(path)
    assert "cannot read the supervisor's settings" in raised.value.problems[0]


def test_a_watcher_from_the_snapshots_fingerprint_applies_an_edit_made_since(
    config_file: Path, tmp_path: Path
) -> None:
    seen = fingerprint(config_file)
    settings, _ = snapshot.load(snapshot.write(tmp_path, load_settings(config_file), seen), SPEC)
    snapshot_loader = loader(SPEC)
    applied: list[Settings] = []
    metrics = build_metrics(settings)

    def watcher(since: Any) -> ConfigWatcher:
        apply = lambda s: applied.append(s) or []  # noqa: E731
        return ConfigWatcher(config_file, 60, apply, metrics, snapshot_loader, seen=since)

    assert watcher(seen).check() is False  # nothing changed since the supervisor read it
    edited = {
        **CONFIG,
        "routes": [{**CONFIG["routes"][0], "shadow": {"percent": 10, "rate_limit": 10}}],
    }
    config_file.write_text(yaml.safe_dump(edited))
    assert watcher(fingerprint(config_file)).check() is False  # today's default: "now"
    assert watcher(seen).check() is True
    assert applied[0].routes[0].shadow.percent == 10
    assert applied[0].routes[0].shadow.rate_limit == 5  # this worker's share, as at start
