"""The one door to the C extension (``wsstls._native``): nothing else in the package imports it.

- ``ffi`` and ``lib`` for the modules that wrap a C object of their own: the library's
  ``RingBuffer``, ``TLSContext``/``TLSConnection`` and framer, the server's event loop,
  the load generator, the ring benchmark.
- The checks that turn Python values into C arguments (``index``, ``c_buffer``,
  ``fileno``), with errors that name the argument.
- ``handle(obj)``: the C object a wrapper owns.  A wrapper keeps its C object in its
  ``_handle`` attribute (None once closed) and no other module reads it but through
  ``handle``, which fails cleanly for a closed or a foreign object.
- The C enums that Python reads, one ``IntEnum`` each, whose values come from the compiled
  extension, never from numbers written twice; tests/core/test_cdata.py checks that every
  member of each C enum has its Python name.
"""

from __future__ import annotations

import enum
import operator
from typing import Any, Protocol, TypeAlias

from ._native import ffi, lib

__all__ = [
    "Buffer",
    "CData",
    "EchoStatus",
    "FileLike",
    "LoopReport",
    "TLSStatus",
    "c_buffer",
    "ffi",
    "fileno",
    "handle",
    "index",
    "lib",
]

#: A cffi object: a pointer, a struct, an array (cffi's types are not visible to mypy).
CData: TypeAlias = Any
#: Any object supporting the buffer protocol.
Buffer: TypeAlias = Any


class _HasFileno(Protocol):
    def fileno(self) -> int: ...


FileLike: TypeAlias = "int | _HasFileno"

_from_buffer = ffi.from_buffer
_CHARS = ffi.typeof("char[]")  # resolved once: a cdecl string costs a parse per call


# ------------------------------------------------------- Python values as C arguments


def index(value: object, name: str) -> int:
    """``value`` as a C integer argument: TypeError naming ``name`` for a non-integer."""
    try:
        return operator.index(value)  # type: ignore[arg-type]
    except TypeError:
        raise TypeError(f"{name} must be an int, not {type(value).__name__}") from None


def c_buffer(obj: object, name: str, writable: bool) -> Any:
    """``obj``'s memory as a cdata ``char[]`` of its size in bytes (no copy)."""
    try:
        return _from_buffer(_CHARS, obj, writable)  # positional: keywords cost ~100 ns here
    except (TypeError, BufferError) as exc:
        kind = "a writable, C-contiguous" if writable else "a C-contiguous"
        raise TypeError(
            f"{name} must be {kind} bytes-like object, not {type(obj).__name__} ({exc})"
        ) from None


_FD_MAX = 2**31 - 1  # a C int; negative ones reach the kernel and give EBADF


def fileno(sock_or_fd: object) -> int:
    """A socket's or an fd's descriptor as a C ``int`` argument."""
    if isinstance(sock_or_fd, int) and not isinstance(sock_or_fd, bool):
        fd = sock_or_fd
    else:
        get = getattr(sock_or_fd, "fileno", None)
        if get is None:
            raise TypeError(
                f"sock_or_fd must be an int or have fileno(), not {type(sock_or_fd).__name__}"
            )
        fd = index(get(), "sock_or_fd.fileno()")
    if not -_FD_MAX - 1 <= fd <= _FD_MAX:
        raise ValueError(f"sock_or_fd: {fd} is not a file descriptor")
    return fd


# ---------------------------------------------------------------- C objects


def handle(owner: object) -> CData:
    """The C object that ``owner`` wraps; TypeError for an object that wraps none,
    ValueError once it is closed."""
    try:
        h = owner._handle  # type: ignore[attr-defined]
    except AttributeError:
        raise TypeError(f"{type(owner).__name__} wraps no C object") from None
    if h is None:
        raise ValueError(f"the {type(owner).__name__} is closed")
    return h


class TLSStatus(enum.IntEnum):
    """``enum tls_status`` (csrc/core/tls.h): what a TLS call returns instead of a count."""

    WANT_READ = lib.TLS_WANT_READ
    WANT_WRITE = lib.TLS_WANT_WRITE
    CLOSED = lib.TLS_CLOSED  # the peer sent close_notify
    EOF = lib.TLS_EOF  # the transport ended without close_notify
    ERROR = lib.TLS_ERROR
    WANT_ASYNC = lib.TLS_WANT_ASYNC  # an ASYNC job paused the call: repeat it when
    # the connection's async fd is readable


#: Statuses that mean "retry when the socket (or, WANT_ASYNC, the async fd) is ready".
TLS_WAITS = frozenset({TLSStatus.WANT_READ, TLSStatus.WANT_WRITE, TLSStatus.WANT_ASYNC})
#: Statuses that end a connection's input.
TLS_ENDS = frozenset({TLSStatus.CLOSED, TLSStatus.EOF, TLSStatus.ERROR})


class EchoStatus(enum.IntEnum):
    """``enum wsecho_status`` (csrc/server/wsecho.h): how one echo pump ended."""

    WAIT = lib.WSECHO_WAIT  # all echoed, or an incomplete frame waits for bytes
    SLOW = lib.WSECHO_SLOW  # a frame for the Python framer is at the ring's head
    BLOCKED = lib.WSECHO_BLOCKED  # output full: flush when writable, then pump again
    BAD_UTF8 = lib.WSECHO_BAD_UTF8  # a text frame was not UTF-8: fail with 1007
    ENDED = lib.WSECHO_ENDED  # the session ended (struct wsecho's ``ended`` says how)


class LoopReport(enum.IntEnum):
    """``enum wsloop_report`` (csrc/server/wsloop.h): what an event of the C loop reports."""

    READY = lib.WSLOOP_READY  # a watched fd is ready (``events``)
    COLD = lib.WSLOOP_COLD  # a hot connection stopped (``echo``): it is Python's again
    EXPIRED = lib.WSLOOP_EXPIRED  # its deadline passed or it was idle too long: close it
    PING = lib.WSLOOP_PING  # a keepalive ping is due and the loop could not send it
    NOMEM = lib.WSLOOP_NOMEM  # a parked connection woke and no plaintext ring could be had
