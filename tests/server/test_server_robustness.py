"""The server under hostile and careless clients, as a subprocess (``python -m wsstls serve``):

* a slow reader - a client that sends without reading - is no longer read from once its
  echoes back up (backpressure): it cannot push 200 MB, the server's RSS stays bounded
  while it tries, others are served meanwhile, and once it reads again every echo arrives;
* clients that vanish mid-frame, mid-message, mid-TLS-record or mid-handshake (FIN or RST)
  cost nothing: the server closes their sockets (its fd count returns to where it was);
* incomplete input (half a TLS record, half a frame) leaves the server idle, not spinning;
* half-finished handshakes (TCP only, a ClientHello only, half an HTTP request) are closed
  after ``--handshake-timeout``, while open connections, even idle ones, are kept;
* 1,000 connections at once all echo;
* bad input from one client (garbage, a bad upgrade request, invalid frames, invalid UTF-8,
  an oversized message, a corrupted TLS record) gets its answer (400, close 1002 / 1007 /
  1009, a TLS alert) and does not stop the server serving the others;
* SIGTERM (and SIGINT) with open connections: every client sees a close frame with 1001,
  the process exits 0.

Every server is stopped by PID and checked: exit status 0 and nothing on stderr that looks
like an internal error or a traceback (``serverutil.process_factory``).
"""

from __future__ import annotations

import contextlib
import json
import os
import resource
import select
import signal
import socket
import ssl
import struct
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import serverutil
from serverutil import (
    DESIGNS,
    SANITIZED,
    STOP_S,
    RunningServer,
    ServerProcess,
    WsClient,
    client_ssl_context,
    client_tls_context,
    frame,
)

from wsstls.loadgen import run as loadgen_run

pytestmark = pytest.mark.slow

server_certs = serverutil.server_certs
process_factory = serverutil.process_factory

MIB = 1 << 20
WAIT_S = 60.0 if SANITIZED else 20.0
BINARY, TEXT, CONT, CLOSE, PING = 0x2, 0x1, 0x0, 0x8, 0x9
TLS_DESIGNS = [n for n, d in DESIGNS.items() if d.tls and d.workers == 1]
ONE_PROCESS = [n for n, d in DESIGNS.items() if d.workers == 1]

Start = Callable[..., ServerProcess]


def url_of(sp: ServerProcess) -> RunningServer:
    assert sp.handle is not None
    return sp.handle


def wait_until(predicate: Callable[[], bool], what: str, seconds: float = WAIT_S) -> None:
    """Poll ``predicate`` (bounded in time and count) until it holds."""
    deadline = time.monotonic() + seconds
    for _ in range(100_000):
        if predicate():
            return
        assert time.monotonic() < deadline, f"{what}: not after {seconds} s"
        time.sleep(0.05)
    raise AssertionError(f"{what}: not after 100000 polls")


def rss_bytes(pid: int) -> int:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    raise AssertionError("no VmRSS")


def fd_count(pid: int) -> int:
    return len(os.listdir(f"/proc/{pid}/fd"))


def served(server: RunningServer, sizes: tuple[int, ...] = (0, 10, 1000, 70_000)) -> None:
    """A new client connects and gets its echoes."""
    with WsClient(server) as c:
        for i, n in enumerate(sizes):
            c.echo(bytes([i]) * n)
        c.echo("κόσμε".encode(), TEXT)
        c.send_frame(CLOSE, struct.pack("!H", 1000))
        c.expect_close(1000)


def reset_close(sock: socket.socket) -> None:
    """Close with an RST instead of a FIN."""
    with contextlib.suppress(OSError):
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    sock.close()


def ended(sock: socket.socket, seconds: float = WAIT_S) -> bytes:
    """Read until the server ends the stream (bounded); return what it sent before."""
    sock.settimeout(seconds)
    got = b""
    for _ in range(10_000):
        try:
            chunk = sock.recv(65536)
        except (ConnectionResetError, ssl.SSLError):
            return got
        except TimeoutError:
            raise AssertionError(f"the server kept the connection open ({got[:80]!r})") from None
        if not chunk:
            return got
        got += chunk
    raise AssertionError("the server sends without end")


