"""The RingBuffer API at its edges: bad arguments, use after close, view
lifetime, bytes-like inputs, repr, and allocation-free hot calls."""

from __future__ import annotations

import gc
import mmap
import socket
import subprocess
import sys
import textwrap
import threading
import tracemalloc
import weakref
from array import array
from collections.abc import Callable, Iterator
from typing import Any

import pytest

import wsstls.ring
from wsstls import RingBuffer, RingStats

PAGE = mmap.PAGESIZE
MAX_CAPACITY = wsstls.ring.lib.ring_max_capacity()
KINDS = pytest.mark.parametrize("mirrored", [False, True], ids=["plain", "mirrored"])


@pytest.fixture
def rb() -> Iterator[RingBuffer]:
    ring = RingBuffer(64)
    yield ring
    ring.close()


class Index:
    """An int-like (``__index__``) that is not an int."""

    def __init__(self, value: int) -> None:
        self.value = value

    def __index__(self) -> int:
        return self.value


# ------------------------------------------------------------ construction


@pytest.mark.parametrize("bad", ["8", 8.0, None, b"8", [8], True, False])
def test_capacity_wrong_type(bad: object) -> None:
    with pytest.raises(TypeError, match="capacity"):
        RingBuffer(bad)  # type: ignore[arg-type]


@pytest.mark.parametrize("bad", [1, 0, "yes", None, 1.0])
def test_mirrored_wrong_type(bad: object) -> None:
    with pytest.raises(TypeError, match="mirrored"):
        RingBuffer(PAGE, mirrored=bad)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    "bad", [0, -1, -(2**70), MAX_CAPACITY + 1, 2**63, 2**64, 2**64 + 8, 2**200]
)
@KINDS
def test_capacity_impossible(bad: int, mirrored: bool) -> None:
    with pytest.raises(ValueError, match="capacity"):
        RingBuffer(bad, mirrored=mirrored)


@pytest.mark.parametrize(("requested", "cap"), [(1, 1), (3, 4), (1000, 1024), (Index(17), 32)])
def test_capacity_rounds_up_and_accepts_index(requested: Any, cap: int) -> None:
    with RingBuffer(requested) as ring:
        assert ring.capacity == cap
        assert ring.writable == cap
        assert ring.empty and not ring.full
        assert len(ring) == 0
        assert ring.mirrored is False


def test_mirrored_capacity_is_a_page_multiple() -> None:
    with RingBuffer(1, mirrored=True) as ring:
        assert ring.capacity == PAGE
        assert ring.mirrored is True
    with RingBuffer(PAGE + 1, mirrored=True) as ring:
        assert ring.capacity == 2 * PAGE


# ---------------------------------------------------------- argument types

BAD_COUNTS = ["3", 1.5, b"1", [1], object()]


def _fileno_str() -> object:
    class Bad:
        def fileno(self) -> str:
            return "3"

    return Bad()


@pytest.mark.parametrize(
    ("call", "name"),
    [
        *[((lambda r, v=v: r.read(v)), "n") for v in BAD_COUNTS],
        *[((lambda r, v=v: r.peek(v)), "n") for v in BAD_COUNTS],
        *[((lambda r, v=v: r.discard(v)), "n") for v in [*BAD_COUNTS, None]],
        *[((lambda r, v=v: r.commit(v)), "n") for v in [*BAD_COUNTS, None]],
        *[((lambda r, v=v: r.consume(v)), "n") for v in [*BAD_COUNTS, None]],
        *[((lambda r, v=v: r.write(v)), "data") for v in ["text", 3, None, [1, 2], 1.0]],
        *[
            ((lambda r, v=v: r.readinto(v)), "buffer")
            for v in [b"read-only", "text", 3, None, memoryview(b"ro")]
        ],
        *[
            ((lambda r, v=v: r.recv_from(v)), "sock_or_fd")
            for v in ["3", 3.0, None, True, b"3", _fileno_str()]
        ],
        *[
            ((lambda r, v=v: r.send_to(v)), "sock_or_fd")
            for v in ["3", 3.0, None, False, b"3", _fileno_str()]
        ],
    ],
)
def test_wrong_types_raise_type_error_naming_the_argument(
    rb: RingBuffer, call: Callable[[RingBuffer], object], name: str
) -> None:
    rb.write(b"some data")  # send_to must reach the fd check, not return 0
    with pytest.raises(TypeError, match=name):
        call(rb)
    assert rb.peek() == b"some data"  # unchanged


