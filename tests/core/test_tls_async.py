"""OpenSSL ASYNC jobs through TLSConnection: our provider's AES-GCM pauses the SSL call.

A context with ``crypto="async"`` runs every SSL call in an ASYNC job; a record
of at least ``offload_threshold`` bytes goes to a crypto pool worker and the
call returns with ``want_async`` set.  The caller waits until ``async_fd`` is
readable and repeats the same call.  Counters are per connection here
(``async_stats``), so the equalities below are exact.
"""

from __future__ import annotations

import contextlib
import gc
import os
import select
import shutil
import socket
import subprocess
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from tlsutil import (
    HOST,
    WAIT_S,
    Peer,
    PeerThread,
    bounded,
    client_context,
    pki,
    recv_exactly,
    server_context,
    stdlib_client_context,
    tcp_pair,
)
from tlsutil import handshake as hs

from wsstls.tls import (
    TLSConnection,
    TLSContext,
    TLSEOFError,
    TLSError,
    TLSVersion,
    crypto_counters,
)

VERSIONS = {"TLSv1.2": {"max_version": TLSVersion.TLSv1_2}, "TLSv1.3": {}}
versions = pytest.mark.parametrize("version", list(VERSIONS))


def wait_async(conn: TLSConnection, what: str) -> None:
    r, _, _ = select.select([conn.async_fd], [], [], WAIT_S)
    assert r, f"{what}: the async fd was not readable after {WAIT_S} s"


def write_all(conn: TLSConnection, data: bytes, what: str = "write") -> int:
    """Write everything, waiting on the async fd whenever the call paused: WANT_ASYNC count."""
    sent = waits = 0
    for _ in bounded(what, 10_000):
        if sent == len(data):
            return waits
        n = conn.write(data[sent:])
        sent += n
        if conn.want_async:
            waits += 1
            wait_async(conn, what)
        else:
            assert n > 0, f"{what}: no progress and no pause"
    raise AssertionError("unreachable")


def read_n(conn: TLSConnection, n: int, what: str = "read") -> tuple[bytes, int]:
    got = bytearray()
    waits = 0
    for _ in bounded(what, 10_000):
        if len(got) >= n:
            break
        data = conn.read(65536)
        if data is None:
            assert conn.want_async, f"{what}: nothing to read and no pause"
            waits += 1
            wait_async(conn, what)
            continue
        assert data, "the peer's data ended early"
        got += data
    return bytes(got), waits


def session(version: str, threshold: int = 1024, transport: str = "mem", **server_kwargs: object):
    ctx = server_context(crypto="async", offload_threshold=threshold, **VERSIONS[version],
                         **server_kwargs)  # fmt: skip
    server = ctx.connection(transport=transport, ring_capacity=1 << 20)
    client = client_context().connection(transport="mem", server_hostname=HOST)
    handshake_async(client, server)
    client.feed(server.take())
    return client, server


def handshake_async(client: TLSConnection, server: TLSConnection) -> None:
    """Drive a sans-IO handshake whose server may pause in ASYNC jobs."""
    for _ in bounded("async handshake", 1_000):
        done_c = client.do_handshake()
        server.feed(client.take())
        done_s = server.do_handshake()
        if server.want_async:
            wait_async(server, "handshake")
        client.feed(server.take())
        if done_c and done_s:
            break


@versions
def test_async_engaged_and_counted(version: str) -> None:
    client, server = session(version)
    assert server.version == version and server.async_fd >= 0
    data = os.urandom(100_000)
    w = write_all(server, data, "server write")
    client.feed(server.take())
    assert read_n(client, len(data))[0] == data
    assert client.write(data) == len(data)
    server.feed(client.take())
    got, r = read_n(server, len(data), "server read")
    assert got == data
    stats = server.async_stats()
    assert w > 0 and r > 0
    assert stats["want_async"] == w + r  # every pause was seen by the caller...
    assert stats["pauses"] == stats["resumes"] == stats["want_async"]  # ...no spurious resume
    assert stats["offloaded"] == stats["pauses"]
    assert not server.want_async


