"""The peer echo servers in wsstls/measure/peers/ (picows, websockets, aiohttp, stdlib asyncio).

Each peer runs as its own process, exactly as the benchmark starts it, and is driven with the
websockets client over ws:// and wss:// (a trustme CA and an RSA 2048 leaf for 127.0.0.1).
Checked: the one ready line on stdout, echo of text and binary messages of the edge sizes,
fragmented messages, ping/pong, the close handshake, a clean exit 0 on SIGTERM that closes
open connections with 1001, CPU pinning, and for the hand-written stdlib peer the protocol
errors it must fail on.  A library peer is skipped only when its library is not importable.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import importlib.util
import os
import re
import select
import signal
import socket
import ssl
import struct
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

websockets = pytest.importorskip("websockets")
from websockets.asyncio.client import connect  # noqa: E402
from websockets.exceptions import ConnectionClosedError  # noqa: E402

from wsstls.measure.bench import peers_dir  # noqa: E402

pytestmark = [pytest.mark.slow, pytest.mark.no_sanitizer, pytest.mark.timeout(120)]

PEERS_DIR = peers_dir()
# peer script -> the library it needs (None: stdlib only)
PEERS = {
    "picows_echo": "picows",
    "websockets_echo": "websockets",
    "aiohttp_echo": "aiohttp",
    "asyncio_echo": None,
}
SIZES = [0, 125, 126, 65536, 1 << 20]
READY_S = 20.0  # generous: first imports on a cold, loaded machine
EXIT_S = 10.0
IO_S = 15.0
READY = re.compile(r"listening on (wss?)://127\.0\.0\.1:(\d+)/\n")


def _peer_param(name: str) -> object:
    return pytest.param(name, id=name.removesuffix("_echo"))


ALL_PEERS = pytest.mark.parametrize("name", [_peer_param(n) for n in PEERS])


def _require(name: str) -> None:
    lib = PEERS[name]
    if lib is not None:
        pytest.importorskip(lib)


@dataclass
class Certs:
    cert: Path
    key: Path
    client: ssl.SSLContext


@pytest.fixture(scope="module")
def certs(tmp_path_factory: pytest.TempPathFactory) -> Certs:
    trustme = pytest.importorskip("trustme")
    ca = trustme.CA(key_type=trustme.KeyType.RSA)
    leaf = ca.issue_cert("127.0.0.1", "localhost", key_type=trustme.KeyType.RSA)
    d = tmp_path_factory.mktemp("peer-certs")
    cert, key = d / "cert.pem", d / "key.pem"
    cert.write_bytes(b"".join(blob.bytes() for blob in leaf.cert_chain_pems))
    leaf.private_key_pem.write_to_path(str(key))
    client = ssl.create_default_context(ssl.Purpose.SERVER_AUTH)
    ca.configure_trust(client)
    return Certs(cert, key, client)


@dataclass
class Peer:
    proc: subprocess.Popen[str]
    url: str
    stderr: tempfile._TemporaryFileWrapper[str]

    def log(self) -> str:
        self.stderr.seek(0)
        return self.stderr.read()

    def stop(self, sig: int = signal.SIGTERM) -> None:
        """Signal the peer and require exit code 0 and nothing more on stdout."""
        self.proc.send_signal(sig)
        try:
            rc = self.proc.wait(EXIT_S)
        except subprocess.TimeoutExpired:
            pytest.fail(f"peer still running {EXIT_S}s after signal {sig}\n{self.log()}")
        assert rc == 0, f"exit code {rc}\n{self.log()}"
        assert self.proc.stdout is not None
        assert self.proc.stdout.read() == "", "more than the ready line on stdout"


@contextlib.contextmanager
def running(name: str, *extra: str, certs: Certs | None = None) -> Iterator[Peer]:
    """Start a peer on an ephemeral port, wait for its ready line; kill it by PID at the end."""
    _require(name)
    cmd = [sys.executable, str(PEERS_DIR / f"{name}.py"), "--host", "127.0.0.1", "--port", "0"]
    if certs is not None:
        cmd += ["--tls", "--cert", str(certs.cert), "--key", str(certs.key)]
    cmd += extra
    with tempfile.TemporaryFile("w+") as err:
        # cwd elsewhere: the scripts must find their sibling module from any directory
        proc = subprocess.Popen(
            cmd, stdout=subprocess.PIPE, stderr=err, text=True, cwd=tempfile.gettempdir()
        )
        peer = Peer(proc, "", err)
        try:
            assert proc.stdout is not None
            ready, _, _ = select.select([proc.stdout], [], [], READY_S)
            if not ready:
                pytest.fail(f"{name}: no ready line within {READY_S}s\n{peer.log()}")
            line = proc.stdout.readline()
            m = READY.fullmatch(line)
            assert m, f"{name}: bad ready line {line!r}\n{peer.log()}"
            assert m.group(1) == ("wss" if certs else "ws")
            peer.url = line.split()[-1]
            yield peer
        finally:
            if proc.poll() is None:
                os.kill(proc.pid, signal.SIGKILL)
            proc.wait()
            if proc.stdout is not None:
                proc.stdout.close()


def text_of(n: int) -> str:
    """A str whose UTF-8 encoding is exactly n bytes, with 2- and 3-byte characters in it."""
    raw = ("wsstls é € " * (n // 8 + 1)).encode()[:n]
    s = raw.decode("utf-8", "ignore")
    return s + "a" * (n - len(s.encode()))


async def _exchange(url: str, client_ssl: ssl.SSLContext | None) -> None:
    async with connect(
        url, ssl=client_ssl, compression=None, max_size=None, ping_interval=None, open_timeout=IO_S
    ) as ws:
        for n in SIZES:
            data = os.urandom(n)
            await ws.send(data)
            got = await asyncio.wait_for(ws.recv(), IO_S)
            assert isinstance(got, bytes) and got == data, f"binary {n}"
            text = text_of(n)
            await ws.send(text)
            got = await asyncio.wait_for(ws.recv(), IO_S)
            assert isinstance(got, str) and got == text, f"text {n}"
        # fragmented messages come back as the same message (however the server frames it)
        await ws.send(["frag", "mented ", "€"])
        assert await asyncio.wait_for(ws.recv(), IO_S) == "fragmented €"
        await ws.send([b"\x00\x01", b"", b"\xff" * 300])
        assert await asyncio.wait_for(ws.recv(), IO_S) == b"\x00\x01" + b"\xff" * 300
        pong = await ws.ping(b"are you there")
        await asyncio.wait_for(pong, IO_S)
        await ws.send("after ping")
        assert await asyncio.wait_for(ws.recv(), IO_S) == "after ping"
        await asyncio.wait_for(ws.close(), IO_S)
    assert ws.close_code == 1000


# each peer as the benchmark runs it, plus picows on the loop's own transports
ECHO_CASES = pytest.mark.parametrize(
    ("name", "extra"),
    [pytest.param(n, (), id=n.removesuffix("_echo")) for n in PEERS]
    + [pytest.param("picows_echo", ("--aiofastnet", "off"), id="picows-no-aiofastnet")],
)


@ECHO_CASES
@pytest.mark.parametrize("scheme", ["ws", "wss"])
def test_echo_then_sigterm(name: str, extra: tuple[str, ...], scheme: str, certs: Certs) -> None:
    tls = certs if scheme == "wss" else None
    with running(name, *extra, certs=tls) as peer:
        assert peer.url.startswith(f"{scheme}://")
        asyncio.run(_exchange(peer.url, tls.client if tls else None))
        peer.stop(signal.SIGTERM)
        if name == "picows_echo":  # the stderr line says which transports picows ran on
            fastnet = not extra and importlib.util.find_spec("aiofastnet") is not None
            assert ("aiofastnet" if fastnet else "loop transports") in peer.log()


async def _held_open_then_stopped(peer: Peer, client_ssl: ssl.SSLContext | None) -> None:
    async with connect(peer.url, ssl=client_ssl, compression=None, ping_interval=None) as ws:
        await ws.send(b"hold")
        assert await asyncio.wait_for(ws.recv(), IO_S) == b"hold"
        peer.proc.send_signal(signal.SIGINT)
        await asyncio.wait_for(ws.wait_closed(), IO_S)
    assert ws.close_code == 1001, ws.close_code


OTHER_LOOP = {"asyncio_echo": "uvloop"}  # the others default to uvloop


@ALL_PEERS
def test_sigint_closes_open_connection_other_loop_pinned(name: str, certs: Certs) -> None:
    """SIGINT with a client connected: close frame 1001 to it, exit 0; --loop and --cpu work."""
    cpu = max(os.sched_getaffinity(0))
    loop = OTHER_LOOP.get(name, "asyncio")
    if loop == "uvloop":  # an optional peer dependency (the 'peers' extra)
        pytest.importorskip("uvloop")
    with running(name, "--loop", loop, "--cpu", str(cpu), certs=certs) as peer:
        assert os.sched_getaffinity(peer.proc.pid) == {cpu}
        asyncio.run(_held_open_then_stopped(peer, certs.client))
        try:
            rc = peer.proc.wait(EXIT_S)
        except subprocess.TimeoutExpired:
            pytest.fail(f"still running after SIGINT\n{peer.log()}")
        assert rc == 0, peer.log()
        assert f"loop {loop}" in peer.log()


@ALL_PEERS
@pytest.mark.parametrize("scheme", ["ws", "wss"])
def test_sigterm_with_a_connection_still_handshaking(name: str, scheme: str, certs: Certs) -> None:
    """A TCP connection that never starts its TLS / HTTP handshake does not hold up the stop."""
    with running(name, certs=certs if scheme == "wss" else None) as peer:
        port = int(peer.url.rsplit(":", 1)[1].rstrip("/"))
        with socket.create_connection(("127.0.0.1", port), timeout=IO_S):
            peer.stop(signal.SIGTERM)
        assert "did not close in time" not in peer.log()


@pytest.mark.parametrize(
    "argv", [["--tls"], ["--cert", "x.pem"], ["--loop", "trio"], ["--cpu", "100000"]]
)
def test_bad_command_line(argv: list[str]) -> None:
    cmd = [sys.executable, str(PEERS_DIR / "asyncio_echo.py"), *argv]
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=EXIT_S)
    assert r.returncode == 2 and r.stdout == "", r


# -- protocol errors the hand-written stdlib peer must fail on --------------------------------


def _raw_upgrade(port: int) -> socket.socket:
    s = socket.create_connection(("127.0.0.1", port), timeout=IO_S)
    key = base64.b64encode(os.urandom(16)).decode()
    s.sendall(
        f"GET / HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nUpgrade: websocket\r\n"
        f"Connection: Upgrade\r\nSec-WebSocket-Key: {key}\r\n"
        "Sec-WebSocket-Version: 13\r\n\r\n".encode()
    )
    head = b""
    while b"\r\n\r\n" not in head:
        chunk = s.recv(4096)
        assert chunk, "connection closed during the handshake"
        head += chunk
    assert head.startswith(b"HTTP/1.1 101 "), head
    return s


def _masked(b0: int, payload: bytes, mask: bytes = b"\x11\x22\x33\x44") -> bytes:
    masked = bytes(c ^ mask[i % 4] for i, c in enumerate(payload))
    return bytes((b0, 0x80 | len(payload))) + mask + masked


def _close_code(s: socket.socket) -> int:
    data = b""
    while True:
        chunk = s.recv(4096)
        if not chunk:
            break
        data += chunk
    assert len(data) >= 4 and data[0] == 0x88, data
    return struct.unpack("!H", data[2:4])[0]


@pytest.mark.parametrize(
    ("frame", "code"),
    [
        (bytes((0x82, 3)) + b"abc", 1002),  # unmasked client frame
        (_masked(0x81, b"\xc3\x28"), 1007),  # text that is not UTF-8
        (_masked(0x80, b"x"), 1002),  # continuation with nothing to continue
        (_masked(0x09, b"x"), 1002),  # fragmented control frame
        (_masked(0xC2, b"x"), 1002),  # RSV1 without an extension
        (_masked(0x83, b"x"), 1002),  # reserved opcode
        (_masked(0x88, b"\x03\xed"), 1002),  # close code 1005 may not be sent
    ],
    ids=["unmasked", "bad-utf8", "stray-cont", "frag-ping", "rsv1", "opcode3", "close1005"],
)
def test_stdlib_peer_fails_bad_frames(frame: bytes, code: int) -> None:
    with running("asyncio_echo") as peer:
        port = int(peer.url.rsplit(":", 1)[1].rstrip("/"))
        with _raw_upgrade(port) as s:
            s.sendall(frame)
            assert _close_code(s) == code
        peer.stop()


def test_stdlib_peer_rejects_non_websocket_request() -> None:
    with running("asyncio_echo") as peer:
        port = int(peer.url.rsplit(":", 1)[1].rstrip("/"))
        with socket.create_connection(("127.0.0.1", port), timeout=IO_S) as s:
            s.sendall(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
            assert s.recv(4096).startswith(b"HTTP/1.1 400 ")
        peer.stop()


async def _too_big(url: str) -> None:
    async with connect(url, compression=None, ping_interval=None) as ws:
        await ws.send(b"x" * 1000)
        assert await ws.recv() == b"x" * 1000
        await ws.send(b"x" * 1001)
        with pytest.raises(ConnectionClosedError):
            await asyncio.wait_for(ws.recv(), IO_S)
    assert ws.close_code == 1009, ws.close_code


@ALL_PEERS
def test_max_size(name: str) -> None:
    with running(name, "--max-size", "1000") as peer:
        asyncio.run(_too_big(peer.url))
        peer.stop()