def test_non_contiguous_buffers_are_type_errors(rb: RingBuffer) -> None:
    strided = memoryview(bytearray(range(20)))[::2]
    with pytest.raises(TypeError, match="data"):
        rb.write(strided)
    with pytest.raises(TypeError, match="data"):
        rb.write(memoryview(bytes(range(20)))[::2])
    rb.write(b"abcd")
    with pytest.raises(TypeError, match="buffer"):
        rb.readinto(strided)
    assert rb.peek() == b"abcd"


# ---------------------------------------------------------- impossible sizes


def test_discard_negative(rb: RingBuffer) -> None:
    rb.write(b"abc")
    for n in (-1, -(2**70)):
        with pytest.raises(ValueError):
            rb.discard(n)
    assert rb.peek() == b"abc"
    assert rb.discard(2**70) == 3  # huge is fine: "up to n"


def test_commit_bounds(rb: RingBuffer) -> None:
    rb.write(b"x" * 60)
    assert rb.writable == 4
    for n in (5, 64, 65, 2**64, 2**70, -1, -(2**70)):
        with pytest.raises(ValueError):
            rb.commit(n)
        assert len(rb) == 60
    rb.commit(0)
    rb.commit(Index(4))  # type: ignore[arg-type]
    assert rb.full
    with pytest.raises(ValueError):
        rb.commit(1)


def test_consume_bounds(rb: RingBuffer) -> None:
    rb.write(b"0123456789")
    for n in (11, 64, 65, 2**64, 2**70, -1, -(2**70)):
        with pytest.raises(ValueError):
            rb.consume(n)
        assert len(rb) == 10
    rb.consume(0)
    rb.consume(Index(4))  # type: ignore[arg-type]
    assert rb.read() == b"456789"
    with pytest.raises(ValueError):
        rb.consume(1)


def test_small_edges(rb: RingBuffer) -> None:
    assert rb.write(b"") == 0
    assert rb.read() == b""
    assert rb.read(0) == b""
    assert rb.peek(None) == b""
    assert rb.readinto(bytearray()) == 0
    assert rb.discard(0) == 0
    assert rb.readable_views() == []
    assert [len(v) for v in rb.writable_views()] == [64]
    rb.write(bytes(64))
    assert rb.write(b"more") == 0  # a full ring returns 0, it does not raise
    assert rb.writable_views() == []
    assert rb.readinto(bytearray(0)) == 0


# ---------------------------------------------------------- use after close

CLOSED_CALLS: dict[str, Callable[[RingBuffer], object]] = {
    "capacity": lambda r: r.capacity,
    "mirrored": lambda r: r.mirrored,
    "writable": lambda r: r.writable,
    "empty": lambda r: r.empty,
    "full": lambda r: r.full,
    "stats": lambda r: r.stats,
    "len": len,
    "write-bytes": lambda r: r.write(b"x"),
    "write-bytearray": lambda r: r.write(bytearray(b"x")),
    "write-memoryview": lambda r: r.write(memoryview(b"x")),
    "read": lambda r: r.read(),
    "read-small": lambda r: r.read(1),
    "read-large": lambda r: r.read(10**6),
    "read-none": lambda r: r.read(None),
    "peek": lambda r: r.peek(),
    "peek-small": lambda r: r.peek(1),
    "peek-large": lambda r: r.peek(10**6),
    "readinto": lambda r: r.readinto(bytearray(4)),
    "discard": lambda r: r.discard(1),
    "reset": lambda r: r.reset(),
    "reset_stats": lambda r: r.reset_stats(),
    "readable_views": lambda r: r.readable_views(),
    "writable_views": lambda r: r.writable_views(),
    "commit": lambda r: r.commit(0),
    "consume": lambda r: r.consume(0),
    "recv_from": lambda r: r.recv_from(-1),
    "send_to": lambda r: r.send_to(-1),
    "enter": lambda r: r.__enter__(),
}


