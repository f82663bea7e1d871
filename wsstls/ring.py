"""RingBuffer: the C byte ring (csrc/core/ring.c) behind a thin Python API.

Each operation is one cffi call on its hot path.  A cffi call with three
arguments costs about as much as a whole ``ssl.MemoryBIO`` write+read, so the
wrapper avoids every other crossing it can:

- ``read``/``peek`` of up to ``STAGE_SIZE`` bytes copy out into a private
  staging buffer in one C call, and slicing an ``ffi.buffer`` over it makes
  the bytes (one crossing, two small copies); larger ones copy once from
  zero-copy views (two crossings, cheaper than a second copy of that size).
- The ring memory is exposed through one ``memoryview`` made at creation;
  views are slices of it, and it keeps the ring alive (it holds the owning
  cdata), so memory stays valid while any exported view exists, even after
  ``close()``.

Threading: one producer thread (``write``, ``writable_views``, ``commit``,
``recv_from``) and one consumer thread (``read``, ``peek``, ``readinto``,
``discard``, ``readable_views``, ``consume``, ``send_to``) may run at the
same time; cffi releases the GIL around each C call.  ``reset`` and
``reset_stats`` need both sides idle.
"""

from __future__ import annotations

import errno as _errno
import os
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Protocol

from ._cdata import Buffer, CData, FileLike, c_buffer, ffi, fileno, lib
from ._cdata import index as _index

__all__ = ["STAGE_SIZE", "RingBuffer", "RingStats"]


class _Bytes(Protocol):
    """What ``ffi.buffer`` gives: slicing makes bytes."""

    def __getitem__(self, index: slice) -> bytes: ...


#: Reads and peeks up to this size take the one-crossing staged path.
STAGE_SIZE = 2048

# The C calls of the hot paths, bound once (and typed: cffi's are not visible to mypy).
_create = lib.ring_create
_destroy = lib.ring_destroy
_write: Callable[[CData, Any, int], int] = lib.ring_write
_read: Callable[..., int] = lib.ring_read  # (ring, dst, n)
_peek: Callable[..., int] = lib.ring_peek  # (ring, dst, n)
_len: Callable[[CData], int] = lib.ring_len
_writable: Callable[[CData], int] = lib.ring_writable
_discard: Callable[[CData, int], int] = lib.ring_discard
_readable_spans: Callable[[CData, int, Any], int] = lib.ring_readable_spans
_consume: Callable[[CData, int], int] = lib.ring_consume
_read_fd: Callable[[CData, int], int] = lib.ring_read_fd
_write_fd: Callable[[CData, int], int] = lib.ring_write_fd


@dataclass(frozen=True, slots=True)
class RingStats:
    """Copies into and out of ring memory since creation or ``reset_stats``."""

    copies: int
    """memcpy calls (a span that wraps costs two)."""
    bytes_copied: int
    """bytes those copies moved."""


def _os_error(neg_errno: int) -> OSError:
    code = -neg_errno
    return OSError(code, os.strerror(code))  # picks BlockingIOError, BrokenPipeError, ...


