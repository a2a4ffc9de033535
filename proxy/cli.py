"""The ``shadow-proxy`` command: run, check-config, demo.

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

from proxy import adminclient, logs
from proxy.errors import ConfigError
from proxy.server import serve
from proxy.settings import Settings, load_settings

EXIT_CONFIG = 2
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
    return parser


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


def cmd_run(args: argparse.Namespace) -> int:
    settings = _load(args.config)
    logs.configure(settings.logging, redactor=settings.redaction.redactor())
    try:
        run_async(lambda stop: serve(settings, stop, args.config))
    except ConfigError as exc:
        _print_problems(exc)
        return EXIT_CONFIG
    except OSError as exc:
        print(f"error: cannot listen: {exc.strerror or exc}", file=sys.stderr)
        return 1
    return 0


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
    try:
        run_async(lambda stop: run_demo(settings, options, stop))
    except OSError as exc:
        print(f"error: cannot listen: {exc.strerror or exc}", file=sys.stderr)
        return 1
    return 0


def cmd_admin(args: argparse.Namespace) -> int:
    try:
        token = adminclient.token_from(args.token_file)
    except OSError as exc:
        print(f"error: cannot read {args.token_file}: {exc.strerror or exc}", file=sys.stderr)
        return EXIT_CONFIG
    route = getattr(args, "route", None)
    percent = getattr(args, "percent", None)
    return adminclient.run(args.command, route, percent, args.admin, token)


COMMANDS = {
    "run": cmd_run,
    "check-config": cmd_check_config,
    "schema": cmd_schema,
    "demo": cmd_demo,
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
