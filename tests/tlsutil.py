"""Shared helpers for the TLS tests: sockets, certificates, bounded loops, drivers.

Every loop here is bounded in steps and in time: a stuck connection fails the
test with a message saying what was being waited for, it never hangs.  The
deadlines are safety nets, not timing assertions.
"""

from __future__ import annotations

import functools
import os
import select
import socket
import ssl
import threading
import time
from collections import deque
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import trustme

from wsstls.tls import TLSConnection, TLSContext

TRANSPORTS = ("ring", "mem", "pair", "fd")
SANS_IO_TRANSPORTS = ("ring", "mem", "pair")
#: Set by .ci/sanitize: the extension runs under AddressSanitizer + UBSan.
SANITIZED = os.environ.get("WSSTLS_SANITIZED") == "1"
WAIT_S = 20.0
HOST = "localhost"


# ------------------------------------------------------------ bounded loops


def bounded(what: str, max_steps: int = 10_000, seconds: float = WAIT_S) -> Iterator[int]:
    """Step numbers for a loop that must finish (``break``) within both bounds.

    Past either bound the loop raises AssertionError naming ``what``.
    """
    deadline = time.monotonic() + seconds
    for step in range(max_steps):
        if time.monotonic() > deadline:
            raise AssertionError(f"{what}: not done after {seconds} s ({step} steps)")
        yield step
    raise AssertionError(f"{what}: not done after {max_steps} steps")


def wait_readable(sock: Any, what: str, seconds: float = WAIT_S) -> None:
    r, _, _ = select.select([sock], [], [], seconds)
    assert r, f"{what}: not readable after {seconds} s"


# ------------------------------------------------------------------ sockets


def _nonblocking(
    a: socket.socket, b: socket.socket, sndbuf: int | None, rcvbuf: int | None
) -> tuple[socket.socket, socket.socket]:
    for s in (a, b):
        if sndbuf is not None:
            s.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, sndbuf)
        if rcvbuf is not None:
            s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
        s.setblocking(False)
    return a, b


def socketpair(
    sndbuf: int | None = None, rcvbuf: int | None = None
) -> tuple[socket.socket, socket.socket]:
    """A connected non-blocking AF_UNIX stream pair (optionally small buffers)."""
    a, b = socket.socketpair()
    return _nonblocking(a, b, sndbuf, rcvbuf)


def tcp_pair(
    sndbuf: int | None = None, rcvbuf: int | None = None
) -> tuple[socket.socket, socket.socket]:
    """A connected non-blocking TCP pair over 127.0.0.1: (connecting side, accepted side)."""
    with socket.create_server(("127.0.0.1", 0)) as listener:
        a = socket.create_connection(listener.getsockname(), timeout=WAIT_S)
        listener.settimeout(WAIT_S)
        b, _ = listener.accept()
    for s in (a, b):
        s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    return _nonblocking(a, b, sndbuf, rcvbuf)


def close_all(*socks: socket.socket | None) -> None:
    for s in socks:
        if s is not None:
            s.close()


# ------------------------------------------------------------- certificates


@dataclass(frozen=True)
class PKI:
    """A trustme CA with a server leaf (localhost, 127.0.0.1) and a client leaf."""

    ca: trustme.CA
    server: trustme.LeafCert
    client: trustme.LeafCert

    @property
    def ca_pem(self) -> bytes:
        return self.ca.cert_pem.bytes()

    @staticmethod
    def chain(leaf: trustme.LeafCert) -> bytes:
        return b"".join(p.bytes() for p in leaf.cert_chain_pems)

    @staticmethod
    def der(leaf: trustme.LeafCert) -> bytes:
        return ssl.PEM_cert_to_DER_cert(leaf.cert_chain_pems[0].bytes().decode())


@functools.cache
def pki() -> PKI:
    """The shared PKI (ECDSA P-256 keys: fast handshakes)."""
    ca = trustme.CA(key_type=trustme.KeyType.ECDSA)
    return PKI(
        ca,
        ca.issue_cert(HOST, "127.0.0.1", key_type=trustme.KeyType.ECDSA),
        ca.issue_cert("client.example", key_type=trustme.KeyType.ECDSA),
    )


@functools.cache
def other_pki() -> PKI:
    """An unrelated CA with the same names: trusted by nobody here."""
    ca = trustme.CA(key_type=trustme.KeyType.ECDSA)
    return PKI(
        ca,
        ca.issue_cert(HOST, "127.0.0.1", key_type=trustme.KeyType.ECDSA),
        ca.issue_cert("client.example", key_type=trustme.KeyType.ECDSA),
    )


