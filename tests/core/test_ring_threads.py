"""One producer thread and one consumer thread move 100 MiB through a small ring.

cffi releases the GIL around each C call, so the two sides really run at the
same time: the memcpy of one overlaps the other's.  The stream is a
pseudo-random pattern; the consumer checks every chunk against it in place
(so a failure names the stream offset) and both sides hash what they moved.
Every loop is bounded by a deadline: a bug fails the test, it never hangs.
"""

from __future__ import annotations

import functools
import hashlib
import random
import threading
import time
from array import array
from collections.abc import Callable

import pytest

from wsstls import RingBuffer

TOTAL = 100 * 2**20
RING = 64 * 1024
DEADLINE_S = 120.0

# The stream: byte i is PATTERN[i % PERIOD].  PERIOD is not a power of two,
# so a chunk delivered at the wrong ring offset does not match by accident.
PERIOD = 1_000_003
_BASE = random.Random(7).randbytes(PERIOD)
PATTERN = _BASE + _BASE[: 2 * RING]  # so any 2 * RING bytes are one slice


class Stop(Exception):
    """The other side failed: leave quietly."""


class Pipe:
    """Shared state of one run: the ring, the deadline, the first failure."""

    def __init__(self, mirrored: bool) -> None:
        self.rb = RingBuffer(RING, mirrored=mirrored)
        self.deadline = time.monotonic() + DEADLINE_S
        self.failed = threading.Event()
        self.errors: list[BaseException] = []
        self.spins = 0

    def wait(self, side: str) -> None:
        """Nothing to do this turn: yield, fail past the deadline."""
        if self.failed.is_set():
            raise Stop
        if time.monotonic() > self.deadline:
            raise AssertionError(f"{side} passed the {DEADLINE_S} s deadline")
        time.sleep(0)


def size(rng: random.Random, most: int) -> int:
    """A chunk size in 1..most: small ones half the time, for many interleavings."""
    return rng.randint(1, min(most, 4096) if rng.random() < 0.5 else most)


def chunk_at(pos: int, n: int) -> memoryview:
    """n (<= 2 * RING) stream bytes starting at stream offset pos."""
    off = pos % PERIOD
    return memoryview(PATTERN)[off : off + n]


def expect(pos: int, got: bytes | memoryview) -> None:
    want = chunk_at(pos, len(got))
    if want != got:
        bad = next(i for i in range(len(got)) if got[i] != want[i])
        raise AssertionError(f"stream byte {pos + bad}: got {got[bad]}, want {want[bad]}")


# ------------------------------------------------------------ producers


