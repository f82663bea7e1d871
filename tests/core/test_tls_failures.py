"""How wsstls TLS connections fail: verification, hostile bytes, truncation, shutdown, misuse.

A failure must surface as TLSError (or TLSEOFError for a truncated stream)
carrying OpenSSL's reason, a clean close as b""/0, misuse as ValueError or
TypeError naming the argument; nothing may crash the interpreter.  The
socket cases run on every transport, the sans-IO ones on ring, mem and pair.
"""

from __future__ import annotations

import datetime
import functools
import random
import select
import socket
from collections.abc import Callable, Iterator
from typing import Any

import pytest
import trustme
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from tlsutil import (
    HOST,
    PKI,
    SANS_IO_TRANSPORTS,
    TRANSPORTS,
    bounded,
    client_context,
    close_all,
    drive,
    handshake_sansio,
    other_pki,
    pki,
    sansio_session,
    server_context,
    socket_session,
    socketpair,
)

from wsstls import RingBuffer
from wsstls.tls import (
    TLSConnection,
    TLSContext,
    TLSEOFError,
    TLSError,
    TLSVersion,
    Transport,
    self_signed,
)

transports = pytest.mark.parametrize("transport", TRANSPORTS)
sans_io = pytest.mark.parametrize("transport", SANS_IO_TRANSPORTS)
ALERT = 0x15  # TLS record content type "alert"


@pytest.fixture
def pair() -> Iterator[tuple[socket.socket, socket.socket]]:
    a, b = socketpair()
    yield a, b
    close_all(a, b)


def handshake_error(
    client: TLSConnection, c_sock: socket.socket, server: TLSConnection, s_sock: socket.socket
) -> tuple[TLSError, TLSError]:
    """Drive both handshakes over sockets until each side has failed: their errors."""
    errors: list[TLSError | None] = [None, None]
    for _ in bounded("both sides failing"):
        for i, conn in enumerate((client, server)):
            if errors[i] is None:
                try:
                    if conn.do_handshake():
                        assert conn.read() != b"", "closed cleanly instead of failing"
                except TLSError as exc:
                    errors[i] = exc
        if errors[0] is not None and errors[1] is not None:
            return errors[0], errors[1]
        select.select([c_sock, s_sock], [], [], 0.05)
    raise AssertionError("unreachable")


# ================================================================ verification


def expired_pki() -> PKI:
    ca = trustme.CA()
    past = datetime.datetime(2020, 1, 1, tzinfo=datetime.timezone.utc)
    leaf = ca.issue_cert(HOST, not_before=past, not_after=past + datetime.timedelta(days=1))
    return PKI(ca, leaf, leaf)


@pytest.fixture(scope="module")
def expired() -> tuple[TLSContext, TLSContext]:
    p = expired_pki()
    return server_context(p), client_context(p)


@functools.cache
def self_signed_server() -> TLSContext:
    """wsstls's own in-memory RSA certificate, which no client here trusts."""
    pair = self_signed(HOST)
    return TLSContext(True, cert_pem=pair.cert_pem, key_pem=pair.key_pem)


def verify_contexts(case: str, expired: tuple[TLSContext, TLSContext]) -> tuple[TLSContext, ...]:
    if case == "unknown-ca":
        return server_context(other_pki()), client_context()
    if case == "self-signed":
        return self_signed_server(), client_context()
    return expired


REASONS = {
    # case: (the client's verify result, the alert the server receives)
    "unknown-ca": ("(unable to get local issuer certificate)", "alert unknown ca"),
    "self-signed": ("(self-signed certificate)", "alert unknown ca"),
    "expired": ("(certificate has expired)", "alert certificate expired"),
}


