"""Start the echo server for a test: in-process (a ``Server`` in a thread) or as a subprocess
through the command line, for each server design.

A design is a set of command-line options (``Design.args``) that maps one to one onto a
``ServerConfig`` (``Design.config``), so the same design runs both ways.  ``DESIGNS`` holds
the ten a test suite covers: inline over each transport (ring, mem, pair, fd), offload,
batched, threshold, ``--workers 2``, plain ws:// and ``--no-fast-path``.

Both kinds of server certify with a trustme CA (ECDSA keys: fast handshakes) written to a
temporary directory as ``--cert``/``--key``; ``client_ssl_context()`` trusts it (hostname
checked: the certificate names ``localhost`` and ``127.0.0.1``) and ``client_tls_context()``
is the same for the load generator.

Stopping: an in-process server with ``Server.stop()`` and a join of its thread; a subprocess
with SIGTERM to its PID (it closes its connections with 1001 and exits 0), SIGKILL to its
process group - a session of its own, so ``--workers`` children go with it - in a
``finally`` if it is still there.  Either kind checks on stopping that nothing went wrong
inside: no "internal error" (a handler that raised) and, for a subprocess, no traceback on
stderr and exit status 0.

Fixtures (bring one into a test module by assignment, ``server_certs =
serverutil.server_certs``, or load this module as a plugin): ``server_certs`` (the PKI,
session scope), ``server_inline_ring`` ... ``server_no_fast_path`` (one per design,
in-process where the design allows, else a subprocess; module scope), ``any_server``
(parametrized over every design), ``server_factory`` (more servers, stopped at the end of
the test) and ``process_factory`` (subprocesses the test may signal itself).  ``WsClient``
is a raw WebSocket client for tests that need the bytes on the wire.
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
import select
import signal
import socket
import ssl
import subprocess
import sys
import threading
import time
import traceback
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest
import trustme

from wsstls.server import Mode, Server, ServerConfig
from wsstls.tls import TLSContext, Transport
from wsstls.ws import encode_frame

#: Set by .ci/sanitize: the extension runs under AddressSanitizer + UBSan.
SANITIZED = os.environ.get("WSSTLS_SANITIZED") == "1"
#: Safety nets (never timing assertions): how long a start, a stop or a wait may take.
START_S = 60.0 if SANITIZED else 20.0
STOP_S = 30.0 if SANITIZED else 15.0
HOST = "127.0.0.1"
ROOT = Path(__file__).resolve().parent.parent
#: What must never appear on a server's stderr.
BAD_OUTPUT = ("internal error", "Traceback")


# ------------------------------------------------------------------ designs


@dataclass(frozen=True)
class Design:
    """One server design: its command-line options and the equivalent ServerConfig."""

    name: str
    tls: bool = True
    transport: str = "ring"
    mode: str = "inline"
    workers: int = 1
    fast_path: bool = True
    threads: int = 2
    offload_threshold: int = 16384
    records: str | None = "openssl"  # None: the server's default

    @property
    def scheme(self) -> str:
        return "wss" if self.tls else "ws"

    @property
    def in_process(self) -> bool:
        """Whether a Server in a thread can run it (--workers forks processes)."""
        return self.workers == 1

    def args(self) -> list[str]:
        """The options for ``python -m wsstls serve`` (without cert, port, timeouts)."""
        out = ["--tls" if self.tls else "--no-tls", "--transport", self.transport]
        out += ["--mode", self.mode, "--threads", str(self.threads)]
        out += ["--offload-threshold", str(self.offload_threshold)]
        out += ["--workers", str(self.workers)]
        if not self.fast_path:
            out.append("--no-fast-path")
        if self.records is not None:  # explicit: the default is direct where it runs
            out += ["--records", self.records]
        return out

    def config(self, **overrides: Any) -> ServerConfig:
        kw: dict[str, Any] = {
            "host": HOST,
            "port": 0,
            "tls": self.tls,
            "transport": Transport(self.transport),
            "mode": Mode(self.mode),
            "threads": self.threads,
            "offload_threshold": self.offload_threshold,
            "workers": self.workers,
            "fast_path": self.fast_path,
            "records": self.records,
        }
        kw.update(overrides)
        return ServerConfig(**kw)


DESIGNS: dict[str, Design] = {
    d.name: d
    for d in (
        Design("inline-ring"),
        Design("inline-mem", transport="mem"),
        Design("inline-pair", transport="pair"),
        Design("inline-fd", transport="fd"),
        Design("offload", mode="offload"),
        Design("batched", mode="batched"),
        # 4 KiB: small messages stay inline, larger ones (the 20 KiB load) are offloaded.
        Design("threshold", mode="threshold", offload_threshold=4096),
        Design("workers2", workers=2),
        Design("plain", tls=False),
        Design("no-fast-path", fast_path=False),
        # wsstls's own TLS 1.3 records after the handshake, in each mode
        Design("inline-direct", records="direct"),
        Design("offload-direct", mode="offload", records="direct"),
        Design("batched-direct", mode="batched", records="direct"),
        Design("threshold-direct", mode="threshold", offload_threshold=4096, records="direct"),
        # OpenSSL ASYNC jobs and pipelining (issue 10): records of 4 KiB and more pause
        # the SSL call; pipelined servers offer TLS 1.2 (4 records per cipher call).
        Design("async", mode="async", offload_threshold=4096),
        Design("pipelined", mode="pipelined"),
        Design("pipelined-async", mode="pipelined+async", offload_threshold=4096),
    )
}
#: The designs of issue 10, which play the Autobahn SUBSET (every family) in the main suite.
CRYPTO_DESIGNS = ("async", "pipelined", "pipelined-async")
TLS_DESIGNS = [name for name, d in DESIGNS.items() if d.tls]


# ------------------------------------------------------------- certificates


@dataclass(frozen=True)
class Certs:
    """A CA and the server's certificate chain and key, as files."""

    ca_pem: bytes
    cafile: str
    certfile: str
    keyfile: str