def test_small_records_stay_inline() -> None:
    """Calls that can meet no record of the threshold run out of ASYNC jobs (the job
    is what small messages paid for); a big one still pauses."""
    client, server = session("TLSv1.3", threshold=16384)
    before = server.async_stats()
    for _ in range(20):
        assert server.write(b"m" * 64) == 64
        client.feed(server.take())
        assert read_n(client, 64)[0] == b"m" * 64
        assert client.write(b"n" * 64) == 64
        server.feed(client.take())
        assert read_n(server, 64)[0] == b"n" * 64
    stats = server.async_stats()
    assert stats["want_async"] == stats["pauses"] == 0
    assert stats["job_calls"] == before["job_calls"]  # not one call in a job
    assert stats["direct_calls"] - before["direct_calls"] >= 40
    big = os.urandom(40_000)
    assert write_all(server, big) > 0  # a write of big records still pauses
    client.feed(server.take())
    assert read_n(client, len(big))[0] == big
    assert client.write(big) == len(big)
    server.feed(client.take())
    assert read_n(server, len(big))[1] > 0  # and so does a read of them
    stats = server.async_stats()
    assert stats["pauses"] == stats["resumes"] == stats["want_async"]


def test_small_reads_stay_inline_on_a_socket() -> None:
    """The ring transport with a socket of its own: the next record's header is read
    into the ring first, so small reads stay out of jobs and a big one pauses."""
    ours, theirs = tcp_pair()
    try:
        ctx = server_context(crypto="async", offload_threshold=8192)
        conn = ctx.connection(ours, transport="ring")
        client = client_context().connection(theirs, transport="ring", server_hostname=HOST)
        hs([client, conn], [theirs, ours])
        before = conn.async_stats()
        for size in (64, 64, 1000, 30_000, 64):
            data = os.urandom(size)
            assert client.write(data) == size
            got, waits = read_sock(conn, ours, size)
            assert got == data
            assert (waits > 0) == (size >= 8192), (size, waits)
        stats = conn.async_stats()
        assert stats["job_calls"] - before["job_calls"] > 0  # the 30,000 B message's
        assert stats["direct_calls"] - before["direct_calls"] >= 4
        assert stats["pauses"] == stats["resumes"] == stats["want_async"]
        conn.close()
        client.close()
    finally:
        ours.close()
        theirs.close()


def read_sock(conn: TLSConnection, sock: socket.socket, n: int) -> tuple[bytes, int]:
    """Read n bytes from a socket-driven connection, waiting on socket or async fd."""
    got = bytearray()
    waits = 0
    for _ in bounded("socket read", 10_000):
        if len(got) >= n:
            break
        data = conn.read(65536)
        if data is None:
            if conn.want_async:
                waits += 1
                wait_async(conn, "socket read")
            else:
                select.select([sock], [], [], WAIT_S)
            continue
        assert data, "the peer's data ended early"
        got += data
    return bytes(got), waits


@versions
def test_key_update_while_paused(version: str) -> None:
    """SSL_key_update's handshake step would resume a paused call in its place (and
    lose its result): the update waits for the paused call, then goes out after it;
    the data on both sides is intact."""

    def paused_write(update: bool) -> tuple[bytes, TLSConnection, TLSConnection]:
        client, server = session(version)
        big = bytes(50_000)
        sent = server.write(big)
        assert server.want_async
        if update:  # while the write is paused, its work done (a resume would finish it)
            wait_async(server, "write")
            server.key_update(request=True)
        for _ in bounded("finish the paused write", 1_000):
            if sent == len(big):
                break
            if server.want_async:
                wait_async(server, "write")
            sent += server.write(big[sent:])
        assert not server.want_async
        wire = server.take()
        client.feed(wire)
        assert read_n(client, len(big))[0] == big
        return wire, client, server

    if version == "TLSv1.2":
        client, server = session(version)
        server.write(bytes(50_000))
        assert server.want_async
        with pytest.raises(TLSError):
            server.key_update()  # TLS 1.3 only, paused or not: never deferred
        return
    plain, _, _ = paused_write(False)
    wire, client, server = paused_write(True)
    assert len(wire) - len(plain) == 5 + 5 + 1 + 16  # one KeyUpdate record, after the data
    # The client answered the requested update; both directions still work.
    assert client.write(b"after") == 5
    server.feed(client.take())
    assert read_n(server, 5)[0] == b"after"
    assert server.write(b"back") == 4
    client.feed(server.take())
    assert read_n(client, 4)[0] == b"back"
    stats = server.async_stats()
    assert stats["pauses"] == stats["resumes"] == stats["want_async"]