@transports
@pytest.mark.parametrize("case", list(REASONS))
def test_untrusted_server_certificate(
    pair: tuple[socket.socket, socket.socket],
    expired: tuple[TLSContext, TLSContext],
    transport: str,
    case: str,
) -> None:
    server_ctx, client_ctx = verify_contexts(case, expired)
    cs, ss = pair
    client = client_ctx.connection(cs, transport=transport, server_hostname=HOST)
    server = server_ctx.connection(ss, transport=transport)
    c_err, s_err = handshake_error(client, cs, server, ss)
    client_reason, alert = REASONS[case]
    assert "certificate verify failed" in str(c_err) and client_reason in str(c_err)
    assert not isinstance(c_err, TLSEOFError)
    # Our client's alert reached the server (it did not just see the socket end).
    assert alert in str(s_err) and not isinstance(s_err, TLSEOFError)
    # Dead for good: the same error again, never a crash.
    with pytest.raises(TLSError, match="certificate verify failed"):
        client.do_handshake()
    with pytest.raises(TLSError):
        client.write(b"x")


@transports
@pytest.mark.parametrize(
    ("hostname", "reason"),
    [("wrong.example", "(hostname mismatch)"), ("10.1.2.3", "(IP address mismatch)")],
)
def test_wrong_hostname(
    pair: tuple[socket.socket, socket.socket], transport: str, hostname: str, reason: str
) -> None:
    cs, ss = pair
    client = client_context().connection(cs, transport=transport, server_hostname=hostname)
    server = server_context().connection(ss, transport=transport)
    c_err, s_err = handshake_error(client, cs, server, ss)
    assert "certificate verify failed" in str(c_err) and reason in str(c_err)
    assert "alert bad certificate" in str(s_err)


@sans_io
@pytest.mark.parametrize("case", ["unknown-ca", "wrong-hostname"])
def test_verification_failure_sans_io_sends_an_alert(transport: str, case: str) -> None:
    if case == "unknown-ca":
        server_ctx, host, reason = server_context(other_pki()), HOST, "unable to get local issuer"
    else:
        server_ctx, host, reason = server_context(), "wrong.example", "hostname mismatch"
    client = client_context().connection(transport=transport, server_hostname=host)
    server = server_ctx.connection(transport=transport)
    with pytest.raises(TLSError) as info:
        for _ in bounded("sans-IO verification failure", 50):
            client.do_handshake()
            server.feed(client.take())
            server.do_handshake()
            client.feed(server.take())
    assert "certificate verify failed" in str(info.value) and reason in str(info.value)
    alert = client.take()
    assert alert and alert[0] == ALERT
    server.feed(alert)
    with pytest.raises(TLSError, match="alert"):
        server.do_handshake()


# ============================================================ hostile bytes

GARBAGE = {
    "http": b"GET / HTTP/1.1\r\nHost: localhost\r\n\r\n",
    "zeros": bytes(64),
    "bad-handshake-body": b"\x16\x03\x01\x00\x05hello",
    "app-data-first": b"\x17\x03\x03\x00\x10" + bytes(16),
    "record-too-long": b"\x16\x03\x03\xff\xff" + bytes(100),
    "random": random.Random(5).randbytes(3000),
}
garbage = pytest.mark.parametrize("kind", list(GARBAGE))


@sans_io
@garbage
def test_garbage_to_server_sans_io(transport: str, kind: str) -> None:
    server = server_context().connection(transport=transport)
    server.feed(GARBAGE[kind])
    with pytest.raises(TLSError) as info:
        server.do_handshake()
    assert not isinstance(info.value, TLSEOFError)
    assert str(info.value)
    out = server.take()
    assert out == b"" or out[0] == ALERT  # an alert or nothing, never a ServerHello
    with pytest.raises(TLSError):
        server.do_handshake()  # dead for good
    with pytest.raises(TLSError):
        server.read()


@transports
@garbage
def test_garbage_to_server_socket(
    pair: tuple[socket.socket, socket.socket], transport: str, kind: str
) -> None:
    raw, ss = pair
    server = server_context().connection(ss, transport=transport)
    raw.sendall(GARBAGE[kind])
    with pytest.raises(TLSError) as info:
        for _ in bounded("server failing on garbage"):
            assert server.do_handshake() is False
            select.select([ss], [], [], 0.05)
    assert not isinstance(info.value, TLSEOFError)
    answer = b""
    try:
        answer = raw.recv(4096)
    except BlockingIOError:
        pass
    assert answer == b"" or answer[0] == ALERT


