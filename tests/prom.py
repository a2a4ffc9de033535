"""A real Prometheus for tests: started on loopback with its data in tmp_path,
scraping the given targets, stopped by its PID.

    prom = await start_prometheus(tmp_path, ["127.0.0.1:8080"], scrape_interval="200ms")
    try:
        await prom.wait_scraped()           # every target scraped, and up
        value = await prom.value("sum(up)")  # one number, or None for no series
    finally:
        prom.stop()

Waiting is async, so a test's own aiohttp targets keep answering scrapes meanwhile.
Prometheus 2.x applies its targets on a 5 s tick: the first scrape comes up to
~5 s after ready, whatever the scrape interval.
"""

from __future__ import annotations

import asyncio
import shutil
import socket
import subprocess
import time
from pathlib import Path
from typing import IO, Any

import aiohttp
import pytest
import yaml

JOB = "shadow-proxy"


def free_port() -> int:
    """A port nobody listens on right now (Prometheus takes a number, not 0)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class Prometheus:
    def __init__(
        self, process: subprocess.Popen[bytes], log: IO[bytes], url: str, targets: list[str]
    ) -> None:
        self.process = process
        self.url = url
        self.targets = targets
        self._log = log

    def log(self) -> str:
        """What Prometheus said so far (for a failing test's message)."""
        return Path(self._log.name).read_text(errors="replace")[-3000:]

    def stop(self) -> None:
        """Terminate by PID and wait; a second call is harmless."""
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        self._log.close()

    async def query(self, promql: str) -> dict[str, Any]:
        """The raw JSON answer of /api/v1/query (status, data or error), any HTTP status."""
        async with (
            aiohttp.ClientSession() as http,
            http.get(f"{self.url}/api/v1/query", params={"query": promql}) as response,
        ):
            answer: dict[str, Any] = await response.json(content_type=None)
            return answer

    async def value(self, promql: str) -> float | None:
        """The single number a query gives; None for an empty vector."""
        answer = await self.query(promql)
        assert answer["status"] == "success", f"{promql}: {answer}"
        data = answer["data"]
        if data["resultType"] == "scalar":
            return float(data["result"][1])
        assert len(data["result"]) <= 1, f"{promql}: more than one series: {data['result']}"
        return float(data["result"][0]["value"][1]) if data["result"] else None

    async def scrapes(self) -> dict[str, int]:
        """Successful scrapes so far, per target."""
        answer = await self.query(f'sum by (instance) (count_over_time(up{{job="{JOB}"}}[1d]))')
        counts = {t: 0 for t in self.targets}
        for series in answer.get("data", {}).get("result", []):
            counts[series["metric"]["instance"]] = int(float(series["value"][1]))
        up = await self.query(f'up{{job="{JOB}"}} == 1')
        live = {s["metric"]["instance"] for s in up.get("data", {}).get("result", [])}
        return {t: n if t in live else 0 for t, n in counts.items()}

    async def wait_scraped(self, more: int = 1, within: float = 20.0) -> None:
        """Until every target has been scraped ``more`` more times from now, and is up:
        a value set before this call is then in Prometheus (wait for 2 if a scrape
        may have been under way when it was set)."""
        before = await self.scrapes()
        deadline = time.monotonic() + within
        while True:
            now = await self.scrapes()
            if all(now[t] >= before[t] + more and now[t] > 0 for t in self.targets):
                return
            if time.monotonic() > deadline:
                pytest.fail(f"targets not scraped {more} more time(s) in {within}s: {now}")
            await asyncio.sleep(0.1)


def _config(targets: list[str], scrape_interval: str, metrics_path: str) -> dict[str, Any]:
    return {
        "global": {"scrape_interval": scrape_interval, "evaluation_interval": scrape_interval},
        "scrape_configs": [
            {
                "job_name": JOB,
                "scrape_interval": scrape_interval,
                "scrape_timeout": scrape_interval,
                "metrics_path": metrics_path,
                "static_configs": [{"targets": targets}],
            }
        ],
    }


async def start_prometheus(
    tmp_path: Path,
    targets: list[str],
    scrape_interval: str = "1s",
    metrics_path: str = "/metrics",
    ready_within: float = 20.0,
) -> Prometheus:
    """A Prometheus answering on ``.url`` once ready (targets not yet scraped:
    see :meth:`Prometheus.wait_scraped`)."""
    binary = shutil.which("prometheus")
    if binary is None:
        pytest.fail("prometheus is not installed: run `make system-deps` (Debian package)")
    home = tmp_path / f"prometheus-{time.monotonic_ns()}"
    home.mkdir()
    config = home / "prometheus.yml"
    config.write_text(yaml.safe_dump(_config(targets, scrape_interval, metrics_path)))
    for _ in range(3):  # the free port may be taken between the check and the bind
        port = free_port()
        process, log = _spawn(binary, home, config, port)
        prom = Prometheus(process, log, f"http://127.0.0.1:{port}", targets)
        if await _ready(prom, ready_within):
            return prom
        said = prom.log()
        prom.stop()
        if "address already in use" not in said:
            pytest.fail(f"prometheus did not become ready in {ready_within}s:\n{said}")
    pytest.fail("prometheus found no free port in three tries")


def _spawn(
    binary: str, home: Path, config: Path, port: int
) -> tuple[subprocess.Popen[bytes], IO[bytes]]:
    log = (home / "prometheus.log").open("wb")
    process = subprocess.Popen(
        [
            binary,
            f"--config.file={config}",
            f"--storage.tsdb.path={home / 'data'}",
            f"--web.listen-address=127.0.0.1:{port}",
            "--log.level=warn",
        ],
        stdout=log,
        stderr=subprocess.STDOUT,
        cwd=home,
    )
    return process, log


async def _ready(prom: Prometheus, within: float) -> bool:
    deadline = time.monotonic() + within
    async with aiohttp.ClientSession() as http:
        while time.monotonic() < deadline and prom.process.poll() is None:
            try:
                async with http.get(f"{prom.url}/-/ready") as response:
                    if response.status == 200:
                        return True
            except aiohttp.ClientError:
                pass
            await asyncio.sleep(0.05)
    return False