class RingBuffer:
    """A byte ring buffer with partial writes, zero-copy views and readv/writev I/O.

    ``capacity`` is rounded up to a power of two (and, when ``mirrored``, to at
    least one page).  A mirrored ring maps its data twice back to back, so its
    readable and writable regions are always one contiguous view each.
    """

    __slots__ = (
        "_handle",
        "_mem",
        "_stage",
        "_staged",
        "_rspans",
        "_wspans",
        "_cap",
        "_mirrored",
        "_py_copies",
        "_py_bytes",
        "__weakref__",
    )

    def __init__(self, capacity: int, mirrored: bool = False) -> None:
        if isinstance(capacity, bool):
            raise TypeError("capacity must be an int, not bool")
        capacity = _index(capacity, "capacity")
        if not isinstance(mirrored, bool):
            raise TypeError(f"mirrored must be a bool, not {type(mirrored).__name__}")
        if capacity < 1:
            raise ValueError(f"capacity must be at least 1, got {capacity}")
        if capacity > lib.ring_max_capacity():
            raise ValueError(f"capacity must be at most {lib.ring_max_capacity()}, got {capacity}")
        raw = _create(capacity, lib.RING_MIRRORED if mirrored else 0)
        if raw == ffi.NULL:
            err = ffi.errno
            if err == _errno.ENOMEM:
                raise MemoryError(f"cannot allocate a ring of {capacity} bytes")
            kind = "mirrored ring (memfd_create + mmap)" if mirrored else "ring"
            raise OSError(err, f"cannot create a {kind} of {capacity} bytes: {os.strerror(err)}")
        self._init(ffi.gc(raw, _destroy), mirrored)

    @classmethod
    def _wrap(cls, raw: Any) -> RingBuffer:
        """A wrapper of a ring that C owns (the server loop's pool): ``close()`` and the
        wrapper's end leave the ring alone, and its memory is valid only as long as its
        owner keeps it (views must not outlive that)."""
        self = cls.__new__(cls)
        self._init(raw, bool(lib.ring_mirrored(raw)))
        return self

    def _init(self, r: Any, mirrored: bool) -> None:
        self._handle = r
        offset = lib.ring_data_offset(r)
        # ffi.buffer keeps self._handle's cdata alive: so does every slice of _mem.
        self._mem: memoryview | None = memoryview(ffi.buffer(r, offset + lib.ring_data_span(r)))[
            offset:
        ]
        self._cap: int = lib.ring_cap(r)
        self._mirrored = mirrored
        self._stage = ffi.new("char[]", min(STAGE_SIZE, self._cap))
        self._staged: _Bytes = ffi.buffer(self._stage)  # slicing it makes bytes: one copy
        # One span buffer per side: the producer's writable_views must not
        # overwrite the spans the consumer is turning into views.
        self._rspans = ffi.new("size_t[4]")
        self._wspans = ffi.new("size_t[4]")
        self._py_copies = 0
        self._py_bytes = 0

    # ---------------------------------------------------------- errors

    def _check(self) -> Any:
        if self._handle is None:
            raise ValueError("operation on a closed RingBuffer")
        return self._handle

    # ------------------------------------------------------- inspection

    @property
    def capacity(self) -> int:
        """Size of the ring in bytes (after rounding)."""
        self._check()
        return self._cap

    @property
    def mirrored(self) -> bool:
        """True when the data area is mapped twice (views never split)."""
        self._check()
        return self._mirrored

    @property
    def closed(self) -> bool:
        """True after ``close()``."""
        return self._handle is None

    def __len__(self) -> int:
        """Readable bytes."""
        try:
            return _len(self._handle)
        except TypeError:
            self._check()
            raise

    @property
    def writable(self) -> int:
        """Free bytes: how much the next ``write`` can take."""
        return _writable(self._check())

    @property
    def empty(self) -> bool:
        """True when nothing is readable."""
        return bool(lib.ring_empty(self._check()))

    @property
    def full(self) -> bool:
        """True when nothing can be written."""
        return bool(lib.ring_full(self._check()))

    @property
    def stats(self) -> RingStats:
        """Copies into and out of ring memory (C memcpys and this wrapper's own)."""
        out = ffi.new("uint64_t[2]")
        lib.ring_stats(self._check(), out)
        return RingStats(out[0] + self._py_copies, out[1] + self._py_bytes)

    def reset_stats(self) -> None:
        """Zero the copy counters (both sides idle)."""
        lib.ring_reset_stats(self._check())
        self._py_copies = self._py_bytes = 0

    def __repr__(self) -> str:
        if self._handle is None:
            return "<RingBuffer closed>"
        kind = " mirrored" if self._mirrored else ""
        return f"<RingBuffer{kind} capacity={self._cap} len={_len(self._handle)}>"

    # ----------------------------------------------------------- copies

    def write(self, data: Buffer) -> int:
        """Copy in as much of ``data`` as fits; return that count (0 when full)."""
        if type(data) is not bytes:  # cffi passes bytes as they are; others need a view
            data = c_buffer(data, "data", writable=False)
        try:
            return _write(self._handle, data, len(data))
        except TypeError:
            self._check()  # closed: ValueError
            raise

    def read(self, n: int | None = -1) -> bytes:
        """Remove and return up to ``n`` bytes (all readable bytes when ``n`` < 0 or None)."""
        try:
            if 0 <= n <= STAGE_SIZE:  # type: ignore[operator]  # (None, others: TypeError)
                return self._staged[: _read(self._handle, self._stage, n)]
        except TypeError:
            pass
        return self._take(n, consume=True)

    def peek(self, n: int | None = -1) -> bytes:
        """Return up to ``n`` readable bytes (all when ``n`` < 0 or None), keeping them."""
        try:
            if 0 <= n <= STAGE_SIZE:  # type: ignore[operator]  # (None, others: TypeError)
                return self._staged[: _peek(self._handle, self._stage, n)]
        except TypeError:
            pass
        return self._take(n, consume=False)

    def _take(self, n: object, consume: bool) -> bytes:
        """read/peek from views: one copy, by bytes.join, into the result."""
        # Both taken once (close() on another thread may clear them at any moment;
        # what is taken here stays valid): ValueError if closed, never None below.
        r, mem = self._handle, self._mem
        if r is None or mem is None:
            raise ValueError("operation on a closed RingBuffer")
        if type(n) is not int:
            n = -1 if n is None else _index(n, "n")
        cap = self._cap
        spans = self._rspans
        segs = _readable_spans(r, n if 0 <= n < cap else cap, spans)
        if segs == 0:
            return b""
        off, first = spans[0], spans[1]
        if segs == 1:
            data = mem[off : off + first].tobytes()
        else:
            data = b"".join((mem[off : off + first], mem[: spans[3]]))
        self._py_copies += segs
        self._py_bytes += len(data)
        if consume:
            _consume(r, len(data))
        return data

    def readinto(self, buffer: Buffer) -> int:
        """Move up to ``len(buffer)`` bytes into a writable buffer; return the count."""
        r = self._handle
        if r is None:
            self._check()
        dst = c_buffer(buffer, "buffer", writable=True)
        return _read(r, dst, len(dst))

    def discard(self, n: int) -> int:
        """Drop up to ``n`` readable bytes; return how many were dropped."""
        r = self._check()
        n = _index(n, "n")
        if n < 0:
            raise ValueError(f"discard: n must be >= 0, got {n}")
        return _discard(r, min(n, self._cap))

    def reset(self) -> None:
        """Empty the ring (both sides idle); the copy counters are kept."""
        lib.ring_reset(self._check())

    # -------------------------------------------------------- zero copy

    @staticmethod
    def _views(mem: memoryview, segs: int, spans: Any) -> list[memoryview]:
        views = [mem[spans[0] : spans[0] + spans[1]]] if segs else []
        if segs == 2:
            views.append(mem[: spans[3]])
        return views

    def readable_views(self) -> list[memoryview]:
        """The readable bytes as 0, 1 or 2 writable memoryviews, in order; copies nothing.

        Follow with ``consume(n)``.  The views stay valid (the memory is kept)
        as long as they exist, but their content is only meaningful until the
        bytes are consumed.
        """
        # Both taken once (close() on another thread may clear them at any moment;
        # what is taken here stays valid): ValueError if closed, never None below.
        r, mem = self._handle, self._mem
        if r is None or mem is None:
            raise ValueError("operation on a closed RingBuffer")
        spans = self._rspans
        return self._views(mem, lib.ring_readable_spans(r, self._cap, spans), spans)

    def writable_views(self) -> list[memoryview]:
        """The free space as 0, 1 or 2 memoryviews, in order; fill them, then ``commit(n)``."""
        # Both taken once (close() on another thread may clear them at any moment;
        # what is taken here stays valid): ValueError if closed, never None below.
        r, mem = self._handle, self._mem
        if r is None or mem is None:
            raise ValueError("operation on a closed RingBuffer")
        spans = self._wspans
        return self._views(mem, lib.ring_writable_spans(r, spans), spans)

    def commit(self, n: int) -> None:
        """Publish ``n`` bytes written into ``writable_views()``."""
        r = self._check()
        n = _index(n, "n")
        if not 0 <= n <= self._cap or lib.ring_commit(r, n) != 0:
            raise ValueError(f"commit({n}): n must be between 0 and writable ({self.writable})")

    def consume(self, n: int) -> None:
        """Drop ``n`` bytes used through ``readable_views()``."""
        r = self._check()
        n = _index(n, "n")
        if not 0 <= n <= self._cap or lib.ring_consume(r, n) != 0:
            raise ValueError(f"consume({n}): n must be between 0 and len ({_len(r)})")

    # --------------------------------------------------------------- I/O

    def recv_from(self, sock_or_fd: FileLike) -> int:
        """One readv(2) into the free space; return bytes read, 0 at EOF.

        Raises BlockingIOError when it would block, BufferError when the ring
        is full (no system call is made), OSError on other errors.
        """
        r = self._check()
        got = _read_fd(r, fileno(sock_or_fd))
        if got >= 0:
            return got
        if got == -_errno.ENOBUFS:
            raise BufferError("recv_from: the ring is full")
        raise _os_error(got)

    def send_to(self, sock_or_fd: FileLike) -> int:
        """One gather write of the readable bytes; consume and return what the kernel took.

        Returns 0 when the ring is empty.  Raises BlockingIOError when it would
        block, OSError (e.g. BrokenPipeError) on other errors; never SIGPIPE.
        """
        r = self._check()
        put = _write_fd(r, fileno(sock_or_fd))
        if put >= 0:
            return put
        raise _os_error(put)

    # ---------------------------------------------------------- lifetime

    def close(self) -> None:
        """Release the ring; idempotent.  Exported views keep the memory until they go."""
        self._handle = None
        self._mem = None

    def __enter__(self) -> RingBuffer:
        self._check()
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