_CERTS: dict[str, Certs] = {}
_CERTS_LOCK = threading.Lock()


def certs(directory: str | os.PathLike[str] | None = None) -> Certs:
    """The shared test PKI (made once per process), written under ``directory``."""
    with _CERTS_LOCK:
        if "pki" not in _CERTS:
            import tempfile

            where = Path(directory) if directory is not None else Path(tempfile.mkdtemp())
            where.mkdir(parents=True, exist_ok=True)
            ca = trustme.CA(key_type=trustme.KeyType.ECDSA)
            leaf = ca.issue_cert("localhost", HOST, key_type=trustme.KeyType.ECDSA)
            cafile, certfile, keyfile = where / "ca.pem", where / "chain.pem", where / "key.pem"
            ca.cert_pem.write_to_path(str(cafile))
            certfile.write_bytes(b"".join(p.bytes() for p in leaf.cert_chain_pems))
            leaf.private_key_pem.write_to_path(str(keyfile))
            _CERTS["pki"] = Certs(ca.cert_pem.bytes(), str(cafile), str(certfile), str(keyfile))
        return _CERTS["pki"]


def client_ssl_context() -> ssl.SSLContext:
    """A stdlib client context that trusts the server's certificate (names checked)."""
    return ssl.create_default_context(cadata=certs().ca_pem.decode())


def client_tls_context() -> TLSContext:
    """A wsstls client context (for the load generator) that verifies the server."""
    return TLSContext(False, cadata=certs().ca_pem)


# ------------------------------------------------------------ a running server


