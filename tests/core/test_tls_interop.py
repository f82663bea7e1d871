"""wsstls against real TLS peers over sockets, for every transport.

The peers: CPython's ``ssl`` module (blocking, in a thread, on its end of a
127.0.0.1 TCP connection) as client and as server, and ``openssl s_client``
as a subprocess.  The wsstls side runs in the test thread on a non-blocking
socket.  Covered: TLS 1.2 and 1.3 (pinned on either side), ALPN, SNI and the
hostname check, the negotiated parameters and certificates each side
reports, client certificates, and a clean close_notify exchange at the end.
"""

from __future__ import annotations

import contextlib
import os
import random
import select
import socket
import ssl
import subprocess
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from tlsutil import (
    HOST,
    TRANSPORTS,
    WAIT_S,
    Peer,
    PeerThread,
    bounded,
    client_context,
    close_all,
    drive,
    handshake,
    other_pki,
    pki,
    recv_exactly,
    server_context,
    stdlib_client_context,
    stdlib_server_context,
    tcp_pair,
)

from wsstls.tls import TLSConnection, TLSError, TLSVersion

VERSIONS = ["TLSv1.2", "TLSv1.3"]
OURS = {"TLSv1.2": TLSVersion.TLSv1_2, "TLSv1.3": TLSVersion.TLSv1_3}
THEIRS = {"TLSv1.2": ssl.TLSVersion.TLSv1_2, "TLSv1.3": ssl.TLSVersion.TLSv1_3}
PAYLOAD = random.Random(1).randbytes(100_000)  # several records each way

transports = pytest.mark.parametrize("transport", TRANSPORTS)
versions = pytest.mark.parametrize("version", VERSIONS)
forced_by = pytest.mark.parametrize("forced_by", ["wsstls", "stdlib"])


def pinned(version: str) -> dict[str, TLSVersion]:
    return {"min_version": OURS[version], "max_version": OURS[version]}


def pin_stdlib(ctx: ssl.SSLContext, version: str) -> ssl.SSLContext:
    ctx.minimum_version = ctx.maximum_version = THEIRS[version]
    return ctx


@pytest.fixture
def tcp() -> Iterator[tuple[socket.socket, socket.socket]]:
    """(ours, theirs): two ends of a 127.0.0.1 TCP connection, both closed afterwards."""
    a, b = tcp_pair()
    yield a, b
    close_all(a, b)


def blocking(sock: socket.socket) -> socket.socket:
    sock.setblocking(True)
    sock.settimeout(WAIT_S)
    return sock


def session_info(tls: ssl.SSLSocket) -> dict[str, Any]:
    cipher = tls.cipher()
    return {
        "version": tls.version(),
        "cipher": cipher[0] if cipher else None,
        "alpn": tls.selected_alpn_protocol(),
        "peer_der": tls.getpeercert(binary_form=True),
    }


# ------------------------------------------------------------ stdlib peers


def stdlib_client(
    sock: socket.socket, ctx: ssl.SSLContext, payload: bytes, hostname: str = HOST
) -> Callable[[], dict[str, Any]]:
    """Handshake, send payload, read its echo, exchange close_notify."""

    def run() -> dict[str, Any]:
        try:
            tls = ctx.wrap_socket(blocking(sock), server_hostname=hostname)
        except (ssl.SSLError, OSError) as exc:
            return {"error": exc}
        with tls:
            info = session_info(tls)
            try:
                tls.sendall(payload)
                info["echo"] = recv_exactly(tls, len(payload))
                tls.unwrap()
            except (ssl.SSLError, OSError) as exc:
                info["error"] = exc
            return info

    return run


def stdlib_server(sock: socket.socket, ctx: ssl.SSLContext, n: int) -> Callable[[], dict[str, Any]]:
    """Handshake, read n bytes, send them back reversed, exchange close_notify."""
    seen_sni: list[str | None] = []

    def sni(tls: ssl.SSLObject, name: str | None, _ctx: ssl.SSLContext) -> None:
        seen_sni.append(name)

    ctx.sni_callback = sni

    def run() -> dict[str, Any]:
        try:
            tls = ctx.wrap_socket(blocking(sock), server_side=True)
        except (ssl.SSLError, OSError) as exc:
            return {"error": exc, "sni": seen_sni}
        with tls:
            info = session_info(tls)
            info["sni"] = seen_sni
            try:
                data = recv_exactly(tls, n)
                info["got"] = data
                tls.sendall(data[::-1])
                tls.unwrap()
            except (ssl.SSLError, OSError) as exc:
                info["error"] = exc
            return info

    return run


# ------------------------------------------------------------ wsstls side


