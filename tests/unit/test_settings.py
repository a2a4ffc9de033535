"""Config: durations and sizes read like people write them; every bad value is
reported with its field path and reason; the environment overrides the file."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from proxy.errors import ConfigError
from proxy.settings import Settings, load_settings, settings_from
from proxy.units import parse_duration, parse_size

ROOT = Path(__file__).resolve().parents[2]
MINIMAL: dict[str, Any] = {"backends": {"legacy": {"url": "http://127.0.0.1:8001"}}}


@pytest.mark.parametrize(
    ("text", "seconds"),
    [("250ms", 0.25), ("30s", 30.0), ("1.5s", 1.5), ("5m", 300.0), ("1h", 3600.0),
     (2, 2.0), (0.5, 0.5), ("7", 7.0), (" 10 s ", 10.0)],
)  # fmt: skip
def test_durations_parse_to_seconds(text: Any, seconds: float) -> None:
    assert parse_duration(text) == seconds


@pytest.mark.parametrize("bad", ["fast", "10 parsecs", "-1s", -3, True, None, "1d"])
def test_bad_durations_are_refused(bad: Any) -> None:
    with pytest.raises(ValueError):
        parse_duration(bad)


@pytest.mark.parametrize(
    ("text", "size"),
    [("64KiB", 65536), ("10MiB", 10 * 1024**2), ("1MB", 1_000_000), ("1GiB", 1024**3),
     (1024, 1024), ("512", 512), ("1.5KiB", 1536)],
)  # fmt: skip
def test_sizes_parse_to_bytes(text: Any, size: int) -> None:
    assert parse_size(text) == size


@pytest.mark.parametrize("bad", ["big", "10 MiBs", -1, 1.5, False, "1TB"])
def test_bad_sizes_are_refused(bad: Any) -> None:
    with pytest.raises(ValueError):
        parse_size(bad)


def problems(data: dict[str, Any]) -> list[str]:
    with pytest.raises(ConfigError) as caught:
        settings_from(data)
    return caught.value.problems


def route(**fields: Any) -> dict[str, Any]:
    return {**MINIMAL, "routes": [{"name": "r", "match": {"prefix": "/"}, **fields}]}


@pytest.mark.parametrize(
    ("data", "expected"),
    [
        ({}, "backends: Field required"),
        ({"backends": {"legacy": {"url": "ftp://x"}}}, "backends.legacy.url: must be an absolute"),
        ({**MINIMAL, "listen": {"port": 70000}}, "listen.port: Input should be less than"),
        ({**MINIMAL, "shadow": {"timeout": "soon"}}, "shadow.timeout: expected a duration"),
        ({**MINIMAL, "max_body_size": "huge"}, "max_body_size: expected a size"),
        ({**MINIMAL, "colour": "blue"}, "colour: Extra inputs are not permitted"),
        (route(match={"prefix": "/", "exact": "/x"}), "routes.0.match: set exactly one of"),
        (route(match={"regex": "("}), "routes.0.match: regex does not compile"),
        (
            route(match={"prefix": "/", "methods": ["GE T"]}),
            "routes.0.match.methods: 'GE T' is not",
        ),
        (route(shadow={"percent": 101}), "routes.0.shadow.percent: Input should be less than"),
        (route(shadow={"sticky_key": {}}), "routes.0.shadow.sticky_key: set exactly one of"),
        (route(compare=["jsn"]), "routes.0.compare.0: unknown comparator 'jsn'; known: exact"),
        (route(compare=[{"name": "json", "abs_tol": "x"}]), "routes.0.compare.0: json: abs_tol"),
        (route(name="unmatched"), "routes.0.name: 'unmatched' is reserved"),
        (route(shadow={"enabled": True}), "enable shadow or rollout but backends.agent is not set"),
        (
            {**MINIMAL, "shadow": {"add_headers": {"X-A": "1\r\nX-Injected: 1"}}},
            "shadow.add_headers: the value of X-A contains control characters",
        ),
        (
            {**MINIMAL, "shadow": {"add_headers": {"Bad Name": "1"}}},
            "shadow.add_headers: 'Bad Name' is not a valid header name",
        ),
        ({**MINIMAL, "shadow": {"drop_headers": ["a:b"]}}, "shadow.drop_headers: 'a:b' is not"),
        (
            {**MINIMAL, "shadow": {"capture_limit": "64KiB", "max_capture_memory": "32KiB"}},
            "shadow: max_capture_memory must be at least capture_limit, or no large body fits",
        ),
        ({**MINIMAL, "coordination": "etcd"}, "coordination: Input should be 'local' or 'redis'"),
        (
            {**MINIMAL, "redis": {"url": "redis://:hunter2@r:6379/0"}},
            "redis.url: must not carry a password: set redis.password instead",
        ),
        ({**MINIMAL, "redis": {"url": "http://r"}}, "redis.url: must be a redis:// or rediss://"),
        (
            {**MINIMAL, "redis": {"lease_ttl": "3s", "timeout": "1s"}},
            "redis: timeout must be under a third of lease_ttl",
        ),
        ({**MINIMAL, "redis": {"poll_interval": 0}}, "redis.poll_interval: must be greater than"),
        (
            {**MINIMAL, "prometheus": {"url": "http://u:p@prom:9090"}},
            "prometheus.url: must not carry credentials",
        ),
        ({**MINIMAL, "prometheus": {"min_window": "0s"}}, "prometheus.min_window: must be greater"),
        (
            {**MINIMAL, "prometheus": {"queries": {"samples": "sum(x{route='{{ rout }}'})"}}},
            "prometheus.queries.samples: unknown template variable rout; known: {{ route }}",
        ),
        (
            {**MINIMAL, "prometheus": {"selector": 'job="a"} or vector(1) #'}},
            "prometheus.selector: must be PromQL label matchers",
        ),
    ],
)
def test_each_bad_value_names_its_field_and_reason(data: dict[str, Any], expected: str) -> None:
    found = problems(data)
    assert any(expected in p for p in found), found


@pytest.mark.parametrize(
    ("shadow", "configured", "in_force"),
    [
        ({}, None, 4 * 1024 * 1024),  # four bodies of the default 1 MiB
        ({"capture_limit": "64KiB"}, None, 256 * 1024),
        ({"capture_limit": "64KiB", "max_capture_memory": "64KiB"}, 65536, 65536),
        ({"capture_limit": "64KiB", "max_capture_memory": "1MiB"}, 1024**2, 1024**2),
    ],
)  # fmt: skip
def test_capture_memory_defaults_to_four_capture_limits(
    shadow: dict[str, Any], configured: int | None, in_force: int
) -> None:
    settings = settings_from({**MINIMAL, "shadow": shadow}).shadow
    assert settings.max_capture_memory == configured
    assert settings.capture_memory == in_force


def test_duplicate_route_names_are_refused() -> None:
    data = {**MINIMAL, "routes": [{"name": "a", "match": {"prefix": "/"}}] * 2}
    assert any("repeated: a" in p for p in problems(data))


def test_all_problems_are_reported_at_once() -> None:
    data = {"backends": {"legacy": {"url": "nope", "timeout": "x"}}, "listen": {"port": -1}}
    assert len(problems(data)) == 3


def test_environment_overrides_the_file(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SHADOW_PROXY_SHADOW__TIMEOUT", "250ms")
    monkeypatch.setenv("SHADOW_PROXY_BACKENDS__LEGACY__URL", "http://10.1.2.3:9000")
    monkeypatch.setenv("SHADOW_PROXY_SHADOW__DROP_HEADERS", '["Authorization"]')
    settings = settings_from({**MINIMAL, "shadow": {"timeout": "9s", "max_in_flight": 7}})
    assert settings.shadow.timeout == 0.25
    assert settings.shadow.max_in_flight == 7  # untouched by the environment
    assert settings.shadow.drop_headers == ("Authorization",)
    assert settings.backends.legacy.url == "http://10.1.2.3:9000"


def test_bad_environment_value_is_reported_like_a_file_value(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("SHADOW_PROXY_SHADOW__TIMEOUT", "whenever")
    assert any(p.startswith("shadow.timeout:") for p in problems(MINIMAL))


def test_yaml_syntax_errors_and_non_mappings_are_config_errors(tmp_path: Path) -> None:
    broken = tmp_path / "broken.yaml"
    broken.write_text("routes: [unclosed\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_settings(broken)
    listing = tmp_path / "list.yaml"
    listing.write_text("- a\n- b\n")
    with pytest.raises(ConfigError, match="top level must be a mapping"):
        load_settings(listing)
    with pytest.raises(ConfigError, match="cannot read file"):
        load_settings(tmp_path / "missing.yaml")


SHIPPED = ["config/proxy.yaml", "proxy/demo/demo.yaml", "proxy/demo/rollout.yaml"]


@pytest.mark.parametrize("name", SHIPPED)
def test_shipped_configs_are_valid(name: str) -> None:
    settings = load_settings(ROOT / name)
    assert settings.routes


def test_example_config_sets_every_option() -> None:
    """config/proxy.yaml documents every option: each model field appears in it."""
    text = (ROOT / "config" / "proxy.yaml").read_text()

    def fields(model: Any) -> set[str]:
        names = set(model.model_fields)
        for info in model.model_fields.values():
            for inner in _models(info.annotation):
                names |= fields(inner)
        return names

    missing = sorted(n for n in fields(Settings) if f"{n}:" not in text)
    assert missing == []


def _models(annotation: Any) -> list[Any]:
    from pydantic import BaseModel

    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return [annotation]
    return [m for arg in getattr(annotation, "__args__", ()) for m in _models(arg)]


def test_schema_file_is_generated_from_the_model() -> None:
    """config/schema.json is regenerated by `make schema`; this keeps it honest."""
    on_disk = json.loads((ROOT / "config" / "schema.json").read_text())
    assert on_disk == json.loads(json.dumps(Settings.model_json_schema()))


def test_schema_validates_the_shipped_configs() -> None:
    import jsonschema
    import yaml

    schema = Settings.model_json_schema()
    for name in SHIPPED:
        jsonschema.validate(yaml.safe_load((ROOT / name).read_text()), schema)
