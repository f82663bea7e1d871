"""WebSocket echo server on picows, in its fastest style: a WSListener that answers each frame
from inside ``on_ws_frame`` with a view of picows's read buffer (no bytes object made).

picows works frame by frame: every data frame (text, binary, continuation) goes back with the
same opcode and FIN bit, so fragmented messages come back fragmented the same way.  Pings are
answered by picows itself (``enable_auto_pong``); a close frame is echoed with the peer's code.

picows uses aiofastnet for its transports when it is installed (its own default): then TLS is
done by OpenSSL directly, on the SSL_CTX of the stdlib ``ssl.SSLContext`` given here, instead
of the loop's ``ssl.MemoryBIO`` path.  ``--aiofastnet off`` forces the loop's own transports.

    python wsstls/measure/peers/picows_echo.py --host 127.0.0.1 --port 0 [--tls --cert F --key F]
        [--loop asyncio|uvloop] [--cpu N] [--max-size BYTES] [--aiofastnet auto|on|off]
        [--reuse-port]

``--reuse-port`` lets several processes share the port (the bench's scaling table runs one
per core, each pinned with ``--cpu``, as picows recommends for using several cores).
"""

from __future__ import annotations

import argparse
import asyncio
import ssl

import common  # sibling module: the script's directory is sys.path[0]
import picows
from picows import WSCloseCode, WSFrame, WSListener, WSMsgType, WSTransport, ws_create_server

try:
    import aiofastnet
except ImportError:  # pragma: no cover - depends on the environment
    aiofastnet = None

_TEXT = WSMsgType.TEXT
_BINARY = WSMsgType.BINARY
_CONTINUATION = WSMsgType.CONTINUATION
_CLOSE = WSMsgType.CLOSE
# picows copies payloads up to this size into its own write buffer before writing; larger
# ones are handed to the transport's writelines() as they are (picows.pyx, WSTransport._send).
_PICOWS_COPY_LIMIT = 8192


class EchoListener(WSListener):
    def __init__(self, live: set[WSTransport], view_always_safe: bool) -> None:
        super().__init__()
        self._transport: WSTransport | None = None
        self._live = live
        # A view into picows's read buffer is only valid during on_ws_frame.  aiofastnet
        # copies such a view if it cannot send it at once; the loops' own transports may
        # keep a reference to it, so there a view is used only where picows copies anyway.
        self._view_always_safe = view_always_safe

    def on_ws_connected(self, transport: WSTransport) -> None:
        self._transport = transport
        self._live.add(transport)

    def on_ws_disconnected(self, transport: WSTransport) -> None:
        self._live.discard(transport)

    # Back-pressure: a client that sends faster than it reads stops being read until the
    # echoes queued for it drain below the transport's low-water mark.
    def pause_writing(self) -> None:
        if self._transport is not None:
            self._transport.underlying_transport.pause_reading()

    def resume_writing(self) -> None:
        if self._transport is not None:
            self._transport.underlying_transport.resume_reading()

    def on_ws_frame(self, transport: WSTransport, frame: WSFrame) -> None:
        msg_type = frame.msg_type
        if msg_type is _BINARY or msg_type is _TEXT or msg_type is _CONTINUATION:
            if self._view_always_safe or frame.payload_size <= _PICOWS_COPY_LIMIT:
                payload = frame.get_payload_as_memoryview()
            else:
                payload = frame.get_payload_as_bytes()
            transport.send(msg_type, payload, frame.fin)
        elif msg_type is _CLOSE:
            # Echo the code and reason as received (picows has validated them), then close
            # the TCP connection once the frame is written; after our own close frame was
            # sent (server shutdown) picows drops this send.
            transport.send(_CLOSE, frame.get_payload_as_bytes())
            transport.disconnect()
        # PING is answered by picows (enable_auto_pong); PONG needs nothing.


def add_options(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--aiofastnet",
        choices=("auto", "on", "off"),
        default="auto",
        help="use aiofastnet transports (auto: if installed, as picows does)",
    )
    p.add_argument(
        "--reuse-port",
        action="store_true",
        help="bind with SO_REUSEPORT: several processes share the port (one per core)",
    )


async def start(args: argparse.Namespace, ssl_context: ssl.SSLContext | None) -> common.Running:
    use_fastnet = args.aiofastnet == "on" or (args.aiofastnet == "auto" and aiofastnet is not None)
    live: set[WSTransport] = set()

    def listener_factory(request: object) -> EchoListener:
        return EchoListener(live, use_fastnet)

    server = await ws_create_server(
        listener_factory,
        args.host,
        args.port,
        ssl=ssl_context,
        max_frame_size=args.max_size,
        enable_auto_pong=True,
        enable_auto_ping=False,
        use_aiofastnet=use_fastnet,
        reuse_port=args.reuse_port or None,
    )

    async def close() -> None:
        server.close()
        conns = list(live)
        for t in conns:
            t.send_close(WSCloseCode.GOING_AWAY, b"server shutdown")
        waits = [asyncio.ensure_future(t.wait_disconnected()) for t in conns]
        if waits:
            # The client's close reply reaches on_ws_frame, which disconnects.
            _, pending = await asyncio.wait(waits, timeout=common.CLOSE_GRACE)
            for fut in pending:
                fut.cancel()
            for t in conns:
                t.disconnect(graceful=False)
        # Connections still in their TLS or HTTP handshake are not WebSockets yet; aiofastnet's
        # server (like asyncio's from 3.13) can abort them, and wait_closed() waits for them.
        abort_clients = getattr(server, "abort_clients", None)
        if abort_clients is not None:
            abort_clients()
        await server.wait_closed()

    engine = "aiofastnet " + aiofastnet.__version__ if use_fastnet else "loop transports"
    common.info("picows_echo", args, f"picows {picows.__version__}, {engine}")
    return common.Running(server.sockets[0].getsockname()[1], close)


def main() -> int:
    args = common.parse_args("picows WebSocket echo server", extra=add_options)
    if args.aiofastnet == "on" and aiofastnet is None:
        raise SystemExit("--aiofastnet on: aiofastnet is not installed")
    return common.run(args, start)


if __name__ == "__main__":
    raise SystemExit(main())
