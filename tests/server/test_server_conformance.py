"""The conformance cases of tests/autobahn_cases.py against the real server, over sockets.

``SocketDriver`` is the client's end of one TCP connection (TCP_NODELAY, so chopped writes
stay separate segments), over ws:// or over wss:// with the stdlib ``ssl`` module (each write
is then one TLS record).  It never blocks on a write while the server is answering: a write
the kernel does not take at once waits for the socket to be writable *or* readable, and
reads what arrived meanwhile into its inbox, so the large cases (megabytes each way) cannot
deadlock on full socket buffers.

What runs where - every case must pass exactly:

* the whole case list and every handshake case, against every design: over wss:// for each
  TLS design (inline over the ring, mem, pair and fd transports, offload, batched,
  threshold, ``--workers 2``, ``--no-fast-path``) and over ws:// for each design that can
  run without TLS (``plain``, that is inline; ``--workers 2``; ``--no-fast-path``);
* under AddressSanitizer (``WSSTLS_SANITIZED=1``, where everything is several times
  slower) the whole list still runs over ws:// (``plain``) and wss:// (``inline-ring``);
  the other designs run the representative subset ``SUBSET`` there, which holds every
  family (1 framing, 2 ping/pong, 3 reserved bits, 4 opcodes, 5 fragmentation, 6 UTF-8,
  7 close, 9 large messages, H handshake) - the rest is marked ``no_sanitizer``.

Servers run in-process (a ``Server`` thread), except ``--workers 2``, which forks: it runs
as a subprocess through the command line.  A server starts on first use and stops at the end
of the module, checked for internal errors.
"""

from __future__ import annotations

import contextlib
import dataclasses
import select
import socket
import ssl
import time
from collections.abc import Callable, Iterator

import pytest
import serverutil
from autobahn_cases import (
    CASES,
    HANDSHAKE_CASES,
    Case,
    HandshakeCase,
    MemoryEchoDriver,
    run_case,
    run_handshake_case,
)
from serverutil import (
    CRYPTO_DESIGNS,
    DESIGNS,
    SANITIZED,
    RunningServer,
    client_ssl_context,
    start_server,
)

server_certs = serverutil.server_certs

#: A case's own limit for each wait (a safety net: a passing case never waits this long).
CASE_TIMEOUT = 30.0 if SANITIZED else 10.0
#: How long one write may wait for the server to take it.
SEND_S = 60.0 if SANITIZED else 30.0
READ_SIZE = 1 << 18


class SocketDriver:
    """One connection to a server, as the ``Driver`` of tests/autobahn_cases.py."""

    def __init__(
        self,
        host: str,
        port: int,
        *,
        ssl_context: ssl.SSLContext | None = None,
        server_hostname: str = "localhost",
        connect_timeout: float = 10.0,
    ) -> None:
        raw = socket.create_connection((host, port), timeout=connect_timeout)
        raw.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        sock: socket.socket = raw
        if ssl_context is not None:
            try:
                sock = ssl_context.wrap_socket(raw, server_hostname=server_hostname)
            except BaseException:
                raw.close()
                raise
        sock.setblocking(False)
        self.sock = sock
        self.tls = ssl_context is not None
        self._inbox = bytearray()
        self._eof = False  # the server ended the stream (FIN, RST, close_notify)
        self._dead = False  # writing failed: the server is gone

    # ------------------------------------------------------------- helpers

    def _pending(self) -> int:
        return self.sock.pending() if isinstance(self.sock, ssl.SSLSocket) else 0

    def _fill(self) -> None:
        """Read whatever can be read now, without blocking."""
        for _ in range(100_000):
            if self._eof:
                return
            try:
                data = self.sock.recv(READ_SIZE)
            except (ssl.SSLWantReadError, ssl.SSLWantWriteError, BlockingIOError):
                return
            except InterruptedError:
                continue
            except OSError:  # reset, or a TLS failure: the stream is over either way
                self._eof = True
                return
            if not data:
                self._eof = True
                return
            self._inbox += data
        raise AssertionError("the server sends without end")

    def _wait(self, seconds: float, write: bool) -> None:
        if self._pending():
            return
        select.select([self.sock], [self.sock] if write else [], [], max(seconds, 0.0))

    # ---------------------------------------------------------- the Driver

    def send(self, data: bytes) -> None:
        """``data`` as one write (one TLS record per 16 KiB); errors once closed are ignored."""
        view = memoryview(data)
        deadline = time.monotonic() + SEND_S
        for _ in range(10_000_000):
            if (not view and data) or self._dead or self._eof:
                return
            try:
                # TLS: a write that wants to be retried is retried with the same bytes.
                n = self.sock.send(view)
            except (ssl.SSLWantWriteError, ssl.SSLWantReadError, BlockingIOError):
                n = 0
            except InterruptedError:
                continue
            except OSError:  # EPIPE, ECONNRESET, or TLS after the peer's alert
                self._dead = True
                return
            if not data:
                return
            view = view[n:]
            if view:
                self._fill()
                left = deadline - time.monotonic()
                assert left > 0, f"the server took no more of a {len(data)}-byte write"
                self._wait(min(left, 0.5), write=True)
        raise AssertionError("too many partial writes")

    def receive(self, timeout: float) -> bytes:
        deadline = time.monotonic() + timeout
        self._fill()
        for _ in range(100_000):
            left = deadline - time.monotonic()
            if self._inbox or self._eof or left <= 0:
                break
            self._wait(min(left, 0.5), write=False)
            self._fill()
        out = bytes(self._inbox)
        self._inbox.clear()
        return out

    @property
    def closed(self) -> bool:
        return self._eof and not self._inbox

    def close(self) -> None:
        self.sock.close()


