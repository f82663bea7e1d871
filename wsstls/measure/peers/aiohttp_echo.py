"""WebSocket echo server on aiohttp's web server: a GET handler (any path) that prepares a
``web.WebSocketResponse`` and sends every message back, ``send_str`` for text and
``send_bytes`` for binary.

aiohttp reassembles fragmented messages and decodes text; it answers pings (``autoping``) and
replies to a close frame (``autoclose``).  No heartbeat, no compression, no access log.  On
stop, an ``on_shutdown`` hook closes the open WebSockets with 1001, as aiohttp's documentation
recommends for long-lived connections.

    python wsstls/measure/peers/aiohttp_echo.py --host 127.0.0.1 --port 0 [--tls --cert F --key F]
        [--loop asyncio|uvloop] [--cpu N] [--max-size BYTES]
"""

from __future__ import annotations

import argparse
import asyncio
import ssl

import aiohttp
import common  # sibling module: the script's directory is sys.path[0]
from aiohttp import WSCloseCode, WSMsgType, web

_TEXT = WSMsgType.TEXT
_BINARY = WSMsgType.BINARY

live_key = web.AppKey("live", set[web.WebSocketResponse])
max_size_key = web.AppKey("max_size", int)


async def echo(request: web.Request) -> web.WebSocketResponse:
    ws = web.WebSocketResponse(
        max_msg_size=request.app[max_size_key],
        compress=False,
        autoping=True,
        autoclose=True,
        heartbeat=None,
        timeout=common.CLOSE_GRACE,  # how long close() waits for the client's close reply
    )
    await ws.prepare(request)
    live = request.app[live_key]
    live.add(ws)
    try:
        async for msg in ws:
            if msg.type is _TEXT:
                await ws.send_str(msg.data)
            elif msg.type is _BINARY:
                await ws.send_bytes(msg.data)
    finally:
        live.discard(ws)
    return ws


async def close_websockets(app: web.Application) -> None:
    conns = list(app[live_key])
    if conns:
        await asyncio.gather(
            *(ws.close(code=WSCloseCode.GOING_AWAY, message=b"server shutdown") for ws in conns),
            return_exceptions=True,
        )


async def start(args: argparse.Namespace, ssl_context: ssl.SSLContext | None) -> common.Running:
    app = web.Application()
    app[live_key] = set()
    # aiohttp refuses a message of exactly max_msg_size bytes (its check is ">="); +1 makes
    # --max-size the largest size accepted, as for the other peers.
    app[max_size_key] = args.max_size + 1
    app.router.add_get("/{tail:.*}", echo)
    app.on_shutdown.append(close_websockets)

    runner = web.AppRunner(
        app, handle_signals=False, access_log=None, shutdown_timeout=common.CLOSE_GRACE
    )
    await runner.setup()
    site = web.TCPSite(runner, args.host, args.port, ssl_context=ssl_context)
    await site.start()
    port = runner.addresses[0][1]

    async def close() -> None:
        await runner.cleanup()  # stop listening, on_shutdown, wait for handlers, clean up

    common.info("aiohttp_echo", args, f"aiohttp {aiohttp.__version__}")
    return common.Running(port, close)


def main() -> int:
    return common.run(common.parse_args("aiohttp WebSocket echo server"), start)


if __name__ == "__main__":
    raise SystemExit(main())
