"""Direct TLS 1.3 records (csrc/core/records.c) through TLSConnection, against real peers.

* interop, data both ways, every TLS 1.3 suite: the stdlib ``ssl`` module as client and
  as server (with and without session tickets), ``openssl s_client`` with its ``K`` and
  ``k`` commands (KeyUpdate with and without a requested update, mid-stream);
* equivalence: hypothesis drives random message sizes, split points and TCP-like
  chunking through a sans-IO pair where one side runs OpenSSL's records and the other
  ours (and both ours); every byte arrives once, in order;
* hostile input from a stdlib ``SSLObject`` client whose ciphertext we tamper with: a
  flipped bit in a tag, a header, a body; a record over the limit; a wrong content type;
  a truncated record then EOF; records after close_notify; a KeyUpdate storm - each ends
  in the right alert (read by the peer) and a dead connection, never a crash;
* where the direct path does not apply (TLS 1.2, other transports) the connection stays
  on OpenSSL's records and says why.
"""

from __future__ import annotations

import contextlib
import os
import select
import shutil
import socket
import ssl
import subprocess
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st
from tlsutil import (
    HOST,
    WAIT_S,
    Link,
    Peer,
    PeerThread,
    bounded,
    client_context,
    drive,
    handshake,
    pki,
    recv_exactly,
    sansio_session,
    server_context,
    socket_session,
    socketpair,
    stdlib_client_context,
    stdlib_server_context,
)

from wsstls.tls import TLSConnection, TLSContext, TLSError

SUITES = ["TLS_AES_128_GCM_SHA256", "TLS_AES_256_GCM_SHA384", "TLS_CHACHA20_POLY1305_SHA256"]
suites = pytest.mark.parametrize("suite", SUITES)


def direct_server(suite: str | None = None, **kw: object) -> TLSContext:
    if suite is not None:
        kw["ciphersuites"] = suite
    return server_context(records="direct", **kw)  # type: ignore[arg-type]


def direct_client(suite: str | None = None, **kw: object) -> TLSContext:
    if suite is not None:
        kw["ciphersuites"] = suite
    return client_context(records="direct", **kw)  # type: ignore[arg-type]


def payloads(n: int = 40) -> list[bytes]:
    """Sizes from 0 to past two records, each message distinct."""
    sizes = [0, 1, 63, 64, 100, 1000, 16383, 16384, 16385, 40000]
    return [bytes([i % 251]) * sizes[i % len(sizes)] + b"#%d" % i for i in range(n)]


# ============================================================ interop


@pytest.mark.slow
@suites
@pytest.mark.parametrize("tickets", [0, 2])
def test_stdlib_client_direct_server(suite: str, tickets: int) -> None:
    a, b = socketpair()
    conn = direct_server(suite, num_tickets=tickets).connection(a)
    msgs = payloads()

    def client() -> list[bytes]:
        b.setblocking(True)
        b.settimeout(WAIT_S)
        with stdlib_client_context().wrap_socket(b, server_hostname=HOST) as s:
            got = []
            for m in msgs:
                s.sendall(m)
                got.append(recv_exactly(s, len(m)))
            s.unwrap()  # close_notify both ways
        return got

    peer = PeerThread(client)
    peer.start()
    try:
        handshake([conn], [a])
        assert conn.records == "direct", conn.records_reason
        server = Peer(conn, a)
        echoed = 0
        for _ in bounded("echo to the end", 100_000):
            if len(server.received) > echoed:
                server.queue(bytes(server.received[echoed:]))
                echoed = len(server.received)
            server.step()
            if server.peer_closed:
                break
            select.select([a], [a] if server.wants_write else [], [], 0.05)
        assert conn.shutdown() is True  # theirs received, ours sent
        server.step()
        assert peer.result() == msgs
    finally:
        a.close()
    assert conn.cipher == suite
    n = conn.records_counters()
    assert n["plain_in"] == n["plain_out"] == sum(map(len, msgs))
    assert n["write_seq"] >= tickets  # OpenSSL sealed the tickets: we went on after them
    assert n["spill_copies"] == 0


