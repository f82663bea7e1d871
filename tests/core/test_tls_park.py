"""Parking a TLS connection: its buffers are given back while nothing is in flight, taken
again by the next call that moves bytes, and nothing else about the session changes."""

from __future__ import annotations

import pytest
from tlsutil import (
    SANS_IO_TRANSPORTS,
    TRANSPORTS,
    client_context,
    close_all,
    drive,
    sansio_session,
    server_context,
    socket_session,
)

from wsstls.tls import TLSConnection


def test_not_before_the_handshake_ends() -> None:
    s = server_context().connection(transport="ring")
    assert not s.park() and not s.parked


@pytest.mark.parametrize("transport", SANS_IO_TRANSPORTS)
def test_sans_io_parked_both_ways_then_traffic_goes_on(transport: str) -> None:
    c, s, up, down = sansio_session(transport)
    # tickets the client has not read yet: its side is not idle, the server's is
    assert s.park() and s.parked
    assert s.pending_out == 0 and not s.has_pending
    for round_ in range(3):
        msg = b"m%d" % round_ * 100
        assert c.write(msg) == len(msg)
        up.move()  # feeding moves bytes: it takes the buffers back
        assert not s.parked and s.read(1000) == msg
        assert s.write(msg[::-1]) == len(msg)
        assert not s.park()  # the reply waits to be taken
        down.move()
        assert c.read(1000) == msg[::-1]
        assert s.park() and c.park()


def test_park_refused_while_ciphertext_or_plaintext_waits() -> None:
    c, s, up, _down = sansio_session("ring")
    c.write(b"a" * 5000)
    up.move(feed=100)  # part of a record: ciphertext in the ring
    assert not s.park()
    up.move()
    assert s.read(10) == b"a" * 10  # the rest of the record's plaintext inside OpenSSL
    assert not s.park()
    assert s.read(10_000) == b"a" * 4990
    assert s.park()


@pytest.mark.parametrize("transport", TRANSPORTS)
def test_over_a_socket_each_transport(transport: str) -> None:
    client, server = socket_session(transport)
    try:
        # the server end may still be sending tickets until the client reads
        drive([client, server], lambda: server.conn.pending_out == 0, "tickets out")
        for _ in range(3):
            assert server.conn.park()
            client.queue(b"hello" * 1000)
            drive([client, server], lambda: len(server.received) >= 5000, "to the server")
            assert bytes(server.received) == b"hello" * 1000 and not server.conn.parked
            server.received.clear()
            server.queue(b"back" * 2000)
            drive([client, server], lambda: len(client.received) >= 8000, "back")
            assert bytes(client.received) == b"back" * 2000
            client.received.clear()
    finally:
        close_all(client.sock, server.sock)


def test_ledger_keeps_the_copies_of_rings_freed_by_parking() -> None:
    c, s, up, _down = sansio_session("ring")
    c.write(b"x" * 1000)
    up.move()
    assert s.read(2000) == b"x" * 1000
    before = s.ledger().ring_copies
    assert before > 0  # sans-IO: feed wrote into the incoming ring
    assert s.park()
    assert s.ledger().ring_copies == before
    s.reset_ledger()
    assert s.ledger().ring_copies == 0


def test_shutdown_of_a_parked_connection_sends_close_notify() -> None:
    c, s, _up, down = sansio_session("ring")
    assert s.park()
    s.shutdown()
    down.move()
    assert c.read() == b""  # close_notify


def test_wrapper_checks() -> None:
    conn = TLSConnection(client_context(), transport="ring", server_hostname="localhost")
    assert not conn.park()
    conn.close()
    with pytest.raises(ValueError):
        conn.park()
    with pytest.raises(ValueError):
        _ = conn.parked
    _ = server_context()
