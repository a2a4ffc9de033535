"""The rollout end to end inside one process: the controller moves the share on
real evidence, operators steer it through the admin API, the state file
carries it across a restart, and a reloaded config changes it live."""

from __future__ import annotations

import asyncio
import os
from pathlib import Path
from typing import Any

import orjson
import pytest
import yaml
from aiohttp.test_utils import TestClient
from conftest import metric_value
from fakes import Fake

from proxy.admin import Health, create_admin_app
from proxy.app import Core, build_metrics, create_app
from proxy.reload import ConfigWatcher
from proxy.rollout import Stage
from proxy.settings import Settings, settings_from

TOKEN = "s3cret-token"


def config(legacy: Fake, agent: Fake, **rollout: Any) -> dict[str, Any]:
    return {
        "backends": {"legacy": {"url": legacy.url}, "agent": {"url": agent.url}},
        "routes": [
            {
                "name": "api",
                "match": {"prefix": "/api/"},
                "shadow": {"enabled": True},
                "rollout": {
                    "steps": [10, 50],
                    "interval": "100ms",
                    "gates": {"min_samples": 8, "min_agreement": 0.6, "max_latency_ratio": None},
                    "max_consecutive_failures": 2,
                    **rollout,
                },
            }
        ],
    }


class Pair:
    """The proxy app and its admin app, sharing one core, as the server wires them."""

    def __init__(self, proxy: TestClient[Any, Any], admin: TestClient[Any, Any], core: Core):
        self.proxy, self.admin, self.core = proxy, admin, core

    @property
    def state(self) -> Any:
        return self.core.routing.runtimes["api"].state

    def value(self, name: str, **labels: str) -> float:
        return metric_value(self.core.metrics.registry, name, **labels)

    async def drive(self, until: Stage, requests: int = 400) -> None:
        """Send traffic until the route reaches ``until`` (the controller ticks meanwhile)."""
        for _ in range(requests):
            (await self.proxy.get("/api/x")).release()
            if self.state.stage is until:
                return
            await asyncio.sleep(0.005)
        raise AssertionError(f"stuck at {self.state}")


@pytest.fixture
def make_pair(aiohttp_client: Any) -> Any:
    async def make(settings: Settings, token: str | None = TOKEN, path: Path | None = None) -> Pair:
        metrics = build_metrics(settings)
        core = Core(settings, metrics, path)
        proxy = await aiohttp_client(create_app(settings, metrics, Health(), core))
        admin = await aiohttp_client(create_admin_app(metrics, Health(), core.controller, token))
        return Pair(proxy, admin, core)

    return make


async def test_an_agreeing_agent_climbs_every_step_to_primary(
    make_pair: Any, legacy: Fake, agent: Fake
) -> None:
    pair = await make_pair(settings_from(config(legacy, agent)))
    await pair.drive(until=Stage.PRIMARY)
    assert pair.state.percent == 100
    transitions = "shadow_proxy_rollout_transitions_total"
    for a, b in (("shadow", "canary"), ("canary", "canary"), ("canary", "primary")):
        assert pair.value(transitions, from_stage=a, to_stage=b, reason="promote") == 1
    assert pair.value("shadow_proxy_rollout_percent", route="api") == 100
    response = await pair.proxy.get("/api/x")
    assert response.headers["X-Served-By"] == "agent"


async def test_a_disagreeing_agent_is_rolled_back_with_a_reason(
    make_pair: Any, legacy: Fake, agent: Fake
) -> None:
    agent.body = b'{"ok": false}'
    pair = await make_pair(settings_from(config(legacy, agent, percent=10)))
    await pair.drive(until=Stage.ROLLED_BACK)
    assert pair.state.percent == 0
    assert "agreement" in pair.state.reason and "below 0.6" in pair.state.reason
    assert pair.value(
        "shadow_proxy_rollout_transitions_total",
        from_stage="canary", to_stage="rolled_back", reason="rollback",
    ) == 1  # fmt: skip
    assert pair.value("shadow_proxy_rollout_stage", route="api", stage="rolled_back") == 1