def client_hello() -> bytes:
    client = client_context().connection(transport="mem", server_hostname=HOST)
    assert client.do_handshake() is False
    hello = client.take()
    assert hello[0] == 0x16 and len(hello) > 100
    return hello


@sans_io
def test_truncated_client_hello_sans_io(transport: str) -> None:
    hello = client_hello()
    server = server_context().connection(transport=transport)
    server.feed(hello[: len(hello) // 2])
    assert server.do_handshake() is False  # half a record: waiting, not failing
    server.feed_eof()
    with pytest.raises(TLSEOFError):
        server.do_handshake()
    with pytest.raises(TLSError):
        server.do_handshake()


@transports
def test_truncated_client_hello_socket(
    pair: tuple[socket.socket, socket.socket], transport: str
) -> None:
    hello = client_hello()
    raw, ss = pair
    server = server_context().connection(ss, transport=transport)
    raw.sendall(hello[:-7])
    for _ in range(3):
        assert server.do_handshake() is False
    raw.shutdown(socket.SHUT_WR)
    with pytest.raises(TLSEOFError):
        for _ in bounded("server seeing the truncation"):
            assert server.do_handshake() is False
            select.select([ss], [], [], 0.05)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    transport=st.sampled_from(SANS_IO_TRANSPORTS),
    data=st.binary(min_size=1, max_size=2048),
    prefix=st.sampled_from([b"", b"\x16\x03\x01", b"\x16\x03\x03\x00\x40", b"\x15\x03\x03"]),
)
def test_fuzzed_bytes_to_a_fresh_server(transport: str, data: bytes, prefix: bytes) -> None:
    server = server_context().connection(transport=transport)
    server.feed(prefix + data)
    try:
        done = server.do_handshake()
    except TLSError:
        out = server.take()
        assert out == b"" or out[0] == ALERT
        return
    assert done is False  # random bytes never complete a handshake


@settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    transport=st.sampled_from(SANS_IO_TRANSPORTS),
    data=st.binary(min_size=1, max_size=4096),
    header=st.sampled_from([b"", b"\x17\x03\x03\x00\x20", b"\x15\x03\x03\x00\x02"]),
)
def test_fuzzed_bytes_to_an_established_session(transport: str, data: bytes, header: bytes) -> None:
    _, server, _, _ = sansio_session(transport)
    server.feed(header + data)
    try:
        got = server.read()
    except TLSError:
        return
    assert got is None  # forged records never decrypt to plaintext


# ================================================= truncation after handshake


def raw_client_session(
    transport: str, pair: tuple[socket.socket, socket.socket]
) -> tuple[TLSConnection, TLSConnection]:
    """A sans-IO client whose ciphertext the test moves by hand to a socket server."""
    raw, ss = pair
    server = server_context().connection(ss, transport=transport)
    client = client_context().connection(transport="mem", server_hostname=HOST)
    done_c = done_s = False
    for _ in bounded("raw client handshake"):
        if not done_c:
            done_c = client.do_handshake()
        raw.sendall(client.take())
        if not done_s:
            done_s = server.do_handshake()
        try:
            client.feed(raw.recv(65536))
        except BlockingIOError:
            pass
        if done_c and done_s:
            return client, server
        select.select([raw, ss], [], [], 0.05)
    raise AssertionError("unreachable")


def read_until_error(server: TLSConnection, sock: socket.socket) -> tuple[bytes, TLSError]:
    got = bytearray()
    for _ in bounded("reading until the truncation"):
        try:
            data = server.read()
        except TLSError as exc:
            return bytes(got), exc
        assert data != b"", "a truncation was reported as a clean close"
        if data:
            got += data
        else:
            select.select([sock], [], [], 0.05)
    raise AssertionError("unreachable")


