"""The rollout as an operator meets it: a config edited under load, the admin
commands, and the demo's good and bad agents, all through the real CLI."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
from collections import Counter
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import yaml
from fakes import Fake
from test_cli import Running, cli, start_cli

pytestmark = pytest.mark.e2e
TOKEN = "e2e-token"


def config(legacy: Fake, agent: Fake, percent: float) -> dict[str, Any]:
    return {
        "listen": {"host": "127.0.0.1", "port": 0},
        "admin": {"port": 0},
        "backends": {"legacy": {"url": legacy.url}, "agent": {"url": agent.url}},
        "routes": [
            {
                "name": "api",
                "match": {"prefix": "/api/"},
                "shadow": {"enabled": True},
                "rollout": {"mode": "manual", "percent": percent},
            }
        ],
        "reload_interval": "200ms",
        "logging": {"format": "json"},
    }


async def stop(proc: Running) -> None:
    proc.process.terminate()
    assert await asyncio.wait_for(proc.process.wait(), timeout=15) == 0


async def test_a_config_edit_under_load_drops_no_request(
    legacy: Fake, agent: Fake, tmp_path: Path
) -> None:
    path = tmp_path / "proxy.yaml"
    proc = await start_cli(config(legacy, agent, 0), tmp_path)
    served: Counter[str] = Counter()
    failures: list[str] = []
    done = asyncio.Event()

    async def client(http: aiohttp.ClientSession) -> None:
        while not done.is_set():
            try:
                async with http.get(f"{proc.proxy}/api/x") as response:
                    await response.read()
                    if response.status != 200:
                        failures.append(f"status {response.status}")
                    served[response.headers.get("X-Served-By", "?")] += 1
            except aiohttp.ClientError as exc:
                failures.append(repr(exc))

    async with aiohttp.ClientSession() as http:
        clients = [asyncio.create_task(client(http)) for _ in range(8)]
        await asyncio.sleep(1.0)
        tmp = path.with_suffix(".new")
        tmp.write_text(yaml.safe_dump(config(legacy, agent, 100)))
        os.replace(tmp, path)  # what an editor or a ConfigMap update does
        for _ in range(100):
            await asyncio.sleep(0.05)
            if served["agent"] > 50:
                break
        done.set()
        await asyncio.gather(*clients)
    await stop(proc)
    assert failures == []
    assert served["legacy"] > 0 and served["agent"] > 50, served


def admin(proc: Running, *args: str, token: str | None = TOKEN) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("SHADOW_PROXY_")}
    if token is not None:
        env["SHADOW_PROXY_ADMIN__TOKEN"] = token
    command = [str(Path(sys.executable).parent / "shadow-proxy"), *args, "--admin", proc.admin]
    return subprocess.run(command, capture_output=True, text=True, timeout=30, env=env, check=False)


async def test_operators_steer_a_route_from_the_command_line(
    legacy: Fake, agent: Fake, tmp_path: Path
) -> None:
    data = config(legacy, agent, 0)
    data["admin"]["token"] = TOKEN
    proc = await start_cli(data, tmp_path)
    try:
        loop = asyncio.get_running_loop()
        refused = await loop.run_in_executor(None, lambda: admin(proc, "promote", "api", token=""))
        assert refused.returncode == 1
        assert "401" in refused.stderr and "Traceback" not in refused.stderr
        done = await loop.run_in_executor(None, lambda: admin(proc, "set-share", "api", "50"))
        assert done.returncode == 0, done.stderr
        assert "api: set:" in done.stdout
        status = await loop.run_in_executor(None, lambda: admin(proc, "status"))
        assert status.returncode == 0
        assert "api: canary 50%" in status.stdout
    finally:
        await stop(proc)


@pytest.mark.parametrize(
    ("scenario", "seconds", "expected"),
    [("good", 22, "classify: primary 100%"), ("bad", 14, "classify: rolled_back 0%")],
)
def test_the_demo_agent_climbs_when_good_and_is_rolled_back_when_bad(
    scenario: str, seconds: int, expected: str
) -> None:
    result = cli(
        "demo", "--scenario", scenario, "--duration", str(seconds), "--interval", "30",
        "--port", "0", "--admin-port", "0", timeout=90,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-2000:]
    final = result.stdout.split("final totals:")[-1]
    assert expected in final, final
    if scenario == "bad":
        assert "rolled back: agreement" in final
