"""Ways of moving a message through TLS, each a client and a server end over a socketpair.

Used by the copy ledger (wsstls.measure.ledger) and the TLS benchmark
(bench/tls_bench.py) so both measure exactly the same code:

``ring``, ``mem``, ``pair``, ``fd``   wsstls TLSConnection over that transport;
``direct``                            ``ring`` with wsstls's own TLS 1.3 records after the
                                      handshake (``records="direct"``);
``ring-via-ring``                     ``ring`` with every byte through its rings (no
                                      direct readv/send: the design it replaces);
``ring-no-readahead``                 ``ring`` with OpenSSL's read-ahead off;
``fd-readahead``                      ``fd`` with read-ahead on;
``stdlib-socket``                     ``ssl.SSLSocket`` (OpenSSL on the socket);
``stdlib-memorybio``                  ``ssl.SSLObject`` over two ``ssl.MemoryBIO``,
                                      pumped by hand as asyncio does.

Every end is non-blocking and every wait is bounded (5 s without progress
raises TimeoutError).  One thread drives both ends: messages must fit the
socket buffers, which a 16 KiB message on a socketpair does.
"""

from __future__ import annotations

import os
import select
import socket
import ssl
import tempfile

from ..ring import RingBuffer
from ..tls import SelfSigned, TLSConnection, TLSContext

__all__ = ["PATHS", "VARIANTS", "MessagePath", "make_path"]

PATHS = ("ring", "mem", "pair", "fd", "direct", "stdlib-socket", "stdlib-memorybio")
#: Variants of the ring BIO's design (and fd's best case), measured beside it.
VARIANTS: dict[str, tuple[str, dict[str, bool]]] = {
    "ring-via-ring": ("ring", {"via_ring": True}),
    "ring-no-readahead": ("ring", {"read_ahead": False}),
    "fd-readahead": ("fd", {"read_ahead": True}),
}
_LOOPS = 10_000


def _wait(sock: socket.socket, write: bool = False) -> None:
    r, w, _ = select.select([] if write else [sock], [sock] if write else [], [], 5.0)
    if not (r or w):
        raise TimeoutError("no progress in 5 s")


def _handshake(step: object, socks: list[socket.socket]) -> None:
    for _ in range(_LOOPS):
        if step():  # type: ignore[operator]
            return
        select.select(socks, [], [], 0.01)
    raise TimeoutError("the handshake did not finish")


class MessagePath:
    """A client end and a server end; each method moves one message one way."""

    name = ""

    def client_send(self, msg: bytes) -> None:
        raise NotImplementedError

    def server_recv(self, n: int) -> None:
        raise NotImplementedError

    def server_echo(self, n: int) -> None:
        """Receive ``n`` bytes on the server and send them back."""
        raise NotImplementedError

    def client_recv(self, n: int) -> None:
        raise NotImplementedError

    def round_trip(self, msg: bytes) -> None:
        self.client_send(msg)
        self.server_echo(len(msg))
        self.client_recv(len(msg))

    def ledger(self) -> dict[str, int] | None:
        """wsstls's own counters (client sending, server receiving), or None."""
        return None

    def reset_ledger(self) -> None:
        pass

    def close(self) -> None:
        pass


# -------------------------------------------------------------------- wsstls


