"""The event loop's memory and timers (csrc/server/wsloop.c) driven directly over socket pairs:
parking (the plaintext ring back to the pool, the TLS buffers freed) and waking, keepalive
pings sent by the loop and pongs consumed by the fast path, idle timeouts and deadlines.

Every wait is bounded in polls and seconds; nothing asserts a duration.
"""

from __future__ import annotations

import select
import socket
import time
from collections.abc import Iterator
from typing import Any

import pytest
from tlsutil import close_all, socket_session

from wsstls._cdata import handle
from wsstls._native import ffi, lib
from wsstls.ws import Opcode, encode_frame

KEY = b"\x11\x22\x33\x44"
EPOLLIN = select.EPOLLIN | select.EPOLLRDHUP


class Loop:
    """An inline wsloop with a ring pool and timers, serving one connection at a time."""

    def __init__(self, park_ms: int = 0, ping_ms: int = 0, idle_ms: int = 0) -> None:
        self.l = ffi.gc(lib.wsloop_new(lib.WSLOOP_INLINE, ffi.NULL, 0, 1), lib.wsloop_free)
        assert lib.wsloop_set_rings(self.l, 65536, 4) == 0
        assert lib.wsloop_set_timers(self.l, park_ms, ping_ms, idle_ms) == 0
        self.events = ffi.new("struct wsloop_event[]", 64)
        self.keep: list[Any] = []

    def hot(self, fd: int, tls: Any = ffi.NULL, keepalive: bool = True) -> Any:
        st = ffi.new("struct wsecho *")
        st.max_message = 1 << 20
        st.fd = fd
        self.keep.append(st)
        assert lib.wsloop_watch(self.l, fd, EPOLLIN) == 0
        assert lib.wsloop_plain(self.l, fd) != ffi.NULL
        assert lib.wsloop_timers(self.l, fd, 0, keepalive) == 0
        assert lib.wsloop_hot(self.l, fd, tls, ffi.NULL, st, ffi.NULL) == 0
        return st

    def poll(self, ms: int = 50) -> list[tuple[int, int, int]]:
        n = lib.wsloop_poll(self.l, ms, self.events, 64)
        assert n >= 0
        return [(self.events[i].fd, self.events[i].report, self.events[i].echo) for i in range(n)]

    def poll_until(self, what: str, until: Any, seconds: float = 10.0) -> list[Any]:
        deadline = time.monotonic() + seconds
        seen: list[Any] = []
        for _ in range(100_000):
            seen += self.poll()
            if until(seen):
                return seen
            assert time.monotonic() < deadline, f"{what}: not after {seconds} s ({seen})"
        raise AssertionError(what)

    def counters(self) -> Any:
        c = ffi.new("struct wsloop_counters *")
        lib.wsloop_get_counters(self.l, c)
        return c


@pytest.fixture
def pair() -> Iterator[tuple[socket.socket, socket.socket]]:
    a, b = socket.socketpair()
    b.setblocking(False)
    a.settimeout(10.0)
    yield a, b
    close_all(a, b)


def echo_once(loop: Loop, client: socket.socket, payload: bytes, sent: int = 0) -> None:
    """Send the frame of ``payload`` (but its first ``sent`` bytes); receive its echo."""
    client.sendall(bytes(encode_frame(Opcode.BINARY, payload, mask_key=KEY))[sent:])
    expected = bytes(encode_frame(Opcode.BINARY, payload))
    got = b""
    deadline = time.monotonic() + 10
    while len(got) < len(expected):
        assert loop.poll() == []  # served in C
        client.settimeout(0.01)
        try:
            got += client.recv(65536)
        except TimeoutError:
            pass
        assert time.monotonic() < deadline
    assert got == expected


def test_idle_connection_parks_and_wakes(pair: tuple[socket.socket, socket.socket]) -> None:
    client, server = pair
    loop = Loop(park_ms=1)
    loop.hot(server.fileno())
    echo_once(loop, client, b"first")
    assert loop.counters().rings_out == 1
    loop.poll_until("parked", lambda _: loop.counters().parked == 1)
    c = loop.counters()
    assert c.rings_out == 0 and c.rings_spare >= 1 and c.parks == 1
    echo_once(loop, client, b"second")  # echoed from the loop's shared ring: still parked
    c = loop.counters()
    assert c.wakes == 1 and c.unparks == 0 and c.parked == 1 and c.rings_out == 0
    # Half a frame: bytes in flight, so it takes a ring of its own, with them in it.
    frame = bytes(encode_frame(Opcode.BINARY, b"y" * 3000, mask_key=KEY))
    client.sendall(frame[:1000])
    loop.poll_until("woken", lambda _: loop.counters().unparks == 1)
    c = loop.counters()
    assert c.parked == 0 and c.rings_out == 1
    echo_once(loop, client, b"y" * 3000, sent=1000)
    # the ring Python asks for is the connection's own, taken back if parked
    loop.poll_until("parked again", lambda _: loop.counters().parked == 1)
    assert lib.wsloop_plain(loop.l, server.fileno()) != ffi.NULL
    assert loop.counters().parked == 0
    assert lib.wsloop_unwatch(loop.l, server.fileno()) == 0
    assert loop.counters().rings_out == 0


