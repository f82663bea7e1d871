"""The WebSocket echo server, with the seed report's TLS designs selectable.

One epoll loop per process.  A connection goes TLS handshake -> WebSocket
handshake -> open.  While open, each readable event is one call into C
(``wsecho_pump``): receive, decrypt into the connection's plaintext ring, and
echo every plain data frame straight from the ring.  The first frame that is
not plain (control frames, fragments, oversize, anything invalid) goes to the
sans-IO framer (``wsstls.ws``), which owns the protocol; the fast path
resumes when the framer is between messages again.

Designs (``--mode``), all over the ``ring`` transport when offloading:

``inline``     TLS on the loop thread (the seed's baseline).
``offload``    every message's TLS work dispatched to a thread pool: the loop
               reads the socket into the connection's incoming ring, a worker
               decrypts, frames and encrypts into its outgoing ring, the loop
               sends it (the seed's regressed design).
``batched``    one dispatch per loop iteration carrying every ready
               connection (split over the threads): recommendation 4.
``threshold``  offload only when a read brought at least
               ``offload_threshold`` bytes, inline below (recommendation 2).
``workers=N``  N processes, each its own loop, sharing the port with
               SO_REUSEPORT (recommendation 3).

Backpressure: a connection with output the kernel refused is not read
until that output drains, so its memory stays bounded (rings plus at most
one message assembled by the framer).
"""

from __future__ import annotations

import enum
import errno
import os
import select
import socket
import sys
import time
from collections.abc import Callable
from typing import Any

from .._cdata import TLS_ENDS, EchoStatus, LoopReport
from .._native import ffi, lib
from ..ring import RingBuffer
from ..tls import TLSConnection, TLSContext, TLSError
from ..ws import Message, ServerConnection, State
from .config import Mode, ServerConfig, ServerStats, url

__all__ = ["Server", "listen", "server_context"]


class _Phase(enum.IntEnum):
    TLS = 0
    WS = 1
    OPEN = 2
    CLOSING = 3


_IN = select.EPOLLIN | select.EPOLLRDHUP
_OUT = select.EPOLLOUT
_READ, _ECHO = lib.WSECHO_READ, lib.WSECHO_ECHO
_pump = lib.wsecho_pump


class _Conn:
    """One client: its socket, TLS session, plaintext ring and framer."""

    __slots__ = (
        "c",
        "deadline",
        "echo",
        "events",
        "fd",
        "hot",
        "job",
        "out",
        "phase",
        "plain",
        "plain_r",
        "sock",
        "tls",
        "ws",
    )

    def __init__(self, sock: socket.socket, tls: TLSConnection | None, cfg: ServerConfig) -> None:
        self.sock = sock
        self.fd = sock.fileno()
        self.tls = tls
        self.c = ffi.NULL if tls is None else tls._c
        self.plain = RingBuffer(cfg.ring_capacity, mirrored=True)
        self.plain_r = self.plain._r
        self.ws = ServerConnection(max_size=cfg.max_message, in_place_limit=self.plain.capacity)
        self.echo = ffi.new("struct wsecho *")
        self.echo.max_message = cfg.max_message
        self.echo.fd = self.fd
        self.job: Any = ffi.NULL
        self.phase = _Phase.TLS if tls is not None else _Phase.WS
        self.out = bytearray()  # the framer's output the transport has not taken yet
        self.events = -1  # watched epoll events; -1 before the first watch
        self.hot = False  # served by the C loop
        self.deadline = time.monotonic() + cfg.handshake_timeout


_LOOP_MODE = {
    Mode.INLINE: lib.WSLOOP_INLINE,
    Mode.OFFLOAD: lib.WSLOOP_OFFLOAD,
    Mode.BATCHED: lib.WSLOOP_BATCHED,
    Mode.THRESHOLD: lib.WSLOOP_THRESHOLD,
}


