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

Memory: what can grow with a peer's input - a message assembled by the
framer (charged as its frame headers declare it) and output queued beyond the
rings - is charged to one budget per process (``memory_budget``); a message
that would take more than is left is refused with close code 1013 (Try Again
Later), and the connection only.  The C loop parks idle connections (their
plaintext ring back to its pool, their TLS buffers freed), pings and times
out silent ones, and this class drops an idle connection's framer, so an idle
connection costs its SSL object and a few hundred bytes of Python.  Freed heap
memory goes back to the kernel (``heap_tune``: fixed mmap threshold;
``heap_trim`` after closes and parks).

A connection's life is a state table (``TRANSITIONS``): every change of its
phase goes through ``Server._advance``, the one place that moves it, and
what the connection waits for next (the C loop, input, output, nothing) is
decided in one place too, ``Server._arm``, from its phase and its output.
"Read again while TLS holds input" belongs to the C loop (``wsloop_kick``).
"""

from __future__ import annotations

import dataclasses
import enum
import errno
import os
import select
import socket
import sys
import threading
import time
from collections.abc import Callable
from typing import Any

from .._cdata import EchoStatus, LoopReport, TLSStatus, ffi, handle, lib
from ..ring import RingBuffer
from ..tls import TLSConnection, TLSContext, TLSEOFError, TLSError, crypto_counters
from ..ws import CloseCode, Connection, Message, ServerConnection, Side, State
from .config import Mode, ServerConfig, ServerStats, url

__all__ = ["TRANSITIONS", "Cause", "Phase", "Server", "listen", "server_context"]


class Phase(enum.Enum):
    """Where a connection is in its life."""

    TLS = "TLS handshake"
    WS = "WebSocket handshake"
    OPEN = "open"  # echoing: the C fast path, the framer for the rest
    ENDING = "input ended"  # echo what came before the end, then close once it is sent
    CLOSING = "closing"  # the WebSocket is closed: send what is queued, then close
    CLOSED = "closed"


class Cause(enum.Enum):
    """What moves a connection from one phase to the next."""

    TLS_DONE = "the TLS handshake completed"
    WS_DONE = "the WebSocket handshake completed"
    WS_CLOSED = "the framer closed the WebSocket (close handshake, violation, refused request)"
    INPUT_ENDED = "the peer's stream ended (TLS close_notify, or the end of the TCP stream)"
    DONE = "nothing is left to echo or to send"
    FAILED = "a TLS or socket error, or a bug (internal error)"
    TIMEOUT = "the handshakes took longer than handshake_timeout, or idle_timeout passed"
    NO_MEMORY = "no plaintext ring could be had for it (its input is lost)"
    SHUTDOWN = "the server stops (open connections get a 1001 close frame first)"


_LIVE = [p for p in Phase if p is not Phase.CLOSED]

#: Every move a connection can make: (phase, cause) -> the next phase.  Anything else is
#: a bug, reported as an internal error that costs that connection only.
TRANSITIONS: dict[tuple[Phase, Cause], Phase] = {
    (Phase.TLS, Cause.TLS_DONE): Phase.WS,
    (Phase.TLS, Cause.INPUT_ENDED): Phase.CLOSED,
    (Phase.TLS, Cause.TIMEOUT): Phase.CLOSED,
    (Phase.WS, Cause.WS_DONE): Phase.OPEN,
    (Phase.WS, Cause.WS_CLOSED): Phase.CLOSING,  # a refused request: its HTTP error goes out
    (Phase.WS, Cause.INPUT_ENDED): Phase.CLOSING,
    (Phase.WS, Cause.TIMEOUT): Phase.CLOSED,
    (Phase.OPEN, Cause.WS_CLOSED): Phase.CLOSING,
    (Phase.OPEN, Cause.INPUT_ENDED): Phase.ENDING,
    # Silent for idle_timeout: closed at once (a close frame first, best effort), as a
    # peer that neither sends nor reads would never take a closing connection's output.
    **{(p, Cause.TIMEOUT): Phase.CLOSED for p in (Phase.OPEN, Phase.ENDING, Phase.CLOSING)},
    **{(p, Cause.NO_MEMORY): Phase.CLOSED for p in _LIVE},
    (Phase.ENDING, Cause.WS_CLOSED): Phase.CLOSING,  # a close frame among the last input
    (Phase.ENDING, Cause.DONE): Phase.CLOSED,
    (Phase.CLOSING, Cause.DONE): Phase.CLOSED,
    **{(p, Cause.FAILED): Phase.CLOSED for p in _LIVE},
    **{(p, Cause.SHUTDOWN): Phase.CLOSED for p in _LIVE},
}


_IN = select.EPOLLIN | select.EPOLLRDHUP
_OUT = select.EPOLLOUT
_READ, _ECHO = lib.WSECHO_READ, lib.WSECHO_ECHO
_pump = lib.wsecho_pump


class _Conn:
    """One client: its socket, TLS session, plaintext ring and framer.

    The plaintext ring is the C loop's (``wsloop_plain``) and the framer is made
    again when needed: while the loop serves the connection (hot) this object
    holds neither, so an idle connection costs little here."""

    __slots__ = (
        "_plain",
        "_ws",
        "c",
        "charged",
        "echo",
        "watching",
        "fd",
        "hot",
        "in_place",
        "job",
        "loop",
        "max_message",
        "out",
        "phase",
        "read_more",
        "sock",
        "tls",
    )

    def __init__(
        self, sock: socket.socket, tls: TLSConnection | None, cfg: ServerConfig, loop: Any, cap: int
    ) -> None:
        self.sock = sock
        self.fd = sock.fileno()
        self.tls = tls
        self.c = ffi.NULL if tls is None else handle(tls)
        self.loop = loop
        self.max_message = cfg.max_message
        self.in_place = cap  # the plaintext rings' capacity
        self._plain: RingBuffer | None = None
        self._ws: Connection | None = ServerConnection(max_size=cfg.max_message, in_place_limit=cap)
        self.charged = 0  # bytes of the memory budget this connection holds
        self.echo = ffi.new("struct wsecho *")
        self.echo.max_message = cfg.max_message
        self.echo.fd = self.fd
        self.job: Any = ffi.NULL
        self.phase = Phase.TLS if tls is not None else Phase.WS  # then only _advance moves it
        self.out = bytearray()  # the framer's output the transport has not taken yet
        # The C loop's registration, set by Server._arm (and a COLD report) only:
        self.watching = -1  # the epoll events the loop watches for it; -1 before the first
        self.hot = False  # served by the C loop
        # The last read brought bytes, so what TLS still holds may be whole records
        # (a read that brought nothing leaves an incomplete one: only the socket helps).
        self.read_more = False

    @property
    def plain(self) -> RingBuffer:
        """The plaintext ring (the loop's; taken back from its pool if the connection
        was parked).  Only while the connection is cold."""
        p = self._plain
        if p is None:
            raw = lib.wsloop_plain(self.loop, self.fd)
            if raw == ffi.NULL:
                raise MemoryError("no plaintext ring could be had for the connection")
            p = self._plain = RingBuffer._wrap(raw)
        return p

    @property
    def plain_r(self) -> Any:
        return handle(self.plain)

    @property
    def ws(self) -> Connection:
        """The framer; an open connection's is made again, between messages, if it was
        dropped while the loop served the connection."""
        w = self._ws
        if w is None:
            w = self._ws = Connection(
                Side.SERVER, max_size=self.max_message, in_place_limit=self.in_place
            )
        return w

    def drop_ring(self) -> None:
        """Forget the ring's wrapper (closed: a stale reference raises, it cannot read a
        ring the loop has parked or given to another connection)."""
        if self._plain is not None:
            self._plain.close()
            self._plain = None

    def handed_over(self) -> None:
        """The C loop serves the connection now: its ring may be parked and swapped, and
        the framer, between messages, holds nothing a new one would not."""
        self.drop_ring()
        if self._ws is not None and self._ws.fast_path_ok:
            self._ws = None


#: Plaintext rings the loop keeps for reuse beyond those in use.
RING_SPARES = 64
#: Heap trims: after this many closes and newly parked connections at least, once per
#: sweep (1 s) at most (each walks the heap's free blocks: not for a trickle of them).
TRIM_AFTER = 64


def _ms(seconds: float) -> int:
    return round(seconds * 1000)


def _heap_policy() -> str:
    """WSSTLS_HEAP: ``both`` (default), ``tune`` (fixed thresholds only), ``trim``
    (malloc_trim only) or ``none``; for measuring what each does (bench/memory.py)."""
    policy = os.environ.get("WSSTLS_HEAP", "both")
    if policy not in ("both", "tune", "trim", "none"):
        raise ValueError(f"WSSTLS_HEAP must be both, tune, trim or none, got {policy!r}")
    if policy in ("both", "tune"):
        # Blocks of 128 KiB and more get their own mapping, always: a 16 MiB
        # message's buffer goes back to the kernel when freed, and does not
        # raise glibc's dynamic threshold so that later ones stay in the heap.
        lib.heap_tune(128 * 1024, 128 * 1024)
    return policy


_LOOP_MODE = {
    Mode.INLINE: lib.WSLOOP_INLINE,
    # The pipelined and ASYNC designs run inline on the loop: the crypto pool is
    # inside the cipher, and a paused call waits on its async fd (csrc/server/wsloop.c).
    Mode.ASYNC: lib.WSLOOP_INLINE,
    Mode.PIPELINED: lib.WSLOOP_INLINE,
    Mode.PIPELINED_ASYNC: lib.WSLOOP_INLINE,
    Mode.OFFLOAD: lib.WSLOOP_OFFLOAD,
    Mode.BATCHED: lib.WSLOOP_BATCHED,
    Mode.THRESHOLD: lib.WSLOOP_THRESHOLD,
}


class Server:
    """One process's event loop.  ``serve_forever`` until ``stop()`` or a signal.

    The loop itself is C (csrc/server/wsloop.c): it serves hot connections (open,
    between messages, nothing to send) without coming back here, and reports
    everything else - new connections, handshakes, frames for the framer,
    backpressure, endings - as reports that this class handles: each report ends
    in ``_arm``, and every change of phase goes through ``_advance``.
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
        self.caller_io = config.mode.offloads
        self._wake_r, self._wake_w = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
        self._wake_lock = threading.Lock()
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
        self._check(lib.wsloop_set_rings(self.loop, config.ring_capacity, RING_SPARES), "rings")
        self._check(
            lib.wsloop_set_timers(
                self.loop,
                _ms(config.park_after),
                _ms(config.ping_interval),
                _ms(config.idle_timeout),
            ),
            "timers",
        )
        self.keepalive = bool(config.ping_interval or config.idle_timeout)
        self.handshake_ms = max(1, _ms(config.handshake_timeout))
        # as the pool rounds it: a power of two, at least a page (mirrored)
        page = os.sysconf("SC_PAGESIZE")
        self.ring_capacity = max(1 << (config.ring_capacity - 1).bit_length(), page)
        self.mem_used = 0  # of config.memory_budget: assembled messages, queued output
        self.heap = _heap_policy()
        self._freed = 0  # connections closed since the last heap trim
        self._parked_at_trim = 0
        self._reports = ffi.new("struct wsloop_event[]", 1024)  # what each poll reports
        for fd in (self.listener.fileno(), self._wake_r):
            self._check(lib.wsloop_watch(self.loop, fd, select.EPOLLIN), "watch")
        # What each phase does when its connection is readable.
        self._readers: dict[Phase, Callable[[_Conn], None]] = {
            Phase.TLS: self._tls_handshake,
            Phase.WS: self._ws_handshake,
            Phase.OPEN: self._read_open,
            Phase.ENDING: self._ignore,  # its input has ended
            Phase.CLOSING: self._drop_input,
        }
        # What happens on entering a phase.
        self._entries: dict[Phase, Callable[[_Conn], None]] = {
            Phase.WS: self._ws_handshake,  # the request may have come with the Finished
            Phase.OPEN: self._opened,  # frames may have come right behind the request
            Phase.ENDING: self._consume,
            Phase.CLOSING: self._ignore,
            Phase.CLOSED: self._close,
        }

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
        # Never blocks (a signal handler may run while this thread holds the lock): a
        # stop that finds it taken has nothing to do, the loop is closing or being woken.
        if not self._wake_lock.acquire(blocking=False):
            return
        try:
            if self._wake_w >= 0:  # else the loop has ended (its fds closed, maybe reused)
                os.write(self._wake_w, b"x")
        except BlockingIOError:
            pass
        finally:
            self._wake_lock.release()

    # ------------------------------------------------------------- loop

    def serve_forever(self, ready: Callable[[str], None] | None = None) -> ServerStats:
        self.running = True
        if ready is not None:
            ready(self.url)
        listen_fd, wake_fd = self.listener.fileno(), self._wake_r
        conns, reports, loop = self.conns, self._reports, self.loop
        poll = lib.wsloop_poll
        next_sweep = time.monotonic() + 1.0
        try:
            while self.running:
                n = poll(loop, 1000, reports, 1024)
                if n < 0:
                    raise OSError(-n, f"epoll: {os.strerror(-n)}")
                for i in range(n):
                    e = reports[i]
                    fd = e.fd
                    conn = conns.get(fd)
                    if conn is not None:
                        self._on_report(conn, e.report, e.events, e.echo)
                    elif fd == listen_fd:
                        self._accept()
                    elif fd == wake_fd:
                        self._drain_wake()
                now = time.monotonic()
                if now >= next_sweep:
                    self._sweep(now)
                    next_sweep = now + 1.0
        finally:
            self._shutdown()
        return self.stats

    def _drain_wake(self) -> None:
        while True:
            try:
                if not os.read(self._wake_r, 512):
                    return
            except BlockingIOError:
                return

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
                conn = _Conn(sock, tls, self.cfg, self.loop, self.ring_capacity)
            except (OSError, MemoryError, TLSError) as exc:
                sock.close()
                self._setup_failed(exc)
                continue
            if self.caller_io:
                conn.job = ffi.new("struct offload_job *")  # (the loop sets its ring)
                conn.job.tls, conn.job.echo = conn.c, conn.echo
                conn.job.id = conn.fd
            self.conns[conn.fd] = conn
            self.stats.connections += 1
            self._arm(conn)
            # the handshakes' deadline: reported as WSLOOP_EXPIRED
            self._check(lib.wsloop_timers(self.loop, conn.fd, self.handshake_ms, 0), "timers")

    _setup_logged = -60.0  # when a failed connection set-up was last logged

    def _setup_failed(self, exc: BaseException) -> None:
        """A connection dropped for want of resources: said on stderr, once a minute."""
        now = time.monotonic()
        if now - self._setup_logged >= 60.0:
            self._setup_logged = now
            print(f"wsstls serve: cannot set up a connection, dropped it: {exc!r} "
                  "(said once a minute)", file=sys.stderr, flush=True)  # fmt: skip

    # ------------------------------------------------------- the state table

    def _advance(self, conn: _Conn, cause: Cause) -> None:
        """Move ``conn`` as TRANSITIONS says for ``cause``, then run the new phase's entry."""
        try:
            phase = TRANSITIONS[conn.phase, cause]
        except KeyError:
            raise RuntimeError(f"no transition from {conn.phase} on {cause}") from None
        if phase is conn.phase:
            return
        conn.phase = phase
        entry = self._entries.get(phase)
        if entry is not None:
            entry(conn)

    def _on_report(self, conn: _Conn, report: int, ready: int, echo: int) -> None:
        """One report of the C loop for ``conn`` (``ready``: epoll's readiness bits of a
        READY report, ``echo``: why a COLD one stopped): act on it, then arm it."""
        try:
            if report == LoopReport.COLD:  # the C loop's hot path stopped: it is ours again
                conn.hot = False
                self._after_pump(conn, echo, read=True)
            elif report != LoopReport.READY:  # a timer, or the ring pool: it is ours again
                conn.hot = False
                self._timer(conn, report)
            else:
                if ready & _OUT:
                    self._writable(conn)
                if ready & ~_OUT and conn.phase is not Phase.CLOSED:
                    self._readers[conn.phase](conn)
        except (TLSError, OSError):
            if conn.phase is not Phase.CLOSED:
                self._advance(conn, Cause.FAILED)
        except Exception:  # a bug must cost one connection, not all
            self._internal_error(conn)
        else:
            self._arm(conn)

    def _timer(self, conn: _Conn, report: int) -> None:
        """A keepalive ping is due; or the connection timed out (a handshake's deadline,
        idle_timeout); or a parked one's input came and no ring could be had for it."""
        if report == LoopReport.PING:
            if conn.phase is Phase.OPEN:
                conn.ws.send_ping()
                self._send(conn, conn.ws.data_to_send())
                self.stats.pings += 1
            return
        if report == LoopReport.EXPIRED:
            self.stats.expired += 1
            code, reason, cause = CloseCode.GOING_AWAY, "idle timeout", Cause.TIMEOUT
        else:
            self.stats.refused_memory += 1
            code, reason, cause = CloseCode.TRY_AGAIN_LATER, "out of memory", Cause.NO_MEMORY
        if conn.phase is Phase.OPEN:  # say why, best effort: the peer may be gone
            conn.ws.send_close(code, reason)
            self._send(conn, conn.ws.data_to_send())
        self._advance(conn, cause)

    def _internal_error(self, conn: _Conn) -> None:
        import traceback

        print(f"wsstls serve: internal error on fd {conn.fd}:", file=sys.stderr)
        traceback.print_exc(file=sys.stderr)
        try:
            if conn.phase is not Phase.CLOSED:
                self._advance(conn, Cause.FAILED)
        except Exception:
            self.conns.pop(conn.fd, None)

    def _arm(self, conn: _Conn) -> None:
        """What the connection waits for next, the one place that decides it: output
        to be sent (backpressure: no reading meanwhile), the C loop (open, between
        messages), input; or, for a connection that is ending or closing with nothing
        left to send, its close."""
        phase = conn.phase
        if phase is Phase.CLOSED:
            return
        if self.cfg.mode.asynchronous and self._await_async(conn):
            # An SSL call paused in an ASYNC job: its end decides, not the socket (the
            # loop stopped the socket's events: watched again after)
            conn.watching = -1
            return
        if phase is Phase.ENDING:
            self._consume(conn)  # what is left since the output last blocked
            if conn.phase is not Phase.ENDING:
                return
        if self._output_pending(conn):
            self._watch(conn, _OUT)
        elif phase is Phase.ENDING or phase is Phase.CLOSING:
            self._advance(conn, Cause.DONE)
        elif phase is Phase.OPEN and self._fast(conn):
            # (it serves input TLS holds by itself; its ring is the loop's own, NULL here:
            # the loop may park it and give it another)
            self._check(
                lib.wsloop_hot(self.loop, conn.fd, conn.c, ffi.NULL, conn.echo, conn.job), "hot"
            )
            conn.hot = True
            conn.watching = _IN
            conn.read_more = False
            conn.handed_over()
        else:
            self._watch(conn, _IN)
            if conn.read_more and self._input_buffered(conn):  # no readiness will signal it
                self._check(lib.wsloop_kick(self.loop, conn.fd), "kick")
            conn.read_more = False

    def _watch(self, conn: _Conn, events: int) -> None:
        if events != conn.watching or conn.hot:
            self._check(lib.wsloop_watch(self.loop, conn.fd, events), "watch")
            conn.watching = events
            conn.hot = False

    # -------------------------------------------------------------- input

    def _ignore(self, conn: _Conn) -> None:
        pass

    def _opened(self, conn: _Conn) -> None:
        """Entering OPEN: keepalive instead of the handshakes' deadline; then the frames
        that may have come right behind the request."""
        self._check(lib.wsloop_timers(self.loop, conn.fd, 0, self.keepalive), "timers")
        self._consume(conn)

    def _fill(self, conn: _Conn) -> None:
        """Offload designs: the socket into the TLS layer's incoming ring (this thread's
        job while the connection is ours).  Its end is reported by the TLS read that
        reaches it, after everything before it."""
        if self.caller_io and conn.tls is not None:
            try:
                conn.tls.fill()
            except TLSEOFError:
                pass

    def _await_async(self, conn: _Conn) -> bool:
        """An SSL call of this (Python-driven) connection paused in an ASYNC job: the loop
        reports the connection ready (in, out) when the job is done, and the handlers
        repeat the call.  True when it did."""
        if conn.hot or conn.tls is None or not conn.tls.want_async:
            return False
        self._check(lib.wsloop_async(self.loop, conn.fd, conn.c), "async")
        return True

    def _read_open(self, conn: _Conn) -> None:
        """OPEN and readable, not hot (the framer is mid-message, or the fast path is
        off): receive once (up to a full ring), echo; _arm asks the C loop to come back
        if TLS holds more."""
        self._fill(conn)
        flags = _READ | _ECHO if self._fast(conn) else _READ
        self._after_pump(conn, self._pump(conn, flags), read=True)

    def _input_buffered(self, conn: _Conn) -> bool:
        """True when input already taken from the socket waits in the TLS layer (the
        socket will not signal it) and this connection, ours and open, can take it."""
        return (
            conn.tls is not None
            and conn.phase is Phase.OPEN
            and not conn.hot
            and not self._output_pending(conn)
            and conn.plain.writable > 0
            and conn.tls.has_pending
        )

    def _writable(self, conn: _Conn) -> None:
        self._flush(conn)
        if conn.phase is Phase.TLS:
            if not self._output_pending(conn):
                self._tls_handshake(conn)
        elif conn.echo.pending_len:  # an echo cut short by backpressure
            self._after_pump(conn, self._pump(conn, _ECHO))
        elif conn.phase is Phase.OPEN:
            self._consume(conn)  # frames left behind while output was blocked

    def _drop_input(self, conn: _Conn) -> None:
        """CLOSING: input is no longer wanted."""
        try:
            if conn.tls is not None:
                self._fill(conn)
                if conn.tls.read_into(conn.plain) is not None:
                    conn.plain.reset()
            else:
                conn.plain.reset()
                conn.plain.recv_from(conn.sock)
        except (BlockingIOError, BufferError, TLSEOFError):
            pass

    # -------------------------------------------------------- handshakes

    def _tls_handshake(self, conn: _Conn) -> None:
        tls = conn.tls
        assert tls is not None
        self._fill(conn)
        done = tls.do_handshake()
        if self.caller_io:
            tls.flush()
        if done:
            self._advance(conn, Cause.TLS_DONE)

    def _read_plain(self, conn: _Conn) -> int | None:
        """Handshake-time read into the plaintext ring: bytes, None (nothing), 0 (the end)."""
        if conn.tls is None:
            try:
                return conn.plain.recv_from(conn.sock)
            except (BlockingIOError, BufferError):
                return None
        self._fill(conn)
        try:
            return conn.tls.read_into(conn.plain)
        except TLSEOFError:
            return 0

    def _ws_handshake(self, conn: _Conn) -> None:
        got = self._read_plain(conn)
        self._framer(conn)
        if conn.phase is Phase.WS and conn.ws.state is State.OPEN:
            self._advance(conn, Cause.WS_DONE)
        if got == 0 and (conn.phase is Phase.WS or conn.phase is Phase.OPEN):
            self._advance(conn, Cause.INPUT_ENDED)

    # ------------------------------------------------------- the echo path

    def _fast(self, conn: _Conn) -> bool:
        return self.cfg.fast_path and not conn.out and conn.ws.fast_path_ok

    def _pump(self, conn: _Conn, flags: int) -> int:
        """One wsecho_pump: receive (READ) and echo plain frames (ECHO); its status."""
        status: int = _pump(conn.c, conn.plain_r, conn.echo, flags)
        if self.caller_io:
            conn.tls.flush()  # type: ignore[union-attr]
        return status

    def _after_pump(self, conn: _Conn, status: int, read: bool = False) -> None:
        """Act on how a pump (here or in the C loop; ``read``: one that received) ended."""
        ended = conn.echo.ended  # how the read ended, if it did (the next pump resets it)
        if read:
            conn.read_more = conn.echo.read_status > 0
        if ended == TLSStatus.ERROR:
            self._advance(conn, Cause.FAILED)
            return
        if status == EchoStatus.BAD_UTF8:
            conn.plain.reset()  # the frame is garbage now; nothing after it is read
            conn.ws.fail(1007, "invalid UTF-8 in a text message")
            self._send(conn, conn.ws.data_to_send())
            self._advance(conn, Cause.WS_CLOSED)
            return
        if status == EchoStatus.SLOW or status == EchoStatus.WAIT:
            self._consume(conn)  # the framer's turn (a frame it takes, or no fast path)
        if ended and conn.phase is Phase.OPEN:
            self._advance(conn, Cause.INPUT_ENDED)

    def _consume(self, conn: _Conn) -> None:
        """Echo the complete frames in the plaintext ring, plain ones by the C fast path,
        the others by the framer, until an incomplete frame is left, output waits, or
        the connection is no longer OPEN or ENDING."""
        plain = conn.plain
        while (conn.phase is Phase.OPEN or conn.phase is Phase.ENDING) and len(plain):
            if self._output_pending(conn):
                return  # backpressure: the rest when the output has drained
            if self._fast(conn):
                status = self._pump(conn, _ECHO)
                if status != EchoStatus.SLOW:  # all echoed, or blocked, or failed
                    if status != EchoStatus.WAIT and status != EchoStatus.BLOCKED:
                        self._after_pump(conn, status)
                    return
            if self._framer(conn) == 0:
                return  # an incomplete frame the framer waits on

    def _framer(self, conn: _Conn) -> int:
        """One pass of the sans-IO framer over the ring's readable bytes: echo its
        messages, send its replies.  Returns the bytes it consumed."""
        ws, plain = conn.ws, conn.plain
        views = plain.readable_views()  # mirrored: at most one
        if not views:
            return 0
        n = ws.receive_data(views[0])
        if ws.assembling > conn.charged and not self._charge(conn, refuse=True):
            # The budget is spent by others' messages: this one is refused, not the
            # server (1009 is for a message over --max-message, whatever the load).
            ws.fail(CloseCode.TRY_AGAIN_LATER, "server memory budget spent, try again later")
            self.stats.refused_memory += 1
        for event in ws.events():
            if type(event) is Message:
                size = len(event.data)
                ws.send_message(event.opcode, event.data, take=True)  # assembled: no copy
                self.stats.messages_slow += 1
                self.stats.bytes_echoed += size
        del views
        plain.consume(n)
        out = ws.data_to_send()
        if out:
            self._send(conn, out)
        self._charge(conn)
        if ws.state is State.CLOSED:
            self._advance(conn, Cause.WS_CLOSED)
        return n

    # -------------------------------------------------------------- output

    def _send(self, conn: _Conn, data: bytearray) -> None:
        """The framer's output (ours: data_to_send gives it away): to the transport, the
        rest kept in order, in the same buffer."""
        if conn.out:
            conn.out += data
            return
        sent = self._transmit(conn, data)
        if sent < len(data):
            del data[:sent]  # (CPython moves the start: no copy)
            conn.out = data

    def _charge(self, conn: _Conn, refuse: bool = False) -> bool:
        """Charge the budget with what the connection holds that can grow: its message
        being assembled (as declared so far) and its queued output.  ``refuse``: False,
        charging nothing, when that has grown past what the budget has left."""
        ws = conn._ws
        need = (ws.assembling if ws is not None else 0) + (conn.out.__sizeof__() if conn.out else 0)
        delta = need - conn.charged
        if refuse and delta > 0 and self.mem_used + delta > self.cfg.memory_budget:
            return False
        self.mem_used += delta
        conn.charged = need
        return True

    def _flush(self, conn: _Conn) -> None:
        if conn.tls is not None:
            conn.tls.flush()
        if conn.out:
            del conn.out[: self._transmit(conn, conn.out)]
            if conn.charged:
                self._charge(conn)

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

    # ------------------------------------------------------------ endings

    def _close(self, conn: _Conn) -> None:
        """Entering CLOSED: close_notify (best effort), free everything."""
        if self.conns.pop(conn.fd, None) is None:
            return
        lib.wsloop_unwatch(self.loop, conn.fd)  # cold connections are never busy; (ring back)
        conn.hot = False
        conn.drop_ring()
        conn._ws = None  # its buffers go now, whoever still holds the connection
        conn.out = bytearray()
        self.mem_used -= conn.charged
        conn.charged = 0
        self._freed += 1
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

    def _sweep(self, now: float) -> None:
        """Once a second: give freed heap memory back once enough was freed (closed
        connections, newly parked ones) since the last time.  Timeouts are the C loop's."""
        if self.heap not in ("both", "trim"):
            return
        counters = ffi.new("struct wsloop_counters *")
        lib.wsloop_get_counters(self.loop, counters)
        # Parking frees buffers only as the number parked grows: connections that wake
        # for a moment and park again (a keepalive) free what they just took.
        parked = counters.parked
        freed = self._freed + max(0, parked - self._parked_at_trim)
        if freed >= TRIM_AFTER or (freed and not self.conns):
            lib.heap_trim()
            self.stats.trims += 1
            self._freed = 0
            self._parked_at_trim = parked
        else:
            self._parked_at_trim = min(self._parked_at_trim, parked)

    def _shutdown(self) -> None:
        """Close every connection with 1001 (going away), then free the loop and pool."""
        if self.pool != ffi.NULL:
            lib.wsloop_drain(self.loop, 5000)  # every job back: all connections cold
        for conn in list(self.conns.values()):
            if conn.phase is Phase.OPEN:
                try:
                    conn.ws.send_close(1001, "server shutting down")
                    self._send(conn, conn.ws.data_to_send())
                    self._flush(conn)
                except (TLSError, OSError):
                    pass
            self._advance(conn, Cause.SHUTDOWN)
        counters = ffi.new("struct wsloop_counters *")
        lib.wsloop_get_counters(self.loop, counters)
        self.stats.loop = {k: getattr(counters, k) for k in ("polls", "hot_events", "reported",
                           "dispatches", "jobs", "parks", "unparks", "pings", "scans",
                           "wakes", "async_waits", "async_resumes")}  # fmt: skip
        if self.cfg.mode.asynchronous or self.cfg.mode.pipelined:
            self.stats.crypto = dataclasses.asdict(crypto_counters())
        lib.wsloop_free(self.loop)
        lib.offload_free(self.pool)  # joins the workers (NULL: nothing)
        self.stats.cpu_s = _cpu_seconds()
        self.listener.close()
        with self._wake_lock:  # not while a stop() in another thread writes to it
            wake, self._wake_w = self._wake_w, -1  # stop() from now on: nothing to wake
            os.close(wake)
            os.close(self._wake_r)  # after: a write to a pipe without a reader is EPIPE


def server_context(config: ServerConfig) -> TLSContext:
    """The configured certificate, or a fresh in-memory self-signed one (RSA 2048)."""
    kw = config.context_kwargs()
    if config.certfile is not None and config.keyfile is not None:
        return TLSContext(True, certfile=config.certfile, keyfile=config.keyfile,
                          records=config.record_path, **kw)  # fmt: skip
    return TLSContext.server_self_signed("localhost", records=config.record_path, **kw)


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
