"""Closed-loop load from ``wrk``, and what its report says.

Errors are parsed and reported, never hidden: socket errors (connect, read,
write, timeout) and responses that are not 2xx or 3xx.
"""

from __future__ import annotations

import re
import shutil
import subprocess
from dataclasses import dataclass

_UNITS = {"us": 1e-6, "ms": 1e-3, "s": 1.0, "m": 60.0, "h": 3600.0}
_DURATION = r"([\d.]+)(us|ms|s|m|h)"


class LoadError(RuntimeError):
    """wrk failed to run or its report could not be read."""


@dataclass(frozen=True)
class WrkResult:
    requests: int
    rps: float
    p50: float  # seconds
    p99: float
    non_2xx: int
    socket_errors: int

    @property
    def errors(self) -> int:
        return self.non_2xx + self.socket_errors


def seconds(value: str, unit: str) -> float:
    return float(value) * _UNITS[unit]


def parse(report: str) -> WrkResult:
    def percentile(p: str) -> float:
        match = re.search(rf"^\s*{p}%\s+{_DURATION}\s*$", report, re.M)
        if match is None:
            raise LoadError(f"no {p}% latency in wrk's report:\n{report}")
        return seconds(match[1], match[2])

    done = re.search(r"^\s*(\d+) requests in", report, re.M)
    rps = re.search(r"^Requests/sec:\s+([\d.]+)", report, re.M)
    if done is None or rps is None:
        raise LoadError(f"unreadable wrk report:\n{report}")
    socket = re.search(
        r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", report
    )
    non_2xx = re.search(r"Non-2xx or 3xx responses: (\d+)", report)
    return WrkResult(
        requests=int(done[1]),
        rps=float(rps[1]),
        p50=percentile("50"),
        p99=percentile("99"),
        non_2xx=int(non_2xx[1]) if non_2xx else 0,
        socket_errors=sum(int(n) for n in socket.groups()) if socket else 0,
    )


def wrk(
    url: str, *, duration: float, connections: int, threads: int = 1, timeout: float = 5.0
) -> WrkResult:
    """``wrk -t{threads} -c{connections} -d{duration}s --latency`` against ``url`` (GET)."""
    binary = shutil.which("wrk")
    if binary is None:
        raise LoadError("wrk not found: run `bash scripts/system-deps.sh`")
    argv = [
        binary,
        f"-t{threads}",
        f"-c{connections}",
        f"-d{max(1, round(duration))}s",
        f"--timeout={timeout:g}s",
        "--latency",
        url,
    ]
    done = subprocess.run(
        argv, capture_output=True, text=True, timeout=duration + timeout + 30, check=False
    )
    if done.returncode != 0:
        raise LoadError(f"wrk exited with {done.returncode}: {done.stderr or done.stdout}")
    return parse(done.stdout)