def test_second_connection_progresses_while_first_is_paused() -> None:
    client_a, server_a = session("TLSv1.3")
    client_b, server_b = session("TLSv1.3")
    big = os.urandom(16384)
    assert server_a.write(big) == 0 and server_a.want_async  # A is paused now
    # B does whole round trips, big ones included, while A stays paused.
    for i in range(3):
        payload = bytes([i]) * 20_000
        write_all(server_b, payload, "B write")
        client_b.feed(server_b.take())
        assert read_n(client_b, len(payload))[0] == payload
    assert server_a.want_async  # still paused: nobody resumed it
    assert server_a.async_stats()["resumes"] == 0
    wait_async(server_a, "A")
    assert server_a.write(big) == len(big)  # the same call, resumed
    client_a.feed(server_a.take())
    assert read_n(client_a, len(big))[0] == big


def test_read_never_resumes_a_paused_write() -> None:
    client, server = session("TLSv1.2")
    assert client.write(b"hello") == 5
    server.feed(client.take())
    big = os.urandom(40_000)
    sent = server.write(big)
    assert sent < len(big) and server.want_async
    assert server.read() is None  # no SSL_read while the write is paused
    for _ in bounded("finish the paused write", 1_000):
        if sent == len(big):
            break
        if server.want_async:
            wait_async(server, "write")
        sent += server.write(big[sent:])
    client.feed(server.take())
    assert read_n(client, len(big))[0] == big
    assert server.read() == b"hello"


def paused(op: str, read: Callable[[TLSConnection], object]) -> tuple[TLSConnection, TLSConnection]:
    """A TLS 1.3 (client, server) whose server is paused in an ASYNC job, in a write of
    50,000 bytes or in ``read(server)`` of as many."""
    client, server = session("TLSv1.3")
    if op == "write":
        server.write(os.urandom(50_000))
    else:
        client.write(os.urandom(50_000))
        server.feed(client.take())
        assert read(server) is None
    assert server.want_async
    return client, server


@pytest.mark.parametrize("op", ["write", "read"])
def test_close_while_paused_frees_everything(op: str) -> None:
    """The sanitizer stage runs this: freeing a paused connection finishes its call."""
    for _ in range(20):
        client, server = paused(op, lambda s: s.read(65536))
        server.close()
        client.close()


@pytest.mark.parametrize("op", ["write", "read"])
def test_collected_while_paused_finishes_the_call(op: str) -> None:
    """A paused connection dropped without close() (garbage): its call is finished
    before the SSL object is freed (every pause resumed), its buffer alive until then."""
    before = crypto_counters()
    for _ in range(10):
        client, server = paused(op, lambda s: s.readinto(bytearray(65536)))  # into this buffer
        del client, server
        gc.collect()
    after = crypto_counters()
    assert after.pauses - before.pauses >= 10
    assert after.resumes - before.resumes == after.pauses - before.pauses


def test_connection_loss_while_paused() -> None:
    ours, theirs = tcp_pair()
    try:
        ctx = server_context(crypto="async", offload_threshold=1024)
        conn = ctx.connection(ours, transport="ring")
        client = client_context().connection(theirs, transport="ring", server_hostname=HOST)

        hs([client, conn], [theirs, ours])
        data = os.urandom(60_000)
        sent = conn.write(data)
        assert sent < len(data) and conn.want_async
        theirs.close()  # the peer is gone while the write is paused
        client.close()
        failed = False
        for _ in bounded("the paused write ends", 1_000):
            if sent == len(data) and not conn.want_async:
                break
            if conn.want_async:
                wait_async(conn, "paused write")
            try:
                sent += conn.write(data[sent:])  # the same call, resumed
            except TLSError:
                failed = True  # the socket is gone: the resumed write says so
                break
        assert failed or sent == len(data)
        assert not conn.want_async
        conn.close()
    finally:
        ours.close()


