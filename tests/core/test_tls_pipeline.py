"""OpenSSL pipelining through TLSConnection: our pipeline-capable AES-GCM.

A context with ``pipelines=N`` seals one TLS 1.2 write's records N to a
cipher call (in parallel on the crypto pool) and opens records that arrived
together N to a call; TLS 1.3 stays at one record per call.  The counters are
process-wide, so every test reads differences around what it does.
"""

from __future__ import annotations

import socket
import ssl
import threading

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from tlsutil import (
    HOST,
    WAIT_S,
    PeerThread,
    bounded,
    client_context,
    handshake_sansio,
    pki,
    recv_exactly,
    server_context,
    stdlib_client_context,
    stdlib_server_context,
    tcp_pair,
)

from wsstls.tls import TLSConnection, TLSContext, TLSVersion, crypto_counters

TLS12 = {"max_version": TLSVersion.TLSv1_2}
TLS13 = {"min_version": TLSVersion.TLSv1_3}


def delta(before: object, after: object) -> dict[str, int]:
    return {k: getattr(after, k) - getattr(before, k) for k in ("cipher_calls", "cipher_records")}


def read_all(conn: TLSConnection, n: int) -> bytes:
    got = bytearray()
    for _ in bounded("read everything fed", 10_000):
        if len(got) >= n:
            break
        data = conn.read(65536)
        assert data, "the peer's data ended early"
        got += data
    return bytes(got)


def session(
    server_kwargs: dict[str, object], client_kwargs: dict[str, object], transport: str = "mem"
) -> tuple[TLSConnection, TLSConnection]:
    server = server_context(**server_kwargs).connection(transport=transport)
    client = client_context(**client_kwargs).connection(transport=transport, server_hostname=HOST)
    handshake_sansio(client, server)
    client.feed(server.take())  # TLS 1.3 tickets
    return client, server


@pytest.mark.parametrize("pipes", [2, 4, 8])
def test_pipelined_write_reaches_n_records_per_call(pipes: int) -> None:
    client, server = session({"pipelines": pipes, "split_send_fragment": 4096, **TLS12}, {})
    assert server.version == "TLSv1.2" and "GCM" in (server.cipher or "")
    data = bytes(range(256)) * 256  # 64 KiB: 16 records of 4 KiB
    before = crypto_counters()
    assert server.write(data) == len(data)
    after = crypto_counters()
    client.feed(server.take())
    assert read_all(client, len(data)) == data
    d = delta(before, after)
    assert d["cipher_records"] == 16
    assert d["cipher_calls"] == 16 // pipes  # each call carried N records
    assert after.cipher_max_records >= pipes
    assert after.parallel_calls > before.parallel_calls  # the pool took a share


def test_pipelined_read_opens_several_records_per_call() -> None:
    # The client (provider cipher, not counted) sends 64 KiB in 4 records;
    # all of them arrive together at the pipelined server.
    client, server = session({"pipelines": 4, **TLS12}, {})
    data = bytes(range(251)) * 261
    assert client.write(data) == len(data)
    server.feed(client.take())
    before = crypto_counters()
    assert read_all(server, len(data)) == data
    after = crypto_counters()
    d = delta(before, after)
    assert d["cipher_records"] == 4
    assert d["cipher_calls"] < d["cipher_records"]  # more than one record per call


def test_tls13_stays_at_one_record_per_call() -> None:
    client, server = session({"pipelines": 8, "split_send_fragment": 4096}, TLS13)
    assert server.version == "TLSv1.3"
    data = b"x" * 65536
    before = crypto_counters()
    assert server.write(data) == len(data)
    client.feed(server.take())
    assert read_all(client, len(data)) == data
    client.write(data)
    server.feed(client.take())
    assert read_all(server, len(data)) == data
    d = delta(before, crypto_counters())
    assert d["cipher_records"] >= 8  # our cipher ran (4 records each way)...
    assert d["cipher_calls"] == d["cipher_records"]  # ...one record a call


def test_pipelines_zero_leaves_the_provider_cipher() -> None:
    before = crypto_counters()
    client, server = session({"split_send_fragment": 4096, **TLS12}, {})
    server.write(b"y" * 65536)
    client.feed(server.take())
    assert read_all(client, 65536) == b"y" * 65536
    assert delta(before, crypto_counters())["cipher_calls"] == 0


