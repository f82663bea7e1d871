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


class _Holder:
    """One process's idle connections: one epoll loop, each client a small state machine
    (connect, TLS handshake, send the upgrade, wait for the 101, then held open)."""

    def __init__(self, url: str, timeout: float) -> None:
        u = urlsplit(url)
        self.host = u.hostname or "127.0.0.1"
        self.port = u.port or (443 if u.scheme == "wss" else 80)
        self.authority, self.target = f"{self.host}:{self.port}", u.path or "/"
        self.ctx: ssl.SSLContext | None = None
        if u.scheme == "wss":
            self.ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
            self.ctx.check_hostname = False
            self.ctx.verify_mode = ssl.CERT_NONE
        self.ep = select.epoll()
        self.clients: dict[int, _Client] = {}
        self.result = HoldResult(0, 0)
        self.started = 0
        self.pending = 0  # connections not yet open or failed
        self.deadline = time.monotonic() + timeout

    def connect(self) -> bool:
        """Start one more connection; False when no more can be opened in this process."""
        s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        s.setblocking(False)
        self.started += 1
        try:
            s.connect((self.host, self.port))
        except BlockingIOError:
            pass
        except OSError as exc:
            s.close()
            self.result.failed += 1
            self.result.first_error = self.result.first_error or f"connect: {exc}"
            return exc.errno not in (errno.EMFILE, errno.ENFILE, errno.EADDRNOTAVAIL)
        self.clients[s.fileno()] = _Client(s, ClientConnection(self.authority, self.target))
        self.ep.register(s.fileno(), select.EPOLLOUT)
        self.pending += 1
        return True

    def _remove(self, c: _Client) -> None:
        self.ep.unregister(c.fd)
        del self.clients[c.fd]
        (c.tls or c.sock).close()

    def fail(self, c: _Client, why: str) -> None:
        """A connection that did not open."""
        if not self.result.first_error:
            self.result.first_error = why
        self.result.failed += 1
        self.pending -= 1
        self._remove(c)

    def lost(self, c: _Client) -> None:
        """An open connection that ended (the server closed it, or it broke)."""
        self.result.opened -= 1
        self._remove(c)

    def expire(self) -> None:
        """Fail every connection not open yet (the deadline passed)."""
        for c in [c for c in self.clients.values() if c.state != _OPEN]:
            self.fail(c, "timed out")

    def poll(self, timeout: float) -> None:
        for fd, _ in self.ep.poll(timeout):
            c = self.clients.get(fd)
            if c is not None:
                self.step(c)

    def step(self, c: _Client) -> None:
        """Move ``c`` on as far as its socket allows."""
        try:
            self._step(c)
        except (ssl.SSLWantReadError, ssl.SSLWantWriteError, BlockingIOError):
            return
        except (OSError, ssl.SSLError) as exc:
            if c.state == _OPEN:
                return self.lost(c)
            return self.fail(c, f"{type(exc).__name__}: {exc}")

    def _step(self, c: _Client) -> None:
        if c.state == _CONNECTING:
            err = c.sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
            if err:
                return self.fail(c, f"connect: {os.strerror(err)}")
            if self.ctx is None:
                c.state, c.out = _SEND, bytes(c.ws.data_to_send())
            else:
                c.tls = self.ctx.wrap_socket(c.sock, do_handshake_on_connect=False)
                c.state = _TLS
        if c.state == _TLS:
            assert c.tls is not None
            try:
                c.tls.do_handshake()
            except ssl.SSLWantReadError:
                return self.ep.modify(c.fd, select.EPOLLIN)
            except ssl.SSLWantWriteError:
                return self.ep.modify(c.fd, select.EPOLLOUT)
            c.state, c.out = _SEND, bytes(c.ws.data_to_send())
        io = c.tls or c.sock
        if c.state == _SEND:
            while c.out:
                c.out = c.out[io.send(c.out) :]
            c.state = _RECV
            return self.ep.modify(c.fd, select.EPOLLIN)
        data = io.recv(65536)
        if not data:
            if c.state == _OPEN:
                return self.lost(c)
            return self.fail(c, "closed during the handshake")
        out = _receive(c, data)
        if c.state == _RECV:
            if c.ws.state is State.CLOSED:
                return self.fail(c, f"handshake: {c.ws.error}")
            if c.ws.state is State.CONNECTING:
                return  # the 101's head is not complete yet
            c.state = _OPEN
            self.result.opened += 1
            self.pending -= 1
        if out:
            io.send(out)

    def close(self) -> HoldResult:
        """Close every connection; the result as it was just before."""
        snapshot = HoldResult(self.result.opened, self.result.failed, self.result.first_error)
        for c in list(self.clients.values()):
            (c.tls or c.sock).close()
        self.clients.clear()
        self.ep.close()
        return snapshot


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
    closed.  Returns the result as it was at the end (connections the server closed
    while held are no longer counted as opened).
    """
    h = _Holder(url, timeout)
    announced = False
    try:
        while True:
            while h.started < count and h.pending < concurrency:
                if not h.connect():
                    count = h.started  # no more can be opened here
            if not announced and h.started >= count and h.pending == 0:
                announced = True
                if ready is not None:
                    ready(h.result)
            if announced and (until is None or until()):
                break
            if not announced and time.monotonic() > h.deadline:
                h.expire()
                continue
            h.poll(0.1)
    finally:
        result = h.close()
    return result


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
