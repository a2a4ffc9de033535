"""``shadow-proxy status|promote|rollback|pause|resume|approve|set-share``: a
small client for the admin API, for operators at a terminal or in a script.

Standard library only (urllib): it runs before anything else is up, and it
must report a refused connection or a 401 as one clear line, never a trace.
"""

from __future__ import annotations

import json
import os
import sys
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable
from typing import Any, TextIO

DEFAULT_URL = "http://127.0.0.1:9090"
TOKEN_ENV = "SHADOW_PROXY_ADMIN__TOKEN"  # the same variable the proxy itself reads


class AdminError(Exception):
    """The admin API could not be reached or refused the call."""


def call(
    url: str, method: str, path: str, token: str | None, body: Any = None, raw: bool = False
) -> Any:
    data = json.dumps(body).encode() if body is not None else None
    request = urllib.request.Request(url.rstrip("/") + path, data=data, method=method)
    request.add_header("Accept", "application/json")
    if data is not None:
        request.add_header("Content-Type", "application/json")
    if token:
        request.add_header("Authorization", f"Bearer {token}")
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            payload = response.read()
        return payload.decode() if raw else json.loads(payload or b"null")
    except ValueError:  # answered, but not with JSON: not the admin API
        raise AdminError(f"{url} did not answer like the shadow-proxy admin API") from None
    except urllib.error.HTTPError as exc:
        try:
            reason = json.loads(exc.read()).get("reason", exc.reason)
        except (ValueError, AttributeError):
            reason = exc.reason
        raise AdminError(f"{exc.code}: {reason}") from None
    except (urllib.error.URLError, OSError) as exc:
        reason = getattr(exc, "reason", exc)
        raise AdminError(f"cannot reach the admin API at {url}: {reason}") from None


def token_from(token_file: str | None) -> str | None:
    if token_file:
        with open(token_file, encoding="utf-8") as handle:
            return handle.read().strip() or None
    return os.environ.get(TOKEN_ENV) or None


def render_status(data: dict[str, Any], out: TextIO = sys.stdout) -> None:
    routes = data.get("routes", {})
    if not routes:
        print("no route has a rollout configured", file=out)
        return
    for name, route in sorted(routes.items()):
        pending = route.get("pending")
        waiting = (
            f" -> {pending['stage']} {pending['percent']:g}% (needs approval)" if pending else ""
        )
        print(
            f"{name}: {route['stage']} {route['percent']:g}%{waiting}"
            f"  [{route['mode']}, breaker {route['breaker'] or 'off'},"
            f" {route['seconds_in_stage']:g}s in stage]",
            file=out,
        )
        print(f"  reason: {route['reason']}", file=out)
        decision = route.get("last_decision") or {}
        for gate in decision.get("gates", []):
            value = "no data" if gate["value"] is None else f"{gate['value']:.4g}"
            verdict = {True: "ok", False: "FAIL", None: "-"}[gate["ok"]]
            print(f"  {gate['name']:<14} {value:>10}  (threshold {gate['threshold']:g})  {verdict}",
                  file=out)  # fmt: skip


def run(command: str, route: str | None, percent: float | None, url: str, token: str | None) -> int:
    """Exit status: 0 done, 1 refused, unreachable, or nothing happened (a 409)."""

    def act() -> None:
        if command == "status":
            render_status(call(url, "GET", "/rollout", token))
            return
        if command == "set-share":
            result = call(url, "PUT", f"/rollout/{route}/share", token, {"percent": percent})
        else:
            result = call(url, "POST", f"/rollout/{route}/{command}", token)
        decision = result["decision"]
        print(f"{route}: {decision['action']}: {decision['reason']}")

    return _guarded(url, act)


def _guarded(url: str, act: Callable[[], None]) -> int:
    """Run one admin call and its printing: 0 done, 1 refused, unreachable or not the API."""
    try:
        act()
    except AdminError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    except (KeyError, TypeError, AttributeError):
        print(f"error: {url} did not answer like the shadow-proxy admin API", file=sys.stderr)
        return 1
    return 0


def render_noise(data: dict[str, Any], out: TextIO = sys.stdout) -> None:
    routes = data.get("routes", {})
    if not routes:
        print("no route learns noise (routes[].noise.enabled) or has noise fields", file=out)
        return
    for name, route in routes.items():
        print(f"{name}: {route['pairs']} pair(s) compared", file=out)
        for row in route["fields"]:
            rate = "frozen" if row["frozen"] else f"{row['rate']:.1%} of pairs"
            state = "noise" if row["noise"] else "counted"
            print(f"  {row['path']:<40} {state:<8} {rate}", file=out)


def noise(url: str, route: str | None, as_yaml: bool) -> int:
    """Exit status: 0 shown, 1 unreachable or refused."""
    query = urllib.parse.urlencode(
        {k: v for k, v in (("route", route), ("format", "yaml" if as_yaml else None)) if v}
    )
    path = "/noise" + (f"?{query}" if query else "")

    def act() -> None:
        if as_yaml:
            print(call(url, "GET", path, None, raw=True), end="")
        else:
            render_noise(call(url, "GET", path, None))

    return _guarded(url, act)