@suites
def test_direct_client_stdlib_server(suite: str) -> None:
    a, b = socketpair()
    msgs = payloads()
    sctx = stdlib_server_context()
    done = threading.Event()

    def server() -> int:
        b.setblocking(True)
        b.settimeout(WAIT_S)
        with sctx.wrap_socket(b, server_side=True) as s:
            n = 0
            for m in msgs:
                got = recv_exactly(s, len(m))
                assert got == m
                s.sendall(got)
                n += 1
            done.wait(WAIT_S)  # until the client has it all
            return n

    peer = PeerThread(server)
    peer.start()
    try:
        conn = direct_client(suite).connection(a, server_hostname=HOST)
        handshake([conn], [a])
        assert conn.records == "direct", conn.records_reason
        client = Peer(conn, a)
        for m in msgs:
            client.queue(m)
        total = sum(map(len, msgs))
        drive([client], lambda: len(client.received) >= total, "echo from the stdlib server")
        assert bytes(client.received) == b"".join(msgs)
        done.set()
        assert peer.result() == len(msgs)
    finally:
        a.close()
    assert conn.records_counters()["tickets"] == 2  # the stdlib server's, dropped


# ------------------------------------------------------------- s_client


@pytest.fixture(scope="module")
def ca_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("pki") / "ca.pem"
    path.write_bytes(pki().ca_pem)
    return path


