"""One worker's settings under ``run --workers N``: the config as loaded, made
right for a process that is one of N behind the same port.

Pure functions of a :class:`Settings`. Budgets that are rates or totals are
divided by N, so the pod as a whole keeps the configured figure: a route's
shadow ``rate_limit`` and ``token_budget``, a comparator's
``max_calls_per_minute`` (the judge's), and the recording directory's
``max_total_size``. A whole-number budget smaller than N gives each worker 1.
Resource bounds (``shadow.max_in_flight``, capture memory, connection pools,
queues) stay per process: each worker has its own memory and sockets.

Under local coordination with more than one worker, a rollout in auto mode
is refused: N controllers, each judging its own share of the evidence, would
move the share apart. So is any rollout without a ``state_file``: a
restarted worker would start from the config's percent while its siblings
keep a share set through the admin API. The same checks guard a reload (see
:func:`loader`). A recording directory too small to give each worker a file
of the minimum size is refused as well.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from proxy.errors import ConfigError
from proxy.recorder import MIN_FILE_SIZE, RecordingSettings
from proxy.settings import ComparatorSpec, Route, Settings, load_settings

BUDGET_OPTION = "max_calls_per_minute"  # a comparator's own rate budget (the judge's)


@dataclass(frozen=True, slots=True)
class WorkerSpec:
    """Who a worker is: its index (0..count-1), how many there are, the port the
    supervisor reserved, and the unix socket its admin app listens on."""

    index: int
    count: int
    port: int
    socket: Path


def share(total: int, count: int) -> int:
    """One worker's part of a whole-number budget: never 0 (which means "none")."""
    return max(1, total // count)


def worker_problems(settings: Settings, count: int) -> list[str]:
    """Why ``settings`` cannot run as ``count`` workers; empty when it can."""
    if count < 2:
        return []
    return [*_local_rollout_problems(settings, count), *_recording_problems(settings, count)]


def _local_rollout_problems(settings: Settings, count: int) -> list[str]:
    if settings.coordination != "local":
        return []
    problems = []
    for i, r in enumerate(settings.routes):
        if r.rollout is None:
            continue
        if r.rollout.mode == "auto":
            problems.append(
                f"routes.{i}.rollout.mode: route {r.name!r} rolls out in auto mode, but with "
                f"--workers {count} and coordination: local each worker would run its own "
                "rollout on its own share of the traffic, and the workers would drift apart; "
                "use rollout.mode: manual, coordination: redis, or one worker"
            )
        if settings.state_file is None:
            problems.append(
                f"routes.{i}.rollout: route {r.name!r} has a rollout, but with --workers "
                f"{count}, coordination: local and no state_file, a restarted worker would "
                "start from the config's percent while the others keep the share set through "
                "the admin API; set state_file, use coordination: redis, or one worker"
            )
    return problems


def _recording_problems(settings: Settings, count: int) -> list[str]:
    recording = settings.recording
    share = recording.max_total_size // count
    if not recording.enabled or share >= MIN_FILE_SIZE:
        return []
    return [
        f"recording.max_total_size: {recording.max_total_size} bytes divided among {count} "
        f"workers leaves each {share}, less than the {MIN_FILE_SIZE} a file needs; raise it "
        "or use fewer workers"
    ]


def divide(settings: Settings, count: int) -> Settings:
    """``settings`` with every rate or total budget divided among ``count`` workers."""
    if count < 2:
        return settings
    update: dict[str, object] = {"routes": tuple(_divide_route(r, count) for r in settings.routes)}
    recording = settings.recording
    if recording.enabled:
        total = recording.max_total_size // count
        # Validated again (pydantic's ValidationError when too small: see
        # worker_problems). The open file counts towards the total and is never deleted.
        update["recording"] = RecordingSettings.model_validate(
            {
                **recording.model_dump(),
                "max_total_size": total,
                "max_file_size": min(recording.max_file_size, total),
            }
        )
    return settings.model_copy(update=update)


def _divide_route(route: Route, count: int) -> Route:
    shadow = route.shadow
    update: dict[str, object] = {}
    if shadow.rate_limit is not None:
        update["rate_limit"] = shadow.rate_limit / count
    if shadow.token_budget is not None:
        update["token_budget"] = share(shadow.token_budget, count)
    return route.model_copy(
        update={
            "shadow": shadow.model_copy(update=update),
            "compare": tuple(_divide_comparator(c, count) for c in route.compare),
        }
    )


def _divide_comparator(spec: ComparatorSpec, count: int) -> ComparatorSpec:
    """A comparator with a calls-per-minute budget gets its part of it; the
    default counts too (a judge without the option has 60 per process)."""
    per_minute = getattr(spec.build(), BUDGET_OPTION, None)
    if not isinstance(per_minute, int):
        return spec
    options = {**spec.options, BUDGET_OPTION: share(per_minute, count)}
    return ComparatorSpec(name=spec.name, **options)


def for_worker(settings: Settings, spec: WorkerSpec, source: str = "<config>") -> Settings:
    """This worker's settings, or :class:`ConfigError` when N workers cannot run them.

    Besides the division: the listener takes the port the supervisor reserved
    (a config's port 0 would give each worker a different one), and a fleet
    replica name set in the config (the Helm chart sets the pod's) gets the
    worker's index, since each worker holds its own place in the lease.
    """
    problems = worker_problems(settings, spec.count)
    if problems:
        raise ConfigError(source, problems)
    out = divide(settings, spec.count)
    update: dict[str, object] = {"listen": out.listen.model_copy(update={"port": spec.port})}
    if out.redis.replica is not None:
        replica = f"{out.redis.replica}-w{spec.index}"
        update["redis"] = out.redis.model_copy(update={"replica": replica})
    return out.model_copy(update=update)


def loader(spec: WorkerSpec) -> Callable[[Path], Settings]:
    """Load a config file as this worker runs it: at start and on every reload,
    so a reload that turns a route to auto under local coordination is
    rejected (the old config stays) like any other invalid file."""

    def load(path: Path) -> Settings:
        return for_worker(load_settings(path), spec, str(path))

    return load