class _Wsstls(MessagePath):
    def __init__(
        self,
        name: str,
        transport: str,
        cert: SelfSigned,
        capacity: int,
        records: str = "openssl",
        read_ahead: bool | None = None,
        via_ring: bool = False,
    ) -> None:
        self.name = f"wsstls {name}"
        self.a, self.b = socket.socketpair()
        for s in (self.a, self.b):
            s.setblocking(False)
        sctx = TLSContext(True, cert_pem=cert.cert_pem, key_pem=cert.key_pem, records=records)
        cctx = TLSContext(False, cadata=cert.cert_pem, records=records)
        self.server = sctx.connection(
            self.a, transport=transport, read_ahead=read_ahead, via_ring=via_ring
        )
        self.client = cctx.connection(
            self.b,
            transport=transport,
            server_hostname="localhost",
            read_ahead=read_ahead,
            via_ring=via_ring,
        )
        self.s_plain = RingBuffer(capacity)
        self.c_plain = RingBuffer(capacity)
        _handshake(
            lambda: self.client.do_handshake() & self.server.do_handshake(), [self.a, self.b]
        )
        if records == "direct":  # the server's tickets, so that the path is settled
            self.client.read_into(self.c_plain)
            assert self.client.records == self.server.records == "direct"

    @staticmethod
    def _send(conn: TLSConnection, sock: socket.socket, data: bytes) -> None:
        sent = conn.write(data)
        while sent < len(data):  # backpressure: a socketpair rarely pushes back here
            _wait(sock, write=True)
            conn.flush()
            sent += conn.write(data[sent:])

    @staticmethod
    def _recv(conn: TLSConnection, sock: socket.socket, plain: RingBuffer, n: int) -> None:
        have = conn.read_into(plain) or 0  # one call nearly always brings it all
        while have < n:
            got = conn.read_into(plain)
            if got is None:
                _wait(sock)
            elif got == 0:
                raise ConnectionError("the peer closed")
            else:
                have += got

    def client_send(self, msg: bytes) -> None:
        self._send(self.client, self.b, msg)

    def server_recv(self, n: int) -> None:
        self._recv(self.server, self.a, self.s_plain, n)
        self.s_plain.discard(n)

    def server_echo(self, n: int) -> None:
        self._recv(self.server, self.a, self.s_plain, n)
        left = n - self.server.write_from(self.s_plain, n)  # from the ring: no copy
        while left:
            _wait(self.a, write=True)
            self.server.flush()
            left -= self.server.write_from(self.s_plain, left)

    def client_recv(self, n: int) -> None:
        self._recv(self.client, self.b, self.c_plain, n)
        self.c_plain.discard(n)

    def ledger(self) -> dict[str, int]:
        c, s = self.client.ledger(), self.server.ledger()
        return {
            "sender_tx_syscalls": c.tx_syscalls,
            "sender_ring_copies": c.ring_copies,
            "sender_bio_copies": c.bio_copies,
            "receiver_rx_syscalls": s.rx_syscalls,
            "receiver_ring_copies": s.ring_copies,
            "receiver_bio_copies": s.bio_copies,
            # the direct path's plaintext kept back for want of room, then copied
            "sender_spill_copies": self.client.records_counters()["spill_copies"],
            "receiver_spill_copies": self.server.records_counters()["spill_copies"],
        }

    def reset_ledger(self) -> None:
        self.client.reset_ledger()
        self.server.reset_ledger()

    def close(self) -> None:
        self.client.close()
        self.server.close()
        self.a.close()
        self.b.close()


# -------------------------------------------------------------------- stdlib


def _stdlib_contexts(cert: SelfSigned, tmp: str) -> tuple[ssl.SSLContext, ssl.SSLContext]:
    certfile, keyfile = os.path.join(tmp, "cert.pem"), os.path.join(tmp, "key.pem")
    with open(certfile, "wb") as f:
        f.write(cert.cert_pem)
    with open(keyfile, "wb") as f:
        f.write(cert.key_pem)
    server = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    server.load_cert_chain(certfile, keyfile)
    client = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    client.load_verify_locations(cadata=cert.cert_pem.decode())
    return server, client


class _StdlibSocket(MessagePath):
    """ssl.SSLSocket: OpenSSL on the socket (SSL_set_fd), read-ahead off."""

    name = "stdlib SSLSocket"

    def __init__(self, cert: SelfSigned, tmp: str) -> None:
        sctx, cctx = _stdlib_contexts(cert, tmp)
        a, b = socket.socketpair()
        a.setblocking(False)
        b.setblocking(False)
        self.server = sctx.wrap_socket(a, server_side=True, do_handshake_on_connect=False)
        self.client = cctx.wrap_socket(
            b, server_hostname="localhost", do_handshake_on_connect=False
        )
        done = {self.server: False, self.client: False}

        def step() -> bool:
            for s in done:
                if not done[s]:
                    try:
                        s.do_handshake()
                        done[s] = True
                    except (ssl.SSLWantReadError, ssl.SSLWantWriteError):
                        pass
            return all(done.values())

        _handshake(step, [self.server, self.client])
        self.buf = bytearray(1 << 20)

    @staticmethod
    def _send(sock: ssl.SSLSocket, data: bytes | memoryview) -> None:
        view = memoryview(data)
        while view:
            try:
                view = view[sock.send(view) :]
            except ssl.SSLWantWriteError:
                _wait(sock, write=True)

    def _recv(self, sock: ssl.SSLSocket, n: int) -> memoryview:
        got, buf = 0, memoryview(self.buf)
        while got < n:
            try:
                got += sock.recv_into(buf[got:n])
            except ssl.SSLWantReadError:
                _wait(sock)
        return buf[:n]

    def client_send(self, msg: bytes) -> None:
        self._send(self.client, msg)

    def server_recv(self, n: int) -> None:
        self._recv(self.server, n)

    def server_echo(self, n: int) -> None:
        self._send(self.server, self._recv(self.server, n))

    def client_recv(self, n: int) -> None:
        self._recv(self.client, n)

    def close(self) -> None:
        self.client.close()
        self.server.close()


