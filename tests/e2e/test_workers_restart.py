"""A worker that ``run --workers 2`` restarts runs what its siblings run: the
settings the supervisor started with, plus the hot-reloadable edits made
since; never the code of a ``proxy/`` directory where the pod was started.
And no worker outlives its supervisor."""

from __future__ import annotations

import json
import os
import shutil
import signal
import stat
import subprocess
import time
from pathlib import Path
from typing import Any

import pytest
import yaml
from fakes import Fake
from fleet import wait_until
from test_cli import CLI
from test_workers import (
    REQUESTS,
    Running,
    Starter,
    config,
    fresh_requests,
    start,  # noqa: F401  (a fixture)
    started,
    stop,
    total,
    worker_get,
)

pytestmark = pytest.mark.e2e
SHADOW = "shadow_proxy_shadow_requests_total"


def replace_config(tmp_path: Path, text: str) -> None:
    """As an editor or a ConfigMap update does: a new file renamed over the old."""
    path = tmp_path / "proxy.yaml"
    path.with_suffix(".new").write_text(text)
    os.replace(path.with_suffix(".new"), path)


async def events(proc: Running, name: str, worker: int) -> list[dict[str, Any]]:
    return [e for e in proc.events if e["event"] == name and e.get("worker") == worker]


async def kill_and_wait_for_restart(proc: Running, index: int) -> dict[str, Any]:
    """SIGKILL worker ``index``; its successor's worker_started event, once ready."""
    victim = started(proc)[index]
    os.kill(victim["pid"], signal.SIGKILL)

    async def successor() -> dict[str, Any] | None:
        return next(
            (e for e in await events(proc, "worker_ready", index) if e["pid"] != victim["pid"]),
            None,
        )

    await wait_until(successor, lambda e: e is not None, 15, f"worker {index} restarted")
    return started(proc)[index]


async def test_a_worker_restarted_while_the_file_is_invalid_serves_with_the_start_settings(
    start: Starter,  # noqa: F811
    legacy: Fake,
    agent: Fake,
    tmp_path: Path,
) -> None:
    proc = await start(config(legacy, agent, reload_interval="100ms"))
    replace_config(tmp_path, "routes: [this is: not, valid\n")

    async def rejections() -> int:
        return len([e for e in proc.events if e["event"] == "config_rejected"])

    await wait_until(rejections, lambda n: n == 2, 10, "both workers reject the file")
    fresh = await kill_and_wait_for_restart(proc, 0)
    rejected = await wait_until(
        lambda: events(proc, "config_rejected", 0), lambda r: len(r) == 2, 10, "rejected again"
    )
    assert "not valid YAML" in rejected[-1]["problems"][0]
    assert await fresh_requests(proc.proxy, 60) == [200] * 60
    assert total(await worker_get(fresh["socket"], "/metrics"), REQUESTS) > 0
    assert not [e for e in proc.events if e["event"] == "worker_exited" and e.get("code") == 2]
    await stop(proc)


async def test_a_restarted_worker_applies_the_hot_edits_its_siblings_applied(
    start: Starter,  # noqa: F811
    legacy: Fake,
    agent: Fake,
    tmp_path: Path,
) -> None:
    data = config(legacy, agent, reload_interval="100ms")
    proc = await start(data)
    data["routes"][0]["shadow"]["percent"] = 0  # mirror nothing from now on
    replace_config(tmp_path, yaml.safe_dump(data))

    async def reloads() -> int:
        return len([e for e in proc.events if e["event"] == "config_reloaded"])

    await wait_until(reloads, lambda n: n == 2, 10, "both workers reload")
    fresh = await kill_and_wait_for_restart(proc, 0)
    # The successor started from the supervisor's settings (100%), and applies the edit at once.
    await wait_until(
        lambda: events(proc, "config_reloaded", 0), lambda r: len(r) == 2, 10, "it reloads too"
    )
    assert await fresh_requests(proc.proxy, 60) == [200] * 60
    own = await worker_get(fresh["socket"], "/metrics")
    assert total(own, REQUESTS) > 0
    assert total(own, (SHADOW, {"outcome": "skipped_sample"})) == total(own, REQUESTS)
    assert total(own, (SHADOW, {"outcome": "sent"})) == 0
    await stop(proc)


