"""Backpressure: every plaintext byte arrives exactly once, in order, however the buffers squeeze.

Hypothesis picks the ciphertext ring capacity (64 B .. 64 KiB), the write
sizes, and how and when each side drains: sans-IO (``take``/``feed`` in
random chunks; ``feed`` may take only part) and over a socketpair with small
kernel buffers.  Writes are partial under backpressure (``write`` returns
fewer bytes, or 0); the writer then retries with exactly the remaining bytes
of its chunk, which the ``fd`` transport requires (OpenSSL has already
encrypted them), and calls ``flush()`` for queued ciphertext.  Both
directions run at once.
"""

from __future__ import annotations

import random
import select
import socket

import pytest
from hypothesis import HealthCheck, Phase, event, given, settings
from hypothesis import strategies as st
from tlsutil import (
    HOST,
    SANS_IO_TRANSPORTS,
    TRANSPORTS,
    bounded,
    client_context,
    close_all,
    handshake,
    handshake_sansio,
    server_context,
    socketpair,
)

from wsstls import RingBuffer
from wsstls.tls import TLSConnection, TLSContext

SERVER: TLSContext = server_context()
CLIENT: TLSContext = client_context()
DATA = random.Random(3).randbytes(1 << 20)

capacities = st.one_of(
    st.integers(6, 16).map(lambda k: 1 << k),  # exact powers of two
    st.integers(64, 65536),  # rounded up by the ring, exact for the pair
)