class Server:
    """One process's event loop.  ``serve_forever`` until ``stop()`` or a signal.

    The loop itself is C (csrc/server/wsloop.c): it serves hot connections (open,
    between messages, nothing to send) without coming back here, and reports
    everything else - new connections, handshakes, frames for the framer,
    backpressure, endings - as events that this class handles.
    """

    def __init__(
        self,
        config: ServerConfig,
        context: TLSContext | None = None,
        sock: socket.socket | None = None,
    ) -> None:
        config.check()
        self.cfg = config
        if config.tls and context is None:
            context = server_context(config)
        self.context = context if config.tls else None
        self.listener = sock if sock is not None else listen(config)
        self.listener.setblocking(False)
        self.conns: dict[int, _Conn] = {}
        self.stats = ServerStats()
        self.running = False
        self.caller_io = config.mode is not Mode.INLINE
        self._wake_r, self._wake_w = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
        self.pool: Any = ffi.NULL
        if self.caller_io:
            self.pool = lib.offload_new(config.threads)
            if self.pool == ffi.NULL:
                raise OSError(ffi.errno, f"cannot start {config.threads} offload threads")
        self.loop = lib.wsloop_new(
            _LOOP_MODE[config.mode], self.pool, config.offload_threshold, config.threads
        )
        if self.loop == ffi.NULL:
            lib.offload_free(self.pool)
            raise OSError(ffi.errno, "cannot create the event loop")
        self._events = ffi.new("struct wsloop_event[]", 1024)
        self._again: list[_Conn] = []  # input left in the TLS layer by a bounded read
        for fd in (self.listener.fileno(), self._wake_r):
            self._check(lib.wsloop_watch(self.loop, fd, select.EPOLLIN), "watch")

    @staticmethod
    def _check(result: int, what: str) -> None:
        if result < 0:
            raise OSError(-result, f"wsloop_{what}: {os.strerror(-result)}")

    @property
    def url(self) -> str:
        host, port = self.listener.getsockname()[:2]
        return url(self.cfg.tls, host, port)

    def stop(self) -> None:
        """Ask the loop to finish (safe from a signal handler or another thread)."""
        self.running = False
        try:
            os.write(self._wake_w, b"x")
        except BlockingIOError:
            pass

    # ------------------------------------------------------------- loop

    def serve_forever(self, ready: Callable[[str], None] | None = None) -> ServerStats:
        self.running = True
        if ready is not None:
            ready(self.url)
        listen_fd, wake_fd = self.listener.fileno(), self._wake_r
        conns, events, loop = self.conns, self._events, self.loop
        poll = lib.wsloop_poll
        next_sweep = time.monotonic() + 1.0
        try:
            while self.running:
                n = poll(loop, 0 if self._again else 1000, events, 1024)
                if n < 0:
                    raise OSError(-n, f"epoll: {os.strerror(-n)}")
                for i in range(n):
                    e = events[i]
                    fd = e.fd
                    conn = conns.get(fd)
                    if conn is not None:
                        try:
                            self._event(conn, e.report, e.events, e.echo)
                        except Exception:  # a bug must cost one connection, not all
                            self._internal_error(conn)
                    elif fd == listen_fd:
                        self._accept()
                    elif fd == wake_fd:
                        self._drain_wake()
                if self._again:
                    self._resume()
                now = time.monotonic()
                if now >= next_sweep:
                    self._sweep(now)
                    next_sweep = now + 1.0
        finally:
            self._shutdown()
        return self.stats

    def _resume(self) -> None:
        """Read again for the connections whose input the TLS layer still holds after
        their bounded turn (the socket will not signal it), the others having had theirs."""
        again, self._again = self._again, []
        for conn in again:
            if self.conns.get(conn.fd) is not conn or not self._input_buffered(conn):
                continue
            try:
                self._read_open(conn)
            except (TLSError, OSError):
                self._close(conn)
            except Exception:
                self._internal_error(conn)

    def _drain_wake(self) -> None:
        while True:
            try:
                if not os.read(self._wake_r, 512):
                    return
            except BlockingIOError:
                return

    def _internal_error(self, conn: _Conn) -> None:
        import traceback

        print(f"wsstls serve: internal error on fd {conn.fd}:", file=sys.stderr)
        traceback.print_exc(file=sys.stderr)
        try:
            self._close(conn)
        except Exception:
            self.conns.pop(conn.fd, None)

    def _accept(self) -> None:
        for _ in range(256):
            try:
                sock, _ = self.listener.accept()
            except (BlockingIOError, InterruptedError):
                return
            except OSError as exc:  # EMFILE and friends: keep serving the others
                if exc.errno in (errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM):
                    return
                raise
            sock.setblocking(False)
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            try:
                tls = None
                if self.context is not None:
                    tls = self.context.connection(
                        sock, transport=self.cfg.transport, caller_io=self.caller_io
                    )
                conn = _Conn(sock, tls, self.cfg)
            except (OSError, MemoryError, TLSError) as exc:
                sock.close()
                self._setup_failed(exc)
                continue
            if self.caller_io:
                conn.job = ffi.new("struct offload_job *")
                conn.job.tls, conn.job.plain, conn.job.echo = conn.c, conn.plain_r, conn.echo
                conn.job.id = conn.fd
            self.conns[conn.fd] = conn
            self.stats.connections += 1
            self._watch(conn, _IN)

    _setup_logged = -60.0  # when a failed connection set-up was last logged

    def _setup_failed(self, exc: BaseException) -> None:
        """A connection dropped for want of resources: said on stderr, once a minute."""
        now = time.monotonic()
        if now - self._setup_logged >= 60.0:
            self._setup_logged = now
            print(f"wsstls serve: cannot set up a connection, dropped it: {exc!r} "
                  "(said once a minute)", file=sys.stderr, flush=True)  # fmt: skip

    # ------------------------------------------------------------- events

    def _event(self, conn: _Conn, report: int, events: int, echo: int) -> None:
        try:
            if report == LoopReport.COLD:  # the C loop's hot path stopped: it is ours again
                conn.hot = False
                self._status(conn, echo, _READ | _ECHO)
                if self._input_buffered(conn):
                    self._read_open(conn)
                return
            if events & _OUT:
                self._writable(conn)
            if events & ~_OUT and conn.fd in self.conns:
                self._readable(conn)
        except (TLSError, OSError):
            self._close(conn)

    def _readable(self, conn: _Conn) -> None:
        if conn.phase is _Phase.OPEN:
            self._read_open(conn)
        elif conn.phase is _Phase.TLS:
            self._tls_handshake(conn)
        elif conn.phase is _Phase.WS:
            self._ws_handshake(conn)
        else:  # CLOSING: input is no longer wanted
            self._drop_input(conn)

    def _read_open(self, conn: _Conn) -> None:
        """Read and echo here (the connection is not hot: the framer is mid-message,
        or the fast path is off); again while the TLS layer holds input the socket
        will not signal and the connection can take it."""
        for _ in range(64):  # bounded: the socket is polled again after
            if self.caller_io:
                lib.tls_fill(conn.c)
            got = self._pump(conn, _READ | _ECHO if self._fast(conn) else _READ)
            if got <= 0 or not self._input_buffered(conn):
                return  # (nothing read: what is buffered waits for the socket)
        self._again.append(conn)  # resumed after the next poll

    def _input_buffered(self, conn: _Conn) -> bool:
        """True when input already taken from the socket waits in the TLS layer (the
        socket will not signal it) and this connection, ours and open, can take it."""
        return (
            conn.c != ffi.NULL
            and conn.fd in self.conns
            and not conn.hot
            and conn.phase is _Phase.OPEN
            and not self._output_pending(conn)
            and conn.plain.writable > 0
            and bool(lib.tls_has_pending(conn.c))
        )

    def _writable(self, conn: _Conn) -> None:
        self._flush(conn)
        if conn.phase is _Phase.TLS and not self._output_pending(conn):
            self._tls_handshake(conn)
            return
        if conn.echo.pending_len:  # an echo cut short by backpressure
            self._pump(conn, _ECHO)
            return
        if conn.phase is _Phase.OPEN and len(conn.plain) and conn.ws.fast_path_ok:
            self._pump(conn, _ECHO)  # frames left behind while output was blocked
            return
        self._rearm(conn)

    # -------------------------------------------------------- handshakes

    def _tls_handshake(self, conn: _Conn) -> None:
        tls = conn.tls
        assert tls is not None
        if self.caller_io:
            lib.tls_fill(conn.c)
        done = tls.do_handshake()
        if self.caller_io:
            tls.flush()
        if done:
            conn.phase = _Phase.WS
            self._ws_handshake(conn)
        else:
            self._rearm(conn)

    def _read_plain(self, conn: _Conn) -> int | None:
        """Handshake-time read into the plaintext ring: bytes, None (nothing), 0 (EOF)."""
        if conn.tls is None:
            try:
                return conn.plain.recv_from(conn.sock)
            except (BlockingIOError, BufferError):
                return None
        if self.caller_io:
            lib.tls_fill(conn.c)
        return conn.tls.read_into(conn.plain)

    def _ws_handshake(self, conn: _Conn) -> None:
        if self._read_plain(conn) == 0:
            self._close(conn)
            return
        self._framer(conn)
        if conn.phase is _Phase.WS and conn.ws.state is State.OPEN:
            conn.phase = _Phase.OPEN
            if len(conn.plain):  # frames sent right behind the request
                self._framer(conn)
        if conn.fd in self.conns:
            self._rearm(conn)

    # ------------------------------------------------------- the echo path

    def _fast(self, conn: _Conn) -> bool:
        return self.cfg.fast_path and not conn.out and conn.ws.fast_path_ok

    def _pump(self, conn: _Conn, flags: int) -> int:
        """One wsecho_pump, acted on; returns what its read brought (<= 0: nothing)."""
        status = _pump(conn.c, conn.plain_r, conn.echo, flags)
        got: int = conn.echo.read_status
        if self.caller_io:
            conn.tls.flush()  # type: ignore[union-attr]
        self._status(conn, status, flags)
        return got

    def _status(self, conn: _Conn, status: int, flags: int) -> None:
        """Act on a wsecho_pump result (the connection is cold: it is ours)."""
        if status == EchoStatus.WAIT:
            if not flags & _ECHO and len(conn.plain):
                self._framer(conn)
        elif status == EchoStatus.SLOW:
            ended = conn.echo.read_status in TLS_ENDS  # (read first: the framer's pumps reset it)
            self._framer(conn)
            if ended and conn.phase is _Phase.OPEN and conn.fd in self.conns:
                self._close(conn)  # no more input: the frame the framer waits on never completes
                return
        elif status == EchoStatus.BAD_UTF8:
            conn.plain.reset()  # the frame is garbage now; nothing after it is read
            conn.ws.fail(1007, "invalid UTF-8 in a text message")
            self._send(conn, conn.ws.data_to_send())
            conn.phase = _Phase.CLOSING
        elif status == EchoStatus.ENDED:  # the peer closed (close_notify, EOF) or it broke
            self._close(conn)
            return
        if conn.fd not in self.conns:
            return
        if self._output_pending(conn):
            self._flush(conn)
        self._rearm(conn)  # hot again, or wait to write, or close once drained

    def _framer(self, conn: _Conn) -> None:
        """Run the sans-IO framer over the ring's readable bytes; echo its messages."""
        ws, plain = conn.ws, conn.plain
        while True:
            views = plain.readable_views()  # mirrored: at most one
            if not views:
                return
            n = ws.receive_data(views[0])
            for event in ws.events():
                if type(event) is Message:
                    ws.send_message(event.opcode, event.data)
                    self.stats.messages_slow += 1
                    self.stats.bytes_echoed += len(event.data)
            del views
            plain.consume(n)
            out = ws.data_to_send()
            if out:
                self._send(conn, out)
            if ws.state is State.CLOSED:
                conn.phase = _Phase.CLOSING
                return
            if conn.phase is not _Phase.OPEN or not self._fast(conn) or not len(plain) or n == 0:
                return  # (n == 0: an incomplete frame the framer waits on; it is not plain)
            # Between messages again with bytes left: the fast path takes them.
            status = _pump(conn.c, conn.plain_r, conn.echo, _ECHO)
            if status != EchoStatus.SLOW:
                if self.caller_io:
                    conn.tls.flush()  # type: ignore[union-attr]
                self._status(conn, status, _ECHO)
                return

    # -------------------------------------------------------------- output

    def _send(self, conn: _Conn, data: bytes | bytearray) -> None:
        """The framer's output: to the transport, the rest kept in order."""
        if conn.out:
            conn.out += data
            return
        sent = self._transmit(conn, data)
        if sent < len(data):
            conn.out = bytearray(memoryview(data)[sent:])

    def _flush(self, conn: _Conn) -> None:
        if conn.tls is not None:
            conn.tls.flush()
        if conn.out:
            del conn.out[: self._transmit(conn, conn.out)]

    def _transmit(self, conn: _Conn, data: bytes | bytearray) -> int:
        """Hand bytes to the socket or TLS (and, offloading, on to the socket): the count taken."""
        tls = conn.tls
        if tls is None:
            try:
                return conn.sock.send(data)
            except BlockingIOError:
                return 0
        sent = tls.write(data)
        if self.caller_io:
            tls.flush()
        return sent

    def _output_pending(self, conn: _Conn) -> bool:
        return bool(
            conn.out or conn.echo.pending_len or (conn.tls is not None and conn.tls.pending_out)
        )

    def _watch(self, conn: _Conn, events: int) -> None:
        if events != conn.events or conn.hot:
            self._check(lib.wsloop_watch(self.loop, conn.fd, events), "watch")
            conn.events = events
            conn.hot = False

    def _rearm(self, conn: _Conn) -> None:
        """Hand the connection to the C loop when it can go alone; else read unless
        output is waiting (backpressure), write when it is; close a CLOSING one once
        its output is out."""
        if conn.fd not in self.conns:
            return
        if self._output_pending(conn):
            self._watch(conn, _OUT)
            return
        if conn.phase is _Phase.CLOSING:
            self._close(conn)
        elif conn.phase is _Phase.OPEN and self._fast(conn):
            self._check(
                lib.wsloop_hot(self.loop, conn.fd, conn.c, conn.plain_r, conn.echo, conn.job),
                "hot",
            )
            conn.hot = True
            conn.events = _IN
        else:
            resumed = conn.hot or conn.events != _IN  # reading again after a pause
            self._watch(conn, _IN)
            if resumed and self._input_buffered(conn):
                self._again.append(conn)  # input taken before the pause: no event will come

    def _drop_input(self, conn: _Conn) -> None:
        try:
            if conn.tls is not None:
                if self.caller_io:
                    lib.tls_fill(conn.c)
                if conn.tls.read_into(conn.plain) is not None:
                    conn.plain.reset()
            else:
                conn.plain.reset()
                if conn.plain.recv_from(conn.sock) == 0:
                    self._close(conn)
        except (BlockingIOError, BufferError):
            pass

    # ------------------------------------------------------------ endings

    def _close(self, conn: _Conn) -> None:
        if self.conns.pop(conn.fd, None) is None:
            return
        lib.wsloop_unwatch(self.loop, conn.fd)  # cold connections are never busy
        self.stats.messages_fast += conn.echo.messages
        self.stats.bytes_echoed += conn.echo.bytes
        if conn.tls is not None:
            try:
                conn.tls.shutdown()  # close_notify, best effort
                if self.caller_io:
                    conn.tls.flush()
            except TLSError:
                pass
            self.stats.add_ledger(conn.tls.ledger())
            path = conn.tls.records  # "direct", "openssl", "handover" (no handshake)
            self.stats.records[path] = self.stats.records.get(path, 0) + 1
            conn.tls.close()
        conn.sock.close()
        conn.plain.close()

    def _sweep(self, now: float) -> None:
        for conn in list(self.conns.values()):
            if conn.phase < _Phase.OPEN and now > conn.deadline:
                self._close(conn)  # handshake timeout

    def _shutdown(self) -> None:
        """Close every connection with 1001 (going away), then free the loop and pool."""
        if self.pool != ffi.NULL:
            lib.wsloop_drain(self.loop, 5000)  # every job back: all connections cold
        for conn in list(self.conns.values()):
            conn.hot = False
            if conn.phase is _Phase.OPEN:
                try:
                    conn.ws.send_close(1001, "server shutting down")
                    self._send(conn, conn.ws.data_to_send())
                    self._flush(conn)
                except (TLSError, OSError):
                    pass
            self._close(conn)
        counters = ffi.new("struct wsloop_counters *")
        lib.wsloop_get_counters(self.loop, counters)
        self.stats.loop = {k: getattr(counters, k) for k in ("polls", "hot_events", "reported",
                           "dispatches", "jobs")}  # fmt: skip
        lib.wsloop_free(self.loop)
        lib.offload_free(self.pool)  # joins the workers (NULL: nothing)
        self.stats.cpu_s = _cpu_seconds()
        self.listener.close()
        os.close(self._wake_r)
        os.close(self._wake_w)


def server_context(config: ServerConfig) -> TLSContext:
    """The configured certificate, or a fresh in-memory self-signed one (RSA 2048)."""
    if config.certfile is not None and config.keyfile is not None:
        return TLSContext(
            True, certfile=config.certfile, keyfile=config.keyfile, records=config.records
        )
    return TLSContext.server_self_signed("localhost", records=config.records)


def _cpu_seconds() -> float:
    t = os.times()
    return t.user + t.system


def listen(cfg: ServerConfig, reuse_port: bool = False) -> socket.socket:
    family = socket.AF_INET6 if ":" in cfg.host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    if reuse_port:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    sock.bind((cfg.host, cfg.port))
    sock.listen(cfg.backlog)
    return sock
