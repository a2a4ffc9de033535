"""The recorder on a real directory: cases land redacted in JSONL files that
rotate by size and stay bounded in total, matches are sampled, and a slow
disk, a full queue or an unwritable directory never reach the caller."""

from __future__ import annotations

import asyncio
import random
import re
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from functools import partial
from pathlib import Path

import pytest
from pydantic import ValidationError
from structlog.testing import capture_logs

from comparators import Comparison, Verdict
from proxy.golden import Case, read_cases
from proxy.recorder import PREFIX, Outcome, Recorder, RecordingSettings
from proxy.types import Observation

SECRET = "hunter2-Secret-Value"


@dataclass(frozen=True)
class Exchange:  # the fields of proxy.evidence.Exchange a case needs
    route: str = "orders"
    request_id: str = "r"
    trace_id: str | None = None
    method: str = "POST"
    raw_path: str = "/v1/orders"
    served_by: str = "legacy"


def case(n: int, padding: int = 200) -> Case:
    """Case number ``n`` (its id), about ``padding`` bytes larger than bare."""
    body = b'{"password": "%s", "pad": "%s"}' % (SECRET.encode(), b"x" * padding)
    answer = Observation("legacy", 200, {"content-type": "application/json"}, body, 0.01)
    return Case.of(
        Exchange(),
        {"authorization": f"Bearer {SECRET}"},
        body,
        answer,
        answer,
        Comparison(Verdict.MISMATCH, 0.5),
        now=1795341600.0 + n,
        case_id=f"c-{n:016x}",
    )


def settings(directory: Path, **changes: object) -> RecordingSettings:
    return RecordingSettings.model_validate({"enabled": True, "directory": directory, **changes})


def files(directory: Path) -> list[Path]:
    return sorted(directory.glob(f"{PREFIX}*.jsonl"))


def ids(directory: Path) -> list[int]:
    """Case numbers in file-name order, then line order."""
    return [int(c.id[2:], 16) for f in files(directory) for c in read_cases(f)]


@pytest.fixture
def recorders() -> Iterator[Callable[..., Recorder]]:
    """Recorders that are closed after the test even when it fails."""
    made: list[Recorder] = []

    def make(config: RecordingSettings, **kwargs: object) -> Recorder:
        recorder = Recorder(config, **kwargs)  # type: ignore[arg-type]
        made.append(recorder)
        return recorder

    yield make
    for recorder in made:
        recorder.close(5.0)


def test_cases_are_written_redacted_in_order_and_close_drains_the_queue(
    tmp_path: Path, recorders: Callable[..., Recorder]
) -> None:
    seen: list[tuple[Outcome, int]] = []
    recorder = recorders(settings(tmp_path), listener=lambda o, n: seen.append((o, n)))
    for n in range(200):
        assert recorder.offer(case(n) if n % 2 else partial(case, n))  # a case or a builder
    assert recorder.close(5.0) is True
    assert ids(tmp_path) == list(range(200))
    text = b"".join(f.read_bytes() for f in files(tmp_path))
    assert SECRET.encode() not in text
    stats = recorder.stats()
    assert stats.outcomes[Outcome.WRITTEN] == 200
    assert stats.bytes_written == len(text) == sum(n for _, n in seen)
    assert recorder.offer(case(999)) is False  # after close: dropped and counted
    assert recorder.stats().outcomes[Outcome.CLOSED] == 1


def test_files_rotate_before_passing_the_size_limit_and_names_sort_by_time(
    tmp_path: Path, recorders: Callable[..., Recorder]
) -> None:
    limit = 4096
    recorder = recorders(settings(tmp_path, max_file_size=limit, max_total_size="1MiB"))
    for n in range(60):
        recorder.offer(case(n))
    assert recorder.close(5.0)
    written = files(tmp_path)
    assert len(written) > 5
    assert all(0 < f.stat().st_size <= limit for f in written)
    assert ids(tmp_path) == list(range(60))  # file-name order is write order
    assert all(f.name.startswith("cases-2026") for f in written)


