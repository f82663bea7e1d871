"""The server against independent clients: the ``websockets`` library, the stdlib ``ssl``
module with a raw socket speaking RFC 6455 by hand, and ``openssl s_client``.

The ``websockets`` tests run over wss:// (inline over the ring transport) and ws:// (plain),
each against an in-process server: text and binary of 0 B to 4 MiB, 16 MiB once (the
server's limit, ``--max-message``) and a message one byte over it refused with 1009,
fragmented sends, ping/pong, the close handshake with a code and reason, many messages on
one connection, many connections at once; and one round over every other design.  The
hand-written client checks the bytes on the wire: the 101 and its accept key, the server's
frame headers for each length encoding (unmasked, FIN), pong, close codes, and TLS 1.2 as
well as 1.3.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import os
import random
import shutil
import socket
import ssl
import struct
import subprocess
from collections.abc import Awaitable, Iterator
from typing import Any, TypeVar

import pytest
import serverutil
from serverutil import DESIGNS, SANITIZED, RunningServer, certs, client_ssl_context, start_server
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed, ConnectionClosedError

server_certs = serverutil.server_certs

T = TypeVar("T")
WAIT_S = 120.0 if SANITIZED else 30.0
MIB = 1 << 20
LIMIT = 16 * MIB  # the server's default --max-message
GUID = "258EAFA5-E914-47DA-95CA-C5AB0DC85B11"
TEXT_PATTERN = "wsstls κόσμε 𝄞 ∮ E⋅da = Q, "


def run(coro: Awaitable[T], seconds: float = WAIT_S) -> T:
    """Run a coroutine to completion on a fresh event loop, with a deadline."""

    async def bounded() -> T:
        return await asyncio.wait_for(coro, seconds)

    return asyncio.run(bounded())


def open_ws(server: RunningServer, **kwargs: Any) -> Any:
    """``websockets`` connect() to the server: no compression, no keepalive pings, no proxy."""
    kwargs.setdefault("max_size", None)
    return connect(
        server.url,
        ssl=client_ssl_context() if server.tls else None,
        server_hostname="localhost" if server.tls else None,
        compression=None,
        ping_interval=None,
        proxy=None,
        open_timeout=WAIT_S,
        close_timeout=WAIT_S,
        **kwargs,
    )


def text_of(n: int) -> str:
    """A string of n characters (ASCII and multi-byte UTF-8, including a 4-byte one)."""
    reps = n // len(TEXT_PATTERN) + 1
    return (TEXT_PATTERN * reps)[:n]


def binary_of(n: int, seed: int = 0) -> bytes:
    return random.Random(seed).randbytes(n)


async def echo(ws: ClientConnection, message: str | bytes) -> None:
    await ws.send(message)
    got = await ws.recv()
    assert type(got) is type(message), f"{type(message).__name__} came back as {type(got)}"
    assert got == message, f"echo of {len(message)} differs"


@pytest.fixture(scope="module", params=["wss", "ws"])
def server(
    request: pytest.FixtureRequest,
    server_certs: serverutil.Certs,
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[RunningServer]:
    """inline-ring over wss://, plain over ws:// (in-process)."""
    design = "inline-ring" if request.param == "wss" else "plain"
    with start_server(design, tmp_path_factory.mktemp("server")) as s:
        yield s