@dataclass
class RunningServer:
    """A started server: where it listens, how to reach it, and how to stop it."""

    design: Design
    url: str
    pid: int | None = None  # the process serving (a subprocess), None in-process
    stderr_path: str | None = None
    stop: Callable[[], None] = lambda: None

    @property
    def host(self) -> str:
        return urlsplit(self.url).hostname or HOST

    @property
    def port(self) -> int:
        port = urlsplit(self.url).port
        assert port is not None
        return port

    @property
    def tls(self) -> bool:
        return self.url.startswith("wss:")

    def ssl_context(self) -> ssl.SSLContext | None:
        return client_ssl_context() if self.tls else None

    def connect(self, timeout: float = 10.0) -> socket.socket:
        """A connected TCP socket (TCP_NODELAY), wrapped in TLS (handshake done) for wss."""
        sock = socket.create_connection((self.host, self.port), timeout=timeout)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        ctx = self.ssl_context()
        if ctx is None:
            return sock
        try:
            return ctx.wrap_socket(sock, server_hostname="localhost")
        except BaseException:
            sock.close()
            raise


class _RecordingServer(Server):
    """A Server that also keeps the tracebacks of its internal errors, for the test."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.internal_errors: list[str] = []

    def _internal_error(self, conn: Any) -> None:
        self.internal_errors.append(traceback.format_exc())
        super()._internal_error(conn)


@contextlib.contextmanager
def in_process_server(design: Design, **overrides: Any) -> Iterator[RunningServer]:
    """A Server running ``design`` in a thread of this process; stopped and joined on exit.

    ``overrides``: ServerConfig fields (e.g. ``handshake_timeout=1.0``).
    """
    assert design.in_process, f"{design.name} needs processes: use subprocess_server"
    c = certs()
    cfg = design.config(**overrides)
    if cfg.tls:
        cfg = dataclasses.replace(cfg, certfile=c.certfile, keyfile=c.keyfile)
    server = _RecordingServer(cfg)
    failure: list[BaseException] = []

    def run() -> None:
        try:
            server.serve_forever()
        except BaseException as exc:  # reported by the test, on stopping
            failure.append(exc)
            traceback.print_exc()

    thread = threading.Thread(target=run, name=f"wsstls-server-{design.name}", daemon=True)
    handle = RunningServer(design, server.url, stop=server.stop)
    thread.start()
    try:
        yield handle
    finally:
        server.stop()
        thread.join(STOP_S)
    assert not thread.is_alive(), f"{design.name}: the server thread did not stop"
    assert not failure, f"{design.name}: serve_forever raised {failure[0]!r}"
    assert not server.internal_errors, (
        f"{design.name}: internal errors:\n" + "\n".join(server.internal_errors)[-4000:]
    )


def _read_ready_line(proc: subprocess.Popen[bytes], seconds: float) -> str:
    """The ``listening on URL`` line, read from the pipe with a deadline."""
    assert proc.stdout is not None
    fd = proc.stdout.fileno()
    buf = b""
    deadline = time.monotonic() + seconds
    for _ in range(100_000):
        if b"\n" in buf:
            break
        left = deadline - time.monotonic()
        assert left > 0, f"no ready line after {seconds} s (got {buf!r})"
        ready, _, _ = select.select([fd], [], [], min(left, 0.5))
        if not ready:
            assert proc.poll() is None, f"the server exited with {proc.returncode} before ready"
            continue
        chunk = os.read(fd, 4096)
        assert chunk, f"the server closed stdout before the ready line (got {buf!r})"
        buf += chunk
    else:
        raise AssertionError(f"no ready line (got {buf[:200]!r})")
    line = buf.split(b"\n", 1)[0].decode()
    assert line.startswith("listening on "), f"unexpected first line {line!r}"
    return line.removeprefix("listening on ").strip()


def _kill_group(proc: subprocess.Popen[bytes]) -> None:
    """SIGKILL the server's own process group (it leads it) and reap the server."""
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(proc.pid, signal.SIGKILL)
    with contextlib.suppress(subprocess.TimeoutExpired):
        proc.wait(STOP_S)