def produce_write(p: Pipe, h: hashlib.blake2b, rng: random.Random) -> None:
    pos = 0
    while pos < TOTAL:
        data = chunk_at(pos, min(size(rng, 3 * RING // 2), TOTAL - pos))
        n = p.rb.write(data)
        assert 0 <= n <= len(data)
        if n == 0:
            p.wait("producer")
            continue
        h.update(data[:n])
        pos += n


def produce_views(p: Pipe, h: hashlib.blake2b, rng: random.Random) -> None:
    pos = 0
    while pos < TOTAL:
        views = p.rb.writable_views()
        if not views:
            p.wait("producer")
            continue
        room = sum(len(v) for v in views)
        want = min(size(rng, room), TOTAL - pos)
        put = 0
        for v in views:
            data = chunk_at(pos + put, min(len(v), want - put))
            v[: len(data)] = data
            h.update(data)
            put += len(data)
        p.rb.commit(put)
        pos += put


def produce_mixed(p: Pipe, h: hashlib.blake2b, rng: random.Random) -> None:
    pos = 0
    while pos < TOTAL:
        if rng.random() < 0.5:
            data = chunk_at(pos, min(rng.randint(1, RING), TOTAL - pos))
            n = p.rb.write(data)
            h.update(data[:n])
        else:
            views = p.rb.writable_views()
            n = 0
            if views:
                data = chunk_at(pos, min(len(views[0]), rng.randint(1, RING), TOTAL - pos))
                views[0][: len(data)] = data
                p.rb.commit(len(data))
                h.update(data)
                n = len(data)
        if n == 0:
            p.wait("producer")
        pos += n


# ------------------------------------------------------------ consumers


def consume_read(p: Pipe, h: hashlib.blake2b, rng: random.Random) -> None:
    pos = 0
    sizes = [1, 100, 2047, 2048, 2049, 4096, RING // 2, RING, -1]  # staged and view paths
    while pos < TOTAL:
        got = p.rb.read(rng.choice(sizes))
        if not got:
            p.wait("consumer")
            continue
        expect(pos, got)
        h.update(got)
        pos += len(got)


def consume_readinto(p: Pipe, h: hashlib.blake2b, rng: random.Random) -> None:
    pos = 0
    buffers = [bytearray(n) for n in (1, 777, 4096, RING, 2 * RING)]
    buffers.append(array("B", bytes(3000)))  # type: ignore[arg-type]
    while pos < TOTAL:
        buf = rng.choice(buffers)
        n = p.rb.readinto(buf)
        if n == 0:
            p.wait("consumer")
            continue
        got = memoryview(buf)[:n]
        expect(pos, got)
        h.update(got)
        pos += n


def consume_views(p: Pipe, h: hashlib.blake2b, rng: random.Random) -> None:
    pos = 0
    while pos < TOTAL:
        views = p.rb.readable_views()
        if not views:
            p.wait("consumer")
            continue
        avail = sum(len(v) for v in views)
        want = size(rng, avail)
        used = 0
        for v in views:
            part = v[: want - used]
            expect(pos + used, part)
            h.update(part)
            used += len(part)
            if used == want:
                break
        p.rb.consume(used)
        pos += used


def consume_mixed(p: Pipe, h: hashlib.blake2b, rng: random.Random) -> None:
    pos = 0
    buf = bytearray(RING)
    while pos < TOTAL:
        kind = rng.randrange(4)
        if kind == 0:
            got: bytes | memoryview = p.rb.read(rng.randint(1, RING))
        elif kind == 1:
            got = memoryview(buf)[: p.rb.readinto(memoryview(buf)[: rng.randint(1, RING)])]
        elif kind == 2:
            got = p.rb.peek(rng.randint(1, 5000))
        else:
            views = p.rb.readable_views()
            got = views[0][: rng.randint(1, len(views[0]))] if views else b""
        if not got:
            p.wait("consumer")
            continue
        expect(pos, got)
        h.update(got)
        if kind == 2:
            assert p.rb.discard(len(got)) == len(got)
        elif kind == 3:
            p.rb.consume(len(got))  # only now may the producer reuse that space
        pos += len(got)


Side = Callable[[Pipe, "hashlib.blake2b", random.Random], None]

PRODUCERS: dict[str, Side] = {
    "write": produce_write,
    "views": produce_views,
    "mixed": produce_mixed,
}
CONSUMERS: dict[str, Side] = {
    "read": consume_read,
    "readinto": consume_readinto,
    "views": consume_views,
    "mixed": consume_mixed,
}

PAIRS = [
    ("write", "read"),
    ("write", "readinto"),
    ("views", "views"),
    ("mixed", "mixed"),
]


@functools.cache
def stream_digest() -> str:
    h = hashlib.blake2b()
    for pos in range(0, TOTAL, PERIOD):
        h.update(chunk_at(pos, min(PERIOD, TOTAL - pos)))
    return h.hexdigest()


def run_pair(mirrored: bool, producer: Side, consumer: Side, seed: int) -> None:
    p = Pipe(mirrored)
    hashes = {"producer": hashlib.blake2b(), "consumer": hashlib.blake2b()}

    def body(name: str, fn: Side, rng: random.Random) -> None:
        try:
            fn(p, hashes[name], rng)
        except Stop:
            pass
        except BaseException as exc:
            p.errors.append(exc)
            p.failed.set()

    threads = [
        threading.Thread(target=body, args=("producer", producer, random.Random(seed))),
        threading.Thread(target=body, args=("consumer", consumer, random.Random(seed + 1))),
    ]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=max(0.0, p.deadline - time.monotonic()) + 10)
    assert not any(t.is_alive() for t in threads), "a side is stuck"
    if p.errors:
        raise p.errors[0]
    assert hashes["producer"].hexdigest() == stream_digest()
    assert hashes["consumer"].hexdigest() == stream_digest()
    assert p.rb.empty and len(p.rb) == 0
    p.rb.close()


@pytest.mark.slow
@pytest.mark.parametrize("mirrored", [False, True], ids=["plain", "mirrored"])
@pytest.mark.parametrize(("producer", "consumer"), PAIRS, ids=[f"{a}-{b}" for a, b in PAIRS])
def test_spsc_100mib(mirrored: bool, producer: str, consumer: str) -> None:
    seed = sum(map(ord, producer + consumer)) + mirrored
    run_pair(mirrored, PRODUCERS[producer], CONSUMERS[consumer], seed)