class _StdlibMemoryBIO(MessagePath):
    """ssl.SSLObject over two ssl.MemoryBIOs, pumped by hand (asyncio's design)."""

    name = "stdlib SSLObject+MemoryBIO"

    def __init__(self, cert: SelfSigned, tmp: str) -> None:
        sctx, cctx = _stdlib_contexts(cert, tmp)
        self.a, self.b = socket.socketpair()
        self.a.setblocking(False)
        self.b.setblocking(False)
        self.s_in, self.s_out = ssl.MemoryBIO(), ssl.MemoryBIO()
        self.c_in, self.c_out = ssl.MemoryBIO(), ssl.MemoryBIO()
        self.server = sctx.wrap_bio(self.s_in, self.s_out, server_side=True)
        self.client = cctx.wrap_bio(self.c_in, self.c_out, server_hostname="localhost")
        ends = [
            (self.server, self.s_in, self.s_out, self.a),
            (self.client, self.c_in, self.c_out, self.b),
        ]
        done = [False, False]

        def step() -> bool:
            for i, (obj, inc, out, sock) in enumerate(ends):
                self._pump_in(sock, inc)
                if not done[i]:
                    try:
                        obj.do_handshake()
                        done[i] = True
                    except ssl.SSLWantReadError:
                        pass
                if out.pending:
                    sock.sendall(out.read())
            return all(done)

        _handshake(step, [self.a, self.b])
        self.buf = bytearray(1 << 20)

    @staticmethod
    def _pump_in(sock: socket.socket, incoming: ssl.MemoryBIO) -> int:
        try:
            data = sock.recv(65536)
        except BlockingIOError:
            return 0
        incoming.write(data)
        return len(data)

    @staticmethod
    def _send(obj: ssl.SSLObject, out: ssl.MemoryBIO, sock: socket.socket, data: object) -> None:
        obj.write(data)  # type: ignore[arg-type]
        view = memoryview(out.read())
        while view:
            try:
                view = view[sock.send(view) :]
            except BlockingIOError:
                _wait(sock, write=True)

    def _recv(
        self, obj: ssl.SSLObject, inc: ssl.MemoryBIO, sock: socket.socket, n: int
    ) -> memoryview:
        got, buf = 0, memoryview(self.buf)
        while got < n:
            try:
                got += int(obj.read(n - got, buf[got:n]))  # (with a buffer: a count)
            except ssl.SSLWantReadError:
                if not self._pump_in(sock, inc):
                    _wait(sock)
        return buf[:n]

    def client_send(self, msg: bytes) -> None:
        self._send(self.client, self.c_out, self.b, msg)

    def server_recv(self, n: int) -> None:
        self._recv(self.server, self.s_in, self.a, n)

    def server_echo(self, n: int) -> None:
        data = self._recv(self.server, self.s_in, self.a, n)
        self._send(self.server, self.s_out, self.a, data)

    def client_recv(self, n: int) -> None:
        self._recv(self.client, self.c_in, self.b, n)

    def close(self) -> None:
        self.a.close()
        self.b.close()


def make_path(name: str, cert: SelfSigned, capacity: int = 65536) -> MessagePath:
    """A connected, handshaken path named as in ``PATHS``."""
    if name == "stdlib-socket" or name == "stdlib-memorybio":
        with tempfile.TemporaryDirectory() as tmp:  # contexts load the files at once
            cls = _StdlibSocket if name == "stdlib-socket" else _StdlibMemoryBIO
            return cls(cert, tmp)
    if name in VARIANTS:
        transport, options = VARIANTS[name]
        return _Wsstls(
            name,
            transport,
            cert,
            capacity,
            read_ahead=options.get("read_ahead"),
            via_ring=options.get("via_ring", False),
        )
    if name not in PATHS:
        raise ValueError(f"unknown path {name!r}; choose from {', '.join((*PATHS, *VARIANTS))}")
    if name == "direct":
        return _Wsstls(name, "ring", cert, capacity, records="direct")
    return _Wsstls(name, name, cert, capacity)
