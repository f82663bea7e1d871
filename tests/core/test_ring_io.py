"""recv_from / send_to: readv and writev between the ring and a socket or a pipe.

Sockets are non-blocking and every wait goes through select() with a
timeout, so a missing byte fails the test instead of hanging it.
"""

from __future__ import annotations

import errno
import fcntl
import mmap
import os
import random
import select
import socket
import subprocess
import sys
import textwrap
from collections.abc import Iterator

import pytest

from wsstls import RingBuffer

PAGE = mmap.PAGESIZE
PATTERN = random.Random(99).randbytes(1 << 20)
WAIT_S = 10.0

KINDS = pytest.mark.parametrize("mirrored", [False, True], ids=["plain", "mirrored"])


@pytest.fixture
def pair() -> Iterator[tuple[socket.socket, socket.socket]]:
    a, b = socket.socketpair()
    a.setblocking(False)
    b.setblocking(False)
    yield a, b
    a.close()
    b.close()


class Pipe:
    """Both ends of a non-blocking os.pipe(); close() an end at most once."""

    def __init__(self) -> None:
        self.r, self.w = os.pipe()
        os.set_blocking(self.r, False)
        os.set_blocking(self.w, False)
        self.open = {self.r, self.w}

    def close(self, fd: int) -> None:
        self.open.remove(fd)
        os.close(fd)


@pytest.fixture
def pipe() -> Iterator[Pipe]:
    p = Pipe()
    yield p
    for fd in list(p.open):
        p.close(fd)


def readable(fd: object) -> None:
    r, _, _ = select.select([fd], [], [], WAIT_S)
    assert r, "nothing to read within the timeout"


def writable(fd: object) -> None:
    _, w, _ = select.select([], [fd], [], WAIT_S)
    assert w, "cannot write within the timeout"


def advance(rb: RingBuffer, start: int) -> None:
    """Empty the ring with both indices at `start` (mod capacity)."""
    rb.reset()
    assert rb.write(bytes(start)) == start
    assert rb.discard(start) == start


def recv_exactly(sock: socket.socket, n: int) -> bytes:
    out = bytearray()
    while len(out) < n:
        readable(sock)
        out += sock.recv(n - len(out))
    return bytes(out)


def recv_available(fd: socket.socket | int) -> bytes:
    """Everything readable right now (non-blocking)."""
    out = bytearray()
    while True:
        try:
            chunk = fd.recv(1 << 16) if isinstance(fd, socket.socket) else os.read(fd, 1 << 16)
        except BlockingIOError:
            return bytes(out)
        if not chunk:
            return bytes(out)
        out += chunk


def ring_fill_from(rb: RingBuffer, src: socket.socket | int, n: int) -> None:
    got = 0
    while got < n:
        readable(src)
        k = rb.recv_from(src)
        assert k > 0
        got += k
    assert got == n


# ------------------------------------------------------ across the wrap


@KINDS
@pytest.mark.parametrize("start", [0, 1, 2000, PAGE - 10, PAGE - 1])
def test_socket_roundtrip_across_wrap(
    pair: tuple[socket.socket, socket.socket], mirrored: bool, start: int
) -> None:
    a, b = pair
    rb = RingBuffer(PAGE, mirrored=mirrored)
    cap = rb.capacity
    advance(rb, start)
    payload = PATTERN[start : start + cap]
    b.sendall(payload)
    # readv fills both pieces of free space (one, in the mirrored ring).
    ring_fill_from(rb, a, cap)
    assert rb.full
    assert rb.peek() == payload
    views = rb.readable_views()
    assert len(views) == (2 if not mirrored and start % cap else 1)
    assert b"".join(views) == payload
    # writev sends both pieces, in order.
    sent = 0
    while not rb.empty:
        writable(a)
        sent += rb.send_to(a)
    assert sent == cap
    assert recv_exactly(b, cap) == payload
    rb.close()


@KINDS
def test_pipe_roundtrip_across_wrap(pipe: Pipe, mirrored: bool) -> None:
    r, w = pipe.r, pipe.w
    rb = RingBuffer(PAGE, mirrored=mirrored)
    cap = rb.capacity
    advance(rb, cap - 100)
    payload = PATTERN[:1000]
    rb.write(payload)
    assert len(rb.readable_views()) == (1 if mirrored else 2)
    assert rb.send_to(w) == 1000  # writev: pipes are not sockets
    assert rb.empty
    advance(rb, cap - 7)
    ring_fill_from(rb, r, 1000)  # readv from the pipe, across the wrap
    assert rb.read() == payload
    rb.close()


