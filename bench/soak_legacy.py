"""The soak's legacy backend: an aiohttp server that never fails.

``python -m bench.soak_legacy --port N``. Every path answers
``soak_answers.legacy_body``; ``.../stream/N`` sends it in pieces a little
apart (chunked). Stopped by SIGTERM.
"""

from __future__ import annotations

import argparse
import asyncio

import uvloop
from aiohttp import web

from bench.procs import LOOPBACK
from bench.soak_answers import STREAM_GAP, legacy_body, legacy_pieces

JSON = "application/json"


async def answer(request: web.Request) -> web.StreamResponse:
    body = await request.read()
    path = request.path
    if "/stream/" not in path:
        return web.Response(body=legacy_body(request.method, path, body), content_type=JSON)
    response = web.StreamResponse(headers={"Content-Type": JSON})
    await response.prepare(request)
    for i, piece in enumerate(legacy_pieces(request.method, path, body)):
        if i:
            await asyncio.sleep(STREAM_GAP)
        await response.write(piece)
    await response.write_eof()
    return response


async def serve(port: int) -> None:
    app = web.Application(client_max_size=16 * 1024 * 1024)
    app.router.add_route("*", "/{tail:.*}", answer)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    await web.TCPSite(runner, LOOPBACK, port, backlog=1024).start()
    await asyncio.Event().wait()  # until SIGTERM ends the process


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.soak_legacy")
    parser.add_argument("--port", type=int, required=True)
    uvloop.run(serve(parser.parse_args().port))


if __name__ == "__main__":
    main()