def serve_echo(conn: TLSConnection, sock: socket.socket) -> Peer:
    """Our server: echo everything until the client's close_notify, then answer it."""
    handshake([conn], [sock], "server handshake")
    server = Peer(conn, sock)
    echoed = 0

    def done() -> bool:
        nonlocal echoed
        if len(server.received) > echoed:
            server.queue(bytes(server.received[echoed:]))
            echoed = len(server.received)
        return server.peer_closed and not server.wants_write

    drive([server], done, "echo until close_notify")
    assert conn.shutdown() is True  # the client's close_notify came first
    drive([server], lambda: conn.pending_out == 0, "send our close_notify")
    return server


def run_client(conn: TLSConnection, sock: socket.socket, payload: bytes) -> Peer:
    """Our client: send payload, read the answer up to the close_notify, answer it."""
    handshake([conn], [sock], "client handshake")
    client = Peer(conn, sock)
    client.queue(payload)
    drive([client], lambda: client.peer_closed, "read the answer up to close_notify")
    assert conn.shutdown() is True
    drive([client], lambda: conn.pending_out == 0, "send our close_notify")
    return client


def first_error(conn: TLSConnection, sock: socket.socket) -> TLSError:
    """Handshake and read until the connection fails; the TLSError it raised."""
    for _ in bounded("waiting for the TLS failure"):
        try:
            if conn.do_handshake():
                data = conn.read()
                assert data != b"", "the peer closed cleanly instead of failing"
        except TLSError as exc:
            return exc
        select.select([sock], [], [], 0.05)
    raise AssertionError("unreachable")


# ======================================================= wsstls server


@transports
@versions
@forced_by
def test_wsstls_server_stdlib_client(
    tcp: tuple[socket.socket, socket.socket], transport: str, version: str, forced_by: str
) -> None:
    ours, theirs = tcp
    ctx = server_context(**(pinned(version) if forced_by == "wsstls" else {}))
    std = stdlib_client_context()
    if forced_by == "stdlib":
        pin_stdlib(std, version)
    conn = ctx.connection(ours, transport=transport)
    assert (conn.version, conn.cipher, conn.peer_certificate) == (None, None, None)
    peer = PeerThread(stdlib_client(theirs, std, PAYLOAD))
    peer.start()
    server = serve_echo(conn, ours)
    info = peer.result()
    assert "error" not in info, info.get("error")
    assert info["echo"] == PAYLOAD
    assert bytes(server.received) == PAYLOAD
    assert conn.version == info["version"] == version
    assert conn.cipher == info["cipher"]
    assert info["peer_der"] == pki().der(pki().server)
    assert conn.peer_certificate is None  # no client certificate asked for
    assert conn.alpn_protocol is None and info["alpn"] is None
    assert conn.handshake_done


@transports
@versions
@forced_by
def test_stdlib_server_wsstls_client(
    tcp: tuple[socket.socket, socket.socket], transport: str, version: str, forced_by: str
) -> None:
    ours, theirs = tcp
    std = stdlib_server_context()
    if forced_by == "stdlib":
        pin_stdlib(std, version)
    ctx = client_context(**(pinned(version) if forced_by == "wsstls" else {}))
    conn = ctx.connection(ours, transport=transport, server_hostname=HOST)
    peer = PeerThread(stdlib_server(theirs, std, len(PAYLOAD)))
    peer.start()
    client = run_client(conn, ours, PAYLOAD)
    info = peer.result()
    assert "error" not in info, info.get("error")
    assert info["got"] == PAYLOAD
    assert bytes(client.received) == PAYLOAD[::-1]
    assert conn.version == info["version"] == version
    assert conn.cipher == info["cipher"]
    assert conn.peer_certificate == pki().der(pki().server)
    assert info["peer_der"] is None
    assert info["sni"] == [HOST]


# ================================================================ ALPN

ALPN_CASES = {
    # name: (server's list, client's list, expected)
    "common": (["h2", "http/1.1"], ["x-unknown", "http/1.1"], "http/1.1"),
    "server-preference": (["h2", "http/1.1"], ["http/1.1", "h2"], "h2"),
    "mismatch": (["h2"], ["http/1.1"], None),
}
alpn_cases = pytest.mark.parametrize("case", list(ALPN_CASES))


@transports
@alpn_cases
def test_alpn_wsstls_server(
    tcp: tuple[socket.socket, socket.socket], transport: str, case: str
) -> None:
    server_protos, client_protos, expected = ALPN_CASES[case]
    ours, theirs = tcp
    conn = server_context(alpn=server_protos).connection(ours, transport=transport)
    peer = PeerThread(stdlib_client(theirs, stdlib_client_context(alpn=client_protos), b"alpn"))
    peer.start()
    serve_echo(conn, ours)
    info = peer.result()
    assert "error" not in info, info.get("error")
    assert conn.alpn_protocol == info["alpn"] == expected


