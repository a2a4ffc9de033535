"""The ``shadow-proxy`` command: run, check-config, demo, replay, label.

Settings are loaded here, once, and passed down. Exit status 2 means the
config (or the command line) is wrong; the message names the field and why.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import signal
import sys
from collections.abc import Callable, Coroutine, Sequence
from pathlib import Path
from typing import Any

import yaml
from yarl import URL

from proxy import adminclient, logs, snapshot
from proxy.errors import ConfigError
from proxy.golden import Case, CaseError, read_cases
from proxy.reload import fingerprint
from proxy.server import serve
from proxy.settings import Settings, load_settings
from proxy.workerconfig import WorkerSpec, worker_problems
from proxy.workers import WorkerStartError, supervise

EXIT_CONFIG = 2
MAX_WORKERS = 64
# The demo's own configs ship inside the package, so an installed wheel (and the
# image) can run `shadow-proxy demo` too.
DEMO_CONFIG = Path(__file__).resolve().parent / "demo" / "demo.yaml"
DEMO_ROLLOUT_CONFIG = DEMO_CONFIG.with_name("rollout.yaml")


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="shadow-proxy",
        description="Mirror traffic from a legacy service to an AI agent, compare, shift.",
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    run = sub.add_parser("run", help="run the proxy")
    run.add_argument("--config", required=True, type=Path, metavar="FILE")
    run.add_argument("--workers", type=_workers, default=1, metavar="N",
                     help=f"processes sharing the port (1-{MAX_WORKERS}, default 1)")  # fmt: skip
    # Set by the supervisor for each worker it starts; not for users.
    run.add_argument("--worker-index", type=int, help=argparse.SUPPRESS)
    run.add_argument("--worker-port", type=int, help=argparse.SUPPRESS)
    run.add_argument("--worker-socket", type=Path, help=argparse.SUPPRESS)
    run.add_argument("--worker-settings", type=Path, help=argparse.SUPPRESS)

    check = sub.add_parser("check-config", help="validate a config file and print it normalized")
    check.add_argument("file", type=Path, metavar="FILE")

    sub.add_parser("schema", help="print the config file's JSON Schema")

    admin = argparse.ArgumentParser(add_help=False)
    admin.add_argument("--admin", default=adminclient.DEFAULT_URL, metavar="URL",
                       help=f"admin API (default {adminclient.DEFAULT_URL})")  # fmt: skip
    admin.add_argument("--token-file", metavar="FILE",
                       help=f"bearer token file (default: ${adminclient.TOKEN_ENV})")  # fmt: skip
    sub.add_parser("status", parents=[admin], help="show every route's rollout")
    for name, text in (
        ("promote", "move a route to its next step now"),
        ("rollback", "send a route back to shadow (0%%)"),
        ("pause", "freeze a route's share"),
        ("resume", "resume a paused or rolled-back route"),
        ("approve", "approve the step a route is waiting for"),
    ):
        cmd = sub.add_parser(name, parents=[admin], help=text)
        cmd.add_argument("route")
    noise = sub.add_parser("noise", parents=[admin], help="show the noise fields routes learned")
    noise.add_argument("--route", help="one route only")
    noise.add_argument(
        "--yaml", action="store_true", help="print a config snippet freezing them as noise.fields"
    )
    share = sub.add_parser("set-share", parents=[admin], help="set a route's agent share")
    share.add_argument("route")
    share.add_argument("percent", type=float)

    demo = sub.add_parser("demo", help="legacy + agent + proxy + traffic, with a live summary")
    demo.add_argument("--config", type=Path, default=None, metavar="FILE")
    demo.add_argument(
        "--scenario",
        choices=("good", "bad", "flaky"),
        help="the agent takes live traffic: good climbs to 100%%, bad is rolled back,"
        " flaky shows fallbacks and the breaker",
    )
    demo.add_argument("--duration", type=float, default=None, help="seconds (default: until ^C)")
    demo.add_argument("--rate", type=float, default=None, help="requests per second")
    demo.add_argument("--interval", type=float, default=None, help="seconds between summaries")
    demo.add_argument("--port", type=int, default=None, help="proxy port (0: any free port)")
    demo.add_argument("--admin-port", type=int, default=None, help="admin port (0: any)")

    replay = sub.add_parser(
        "replay",
        help="replay recorded cases against an agent and score its answers",
        description="Exit status: 0 when agreement >= threshold, 1 below it,"
        " 2 for bad input or an agent that answered no case.",
    )
    replay.add_argument("files", nargs="+", type=Path, metavar="FILE", help="recorded cases")
    replay.add_argument("--agent", required=True, type=_http_url, metavar="URL")
    replay.add_argument("--config", type=Path, metavar="FILE", help="the proxy config")
    replay.add_argument("--concurrency", type=_bounded(int, 1, 1024), default=8, metavar="N")
    replay.add_argument("--timeout", type=_bounded(float, 0.001, 3600), default=30.0, metavar="S",
                        help="seconds per agent call (default 30)")  # fmt: skip
    replay.add_argument("--threshold", type=_bounded(float, 0, 1), default=0.9,
                        help="minimum agreement for exit status 0 (default 0.9)")  # fmt: skip
    replay.add_argument("--json", type=Path, metavar="OUT", help="write the report as JSON")
    replay.add_argument("--html", type=Path, metavar="OUT", help="write an HTML report")
    replay.add_argument("--route", metavar="NAME", help="replay only this route's cases")

    label = sub.add_parser("label", help="attach a human verdict to one recorded case")
    label.add_argument("file", type=Path, metavar="FILE")
    label.add_argument("id", metavar="ID")
    label.add_argument("--verdict", required=True, choices=("legacy", "agent", "exclude"))
    label.add_argument("--note", default="", metavar="TEXT")
    label.add_argument("--expected-file", type=Path, metavar="F",
                       help="the approved answer's body (JSON or text)")  # fmt: skip
    return parser


def _workers(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        value = 0
    if not 1 <= value <= MAX_WORKERS:
        raise argparse.ArgumentTypeError(
            f"{text!r} is not a whole number of worker processes from 1 to {MAX_WORKERS}"
        )
    return value


def _http_url(text: str) -> str:
    url = URL(text)
    if url.scheme not in ("http", "https") or not url.host:
        raise argparse.ArgumentTypeError(f"{text!r} is not an absolute http:// or https:// URL")
    return text


def _bounded(kind: Callable[[str], float], low: float, high: float) -> Callable[[str], Any]:
    def parse(text: str) -> float:
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
        if not low <= value <= high:
            raise argparse.ArgumentTypeError(f"{text} is not between {low:g} and {high:g}")
        return value

    return parse


def _print_problems(exc: ConfigError) -> None:
    print(f"error: {exc.source} is not a valid config:", file=sys.stderr)
    for problem in exc.problems:
        print(f"  - {problem}", file=sys.stderr)


def _load(path: Path) -> Settings:
    try:
        return load_settings(path)
    except ConfigError as exc:
        _print_problems(exc)
        raise SystemExit(EXIT_CONFIG) from None


def run_async(main: Callable[[asyncio.Event], Coroutine[Any, Any, None]]) -> None:
    """Run ``main(stop)`` on uvloop when available; SIGTERM/SIGINT set ``stop``."""
    loop_factory: Callable[[], asyncio.AbstractEventLoop] | None = None
    with contextlib.suppress(ImportError):
        import uvloop

        loop_factory = uvloop.new_event_loop

    async def wrapper() -> None:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)
        await main(stop)

    with asyncio.Runner(loop_factory=loop_factory) as runner:
        runner.run(wrapper())


def _serve(main: Callable[[asyncio.Event], Coroutine[Any, Any, None]], who: str = "") -> int:
    """:func:`run_async`, with the errors a listener meets as a message and an
    exit status: 2 for the config, 1 for a port in use, a worker's own status."""
    try:
        run_async(main)
    except ConfigError as exc:
        _print_problems(exc)
        return EXIT_CONFIG
    except OSError as exc:
        print(f"error: {who}cannot listen: {exc.strerror or exc}", file=sys.stderr)
        return 1
    except WorkerStartError as exc:
        print(f"error: {exc}; its error is above", file=sys.stderr)
        return exc.code
    return 0


