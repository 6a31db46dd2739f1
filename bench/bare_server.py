"""Baseline for the API benchmark: a bare aiohttp handler returning a constant GetCallID answer.

Runs with the same runner settings as the gateway (no access log, same parser limits), so the
ratio measures what the gateway's own work costs per request.
"""

from __future__ import annotations

import argparse
import asyncio
import signal

from aiohttp import web

from gateway.api.app import create_runner
from gateway.config import DEFAULT_MAX_CONNECTIONS

BODY = (
    b'<?xml version="1.0" encoding="UTF-8"?>\n<VerbaApi>\n<Response code="0" type="GetCallID"/>\n'
    b"<CallID>a8343631-9f35-4a3a-83f0-9e81592339fb</CallID>\n</VerbaApi>\n"
)


async def constant(request: web.Request) -> web.Response:
    return web.Response(body=BODY, content_type="application/xml", charset="utf-8")


async def serve(host: str, port: int) -> None:
    app = web.Application()
    app.router.add_get("/verba/api", constant)
    runner = create_runner(app, DEFAULT_MAX_CONNECTIONS)
    await runner.setup()
    await web.TCPSite(runner, host, port).start()
    print("ready", flush=True)
    stop = asyncio.Event()
    asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, stop.set)
    await stop.wait()
    await runner.cleanup()


if __name__ == "__main__":
    parser = argparse.ArgumentParser()
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, required=True)
    args = parser.parse_args()
    asyncio.run(serve(args.host, args.port))