@pytest.fixture(scope="module")
def wss_server(
    server_certs: serverutil.Certs, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[RunningServer]:
    """inline-ring over wss:// (in-process), for the tests about TLS itself."""
    with start_server("inline-ring", tmp_path_factory.mktemp("server")) as s:
        yield s


# ---------------------------------------------------------------- websockets


SIZES = [0, 1, 2, 125, 126, 127, 128, 4096, 16383, 16384, 16385, 65535, 65536, 65537]
SIZES += [100_000, MIB, 4 * MIB]


def test_text_and_binary_of_every_size(server: RunningServer) -> None:
    async def main() -> None:
        async with open_ws(server) as ws:
            for i, size in enumerate(SIZES):
                await echo(ws, binary_of(size, seed=i))
                await echo(ws, text_of(size))

    run(main())


def test_sixteen_mib_once(server: RunningServer) -> None:
    """The largest message the server accepts, binary, exactly 16 MiB."""

    async def main() -> None:
        async with open_ws(server) as ws:
            await echo(ws, binary_of(LIMIT, seed=16))

    run(main())


def test_one_byte_over_the_limit_is_refused_with_1009(server: RunningServer) -> None:
    async def main() -> None:
        async with open_ws(server) as ws:
            await echo(ws, b"before")
            with pytest.raises(ConnectionClosed) as info:
                await ws.send(bytes(LIMIT + 1))
                await ws.recv()
            assert info.value.rcvd is not None, f"no close frame from the server: {info.value}"
            assert info.value.rcvd.code == 1009
        # The server goes on serving.
        async with open_ws(server) as ws:
            await echo(ws, "after")

    run(main())


def test_fragmented_sends(server: RunningServer) -> None:
    """websockets sends an iterable (or async iterable) as one fragmented message."""

    async def chunks(parts: list[bytes]) -> Any:
        for p in parts:
            yield p

    async def main() -> None:
        async with open_ws(server) as ws:
            await ws.send([b"frag", b"men", b"ted"])
            assert await ws.recv() == b"fragmented"
            await ws.send(["κό", "σμε", "", "!"])  # text fragments, one of them empty
            assert await ws.recv() == "κόσμε!"
            big = [binary_of(70_000, seed=i) for i in range(20)]  # 1.4 MB in 20 frames
            await ws.send(big)
            assert await ws.recv() == b"".join(big)
            await ws.send(chunks([b"a" * 10, b"", b"b" * 200_000]))
            assert await ws.recv() == b"a" * 10 + b"b" * 200_000
            await echo(ws, "plain again")  # the fast path resumes after fragments

    run(main())


def test_ping_pong(server: RunningServer) -> None:
    async def main() -> None:
        async with open_ws(server) as ws:
            for payload in (b"", b"ping", bytes(range(125))):
                waiter = await ws.ping(payload)
                await asyncio.wait_for(waiter, WAIT_S)  # the pong with this payload
            waiters = [await ws.ping(f"p{i}".encode()) for i in range(20)]
            await asyncio.wait_for(asyncio.gather(*waiters), WAIT_S)
            # Pings between messages do not disturb the echoes.
            await ws.send(b"m1")
            waiter = await ws.ping(b"between")
            await ws.send("m2")
            assert await ws.recv() == b"m1"
            assert await ws.recv() == "m2"
            await asyncio.wait_for(waiter, WAIT_S)

    run(main())


@pytest.mark.parametrize(("code", "reason"), [(1000, ""), (1001, "going"), (4001, "bye κόσμε")])
def test_close_with_code_and_reason(server: RunningServer, code: int, reason: str) -> None:
    """The client closes with a code and reason: the server answers with the same code (RFC
    6455 5.5.1 lets it leave the reason out) and closes the connection cleanly."""

    async def main() -> None:
        ws = await open_ws(server)
        try:
            await echo(ws, "hello")
            await ws.close(code, reason)
            await asyncio.wait_for(ws.wait_closed(), WAIT_S)
            assert ws.protocol.close_sent is not None
            assert (ws.protocol.close_sent.code, ws.protocol.close_sent.reason) == (code, reason)
            rcvd = ws.protocol.close_rcvd
            assert rcvd is not None, "the server sent no close frame"
            assert rcvd.code == code
            assert rcvd.reason in ("", reason)
            assert ws.close_code == code
        finally:
            await ws.close()

    run(main())


def test_the_server_closing_first_is_seen_by_the_client(server: RunningServer) -> None:
    """A protocol error by the client (a reserved opcode, sent raw) makes the server fail the
    connection with 1002; websockets reports it."""

    async def main() -> None:
        async with open_ws(server) as ws:
            await echo(ws, b"ok")
            frame = bytes([0x83, 0x80]) + os.urandom(4)  # opcode 3, masked, empty
            ws.transport.write(frame)
            with pytest.raises(ConnectionClosedError) as info:
                await ws.recv()
            assert info.value.rcvd is not None and info.value.rcvd.code == 1002

    run(main())


@pytest.mark.slow
def test_many_messages_on_one_connection(server: RunningServer) -> None:
    """20,000 messages of mixed types and sizes, pipelined in bursts, echoed in order."""
    rng = random.Random(7)
    messages: list[str | bytes] = []
    for i in range(20_000):
        size = rng.choice((0, 1, 10, 100, 125, 126, 1000, 5000, 20_000))
        messages.append(text_of(size) if i % 3 == 0 else rng.randbytes(size))

    async def main() -> None:
        async with open_ws(server) as ws:
            for start in range(0, len(messages), 500):
                burst = messages[start : start + 500]
                for m in burst:
                    await ws.send(m)
                for m in burst:
                    got = await ws.recv()
                    assert got == m, f"message {start}+: {len(got)} vs {len(m)}"

    run(main())


def test_many_connections_at_once(server: RunningServer) -> None:
    async def client(i: int) -> None:
        async with open_ws(server) as ws:
            for j in range(20):
                await echo(ws, binary_of(i * 37 + j * 101, seed=i * 100 + j))
                await echo(ws, text_of(j * 50))

    async def main() -> None:
        await asyncio.gather(*(client(i) for i in range(50)))

    run(main())


@pytest.mark.parametrize("design", [n for n in DESIGNS if n not in ("inline-ring", "plain")])
def test_websockets_against_every_design(
    design: str, server_certs: serverutil.Certs, tmp_path: Any
) -> None:
    """One round of the above against each other design."""
    with start_server(design, tmp_path) as s:

        async def main() -> None:
            async with open_ws(s) as ws:
                for i, size in enumerate([0, 1, 126, 65536, 200_000, MIB]):
                    await echo(ws, binary_of(size, seed=i))
                    await echo(ws, text_of(size))
                await ws.send([b"x" * 1000, b"y" * 70_000])
                assert await ws.recv() == b"x" * 1000 + b"y" * 70_000
                await asyncio.wait_for(await ws.ping(b"p"), WAIT_S)
                for j in range(300):
                    await ws.send(binary_of(j * 7, seed=j))
                for j in range(300):
                    assert await ws.recv() == binary_of(j * 7, seed=j)
                await ws.close(4000, "done")
                assert ws.close_code == 4000

        run(main())


# --------------------------------------------------------- RFC 6455 by hand


def recv_exactly(sock: socket.socket, n: int) -> bytes:
    buf = bytearray()
    for _ in range(n + 1):
        if len(buf) >= n:
            break
        chunk = sock.recv(n - len(buf))
        assert chunk, f"the server closed after {len(buf)} of {n} bytes"
        buf += chunk
    return bytes(buf)


def recv_until(sock: socket.socket, marker: bytes, limit: int = 65536) -> bytes:
    buf = b""
    for _ in range(limit):
        if marker in buf:
            return buf
        chunk = sock.recv(1)  # byte by byte: nothing after the marker is taken
        assert chunk, f"the server closed before {marker!r} (got {buf!r})"
        buf += chunk
    raise AssertionError(f"no {marker!r} in {buf[:200]!r}")


def client_frame(opcode: int, payload: bytes, *, fin: bool = True, mask: bool = True) -> bytes:
    """A client frame built by hand (RFC 6455 5.2)."""
    head = bytes([(0x80 if fin else 0) | opcode])
    n = len(payload)
    bit = 0x80 if mask else 0
    if n < 126:
        head += bytes([bit | n])
    elif n < 65536:
        head += bytes([bit | 126]) + struct.pack("!H", n)
    else:
        head += bytes([bit | 127]) + struct.pack("!Q", n)
    if not mask:
        return head + payload
    key = os.urandom(4)
    reps = len(payload) // 4 + 1
    masked = bytes(a ^ b for a, b in zip(payload, (key * reps)[: len(payload)], strict=True))
    return head + key + masked


def read_frame(sock: socket.socket) -> tuple[int, int, bytes, bytes]:
    """(first byte, length byte, header bytes, payload) of one server frame."""
    head = recv_exactly(sock, 2)
    assert not head[1] & 0x80, "a server frame must not be masked"
    n = head[1] & 0x7F
    if n == 126:
        ext = recv_exactly(sock, 2)
        n = struct.unpack("!H", ext)[0]
        head += ext
    elif n == 127:
        ext = recv_exactly(sock, 8)
        n = struct.unpack("!Q", ext)[0]
        head += ext
    return head[0], head[1], head, recv_exactly(sock, n)


def handshake(sock: socket.socket) -> bytes:
    """Send an upgrade request; check the 101 and its accept key; return what followed."""
    key = base64.b64encode(os.urandom(16)).decode()
    sock.sendall(
        (
            "GET /chat?x=1 HTTP/1.1\r\nHost: localhost\r\nUpgrade: websocket\r\n"
            f"Connection: Upgrade\r\nSec-WebSocket-Key: {key}\r\n"
            "Sec-WebSocket-Version: 13\r\nOrigin: http://localhost\r\n\r\n"
        ).encode()
    )
    head = recv_until(sock, b"\r\n\r\n").decode("latin-1")
    lines = head.split("\r\n")
    assert lines[0].startswith("HTTP/1.1 101"), lines[0]
    fields = {k.strip().lower(): v.strip() for k, _, v in (ln.partition(":") for ln in lines[1:])}
    accept = base64.b64encode(hashlib.sha1((key + GUID).encode()).digest()).decode()
    assert fields.get("sec-websocket-accept") == accept
    assert fields.get("upgrade", "").lower() == "websocket"
    assert "upgrade" in fields.get("connection", "").lower()
    assert "sec-websocket-extensions" not in fields
    return b""


def raw_connect(server: RunningServer, tls_max: ssl.TLSVersion | None = None) -> socket.socket:
    sock = socket.create_connection((server.host, server.port), timeout=WAIT_S)
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    if not server.tls:
        return sock
    ctx = client_ssl_context()
    if tls_max is not None:
        ctx.maximum_version = tls_max
    return ctx.wrap_socket(sock, server_hostname="localhost")


def test_frames_by_hand(server: RunningServer) -> None:
    frames_by_hand(server)


def test_frames_by_hand_over_tls_1_2(wss_server: RunningServer) -> None:
    frames_by_hand(wss_server, ssl.TLSVersion.TLSv1_2)


def frames_by_hand(server: RunningServer, tls_max: ssl.TLSVersion | None = None) -> None:
    sock = raw_connect(server, tls_max)
    try:
        if tls_max is not None:
            assert isinstance(sock, ssl.SSLSocket) and sock.version() == "TLSv1.2"
        handshake(sock)
        # Each length encoding: 7-bit, 16-bit and 64-bit, the server's header exactly.
        for size, length_byte, header_len in ((0, 0, 2), (125, 125, 2), (126, 126, 4),
                                              (65535, 126, 4), (65536, 127, 10)):  # fmt: skip
            payload = binary_of(size, seed=size)
            sock.sendall(client_frame(0x2, payload))
            b0, b1, head, got = read_frame(sock)
            assert (b0, b1, len(head)) == (0x82, length_byte, header_len)
            assert got == payload
        sock.sendall(client_frame(0x1, "κόσμε".encode()))
        b0, _, _, got = read_frame(sock)
        assert b0 == 0x81 and got == "κόσμε".encode()
        # A fragmented message comes back as one frame (this server does not fragment).
        sock.sendall(client_frame(0x1, b"frag", fin=False) + client_frame(0x0, b"ment"))
        b0, _, _, got = read_frame(sock)
        assert b0 == 0x81 and got == b"fragment"
        # Ping: a pong with the same payload.
        sock.sendall(client_frame(0x9, b"are you there"))
        b0, _, _, got = read_frame(sock)
        assert b0 == 0x8A and got == b"are you there"
        # Close 1000 with a reason: a close 1000, then the end of the stream.
        sock.sendall(client_frame(0x8, struct.pack("!H", 1000) + b"bye"))
        b0, _, _, got = read_frame(sock)
        assert b0 == 0x88 and struct.unpack("!H", got[:2])[0] == 1000
        assert sock.recv(1) == b""  # TLS: close_notify, then EOF
    finally:
        sock.close()


def test_an_unmasked_client_frame_fails_with_1002(server: RunningServer) -> None:
    sock = raw_connect(server)
    try:
        handshake(sock)
        sock.sendall(client_frame(0x2, b"not masked", mask=False))
        b0, _, _, got = read_frame(sock)
        assert b0 == 0x88 and struct.unpack("!H", got[:2])[0] == 1002
        assert sock.recv(1) == b""
    finally:
        sock.close()


def test_requests_on_many_raw_connections_interleaved(server: RunningServer) -> None:
    """Twenty raw connections opened together, frames sent to all, echoes read from all."""
    socks = [raw_connect(server) for _ in range(20)]
    try:
        for s in socks:
            handshake(s)
        for i, s in enumerate(socks):
            s.sendall(client_frame(0x2, bytes([i]) * (i * 1000)))
        for i, s in enumerate(socks):
            assert read_frame(s)[3] == bytes([i]) * (i * 1000)
    finally:
        for s in socks:
            s.close()


# ------------------------------------------------------------- openssl s_client


@pytest.mark.skipif(shutil.which("openssl") is None, reason="no openssl command")
@pytest.mark.parametrize("version", ["-tls1_3", "-tls1_2"])
def test_openssl_s_client(wss_server: RunningServer, version: str) -> None:
    """The request, a text frame and a close frame through ``openssl s_client``: its output
    holds the 101, the echo and the server's close frame; the certificate verifies."""
    server = wss_server
    request = (
        b"GET / HTTP/1.1\r\nHost: localhost\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
        b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n"
    )
    stdin = request + client_frame(0x1, b"hello from s_client") + client_frame(0x8, b"\x03\xe8")
    cmd = ["openssl", "s_client", "-connect", f"{server.host}:{server.port}", version,
           "-servername", "localhost", "-verify_hostname", "localhost",
           "-CAfile", certs().cafile, "-verify_return_error", "-ign_eof"]  # fmt: skip
    proc = subprocess.run(cmd, input=stdin, capture_output=True, timeout=WAIT_S, check=False)
    out = proc.stdout
    assert proc.returncode == 0, proc.stderr.decode(errors="replace")[-2000:]
    assert b"Verify return code: 0 (ok)" in out
    assert b"HTTP/1.1 101 Switching Protocols" in out
    assert b"s3pPLMBiTxaQ9kYGzzhZRbK+xOo=" in out  # RFC 6455's example accept key
    body = out.split(b"\r\n\r\n", 1)[1]
    echoed = bytes([0x81, len(b"hello from s_client")]) + b"hello from s_client"
    assert echoed in body
    assert bytes([0x88, 0x02, 0x03, 0xE8]) in body  # the server's close 1000
