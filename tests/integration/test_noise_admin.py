"""The noise a route learned, as the admin API and `shadow-proxy noise` show it,
and the YAML that freezes it into the config."""

from __future__ import annotations

import asyncio
import itertools
import sys
from typing import Any

import yaml
from aiohttp import web
from aiohttp.test_utils import TestClient

from proxy.admin import Health, create_admin_app
from proxy.app import TASKS, Core, build_metrics, create_app
from proxy.settings import settings_from

COUNTER = itertools.count()


async def answer(request: web.Request) -> web.Response:
    """The same answer each time but for an id that is new on every call (noise)."""
    return web.json_response({"label": "billing", "id": next(COUNTER)})


async def start(aiohttp_server: Any, aiohttp_client: Any) -> tuple[TestClient[Any, Any], Any]:
    app = web.Application()
    app.router.add_get("/{tail:.*}", answer)
    legacy = await aiohttp_server(app)
    agent = await aiohttp_server(app)
    settings = settings_from(
        {
            "backends": {
                "legacy": {"url": str(legacy.make_url(""))},
                "agent": {"url": str(agent.make_url(""))},
            },
            "routes": [
                {
                    "name": "api",
                    "match": {"prefix": "/api/"},
                    "shadow": {"enabled": True},
                    "noise": {"enabled": True, "percent": 100, "min_pairs": 3},
                }
            ],
        }
    )
    metrics = build_metrics(settings)
    core = Core(settings, metrics)
    proxy = await aiohttp_client(create_app(settings, metrics, Health(), core))
    admin = await aiohttp_client(
        create_admin_app(metrics, Health(), core.controller, None, core.learners)
    )
    return proxy, admin


async def traffic(proxy: TestClient[Any, Any], count: int) -> None:
    for _ in range(count):
        response = await proxy.get("/api/x")
        assert response.status == 200
    await proxy.app[TASKS].join()


async def test_the_admin_api_lists_a_learned_noise_field_and_its_rate(
    aiohttp_server: Any, aiohttp_client: Any
) -> None:
    proxy, admin = await start(aiohttp_server, aiohttp_client)
    await traffic(proxy, 5)
    data = await (await admin.get("/noise")).json()
    route = data["routes"]["api"]
    assert route["pairs"] == 5
    (row,) = [r for r in route["fields"] if r["path"] == "$.id"]
    assert row["noise"] is True and row["rate"] == 1.0 and row["frozen"] is False
    assert all(r["path"] != "$.label" for r in route["fields"])


async def test_the_yaml_freezes_the_learned_fields_into_a_loadable_config(
    aiohttp_server: Any, aiohttp_client: Any
) -> None:
    proxy, admin = await start(aiohttp_server, aiohttp_client)
    await traffic(proxy, 4)
    response = await admin.get("/noise", params={"route": "api", "format": "yaml"})
    assert response.status == 200
    snippet = yaml.safe_load(await response.text())
    (route,) = snippet["routes"]
    assert route["name"] == "api"
    frozen = settings_from(
        {
            "backends": {"legacy": {"url": "http://127.0.0.1:1"}},
            "routes": [{"name": "api", "match": {"prefix": "/"}, "noise": route["noise"]}],
        }
    )
    assert frozen.routes[0].noise.fields == ("$.id",)


async def test_an_unknown_route_is_a_404_naming_it(
    aiohttp_server: Any, aiohttp_client: Any
) -> None:
    _, admin = await start(aiohttp_server, aiohttp_client)
    response = await admin.get("/noise", params={"route": "nope"})
    assert response.status == 404
    assert "nope" in (await response.json())["reason"]


async def test_the_cli_prints_the_fields_and_the_yaml(
    aiohttp_server: Any, aiohttp_client: Any
) -> None:
    proxy, admin = await start(aiohttp_server, aiohttp_client)
    await traffic(proxy, 4)
    url = str(admin.make_url(""))

    async def cli(*args: str) -> tuple[int, str]:
        process = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "proxy", "noise", "--admin", url, *args,
            stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT,
        )  # fmt: skip
        out, _ = await process.communicate()
        return process.returncode or 0, out.decode()

    status, text = await cli()
    assert status == 0
    assert "api: 4 pair(s) compared" in text
    assert "$.id" in text and "noise" in text
    status, text = await cli("--yaml")
    assert status == 0
    assert yaml.safe_load(text)["routes"][0]["noise"]["fields"] == ["$.id"]
