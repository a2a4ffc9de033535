"""One worker's settings under ``run --workers N``: budgets divided so the pod
keeps the configured figure, resources left per process, and N independent
rollouts refused under local coordination — at start and on reload."""

from __future__ import annotations

import asyncio
import functools
from pathlib import Path
from typing import Any

import pytest
import yaml
from pydantic import ValidationError
from structlog.testing import capture_logs

from proxy.app import build_metrics
from proxy.errors import ConfigError
from proxy.reload import ConfigWatcher
from proxy.settings import Settings, settings_from
from proxy.worker import next_backoff
from proxy.workerconfig import WorkerSpec, divide, for_worker, loader, worker_problems
from proxy.workers import watch_ended

BACKENDS = {"legacy": {"url": "http://127.0.0.1:8001"}, "agent": {"url": "http://127.0.0.1:8002"}}
JUDGE = {"name": "judge", "url": "http://127.0.0.1:9/v1/chat/completions", "model": "m"}


def config(**route: Any) -> dict[str, Any]:
    return {
        "backends": BACKENDS,
        "routes": [{"name": "api", "match": {"prefix": "/"}, **route}],
    }


def spec(count: int = 4, index: int = 1) -> WorkerSpec:
    return WorkerSpec(index, count, 18080, Path("/run/w.sock"))


def test_rates_and_totals_are_divided_among_the_workers() -> None:
    settings = settings_from(
        {
            **config(
                shadow={"enabled": True, "rate_limit": 10, "token_budget": 100_000},
                compare=["status", {**JUDGE, "max_calls_per_minute": 120}],
            ),
            "recording": {"enabled": True, "max_total_size": "1GiB", "max_file_size": "10MiB"},
        }
    )
    out = divide(settings, 4)
    shadow = out.routes[0].shadow
    assert shadow.rate_limit == 2.5
    assert shadow.token_budget == 25_000
    assert out.routes[0].compare[1].options["max_calls_per_minute"] == 30
    assert out.routes[0].compare[1].build().max_calls_per_minute == 30  # type: ignore[union-attr]
    assert out.recording.max_total_size == 1024**3 // 4
    assert out.recording.max_file_size == 10 * 1024**2


def test_a_judges_default_budget_is_divided_too() -> None:
    settings = settings_from(config(shadow={"enabled": True}, compare=[JUDGE]))
    assert divide(settings, 4).routes[0].compare[0].options["max_calls_per_minute"] == 15


def test_a_whole_number_budget_smaller_than_n_leaves_each_worker_one_never_none() -> None:
    settings = settings_from(
        config(
            shadow={"enabled": True, "token_budget": 3},
            compare=[{**JUDGE, "max_calls_per_minute": 2}],
        )
    )
    out = divide(settings, 4)
    assert out.routes[0].shadow.token_budget == 1
    assert out.routes[0].compare[0].options["max_calls_per_minute"] == 1


def test_a_file_larger_than_a_workers_share_of_the_directory_is_cut_to_it() -> None:
    recording = {"enabled": True, "max_total_size": "20MiB", "max_file_size": "10MiB"}
    out = divide(settings_from({**config(), "recording": recording}), 4)
    assert out.recording.max_total_size == out.recording.max_file_size == 5 * 1024**2


def test_per_process_resources_and_unset_budgets_are_left_alone() -> None:
    settings = settings_from(
        {
            **config(shadow={"enabled": True}),
            "shadow": {"max_in_flight": 64, "max_capture_memory": "64MiB"},
            "backends": {**BACKENDS, "legacy": {"url": "http://h:1", "max_connections": 100}},
        }
    )
    out = divide(settings, 4)
    assert out.shadow == settings.shadow
    assert out.backends == settings.backends
    assert out.routes[0].shadow.rate_limit is None
    assert out.routes[0].shadow.token_budget is None
    assert divide(settings, 1) is settings


def test_a_worker_listens_on_the_reserved_port_and_its_replica_name_is_its_own() -> None:
    settings = settings_from(
        {
            **config(),
            "listen": {"port": 0},
            "coordination": "redis",
            "redis": {"replica": "orders-7f9c"},
        }
    )
    out = for_worker(settings, spec(count=3, index=2))
    assert out.listen.port == 18080
    assert out.redis.replica == "orders-7f9c-w2"
    unnamed = settings_from({**config(), "coordination": "redis"})
    assert for_worker(unnamed, spec()).redis.replica is None  # host-pid: already one per process


def the_refusal(data: dict[str, Any], count: int) -> str | None:
    """The one problem ``count`` workers have with this config (and the worker
    settings refuse to build then too), or None."""
    settings = settings_from(data)
    problems = worker_problems(settings, count)
    if not problems:
        return None
    [problem] = problems
    with pytest.raises(ConfigError):
        for_worker(settings, spec(count=count))
    return problem


