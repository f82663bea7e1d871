"""The server's pool of plaintext rings (csrc/server/ringpool.c) and its C heap policy
(csrc/server/heap.c), driven through cffi."""

from __future__ import annotations

import errno
from collections.abc import Iterator

import pytest

from wsstls._native import ffi, lib


def counters(pool: object) -> tuple[int, int, int, int]:
    c = ffi.new("struct ringpool_counters *")
    lib.ringpool_counters(pool, c)
    return c.out, c.spare, c.created, c.reused


@pytest.fixture
def pool() -> Iterator[object]:
    p = lib.ringpool_new(65536, lib.RING_MIRRORED, 2)
    assert p != ffi.NULL
    yield p
    lib.ringpool_free(p)


def test_rings_are_reused_up_to_max_spare_then_destroyed(pool: object) -> None:
    assert counters(pool) == (0, 1, 1, 0)  # the trial ring is the first spare
    rings = [lib.ringpool_get(pool) for _ in range(4)]
    assert ffi.NULL not in rings and len(set(rings)) == 4
    assert counters(pool) == (4, 0, 4, 1)
    for r in rings:
        assert lib.ring_cap(r) == 65536 and lib.ring_mirrored(r)
        lib.ring_write(r, b"abc", 3)
    for r in rings:
        lib.ringpool_put(pool, r)
    assert counters(pool) == (0, 2, 4, 1)  # two kept, two destroyed
    again = lib.ringpool_get(pool)
    assert again == rings[1]  # the most recently kept first
    assert lib.ring_len(again) == 0  # returned rings are emptied
    lib.ringpool_put(pool, again)
    lib.ringpool_put(pool, ffi.NULL)  # a no-op
    lib.ringpool_shrink(pool, 0)
    assert counters(pool) == (0, 0, 4, 2)
    assert lib.ringpool_capacity(pool) == 65536


def test_no_spares_at_all() -> None:
    p = lib.ringpool_new(4096, 0, 0)
    try:
        r = lib.ringpool_get(p)
        assert r != ffi.NULL and lib.ring_cap(r) == 4096
        lib.ringpool_put(p, r)
        assert counters(p) == (0, 0, 2, 0)
    finally:
        lib.ringpool_free(p)


def test_bad_sizes_and_flags() -> None:
    assert lib.ringpool_new(0, 0, 4) == ffi.NULL and ffi.errno == errno.EINVAL
    assert lib.ringpool_new(4096, 99, 4) == ffi.NULL and ffi.errno == errno.EINVAL


@pytest.mark.no_sanitizer  # ASan's allocator replaces glibc's: mallopt and mallinfo2 do nothing
def test_heap_policy_calls() -> None:
    # glibc here: all three work (elsewhere they report 0 and do nothing)
    assert lib.heap_tune(128 * 1024, 128 * 1024) == 1
    stats = ffi.new("struct heap_stats *")
    lib.heap_stats(stats)
    # Over the threshold and larger than all the heap's free bytes (earlier tests may have left
    # a free chunk that would hold 1 MiB): only a mapping of its own can hold it.
    size = max(1 << 20, stats.free + (1 << 20))
    big = ffi.new("char[]", size)
    lib.heap_stats(stats)
    assert stats.mapped >= size and stats.in_use >= stats.mapped
    del big
    assert lib.heap_trim() in (0, 1)
    assert lib.heap_tune(1 << 40, 0) == 0  # beyond what mallopt takes
