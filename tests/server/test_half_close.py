"""A client that sends its messages and then half-closes (TCP FIN, no TLS close_notify, no
WebSocket close) gets every echo before the server closes: every complete message
received and authenticated before the end of the stream is echoed (issue 13).

The client is the stdlib's ``ssl.SSLObject`` over memory BIOs on a plain socket, so that
the TCP stream can end without a close_notify while the client still reads TLS.  Each
design and transport is tried with many small messages (the C fast path) and a few
large ones (the Python framer, and output the kernel refuses for a while).
"""

from __future__ import annotations

import select
import socket
import ssl

import pytest
import serverutil
from serverutil import RunningServer, WsClient

from wsstls.ws import FrameParser, Message, Side, encode_frame

any_server = serverutil.any_server
server_certs = serverutil.server_certs

READ_S = 30.0 if serverutil.SANITIZED else 20.0  # a safety net, not a timing assertion


class HalfClosingClient:
    """WebSocket over TLS (or not) on a plain socket whose writing side it can shut down
    without TLS close_notify."""

    def __init__(self, server: RunningServer) -> None:
        self.sock = socket.create_connection((server.host, server.port), timeout=READ_S)
        self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.tls: ssl.SSLObject | None = None
        self.alert: ssl.SSLError | None = None
        self.incoming, self.outgoing = ssl.MemoryBIO(), ssl.MemoryBIO()
        if server.tls:
            ctx = serverutil.client_ssl_context()
            self.tls = ctx.wrap_bio(self.incoming, self.outgoing, server_hostname="localhost")
            for _ in range(100):
                try:
                    self.tls.do_handshake()
                    break
                except ssl.SSLWantReadError:
                    self._flush()
                    self._receive()
            self._flush()
        self.send(WsClient.REQUEST)
        self.plain = bytearray()
        while b"\r\n\r\n" not in self.plain:
            assert self._receive(), "the server closed during the upgrade"
        head, _, rest = bytes(self.plain).partition(b"\r\n\r\n")
        assert head.startswith(b"HTTP/1.1 101 "), head[:100]
        self.plain = bytearray(rest)

    def _flush(self) -> None:
        data = self.outgoing.read()
        if data:
            self.sock.sendall(data)

    def _receive(self) -> bool:
        """Read the socket once: False at the end of the stream (plaintext kept in ``plain``)."""
        data = self.sock.recv(65536)
        if self.tls is None:
            self.plain += data
            return bool(data)
        if data:
            self.incoming.write(data)
        else:
            self.incoming.write_eof()
        try:
            while True:
                chunk = self.tls.read(65536)
                if not chunk:
                    return False
                if hasattr(self, "plain"):
                    self.plain += chunk
        except ssl.SSLWantReadError:
            return bool(data)
        except (ssl.SSLZeroReturnError, ssl.SSLEOFError):
            return False
        except ssl.SSLError as exc:  # an alert from the server
            self.alert = exc
            return False

    def send(self, data: bytes) -> None:
        if self.tls is None:
            self.sock.sendall(data)
            return
        self.tls.write(data)
        self._flush()

    def send_then_half_close(self, data: bytes) -> bytes:
        """Send ``data``, then TCP FIN (no close_notify, no close frame), reading all the
        while (one thread: whatever the size, neither side waits on the other for
        long); return everything the server sent until it closed."""
        if self.tls is None:
            pending = memoryview(data)
        else:
            self.tls.write(data)
            pending = memoryview(self.outgoing.read())
        self.sock.setblocking(False)
        for _ in range(1_000_000):
            want_write = [self.sock] if pending else []
            readable, writable, _ = select.select([self.sock], want_write, [], READ_S)
            assert readable or writable, f"nothing moved in {READ_S} s"
            if writable:
                sent = self.sock.send(pending[:65536])
                pending = pending[sent:]
                if not pending:
                    self.sock.shutdown(socket.SHUT_WR)
            if readable and not self._receive_nonblocking():
                break
        self.sock.setblocking(True)
        assert not pending, "the server closed before it had all the messages"
        return bytes(self.plain)

    def _receive_nonblocking(self) -> bool:
        try:
            return self._receive()
        except BlockingIOError:
            return True
        except ConnectionResetError:
            return False

    def close(self) -> None:
        self.sock.close()


def echoes(data: bytes) -> list[bytes]:
    """The server's messages in ``data`` (what follows the last whole frame is ignored)."""
    parser = FrameParser(Side.CLIENT, max_size=1 << 30, in_place_limit=1 << 30)
    parser.receive_data(bytearray(data))
    return [bytes(e.data) for e in parser.events if isinstance(e, Message)]


@pytest.mark.parametrize(
    ("count", "size"),
    [(200, 64), (4, 300_000), (2, 5 << 20)],
    ids=["200x64B", "4x300KB", "2x5MiB"],
)
def test_every_message_before_a_bare_fin_is_echoed(
    any_server: RunningServer, count: int, size: int
) -> None:
    """Small messages go through the C fast path, 300 KB ones through the framer; a
    5 MiB echo is larger than the kernel takes at once (tcp_wmem), so it is still
    queued when the server reads the end of the stream that came right behind it."""
    messages = [bytes([i % 251]) * size for i in range(count)]
    key = b"\x01\x02\x03\x04"
    client = HalfClosingClient(any_server)
    try:
        wire = b"".join(bytes(encode_frame(2, m, mask_key=key)) for m in messages)
        got = echoes(client.send_then_half_close(wire))
    finally:
        client.close()
    assert len(got) == count, f"{len(got)} of {count} echoes"
    assert got == messages
    assert client.alert is None  # a bare end of the stream is no protocol error