@KINDS
@pytest.mark.parametrize("op", list(CLOSED_CALLS))
def test_every_operation_after_close_is_value_error(op: str, mirrored: bool) -> None:
    ring = RingBuffer(PAGE, mirrored=mirrored)
    ring.write(b"data")
    ring.close()
    with pytest.raises(ValueError, match="closed"):
        CLOSED_CALLS[op](ring)


class _CloseInside:
    """Stands in for the C library: closes ``ring`` in the middle of a call, as a
    ``close()`` on another thread can, then lets the call go on."""

    def __init__(self, real: Any, ring: RingBuffer) -> None:
        self._real, self._ring = real, ring

    def __getattr__(self, name: str) -> Any:
        fn = getattr(self._real, name)
        if not name.endswith("_spans"):
            return fn

        def closing_first(*args: Any) -> Any:
            self._ring.close()
            return fn(*args)

        return closing_first


RACING_CALLS: dict[str, Callable[[RingBuffer], Any]] = {
    "readable_views": lambda r: r.readable_views(),
    "writable_views": lambda r: r.writable_views(),
    "read-large": lambda r: r.read(),  # past STAGE_SIZE: the views path
    "peek-large": lambda r: r.peek(),
}


@KINDS
@pytest.mark.parametrize("op", list(RACING_CALLS))
def test_close_racing_a_call_is_value_error_or_done(
    op: str, mirrored: bool, monkeypatch: pytest.MonkeyPatch
) -> None:
    """close() on another thread during a call: the call finishes with what it took
    (its memory stays valid) or raises the documented ValueError, never an
    AssertionError or TypeError."""
    ring = RingBuffer(2 * PAGE, mirrored=mirrored)
    ring.write(bytes(range(256)) * 16)  # 4 KiB: more than STAGE_SIZE
    monkeypatch.setattr(wsstls.ring, "lib", _CloseInside(wsstls.ring.lib, ring))
    monkeypatch.setattr(
        wsstls.ring, "_readable_spans", _CloseInside(wsstls.ring.lib, ring).ring_readable_spans
    )
    try:
        result = RACING_CALLS[op](ring)
    except ValueError as exc:
        assert "closed" in str(exc)
    else:  # what it returned is the ring's content, still readable
        if isinstance(result, list):
            assert sum(len(v) for v in result) in (4096, 2 * PAGE - 4096)
        else:
            assert result == bytes(range(256)) * 16
    assert ring.closed


def test_close_racing_views_on_threads() -> None:
    """The same race for real, bounded: only ValueError ever comes out."""
    errors: list[BaseException] = []
    for _ in range(200):
        ring = RingBuffer(PAGE)
        ring.write(b"x" * 100)
        go = threading.Event()

        def reader(ring: RingBuffer = ring, go: threading.Event = go) -> None:
            go.wait(5)
            for _ in range(50):
                try:
                    ring.readable_views()
                except ValueError:
                    return
                except BaseException as exc:
                    errors.append(exc)
                    return

        t = threading.Thread(target=reader)
        t.start()
        go.set()
        ring.close()
        t.join(10)
        assert not t.is_alive()
    assert not errors, errors[:3]