@pytest.mark.parametrize(
    ("coordination", "rollout", "count", "refused"),
    [
        ("local", {}, 2, True),  # auto is the default mode
        ("local", {"mode": "auto"}, 64, True),
        ("local", {"mode": "manual"}, 2, False),
        ("local", None, 2, False),
        ("redis", {"mode": "auto"}, 2, False),
        ("local", {"mode": "auto"}, 1, False),
    ],
)
def test_independent_auto_rollouts_are_refused_only_with_several_local_workers(
    coordination: str, rollout: dict[str, Any] | None, count: int, refused: bool
) -> None:
    data = {**config(rollout=rollout), "coordination": coordination, "state_file": "s.json"}
    problem = the_refusal(data, count)
    assert (problem is not None) is refused
    if problem is not None:
        assert problem.startswith("routes.0.rollout.mode: route 'api' rolls out in auto mode")
        assert "use rollout.mode: manual, coordination: redis, or one worker" in problem


@pytest.mark.parametrize(
    ("coordination", "rollout", "state_file", "count", "refused"),
    [
        ("local", {"mode": "manual"}, None, 2, True),
        ("local", {"mode": "manual", "percent": 5}, None, 8, True),
        ("local", {"mode": "manual"}, "state.json", 2, False),
        ("local", None, None, 2, False),  # no rollout: nothing to keep
        ("redis", {"mode": "manual"}, None, 2, False),  # Redis keeps it
        ("local", {"mode": "manual"}, None, 1, False),
    ],
)
def test_a_local_rollout_without_a_state_file_is_refused_with_several_workers(
    coordination: str, rollout: dict[str, Any] | None, state_file: str | None, count: int,
    refused: bool,
) -> None:  # fmt: skip
    data = {**config(rollout=rollout), "coordination": coordination, "state_file": state_file}
    problem = the_refusal(data, count)
    assert (problem is not None) is refused
    if problem is not None:
        assert problem.startswith("routes.0.rollout: route 'api' has a rollout, but with")
        assert "set state_file, use coordination: redis, or one worker" in problem


def test_a_recording_directory_too_small_to_divide_is_refused_not_cut_below_a_file() -> None:
    recording = {"enabled": True, "max_total_size": "4KiB", "max_file_size": "1KiB"}
    settings = settings_from({**config(), "recording": recording})
    assert worker_problems(settings, 4) == []  # 1 KiB each: just enough
    [problem] = worker_problems(settings, 8)
    assert problem == (
        "recording.max_total_size: 4096 bytes divided among 8 workers leaves each 512, less "
        "than the 1024 a file needs; raise it or use fewer workers"
    )
    with pytest.raises(ConfigError):
        for_worker(settings, spec(count=8))
    with pytest.raises(ValidationError):  # divide never builds what the model refuses
        divide(settings, 8)
    off = settings_from({**config(), "recording": {**recording, "enabled": False}})
    assert worker_problems(off, 8) == []
    assert divide(off, 8).recording == off.recording


def test_a_reload_that_turns_a_route_to_auto_is_rejected_and_the_old_config_kept(
    tmp_path: Path,
) -> None:
    path = tmp_path / "proxy.yaml"
    data = {**config(rollout={"mode": "manual", "percent": 5}), "state_file": "state.json"}
    path.write_text(yaml.safe_dump(data))
    load = loader(spec(count=2))
    settings = load(path)
    applied: list[Settings] = []
    metrics = build_metrics(settings)
    watcher = ConfigWatcher(path, 60, lambda s: applied.append(s) or [], metrics, load)

    path.write_text(yaml.safe_dump({**data, **config(rollout={"mode": "auto"})}))
    assert watcher.check() is False
    assert applied == []
    rejected = {"result": "rejected"}
    assert metrics.registry.get_sample_value("shadow_proxy_config_reloads_total", rejected) == 1

    path.write_text(yaml.safe_dump({**data, **config(rollout={"mode": "manual", "percent": 10})}))
    assert watcher.check() is True
    assert applied[0].routes[0].rollout is not None
    assert applied[0].routes[0].rollout.percent == 10
    assert applied[0].listen.port == 18080  # still this worker's share

    path.write_text(yaml.safe_dump(config(rollout={"mode": "manual", "percent": 20})))
    assert watcher.check() is False  # a rollout, and no state_file any more
    assert len(applied) == 1


@pytest.mark.parametrize(
    ("previous", "ran_for", "delay"),
    [(0, 0.1, 1), (1, 0.1, 2), (2, 5, 4), (16, 1, 30), (30, 1, 30), (30, 60, 1), (8, 3600, 1)],
)
def test_a_restart_waits_1s_doubling_to_30s_and_1s_again_after_a_good_run(
    previous: float, ran_for: float, delay: float
) -> None:
    assert next_backoff(previous, ran_for) == delay


async def test_a_worker_watcher_that_raises_is_logged_not_lost_in_silence() -> None:
    async def watch() -> None:
        raise RuntimeError("bug in the restart loop")

    task = asyncio.get_running_loop().create_task(watch())
    task.add_done_callback(functools.partial(watch_ended, 1))
    with capture_logs() as logs:
        await asyncio.gather(task, return_exceptions=True)
        await asyncio.sleep(0)  # done-callbacks run on the next turn
    [event] = [e for e in logs if e["event"] == "worker_watch_failed"]
    assert event["worker"] == 1 and "bug in the restart loop" in event["error"]