@transports
@pytest.mark.parametrize("cut", ["mid-header", "mid-record", "record-boundary"])
def test_peer_closes_mid_stream(
    pair: tuple[socket.socket, socket.socket], transport: str, cut: str
) -> None:
    raw, ss = pair
    client, server = raw_client_session(transport, pair)
    payload = random.Random(2).randbytes(40_000)  # records of 16384, 16384, 7232 bytes
    assert client.write(payload) == len(payload)
    records = client.take()
    first = 16384 + 22  # one TLS 1.3 record: header, plaintext, type byte, tag
    offset = {"mid-header": first + 3, "mid-record": first + 5000, "record-boundary": first}[cut]
    raw.sendall(records[:offset])
    raw.shutdown(socket.SHUT_WR)
    got, exc = read_until_error(server, ss)
    assert isinstance(exc, TLSEOFError), exc
    assert got == payload[:16384]  # the complete record, nothing of the cut one
    with pytest.raises(TLSEOFError):
        server.read()
    with pytest.raises(TLSEOFError):
        server.shutdown()  # no close_notify after a truncation


@sans_io
@pytest.mark.parametrize("keep", [1, 5, 300, 16384 + 21])
def test_truncated_record_sans_io(transport: str, keep: int) -> None:
    client, server, _, _ = sansio_session(transport)
    client.write(bytes(20_000))
    records = client.take()
    server.feed(records[:keep])
    assert server.read() is None  # an incomplete record: wait for more
    server.feed_eof()
    with pytest.raises(TLSEOFError, match="close_notify"):
        server.read()
    with pytest.raises(TLSEOFError):
        server.read_into(RingBuffer(1024))


@transports
def test_socket_closed_without_close_notify(transport: str) -> None:
    client, server = socket_session(transport)
    try:
        client.queue(b"unfinished business")
        drive([client, server], lambda: len(server.received) == 19, "the last message")
        client.sock.close()
        with pytest.raises(TLSEOFError):
            for _ in bounded("server seeing EOF without close_notify"):
                assert server.conn.read() is None
                select.select([server.sock], [], [], 0.05)
        # Shutting down after a truncation reports it again rather than pretending.
        with pytest.raises(TLSEOFError):
            server.conn.shutdown()
    finally:
        close_all(client.sock, server.sock)


@pytest.mark.parametrize(
    ("transport", "via_ring"), [*((t, False) for t in TRANSPORTS), ("ring", True)]
)
@pytest.mark.parametrize("ending", ["fin", "close_notify"])
def test_the_first_read_after_the_end_reports_it(
    transport: str, via_ring: bool, ending: str
) -> None:
    """Once the socket shows the end, one read reports it: no "wait" that no event would end."""
    client, server = socket_session(transport, via_ring=via_ring)
    try:
        client.queue(b"12345")
        drive([client, server], lambda: bytes(server.received) == b"12345", "the data")
        if ending == "close_notify":
            assert client.conn.shutdown() is False
        client.sock.shutdown(socket.SHUT_WR)
        r, _, _ = select.select([server.sock], [], [], 10)
        assert r
        if ending == "fin":
            with pytest.raises(TLSEOFError):
                server.conn.read()
        else:
            assert server.conn.read() == b""
    finally:
        close_all(client.sock, server.sock)


# ============================================================ clean shutdown


@transports
@pytest.mark.parametrize("first", ["client", "server"])
def test_clean_shutdown_socket(transport: str, first: str) -> None:
    client, server = socket_session(transport)
    a, b = (client, server) if first == "client" else (server, client)
    try:
        a.queue(b"last words")
        drive([a, b], lambda: bytes(b.received) == b"last words", "the last words")
        assert a.conn.shutdown() is False  # ours sent, the peer's not yet seen
        drive([a, b], lambda: b.peer_closed, "close_notify reaching the peer")
        assert bytes(b.received) == b"last words"  # data before close_notify, in order
        assert b.conn.read() == b""  # and the close sticks
        ring = RingBuffer(64)
        assert b.conn.read_into(ring) == 0 and len(ring) == 0
        assert b.conn.shutdown() is True  # both close_notify exchanged on b's side
        for _ in bounded("the answering close_notify"):
            if a.conn.shutdown():
                break
            select.select([a.sock], [], [], 0.05)
        assert a.conn.read() == b""
        with pytest.raises(TLSError, match="shutdown"):
            a.conn.write(b"after the end")
    finally:
        close_all(client.sock, server.sock)