def test_stdlib_ssl_is_not_taken_over() -> None:
    """Pipelined contexts exist in this process; Python's ssl keeps its own ciphers."""
    pipelined = [server_context(pipelines=8, **TLS12) for _ in range(2)]
    before = crypto_counters()
    a, b = socket.socketpair()
    a.settimeout(WAIT_S)
    b.settimeout(WAIT_S)
    server = stdlib_server_context()
    server.maximum_version = ssl.TLSVersion.TLSv1_2
    server_done = threading.Event()

    def serve() -> bytes:
        with server.wrap_socket(b, server_side=True) as s:
            got = recv_exactly(s, 100_000)
            s.sendall(got[::-1])
            server_done.wait(WAIT_S)
            return got

    peer = PeerThread(serve)
    peer.start()
    with stdlib_client_context().wrap_socket(a, server_hostname=HOST) as c:
        assert "GCM" in c.cipher()[0]
        c.sendall(b"z" * 100_000)
        assert recv_exactly(c, 100_000) == b"z" * 100_000
        server_done.set()
    assert peer.result() == b"z" * 100_000
    assert delta(before, crypto_counters())["cipher_calls"] == 0
    del pipelined


@settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    sizes=st.lists(st.integers(1, 200_000), min_size=1, max_size=4),
    pipes=st.sampled_from([2, 3, 8, 32]),
    split=st.sampled_from([512, 1000, 4096, 16384]),
    cut=st.integers(1, 70_000),
)
def test_pipelined_data_intact(sizes: list[int], pipes: int, split: int, cut: int) -> None:
    """Any sizes, split sizes and delivery cuts: both directions arrive intact."""
    client, server = _session(pipes, split)
    for n in sizes:
        data = bytes((i * 7 + n) & 0xFF for i in range(n))
        for src, dst in ((server, client), (client, server)):
            sent = 0
            for _ in bounded("write everything", 1_000):
                if sent == n:
                    break
                sent += src.write(data[sent:])
                wire = src.take()
                for i in range(0, len(wire), cut):  # deliver in cuts
                    assert dst.feed(wire[i : i + cut]) == len(wire[i : i + cut])
            assert read_all(dst, n) == data


_CTX: dict[tuple[int, int], TLSContext] = {}


def _session(pipes: int, split: int) -> tuple[TLSConnection, TLSConnection]:
    key = (pipes, split)
    if key not in _CTX:
        _CTX[key] = server_context(pipelines=pipes, split_send_fragment=split, **TLS12)
    server = _CTX[key].connection(transport="mem", ring_capacity=1 << 20)
    client = client_context(pipelines=pipes, **TLS12).connection(
        transport="mem", server_hostname=HOST
    )
    handshake_sansio(client, server)
    return client, server


def test_stdlib_client_and_server_interop() -> None:
    """A pipelined wsstls server with Python's ssl as its client, over TCP."""
    ours, theirs = tcp_pair()
    try:
        conn = server_context(pipelines=4, split_send_fragment=2048, **TLS12).connection(
            ours, transport="ring"
        )
        payload = bytes(range(256)) * 1024

        def client() -> bytes:
            theirs.setblocking(True)
            theirs.settimeout(WAIT_S)
            with stdlib_client_context().wrap_socket(theirs, server_hostname=HOST) as s:
                s.sendall(payload)
                return recv_exactly(s, len(payload))

        peer = PeerThread(client)
        peer.start()
        from tlsutil import Peer, drive, handshake

        handshake([conn], [ours], "handshake with stdlib ssl")
        server = Peer(conn, ours)
        echoed = 0

        def done() -> bool:
            nonlocal echoed
            if len(server.received) > echoed:
                server.queue(bytes(server.received[echoed:]))
                echoed = len(server.received)
            return echoed == len(payload) and not server.wants_write

        before = crypto_counters()
        drive([server], done, "echo to stdlib ssl")
        assert peer.result() == payload
        assert crypto_counters().cipher_max_records >= 4
        assert crypto_counters().cipher_records > before.cipher_records
        assert conn.version == "TLSv1.2"
    finally:
        ours.close()
        theirs.close()


@pytest.mark.parametrize(
    ("kwargs", "error", "match"),
    [
        ({"pipelines": 33}, ValueError, "pipelines"),
        ({"pipelines": -1}, ValueError, "pipelines"),
        ({"pipelines": "8"}, TypeError, "pipelines"),
        ({"split_send_fragment": 100}, ValueError, "split_send_fragment"),
        ({"max_send_fragment": 1024, "split_send_fragment": 2048}, ValueError, "split"),
        ({"max_send_fragment": 20000}, ValueError, "max_send_fragment"),
        ({"read_buffer_len": -1}, ValueError, "read_buffer_len"),
        ({"crypto": "threads"}, ValueError, "crypto"),
        ({"offload_threshold": -1}, ValueError, "offload_threshold"),
        ({"crypto_threads": 0}, ValueError, "crypto_threads"),
    ],
)
def test_bad_knobs(kwargs: dict[str, object], error: type[Exception], match: str) -> None:
    with pytest.raises(error, match=match):
        TLSContext(True, **kwargs)  # type: ignore[arg-type]


def test_knobs_are_kept() -> None:
    ctx = server_context(pipelines=4, crypto="async", offload_threshold=1000)  # (certified)
    assert (ctx.pipelines, ctx.crypto.value, ctx.offload_threshold) == (4, "async", 1000)
    assert pki()  # (the shared PKI is usable alongside)
