"""Volume and lifetime: 100 MiB through every transport, and 10,000 connections with flat memory.

The stream test runs both ends in one thread over a socketpair, waiting in
select(); the sender hashes what write() accepted, the receiver what it
decrypted (blake2b), straight from a plaintext RingBuffer's views.  The
lifetime test creates and destroys TLSConnection objects, a share of them
with a full in-memory handshake (ECDSA P-256), and requires the process's
memory after the last thousand cycles to be within a small bound of what it
was after the first thousand.  Under AddressSanitizer (WSSTLS_SANITIZED=1)
freed memory sits in ASan's quarantine, so RSS would grow without any leak:
there the bound applies to the allocator's own count of live bytes instead.
Both tests run at full size under the sanitizer too: only our C code is
instrumented (OpenSSL is the system's), so it stays within budget.
"""

from __future__ import annotations

import ctypes
import gc
import hashlib
import os
import random
import select
from collections.abc import Callable

import pytest
from tlsutil import (
    HOST,
    SANITIZED,
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
from wsstls.tls import TLSVersion

pytestmark = pytest.mark.slow

TOTAL = 100 * 2**20
PERIOD = 1_000_003  # not a power of two: a misplaced chunk does not match by accident
CHUNK = 256 * 1024
_BASE = random.Random(11).randbytes(PERIOD)
PATTERN = memoryview(_BASE + _BASE[:CHUNK])  # any CHUNK bytes of the stream are one slice


def stream_at(pos: int, n: int) -> memoryview:
    off = pos % PERIOD
    return PATTERN[off : off + n]


@pytest.mark.parametrize("transport", TRANSPORTS)
def test_100_mib_checksummed(transport: str) -> None:
    cs, ss = socketpair()
    try:
        client = client_context().connection(cs, transport=transport, server_hostname=HOST)
        server = server_context().connection(ss, transport=transport)
        handshake([client, server], [cs, ss])
        sent_hash, got_hash = hashlib.blake2b(), hashlib.blake2b()
        plain = RingBuffer(1 << 18)
        sent = got = 0
        chunk_end = 0  # a partly accepted chunk is retried with exactly its rest
        rng = random.Random(1)
        for _ in bounded(f"100 MiB over {transport}", 2_000_000, seconds=240):
            if got == TOTAL:
                break
            progress = False
            if client.pending_out:
                progress |= client.flush() > 0
            if sent < TOTAL:
                if sent == chunk_end:
                    chunk_end = min(TOTAL, sent + rng.randint(1, CHUNK))
                data = stream_at(sent, chunk_end - sent)
                n = client.write(data)
                if n:
                    sent_hash.update(data[:n])
                    sent += n
                    progress = True
            n = server.read_into(plain)
            if n:  # None: nothing decryptable yet; 0 with an empty ring: close_notify
                for view in plain.readable_views():
                    got_hash.update(view)
                    # The position check catches loss and duplication at once.
                    assert view == stream_at(got, len(view)), f"stream byte {got} onwards"
                    got += len(view)
                    plain.consume(len(view))
                progress = True
            else:
                assert n is None, "the stream ended early"
            if not progress:
                want_w = [cs] if client.pending_out or sent < TOTAL else []
                select.select([ss], want_w, [], 0.05)
        assert sent == got == TOTAL
        assert sent_hash.digest() == got_hash.digest()
        assert client.ledger().plain_out == server.ledger().plain_in == TOTAL
        assert client.shutdown() is False
        for _ in bounded("close_notify after 100 MiB"):
            if server.read() == b"":
                break
            select.select([ss], [], [], 0.05)
        assert server.shutdown() is True
    finally:
        close_all(cs, ss)


# ================================================================ lifetime

CYCLES = 10_000
BATCH = 1_000
# Every HANDSHAKE_EVERY-th cycle does a full sans-IO handshake plus one
# message (about a millisecond each, in C); the rest create and destroy.
HANDSHAKE_EVERY = 2
GROWTH_LIMIT = 2 * 2**20


def _asan_allocated() -> Callable[[], int] | None:
    """ASan's count of live heap bytes, when the sanitizer runtime is loaded."""
    try:
        f = ctypes.CDLL(None).__sanitizer_get_current_allocated_bytes
    except AttributeError:
        return None
    f.restype = ctypes.c_size_t
    f.argtypes = []
    return f  # type: ignore[no-any-return]


def _rss() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def memory_in_use() -> int:
    gc.collect()
    asan = _asan_allocated()
    if SANITIZED:
        assert asan is not None, "WSSTLS_SANITIZED=1 but no sanitizer runtime is loaded"
    return asan() if asan is not None else _rss()


def test_10000_connections_flat_memory() -> None:
    server_ctx, client_ctx = server_context(), client_context()
    tls12_ctx = client_context(max_version=TLSVersion.TLSv1_2)  # session ids, not 1.3 tickets
    transports = ["ring", "mem", "pair"]
    plain = RingBuffer(4096)
    fd_a, fd_b = socketpair()  # for the fd transport, which needs a socket
    marks = []
    handshakes = 0
    for i in range(CYCLES):
        transport = transports[i % 3]
        if i % HANDSHAKE_EVERY == 0:
            ctx = tls12_ctx if i % (5 * HANDSHAKE_EVERY) == 0 else client_ctx
            client = ctx.connection(transport=transport, server_hostname=HOST)
            server = server_ctx.connection(transport=transport)
            up, _ = handshake_sansio(client, server)
            client.write(b"cycle %d" % i)
            up.move()
            assert server.read_into(plain) == len(b"cycle %d" % i)
            assert plain.read() == b"cycle %d" % i
            handshakes += 1
            if i % (3 * HANDSHAKE_EVERY) == 0:
                client.close()  # explicit close on some, garbage collection on the others
                server.close()
        else:
            as_server = (i // HANDSHAKE_EVERY) % 2 == 0
            conn = (server_ctx if as_server else client_ctx).connection(
                fd_a if i % 5 == 1 else None,
                transport="fd" if i % 5 == 1 else transport,
                server_hostname=None if as_server else HOST,
                ring_capacity=1 << (6 + i % 11),
            )
            assert conn.version is None
            del conn
        client = server = None
        if (i + 1) % BATCH == 0:
            marks.append(memory_in_use())
    close_all(fd_a, fd_b)
    assert handshakes == CYCLES // HANDSHAKE_EVERY
    growth = marks[-1] - marks[0]
    assert growth <= GROWTH_LIMIT, f"memory grew by {growth} bytes over {CYCLES} cycles: {marks}"