def cmd_run(args: argparse.Namespace) -> int:
    if args.worker_index is not None:
        return _run_worker(args)
    seen = fingerprint(args.config)  # before reading: an edit from now on is news to workers
    settings = _load(args.config)
    problems = worker_problems(settings, args.workers)
    if problems:
        _print_problems(ConfigError(str(args.config), problems))
        return EXIT_CONFIG
    logs.configure(settings.logging, redactor=settings.redaction.redactor())
    if args.workers > 1:
        return _serve(lambda stop: supervise(settings, stop, args.config, args.workers, seen))
    return _serve(lambda stop: serve(settings, stop, args.config))


def _run_worker(args: argparse.Namespace) -> int:
    """One of the processes ``run --workers N`` starts (proxy/workers.py): its
    settings are those its supervisor started with (proxy/snapshot.py)."""
    if None in (args.worker_port, args.worker_socket, args.worker_settings):
        print("error: --worker-index is for the processes run --workers starts", file=sys.stderr)
        return EXIT_CONFIG
    spec = WorkerSpec(args.worker_index, args.workers, args.worker_port, args.worker_socket)
    try:
        settings, seen = snapshot.load(args.worker_settings, spec)
    except ConfigError as exc:
        _print_problems(exc)
        return EXIT_CONFIG
    redactor = settings.redaction.redactor()
    logs.configure(settings.logging, redactor=redactor, fields={"worker": spec.index})
    who = f"worker {spec.index} "
    return _serve(lambda stop: serve(settings, stop, args.config, spec, seen), who)


def cmd_check_config(args: argparse.Namespace) -> int:
    settings = _load(args.file)
    # Nulls stay: some mean "off" (a gate), and the output must load back the same.
    normalized = settings.model_dump(mode="json")
    print(yaml.safe_dump(normalized, sort_keys=False), end="")
    return 0


