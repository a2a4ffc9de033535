"""What a running proxy loads: heavy clients only when their feature is on.

Checked in a child interpreter, whose modules are only the proxy's own."""

import json
import subprocess
import sys
from typing import Any

PROBE = """
import json, sys
import proxy.cli, proxy.server
from proxy.app import Core, build_metrics
from proxy.settings import settings_from
settings = settings_from(json.loads(sys.argv[1]))
Core(settings, build_metrics(settings))
print(" ".join(m for m in ("redis", "torch", "sentence_transformers") if m in sys.modules))
"""
BASE: dict[str, Any] = {
    "backends": {"legacy": {"url": "http://127.0.0.1:9"}, "agent": {"url": "http://127.0.0.1:9"}},
    "routes": [{"name": "api", "match": {"prefix": "/"}, "shadow": {"enabled": True}}],
}


def loaded_with(config: dict[str, Any]) -> set[str]:
    out = subprocess.run(
        [sys.executable, "-c", PROBE, json.dumps(config)],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    return set(out.split())


def test_a_local_proxy_loads_neither_the_redis_client_nor_the_embedding_model() -> None:
    assert loaded_with(BASE) == set()


def test_a_fleet_member_loads_the_redis_client() -> None:
    fleet = {**BASE, "coordination": "redis", "redis": {"url": "redis://127.0.0.1:9/0"}}
    assert loaded_with(fleet) == {"redis"}
