"""The collector tuning a running proxy applies once it has started.

It runs in a child interpreter: freezing the test runner's own heap would
change every test that follows."""

import subprocess
import sys

from proxy.server import GC_FIRST_THRESHOLD

PROBE = """
import gc
from proxy.server import settle_heap
junk = [[i] for i in range(1000)]
before = gc.get_freeze_count()
settle_heap()
print(before, gc.get_freeze_count() - before, *gc.get_threshold())
"""


def test_startup_heap_is_frozen_and_first_generation_collects_less_often() -> None:
    out = subprocess.run(
        [sys.executable, "-c", PROBE], capture_output=True, text=True, check=True
    ).stdout
    before, frozen, first, second, third = map(int, out.split())
    assert before == 0
    assert frozen > 1000  # the modules and the junk built before it, at least
    assert (first, second, third) == (GC_FIRST_THRESHOLD, 10, 10)