class TlsByHand:
    """A TLS client over a raw socket through ``ssl.MemoryBIO``: the records it would send
    are in our hands, to be sent whole, in part, or not at all."""

    def __init__(self, server: RunningServer) -> None:
        self.sock = socket.create_connection((server.host, server.port), timeout=WAIT_S)
        self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.incoming, self.outgoing = ssl.MemoryBIO(), ssl.MemoryBIO()
        self.tls = client_ssl_context().wrap_bio(
            self.incoming, self.outgoing, server_hostname="localhost"
        )

    def client_hello(self) -> bytes:
        with contextlib.suppress(ssl.SSLWantReadError):
            self.tls.do_handshake()
        return self.outgoing.read()

    def handshake(self) -> None:
        for _ in range(100):
            try:
                self.tls.do_handshake()
                break
            except ssl.SSLWantReadError:
                self.sock.sendall(self.outgoing.read())
                data = self.sock.recv(65536)
                assert data, "the server closed during the TLS handshake"
                self.incoming.write(data)
        self.sock.sendall(self.outgoing.read())

    def records(self, plaintext: bytes) -> bytes:
        self.tls.write(plaintext)
        return self.outgoing.read()

    def read(self) -> bytes:
        """Plaintext, reading the socket until some is there."""
        for _ in range(1000):
            try:
                return self.tls.read(65536)
            except ssl.SSLWantReadError:
                data = self.sock.recv(65536)
                assert data, "the server closed the connection"
                self.incoming.write(data)
        raise AssertionError("no plaintext")

    def ws_handshake(self) -> None:
        self.sock.sendall(self.records(WsClient.REQUEST))
        head = b""
        while b"\r\n\r\n" not in head:
            head += self.read()
        assert head.startswith(b"HTTP/1.1 101 ")


# ------------------------------------------------------------------ slow readers