@pytest.mark.slow
@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    sizes=st.lists(st.integers(1, 120_000), min_size=1, max_size=4),
    threshold=st.sampled_from([0, 100, 4096, 16384]),
    version=st.sampled_from(list(VERSIONS)),
    cut=st.integers(1, 50_000),
)
def test_async_data_intact(sizes: list[int], threshold: int, version: str, cut: int) -> None:
    client, server = session(version, threshold)
    for n in sizes:
        data = bytes((i * 13 + n) & 0xFF for i in range(n))
        write_all(server, data)
        wire = server.take()
        for i in range(0, len(wire), cut):
            assert client.feed(wire[i : i + cut]) == len(wire[i : i + cut])
        assert read_n(client, n)[0] == data
        assert client.write(data) == n
        wire = client.take()
        for i in range(0, len(wire), cut):
            assert server.feed(wire[i : i + cut]) == len(wire[i : i + cut])
        assert read_n(server, n)[0] == data
    stats = server.async_stats()
    assert stats["pauses"] == stats["resumes"] == stats["want_async"]


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    sizes=st.lists(st.sampled_from([1, 64, 1000, 4000, 4100, 9000, 20_000]), min_size=1,
                   max_size=12),
    cuts=st.lists(st.integers(1, 30_000), min_size=1, max_size=6),
    version=st.sampled_from(list(VERSIONS)),
    read_ahead=st.booleans(),
)  # fmt: skip
def test_ring_reads_through_the_gate(sizes: list[int], cuts: list[int], version: str,
                                     read_ahead: bool) -> None:  # fmt: skip
    """The ring transport's reads see the next records' headers and give OpenSSL whole
    small records only: many records at once, cut anywhere, small and big mixed (threshold
    4096), arrive intact, every pause resumed, and no read of only small records in a job."""
    client, server = session(version, 4096, "ring")
    if read_ahead is False:
        ctx = server.context
        server = ctx.connection(transport="ring", ring_capacity=1 << 20, read_ahead=False)
        client = client_context().connection(transport="mem", server_hostname=HOST)
        handshake_async(client, server)
    data = b"".join(bytes([i]) * n for i, n in enumerate(sizes))
    for i, n in enumerate(sizes):
        assert client.write(bytes([i]) * n) == n
    wire = client.take()
    jobs_before = server.async_stats()["job_calls"]
    got = bytearray()
    at = k = 0
    buf = bytearray(65536)
    for _ in bounded("gate reads", 200_000):
        if len(got) == len(data):
            break
        if at < len(wire):
            step = cuts[k % len(cuts)]
            k += 1
            assert server.feed(wire[at : at + step]) == len(wire[at : at + step])
            at += step
        for _ in bounded("drain", 1_000):
            n = server.readinto(buf)
            if n is None:
                if not server.want_async:
                    break
                wait_async(server, "gate read")
                continue
            got += buf[:n]
    assert bytes(got) == data
    stats = server.async_stats()
    assert stats["pauses"] == stats["resumes"] == stats["want_async"]
    if max(sizes) < 4096 - 64:
        assert stats["job_calls"] == jobs_before


@pytest.mark.parametrize("cut", [3, 50, None])
def test_end_of_stream_through_the_gate(cut: int | None) -> None:
    """The gate gives OpenSSL whole records only, until the end of the stream: then a
    record cut short (or a header) reaches OpenSSL and the read ends, as inline."""
    client, server = session("TLSv1.3", 4096, "ring")
    assert client.write(b"x" * 100) == 100
    wire = client.take()
    server.feed(wire[:cut])
    assert server.read() == (b"x" * 100 if cut is None else None)  # a cut one waits
    server.feed_eof()
    with pytest.raises(TLSEOFError if cut is None else (TLSEOFError, TLSError)):
        for _ in bounded("the end of the stream", 10):
            assert server.read() is None or cut is None
    assert not server.want_async


def async_echo(conn: TLSConnection, sock: socket.socket, total: int) -> Peer:
    """Echo over a socket until `total` bytes came back out, waiting on the async fd too."""
    server = Peer(conn, sock)
    echoed = 0
    for _ in bounded("async echo", 200_000):
        try:
            server.step()
        except TLSEOFError:  # the client closes once it has the whole echo
            assert server.sent == total and conn.pending_out == 0
            return server
        if len(server.received) > echoed:
            server.queue(bytes(server.received[echoed:]))
            echoed = len(server.received)
        if echoed >= total and not server.wants_write and not conn.want_async:
            return server
        fds = [sock] + ([conn.async_fd] if conn.want_async else [])
        select.select(fds, [sock] if server.wants_write else [], [], 0.05)
    raise AssertionError("unreachable")