def payload_sizes(most: int) -> st.SearchStrategy[int]:
    """Any size, with large ones (several records) as likely as small ones."""
    return st.integers(0, most) | st.integers(most // 2, most)


#: Per direction: write() (None) or write_from() through a staging ring of that capacity.
_staging = st.none() | st.integers(256, 70_000)
stagings = st.tuples(_staging, _staging)

common = settings(
    deadline=None,
    phases=[Phase.explicit, Phase.reuse, Phase.generate, Phase.shrink],  # no slow "explain"
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)


class Stream:
    """One direction: the writer's position in the payload and the reader's received bytes.

    With ``staging`` (a capacity) the writer stages the payload in a
    RingBuffer and sends with ``write_from``, which consumes what it accepts:
    the bytes it refused stay first in the ring, so the retry repeats them.
    """

    def __init__(
        self, payload: memoryview, rng: random.Random, max_write: int, staging: int | None = None
    ) -> None:
        self.payload = payload
        self.rng = rng
        self.max_write = max_write
        self.pos = 0  # bytes accepted by write()
        self.chunk_end = 0  # the current write's end: retries repeat [pos, chunk_end)
        self.ring = None if staging is None else RingBuffer(staging)
        self.staged = 0  # payload bytes put in the ring so far
        self.retry = False  # the last write_from took less than offered
        self.received = bytearray()
        self.partial_writes = 0
        self.zero_writes = 0

    @property
    def all_written(self) -> bool:
        return self.pos == len(self.payload)

    @property
    def done(self) -> bool:
        return len(self.received) == len(self.payload)

    def write(self, conn: TLSConnection) -> bool:
        """One write: a new random chunk, or a retry of the unaccepted rest of the last one."""
        if self.all_written:
            return False
        if self.ring is not None:
            return self.write_from(conn, self.ring)
        if self.pos == self.chunk_end:
            size = self.rng.choice([1, 17, 500, 4096, 16384, 16385, self.max_write])
            self.chunk_end = min(len(self.payload), self.pos + self.rng.randint(1, size))
        want = self.chunk_end - self.pos
        n = conn.write(self.payload[self.pos : self.chunk_end])
        assert 0 <= n <= want
        if n < want:
            self.partial_writes += 1
            self.zero_writes += n == 0
        self.pos += n
        return n > 0

    def write_from(self, conn: TLSConnection, ring: RingBuffer) -> bool:
        """Top the staging ring up, then write_from() all of it or (not on a retry) a part."""
        if self.staged < len(self.payload) and ring.writable:
            k = min(ring.writable, len(self.payload) - self.staged)
            size = self.rng.choice([1, 17, 500, 4096, 16384, self.max_write])
            k = self.rng.randint(1, min(k, size))
            assert ring.write(self.payload[self.staged : self.staged + k]) == k
            self.staged += k
        before = len(ring)
        assert self.staged - self.pos == before
        # After a partial write OpenSSL may hold a record made of the ring's
        # first bytes: offer at least those again (all of them).
        n_arg = -1 if self.retry or self.rng.random() < 0.5 else self.rng.randint(1, before)
        want = before if n_arg < 0 else n_arg
        n = conn.write_from(ring, n_arg)
        assert 0 <= n <= want and len(ring) == before - n
        self.retry = n < want
        if n < want:
            self.partial_writes += 1
            self.zero_writes += n == 0
        self.pos += n
        return n > 0

    def read(self, conn: TLSConnection) -> bool:
        """One read by a random method and size; checks the bytes against the payload."""
        how = self.rng.randrange(3)
        size = self.rng.choice([1, 100, 4096, 16384, 65536])
        if how == 0:
            got = conn.read(size)
        elif how == 1:
            buf = bytearray(size)
            n = conn.readinto(buf)
            got = None if n is None else bytes(buf[:n])
        else:
            ring = RingBuffer(size)
            n = conn.read_into(ring)
            if n == 0 and ring.full:
                n = None  # unreachable: an empty ring is never full
            got = None if n is None else ring.read()
            assert n is None or n == len(got)
        if got is None:
            return False
        assert got != b"", "close_notify in the middle of the stream"
        start = len(self.received)
        expect = self.payload[start : start + len(got)]
        if got != expect:
            bad = next(i for i in range(len(got)) if got[i] != expect[i])
            raise AssertionError(f"stream byte {start + bad} is wrong (lost or duplicated data)")
        self.received += got
        return True


def check_complete(*streams: Stream) -> None:
    for s in streams:
        assert bytes(s.received) == bytes(s.payload)
    event(f"partial writes: {any(s.partial_writes for s in streams)}")
    event(f"writes of 0: {any(s.zero_writes for s in streams)}")
    event(f"write_from: {any(s.ring is not None for s in streams)}")


# ================================================================ sans-IO


@pytest.mark.slow
@settings(common, max_examples=120)
@given(
    transport=st.sampled_from(SANS_IO_TRANSPORTS),
    capacity=capacities,
    sizes=st.tuples(payload_sizes(40_000), payload_sizes(40_000)),
    max_write=st.integers(1, 70_000),
    take_sizes=st.lists(st.sampled_from([1, 5, 64, 700, 4096, 20_000, -1]), min_size=1, max_size=6),
    staging=stagings,
    seed=st.integers(0, 2**32 - 1),
)
def test_sans_io_random_chunking(
    transport: str,
    capacity: int,
    sizes: tuple[int, int],
    max_write: int,
    take_sizes: list[int],
    staging: tuple[int | None, int | None],
    seed: int,
) -> None:
    rng = random.Random(seed)
    client = CLIENT.connection(transport=transport, server_hostname=HOST, ring_capacity=capacity)
    server = SERVER.connection(transport=transport, ring_capacity=capacity)
    up, down = handshake_sansio(client, server)
    view = memoryview(DATA)
    c2s = Stream(view[: sizes[0]], rng, max_write, staging[0])
    s2c = Stream(view[7 : 7 + sizes[1]], rng, max_write, staging[1])
    for _ in bounded("sans-IO transfer", 400_000, seconds=60):
        if c2s.done and s2c.done:
            break
        progress = False
        for stream, src, dst, link in ((c2s, client, server, up), (s2c, server, client, down)):
            if rng.random() < 0.8:
                progress |= stream.write(src)
            before = len(link.backlog) + src.pending_out
            link.move(take=rng.choice(take_sizes), feed=rng.choice([None, 1, 3, 100, 5000]))
            progress |= len(link.backlog) + src.pending_out != before
            if rng.random() < 0.7:
                progress |= stream.read(dst)
        if not progress:  # squeezed everywhere: drain completely once
            for stream, dst, link in ((c2s, server, up), (s2c, client, down)):
                link.move()
                stream.read(dst)
    check_complete(c2s, s2c)
    for _ in bounded("settling (TLS 1.3 tickets may still be in flight)", 10_000):
        if not (up.backlog or down.backlog or client.pending_out or server.pending_out):
            break
        for stream, dst, link in ((c2s, server, up), (s2c, client, down)):
            link.move()
            assert stream.read(dst) is False  # nothing beyond the payload
    # The ledgers agree with what moved.
    assert client.ledger().plain_out == server.ledger().plain_in == sizes[0]
    assert server.ledger().plain_out == client.ledger().plain_in == sizes[1]


@pytest.mark.parametrize("transport", ["ring", "pair"])
def test_sans_io_full_ring_makes_write_return_zero_then_resume(transport: str) -> None:
    """A ciphertext buffer of 64 B: write() takes nothing more until take() makes room."""
    client = CLIENT.connection(transport=transport, server_hostname=HOST, ring_capacity=64)
    server = SERVER.connection(transport=transport, ring_capacity=64)
    up, _ = handshake_sansio(client, server)
    payload = DATA[:5000]
    first = client.write(payload)
    assert first < len(payload)  # a record does not fit in 64 B
    assert client.write(payload[first:]) == 0  # still full: nothing accepted
    assert 0 < client.pending_out <= 64
    pos, got = first, bytearray()
    for _ in bounded("draining a 64 B ring", 10_000):
        if pos == len(payload) and len(got) == len(payload):
            break
        if pos < len(payload):
            pos += client.write(payload[pos:])  # the same bytes again
        up.move()
        data = server.read()
        if data:
            got += data
    assert bytes(got) == payload


# ============================================================ over sockets


def sock_bufsize(sock: socket.socket) -> int:
    return sock.getsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF)