class SlowReader:
    """A client that pushes one binary message after another and reads nothing."""

    def __init__(self, server: RunningServer, size: int) -> None:
        self.client = WsClient(server)
        self.sock = self.client.sock
        self.sock.setblocking(False)
        payload = bytes((i * 7) & 0xFF for i in range(251)) * (size // 251 + 1)
        self.payload = payload[:size]
        self.frame = frame(BINARY, self.payload)  # one key: the same bytes every time
        self.echo = bytes(encode_server(self.payload))
        self.frames = 0  # sent whole
        self.view: memoryview | None = None  # the frame being sent (TLS: retried whole)

    def _send_some(self) -> bool:
        """Send what the socket takes now; True if anything went."""
        if self.view is None:
            self.view = memoryview(self.frame)
        try:
            n = self.sock.send(self.view)
        except (ssl.SSLWantWriteError, ssl.SSLWantReadError, BlockingIOError):
            return False
        if n == len(self.view):
            self.frames += 1
            self.view = None
        else:
            self.view = self.view[n:]
        return n > 0

    def push(self, total: int, stall_s: float, sample: Callable[[], None]) -> bool:
        """Push up to ``total`` bytes; True if the socket stopped taking them for stall_s."""
        deadline = time.monotonic() + 4 * WAIT_S
        last = time.monotonic()
        for step in range(10_000_000):
            if self.frames * len(self.frame) >= total:
                return False
            if step % 64 == 0:
                sample()
            if self._send_some():
                last = time.monotonic()
                continue
            now = time.monotonic()
            assert now < deadline, "pushing took too long"
            if now - last > stall_s:
                return True
            select.select([], [self.sock], [], 0.1)
        raise AssertionError("too many sends")

    def drain(self) -> None:
        """Finish the frame being sent, then read every echo and check it."""
        sent_all = False
        got = expected_len = 0
        deadline = time.monotonic() + 4 * WAIT_S
        for _ in range(10_000_000):
            if not sent_all and self.view is None:
                sent_all = True
                expected_len = self.frames * len(self.echo)
            elif not sent_all:
                self._send_some()
            try:
                data = self.sock.recv(1 << 20)
            except (ssl.SSLWantReadError, ssl.SSLWantWriteError, BlockingIOError):
                data = None
            if data == b"":
                raise AssertionError("the server closed the slow reader's connection")
            if data:
                # The echoes are the same frame over and over: compare against that.
                expected = self.echo * (len(data) // len(self.echo) + 2)
                off = got % len(self.echo)
                assert data == expected[off : off + len(data)], f"echo differs after {got} B"
                got += len(data)
            if sent_all and got >= expected_len:
                assert got == expected_len, f"{got} bytes of echoes for {expected_len}"
                return
            if not data:
                assert time.monotonic() < deadline, f"{got} of the echoes after draining"
                select.select([self.sock], [] if sent_all else [self.sock], [], 0.2)
        raise AssertionError("too many reads")

    def close(self) -> None:
        self.sock.setblocking(True)
        self.client.send_frame(CLOSE, struct.pack("!H", 1000))
        self.client.expect_close(1000)
        self.client.close()


def encode_server(payload: bytes) -> bytes:
    n = len(payload)
    if n < 126:
        head = bytes([0x82, n])
    elif n < 65536:
        head = bytes([0x82, 126]) + struct.pack("!H", n)
    else:
        head = bytes([0x82, 127]) + struct.pack("!Q", n)
    return head + payload


PUSH = 200 * MIB
#: Rings, OpenSSL buffers, at most one message assembled: a few MiB.  Not checked under
#: AddressSanitizer, whose quarantine keeps freed memory resident by design.
RSS_GROWTH = 32 * MIB


@pytest.mark.parametrize(
    ("design", "size"),
    [(d, 16 * 1024) for d in ONE_PROCESS]
    + [("inline-ring", MIB), ("offload", MIB), ("no-fast-path", MIB), ("plain", 4 * MIB)],
)
def test_a_slow_reader_is_held_back(process_factory: Start, design: str, size: int) -> None:
    sp = process_factory(design)
    server, pid = url_of(sp), sp.proc.pid  # type: ignore[union-attr]
    with contextlib.ExitStack() as stack:
        bystander = WsClient(server)  # connected before: must be served throughout
        stack.callback(bystander.close)
        slow = SlowReader(server, size)
        stack.callback(slow.client.close)
        served(server)
        base = rss_bytes(pid)
        peak = [base]

        def sample() -> None:
            peak[0] = max(peak[0], rss_bytes(pid))

        stalled = slow.push(PUSH, stall_s=1.5, sample=sample)
        sample()
        pushed = slow.frames * len(slow.frame)
        assert stalled, f"the server read all {pushed} bytes a client never read echoes of"
        assert pushed < PUSH
        assert SANITIZED or peak[0] - base < RSS_GROWTH, (
            f"server RSS grew {(peak[0] - base) / MIB:.1f} MiB while {pushed / MIB:.0f} MiB "
            "were pushed"
        )
        # Meanwhile the others are served, old and new.
        bystander.echo(b"still here" * 1000)
        served(server)
        assert SANITIZED or rss_bytes(pid) - base < RSS_GROWTH
        # The slow reader reads at last: every echo comes, intact and in order.
        slow.drain()
        slow.close()
        bystander.echo(b"after")


# ------------------------------------------------------------- abrupt disconnects


def abrupt_cases(server: RunningServer) -> Iterator[tuple[str, Callable[[], socket.socket]]]:
    """(name, open a connection and leave it in some state): the caller drops it."""

    def ws(*frames: bytes) -> Callable[[], socket.socket]:
        def make() -> socket.socket:
            c = WsClient(server)
            c.echo(b"warm")  # established, maybe handed to the C loop
            send_what_goes(c.sock, b"".join(frames))
            return c.sock

        return make

    big = frame(BINARY, bytes(MIB))
    mid = frame(BINARY, bytes(16 * 1024))
    yield "connected, nothing sent", lambda: server.connect()
    yield "half an upgrade request", lambda: _half_request(server)
    yield "open, idle", ws()
    yield "half a frame header", ws(mid[:1])
    yield "header and half a 16 KiB payload", ws(mid[: len(mid) // 2])
    yield "half of a 1 MiB frame", ws(big[: len(big) // 2])
    yield "a fragment, then nothing", ws(frame(TEXT, b"frag", fin=False))
    yield "half a close frame", ws(frame(CLOSE, b"\x03\xe8")[:3])
    yield "4 MiB sent, echoes not read", ws(*[big] * 4)
    if server.tls:
        yield "half a TLS record", lambda: _half_record(server)
        yield "half a ClientHello", lambda: _half_hello(server)


def send_what_goes(sock: socket.socket, data: bytes) -> None:
    """Send without blocking, as much as the socket takes (the server may hold back)."""
    sock.setblocking(False)
    view = memoryview(data)
    for _ in range(100_000):
        if not view:
            return
        try:
            view = view[sock.send(view) :]
        except (ssl.SSLWantWriteError, ssl.SSLWantReadError, BlockingIOError):
            return


def _half_request(server: RunningServer) -> socket.socket:
    sock = server.connect()
    sock.sendall(WsClient.REQUEST[:40])
    return sock


def _half_record(server: RunningServer) -> socket.socket:
    t = TlsByHand(server)
    t.handshake()
    t.ws_handshake()
    records = t.records(frame(BINARY, bytes(range(256)) * 20))
    t.sock.sendall(records[: len(records) // 2])
    return t.sock


def _half_hello(server: RunningServer) -> socket.socket:
    t = TlsByHand(server)
    hello = t.client_hello()
    t.sock.sendall(hello[: len(hello) // 2])
    return t.sock


@pytest.mark.parametrize("design", ONE_PROCESS)
def test_abrupt_disconnects(process_factory: Start, design: str) -> None:
    sp = process_factory(design)
    server, pid = url_of(sp), sp.proc.pid  # type: ignore[union-attr]
    served(server)
    base = fd_count(pid)
    for how in ("FIN", "RST"):
        for name, make in abrupt_cases(server):
            sock = make()
            if how == "RST":
                reset_close(sock)
            else:
                sock.close()
            served(server, sizes=(5,))
            wait_until(lambda: fd_count(pid) <= base, f"{name} ({how}): its socket closed")
    served(server)


def cpu_seconds(pid: int) -> float:
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


@pytest.mark.parametrize("design", ONE_PROCESS)
def test_incomplete_input_does_not_keep_the_server_busy(
    process_factory: Start, design: str
) -> None:
    """Clients that stop inside a TLS record or a frame leave the server idle (it waits for
    the socket, it does not retry what cannot complete): over a second of waiting it uses
    a fraction of the CPU a retry loop would (a busy loop takes about the whole second)."""
    sp = process_factory(design)
    server, pid = url_of(sp), sp.proc.pid  # type: ignore[union-attr]
    socks: list[socket.socket] = []
    try:
        for _, make in abrupt_cases(server):
            socks.append(make())
        served(server)
        before = cpu_seconds(pid)
        time.sleep(1.0)
        used = cpu_seconds(pid) - before
        assert used < 0.4, f"the server used {used:.2f} s of CPU while waiting for input"
        served(server)
    finally:
        for sock in socks:
            sock.close()


# ------------------------------------------------------------ handshake timeouts


@pytest.mark.parametrize("design", ["inline-ring", "offload", "plain"])
def test_half_finished_handshakes_time_out(process_factory: Start, design: str) -> None:
    sp = process_factory(design, ["--handshake-timeout", "1"])
    server = url_of(sp)
    good = WsClient(server)  # open before the stale ones, idle past the timeout
    stale = {"TCP only": socket.create_connection((server.host, server.port), timeout=WAIT_S)}
    if server.tls:
        stale["TLS only, no request"] = server.connect()
    stale["half an HTTP request"] = _half_request(server)
    stale["an HTTP request without its last CRLF"] = server.connect()
    stale["an HTTP request without its last CRLF"].sendall(WsClient.REQUEST[:-2])
    if server.tls:
        t = TlsByHand(server)
        t.sock.sendall(t.client_hello())
        stale["a ClientHello only"] = t.sock
    try:
        good.echo(b"meanwhile")
        served(server)
        for name, sock in stale.items():
            got = ended(sock)
            if name != "a ClientHello only":  # (that one had the ServerHello flight)
                assert got == b"", f"{name}: the server sent {got[:80]!r}"
        good.echo(b"the open connection was kept")
        served(server)
    finally:
        good.close()
        for sock in stale.values():
            sock.close()


# --------------------------------------------------------------- 1000 at once


def _raise_nofile(need: int) -> None:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < need:
        if hard != resource.RLIM_INFINITY and hard < need:
            pytest.skip(f"RLIMIT_NOFILE hard limit {hard} < {need}")
        resource.setrlimit(resource.RLIMIT_NOFILE, (need, hard))


@pytest.mark.parametrize("design", ["inline-ring", "plain"])
def test_a_thousand_connections_at_once(process_factory: Start, design: str) -> None:
    _raise_nofile(4096)
    sp = process_factory(design)
    server = url_of(sp)
    clients: list[WsClient] = []
    try:
        for _ in range(1000):
            clients.append(WsClient(server))
        for i, c in enumerate(clients):
            c.send_frame(BINARY, i.to_bytes(4, "big") * (1 + i % 50))
        for i, c in enumerate(clients):
            got = c.recv_frame()
            assert (got.opcode, got.payload) == (BINARY, i.to_bytes(4, "big") * (1 + i % 50))
        for c in clients[::2]:  # every other one closes properly
            c.send_frame(CLOSE, struct.pack("!H", 1000))
        for c in clients[::2]:
            c.expect_close(1000)
        served(server)
    finally:
        for c in clients:
            c.close()


@pytest.mark.parametrize("design", ["offload", "workers2"])
def test_a_thousand_connections_with_the_load_generator(
    process_factory: Start, design: str, tmp_path: Path
) -> None:
    _raise_nofile(4096)
    stats = tmp_path / "stats.json"
    sp = process_factory(design, ["--stats", str(stats)])
    r = loadgen_run(url_of(sp).url, connections=1000, size=256, duration=1.0, warmup=0.5,
                    tls_context=client_tls_context(), connect_timeout=WAIT_S)  # fmt: skip
    assert (r.errors, r.connect_failures, r.connections) == (0, 0, 1000), r.first_error
    assert r.messages + r.warmup_messages >= 1000
    assert sp.stop() == 0
    assert json.loads(stats.read_text())["connections"] >= 1000


# ---------------------------------------------------------------------- bad input


def bad_inputs(server: RunningServer) -> Iterator[tuple[str, Callable[[], None]]]:
    def closes_with(code: int, *frames: bytes) -> Callable[[], None]:
        def check() -> None:
            with WsClient(server) as c:
                c.echo(b"ok")
                c.send(b"".join(frames))
                c.expect_close(code)

        return check

    def refused(request: bytes, status: bytes = b"400") -> Callable[[], None]:
        def check() -> None:
            with WsClient(server, handshake=False) as c:
                c.send(request)
                got = ended(c.sock)
                assert got.startswith(b"HTTP/1.1 " + status), got[:80]

        return check

    yield "garbage request", refused(b"\x00\x01garbage\xff\xfe" * 20 + b"\r\n\r\n")
    yield "no Sec-WebSocket-Key", refused(WsClient.REQUEST.replace(b"Sec-WebSocket-Key", b"X"))
    yield "POST", refused(WsClient.REQUEST.replace(b"GET", b"POST"))
    yield "version 8", refused(WsClient.REQUEST.replace(b"Version: 13", b"Version: 8"), b"426")
    yield "reserved opcode", closes_with(1002, frame(0x3, b"x"))
    yield "RSV1 set", closes_with(1002, frame(BINARY, b"x", rsv=4))
    yield "unmasked frame", closes_with(1002, frame(BINARY, b"x", mask=False))
    yield "ping of 126 bytes", closes_with(1002, frame(PING, bytes(126)))
    yield "orphan continuation", closes_with(1002, frame(CONT, b"x"))
    yield "invalid UTF-8", closes_with(1007, frame(TEXT, b"caf\xc3"))
    yield (
        "invalid UTF-8, fragmented",
        closes_with(1007, frame(TEXT, b"\xce", fin=False), frame(CONT, b"\xba\xed\xa0\x80")),
    )
    yield (
        "invalid UTF-8, half a frame",
        closes_with(1007, frame(TEXT, b"ok \xf4\x90\x80\x80" + bytes(100))[:14]),
    )
    yield "16 MiB + 1", closes_with(1009, b"\x82\xff" + struct.pack("!Q", 16 * MIB + 1) + bytes(4))
    if not server.tls:
        return

    def raw_garbage() -> None:
        with socket.create_connection((server.host, server.port), timeout=WAIT_S) as s:
            s.sendall(b"GET / HTTP/1.1\r\n\r\n" + bytes(range(256)))
            got = ended(s)
            assert got == b"" or got[0] == 0x15, got[:20]  # nothing, or a TLS alert

    def corrupted_record() -> None:
        t = TlsByHand(server)
        try:
            t.handshake()
            t.ws_handshake()
            records = bytearray(t.records(frame(BINARY, b"tampered")))
            records[-1] ^= 0xFF  # the tag no longer matches
            t.sock.sendall(records)
            t.incoming.write(ended(t.sock))
            with pytest.raises(ssl.SSLError, match=r"(?i)alert_bad_record_mac"):
                t.tls.read(65536)  # the server's alert says why
        finally:
            t.sock.close()

    yield "plain HTTP to the TLS port", raw_garbage
    yield "a corrupted TLS record", corrupted_record


@pytest.mark.parametrize("design", list(DESIGNS))
def test_bad_input_from_one_client(process_factory: Start, design: str) -> None:
    sp = process_factory(design)
    server = url_of(sp)
    good = WsClient(server)
    try:
        for name, check in bad_inputs(server):
            try:
                check()
            except AssertionError as exc:
                raise AssertionError(f"{name}: {exc}") from exc
            good.echo(name.encode())
        served(server)
    finally:
        good.close()


# ------------------------------------------------------------------------- signals


@pytest.mark.parametrize(
    ("design", "sig"),
    [(d, signal.SIGTERM) for d in DESIGNS] + [("inline-ring", signal.SIGINT)],
)
def test_a_signal_closes_every_connection_with_1001(
    process_factory: Start, design: str, sig: signal.Signals
) -> None:
    sp = process_factory(design)
    server = url_of(sp)
    clients = [WsClient(server) for _ in range(8)]
    pending = WsClient(server, handshake=False)  # connected, no request yet
    try:
        for i, c in enumerate(clients):
            c.echo(bytes([i]) * 100)
        clients[0].send_frame(TEXT, b"mid-", fin=False)  # mid-message (the framer's)
        clients[1].send(frame(BINARY, bytes(1000))[:100])  # half a frame
        clients[2].send(frame(BINARY, bytes(MIB))[: MIB // 2])  # half a large frame
        clients[3].echo(bytes(100_000))
        served(server)  # meanwhile the server has taken in what they sent
        assert sp.proc is not None
        os.kill(sp.proc.pid, sig)
        sp.proc.wait(STOP_S)
        sp.returncode = sp.proc.returncode
        assert sp.returncode == 0, f"exit status {sp.returncode}"
        for i, c in enumerate(clients):
            try:
                c.expect_close(1001)
            except AssertionError as exc:
                raise AssertionError(f"client {i}: {exc}") from exc
        assert ended(pending.sock) == b""
    finally:
        for c in [*clients, pending]:
            c.close()


def test_a_connection_that_cannot_be_set_up_is_said_on_stderr(
    monkeypatch: pytest.MonkeyPatch, capfd: pytest.CaptureFixture[str]
) -> None:
    """A connection the server cannot set up (no memory for its ring, say) is dropped and
    stderr says so, once a minute, where it used to drop every connection in silence."""
    import wsstls.server.loop as loop

    def no_memory(*_: object) -> None:
        raise MemoryError("no ring for this one")

    monkeypatch.setattr(loop, "_Conn", no_memory)
    with serverutil.in_process_server(DESIGNS["plain"]) as server:
        for _ in range(3):
            with socket.create_connection((server.host, server.port), timeout=WAIT_S) as s:
                with contextlib.suppress(ConnectionResetError):
                    assert s.recv(1) == b""  # dropped
    err = capfd.readouterr().err
    assert err.count("cannot set up a connection, dropped it: MemoryError(") == 1, err
