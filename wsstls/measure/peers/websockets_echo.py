"""WebSocket echo server on the websockets library's asyncio server API
(``websockets.asyncio.server.serve``), written the way its documentation does it: one handler
coroutine per connection, ``async for message in websocket: await websocket.send(message)``.

websockets reassembles fragmented messages and decodes text (str) / binary (bytes); sending
the message back keeps its type.  Pings are answered and the close handshake is done by the
library.  Its keepalive pings are switched off (``ping_interval=None``) so that an idle
benchmark connection carries only the benchmark's frames.

    python wsstls/measure/peers/websockets_echo.py --host 127.0.0.1 --port 0
        [--tls --cert F --key F] [--loop asyncio|uvloop] [--cpu N] [--max-size BYTES]
"""

from __future__ import annotations

import argparse
import asyncio
import ssl

import common  # sibling module: the script's directory is sys.path[0]
import websockets
from websockets.asyncio.server import ServerConnection, serve
from websockets.exceptions import ConnectionClosed


async def echo(websocket: ServerConnection) -> None:
    try:
        async for message in websocket:
            await websocket.send(message)
    except ConnectionClosed:
        pass  # the client went away without a close handshake: nothing to report


async def start(args: argparse.Namespace, ssl_context: ssl.SSLContext | None) -> common.Running:
    server = await serve(
        echo,
        args.host,
        args.port,
        ssl=ssl_context,
        compression=None,
        max_size=args.max_size,
        ping_interval=None,
        close_timeout=common.CLOSE_GRACE,
    )

    async def close() -> None:
        # Stops listening, sends close 1001 on every open connection, waits for the close
        # handshakes (each bounded by close_timeout) and for the handlers.
        server.close(close_connections=True)
        try:
            await asyncio.wait_for(server.wait_closed(), common.CLOSE_GRACE + 0.5)
        except asyncio.TimeoutError:
            # Left: connections still in their opening handshake (they would wait for
            # open_timeout, 10 s) or not answering; stop their tasks, the process is ending.
            for task in list(server.handler_tasks):
                task.cancel()
            await server.wait_closed()

    common.info("websockets_echo", args, f"websockets {websockets.__version__}")
    return common.Running(server.sockets[0].getsockname()[1], close)


def main() -> int:
    return common.run(common.parse_args("websockets WebSocket echo server"), start)


if __name__ == "__main__":
    raise SystemExit(main())
