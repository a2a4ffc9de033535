"""Serving the proxy app with aiohttp's low-level server: every request goes
straight to the live handler.

The proxy has one catch-all handler, so the application's router, match info
and middleware chain decided nothing on each request, yet cost about a tenth
of a passthrough request's CPU. The application object still carries the
lifecycle (``cleanup_ctx``: pools, shadow drain, controller), started and
stopped exactly as :class:`aiohttp.web.AppRunner` does.
"""

from __future__ import annotations

from typing import Any

from aiohttp import web

from proxy.app import HANDLER


class ProxyRunner(web.BaseRunner):
    """Like ``web.AppRunner(app)``, minus the router."""

    def __init__(
        self,
        app: web.Application,
        *,
        shutdown_timeout: float,
        **server: Any,
    ) -> None:
        super().__init__(handle_signals=False, shutdown_timeout=shutdown_timeout)
        self.app = app
        self._server_options = server

    async def shutdown(self) -> None:
        await self.app.shutdown()

    async def _make_server(self) -> web.Server:
        self.app.on_startup.freeze()
        await self.app.startup()
        self.app.freeze()
        handler = self.app[HANDLER]  # built by the app's cleanup_ctx, at startup
        return web.Server(handler.handle, **self._server_options)

    async def _cleanup_server(self) -> None:
        await self.app.cleanup()
