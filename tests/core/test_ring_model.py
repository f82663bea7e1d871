"""RingBuffer against a bytearray model, for the plain and the mirrored ring.

The model predicts everything the public contract fixes: the rounded capacity,
len/writable/empty/full, what every read/peek/readinto/discard/write returns,
the layout of the zero-copy views (0, 1 or 2 of them, in order, split exactly
at the end of ring memory for the plain ring, never split for the mirrored
one) and the copy counters: one copy per contiguous segment of ring memory a
copying operation touches, whichever path (staged or through views) it takes.
"""

from __future__ import annotations

import mmap
import random
from array import array

import pytest
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    RuleBasedStateMachine,
    initialize,
    invariant,
    precondition,
    rule,
)

from wsstls import RingBuffer, RingStats
from wsstls.ring import STAGE_SIZE

PAGE = mmap.PAGESIZE

# Bytes with no short period, so a byte landing at the wrong offset shows.
PATTERN = random.Random(20240501).randbytes(1 << 17)


def expected_capacity(requested: int, mirrored: bool) -> int:
    cap = 1
    while cap < requested:
        cap <<= 1
    return max(cap, PAGE) if mirrored else cap


def segments(cap: int, mirrored: bool, pos: int, n: int) -> list[tuple[int, int]]:
    """The (offset, length) pieces of ring memory holding n bytes at counter pos."""
    if n == 0:
        return []
    off = pos % cap
    if mirrored or off + n <= cap:
        return [(off, n)]
    return [(off, cap - off), (0, n - (cap - off))]


class Model:
    """The ring as a bytearray plus the read counter (its offset in ring memory)."""

    def __init__(self, cap: int, mirrored: bool) -> None:
        self.cap = cap
        self.mirrored = mirrored
        self.data = bytearray()
        self.tail = 0
        self.copies = 0
        self.bytes_copied = 0

    @property
    def head(self) -> int:
        return self.tail + len(self.data)

    @property
    def writable(self) -> int:
        return self.cap - len(self.data)

    def segments(self, pos: int, n: int) -> list[tuple[int, int]]:
        return segments(self.cap, self.mirrored, pos, n)

    def copied(self, pos: int, n: int) -> None:
        self.copies += len(self.segments(pos, n))
        self.bytes_copied += n

    def append(self, chunk: bytes) -> None:
        self.data += chunk

    def take(self, n: int, consume: bool) -> bytes:
        out = bytes(self.data[:n])
        if consume:
            del self.data[:n]
            self.tail += n
        return out

    def want(self, n: int | None) -> int:
        """How many bytes read(n)/peek(n) return."""
        if n is None or n < 0:
            return len(self.data)
        return min(n, len(self.data))


def as_type(payload: bytes, kind: str) -> object:
    if kind == "bytes":
        return payload
    if kind == "bytearray":
        return bytearray(payload)
    return memoryview(payload)


