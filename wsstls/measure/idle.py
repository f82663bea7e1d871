"""Hold many idle WebSocket connections open against a server, for density measurements.

``hold(url, count)`` runs in one process with one epoll loop and non-blocking stdlib ``ssl``
sockets: it connects ``count`` clients (at most ``concurrency`` handshakes at a time, so the
server's listen backlog never overflows), completes each TLS and WebSocket handshake, then
keeps the connections open and silent.  Each is a ``wsstls.ws.ClientConnection`` (the
library's handshake and framer): it answers pings with pongs, so a server's keepalive does
not count them as dead.  A process holds at most its file descriptor limit
in connections: ``IdleClients`` spreads a count over several child processes
(``python -m wsstls.measure.idle``) and tells when they are all held.

The child process protocol: one line ``held N FAILED`` on stdout once every connection is
either open or failed, then the connections stay open until stdin reaches its end, then
one line ``closed N`` (the ones still open at the end; the others were closed by the
server) and exit.
"""

from __future__ import annotations

import errno
import os
import select
import socket
import ssl
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from urllib.parse import urlsplit

from ..cliargs import Parser, integer, number
from ..ws import ClientConnection, State

__all__ = ["HoldResult", "IdleClients", "hold"]

_CONNECTING, _TLS, _SEND, _RECV, _OPEN = range(5)


@dataclass
class HoldResult:
    opened: int
    failed: int
    first_error: str = ""


class _Client:
    __slots__ = ("buf", "fd", "out", "sock", "state", "tls", "ws")

    def __init__(self, sock: socket.socket, ws: ClientConnection) -> None:
        self.sock = sock
        self.fd = sock.fileno()
        self.tls: ssl.SSLSocket | None = None
        self.state = _CONNECTING
        self.ws = ws
        self.out = b""
        self.buf = b""  # received bytes the framer has not consumed (an incomplete frame)


def _receive(c: _Client, data: bytes) -> bytes:
    """Feed ``data`` to the client's WebSocket connection; what it has to send back
    (the pongs for the pings it saw)."""
    ws = c.ws
    buf = c.buf + data
    used = ws.receive_data(buf)
    for _ in ws.events():  # a ping is answered as it comes out; nothing else is kept
        pass
    c.buf = buf[used:]
    return bytes(ws.data_to_send())


def hold(
    url: str,
    count: int,
    *,
    concurrency: int = 200,
    timeout: float = 120.0,
    ready: Callable[[HoldResult], None] | None = None,
    until: Callable[[], bool] | None = None,
) -> HoldResult:
    """Open ``count`` idle connections to ``url`` (ws:// or wss://, certificate not checked).

    ``ready(result)`` is called once all are open or failed (within ``timeout`` seconds);
    the connections are then held until ``until()`` returns True (polled every 100 ms), then
    closed.  Returns the result as of ``ready``.
    """
    u = urlsplit(url)
    host, port = u.hostname or "127.0.0.1", u.port or (443 if u.scheme == "wss" else 80)
    ctx: ssl.SSLContext | None = None
    if u.scheme == "wss":
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
        ctx.check_hostname = False
        ctx.verify_mode = ssl.CERT_NONE
    authority, target = f"{host}:{port}", u.path or "/"
    ep = select.epoll()
    clients: dict[int, _Client] = {}
    result = HoldResult(0, 0)
    started = 0
    pending = 0  # connections not yet open or failed
    deadline = time.monotonic() + timeout

    def fail(c: _Client, why: str) -> None:
        nonlocal pending
        if not result.first_error:
            result.first_error = why
        result.failed += 1
        pending -= 1
        ep.unregister(c.fd)
        del clients[c.fd]
        (c.tls or c.sock).close()

    def step(c: _Client, events: int) -> None:
        nonlocal pending
        fd = c.fd
        try:
            if c.state == _CONNECTING:
                err = c.sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
                if err:
                    return fail(c, f"connect: {os.strerror(err)}")
                if ctx is None:
                    c.state, c.out = _SEND, bytes(c.ws.data_to_send())
                else:
                    c.tls = ctx.wrap_socket(c.sock, do_handshake_on_connect=False)
                    c.state = _TLS
            if c.state == _TLS:
                assert c.tls is not None
                try:
                    c.tls.do_handshake()
                except ssl.SSLWantReadError:
                    ep.modify(fd, select.EPOLLIN)
                    return
                except ssl.SSLWantWriteError:
                    ep.modify(fd, select.EPOLLOUT)
                    return
                c.state, c.out = _SEND, bytes(c.ws.data_to_send())
            io = c.tls or c.sock
            if c.state == _SEND:
                while c.out:
                    c.out = c.out[io.send(c.out) :]
                c.state = _RECV
                ep.modify(fd, select.EPOLLIN)
                return
            data = io.recv(65536)
            if not data:
                if c.state == _OPEN:
                    result.opened -= 1
                    ep.unregister(fd)
                    del clients[fd]
                    io.close()
                    return
                return fail(c, "closed during the handshake")
            out = _receive(c, data)
            if c.state == _RECV:
                if c.ws.state is State.CLOSED:
                    return fail(c, f"handshake: {c.ws.error}")
                if c.ws.state is State.CONNECTING:
                    return  # the 101's head is not complete yet
                c.state = _OPEN
                result.opened += 1
                pending -= 1
            if out:
                io.send(out)
        except (ssl.SSLWantReadError, ssl.SSLWantWriteError, BlockingIOError):
            return
        except (OSError, ssl.SSLError) as exc:
            if c.state == _OPEN:
                result.opened -= 1
                ep.unregister(fd)
                del clients[fd]
                (c.tls or c.sock).close()
                return
            return fail(c, f"{type(exc).__name__}: {exc}")

    announced = False
    try:
        while True:
            while started < count and pending < concurrency:
                s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
                s.setblocking(False)
                try:
                    s.connect((host, port))
                except BlockingIOError:
                    pass
                except OSError as exc:
                    s.close()
                    started += 1
                    result.failed += 1
                    result.first_error = result.first_error or f"connect: {exc}"
                    if exc.errno in (errno.EMFILE, errno.ENFILE, errno.EADDRNOTAVAIL):
                        count = started  # no more can be opened here
                    continue
                clients[s.fileno()] = _Client(s, ClientConnection(authority, target))
                ep.register(s.fileno(), select.EPOLLOUT)
                started += 1
                pending += 1
            if not announced and started >= count and pending == 0:
                announced = True
                if ready is not None:
                    ready(result)
            if announced and (until is None or until()):
                break
            if not announced and time.monotonic() > deadline:
                for c in [c for c in clients.values() if c.state != _OPEN]:
                    fail(c, "timed out")
                continue
            for fd, ev in ep.poll(0.1):
                ready_one = clients.get(fd)
                if ready_one is not None:
                    step(ready_one, ev)
    finally:
        snapshot = HoldResult(result.opened, result.failed, result.first_error)
        for c in list(clients.values()):
            (c.tls or c.sock).close()
        ep.close()
    return snapshot