async def test_a_step_listed_for_approval_waits_for_an_operator(
    make_pair: Any, legacy: Fake, agent: Fake
) -> None:
    pair = await make_pair(settings_from(config(legacy, agent, approval=[50])))
    await pair.drive(until=Stage.AWAITING_APPROVAL)
    assert pair.state.percent == 10 and pair.state.pending == (Stage.CANARY, 50.0)
    response = await pair.admin.post("/rollout/api/approve", headers=bearer())
    assert response.status == 200
    assert "approv" in (await response.json())["decision"]["reason"]
    assert (pair.state.stage, pair.state.percent) == (Stage.CANARY, 50.0)


def bearer(token: str = TOKEN) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


async def test_admin_reads_are_open_and_writes_need_the_token(
    make_pair: Any, legacy: Fake, agent: Fake
) -> None:
    pair = await make_pair(settings_from(config(legacy, agent, mode="manual")))
    status = await pair.admin.get("/rollout")
    assert status.status == 200
    route = (await status.json())["routes"]["api"]
    assert (route["stage"], route["percent"], route["mode"]) == ("shadow", 0.0, "manual")
    for headers in ({}, bearer("wrong"), {"Authorization": TOKEN}):
        refused = await pair.admin.post("/rollout/api/promote", headers=headers)
        assert refused.status == 401
        assert refused.headers["WWW-Authenticate"].startswith("Bearer")
    assert pair.state.stage is Stage.SHADOW
    assert (await pair.admin.get("/metrics")).status == 200
    assert (await pair.admin.get("/healthz")).status == 200


async def test_admin_commands_and_share_changes_apply_at_once(
    make_pair: Any, legacy: Fake, agent: Fake
) -> None:
    pair = await make_pair(settings_from(config(legacy, agent, mode="manual")))
    put = await pair.admin.put("/rollout/api/share", data=b'{"percent": 0.5}', headers=bearer())
    assert put.status == 200
    assert (pair.state.stage, pair.state.percent) == (Stage.CANARY, 0.5)
    assert (await pair.admin.post("/rollout/api/pause", headers=bearer())).status == 200
    assert pair.state.stage is Stage.PAUSED
    assert (await pair.admin.post("/rollout/api/resume", headers=bearer())).status == 200
    assert (await pair.admin.post("/rollout/api/rollback", headers=bearer())).status == 200
    assert (pair.state.stage, pair.state.percent) == (Stage.ROLLED_BACK, 0.0)
    bad = [
        ("PUT", "/rollout/api/share", b"not json", 400),
        ("PUT", "/rollout/api/share", b'{"percent": 101}', 400),
        ("POST", "/rollout/nope/promote", b"", 404),
        ("POST", "/rollout/api/explode", b"", 404),
    ]
    for method, path, body, status in bad:
        response = await pair.admin.request(method, path, data=body, headers=bearer())
        assert response.status == status, (path, body)
        assert (await response.json())["reason"]


async def test_without_a_configured_token_admin_writes_are_refused(
    make_pair: Any, legacy: Fake, agent: Fake
) -> None:
    pair = await make_pair(settings_from(config(legacy, agent)), token=None)
    response = await pair.admin.post("/rollout/api/promote", headers=bearer())
    assert response.status == 403
    assert "no admin token" in (await response.json())["reason"]


async def test_a_restart_resumes_from_the_state_file(
    make_pair: Any, legacy: Fake, agent: Fake, tmp_path: Path
) -> None:
    data = config(legacy, agent, mode="manual")
    data["state_file"] = str(tmp_path / "state" / "rollout.json")
    first = await make_pair(settings_from(data))
    put = await first.admin.put("/rollout/api/share", data=b'{"percent": 25}', headers=bearer())
    assert put.status == 200
    saved = orjson.loads((tmp_path / "state" / "rollout.json").read_bytes())
    assert saved["routes"]["api"]["state"]["percent"] == 25
    await first.proxy.close()

    second = await make_pair(settings_from(data))
    assert (second.state.stage, second.state.percent) == (Stage.CANARY, 25.0)
    # Editing the config's share while stopped is a change too, and the newer one wins.
    data["routes"][0]["rollout"]["percent"] = 5
    third = await make_pair(settings_from(data))
    assert third.state.percent == 5.0