@KINDS
def test_recv_from_takes_only_the_free_space(
    pair: tuple[socket.socket, socket.socket], mirrored: bool
) -> None:
    a, b = pair
    rb = RingBuffer(PAGE, mirrored=mirrored)
    cap = rb.capacity
    advance(rb, cap - 50)
    rb.write(PATTERN[: cap - 96])  # 96 bytes free, split by the wrap
    b.sendall(PATTERN[:1000])
    readable(a)
    assert rb.recv_from(a) == 96
    assert rb.full
    assert rb.read() == PATTERN[: cap - 96] + PATTERN[:96]
    assert recv_exactly(a, 904) == PATTERN[96:1000]  # the rest stayed in the socket
    rb.close()


# ------------------------------------------------------- outcomes


@KINDS
def test_recv_from_would_block(pair: tuple[socket.socket, socket.socket], mirrored: bool) -> None:
    a, _ = pair
    rb = RingBuffer(PAGE, mirrored=mirrored)
    with pytest.raises(BlockingIOError) as info:
        rb.recv_from(a)
    assert info.value.errno in (errno.EAGAIN, errno.EWOULDBLOCK)
    assert rb.empty and rb.writable == rb.capacity


def test_recv_from_pipe_would_block(pipe: Pipe) -> None:
    r = pipe.r
    rb = RingBuffer(100)
    with pytest.raises(BlockingIOError):
        rb.recv_from(r)
    assert rb.empty


@KINDS
def test_send_to_would_block(pair: tuple[socket.socket, socket.socket], mirrored: bool) -> None:
    a, _ = pair
    a.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4096)
    rb = RingBuffer(PAGE, mirrored=mirrored)
    for _ in range(10_000):
        if rb.writable:
            rb.write(PATTERN[: rb.writable])
        try:
            rb.send_to(a)
        except BlockingIOError as exc:
            assert exc.errno in (errno.EAGAIN, errno.EWOULDBLOCK)
            break
    else:
        pytest.fail("send_to never reported a full socket")
    assert rb.full  # nothing consumed by the failed call


@KINDS
def test_recv_from_eof(pair: tuple[socket.socket, socket.socket], mirrored: bool) -> None:
    a, b = pair
    rb = RingBuffer(PAGE, mirrored=mirrored)
    b.sendall(b"last words")
    b.close()
    ring_fill_from(rb, a, 10)
    assert rb.recv_from(a) == 0
    assert rb.recv_from(a) == 0
    assert rb.read() == b"last words"


def test_recv_from_pipe_eof(pipe: Pipe) -> None:
    r, w = pipe.r, pipe.w
    pipe.close(w)
    rb = RingBuffer(64)
    assert rb.recv_from(r) == 0
    assert rb.empty


@KINDS
def test_closed_fd_is_ebadf(mirrored: bool) -> None:
    rb = RingBuffer(PAGE, mirrored=mirrored)
    a, b = socket.socketpair()
    fd = os.dup(a.fileno())
    os.close(fd)
    a.close()  # a closed socket object: fileno() is -1
    b.close()
    for target in (fd, a):
        with pytest.raises(OSError) as info:
            rb.recv_from(target)
        assert info.value.errno == errno.EBADF
        assert rb.empty
    rb.write(b"pending")
    for target in (fd, a):
        with pytest.raises(OSError) as info:
            rb.send_to(target)
        assert info.value.errno == errno.EBADF
        assert rb.peek() == b"pending"  # nothing consumed


@KINDS
def test_send_to_vanished_socket_peer(
    pair: tuple[socket.socket, socket.socket], mirrored: bool
) -> None:
    a, b = pair
    b.close()
    rb = RingBuffer(PAGE, mirrored=mirrored)
    rb.write(PATTERN[:100])
    with pytest.raises((BrokenPipeError, ConnectionResetError)):
        for _ in range(100):  # AF_UNIX fails at once; allow a TCP-like first success
            if rb.empty:
                rb.write(PATTERN[:100])
            rb.send_to(a)
    assert len(rb) == 100  # the failing call consumed nothing


@KINDS
def test_send_to_vanished_pipe_reader(pipe: Pipe, mirrored: bool) -> None:
    r, w = pipe.r, pipe.w
    pipe.close(r)
    rb = RingBuffer(PAGE, mirrored=mirrored)
    rb.write(PATTERN[:100])
    with pytest.raises(BrokenPipeError):
        rb.send_to(w)
    assert len(rb) == 100


SIGPIPE_SCRIPT = textwrap.dedent(
    """
    import os, signal, socket
    from wsstls import RingBuffer

    # Python ignores SIGPIPE; an application may not: the default kills.
    signal.signal(signal.SIGPIPE, signal.SIG_DFL)
    results = []
    for kind in ("socket", "pipe"):
        for mirrored in (False, True):
            rb = RingBuffer(4096, mirrored=mirrored)
            rb.write(b"x" * 3000)
            rb.discard(3000)
            rb.write(b"y" * 2000)  # two pieces in the plain ring
            if kind == "socket":
                a, b = socket.socketpair()
                b.close()
                fd = a.detach()
            else:
                r, fd = os.pipe()
                os.close(r)
            try:
                rb.send_to(fd)
                results.append("no error")
            except (BrokenPipeError, ConnectionResetError) as exc:
                results.append(type(exc).__name__)
            os.close(fd)
    pending = signal.SIGPIPE in signal.sigpending()
    print(" ".join(results), "pending" if pending else "clean")
    """
)