@sans_io
@pytest.mark.parametrize("first", ["client", "server"])
def test_clean_shutdown_sans_io(transport: str, first: str) -> None:
    client, server, up, down = sansio_session(transport)
    a, b, ab, ba = (client, server, up, down) if first == "client" else (server, client, down, up)
    a.write(b"bye")
    assert a.shutdown() is False
    ab.move()
    assert b.read() == b"bye"
    assert b.read() == b""
    assert b.read() == b""
    assert b.shutdown() is True
    ba.move()
    assert a.shutdown() is True
    assert a.read() == b""
    assert a.take() == b"" and b.take() == b""  # nothing more to send either way


@sans_io
def test_eof_right_after_close_notify_is_clean(transport: str) -> None:
    client, server, up, _ = sansio_session(transport)
    client.shutdown()
    up.move()
    server.feed_eof()
    assert server.read() == b""  # close_notify came first: not a truncation


# ================================================================ misuse

USES: dict[str, Callable[[TLSConnection], Any]] = {
    "do_handshake": lambda c: c.do_handshake(),
    "read": lambda c: c.read(),
    "readinto": lambda c: c.readinto(bytearray(10)),
    "read_into": lambda c: c.read_into(RingBuffer(64)),
    "write": lambda c: c.write(b"x"),
    "write-memoryview": lambda c: c.write(memoryview(b"xy")),
    "write_from": lambda c: c.write_from(RingBuffer(64)),
    "flush": lambda c: c.flush(),
    "shutdown": lambda c: c.shutdown(),
    "feed": lambda c: c.feed(b"x"),
    "feed_eof": lambda c: c.feed_eof(),
    "take": lambda c: c.take(),
    "pending_out": lambda c: c.pending_out,
    "has_pending": lambda c: c.has_pending,
    "version": lambda c: c.version,
    "cipher": lambda c: c.cipher,
    "alpn_protocol": lambda c: c.alpn_protocol,
    "peer_certificate": lambda c: c.peer_certificate,
    "session_reused": lambda c: c.session_reused,
    "errno": lambda c: c.errno,
    "ledger": lambda c: c.ledger(),
    "reset_ledger": lambda c: c.reset_ledger(),
}


@transports
@pytest.mark.parametrize("use", list(USES))
@pytest.mark.parametrize("state", ["fresh", "handshaken"])
def test_use_after_close(transport: str, use: str, state: str) -> None:
    client, server = socket_session(transport) if state == "handshaken" else (None, None)
    cs, ss = socketpair()
    try:
        conn = server.conn if server else server_context().connection(ss, transport=transport)
        sock = server.sock if server else ss
        conn.close()
        conn.close()  # twice is fine
        assert repr(conn) == "<TLSConnection closed>"
        with pytest.raises(ValueError, match="closed"):
            USES[use](conn)
        assert sock.fileno() >= 0  # close() leaves the socket to its owner
    finally:
        close_all(cs, ss, client and client.sock, server and server.sock)


def test_context_manager_closes() -> None:
    with server_context().connection() as conn:
        assert conn.version is None
    with pytest.raises(ValueError, match="closed"):
        conn.do_handshake()


def test_read_into_and_write_from_a_closed_ring() -> None:
    client, server, up, _ = sansio_session("ring")
    ring = RingBuffer(64)
    ring.close()
    with pytest.raises(ValueError, match="closed"):
        client.write_from(ring)
    client.write(b"data")
    up.move()
    with pytest.raises(ValueError, match="closed"):
        server.read_into(ring)
    assert server.read() == b"data"  # the connection is unharmed


