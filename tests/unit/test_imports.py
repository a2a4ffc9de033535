"""What a running proxy loads: heavy modules only when their feature is on.

Checked in a child interpreter, whose modules are only the proxy's own."""

import json
import subprocess
import sys
from typing import Any

OPTIONAL = ("redis", "torch", "sentence_transformers", "rapidfuzz")
PROBE = """
import json, sys
import proxy.cli, proxy.server
from proxy.app import Core, build_metrics
from proxy.settings import settings_from
settings = settings_from(json.loads(sys.argv[1]))
Core(settings, build_metrics(settings))
{then}
print(" ".join(m for m in json.loads(sys.argv[2]) if m in sys.modules))
"""
BASE: dict[str, Any] = {
    "backends": {"legacy": {"url": "http://127.0.0.1:9"}, "agent": {"url": "http://127.0.0.1:9"}},
    "routes": [{"name": "api", "match": {"prefix": "/"}, "shadow": {"enabled": True}}],
}


def loaded_with(config: dict[str, Any], then: str = "") -> set[str]:
    """The optional modules loaded once a proxy core is built (and ``then`` ran)."""
    argv = [sys.executable, "-c", PROBE.format(then=then), json.dumps(config), json.dumps(OPTIONAL)]
    out = subprocess.run(argv, capture_output=True, text=True, check=True).stdout
    return set(out.split())


def test_a_local_proxy_loads_no_optional_heavy_module() -> None:
    assert loaded_with(BASE) == set()


def test_a_fleet_member_loads_the_redis_client() -> None:
    fleet = {**BASE, "coordination": "redis", "redis": {"url": "redis://127.0.0.1:9/0"}}
    assert loaded_with(fleet) == {"redis"}


def test_rapidfuzz_is_loaded_by_the_first_text_comparison() -> None:
    compare = "from comparators.text import similarity; similarity('a', 'b')"
    assert loaded_with(BASE, then=compare) == {"rapidfuzz"}