@transports
@alpn_cases
def test_alpn_wsstls_client(
    tcp: tuple[socket.socket, socket.socket], transport: str, case: str
) -> None:
    server_protos, client_protos, expected = ALPN_CASES[case]
    ours, theirs = tcp
    conn = client_context(alpn=client_protos).connection(
        ours, transport=transport, server_hostname=HOST
    )
    peer = PeerThread(stdlib_server(theirs, stdlib_server_context(alpn=server_protos), 4))
    peer.start()
    run_client(conn, ours, b"alpn")
    info = peer.result()
    assert "error" not in info, info.get("error")
    assert conn.alpn_protocol == info["alpn"] == expected


# ====================================================== SNI and hostname


@transports
@pytest.mark.parametrize(("hostname", "sni"), [(HOST, HOST), ("127.0.0.1", None)])
def test_sni_and_hostname_check_pass(
    tcp: tuple[socket.socket, socket.socket], transport: str, hostname: str, sni: str | None
) -> None:
    """The name goes out as SNI (an IP address does not) and matches the certificate."""
    ours, theirs = tcp
    conn = client_context().connection(ours, transport=transport, server_hostname=hostname)
    peer = PeerThread(stdlib_server(theirs, stdlib_server_context(), 3))
    peer.start()
    client = run_client(conn, ours, b"sni")
    info = peer.result()
    assert "error" not in info, info.get("error")
    assert info["sni"] == [sni]
    assert bytes(client.received) == b"ins"


@transports
@pytest.mark.parametrize(
    ("hostname", "reason"),
    [("wrong.example", "hostname mismatch"), ("127.0.0.2", "IP address mismatch")],
)
def test_hostname_check_fails_wsstls_client(
    tcp: tuple[socket.socket, socket.socket], transport: str, hostname: str, reason: str
) -> None:
    ours, theirs = tcp
    conn = client_context().connection(ours, transport=transport, server_hostname=hostname)
    peer = PeerThread(stdlib_server(theirs, stdlib_server_context(), 3))
    peer.start()
    exc = first_error(conn, ours)
    assert "certificate verify failed" in str(exc) and reason in str(exc)
    info = peer.result()
    assert "bad certificate" in str(info["error"]).lower() or "BAD_CERTIFICATE" in str(
        info["error"]
    )


@transports
def test_hostname_check_fails_stdlib_client(
    tcp: tuple[socket.socket, socket.socket], transport: str
) -> None:
    ours, theirs = tcp
    conn = server_context().connection(ours, transport=transport)
    peer = PeerThread(stdlib_client(theirs, stdlib_client_context(), b"x", "wrong.example"))
    peer.start()
    exc = first_error(conn, ours)
    assert "bad certificate" in str(exc)
    info = peer.result()
    assert isinstance(info["error"], ssl.SSLCertVerificationError)
    assert "Hostname mismatch" in str(info["error"])


# ==================================================== client certificates


@transports
@versions
def test_client_certificate_accepted_by_wsstls_server(
    tcp: tuple[socket.socket, socket.socket], transport: str, version: str
) -> None:
    ours, theirs = tcp
    ctx = server_context(verify=True, cadata=pki().ca_pem, **pinned(version))
    conn = ctx.connection(ours, transport=transport)
    peer = PeerThread(stdlib_client(theirs, stdlib_client_context(cert=True), PAYLOAD[:5000]))
    peer.start()
    serve_echo(conn, ours)
    info = peer.result()
    assert "error" not in info, info.get("error")
    assert info["echo"] == PAYLOAD[:5000]
    assert conn.peer_certificate == pki().der(pki().client)
    assert conn.version == version


@transports
@versions
@pytest.mark.parametrize(
    ("cert_from", "reason"),
    [(None, "peer did not return a certificate"), ("other-ca", "certificate verify failed")],
)
def test_client_certificate_refused_by_wsstls_server(
    tcp: tuple[socket.socket, socket.socket],
    transport: str,
    version: str,
    cert_from: str | None,
    reason: str,
) -> None:
    ours, theirs = tcp
    ctx = server_context(verify=True, cadata=pki().ca_pem, **pinned(version))
    conn = ctx.connection(ours, transport=transport)
    std = stdlib_client_context()
    if cert_from == "other-ca":
        other_pki().client.configure_cert(std)
    peer = PeerThread(stdlib_client(theirs, std, b"refused"))
    peer.start()
    exc = first_error(conn, ours)
    assert reason in str(exc)
    assert conn.peer_certificate is None or cert_from is not None
    info = peer.result()
    assert "echo" not in info or info["echo"] != b"refused"
    assert isinstance(info.get("error"), ssl.SSLError | OSError)