def cmd_schema(args: argparse.Namespace) -> int:
    print(json.dumps(Settings.model_json_schema(), indent=2))
    return 0


def cmd_demo(args: argparse.Namespace) -> int:
    from proxy.demo.runner import DemoOptions, run_demo

    if args.config is None:
        args.config = DEMO_ROLLOUT_CONFIG if args.scenario else DEMO_CONFIG
    if not args.config.exists():
        print(f"error: demo config {args.config} not found; pass --config FILE", file=sys.stderr)
        return EXIT_CONFIG
    settings = _load(args.config)
    logs.configure(settings.logging, sys.stderr, settings.redaction.redactor())
    options = DemoOptions.from_args(args)
    return _serve(lambda stop: run_demo(settings, options, stop))


def cmd_noise(args: argparse.Namespace) -> int:
    return adminclient.noise(args.admin, args.route, args.yaml)


def cmd_admin(args: argparse.Namespace) -> int:
    try:
        token = adminclient.token_from(args.token_file)
    except OSError as exc:
        print(f"error: cannot read {args.token_file}: {exc.strerror or exc}", file=sys.stderr)
        return EXIT_CONFIG
    route = getattr(args, "route", None)
    percent = getattr(args, "percent", None)
    return adminclient.run(args.command, route, percent, args.admin, token)


def _read_cases(paths: Sequence[Path], route: str | None) -> list[Case]:
    """Every case in every file, or exit 2 naming each bad line."""
    cases: list[Case] = []
    problems: list[CaseError] = []
    for path in paths:
        try:
            cases += read_cases(path, problems)
        except OSError as exc:
            print(f"error: cannot read {path}: {exc.strerror or exc}", file=sys.stderr)
            raise SystemExit(EXIT_CONFIG) from None
    if problems:
        print("error: not valid recorded cases:", file=sys.stderr)
        for problem in problems[:20]:
            print(f"  - {problem}", file=sys.stderr)
        if len(problems) > 20:
            print(f"  ... and {len(problems) - 20} more", file=sys.stderr)
        raise SystemExit(EXIT_CONFIG)
    return [c for c in cases if route is None or c.route == route]


def cmd_replay(args: argparse.Namespace) -> int:
    from tqdm import tqdm

    from proxy.replay import ReplayOptions, replay, scoring_for
    from proxy.report import build_report, render_html, render_text, report_json

    settings = _load(args.config) if args.config is not None else None
    cases = _read_cases(args.files, args.route)
    if not cases:
        where = f" of route {args.route!r}" if args.route else ""
        print(f"error: no cases{where} to replay", file=sys.stderr)
        return EXIT_CONFIG
    if settings is not None:
        known = {r.name for r in settings.routes}
        for name in sorted({c.route for c in cases} - known):
            print(f"warning: route {name!r} is not in {args.config}: comparing with status,"
                  " json", file=sys.stderr)  # fmt: skip
    options = ReplayOptions(args.agent, args.concurrency, args.timeout)
    bar = tqdm(total=len(cases), unit="case", file=sys.stderr, disable=not sys.stderr.isatty())
    try:
        with bar:
            scoring = scoring_for(settings)
            results = asyncio.run(replay(cases, options, scoring, lambda _: bar.update()))
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    report = build_report(results, threshold=args.threshold)
    print(render_text(report), end="")
    try:
        if args.json is not None:
            args.json.write_text(json.dumps(report_json(report), indent=2, default=str) + "\n")
        if args.html is not None:
            args.html.write_text(render_html(report), encoding="utf-8")
    except OSError as exc:
        print(f"error: cannot write the report: {exc.strerror or exc}", file=sys.stderr)
        return EXIT_CONFIG
    if report.unreachable:
        print(f"error: the agent at {args.agent} answered none of the cases; see errors above",
              file=sys.stderr)  # fmt: skip
        return EXIT_CONFIG
    if report.after.agreement is None:
        print("error: no case could be scored (all excluded or skipped)", file=sys.stderr)
        return EXIT_CONFIG
    return 0 if report.passed else 1


def cmd_label(args: argparse.Namespace) -> int:
    from proxy.label import LabelError, body_from_file, label_case

    try:
        body = None if args.expected_file is None else body_from_file(args.expected_file)
        count = label_case(args.file, args.id, args.verdict, note=args.note, expected_body=body)
    except LabelError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    except OSError as exc:
        print(f"error: cannot rewrite {args.file}: {exc.strerror or exc}", file=sys.stderr)
        return 1
    times = "" if count == 1 else f" ({count} lines)"
    print(f"{args.id}: {args.verdict}{times}")
    return 0


COMMANDS = {
    "run": cmd_run,
    "check-config": cmd_check_config,
    "schema": cmd_schema,
    "demo": cmd_demo,
    "replay": cmd_replay,
    "label": cmd_label,
    "noise": cmd_noise,
    **{
        name: cmd_admin
        for name in ("status", "promote", "rollback", "pause", "resume", "approve", "set-share")
    },
}


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    return COMMANDS[args.command](args)


if __name__ == "__main__":
    raise SystemExit(main())
