"""What the numbers were measured on: the machine and every tool's version."""

from __future__ import annotations

import contextlib
import os
import platform
import re
import shutil
import subprocess
import sys
from importlib import metadata
from pathlib import Path

from bench.nginxconf import nginx_binary


def _read(path: str) -> str:
    try:
        return Path(path).read_text()
    except OSError:
        return ""


def machine() -> dict[str, str | int | float | None]:
    cpu = re.search(r"^model name\s*:\s*(.+)$", _read("/proc/cpuinfo"), re.M)
    mem = re.search(r"^MemTotal:\s+(\d+) kB", _read("/proc/meminfo"), re.M)
    release = re.search(r'^PRETTY_NAME="?([^"\n]+)', _read("/etc/os-release"), re.M)
    return {
        "cpu": cpu[1].strip() if cpu else platform.processor() or None,
        "cores": os.cpu_count(),
        "memory_gib": round(int(mem[1]) / 1024**2, 1) if mem else None,
        "kernel": platform.release(),
        "os": release[1] if release else None,
        "hostname": platform.node(),
    }


def _output(argv: list[str]) -> str:
    with contextlib.suppress(OSError, subprocess.SubprocessError):
        done = subprocess.run(argv, capture_output=True, text=True, timeout=20, check=False)
        return done.stdout + done.stderr
    return ""


def _git(*args: str) -> str:
    return _output(["git", "-C", str(Path(__file__).resolve().parents[1]), *args]).strip()


def versions() -> dict[str, str | None]:
    envoy = re.search(
        r"/(\d+\.\d+\.\d+)/", _output([str(Path(sys.executable).parent / "envoy"), "--version"])
    )
    nginx = None
    with contextlib.suppress(FileNotFoundError):
        nginx = re.search(r"nginx/(\S+)", _output([nginx_binary(), "-v"]))
    wrk = re.search(r"^wrk (\S+)", _output([shutil.which("wrk") or "wrk", "-v"]), re.M)
    commit = _git("rev-parse", "--short", "HEAD")
    dirty = " (with uncommitted changes)" if _git("status", "--porcelain") else ""
    try:
        proxy: str | None = metadata.version("shadow-proxy")
    except metadata.PackageNotFoundError:
        proxy = None
    return {
        "shadow-proxy": f"{proxy} @ {commit}{dirty}" if commit else proxy,
        "python": platform.python_version(),
        "nginx": nginx[1] if nginx else None,
        "envoy": envoy[1] if envoy else None,
        "wrk": wrk[1] if wrk else None,
    }