def driver_for(server: RunningServer) -> SocketDriver:
    ctx = client_ssl_context() if server.tls else None
    return SocketDriver(server.host, server.port, ssl_context=ctx)


def play(case: Case | HandshakeCase, server: RunningServer) -> None:
    driver = driver_for(server)
    try:
        if isinstance(case, HandshakeCase):
            result = run_handshake_case(case, driver, timeout=CASE_TIMEOUT)
        else:
            result = run_case(case, driver, timeout=CASE_TIMEOUT)
    finally:
        driver.close()
    assert result.passed, f"{case.id} {case.description}: {result.detail}"


# ------------------------------------------------------------------ which cases

#: The representative subset for the other designs: every family, the fast path and the
#: framer, chopped writes, fail-fast UTF-8, close codes, large and many messages.
SUBSET = (
    "1.1.1", "1.1.3", "1.1.6.chopped", "1.1.7", "1.2.2.chopped", "1.2.7",
    "2.2", "2.5", "2.6", "2.10",
    "3.2", "3.4", "3.7",
    "4.1.3", "4.2.5",
    "5.3", "5.8", "5.15", "5.19",
    "6.1.2", "6.2.3", "6.3.1", "6.4.1", "6.4.3", "6.4.4", "6.6.4", "6.12.1", "6.20.1.frag",
    "7.1.5", "7.1.6", "7.3.1", "7.3.6", "7.5.1", "7.7.1", "7.9.3",
    "9.1.3", "9.2.6", "9.3.5", "9.6.3", "9.7.6", "9.8.3", "9.9.1", "9.9.2",
    "H.2", "H.3", "H.7", "H.17",
)  # fmt: skip
_BY_ID = {c.id: c for c in [*CASES, *HANDSHAKE_CASES]}

#: Every (design, scheme) run; all of them play every case.
RUNS = [(name, "wss") for name, d in DESIGNS.items() if d.tls] + [
    ("plain", "ws"),
    ("workers2", "ws"),
    ("no-fast-path", "ws"),
]
#: The runs that also play every case under AddressSanitizer (the others play SUBSET).
FULL_UNDER_SANITIZER = {("plain", "ws"), ("inline-ring", "wss")}


@pytest.fixture(scope="module")
def servers(
    server_certs: serverutil.Certs, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Callable[[str, str], RunningServer]]:
    """``get(design, scheme)``: that server, started on first use; all are stopped (and
    checked) at the end of the module."""
    started: dict[tuple[str, str], RunningServer] = {}
    with contextlib.ExitStack() as stack:

        def get(name: str, scheme: str) -> RunningServer:
            if (name, scheme) not in started:
                design = DESIGNS[name]
                if (scheme == "ws") == design.tls:  # the design over the other scheme
                    design = dataclasses.replace(
                        design, name=f"{name}-{scheme}", tls=not design.tls
                    )
                tmp = tmp_path_factory.mktemp("server")
                started[name, scheme] = stack.enter_context(start_server(design, tmp))
            return started[name, scheme]

        yield get


def _params() -> list[object]:
    out = []
    for name, scheme in RUNS:
        for case in [*CASES, *HANDSHAKE_CASES]:
            if name in CRYPTO_DESIGNS and case.id not in SUBSET:
                continue  # every family, in the suite's time budget
            slow = (name, scheme) not in FULL_UNDER_SANITIZER and case.id not in SUBSET
            marks = [pytest.mark.no_sanitizer] if slow else []
            out.append(pytest.param(name, scheme, case.id, id=f"{name}-{scheme}-{case.id}",
                                    marks=marks))  # fmt: skip
    return out


@pytest.mark.parametrize(("design", "scheme", "case_id"), _params())
def test_case(
    servers: Callable[[str, str], RunningServer], design: str, scheme: str, case_id: str
) -> None:
    server = servers(design, scheme)
    assert server.url.startswith(scheme + "://")
    play(_BY_ID[case_id], server)


# ------------------------------------------------------------- the test of the test


def test_subset_covers_every_family() -> None:
    families = {i.split(".")[0] for i in SUBSET}
    assert families == {"1", "2", "3", "4", "5", "6", "7", "9", "H"}
    assert all(i in _BY_ID for i in SUBSET)


def test_the_driver_fails_a_case_against_a_silent_server() -> None:
    """A server that accepts and never answers: the driver reports no 101, the case fails."""
    with socket.create_server(("127.0.0.1", 0)) as listener:
        host, port = listener.getsockname()[:2]
        driver = SocketDriver(host, port)
        try:
            result = run_case(_BY_ID["1.1.1"], driver, timeout=0.5)
        finally:
            driver.close()
    assert not result.passed and "no 101" in result.detail


def test_the_driver_sees_the_close(servers: Callable[[str, str], RunningServer]) -> None:
    """Against the server, a closed connection is seen as closed, and nothing is lost."""
    server = servers("inline-ring", "wss")
    driver = driver_for(server)
    try:
        driver.send(b"GET / HTTP/1.0\r\n\r\n")  # refused: 400, then the server closes
        data = b""
        for _ in range(100):
            data += driver.receive(CASE_TIMEOUT)
            if driver.closed:
                break
        assert driver.closed
        assert data.startswith(b"HTTP/1.1 400")
    finally:
        driver.close()


def test_memory_driver_agrees_on_the_subset() -> None:
    """The subset passes against the in-memory echo too (the cases are not server-specific)."""
    for case_id in SUBSET:
        case = _BY_ID[case_id]
        if case_id.startswith("9."):
            continue
        driver = MemoryEchoDriver()
        try:
            if isinstance(case, HandshakeCase):
                result = run_handshake_case(case, driver, timeout=1.0)
            else:
                result = run_case(case, driver, timeout=1.0)
        finally:
            driver.close()
        assert result.passed, f"{case_id}: {result.detail}"