def test_close_is_idempotent_and_context_manager_closes() -> None:
    ring = RingBuffer(8)
    assert not ring.closed
    ring.close()
    ring.close()
    assert ring.closed
    with RingBuffer(8) as inside:
        assert inside.write(b"abc") == 3
    assert inside.closed
    with pytest.raises(ValueError):
        len(inside)
    with pytest.raises(KeyError), RingBuffer(8) as failing:
        raise KeyError("boom")
    assert failing.closed
    failing.close()


# ---------------------------------------------------------- view lifetime


@KINDS
def test_views_outlive_close(mirrored: bool) -> None:
    ring = RingBuffer(PAGE, mirrored=mirrored)
    cap = ring.capacity
    ring.write(bytes(cap - 3))
    ring.discard(cap - 3)
    ring.write(b"0123456789")
    readable = ring.readable_views()
    free = ring.writable_views()
    ring.close()
    assert b"".join(readable) == b"0123456789"
    free[0][:4] = b"abcd"  # still writable memory
    assert bytes(free[0][:4]) == b"abcd"
    assert b"".join(readable) == b"0123456789"


VIEWS_AFTER_DELETE = textwrap.dedent(
    """
    import gc, sys, weakref
    from wsstls import RingBuffer

    mirrored = sys.argv[1] == "1"
    ring = RingBuffer(4096, mirrored=mirrored)
    ring.write(b"\\x00" * 4090)
    ring.discard(4090)
    payload = bytes(range(256)) * 8
    ring.write(payload)
    readable = ring.readable_views()
    free = ring.writable_views()
    gone = weakref.ref(ring)
    del ring
    gc.collect()
    assert gone() is None, "the RingBuffer object is still alive"
    # Churn the allocator: freed ring memory would be handed out again here.
    others = []
    for _ in range(200):
        other = RingBuffer(4096, mirrored=mirrored)
        other.write(b"\\xaa" * 4096)
        others.append(other)
        for v in other.writable_views():
            v[:] = b"\\xbb" * len(v)
    for v in free:
        v[:] = b"\\xcc" * len(v)
    assert b"".join(readable) == payload, "view content changed"
    assert all(bytes(v) == b"\\xcc" * len(v) for v in free)
    assert all(o.peek() == b"\\xaa" * 4096 for o in others), "views alias another ring"
    del readable, free
    gc.collect()
    print("ok")
    """
)