async def test_a_configmap_update_reaches_every_worker_through_the_swapped_symlink(
    start: Starter,  # noqa: F811
    legacy: Fake,
    agent: Fake,
    tmp_path: Path,
) -> None:
    """Kubernetes mounts proxy.yaml -> ..data/proxy.yaml, swaps ..data to a new
    directory and removes the old one."""
    (tmp_path / "v1").mkdir()
    (tmp_path / "..data").symlink_to("v1")
    (tmp_path / "proxy.yaml").symlink_to("..data/proxy.yaml")
    data = config(legacy, agent, reload_interval="100ms")
    proc = await start(data)  # written through the links
    data["routes"][0]["shadow"]["percent"] = 0
    (tmp_path / "v2").mkdir()
    (tmp_path / "v2" / "proxy.yaml").write_text(yaml.safe_dump(data))
    (tmp_path / "..data_tmp").symlink_to("v2")
    os.replace(tmp_path / "..data_tmp", tmp_path / "..data")
    shutil.rmtree(tmp_path / "v1")

    async def reloaded() -> list[int]:
        return sorted(e["worker"] for e in proc.events if e["event"] == "config_reloaded")

    await wait_until(reloaded, lambda w: w == [0, 1], 10, "both workers reload")
    await stop(proc)


async def test_a_runtime_directory_removed_under_the_pod_is_replaced_by_a_new_private_one(
    start: Starter,  # noqa: F811
    legacy: Fake,
    agent: Fake,
) -> None:
    proc = await start(config(legacy, agent))
    old = Path(started(proc)[0]["socket"]).parent
    for path in old.iterdir():  # as a /tmp cleaner would
        path.unlink()
    old.rmdir()
    fresh = await kill_and_wait_for_restart(proc, 0)
    new = Path(fresh["socket"]).parent
    assert new != old and not old.exists()
    assert stat.S_IMODE(new.stat().st_mode) == 0o700
    rollout = json.loads(await worker_get(fresh["socket"], "/rollout"))
    assert "routes" in rollout
    await stop(proc)
    assert not new.exists()


async def test_a_proxy_directory_in_the_working_directory_is_never_run(
    start: Starter,  # noqa: F811
    legacy: Fake,
    agent: Fake,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    hostile = tmp_path / "cwd"
    marker = tmp_path / "hostile-code-ran"
    (hostile / "proxy").mkdir(parents=True)
    code = f"open({str(marker)!r}, 'w').close()\nraise SystemExit(3)\n"
    (hostile / "proxy" / "__init__.py").write_text(code)
    (hostile / "proxy" / "__main__.py").write_text(code)
    monkeypatch.chdir(hostile)
    proc = await start(config(legacy, agent))
    assert await fresh_requests(proc.proxy, 20) == [200] * 20
    await stop(proc)
    assert not marker.exists()


def alive(pid: int) -> bool:
    """Running: neither gone nor a zombie nobody reaped."""
    try:
        status = Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return False
    return "\nState:\tZ" not in status


def test_workers_stop_when_the_supervisor_is_killed_and_nobody_reads_the_logs(
    tmp_path: Path,
) -> None:
    """The reader of the pod's stdout died with it: the workers' last log line
    fails (a broken pipe), and they must still let go of the port."""
    path = tmp_path / "proxy.yaml"
    path.write_text(
        yaml.safe_dump(
            {
                "listen": {"host": "127.0.0.1", "port": 0},
                "admin": {"port": 0},
                "backends": {"legacy": {"url": "http://127.0.0.1:9"}},
                "logging": {"format": "json"},
            }
        )
    )
    env = {k: v for k, v in os.environ.items() if not k.startswith("SHADOW_PROXY_")}
    command = [CLI, "run", "--config", str(path), "--workers", "2"]
    supervisor = subprocess.Popen(command, stdout=subprocess.PIPE, env=env)
    assert supervisor.stdout is not None
    pids, runtime = [], None
    for line in supervisor.stdout:
        event = json.loads(line)
        if event["event"] == "worker_started":
            pids.append(event["pid"])
            runtime = Path(event["socket"]).parent
        if event["event"] == "listening":
            break
    supervisor.stdout.close()
    supervisor.kill()
    supervisor.wait()
    deadline = time.monotonic() + 10
    while any(alive(pid) for pid in pids) and time.monotonic() < deadline:
        time.sleep(0.1)
    survivors = [pid for pid in pids if alive(pid)]
    for pid in survivors:
        os.kill(pid, signal.SIGKILL)
    if runtime is not None:  # a supervisor killed so leaves it behind
        shutil.rmtree(runtime, ignore_errors=True)
    assert len(pids) == 2
    assert survivors == []
