"""The CLI as a user runs it: check-config, run (with a graceful SIGTERM), demo."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import socket
import subprocess
import sys
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import yaml
from fakes import Fake
from prometheus_client.parser import text_string_to_metric_families

ROOT = Path(__file__).resolve().parents[2]
CLI = str(Path(sys.executable).parent / "shadow-proxy")
pytestmark = pytest.mark.e2e


def cli(*args: str, timeout: float = 30) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [CLI, *args], capture_output=True, text=True, timeout=timeout, cwd=ROOT, check=False
    )


def test_check_config_prints_the_normalized_config() -> None:
    result = cli("check-config", "config/proxy.yaml")
    assert result.returncode == 0, result.stderr
    normalized = yaml.safe_load(result.stdout)
    assert normalized["shadow"]["timeout"] == 5.0  # "5s" normalized to seconds
    assert normalized["max_body_size"] == 64 * 1024 * 1024
    assert [r["name"] for r in normalized["routes"]] == ["classify", "search", "legacy-only"]


def test_check_config_output_loads_back_the_same_with_a_gate_turned_off(tmp_path: Path) -> None:
    """A null that means "off" survives: printed, re-read, printed again, unchanged."""
    first = tmp_path / "first.yaml"
    first.write_text(
        "backends: {legacy: {url: 'http://h:1'}, agent: {url: 'http://a:2'}}\n"
        "routes: [{name: r, match: {prefix: /}, rollout: {gates: {max_latency_ratio: null}}}]\n"
    )
    printed = cli("check-config", str(first))
    assert printed.returncode == 0, printed.stderr
    assert (
        yaml.safe_load(printed.stdout)["routes"][0]["rollout"]["gates"]["max_latency_ratio"] is None
    )
    second = tmp_path / "second.yaml"
    second.write_text(printed.stdout)
    assert cli("check-config", str(second)).stdout == printed.stdout


def test_check_config_names_each_bad_field_and_exits_2(tmp_path: Path) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text(
        "backends: {legacy: {url: 'localhost:80'}}\n"
        "shadow: {timeout: soon}\n"
        "routes: [{name: r, match: {prefix: /}, compare: [jsn]}]\n"
    )
    result = cli("check-config", str(bad))
    assert result.returncode == 2
    assert "backends.legacy.url: must be an absolute http:// or https:// URL" in result.stderr
    assert "shadow.timeout: expected a duration" in result.stderr
    assert "routes.0.compare.0: unknown comparator 'jsn'; known: exact, headers" in result.stderr
    assert "Traceback" not in result.stderr
    assert result.stdout == ""


class Running:
    """A ``shadow-proxy run`` subprocess and the URLs it logged."""

    def __init__(
        self,
        process: asyncio.subprocess.Process,
        proxy: str,
        admin: str,
        events: list[dict[str, Any]] | None = None,
    ) -> None:
        self.process = process
        self.proxy = proxy
        self.admin = admin
        self.events: list[dict[str, Any]] = events or []  # from the start, `listening` included

    async def read_events(self) -> None:
        assert self.process.stdout is not None
        async for line in self.process.stdout:
            self.events.append(json.loads(line))

    def peak_rss_mib(self) -> float:
        status = Path(f"/proc/{self.process.pid}/status").read_text()
        line = next(ln for ln in status.splitlines() if ln.startswith("VmHWM:"))
        return int(line.split()[1]) / 1024


async def start_cli(
    config: dict[str, Any], tmp_path: Path, *args: str, stderr: int | None = None
) -> Running:
    """``shadow-proxy run --config FILE [args...]``; ``stderr=asyncio.subprocess.PIPE``
    keeps it for the test to read."""
    path = tmp_path / "proxy.yaml"
    path.write_text(yaml.safe_dump(config))
    env = {k: v for k, v in os.environ.items() if not k.startswith("SHADOW_PROXY_")}
    process = await asyncio.create_subprocess_exec(
        CLI, "run", "--config", str(path), *args,
        stdout=asyncio.subprocess.PIPE, stderr=stderr, env=env,
    )  # fmt: skip
    assert process.stdout is not None
    events = []
    while True:
        line = await asyncio.wait_for(process.stdout.readline(), timeout=20)
        assert line, "shadow-proxy exited before listening"
        event = json.loads(line)
        events.append(event)
        if event["event"] == "listening":
            return Running(process, event["proxy"], event["admin"], events)


@pytest.fixture
async def running(legacy: Fake, agent: Fake, tmp_path: Path) -> AsyncIterator[Running]:
    config = {
        "listen": {"host": "127.0.0.1", "port": 0},
        "admin": {"port": 0},
        "backends": {"legacy": {"url": legacy.url}, "agent": {"url": agent.url}},
        "max_body_size": "200MiB",
        "routes": [{"name": "api", "match": {"prefix": "/api/"}, "shadow": {"enabled": True}}],
        "logging": {"format": "json"},
        "shutdown": {"drain_delay": "300ms", "timeout": "10s", "shadow_grace": "2s"},
    }
    proc = await start_cli(config, tmp_path)
    reader = asyncio.create_task(proc.read_events())
    yield proc
    if proc.process.returncode is None:
        proc.process.kill()
        await proc.process.wait()
    await reader


async def test_run_proxies_mirrors_exports_metrics_and_drains_on_sigterm(
    running: Running, legacy: Fake, agent: Fake
) -> None:
    async with aiohttp.ClientSession() as http:
        async with http.get(f"{running.proxy}/api/items") as response:
            assert response.status == 200
            assert await response.json() == {"ok": True}
        async with http.get(f"{running.admin}/readyz") as ready:
            assert ready.status == 200
        await asyncio.wait_for(agent.arrived.wait(), timeout=5)  # the shadow copy
        assert agent.seen[-1].headers["x-shadow-request"] == ["1"]
        async with http.get(f"{running.admin}/metrics") as scrape:
            text = await scrape.text()
        samples = {
            (s.name, tuple(sorted(s.labels.items()))): s.value
            for family in text_string_to_metric_families(text)
            for s in family.samples
        }
        key = ("shadow_proxy_shadow_requests_total", (("outcome", "sent"), ("route", "api")))
        assert samples[key] == 1
        assert any(name == "process_resident_memory_bytes" for name, _ in samples)

        # SIGTERM while a slow request is in flight: it still completes.
        legacy.delay = 1.0
        slow = asyncio.create_task(http.get(f"{running.proxy}/api/slow"))
        await asyncio.sleep(0.2)
        running.process.send_signal(signal.SIGTERM)
        await asyncio.sleep(0.1)
        async with http.get(f"{running.admin}/readyz") as draining:
            assert draining.status == 503
        response = await slow
        assert response.status == 200
        response.release()
    assert await asyncio.wait_for(running.process.wait(), timeout=15) == 0


async def test_100_mib_each_way_streams_without_holding_bodies_in_memory(
    running: Running,
) -> None:
    block = bytes(range(256)) * 4096

    async def body() -> AsyncIterator[bytes]:
        for _ in range(100):
            yield block

    before = running.peak_rss_mib()
    async with aiohttp.ClientSession() as http:
        async with http.post(f"{running.proxy}/upload", data=body()) as response:
            assert (await response.json())["size"] == 100 * len(block)
        async with http.get(f"{running.proxy}/download?mb=100") as response:
            size = 0
            async for chunk in response.content.iter_chunked(1 << 20):
                size += len(chunk)
            assert size == 100 * len(block)
    grown = running.peak_rss_mib() - before
    assert grown < 40, f"peak RSS grew {grown:.0f} MiB moving 200 MiB"


def test_demo_runs_for_its_duration_and_prints_live_numbers() -> None:
    result = cli(
        "demo", "--duration", "8", "--interval", "3", "--port", "0", "--admin-port", "0",
        timeout=60,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-2000:]
    out = result.stdout
    assert "http://127.0.0.1:" in out and "/metrics" in out
    assert out.count("agreement") >= 2  # at least one live summary plus the final one
    assert "final totals" in out
    assert "Traceback" not in result.stderr


@pytest.mark.parametrize("workers", [(), ("--workers", "2")], ids=["one", "workers"])
def test_run_on_a_port_in_use_says_so_in_one_line(tmp_path: Path, workers: tuple[str, ...]) -> None:
    """One process or a supervisor of several: the same message and status."""
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        config = tmp_path / "proxy.yaml"
        config.write_text(
            yaml.safe_dump(
                {
                    "listen": {"host": "127.0.0.1", "port": port},
                    "admin": {"port": 0},
                    "backends": {"legacy": {"url": "http://127.0.0.1:9"}},
                }
            )
        )
        result = cli("run", "--config", str(config), *workers)
    assert result.returncode == 1
    assert result.stderr.startswith("error: cannot listen:")
    assert f"('127.0.0.1', {port}): address already in use" in result.stderr.lower()
    assert "Traceback" not in result.stderr