def test_connection_outlives_its_context_variable() -> None:
    conn = server_context().connection(transport="mem")
    client = client_context().connection(transport="mem", server_hostname=HOST)
    handshake_sansio(client, conn)
    assert conn.version == "TLSv1.3"


def _ctx(**kw: Any) -> Callable[[], Any]:
    return lambda: TLSContext(False, verify=False, **kw)


def _conn(**kw: Any) -> Callable[[], Any]:
    return lambda: server_context().connection(**kw)


def _on_conn(f: Callable[[TLSConnection], Any]) -> Callable[[], Any]:
    return lambda: f(server_context().connection(transport="ring"))


BAD_ARGUMENTS: dict[str, tuple[Callable[[], Any], type[Exception], str]] = {
    # TLSContext
    "server-not-bool": (lambda: TLSContext(1), TypeError, "server"),  # type: ignore[arg-type]
    "cert_pem-int": (lambda: TLSContext(True, cert_pem=5, key_pem=b"k"), TypeError, "cert_pem"),
    "key_pem-list": (
        lambda: TLSContext(True, cert_pem=b"c", key_pem=[1]),  # type: ignore[arg-type]
        TypeError,
        "key_pem",
    ),
    "cadata-int": (_ctx(cadata=5), TypeError, "cadata"),
    "cafile-float": (_ctx(cafile=1.5), TypeError, "cafile"),
    "certfile-float": (lambda: TLSContext(True, certfile=1.5, keyfile="k"), TypeError, "certfile"),
    "cert-without-key": (lambda: TLSContext(True, cert_pem=b"c"), ValueError, "key"),
    "files-and-pem": (
        lambda: TLSContext(True, certfile="c", keyfile="k", cert_pem=b"c", key_pem=b"k"),
        ValueError,
        "not both",
    ),
    "verify-str": (lambda: TLSContext(False, verify="no"), TypeError, "verify"),
    "ciphers-int": (_ctx(ciphers=5), TypeError, "ciphers"),
    "ciphersuites-bytes": (_ctx(ciphersuites=b"TLS_AES_128_GCM_SHA256"), TypeError, "ciphersuites"),
    "alpn-one-str": (_ctx(alpn="h2"), TypeError, "alpn"),
    "alpn-int-name": (_ctx(alpn=[5]), TypeError, "alpn"),
    "alpn-empty-name": (_ctx(alpn=[""]), ValueError, "ALPN"),
    "alpn-long-name": (_ctx(alpn=["x" * 256]), ValueError, "ALPN"),
    "min_version-str": (_ctx(min_version="1.2"), TypeError, "min_version"),
    "min_version-unknown": (_ctx(min_version=0x0301), ValueError, "min_version"),
    "max_version-unknown": (_ctx(max_version=999), ValueError, "max_version"),
    "min-above-max": (
        _ctx(min_version=TLSVersion.TLSv1_3, max_version=TLSVersion.TLSv1_2),
        ValueError,
        "min_version",
    ),
    "num_tickets-str": (lambda: TLSContext(True, num_tickets="2"), TypeError, "num_tickets"),
    "num_tickets-negative": (lambda: TLSContext(True, num_tickets=-1), ValueError, "num_tickets"),
    # (it would fail only at the first handshake, "no shared cipher")
    "server-without-certificate": (lambda: TLSContext(True), ValueError, "needs a certificate"),
    "server-without-certificate-verifying": (
        lambda: TLSContext(True, verify=True, cadata=pki().ca_pem),
        ValueError,
        "needs a certificate",
    ),
    "self_signed-name": (lambda: self_signed(5), TypeError, "name"),  # type: ignore[arg-type]
    "self_signed-bits": (lambda: self_signed(HOST, bits=512), ValueError, "bits"),
    "self_signed-days": (lambda: self_signed(HOST, days=0), ValueError, "days"),
    # TLSConnection
    "context-str": (lambda: TLSConnection("ctx"), TypeError, "context"),  # type: ignore[arg-type]
    "sock-str": (_conn(sock="sock"), TypeError, "sock"),
    "sock-float": (_conn(sock=1.5), TypeError, "sock"),
    "sock-negative-fd": (_conn(sock=-2), ValueError, "sock"),
    "sock-fd-not-open": (_conn(sock=2**31 - 1), ValueError, "sock"),
    "transport-name": (_conn(transport="tcp"), ValueError, "transport"),
    "transport-number": (_conn(transport=3), ValueError, "transport"),
    "ring_capacity-zero": (_conn(ring_capacity=0), ValueError, "ring_capacity"),
    "ring_capacity-negative": (_conn(ring_capacity=-64), ValueError, "ring_capacity"),
    "ring_capacity-huge": (_conn(ring_capacity=1 << 31), ValueError, "ring_capacity"),
    "ring_capacity-str": (_conn(ring_capacity="64"), TypeError, "ring_capacity"),
    "ring_capacity-float": (_conn(ring_capacity=64.0), TypeError, "ring_capacity"),
    "hostname-on-server": (_conn(server_hostname=HOST), ValueError, "server_hostname"),
    "hostname-int": (
        lambda: client_context().connection(server_hostname=5),
        TypeError,
        "server_hostname",
    ),
    "verifying-client-without-hostname": (
        lambda: client_context().connection(),
        ValueError,
        "server_hostname",
    ),
    # calls
    "write-str": (_on_conn(lambda c: c.write("text")), TypeError, "data"),
    "write-int": (_on_conn(lambda c: c.write(5)), TypeError, "data"),
    "feed-str": (_on_conn(lambda c: c.feed("text")), TypeError, "data"),
    "readinto-bytes": (_on_conn(lambda c: c.readinto(b"ro")), TypeError, "buffer"),
    "read_into-bytearray": (_on_conn(lambda c: c.read_into(bytearray(9))), TypeError, "ring"),
    "read_into-none": (_on_conn(lambda c: c.read_into(None)), TypeError, "ring"),
    "write_from-bytes": (_on_conn(lambda c: c.write_from(b"data")), TypeError, "ring"),
    "write_from-n-str": (_on_conn(lambda c: c.write_from(RingBuffer(8), "1")), TypeError, "n"),
    "read-zero": (_on_conn(lambda c: c.read(0)), ValueError, "n"),
    "read-str": (_on_conn(lambda c: c.read("5")), TypeError, "n"),
    "take-str": (_on_conn(lambda c: c.take("5")), TypeError, "n"),
}


