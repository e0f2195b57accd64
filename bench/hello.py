"""The floor: aiohttp's hello world, on the event loop `interlock serve` uses.

    python -m bench.hello PORT

`GET /` answers `Hello, world`. No middleware, no access log: what one HTTP request costs
an aiohttp server with nothing else to do. bench.growth measures it with the load client
that drives Interlock, in the same run.
"""

from __future__ import annotations

import asyncio
import sys

from aiohttp import web

from engine.runtime.aio import run


async def hello(request: web.Request) -> web.Response:
    return web.Response(text="Hello, world")


async def main(port: int) -> None:
    app = web.Application()
    app.router.add_get("/", hello)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", port).start()
    try:
        await asyncio.Event().wait()  # until SIGTERM/SIGINT ends the process
    finally:
        await runner.cleanup()


if __name__ == "__main__":
    run(main(int(sys.argv[1])))