class ServerProcess:
    """``python -m wsstls serve`` as a subprocess: start, read the ready line, stop by PID."""

    def __init__(
        self, design: Design, tmp: str | os.PathLike[str], extra: list[str] | None = None
    ) -> None:
        self.design = design
        self.tmp = Path(tmp)
        self.tmp.mkdir(parents=True, exist_ok=True)
        self.extra = list(extra or [])
        self.proc: subprocess.Popen[bytes] | None = None
        self.stderr_path = str(self.tmp / f"server-{design.name}-{os.getpid()}-{id(self)}.err")
        self.handle: RunningServer | None = None
        self.returncode: int | None = None

    def command(self) -> list[str]:
        cmd = [sys.executable, "-m", "wsstls", "serve", "--host", HOST, "--port", "0"]
        cmd += self.design.args()
        if self.design.tls:
            c = certs()
            cmd += ["--cert", c.certfile, "--key", c.keyfile]
        return cmd + self.extra

    def start(self) -> RunningServer:
        env = {**os.environ, "PYTHONUNBUFFERED": "1"}
        with open(self.stderr_path, "wb") as err:
            self.proc = subprocess.Popen(
                self.command(),
                stdin=subprocess.DEVNULL,
                stdout=subprocess.PIPE,
                stderr=err,
                cwd=ROOT,
                env=env,
                start_new_session=True,  # its own group: --workers children can be killed too
            )
        try:
            url = _read_ready_line(self.proc, START_S)
        except BaseException:
            _kill_group(self.proc)
            raise AssertionError(f"server did not start:\n{self._stderr()[-4000:]}") from None
        self.handle = RunningServer(
            self.design, url, pid=self.proc.pid, stderr_path=self.stderr_path, stop=self.stop
        )
        return self.handle

    def _stderr(self) -> str:
        return Path(self.stderr_path).read_text(errors="replace")

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def stop(self, sig: int = signal.SIGTERM) -> int:
        """Signal the server by PID and wait for it: its exit status (killed if it hangs)."""
        proc = self.proc
        assert proc is not None
        if proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(proc.pid, sig)
            try:
                proc.wait(STOP_S)
            except subprocess.TimeoutExpired:
                _kill_group(proc)
                raise AssertionError(
                    f"the server did not exit within {STOP_S} s of {sig}"
                ) from None
        self.returncode = proc.returncode
        return proc.returncode

    def cleanup(self) -> None:
        """Whatever happened: nothing of the server is left running."""
        proc = self.proc
        if proc is None:
            return
        try:
            if proc.poll() is None:
                self.stop()
        finally:
            if proc.poll() is None:
                _kill_group(proc)
            else:  # the leader is gone; a straggling worker would still be in its group
                with contextlib.suppress(ProcessLookupError, PermissionError):
                    os.killpg(proc.pid, signal.SIGKILL)
            if proc.stdout is not None:
                proc.stdout.close()

    def check(self) -> None:
        """The server exited 0 and printed no internal error or traceback."""
        text = self._stderr()
        for bad in BAD_OUTPUT:
            assert bad not in text, f"server stderr has {bad!r}:\n{text[-4000:]}"
        assert self.returncode == 0, f"server exit status {self.returncode}:\n{text[-4000:]}"


@contextlib.contextmanager
def subprocess_server(
    design: Design, tmp: str | os.PathLike[str], extra: list[str] | None = None
) -> Iterator[RunningServer]:
    """The CLI server for ``design`` (``extra``: more options); SIGTERM and checked on exit."""
    sp = ServerProcess(design, tmp, extra)
    try:
        yield sp.start()
        sp.stop()
        sp.check()
    finally:
        sp.cleanup()


def _cli_extra(overrides: dict[str, Any]) -> list[str]:
    out = []
    for k, v in overrides.items():
        out += [f"--{k.replace('_', '-')}", str(v)]
    return out