def server_context(p: PKI | None = None, **kwargs: Any) -> TLSContext:
    """A wsstls server context with ``p``'s server certificate (the shared PKI by default)."""
    p = p or pki()
    return TLSContext(True, cert_pem=p.chain(p.server), key_pem=p.server.private_key_pem.bytes(),
                      **kwargs)  # fmt: skip


def client_context(p: PKI | None = None, *, cert: bool = False, **kwargs: Any) -> TLSContext:
    """A verifying wsstls client context trusting ``p``'s CA (with its client cert if asked)."""
    p = p or pki()
    if cert:
        kwargs.update(cert_pem=p.chain(p.client), key_pem=p.client.private_key_pem.bytes())
    kwargs.setdefault("cadata", p.ca_pem)
    return TLSContext(False, **kwargs)


def stdlib_client_context(
    p: PKI | None = None, *, cert: bool = False, alpn: Sequence[str] = ()
) -> ssl.SSLContext:
    p = p or pki()
    ctx = ssl.create_default_context(cadata=p.ca_pem.decode())
    if cert:
        p.client.configure_cert(ctx)
    if alpn:
        ctx.set_alpn_protocols(list(alpn))
    return ctx


def stdlib_server_context(
    p: PKI | None = None, *, verify_client: bool = False, alpn: Sequence[str] = ()
) -> ssl.SSLContext:
    p = p or pki()
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    p.server.configure_cert(ctx)
    if verify_client:
        ctx.verify_mode = ssl.CERT_REQUIRED
        p.ca.configure_trust(ctx)
    if alpn:
        ctx.set_alpn_protocols(list(alpn))
    return ctx


# ----------------------------------------------------------- stdlib peers


class PeerThread(threading.Thread):
    """Runs ``fn()`` in a daemon thread; ``result()`` joins and re-raises its error."""

    def __init__(self, fn: Callable[[], Any]) -> None:
        super().__init__(daemon=True)
        self._fn = fn
        self._value: Any = None
        self._error: BaseException | None = None

    def run(self) -> None:
        try:
            self._value = self._fn()
        except BaseException as exc:
            self._error = exc

    def result(self, seconds: float = WAIT_S) -> Any:
        self.join(seconds)
        assert not self.is_alive(), f"the peer thread is still running after {seconds} s"
        if self._error is not None:
            raise self._error
        return self._value


def recv_exactly(sock: socket.socket | ssl.SSLSocket, n: int) -> bytes:
    """Blocking receive of n bytes (the socket has a timeout); short at EOF."""
    buf = bytearray()
    for _ in bounded("recv_exactly", 1_000_000):
        if len(buf) >= n:
            break
        chunk = sock.recv(min(n - len(buf), 1 << 16))
        if not chunk:
            break
        buf += chunk
    return bytes(buf)


# ------------------------------------------------- wsstls over a socket


class Peer:
    """A TLSConnection over a non-blocking socket: plaintext queued out, received in.

    ``step()`` does whatever is possible without blocking.  A write the
    connection only partly accepted is retried with exactly the remaining
    bytes (what the ``fd`` transport requires).
    """

    def __init__(self, conn: TLSConnection, sock: socket.socket, read_size: int = 65536) -> None:
        self.conn = conn
        self.sock = sock
        self.read_size = read_size
        self.received = bytearray()
        self.peer_closed = False  # close_notify received
        self.sent = 0
        self._out: deque[memoryview] = deque()

    def queue(self, data: bytes | bytearray | memoryview) -> None:
        if len(data):
            self._out.append(memoryview(data))

    @property
    def queued(self) -> int:
        return sum(len(m) for m in self._out)

    @property
    def wants_write(self) -> bool:
        return bool(self._out) or self.conn.pending_out > 0

    def step(self) -> bool:
        """Flush, write, read: True when anything moved."""
        progress = False
        if self.conn.pending_out and self.conn.flush() > 0:
            progress = True
        while self._out:
            head = self._out[0]
            n = self.conn.write(head)
            if n == 0:
                break
            progress = True
            self.sent += n
            if n == len(head):
                self._out.popleft()
            else:
                self._out[0] = head[n:]
        if not self.peer_closed:
            for _ in bounded("Peer.step reads", 100_000):
                data = self.conn.read(self.read_size)
                if data is None:
                    break
                if not data:
                    self.peer_closed = True
                    break
                self.received += data
                progress = True
        return progress