@transports
@versions
def test_client_certificate_accepted_by_stdlib_server(
    tcp: tuple[socket.socket, socket.socket], transport: str, version: str
) -> None:
    ours, theirs = tcp
    ctx = client_context(cert=True, **pinned(version))
    conn = ctx.connection(ours, transport=transport, server_hostname=HOST)
    peer = PeerThread(stdlib_server(theirs, stdlib_server_context(verify_client=True), 6))
    peer.start()
    client = run_client(conn, ours, b"mutual")
    info = peer.result()
    assert "error" not in info, info.get("error")
    assert info["peer_der"] == pki().der(pki().client)
    assert bytes(client.received) == b"lautum"


@transports
@versions
def test_client_certificate_missing_refused_by_stdlib_server(
    tcp: tuple[socket.socket, socket.socket], transport: str, version: str
) -> None:
    ours, theirs = tcp
    conn = client_context(**pinned(version)).connection(
        ours, transport=transport, server_hostname=HOST
    )
    peer = PeerThread(stdlib_server(theirs, stdlib_server_context(verify_client=True), 6))
    peer.start()
    exc = first_error(conn, ours)
    # TLS 1.2: the handshake fails; TLS 1.3: the client finished first and
    # learns it at its first read.
    assert "alert" in str(exc) and ("certificate required" in str(exc) or "handshake" in str(exc))
    info = peer.result()
    assert "peer did not return a certificate" in str(info["error"]).lower() or (
        "PEER_DID_NOT_RETURN_A_CERTIFICATE" in str(info["error"])
    )


# ====================================================== openssl s_client


@pytest.fixture(scope="module")
def ca_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("pki") / "ca.pem"
    path.write_bytes(pki().ca_pem)
    return path


@contextlib.contextmanager
def s_client(args: list[str]) -> Iterator[subprocess.Popen[bytes]]:
    """An openssl s_client process, stopped by its PID however the test ends."""
    proc = subprocess.Popen(
        ["openssl", "s_client", *args],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    try:
        yield proc
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.wait(timeout=WAIT_S)
        for pipe in (proc.stdin, proc.stdout, proc.stderr):
            if pipe is not None:
                pipe.close()


@pytest.mark.slow
@transports
@pytest.mark.parametrize(("flag", "version"), [("-tls1_2", "TLSv1.2"), ("-tls1_3", "TLSv1.3")])
def test_openssl_s_client(ca_file: Path, transport: str, flag: str, version: str) -> None:
    payload = b"".join(b"line %05d of the s_client echo test\n" % i for i in range(600))
    with socket.create_server(("127.0.0.1", 0)) as listener:
        port = listener.getsockname()[1]
        args = ["-connect", f"127.0.0.1:{port}", flag, "-brief", "-CAfile", str(ca_file)]
        args += ["-verify_return_error", "-verify_hostname", HOST, "-servername", HOST]
        with s_client(args) as proc:
            assert proc.stdin is not None and proc.stdout is not None
            out_fd = proc.stdout.fileno()
            os.set_blocking(out_fd, False)
            listener.settimeout(WAIT_S)
            sock, _ = listener.accept()
            try:
                sock.setblocking(False)
                conn = server_context().connection(sock, transport=transport)
                handshake([conn], [sock], "handshake with s_client")
                # s_client sends what it reads from stdin; we echo it to its stdout.
                proc.stdin.write(payload)
                proc.stdin.flush()
                server = Peer(conn, sock)
                echoed = 0
                out = bytearray()
                for _ in bounded("echo through s_client", 100_000):
                    server.step()
                    if len(server.received) > echoed:
                        server.queue(bytes(server.received[echoed:]))
                        echoed = len(server.received)
                    if len(out) >= len(payload):
                        break
                    r, _, _ = select.select([sock, out_fd], [], [], 0.05)
                    if out_fd in r:
                        chunk = os.read(out_fd, 65536)
                        assert chunk, "s_client exited before the echo was complete"
                        out += chunk
                assert bytes(out) == payload
                assert conn.version == version
                assert conn.shutdown() is False  # ours sent, theirs not yet received
                drive([server], lambda: server.peer_closed, "s_client's close_notify")
                assert proc.wait(timeout=WAIT_S) == 0
                assert proc.stderr is not None
                text = proc.stderr.read().decode(errors="replace")
            finally:
                sock.close()
    assert f"Protocol version: {version}" in text
    assert f"Ciphersuite: {conn.cipher}" in text
    assert "Verification: OK" in text