class IdleClients:
    """``count`` idle connections held by child processes (each under the fd limit).

    Use as a context manager; ``opened``/``failed`` are known once it is entered.
    """

    def __init__(
        self, url: str, count: int, *, per_process: int = 9000, timeout: float = 180.0
    ) -> None:
        self.url, self.count, self.timeout = url, count, timeout
        self.per_process = per_process
        self.procs: list[subprocess.Popen[str]] = []
        self.opened = self.failed = 0
        self.errors: list[str] = []

    def __enter__(self) -> IdleClients:
        left = self.count
        try:
            while left > 0:
                n = min(left, self.per_process)
                left -= n
                cmd = [sys.executable, "-m", "wsstls.measure.idle", self.url, str(n)]
                cmd += ["--timeout", str(self.timeout)]
                p = subprocess.Popen(cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
                self.procs.append(p)
                # One process at a time: handshakes are the server's work, not ours.
                line = p.stdout.readline().split() if p.stdout else []
                if len(line) < 3 or line[0] != "held":
                    raise RuntimeError(f"idle client failed to start: {line!r}")
                self.opened += int(line[1])
                self.failed += int(line[2])
                if len(line) > 3:
                    self.errors.append(" ".join(line[3:]))
        except BaseException:
            self.__exit__()
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        for p in self.procs:
            if p.stdin:
                p.stdin.close()
        for p in self.procs:
            try:
                p.wait(30)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait()
            if p.stdout:
                p.stdout.close()
        self.procs = []


def main(argv: Sequence[str] | None = None) -> int:
    p = Parser(prog="python -m wsstls.measure.idle")
    p.add_argument("url")
    p.add_argument("count", type=integer(1, 10_000_000))
    p.add_argument("--timeout", type=number(0, 86400, lo_open=True, unit="seconds"), default=180.0)
    p.add_argument("--concurrency", type=integer(1, 100_000), default=200)
    a = p.parse_args(argv)
    os.set_blocking(0, False)
    stdin_done = False

    def ready(r: HoldResult) -> None:
        print(f"held {r.opened} {r.failed} {r.first_error}".rstrip(), flush=True)

    def until() -> bool:
        nonlocal stdin_done
        if not stdin_done:
            try:
                stdin_done = os.read(0, 4096) == b""
            except BlockingIOError:
                pass
        return stdin_done

    r = hold(a.url, a.count, concurrency=a.concurrency, timeout=a.timeout, ready=ready, until=until)
    print(f"closed {r.opened}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