@KINDS
def test_views_outlive_the_object(mirrored: bool) -> None:
    # A subprocess: a use-after-free would crash it, not the test run.
    proc = subprocess.run(
        [sys.executable, "-c", VIEWS_AFTER_DELETE, "1" if mirrored else "0"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "ok"


def test_views_do_not_keep_the_python_object() -> None:
    ring = RingBuffer(16)
    views = ring.readable_views() + ring.writable_views()
    ref = weakref.ref(ring)
    del ring
    gc.collect()
    assert ref() is None
    assert sum(len(v) for v in views) == 16


# ---------------------------------------------------------- bytes-likes


@pytest.mark.parametrize(
    "make",
    [
        lambda: b"\x01\x02\x03\x04\x05\x06\x07\x08",
        lambda: bytearray(b"\x01\x02\x03\x04\x05\x06\x07\x08"),
        lambda: memoryview(b"\x01\x02\x03\x04\x05\x06\x07\x08"),
        lambda: array("I", [0x04030201, 0x08070605]),
        lambda: memoryview(array("I", [0x04030201, 0x08070605])),
        lambda: memoryview(array("H", [0x0201, 0x0403, 0x0605, 0x0807])),
        lambda: memoryview(bytearray(range(1, 9))).cast("B", (2, 4)),
        lambda: array("d", [1.5]),
    ],
    ids=["bytes", "bytearray", "memoryview", "array-I", "mv-array-I", "mv-H", "mv-2d", "array-d"],
)
def test_write_accepts_bytes_likes(rb: RingBuffer, make: Callable[[], Any]) -> None:
    obj = make()
    raw = memoryview(obj).tobytes()
    assert rb.write(obj) == len(raw) == 8  # bytes, not items
    assert rb.read() == raw
    # Partial: the count is in bytes too.
    rb.write(bytes(64 - 5))
    assert rb.write(obj) == 5
    rb.discard(64 - 5)
    assert rb.read() == raw[:5]


def test_write_bytes_subclass_uses_the_real_length(rb: RingBuffer) -> None:
    class Liar(bytes):
        def __len__(self) -> int:
            return 64

    assert rb.write(Liar(b"abc")) == 3
    assert rb.read() == b"abc"


def test_readinto_counts_bytes_of_any_format(rb: RingBuffer) -> None:
    rb.write(bytes(range(40)))
    target = array("I", [0, 0])
    assert rb.readinto(target) == 8
    assert target.tobytes() == bytes(range(8))
    mv = memoryview(bytearray(16)).cast("H")
    assert rb.readinto(mv) == 16
    assert mv.tobytes() == bytes(range(8, 24))
    with mmap.mmap(-1, 32) as m:
        assert rb.readinto(m) == 16
        assert m[:16] == bytes(range(24, 40))


# ---------------------------------------------------------- repr and stats


def test_repr() -> None:
    ring = RingBuffer(100)
    ring.write(b"abc")
    text = repr(ring)
    assert "RingBuffer" in text and "128" in text and "3" in text
    assert "mirrored" not in text
    with RingBuffer(1, mirrored=True) as mirrored:
        assert "mirrored" in repr(mirrored) and str(PAGE) in repr(mirrored)
    ring.close()
    assert "closed" in repr(ring)


def test_stats_object() -> None:
    with RingBuffer(8) as ring:
        assert ring.stats == RingStats(0, 0)
        ring.write(b"abcdef")
        ring.read(4)
        stats = ring.stats
        assert (stats.copies, stats.bytes_copied) == (2, 10)
        with pytest.raises(AttributeError):
            stats.copies = 0  # type: ignore[misc]
        ring.reset_stats()
        assert ring.stats == RingStats(0, 0)


# ---------------------------------------------------------- no allocation


def _traced_growth(cycle: Callable[[], None], rounds: int) -> tuple[int, int]:
    """(net bytes still allocated, peak above the start) over `rounds` cycles."""
    for _ in range(20):
        cycle()  # warm caches (free lists, int objects, method lookups)
    gc.collect()
    tracemalloc.start()
    try:
        start, _ = tracemalloc.get_traced_memory()
        tracemalloc.reset_peak()
        for _ in range(rounds):
            cycle()
        end, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    return end - start, peak - start


@KINDS
@pytest.mark.parametrize("payload", [16 * 1024, 128 * 1024])
def test_hot_calls_allocate_nothing(mirrored: bool, payload: int) -> None:
    ring = RingBuffer(payload, mirrored=mirrored)
    a, b = socket.socketpair()
    a.setblocking(False)
    b.setblocking(False)
    data = bytes(range(256)) * (payload // 256)
    sink = bytearray(payload)
    moved = [0]

    def cycle() -> None:
        ring.write(data)
        for v in ring.readable_views():
            assert len(v) > 0
        ring.writable_views()
        try:
            ring.send_to(a)  # kernel takes what fits
        except BlockingIOError:
            pass
        try:
            ring.recv_from(b)  # and it comes back into the ring
        except (BlockingIOError, BufferError):
            pass
        while ring.readinto(sink):
            moved[0] += 1

    try:
        net, peak = _traced_growth(cycle, 300)
    finally:
        a.close()
        b.close()
        ring.close()
    assert moved[0] > 0
    # tracemalloc's own bookkeeping leaves ~200 bytes; one leaked object per
    # cycle would leave 300 * (16 or more).
    assert net <= 1024, f"{net} bytes still allocated after 300 cycles"
    # A few small objects (ints, views, a list) at a time, never a payload copy.
    assert peak <= 4096, f"peak {peak} bytes for a {payload}-byte payload"