def test_the_oldest_files_are_deleted_to_keep_the_total_bounded(
    tmp_path: Path, recorders: Callable[..., Recorder]
) -> None:
    earlier = tmp_path / "cases-20200101T000000.000Z-1-0001.jsonl"  # from an earlier run
    earlier.write_bytes(b"x" * 3000)
    config = settings(tmp_path, max_file_size=2048, max_total_size=8192)
    recorder = recorders(config)
    for n in range(100):
        recorder.offer(case(n))
    assert recorder.close(5.0)
    total = sum(f.stat().st_size for f in files(tmp_path))
    assert total <= 8192
    assert not earlier.exists()
    kept = ids(tmp_path)
    assert kept == list(range(kept[0], 100))  # the newest survive, contiguous
    assert kept[0] > 0
    assert recorder.stats().files_deleted >= 1


def test_a_worker_names_counts_and_deletes_only_its_own_files(
    tmp_path: Path, recorders: Callable[..., Recorder]
) -> None:
    """Under ``run --workers N`` the workers share the directory: worker 0 keeps
    its own share of the total, and never deletes worker 1's files or those of
    one process; its files from an earlier process are its own."""
    sibling = tmp_path / "cases-20200101T000000.000Z-w1-7-0001.jsonl"
    alone = tmp_path / "cases-20200101T000000.000Z-8-0001.jsonl"
    mine = tmp_path / "cases-20200101T000000.000Z-w0-9-0001.jsonl"
    for earlier in (sibling, alone, mine):
        earlier.write_bytes(b"x" * 3000)
    config = settings(tmp_path, max_file_size=2048, max_total_size=8192)
    recorder = recorders(config, worker=0)
    for n in range(100):
        recorder.offer(case(n))
    assert recorder.close(5.0)
    assert sibling.exists() and alone.exists()
    assert not mine.exists()
    own = sorted(tmp_path.glob("cases-*-w0-*.jsonl"))
    assert len(own) > 1
    assert sum(f.stat().st_size for f in own) <= 8192
    assert all(re.fullmatch(r"cases-\d{8}T[\d.]{10}Z-w0-\d+-\d{4}\.jsonl", f.name) for f in own)
    kept = [int(c.id[2:], 16) for f in own for c in read_cases(f)]
    assert kept == list(range(kept[0], 100))


@pytest.mark.parametrize(
    ("verdict", "record_errors", "always"),
    [
        (Verdict.MISMATCH, False, True),
        (Verdict.ERROR, True, True),
        (Verdict.ERROR, False, False),
        (Verdict.SKIPPED, True, False),
    ],
)
def test_mismatches_are_always_recorded_errors_on_request_skips_never(
    tmp_path: Path,
    recorders: Callable[..., Recorder],
    verdict: Verdict,
    record_errors: bool,
    always: bool,
) -> None:
    recorder = recorders(settings(tmp_path, match_percent=0, record_errors=record_errors))
    assert {recorder.wants(verdict) for _ in range(100)} == {always}


@pytest.mark.parametrize("percent", [0.0, 2.5, 50.0, 100.0])
def test_the_share_of_matches_recorded_is_the_configured_percent(
    tmp_path: Path, recorders: Callable[..., Recorder], percent: float
) -> None:
    recorder = recorders(settings(tmp_path, match_percent=percent), rng=random.Random(5))
    draws = 20_000
    chosen = sum(recorder.wants(Verdict.MATCH) for _ in range(draws))
    p = percent / 100
    spread = 4 * (draws * p * (1 - p)) ** 0.5  # four standard deviations
    assert abs(chosen - draws * p) <= spread