@pytest.mark.slow
@settings(common, max_examples=80)
@given(
    transport=st.sampled_from(TRANSPORTS),
    capacity=capacities,
    bufsize=st.sampled_from([1024, 2048, 4096, 8192, 16384]),
    sizes=st.tuples(payload_sizes(150_000), payload_sizes(150_000)),
    max_write=st.integers(1, 100_000),
    staging=stagings,
    via_ring=st.booleans(),
    seed=st.integers(0, 2**32 - 1),
)
def test_socket_small_kernel_buffers(
    transport: str,
    capacity: int,
    bufsize: int,
    sizes: tuple[int, int],
    max_write: int,
    staging: tuple[int | None, int | None],
    via_ring: bool,
    seed: int,
) -> None:
    rng = random.Random(seed)
    cs, ss = socketpair(sndbuf=bufsize, rcvbuf=bufsize)
    try:
        via_ring = via_ring and transport == "ring"  # every byte through the rings
        client = CLIENT.connection(
            cs, transport=transport, server_hostname=HOST, ring_capacity=capacity, via_ring=via_ring
        )
        server = SERVER.connection(
            ss, transport=transport, ring_capacity=capacity, via_ring=via_ring
        )
        handshake([client, server], [cs, ss])
        view = memoryview(DATA)
        c2s = Stream(view[: sizes[0]], rng, max_write, staging[0])
        s2c = Stream(view[11 : 11 + sizes[1]], rng, max_write, staging[1])
        sides = ((c2s, client, cs, server), (s2c, server, ss, client))
        for _ in bounded("socket transfer", 400_000, seconds=60):
            if c2s.done and s2c.done:
                break
            progress = False
            for stream, src, _sock, dst in sides:
                if src.pending_out and rng.random() < 0.7:
                    progress |= src.flush() > 0
                if rng.random() < 0.8:
                    progress |= stream.write(src)
                if rng.random() < 0.6:
                    progress |= stream.read(dst)
            if not progress:
                # Wait for the kernel; a side with queued ciphertext or an
                # unfinished chunk wants to write, every side may read.
                # OpenSSL may hold decrypted bytes no socket event announces.
                w = [s for st_, src, s, _ in sides if src.pending_out or not st_.all_written]
                buffered = client.has_pending or server.has_pending
                select.select([cs, ss], w, [], 0 if buffered else 0.05)
                for stream, src, _sock, dst in sides:
                    if src.pending_out:
                        src.flush()
                    stream.read(dst)
        check_complete(c2s, s2c)
        for conn in (client, server):
            assert conn.pending_out == 0 or conn.flush() >= 0
    finally:
        close_all(cs, ss)


@pytest.mark.parametrize("transport", TRANSPORTS)
def test_socket_full_write_is_partial_and_flush_drains(transport: str) -> None:
    """Fill a small socket until write() refuses; then the reader drains and the rest follows."""
    cs, ss = socketpair(sndbuf=4096, rcvbuf=4096)
    try:
        client = CLIENT.connection(cs, transport=transport, server_hostname=HOST, ring_capacity=256)
        server = SERVER.connection(ss, transport=transport, ring_capacity=256)
        handshake([client, server], [cs, ss])
        payload = memoryview(DATA[:300_000])
        pos = 0
        for _ in bounded("filling the socket", 1_000):
            n = client.write(payload[pos:])
            assert 0 <= n <= len(payload) - pos
            pos += n
            if n == 0:
                break
        if transport == "mem":
            # Memory BIOs never refuse (as ssl.MemoryBIO): all accepted, the rest queued.
            assert pos == len(payload)
        else:
            # Refused (a record that does not fit may be refused whole: 0 at once).
            assert pos < len(payload)
            assert client.write(payload[pos:]) == 0  # nothing is taken twice or dropped
        if transport != "fd":
            assert client.pending_out > 0  # what the kernel refused waits in our buffer
            assert client.flush() == 0  # and cannot go anywhere yet
        got = bytearray()
        for _ in bounded("draining through the reader", 100_000):
            if len(got) == len(payload):
                break
            data = server.read(65536)
            if data:
                got += data
            if client.pending_out:
                client.flush()
            if pos < len(payload):
                pos += client.write(payload[pos:])
            if data is None:
                select.select([ss], [cs], [], 0.05)
        assert bytes(got) == bytes(payload)
        assert client.pending_out == 0
    finally:
        close_all(cs, ss)