def test_never_sigpipe_even_with_default_disposition() -> None:
    proc = subprocess.run(
        [sys.executable, "-c", SIGPIPE_SCRIPT],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == 0, (proc.returncode, proc.stderr)
    words = proc.stdout.split()
    assert words[-1] == "clean"
    assert len(words) == 5
    assert all(w in ("BrokenPipeError", "ConnectionResetError") for w in words[:4])


# ------------------------------------------- no system call when pointless


@KINDS
def test_full_ring_recv_from_is_buffer_error_without_syscall(
    pair: tuple[socket.socket, socket.socket], mirrored: bool
) -> None:
    a, b = pair
    rb = RingBuffer(PAGE, mirrored=mirrored)
    rb.write(PATTERN[: rb.capacity])
    assert rb.full
    b.sendall(b"waiting")
    readable(a)
    with pytest.raises(BufferError):
        rb.recv_from(a)
    assert recv_exactly(a, 7) == b"waiting"  # the socket was not read
    dead = os.dup(a.fileno())
    os.close(dead)
    with pytest.raises(BufferError):  # not EBADF: no readv was made
        rb.recv_from(dead)
    assert rb.peek() == PATTERN[: rb.capacity]


@KINDS
def test_empty_ring_send_to_returns_zero_without_syscall(
    pair: tuple[socket.socket, socket.socket], mirrored: bool
) -> None:
    a, b = pair
    rb = RingBuffer(PAGE, mirrored=mirrored)
    assert rb.send_to(a) == 0
    assert rb.send_to(a.fileno()) == 0
    dead = os.dup(a.fileno())
    os.close(dead)
    assert rb.send_to(dead) == 0  # not EBADF: no write was made
    a.close()  # b now sees EOF and nothing before it
    readable(b)
    assert b.recv(100) == b""


# ------------------------------------------------- what can be passed in


def test_accepts_socket_objects_raw_fds_and_filenos(
    pair: tuple[socket.socket, socket.socket],
) -> None:
    a, b = pair
    rb = RingBuffer(256)

    class HasFileno:
        def __init__(self, fd: int) -> None:
            self.fd = fd

        def fileno(self) -> int:
            return self.fd

    for target_out, target_in in ((a, b), (a.fileno(), b.fileno()), (HasFileno(a.fileno()), b)):
        rb.write(b"hello")
        assert rb.send_to(target_out) == 5  # type: ignore[arg-type]
        readable(b)
        assert rb.recv_from(target_in) == 5  # type: ignore[arg-type]
        assert rb.read() == b"hello"


# -------------------------------------- send_to consumes what the kernel took


def _drain_through(rb: RingBuffer, out: socket.socket | int, peer: socket.socket | int) -> bytes:
    """send_to until the ring is empty, reading the peer when the kernel is full."""
    received = bytearray()
    partial = 0
    for _ in range(100_000):
        if rb.empty:
            break
        before = len(rb)
        head = rb.peek()
        try:
            n = rb.send_to(out)
        except BlockingIOError:
            select.select([peer], [], [], WAIT_S)
            received += recv_available(peer)
            continue
        assert 0 < n <= before
        assert len(rb) == before - n  # consumed exactly what was written
        assert rb.peek() == head[n:]
        partial += n < before
    else:
        pytest.fail("the ring did not drain")
    received += recv_available(peer)
    assert partial > 0, "no partial write happened: the kernel buffer was too large"
    return bytes(received)


@KINDS
def test_send_to_socket_partial_writes(
    pair: tuple[socket.socket, socket.socket], mirrored: bool
) -> None:
    a, b = pair
    a.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 8192)
    b.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 8192)
    rb = RingBuffer(256 * 1024, mirrored=mirrored)
    cap = rb.capacity
    advance(rb, cap - 5000)
    payload = PATTERN[:cap]
    assert rb.write(payload) == cap
    received = _drain_through(rb, a, b)
    received += recv_exactly(b, cap - len(received)) if len(received) < cap else b""
    assert received == payload


@KINDS
def test_send_to_pipe_partial_writes(pipe: Pipe, mirrored: bool) -> None:
    r, w = pipe.r, pipe.w
    size = fcntl.fcntl(w, fcntl.F_GETPIPE_SZ) if hasattr(fcntl, "F_GETPIPE_SZ") else 65536
    rb = RingBuffer(4 * size, mirrored=mirrored)
    cap = rb.capacity
    advance(rb, cap - 3333)
    payload = PATTERN[:cap]
    assert rb.write(payload) == cap
    received = _drain_through(rb, w, r)
    assert received == payload