@contextlib.contextmanager
def s_client(args: list[str]) -> Iterator[subprocess.Popen[bytes]]:
    proc = subprocess.Popen(
        ["openssl", "s_client", *args],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    try:
        yield proc
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.wait(timeout=WAIT_S)
        for pipe in (proc.stdin, proc.stdout, proc.stderr):
            if pipe is not None:
                pipe.close()


def data_lines(script: list[bytes]) -> bytes:
    return b"".join(line for line in script if line not in (b"K\n", b"k\n"))


def echo_lines(out: bytearray) -> bytes:
    """The echoed lines in s_client's output (it prints its own among them)."""
    lines = bytes(out).split(b"\n")[:-1]  # complete lines only
    return b"".join(x + b"\n" for x in lines if x.startswith((b"before", b"after")))


@pytest.mark.slow
@pytest.mark.skipif(shutil.which("openssl") is None, reason="no openssl CLI")
@suites
def test_s_client_key_updates(ca_file: Path, suite: str) -> None:
    """Lines echoed through s_client, with its K (update_requested) and k commands between."""
    script = [b"before %d\n" % i for i in range(50)]
    script += [b"K\n"] + [b"after K %d\n" % i for i in range(50)]
    script += [b"k\n"] + [b"after k %d\n" % i for i in range(50)]
    expect = data_lines(script)
    with socket.create_server(("127.0.0.1", 0)) as listener:
        port = listener.getsockname()[1]
        args = ["-connect", f"127.0.0.1:{port}", "-tls1_3", "-ciphersuites", suite]
        args += ["-CAfile", str(ca_file), "-servername", HOST, "-verify_return_error"]
        with s_client(args) as proc:
            assert proc.stdin is not None and proc.stdout is not None
            out_fd = proc.stdout.fileno()
            os.set_blocking(out_fd, False)
            listener.settimeout(WAIT_S)
            sock, _ = listener.accept()
            try:
                sock.setblocking(False)
                conn = direct_server(suite).connection(sock)
                handshake([conn], [sock], "handshake with s_client")
                assert conn.records == "direct"
                server = Peer(conn, sock)
                out = bytearray()
                echoed = 0
                fed = 0
                for _ in bounded("echo through s_client", 100_000):
                    seen = echo_lines(out)
                    if seen == expect:
                        break
                    # one line (or command) at a time, once what came before is back
                    if fed < len(script) and seen == data_lines(script[:fed]):
                        proc.stdin.write(script[fed])
                        proc.stdin.flush()
                        fed += 1
                    server.step()
                    if len(server.received) > echoed:
                        server.queue(bytes(server.received[echoed:]))
                        echoed = len(server.received)
                    r, _, _ = select.select([sock, out_fd], [], [], 0.05)
                    if out_fd in r:
                        chunk = os.read(out_fd, 65536)
                        assert chunk, "s_client exited before the echo was complete"
                        out += chunk
            finally:
                sock.close()
    n = conn.records_counters()
    assert n["key_updates_received"] == 2
    assert n["key_updates_sent"] == 1  # the answer to K, none to k


# ========================================================= equivalence


@pytest.mark.slow
@settings(
    max_examples=25,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
)
@example(  # 1-byte reads of 120 KB: once more steps than the loop's bound
    sides=("direct", "openssl"),
    suite="TLS_AES_128_GCM_SHA256",
    sizes=[32888, 0, 406, 328, 4564, 17179, 789, 1406, 3600, 12455, 37087],
    chunks=[1, 1],
    reads=[1, 1, 1, 1, 1, 1, 1, 1],
    key_updates=set(),
)
@given(
    sides=st.sampled_from([("direct", "openssl"), ("openssl", "direct"), ("direct", "direct")]),
    suite=st.sampled_from(SUITES),
    sizes=st.lists(st.integers(0, 40000), min_size=1, max_size=12),
    chunks=st.lists(st.integers(1, 5000), min_size=1, max_size=8),
    reads=st.lists(st.integers(1, 70000), min_size=1, max_size=8),
    key_updates=st.sets(st.integers(0, 11), max_size=3),
)
def test_equivalence_with_openssls_records(
    sides: tuple[str, str],
    suite: str,
    sizes: list[int],
    chunks: list[int],
    reads: list[int],
    key_updates: set[int],
) -> None:
    """Client ``sides[0]``, server ``sides[1]``: both directions, every byte once, in order."""
    cctx = client_context(records=sides[0], ciphersuites=suite)
    sctx = server_context(records=sides[1], ciphersuites=suite)
    c, s, up, down = sansio_session("ring", sctx, cctx, ring_capacity=1 << 17)
    assert (c.records, s.records) == sides or c.records == "handover"
    for a, b, link, back in ((c, s, up, down), (s, c, down, up)):
        data = b"".join(bytes([i % 256]) * n for i, n in enumerate(sizes))
        sent = retry = 0
        out = bytearray()
        step = 0
        for _ in bounded("equivalence", 100_000):
            if sent < len(data):
                # OpenSSL wants a refused write retried with at least the same bytes
                n = max(sizes[step % len(sizes)], retry, 1)
                if step in key_updates:
                    a.key_update(request=bool(step % 2))
                put = a.write(memoryview(data)[sent : sent + n])
                retry = n if put == 0 else 0
                sent += put
            for _ in range(256):  # TCP-like pieces of the given sizes
                if not link.move(take=chunks[step % len(chunks)]) and not link.backlog:
                    break
            for _ in range(64):  # a reader that takes small pieces takes several
                chunk = b.read(reads[step % len(reads)])
                if not chunk:
                    break
                out += chunk
            back.move()  # KeyUpdate answers
            a.read(1)  # processes them (no data comes this way now)
            step += 1
            if len(out) >= len(data):
                break
        assert bytes(out) == data
    for x in (c, s):
        x.close()


# ======================================================= hostile input


class Tamper:
    """A direct server over a socket and a stdlib SSLObject client whose ciphertext we edit."""

    def __init__(self, suite: str = SUITES[0]) -> None:
        self.sock, self.peer = socketpair()
        self.conn = direct_server(suite, num_tickets=0).connection(self.sock)
        self.incoming, self.outgoing = ssl.MemoryBIO(), ssl.MemoryBIO()
        ctx = stdlib_client_context()
        self.obj = ctx.wrap_bio(self.incoming, self.outgoing, server_hostname=HOST)
        for _ in bounded("tamper handshake", 1000):
            with contextlib.suppress(ssl.SSLWantReadError):
                self.obj.do_handshake()
            self.push()
            self.conn.do_handshake()
            self.pull()
            if self.conn.handshake_done and self.obj.version():
                break
        assert self.conn.records == "direct", self.conn.records_reason

    def push(self) -> None:
        data = self.outgoing.read()
        if data:
            self.peer.setblocking(True)
            self.peer.sendall(data)

    def pull(self) -> None:
        for _ in bounded("pull", 1000):
            r, _, _ = select.select([self.peer], [], [], 0.02)
            if not r:
                return
            data = self.peer.recv(65536)
            if not data:
                return
            self.incoming.write(data)

    def record(self, data: bytes) -> bytearray:
        """One record of ours, sealed by the stdlib client, not yet sent."""
        self.obj.write(data)
        return bytearray(self.outgoing.read())

    def server_fails(self) -> str:
        """The server's read fails; returns its error."""
        with pytest.raises(TLSError) as exc:
            for _ in bounded("server read", 1000):
                self.conn.read(65536)
                select.select([self.sock], [], [], 0.02)
        with pytest.raises(TLSError):
            self.conn.write(b"more")  # dead
        return str(exc.value)

    def client_alert(self) -> str:
        """The alert the stdlib client reads."""
        self.pull()
        with pytest.raises(ssl.SSLError) as exc:
            self.obj.read(100)
        return str(exc.value)

    def close(self) -> None:
        self.conn.close()
        self.sock.close()
        self.peer.close()


@pytest.mark.parametrize(
    ("where", "alert", "message"),
    [
        ("tag", "BAD_RECORD_MAC", "bad record mac"),
        ("body", "BAD_RECORD_MAC", "bad record mac"),
        ("header", "BAD_RECORD_MAC", "bad record mac"),
        ("type", "UNEXPECTED_MESSAGE", "unexpected record type 22"),
        ("oversize", "RECORD_OVERFLOW", "the limit is"),
    ],
)
def test_tampered_record(where: str, alert: str, message: str) -> None:
    t = Tamper()
    try:
        rec = t.record(b"x" * 100)
        if where == "tag":
            rec[-1] ^= 1
        elif where == "body":
            rec[10] ^= 0x40
        elif where == "header":
            rec[4] ^= 1  # the length: the AAD and the framing change
            rec += b"\0"
        elif where == "type":
            rec[0] = 22
        elif where == "oversize":
            body = (1 << 14) + 257
            rec = bytearray(b"\x17\x03\x03" + body.to_bytes(2, "big") + b"\0" * body)
        t.peer.sendall(bytes(rec))
        assert message in t.server_fails()
        assert alert in t.client_alert()
    finally:
        t.close()


def test_truncated_record_then_eof() -> None:
    t = Tamper()
    try:
        rec = t.record(b"y" * 100)
        t.peer.sendall(bytes(rec[:-3]))
        t.peer.shutdown(socket.SHUT_WR)
        error = t.server_fails()
        assert "without close_notify" in error
        assert "DECODE_ERROR" in t.client_alert()
    finally:
        t.close()


def test_records_after_close_notify_are_ignored() -> None:
    t = Tamper()
    try:
        t.obj.write(b"last words")
        with contextlib.suppress(ssl.SSLWantReadError):
            t.obj.unwrap()
        after = b"\x17\x03\x03\x00\x20" + b"z" * 32  # garbage after the alert
        t.peer.sendall(t.outgoing.read() + after)
        got = bytearray()
        for _ in bounded("read to close_notify"):
            data = t.conn.read(65536)
            if data == b"":
                break
            got += data or b""
            select.select([t.sock], [], [], 0.02)
        assert bytes(got) == b"last words"
        assert t.conn.read(100) == b""  # still closed, the garbage never opened
        assert t.conn.shutdown() is True
        assert t.conn.records_counters()["opened"] == 2
    finally:
        t.close()


def test_key_update_storm_is_bounded() -> None:
    """A peer that only sends KeyUpdates (32 allowed in a row) gets unexpected_message."""
    c, s, up, down = sansio_session("ring", direct_server(), direct_client())
    for _ in range(32):
        c.key_update(request=True)
        up.move()
        assert s.read() is None
        down.move()
        assert c.read() is None
    assert s.records_counters()["key_updates_received"] == 32
    c.key_update()
    up.move()
    with pytest.raises(TLSError, match="KeyUpdates without data"):
        s.read()
    down.move()
    with pytest.raises(TLSError, match=r"alert 10 \(unexpected_message\)"):
        c.read()
    # application data resets the count: a long exchange with updates is fine
    c, s, up, down = sansio_session("ring", direct_server(), direct_client())
    for i in range(100):
        c.key_update(request=True)
        c.write(b"%d" % i)
        up.move()
        assert s.read() == b"%d" % i
        down.move()
        assert c.read() is None


# ============================================================ fallbacks


def test_tls12_stays_on_openssls_records() -> None:
    from wsstls.tls import TLSVersion

    cctx = client_context(records="direct", max_version=TLSVersion.TLSv1_2)
    c, s = socket_session("ring", direct_server(), cctx)
    try:
        assert c.conn.records == s.conn.records == "openssl"
        assert c.conn.records_reason == "not TLS 1.3"
        c.queue(b"still works")
        drive([c, s], lambda: bytes(s.received) == b"still works", "TLS 1.2 data")
    finally:
        c.sock.close()
        s.sock.close()


@pytest.mark.parametrize("transport", ["mem", "pair", "fd"])
def test_other_transports_stay_on_openssls_records(transport: str) -> None:
    c, s = socket_session(transport, direct_server(), direct_client())
    try:
        assert c.conn.records == s.conn.records == "openssl"
        assert "ring transport" in c.conn.records_reason
    finally:
        c.sock.close()
        s.sock.close()


@pytest.mark.parametrize(("capacity", "records"), [(64, "openssl"), (16644, "openssl"),
                                                   (16645, "direct")])  # fmt: skip
def test_a_ring_smaller_than_a_record_stays_on_openssls_records(capacity: int,
                                                                records: str) -> None:  # fmt: skip
    """The direct layer opens whole records in the incoming ring, so a ring that cannot
    hold the largest (5 + 2^14 + 256 = 16,645 bytes) keeps OpenSSL's records, which read
    through it; the data gets through either way (a 64 B ring made the direct path spin)."""
    c, s, up, _ = sansio_session("ring", direct_server(), direct_client(),
                                 ring_capacity=capacity)  # fmt: skip
    assert c.records == s.records == records
    assert ("below a whole record" in c.records_reason) == (records == "openssl")
    payload = bytes(range(256)) * 80  # 20 KiB: full-size records
    got, sent = bytearray(), 0
    for _ in bounded("20 KiB through the rings", 100_000):
        sent += c.write(payload[sent:]) if sent < len(payload) else 0
        up.move()
        got += s.read() or b""
        if len(got) == len(payload):
            break
    assert bytes(got) == payload


@pytest.mark.parametrize("records", ["openssl", "direct"])
def test_shutdown_answers_as_ssl_shutdown(records: str) -> None:
    """Both record layers answer alike: the call that sends our close_notify reports only
    a close_notify already read (however fast the peer answers), the next call reads the
    peer's, and a write after it names the shutdown."""
    sctx, cctx = server_context(records=records), client_context(records=records)
    c, s, up, down = sansio_session("ring", sctx, cctx)
    s.read(), c.read()  # the tickets, so the client is past the hand-over
    assert c.records == s.records == records
    assert s.shutdown() is False
    down.move()  # the server's close_notify waits, unread, in the client's ring
    assert c.shutdown() is False  # sends ours; the server's is not read by this call
    assert c.shutdown() is True  # reads it
    up.move()
    assert s.shutdown() is True
    with pytest.raises(TLSError, match="shutdown"):
        c.write(b"after the end")


@pytest.mark.skipif(
    os.environ.get("WSSTLS_TEST_RECORDS") is not None,
    reason="WSSTLS_TEST_RECORDS changes the contexts' default",
)
def test_direct_is_the_default() -> None:
    """A context without ``records`` seals and opens its own TLS 1.3 records over the ring
    transport, and says why not elsewhere."""
    assert TLSContext(False).records == "direct"
    c, s, up, down = sansio_session("ring", server_context(), client_context())
    c.write(b"hello")
    up.move()
    assert s.read() == b"hello"
    down.move()
    c.read()
    assert c.records == s.records == "direct"
    assert s.records_counters()["opened"] >= 1
    fc, fs = socket_session("fd")
    try:
        assert fc.conn.records == "openssl" and "ring transport" in fc.conn.records_reason
    finally:
        fc.sock.close()
        fs.sock.close()


def test_records_argument_is_checked() -> None:
    with pytest.raises(ValueError, match="records must be one of openssl, direct"):
        TLSContext(False, records="kernel")
    with pytest.raises(TypeError, match="records must be a str"):
        TLSContext(False, records=1)  # type: ignore[arg-type]


def test_handover_waits_for_the_handshake_and_reports_it() -> None:
    cctx, sctx = direct_client(), direct_server()
    c = cctx.connection(transport="ring", server_hostname=HOST)
    s = sctx.connection(transport="ring")
    assert c.records == s.records == "handover"
    assert c.write(b"early") == 0  # drives the handshake: nothing to send yet
    up, down = Link(c, s), Link(s, c)
    for _ in bounded("handshake through reads"):
        up.move()
        assert s.read() is None
        down.move()
        assert c.read() is None
        if c.records == s.records == "direct":
            break
    assert c.write(b"late") == 4
    up.move()
    assert s.read() == b"late"
    assert (c.records, s.records) == ("direct", "direct")
    assert isinstance(c, TLSConnection)


def test_an_idle_direct_connection_parks_and_wakes() -> None:
    c, s, up, down = sansio_session("ring", direct_server(), direct_client())
    for i in range(3):
        assert c.write(b"ping %d" % i) == 6
        up.move()
        assert s.read() == b"ping %d" % i
        assert c.read() is None  # the tickets, read
        assert s.park() and c.park()  # nothing in flight: the rings go
        assert s.parked and not s.has_pending
        assert s.write(b"pong %d" % i) == 6  # the rings come back, the keys stay
        down.move()
        assert c.read() == b"pong %d" % i
    assert (c.records, s.records) == ("direct", "direct")


def test_a_parked_direct_connection_gives_back_its_spill_buffer_and_makes_it_again() -> None:
    """Reads smaller than a record spill its rest (a buffer of the record layer's own):
    parking waits for it to be read, frees it, and the next spill makes it again (the
    sanitizer stage checks that nothing freed is touched)."""
    c, s, up, _down = sansio_session("ring", direct_server(), direct_client())
    for i in range(3):
        data = bytes([65 + i]) * 5000
        assert c.write(data) == 5000
        up.move()
        got = s.read(10)  # the rest of the record waits in the spill buffer
        assert got == data[:10] and not s.park()
        while len(got) < 5000:
            more = s.read(1000)
            assert more
            got += more
        assert got == data
        assert c.read() is None  # the tickets, read
        assert s.park() and s.parked
    assert s.records == "direct"