def drive(
    peers: Sequence[Peer],
    until: Callable[[], bool],
    what: str,
    *,
    max_steps: int = 1_000_000,
    seconds: float = WAIT_S,
) -> None:
    """Step ``peers`` (waiting in select() when none moved) until ``until()``."""
    for _ in bounded(what, max_steps, seconds):
        progress = False
        for p in peers:
            progress |= p.step()
        if until():
            return
        if not progress:
            r = [p.sock for p in peers if not p.peer_closed]
            w = [p.sock for p in peers if p.wants_write]
            select.select(r, w, [], 0.05)


def handshake(
    conns: Sequence[TLSConnection], socks: Sequence[socket.socket], what: str = "handshake"
) -> None:
    """Drive the handshakes of connections over non-blocking sockets to completion."""
    done = [False] * len(conns)
    for _ in bounded(what, 10_000):
        for i, c in enumerate(conns):
            if not done[i]:
                done[i] = c.do_handshake()
            elif not all(done):
                # Finished first (a TLS 1.3 client): read what the peer still
                # sends (tickets), or with small buffers it can never finish.
                data = c.read()
                assert data is None, f"{what}: application data {data!r} during the handshake"
            if c.pending_out:
                c.flush()
        if all(done):
            return
        w = [s for s, c in zip(socks, conns, strict=True) if c.pending_out]
        select.select(list(socks), w, [], 0.05)


def socket_session(
    transport: str,
    server_ctx: TLSContext | None = None,
    client_ctx: TLSContext | None = None,
    *,
    pair: Callable[[], tuple[socket.socket, socket.socket]] = socketpair,
    **conn_kwargs: Any,
) -> tuple[Peer, Peer]:
    """A handshaken (client, server) pair of Peers over a fresh socket pair."""
    server_ctx = server_ctx or server_context()
    client_ctx = client_ctx or client_context()
    cs, ss = pair()
    try:
        c = client_ctx.connection(cs, transport=transport, server_hostname=HOST, **conn_kwargs)
        s = server_ctx.connection(ss, transport=transport, **conn_kwargs)
        handshake([c, s], [cs, ss])
    except BaseException:
        close_all(cs, ss)
        raise
    return Peer(c, cs), Peer(s, ss)


# ------------------------------------------------------------------ sans-IO


class Link:
    """Ciphertext from one sans-IO connection to another, keeping what feed() refused."""

    def __init__(self, src: TLSConnection, dst: TLSConnection) -> None:
        self.src, self.dst = src, dst
        self.backlog = bytearray()

    def move(self, take: int = -1, feed: int | None = None) -> int:
        """take() up to ``take`` bytes, feed() up to ``feed`` of the backlog: bytes fed."""
        self.backlog += self.src.take(take)
        chunk = self.backlog if feed is None else self.backlog[:feed]
        n = self.dst.feed(chunk) if chunk else 0
        assert 0 <= n <= len(chunk)
        del self.backlog[:n]
        return n


def handshake_sansio(client: TLSConnection, server: TLSConnection) -> tuple[Link, Link]:
    """Complete a sans-IO handshake; returns the (client->server, server->client) links."""
    up, down = Link(client, server), Link(server, client)
    done_c = done_s = False
    for _ in bounded("sans-IO handshake", 1_000):
        if not done_c:
            done_c = client.do_handshake()
        up.move()
        if not done_s:
            done_s = server.do_handshake()
        down.move()
        if done_c and done_s:  # a backlog (say, TLS 1.3 tickets) waits for reads
            return up, down
    raise AssertionError("unreachable")


def sansio_session(
    transport: str,
    server_ctx: TLSContext | None = None,
    client_ctx: TLSContext | None = None,
    **conn_kwargs: Any,
) -> tuple[TLSConnection, TLSConnection, Link, Link]:
    """A handshaken sans-IO (client, server, client->server link, server->client link)."""
    server_ctx = server_ctx or server_context()
    client_ctx = client_ctx or client_context()
    c = client_ctx.connection(transport=transport, server_hostname=HOST, **conn_kwargs)
    s = server_ctx.connection(transport=transport, **conn_kwargs)
    up, down = handshake_sansio(c, s)
    return c, s, up, down