def test_an_incomplete_frame_keeps_its_ring(pair: tuple[socket.socket, socket.socket]) -> None:
    client, server = pair
    loop = Loop(park_ms=1)
    loop.hot(server.fileno())
    frame = bytes(encode_frame(Opcode.BINARY, b"x" * 1000, mask_key=KEY))
    client.sendall(frame[:500])
    loop.poll_until("two scans", lambda _: loop.counters().scans >= 2)
    assert loop.counters().parked == 0
    echo_once(loop, client, b"x" * 1000, sent=500)


def test_idle_timeout_and_deadline_expire(pair: tuple[socket.socket, socket.socket]) -> None:
    _client, server = pair
    loop = Loop(idle_ms=300)
    loop.hot(server.fileno())
    seen = loop.poll_until("idle timeout", lambda s: s)
    assert seen == [(server.fileno(), lib.WSLOOP_EXPIRED, lib.WSECHO_WAIT)]
    for _ in range(3):  # reported once
        assert loop.poll() == []
    # a deadline, without keepalive: a handshake's
    other, theirs = socket.socketpair()
    try:
        assert lib.wsloop_watch(loop.l, theirs.fileno(), EPOLLIN) == 0
        assert lib.wsloop_timers(loop.l, theirs.fileno(), 200, 0) == 0
        other.sendall(b"GET")  # input does not move a deadline
        seen = loop.poll_until("deadline", lambda s: any(e[1] == lib.WSLOOP_EXPIRED for e in s))
        assert (theirs.fileno(), lib.WSLOOP_EXPIRED, lib.WSECHO_WAIT) in seen
    finally:
        close_all(other, theirs)


def test_plain_connection_ping_is_left_to_python(pair: tuple[socket.socket, socket.socket]) -> None:
    _client, server = pair
    loop = Loop(ping_ms=200, idle_ms=100_000)
    loop.hot(server.fileno())
    seen = loop.poll_until("ping due", lambda s: s)
    assert seen == [(server.fileno(), lib.WSLOOP_PING, lib.WSECHO_WAIT)]


def test_pongs_are_consumed_by_the_fast_path(pair: tuple[socket.socket, socket.socket]) -> None:
    client, server = pair
    loop = Loop()
    st = loop.hot(server.fileno())
    client.sendall(bytes(encode_frame(Opcode.PONG, b"abc", mask_key=KEY)))
    echo_once(loop, client, b"after the pong")
    assert st.pongs == 1 and st.messages == 1
    client.sendall(bytes(encode_frame(Opcode.PING, b"p", mask_key=KEY)))
    seen = loop.poll_until("a ping goes to the framer", lambda s: s)
    assert seen == [(server.fileno(), lib.WSLOOP_COLD, lib.WSECHO_SLOW)]


def test_tls_keepalive_ping_from_the_loop_and_parking() -> None:
    client, server = socket_session("ring")
    try:
        loop = Loop(park_ms=1, ping_ms=300, idle_ms=100_000)
        st = loop.hot(server.sock.fileno(), handle(server.conn))
        loop.poll_until("parked", lambda _: loop.counters().parked == 1)
        assert server.conn.parked
        loop.poll_until("pinged", lambda _: loop.counters().pings >= 1)
        assert loop.counters().parked == 1 and server.conn.parked  # still parked after it
        got = b""
        for _ in range(1000):
            data = client.conn.read()
            if data:
                got += data
            if len(got) >= 2:
                break
            select.select([client.sock], [], [], 0.05)
        assert got[:2] == b"\x89\x00"
        client.conn.write(bytes(encode_frame(Opcode.PONG, b"", mask_key=KEY)))
        loop.poll_until("pong consumed", lambda _: st.pongs == 1)
        c = loop.counters()
        assert c.wakes == 1 and c.unparks == 0 and c.parked == 1 and server.conn.parked
    finally:
        close_all(client.sock, server.sock)


def test_argument_checks() -> None:
    loop = Loop()
    assert lib.wsloop_set_rings(loop.l, 65536, 4) == -22  # once
    assert lib.wsloop_set_timers(loop.l, -1, 0, 0) == -22
    assert lib.wsloop_plain(loop.l, 12345) == ffi.NULL
    assert lib.wsloop_timers(loop.l, 12345, 0, 1) == -22
    bare = ffi.gc(lib.wsloop_new(lib.WSLOOP_INLINE, ffi.NULL, 0, 1), lib.wsloop_free)
    assert lib.wsloop_plain(bare, 0) == ffi.NULL  # no pool: Python gives the rings
