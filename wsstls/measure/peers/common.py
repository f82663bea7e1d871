"""What every peer echo server shares: the command line, TLS context, CPU pinning, the event
loop, the ready line and a clean stop on SIGINT/SIGTERM.

Each peer script supplies one coroutine, ``start(args, ssl_context) -> Running``, that starts
listening and returns the bound port plus a coroutine that closes the server and its
connections; :func:`run` does the rest.  Nothing but the ready line goes to stdout; one
informational line (library versions, loop, TLS engine) goes to stderr.
"""

from __future__ import annotations

import argparse
import asyncio
import importlib.util
import os
import signal
import ssl
import sys
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

MIB = 1024 * 1024
DEFAULT_MAX_SIZE = 16 * MIB
#: Seconds a stopping server waits for clients to answer its close frame before it aborts
#: the connections that are left.
CLOSE_GRACE = 2.0


@dataclass
class Running:
    """A started peer: the port it listens on and how to stop it (close handshake first)."""

    port: int
    close: Callable[[], Awaitable[None]]


def parse_args(
    description: str,
    *,
    default_loop: str = "uvloop",
    extra: Callable[[argparse.ArgumentParser], None] | None = None,
    argv: list[str] | None = None,
) -> argparse.Namespace:
    """The peers' common command line (``extra`` may add peer-specific options)."""
    p = argparse.ArgumentParser(description=description)
    p.add_argument("--host", default="127.0.0.1", help="address to bind (default 127.0.0.1)")
    p.add_argument("--port", type=int, default=0, help="port to bind, 0 = any free port")
    p.add_argument("--tls", action="store_true", help="serve wss:// (needs --cert and --key)")
    p.add_argument("--cert", help="PEM certificate (chain) file for --tls")
    p.add_argument("--key", help="PEM private key file for --tls")
    p.add_argument(
        "--loop",
        choices=("asyncio", "uvloop"),
        help=f"event loop (default {default_loop}; asyncio when uvloop is not installed)",
    )
    p.add_argument("--cpu", type=int, metavar="N", help="pin the process to CPU N")
    p.add_argument(
        "--max-size",
        type=int,
        default=DEFAULT_MAX_SIZE,
        metavar="BYTES",
        help=f"largest message (or frame) accepted (default {DEFAULT_MAX_SIZE})",
    )
    if extra is not None:
        extra(p)
    args = p.parse_args(argv)
    has_uvloop = importlib.util.find_spec("uvloop") is not None
    if args.loop is None:
        args.loop = default_loop if has_uvloop else "asyncio"
    elif args.loop == "uvloop" and not has_uvloop:
        p.error("--loop uvloop: uvloop is not installed")
    if args.tls and not (args.cert and args.key):
        p.error("--tls needs --cert and --key")
    if (args.cert or args.key) and not args.tls:
        p.error("--cert/--key given without --tls")
    if args.max_size <= 0:
        p.error("--max-size must be positive")
    if args.cpu is not None and args.cpu not in os.sched_getaffinity(0):
        p.error(
            f"--cpu {args.cpu}: not one of the CPUs available {sorted(os.sched_getaffinity(0))}"
        )
    return args


def server_ssl_context(args: argparse.Namespace) -> ssl.SSLContext | None:
    """A stdlib server context (TLS 1.2 or later, the given cert/key), or None without --tls."""
    if not args.tls:
        return None
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    ctx.load_cert_chain(args.cert, args.key)
    return ctx


def pin_cpu(cpu: int | None) -> None:
    if cpu is not None:
        os.sched_setaffinity(0, {cpu})


def new_event_loop(name: str) -> asyncio.AbstractEventLoop:
    if name == "uvloop":
        import uvloop

        return uvloop.new_event_loop()
    return asyncio.new_event_loop()


def url(args: argparse.Namespace, port: int) -> str:
    host = f"[{args.host}]" if ":" in args.host else args.host
    return f"{'wss' if args.tls else 'ws'}://{host}:{port}/"


def info(peer: str, args: argparse.Namespace, detail: str) -> None:
    """One line on stderr saying what runs: peer, library versions, loop, TLS."""
    tls = ssl.OPENSSL_VERSION if args.tls else "off"
    cpu = "" if args.cpu is None else f", cpu {args.cpu}"
    print(
        f"{peer}: {detail}; loop {args.loop}; tls {tls}{cpu}; pid {os.getpid()}",
        file=sys.stderr,
        flush=True,
    )


async def _serve(
    args: argparse.Namespace,
    start: Callable[[argparse.Namespace, ssl.SSLContext | None], Awaitable[Running]],
) -> None:
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    running = await start(args, server_ssl_context(args))
    sys.stdout.write(f"listening on {url(args, running.port)}\n")
    sys.stdout.flush()
    await stop.wait()
    try:
        # The peers bound their own wait for close replies by CLOSE_GRACE; this is a backstop.
        await asyncio.wait_for(running.close(), CLOSE_GRACE + 3.0)
    except asyncio.TimeoutError:
        print("stop: connections did not close in time", file=sys.stderr, flush=True)


def _cancel_leftovers(loop: asyncio.AbstractEventLoop) -> None:
    tasks = [t for t in asyncio.all_tasks(loop) if not t.done()]
    for t in tasks:
        t.cancel()
    if tasks:
        loop.run_until_complete(asyncio.gather(*tasks, return_exceptions=True))


def run(
    args: argparse.Namespace,
    start: Callable[[argparse.Namespace, ssl.SSLContext | None], Awaitable[Running]],
) -> int:
    """Pin, make the loop, start, print the ready line, serve until SIGINT/SIGTERM, stop."""
    pin_cpu(args.cpu)
    loop = new_event_loop(args.loop)
    asyncio.set_event_loop(loop)
    try:
        loop.run_until_complete(_serve(args, start))
        _cancel_leftovers(loop)
        loop.run_until_complete(loop.shutdown_asyncgens())
    finally:
        asyncio.set_event_loop(None)
        loop.close()
    return 0