@versions
def test_stdlib_client_interop(version: str) -> None:
    ours, theirs = tcp_pair()
    payload = os.urandom(300_000)
    try:
        conn = server_context(crypto="async", offload_threshold=2048, **VERSIONS[version])
        conn = conn.connection(ours, transport="ring")

        def client() -> bytes:
            theirs.setblocking(True)
            theirs.settimeout(WAIT_S)
            with stdlib_client_context().wrap_socket(theirs, server_hostname=HOST) as s:
                s.sendall(payload)
                return recv_exactly(s, len(payload))

        peer = PeerThread(client)
        peer.start()

        hs([conn], [ours], "handshake with stdlib ssl")
        assert conn.version == version
        async_echo(conn, ours, len(payload))
        assert peer.result() == payload
        assert conn.async_stats()["pauses"] > 0
    finally:
        ours.close()
        theirs.close()


@pytest.fixture(scope="module")
def ca_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("pki") / "ca.pem"
    path.write_bytes(pki().ca_pem)
    return path


@contextlib.contextmanager
def s_client(args: list[str]) -> Iterator[subprocess.Popen[bytes]]:
    proc = subprocess.Popen(["openssl", "s_client", *args], stdin=subprocess.PIPE,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)  # fmt: skip
    try:
        yield proc
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.wait(timeout=WAIT_S)
        for pipe in (proc.stdin, proc.stdout, proc.stderr):
            if pipe is not None:
                pipe.close()


@pytest.mark.skipif(shutil.which("openssl") is None, reason="no openssl command")
@pytest.mark.parametrize(
    "ctx_kwargs",
    [
        {"crypto": "async", "offload_threshold": 512},
        {"pipelines": 4, "split_send_fragment": 1024},
        {"pipelines": 4, "split_send_fragment": 1024, "crypto": "async", "offload_threshold": 512},
    ],
    ids=["async", "pipelined", "pipelined+async"],
)
def test_openssl_s_client_tls12(ca_file: Path, ctx_kwargs: dict[str, object]) -> None:
    payload = b"".join(b"line %05d of the s_client echo test\n" % i for i in range(2000))
    with socket.create_server(("127.0.0.1", 0)) as listener:
        port = listener.getsockname()[1]
        args = ["-connect", f"127.0.0.1:{port}", "-tls1_2", "-brief", "-CAfile", str(ca_file)]
        args += ["-verify_return_error", "-servername", HOST]
        with s_client(args) as proc:
            assert proc.stdin is not None and proc.stdout is not None
            out_fd = proc.stdout.fileno()
            os.set_blocking(out_fd, False)
            listener.settimeout(WAIT_S)
            sock, _ = listener.accept()
            try:
                sock.setblocking(False)
                conn = server_context(**ctx_kwargs).connection(sock, transport="ring")
                for _ in bounded("handshake with s_client", 10_000):
                    if conn.do_handshake():
                        break
                    conn.flush()
                    fds = [sock] + ([conn.async_fd] if conn.want_async else [])
                    select.select(fds, [], [], 0.05)
                proc.stdin.write(payload)
                proc.stdin.flush()
                server = Peer(conn, sock)
                echoed = 0
                out = bytearray()
                for _ in bounded("echo through s_client", 200_000):
                    server.step()
                    if len(server.received) > echoed:
                        server.queue(bytes(server.received[echoed:]))
                        echoed = len(server.received)
                    if len(out) >= len(payload):
                        break
                    fds = [sock, out_fd] + ([conn.async_fd] if conn.want_async else [])
                    r, _, _ = select.select(fds, [], [], 0.05)
                    if out_fd in r:
                        chunk = os.read(out_fd, 65536)
                        assert chunk, "s_client exited before the echo was complete"
                        out += chunk
                assert bytes(out) == payload
                assert conn.version == "TLSv1.2"
            finally:
                sock.close()


def test_context_knob_errors_do_not_leave_state() -> None:
    with pytest.raises(ValueError, match="crypto"):
        TLSContext(True, crypto="nope")
