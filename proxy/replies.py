"""The answers the proxy gives itself: small JSON bodies, never a stack trace."""

from __future__ import annotations

from typing import Any

import orjson
from aiohttp import web

from proxy.types import Failure


def error_response(
    status: int, error: str, reason: str, backend: str | None = None
) -> web.Response:
    payload: dict[str, Any] = {"error": error, "reason": reason}
    if backend is not None:
        payload["backend"] = backend
    return web.Response(status=status, body=orjson.dumps(payload), content_type="application/json")


def failure_response(failure: Failure, backend: str) -> web.Response:
    error = "gateway_timeout" if failure.status == 504 else "bad_gateway"
    return error_response(failure.status, error, failure.reason, backend)