class RingMachine(RuleBasedStateMachine):
    mirrored = False
    # Tiny rings, rings around the staging size (both read paths), a big one.
    requested = st.one_of(
        st.integers(1, 9),
        st.integers(10, 300),
        st.integers(STAGE_SIZE - 3, 2 * STAGE_SIZE + 3),
    )

    def __init__(self) -> None:
        super().__init__()
        self.rb: RingBuffer | None = None
        self.model = Model(1, False)
        self.pattern_at = 0

    # ------------------------------------------------------------ helpers

    def size(self, data: st.DataObject, label: str) -> int:
        cap = self.model.cap
        return data.draw(
            st.one_of(
                st.integers(0, 8),
                st.integers(0, cap + 8),
                st.sampled_from(sorted({cap - 1, cap, cap + 1, STAGE_SIZE, STAGE_SIZE + 1, 10**6})),
            ),
            label=label,
        )

    def payload(self, n: int) -> bytes:
        at = self.pattern_at
        self.pattern_at = (at + n + 7) % (len(PATTERN) // 2)
        return PATTERN[at : at + n]

    def count_arg(self, data: st.DataObject, label: str) -> int | None:
        """An n for read/peek: None, negative, 0, small, around capacity, huge."""
        return data.draw(
            st.one_of(
                st.none(),
                st.integers(-(2**70), -1),
                st.sampled_from([-1, 0, 2**64, 2**70]),
                st.integers(0, self.model.cap + 3),
                st.sampled_from([STAGE_SIZE - 1, STAGE_SIZE, STAGE_SIZE + 1]),
            ),
            label=label,
        )

    @property
    def ring(self) -> RingBuffer:
        assert self.rb is not None
        return self.rb

    # -------------------------------------------------------------- rules

    @initialize(data=st.data())
    def create(self, data: st.DataObject) -> None:
        requested = data.draw(self.requested, label="capacity")
        self.rb = RingBuffer(requested, mirrored=self.mirrored)
        cap = expected_capacity(requested, self.mirrored)
        assert self.rb.capacity == cap
        assert self.rb.mirrored is self.mirrored
        self.model = Model(cap, self.mirrored)

    @rule(data=st.data(), kind=st.sampled_from(["bytes", "bytearray", "memoryview"]))
    def write(self, data: st.DataObject, kind: str) -> None:
        n = self.size(data, "n")
        payload = self.payload(n)
        expected = min(n, self.model.writable)
        assert self.ring.write(as_type(payload, kind)) == expected
        self.model.copied(self.model.head, expected)
        self.model.append(payload[:expected])

    @rule(blob=st.binary(max_size=40))
    def write_random(self, blob: bytes) -> None:
        expected = min(len(blob), self.model.writable)
        assert self.ring.write(blob) == expected
        self.model.copied(self.model.head, expected)
        self.model.append(blob[:expected])

    @rule(data=st.data())
    def read(self, data: st.DataObject) -> None:
        n = self.count_arg(data, "n")
        k = self.model.want(n)
        self.model.copied(self.model.tail, k)
        assert self.ring.read(n) == self.model.take(k, consume=True)

    @rule()
    def read_all_default(self) -> None:
        k = len(self.model.data)
        self.model.copied(self.model.tail, k)
        assert self.ring.read() == self.model.take(k, consume=True)

    @rule(data=st.data())
    def peek(self, data: st.DataObject) -> None:
        n = self.count_arg(data, "n")
        k = self.model.want(n)
        self.model.copied(self.model.tail, k)
        got = self.ring.peek(n)
        assert isinstance(got, bytes)
        assert got == self.model.take(k, consume=False)

    @rule(data=st.data(), kind=st.sampled_from(["bytearray", "memoryview", "array"]))
    def readinto(self, data: st.DataObject, kind: str) -> None:
        size = min(self.size(data, "size"), 3 * self.model.cap + 10)
        raw = bytearray(b"\xee" * size)
        buf: object = raw
        if kind == "memoryview":
            buf = memoryview(raw)
        elif kind == "array":
            buf = array("B", raw)
        k = min(size, len(self.model.data))
        self.model.copied(self.model.tail, k)
        assert self.ring.readinto(buf) == k
        got = bytes(buf)  # type: ignore[call-overload]
        assert got[:k] == self.model.take(k, consume=True)
        assert got[k:] == b"\xee" * (size - k)

    @rule(data=st.data())
    def discard(self, data: st.DataObject) -> None:
        n = data.draw(st.one_of(st.integers(0, self.model.cap + 3), st.just(2**70)), label="n")
        k = min(n, len(self.model.data))
        assert self.ring.discard(n) == k
        self.model.take(k, consume=True)

    @rule(n=st.integers(-(2**70), -1))
    def discard_negative(self, n: int) -> None:
        with pytest.raises(ValueError):
            self.ring.discard(n)

    @rule()
    def reset(self) -> None:
        self.ring.reset()
        self.model.data.clear()
        self.model.tail = 0

    @rule()
    def reset_stats(self) -> None:
        self.ring.reset_stats()
        self.model.copies = self.model.bytes_copied = 0

    @rule(data=st.data())
    def readable_views_consume(self, data: st.DataObject) -> None:
        views = self.ring.readable_views()
        expected = self.model.segments(self.model.tail, len(self.model.data))
        assert [len(v) for v in views] == [length for _, length in expected]
        assert all(v.format == "B" and v.contiguous for v in views)
        assert b"".join(views) == self.model.data
        if not self.mirrored and len(views) == 2:
            assert expected[0][0] + len(views[0]) == self.model.cap
        for v in views:
            v.release()
        with pytest.raises(ValueError):
            self.ring.consume(len(self.model.data) + 1)
        with pytest.raises(ValueError):
            self.ring.consume(-1)
        k = data.draw(st.integers(0, len(self.model.data)), label="consume")
        self.ring.consume(k)
        self.model.take(k, consume=True)

    @rule(data=st.data())
    def writable_views_commit(self, data: st.DataObject) -> None:
        views = self.ring.writable_views()
        expected = self.model.segments(self.model.head, self.model.writable)
        assert [len(v) for v in views] == [length for _, length in expected]
        assert all(not v.readonly and v.format == "B" for v in views)
        k = data.draw(st.integers(0, self.model.writable), label="commit")
        chunk = self.payload(k)
        at = 0
        for v in views:
            step = min(len(v), k - at)
            v[:step] = chunk[at : at + step]
            at += step
        for v in views:
            v.release()
        with pytest.raises(ValueError):
            self.ring.commit(self.model.writable + 1)
        with pytest.raises(ValueError):
            self.ring.commit(-1)
        self.ring.commit(k)
        self.model.append(chunk)

    @precondition(lambda self: self.model.writable > 0)
    @rule()
    def fill_to_full(self) -> None:
        chunk = self.payload(self.model.writable + 5)
        n = self.model.writable
        assert self.ring.write(chunk) == n
        self.model.copied(self.model.head, n)
        self.model.append(chunk[:n])
        assert self.ring.full
        assert self.ring.write(b"x") == 0
        assert self.ring.writable_views() == []

    # ---------------------------------------------------------- invariants

    @invariant()
    def matches_model(self) -> None:
        if self.rb is None:
            return
        rb, m = self.rb, self.model
        assert len(rb) == len(m.data)
        assert rb.writable == m.writable
        assert rb.empty is (len(m.data) == 0)
        assert rb.full is (len(m.data) == m.cap)
        assert rb.capacity == m.cap
        assert rb.stats == RingStats(m.copies, m.bytes_copied)

    def teardown(self) -> None:
        if self.rb is not None:
            self.rb.close()


class MirroredRingMachine(RingMachine):
    mirrored = True
    requested = st.sampled_from([1, PAGE - 1, PAGE, PAGE + 1, 2 * PAGE])


MACHINE_SETTINGS = settings(
    max_examples=250,
    stateful_step_count=40,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)

TestRingModel = pytest.mark.slow(RingMachine.TestCase)
TestRingModel.settings = MACHINE_SETTINGS
TestMirroredRingModel = pytest.mark.slow(MirroredRingMachine.TestCase)
TestMirroredRingModel.settings = settings(MACHINE_SETTINGS, max_examples=120)


# --------------------------------------------------- wrap at every offset


def _check_layout(views: list[memoryview], cap: int, mirrored: bool, pos: int, n: int) -> None:
    expected = segments(cap, mirrored, pos, n)
    assert [len(v) for v in views] == [length for _, length in expected], (pos, n)


@pytest.mark.slow
@pytest.mark.parametrize(
    ("requested", "mirrored"),
    [(1, False), (2, False), (5, False), (16, False), (2 * STAGE_SIZE, False), (PAGE, True)],
    ids=["plain-1", "plain-2", "plain-8", "plain-16", "plain-2stage", "mirrored"],
)
def test_wrap_at_every_offset(requested: int, mirrored: bool) -> None:
    rb = RingBuffer(requested, mirrored=mirrored)
    cap = rb.capacity
    assert cap == expected_capacity(requested, mirrored)
    lengths = sorted({0, 1, 2, 3, cap // 2, cap - 1, cap} & set(range(cap + 1)))
    src = PATTERN[: 3 * cap]
    for start in range(cap):
        for n in lengths:
            data = src[start : start + n]
            rest = src[cap + start : cap + start + cap - n]

            # Move both counters to `start`, then write across the wrap.
            rb.reset()
            assert rb.write(bytes(start)) == start
            assert rb.discard(start) == start
            assert rb.empty and rb.writable == cap
            _check_layout(rb.writable_views(), cap, mirrored, start, cap)
            assert rb.write(data) == n
            assert len(rb) == n

            assert rb.peek() == data
            assert rb.peek(n) == data
            assert rb.peek(max(n - 1, 0)) == data[: max(n - 1, 0)]
            views = rb.readable_views()
            _check_layout(views, cap, mirrored, start, n)
            assert b"".join(views) == data

            # Fill the free space (which also wraps) through the views.
            wviews = rb.writable_views()
            _check_layout(wviews, cap, mirrored, start + n, cap - n)
            at = 0
            for v in wviews:
                v[:] = rest[at : at + len(v)]
                at += len(v)
            assert at == cap - n
            rb.commit(cap - n)
            assert rb.full and rb.write(b"z") == 0
            assert rb.peek() == data + rest
            assert b"".join(rb.readable_views()) == data + rest

            # Drain in two steps that split at n: read then readinto.
            assert rb.read(n) == data
            buf = bytearray(cap)
            assert rb.readinto(buf) == cap - n
            assert bytes(buf[: cap - n]) == rest
            assert rb.empty

            # The same bytes in through the views, out through read(all).
            rb.reset()
            assert rb.write(bytes(start)) == start
            assert rb.discard(start) == start
            wviews = rb.writable_views()
            at = 0
            for v in wviews:
                step = min(len(v), n - at)
                v[:step] = data[at : at + step]
                at += step
            rb.commit(n)
            assert rb.read() == data
            assert rb.empty
    rb.close()


@pytest.mark.parametrize("mirrored", [False, True], ids=["plain", "mirrored"])
def test_stats_count_segments(mirrored: bool) -> None:
    """A copy that crosses the end of ring memory costs two (plain) or one (mirrored)."""
    rb = RingBuffer(PAGE, mirrored=mirrored)
    cap = rb.capacity
    rb.write(bytes(cap - 10))
    rb.discard(cap - 10)
    rb.reset_stats()
    assert rb.write(PATTERN[:30]) == 30
    wrapped = 1 if mirrored else 2
    assert rb.stats == RingStats(wrapped, 30)
    assert rb.peek(5) == PATTERN[:5]  # stays before the wrap: one copy
    assert rb.stats == RingStats(wrapped + 1, 35)
    assert rb.read(30) == PATTERN[:30]
    assert rb.stats == RingStats(2 * wrapped + 1, 65)
    rb.reset()
    assert rb.stats == RingStats(2 * wrapped + 1, 65)  # reset keeps the counters
    rb.close()