async def test_a_full_queue_drops_and_counts_while_the_loop_keeps_running(
    tmp_path: Path, recorders: Callable[..., Recorder]
) -> None:
    release = threading.Event()
    started = threading.Event()

    def stuck() -> Case:  # a writer that cannot make progress (a slow disk)
        started.set()
        release.wait(10)
        return case(0)

    recorder = recorders(settings(tmp_path, queue_size=2))
    assert recorder.offer(stuck)
    await asyncio.to_thread(started.wait, 5)
    ticks = 0

    async def ticker() -> None:
        nonlocal ticks
        while True:
            ticks += 1
            await asyncio.sleep(0)

    task = asyncio.create_task(ticker())
    accepted = [recorder.offer(case(n)) for n in range(1, 11)]
    await asyncio.sleep(0.05)
    assert ticks > 1  # the loop ran on while the writer was stuck
    task.cancel()
    assert accepted == [True, True] + [False] * 8
    assert recorder.stats().outcomes[Outcome.QUEUE_FULL] == 8
    release.set()
    assert await recorder.aclose(5.0)
    assert ids(tmp_path) == [0, 1, 2]


def test_close_gives_up_after_its_timeout_and_counts_what_was_left(
    tmp_path: Path, recorders: Callable[..., Recorder]
) -> None:
    release = threading.Event()
    recorder = recorders(settings(tmp_path))
    recorder.offer(lambda: (release.wait(10), case(0))[1])
    for n in range(1, 4):
        recorder.offer(case(n))
    assert recorder.close(0.05) is False
    release.set()
    assert recorder.close(5.0) is True  # the writer stopped after dropping the rest
    outcomes = recorder.stats().outcomes
    assert (outcomes[Outcome.WRITTEN], outcomes[Outcome.CLOSED]) == (1, 3)


def test_an_unwritable_directory_is_counted_logged_once_and_recovers(
    tmp_path: Path, recorders: Callable[..., Recorder]
) -> None:
    blocker = tmp_path / "not-a-dir"
    blocker.write_text("a file where the directory should be")
    directory = blocker / "cases"
    recorder = recorders(settings(directory))
    with capture_logs() as logs:
        for n in range(5):
            assert recorder.offer(case(n))  # never raised into the caller
        wait_for(lambda: recorder.stats().outcomes[Outcome.WRITE_ERROR] == 5)
        blocker.unlink()
        blocker.mkdir()  # the operator fixed it
        recorder.offer(case(5))
        assert recorder.close(5.0)
    events = [e["event"] for e in logs]
    assert events.count("recording_failed") == 1
    assert events.count("recording_recovered") == 1
    assert ids(directory) == [5]


def test_a_case_that_fails_to_build_is_counted_and_the_next_one_is_written(
    tmp_path: Path, recorders: Callable[..., Recorder]
) -> None:
    recorder = recorders(settings(tmp_path))

    def broken() -> Case:
        raise RuntimeError("bug in the builder")

    with capture_logs():
        recorder.offer(broken)
        recorder.offer(case(1))
        assert recorder.close(5.0)
    assert recorder.stats().outcomes[Outcome.BUILD_ERROR] == 1
    assert ids(tmp_path) == [1]


def test_a_case_larger_than_a_whole_file_is_dropped_not_written(
    tmp_path: Path, recorders: Callable[..., Recorder]
) -> None:
    recorder = recorders(settings(tmp_path, max_file_size=2048, max_body_size="1MiB"))
    recorder.offer(case(0, padding=5000))
    recorder.offer(case(1))
    assert recorder.close(5.0)
    assert recorder.stats().outcomes[Outcome.TOO_LARGE] == 1
    assert ids(tmp_path) == [1]


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"max_file_size": "10MiB", "max_total_size": "1MiB"}, "at least max_file_size"),
        ({"match_percent": 101}, "less than or equal to 100"),
        ({"max_file_size": "12 parsecs"}, "expected a size"),
        ({"queue_size": 0}, "greater than or equal to 1"),
        ({"directroy": "x"}, "Extra inputs are not permitted"),
    ],
)
def test_bad_recording_settings_name_the_field_and_the_reason(
    changes: dict[str, object], message: str
) -> None:
    with pytest.raises(ValidationError, match=message):
        RecordingSettings.model_validate(changes)


def wait_for(condition: Callable[[], bool], timeout: float = 5.0) -> None:
    done = threading.Event()
    for _ in range(int(timeout / 0.01)):
        if condition():
            return
        done.wait(0.01)
    raise AssertionError("condition not reached")