@contextlib.contextmanager
def start_server(
    design: Design | str,
    tmp: str | os.PathLike[str],
    *,
    process: bool | None = None,
    **overrides: Any,
) -> Iterator[RunningServer]:
    """``design`` in-process when it can and ``process`` is not True, else as a subprocess.

    ``overrides`` are ServerConfig fields with a command-line option of the same name
    (``handshake_timeout``, ``max_message``, ``ring_capacity``...).
    """
    d = DESIGNS[design] if isinstance(design, str) else design
    if process is None:
        process = not d.in_process
    if process:
        with subprocess_server(d, tmp, _cli_extra(overrides)) as s:
            yield s
    else:
        with in_process_server(d, **overrides) as s:
            yield s


# --------------------------------------------------------------- a raw client


@dataclass(frozen=True)
class Frame:
    fin: bool
    rsv: int
    opcode: int
    payload: bytes
    header: bytes

    @property
    def close_code(self) -> int:
        assert self.opcode == 0x8, f"not a close frame: opcode {self.opcode}"
        return 1005 if not self.payload else int.from_bytes(self.payload[:2], "big")


class WsClient:
    """A WebSocket client on a blocking socket (TLS for wss://), its frames built here and
    masked with random keys; the server's frames parsed strictly (FIN/RSV/opcode kept,
    never masked).  Every wait is bounded by the socket's timeout."""

    def __init__(
        self, server: RunningServer, *, handshake: bool = True, timeout: float = 30.0
    ) -> None:
        self.sock = server.connect(timeout)
        self._buf = bytearray()
        if handshake:
            try:
                self.handshake()
            except BaseException:
                self.sock.close()
                raise

    REQUEST = (
        b"GET / HTTP/1.1\r\nHost: localhost\r\nUpgrade: websocket\r\n"
        b"Connection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n"
        b"Sec-WebSocket-Version: 13\r\n\r\n"
    )

    def handshake(self, request: bytes = REQUEST) -> bytes:
        """Send ``request``; return the response head (anything after it is kept)."""
        self.sock.sendall(request)
        head = self.read_until(b"\r\n\r\n")
        assert head.startswith(b"HTTP/1.1 101 "), head[:200]
        return head

    def read_until(self, marker: bytes, limit: int = 1 << 16) -> bytes:
        for _ in range(limit):
            end = self._buf.find(marker)
            if end >= 0:
                head = bytes(self._buf[: end + len(marker)])
                del self._buf[: end + len(marker)]
                return head
            assert len(self._buf) < limit, f"no {marker!r} in {bytes(self._buf[:200])!r}"
            chunk = self.sock.recv(65536)
            assert chunk, f"the server closed before {marker!r}: {bytes(self._buf[:200])!r}"
            self._buf += chunk
        raise AssertionError(f"no {marker!r}")

    def read_exactly(self, n: int) -> bytes:
        for _ in range(n + 1):
            if len(self._buf) >= n:
                break
            chunk = self.sock.recv(max(65536, n - len(self._buf)))
            assert chunk, f"the server closed after {len(self._buf)} of {n} bytes"
            self._buf += chunk
        out = bytes(self._buf[:n])
        del self._buf[:n]
        return out

    def send(self, data: bytes) -> None:
        self.sock.sendall(data)

    def send_frame(
        self, opcode: int, payload: bytes = b"", *, fin: bool = True, rsv: int = 0,
        mask: bool = True,
    ) -> None:  # fmt: skip
        self.sock.sendall(frame(opcode, payload, fin=fin, rsv=rsv, mask=mask))

    def recv_frame(self) -> Frame:
        head = self.read_exactly(2)
        assert not head[1] & 0x80, "the server masked a frame"
        n = head[1] & 0x7F
        if n == 126:
            ext = self.read_exactly(2)
            n = int.from_bytes(ext, "big")
            head += ext
        elif n == 127:
            ext = self.read_exactly(8)
            n = int.from_bytes(ext, "big")
            head += ext
        payload = self.read_exactly(n)
        return Frame(bool(head[0] & 0x80), (head[0] >> 4) & 7, head[0] & 0xF, payload, head)

    def echo(self, payload: bytes, opcode: int = 0x2) -> None:
        self.send_frame(opcode, payload)
        got = self.recv_frame()
        assert (got.fin, got.rsv, got.opcode) == (True, 0, opcode), got.header
        assert got.payload == payload, f"echo of {len(payload)} bytes differs"

    def expect_close(self, code: int) -> None:
        """The next frame is a close with ``code``, then the stream ends."""
        got = self.recv_frame()
        assert got.opcode == 0x8, f"expected a close {code}, got opcode {got.opcode}"
        assert got.close_code == code, f"close code {got.close_code}, expected {code}"
        assert self.at_eof(), "the server did not close the connection after its close"

    def at_eof(self) -> bool:
        """True when the stream has ended (EOF, TLS close_notify or a reset)."""
        if self._buf:
            return False
        try:
            return self.sock.recv(1) == b""
        except (ConnectionResetError, ssl.SSLEOFError, BrokenPipeError):
            return True

    def close(self) -> None:
        self.sock.close()

    def __enter__(self) -> WsClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def frame(
    opcode: int, payload: bytes = b"", *, fin: bool = True, rsv: int = 0, mask: bool = True
) -> bytes:
    """A client frame (masked with a random key unless ``mask`` is False)."""
    return bytes(encode_frame(opcode, payload, fin=fin, rsv=rsv,
                              mask_key=os.urandom(4) if mask else None))  # fmt: skip