async def test_a_corrupt_state_file_falls_back_to_the_config(
    make_pair: Any, legacy: Fake, agent: Fake, tmp_path: Path
) -> None:
    data = config(legacy, agent, mode="manual", percent=10)
    (tmp_path / "state.json").write_text("{ half a file")
    data["state_file"] = str(tmp_path / "state.json")
    pair = await make_pair(settings_from(data))
    assert pair.state.percent == 10.0


def write(path: Path, data: dict[str, Any]) -> None:
    """Replace the file atomically, as an editor or a ConfigMap update does."""
    tmp = path.with_suffix(".tmp")
    tmp.write_text(yaml.safe_dump(data))
    os.replace(tmp, path)


async def test_a_reload_changes_the_share_and_a_bad_file_keeps_the_old_config(
    make_pair: Any, legacy: Fake, agent: Fake, tmp_path: Path
) -> None:
    path = tmp_path / "proxy.yaml"
    data = config(legacy, agent, mode="manual")
    write(path, data)
    pair = await make_pair(settings_from(data), path=path)
    watcher = ConfigWatcher(path, 60, pair.core.apply, pair.core.metrics)
    assert (await pair.proxy.get("/api/x")).headers["X-Served-By"] == "legacy"

    data["routes"][0]["rollout"]["percent"] = 100
    write(path, data)
    assert watcher.check()
    assert (await pair.proxy.get("/api/x")).headers["X-Served-By"] == "agent"
    assert pair.value("shadow_proxy_config_reloads_total", result="applied") == 1

    path.write_text("routes: [{name: api, match: {}}]\n")  # invalid
    assert not watcher.check()
    assert pair.value("shadow_proxy_config_reloads_total", result="rejected") == 1
    assert (await pair.proxy.get("/api/x")).headers["X-Served-By"] == "agent"


async def test_a_configmap_style_symlink_swap_is_noticed(
    make_pair: Any, legacy: Fake, agent: Fake, tmp_path: Path
) -> None:
    """Kubernetes mounts proxy.yaml -> ..data/proxy.yaml and swaps ..data atomically."""
    data = config(legacy, agent, mode="manual")
    for version, percent in (("v1", 0), ("v2", 100)):
        (tmp_path / version).mkdir()
        data["routes"][0]["rollout"]["percent"] = percent
        (tmp_path / version / "proxy.yaml").write_text(yaml.safe_dump(data))
    (tmp_path / "..data").symlink_to("v1")
    (tmp_path / "proxy.yaml").symlink_to("..data/proxy.yaml")
    path = tmp_path / "proxy.yaml"
    pair = await make_pair(settings_from(yaml.safe_load(path.read_text())), path=path)
    watcher = ConfigWatcher(path, 60, pair.core.apply, pair.core.metrics)
    assert not watcher.check()
    (tmp_path / "..data_tmp").symlink_to("v2")
    os.replace(tmp_path / "..data_tmp", tmp_path / "..data")
    assert watcher.check()
    assert pair.state.percent == 100.0


async def test_a_reload_that_changes_a_listener_says_it_needs_a_restart(
    make_pair: Any, legacy: Fake, agent: Fake, tmp_path: Path
) -> None:
    data = config(legacy, agent)
    pair = await make_pair(settings_from(data))
    changed = settings_from({**data, "listen": {"port": 1234}})
    assert pair.core.apply(changed) == ["listen"]
    assert pair.core.settings.listen.port == 8080  # the running value stays


async def test_a_command_that_changes_nothing_is_a_conflict_not_a_success(
    make_pair: Any, legacy: Fake, agent: Fake
) -> None:
    pair = await make_pair(settings_from(config(legacy, agent, mode="manual")))
    response = await pair.admin.post("/rollout/api/approve", headers=bearer())
    assert response.status == 409
    assert "nothing awaits approval" in (await response.json())["reason"]


async def test_a_reload_that_removes_a_rollout_clears_its_gauges(
    make_pair: Any, legacy: Fake, agent: Fake
) -> None:
    data = config(legacy, agent, mode="manual", percent=50)
    pair = await make_pair(settings_from(data))
    pair.core.controller.publish_all()
    assert pair.value("shadow_proxy_rollout_percent", route="api") == 50
    del data["routes"][0]["rollout"]
    pair.core.apply(settings_from(data))
    with pytest.raises(KeyError):  # the family is gone with its only series
        pair.value("shadow_proxy_rollout_percent", route="api")
