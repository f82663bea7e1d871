"""The C extension's status codes, named from its headers (one enum per C enum).

Each C enum that Python reads has one ``IntEnum`` here whose values come from
the compiled extension, never from numbers written twice; the test suite checks
that every member of the C enum has its Python name (tests/core/test_cdata.py).
"""

from __future__ import annotations

import enum

from ._native import lib

__all__ = ["EchoStatus", "LoopReport", "TLSStatus"]


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