# ------------------------------------------------------------------ fixtures


@pytest.fixture(scope="session")
def server_certs(tmp_path_factory: pytest.TempPathFactory) -> Certs:
    return certs(tmp_path_factory.mktemp("certs"))


def _design_fixture(name: str) -> Any:
    @pytest.fixture(scope="module")
    def fixture(
        server_certs: Certs, tmp_path_factory: pytest.TempPathFactory
    ) -> Iterator[RunningServer]:
        with start_server(name, tmp_path_factory.mktemp("server")) as s:
            yield s

    fixture.__name__ = "server_" + name.replace("-", "_")
    fixture.__doc__ = f"A running {name} server (module scope)."
    return fixture


server_inline_ring = _design_fixture("inline-ring")
server_inline_mem = _design_fixture("inline-mem")
server_inline_pair = _design_fixture("inline-pair")
server_inline_fd = _design_fixture("inline-fd")
server_offload = _design_fixture("offload")
server_batched = _design_fixture("batched")
server_threshold = _design_fixture("threshold")
server_workers2 = _design_fixture("workers2")
server_plain = _design_fixture("plain")
server_no_fast_path = _design_fixture("no-fast-path")


@pytest.fixture(scope="module", params=list(DESIGNS))
def any_server(
    request: pytest.FixtureRequest, server_certs: Certs, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[RunningServer]:
    """Each design in turn (module scope)."""
    with start_server(request.param, tmp_path_factory.mktemp("server")) as s:
        yield s


@pytest.fixture
def server_factory(server_certs: Certs, tmp_path: Path) -> Iterator[Callable[..., RunningServer]]:
    """``start(design, process=None, **overrides)``: servers stopped (and checked) at the end."""
    with contextlib.ExitStack() as stack:

        def start(design: Design | str, *, process: bool | None = None, **kw: Any) -> Any:
            return stack.enter_context(start_server(design, tmp_path, process=process, **kw))

        yield start


@pytest.fixture
def process_factory(server_certs: Certs, tmp_path: Path) -> Iterator[Callable[..., ServerProcess]]:
    """``start(design, extra=[...])``: started ServerProcess objects (the test may stop them
    itself, e.g. with a signal); at the end each is stopped if needed, and checked."""
    procs: list[ServerProcess] = []

    def start(design: Design | str, extra: list[str] | None = None) -> ServerProcess:
        d = DESIGNS[design] if isinstance(design, str) else design
        sp = ServerProcess(d, tmp_path, extra)
        procs.append(sp)
        sp.start()
        return sp

    try:
        yield start
        for sp in procs:
            if sp.alive():
                sp.stop()
            sp.check()
    finally:
        for sp in procs:
            sp.cleanup()