@pytest.mark.parametrize("case", list(BAD_ARGUMENTS))
def test_bad_arguments(case: str) -> None:
    call, exc_type, names = BAD_ARGUMENTS[case]
    with pytest.raises(exc_type) as info:
        call()
    assert type(info.value) is exc_type  # not a subclass such as TLSError
    assert names in str(info.value)


def test_bad_pem_is_a_tls_error_with_openssl_reason() -> None:
    with pytest.raises(TLSError, match="no start line"):
        TLSContext(True, cert_pem=b"junk", key_pem=b"junk")
    with pytest.raises(TLSError, match="no start line"):
        TLSContext(False, cadata=b"junk")
    with pytest.raises(TLSError, match="no cipher match"):
        TLSContext(False, verify=False, ciphers="NO-SUCH-CIPHER")
    p = other_pki()  # a key that does not match the certificate
    with pytest.raises(TLSError, match="key values mismatch"):
        TLSContext(True, cert_pem=PKI.chain(p.server), key_pem=p.client.private_key_pem.bytes())


@pytest.mark.parametrize("transport", [t.value for t in Transport])
def test_blocking_socket_is_value_error(transport: str) -> None:
    """A blocking socket would make write() before the handshake block in OpenSSL for
    ever (it waits for the peer's hello); it is refused up front."""
    a, b = socket.socketpair()
    try:
        assert a.getblocking()
        with pytest.raises(ValueError, match="non-blocking"):
            client_context().connection(a, transport=transport, server_hostname=HOST)
        a.settimeout(5.0)  # a timeout makes the fd non-blocking: accepted
        conn = client_context().connection(a, transport=transport, server_hostname=HOST)
        assert conn.write(b"early") == 0  # waits for the handshake, does not block
    finally:
        close_all(a, b)


def _files(tmp_path: Any, chain: bytes, key: bytes) -> tuple[str, str]:
    cert_file, key_file = tmp_path / "chain.pem", tmp_path / "key.pem"
    cert_file.write_bytes(chain)
    key_file.write_bytes(key)
    return str(cert_file), str(key_file)


def _encrypted(key_pem: bytes) -> bytes:
    from cryptography.hazmat.primitives import serialization

    key = serialization.load_pem_private_key(key_pem, password=None)
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.BestAvailableEncryption(b"secret"),
    )


def test_certificate_errors_are_sentences_with_openssl_reason(tmp_path: Any) -> None:
    """What a user reads says what is wrong; OpenSSL's reason follows in parentheses."""
    p, other = pki(), other_pki()
    chain, key = p.chain(p.server), p.server.private_key_pem.bytes()
    with pytest.raises(FileNotFoundError) as missing:
        TLSContext(True, certfile=tmp_path / "none.pem", keyfile=tmp_path / "none.key")
    assert "none.pem" in str(missing.value) and "fopen" not in str(missing.value)

    cert_file, key_file = _files(tmp_path, chain, other.server.private_key_pem.bytes())
    with pytest.raises(TLSError) as mismatch:
        TLSContext(True, certfile=cert_file, keyfile=key_file)
    text = str(mismatch.value)
    sentence = (
        f"the private key in the key file {key_file!r} is not the key of "
        f"the certificate in the certificate file {cert_file!r}"
    )
    assert text.startswith(sentence), text
    assert text.endswith("(OpenSSL: key values mismatch)"), text

    cert_file, key_file = _files(tmp_path, chain, _encrypted(key))
    with pytest.raises(TLSError) as encrypted:
        TLSContext(True, certfile=cert_file, keyfile=key_file)
    text = str(encrypted.value)
    assert "is encrypted with a passphrase" in text, text
    assert text.index("(OpenSSL: ") > text.index("passphrase"), text

    cert_file, key_file = _files(tmp_path, key, key)
    with pytest.raises(TLSError, match="no certificate could be read from the certificate file"):
        TLSContext(True, certfile=cert_file, keyfile=key_file)
    with pytest.raises(TLSError, match="no private key could be read from key_pem"):
        TLSContext(True, cert_pem=chain, key_pem=chain)
    with pytest.raises(FileNotFoundError):
        TLSContext(False, cafile=tmp_path / "no-ca.pem")


def test_take_more_than_pending_is_just_what_is_there() -> None:
    client = client_context().connection(transport="ring", server_hostname=HOST)
    client.do_handshake()
    pending = client.pending_out
    assert pending > 0
    hello = client.take(1 << 40)
    assert len(hello) == pending and client.pending_out == 0


# ======================================================== sans-IO and fd


def test_sans_io_fd_transport_rejected() -> None:
    with pytest.raises(ValueError, match="fd transport needs a socket"):
        server_context().connection(transport="fd")
    with pytest.raises(ValueError, match="fd transport needs a socket"):
        TLSConnection(server_context(), None, transport=Transport.FD)


@pytest.mark.parametrize(
    "call",
    [lambda c: c.feed(b"x"), lambda c: c.feed_eof(), lambda c: c.take(), lambda c: c.take(10)],
    ids=["feed", "feed_eof", "take", "take-n"],
)
def test_sans_io_calls_on_an_fd_connection_rejected(
    pair: tuple[socket.socket, socket.socket], call: Callable[[TLSConnection], Any]
) -> None:
    _, ss = pair
    conn = server_context().connection(ss, transport="fd")
    with pytest.raises(ValueError, match="fd transport"):
        call(conn)
    assert conn.pending_out == 0
