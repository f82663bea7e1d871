"""The stdlib baseline: a minimal RFC 6455 echo server on a plain ``asyncio.Protocol``, TLS by
the loop's ``ssl`` support (``ssl.SSLObject`` over ``ssl.MemoryBIO``), no third-party code.

It does the opening handshake (GET, Upgrade, Connection, Sec-WebSocket-Key/-Version 13; no
extensions, no subprotocols), reads masked client frames, reassembles fragmented messages,
checks that text is UTF-8, and sends each message back whole, with the same opcode, in one
unmasked frame.  Pings get pongs, close frames are echoed (code and reason) and protocol
errors close the connection with 1002 / 1007 / 1009 as RFC 6455 section 7.4.1 says.
Flow control: while the transport's write buffer is above its high-water mark the server
stops reading.  Default loop: asyncio's own (the stdlib path); ``--loop uvloop`` swaps the
loop and its TLS transport (uvloop's sslproto, still ``ssl.MemoryBIO``).
Self-contained on purpose, like the other peers: a baseline runs its own code, so its
GUID, handshake and framer are not wsstls's (wsstls's live in csrc/core/ and ws.py).

    python wsstls/measure/peers/asyncio_echo.py --host 127.0.0.1 --port 0 [--tls --cert F --key F]
        [--loop asyncio|uvloop] [--cpu N] [--max-size BYTES]
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import binascii
import codecs
import hashlib
import ssl
import struct

import common  # sibling module: the script's directory is sys.path[0]

GUID = b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11"
OP_CONT, OP_TEXT, OP_BINARY, OP_CLOSE, OP_PING, OP_PONG = 0x0, 0x1, 0x2, 0x8, 0x9, 0xA
MAX_REQUEST_LINE = 8 * 1024
MAX_REQUEST_HEAD = 16 * 1024
MAX_HEADER_FIELDS = 100
_U16 = struct.Struct("!BBH")
_U64 = struct.Struct("!BBQ")


class ProtocolError(Exception):
    """Fail the WebSocket connection with this close code."""

    def __init__(self, code: int) -> None:
        super().__init__(code)
        self.code = code


def unmask(data: memoryview, mask: bytes) -> bytes:
    """RFC 6455 5.3: XOR with the 4-byte key, as one big-integer operation."""
    n = len(data)
    if n == 0:
        return b""
    key = (mask * (n // 4 + 1))[:n]
    return (int.from_bytes(data, "little") ^ int.from_bytes(key, "little")).to_bytes(n, "little")


def frame(opcode: int, payload: bytes) -> bytes:
    """One final, unmasked server frame."""
    n = len(payload)
    b0 = 0x80 | opcode
    if n < 126:
        return bytes((b0, n)) + payload
    if n < 65536:
        return _U16.pack(b0, 126, n) + payload
    return _U64.pack(b0, 127, n) + payload


def valid_close_code(code: int) -> bool:
    """Codes a peer may send (RFC 6455 7.4, IANA registry): not 1004-1006, 1015, <1000."""
    return (1000 <= code <= 1014 and code not in (1004, 1005, 1006)) or 3000 <= code <= 4999


def accept_key(key: str) -> bytes:
    return base64.b64encode(hashlib.sha1(key.encode("ascii") + GUID).digest())


def _tokens(value: str) -> set[str]:
    return {t.strip().lower() for t in value.split(",")}


class EchoProtocol(asyncio.Protocol):
    def __init__(self, live: set[EchoProtocol], max_size: int) -> None:
        self.live = live
        self.max_size = max_size
        self.transport: asyncio.Transport | None = None
        self.buf = bytearray()
        self.upgraded = False
        self.close_sent = False
        self.frag_opcode = -1  # opcode of the fragmented message being received, or -1
        self.frags: list[bytes] = []
        self.frag_size = 0
        self.frag_utf8: codecs.IncrementalDecoder | None = None  # checks text fragments
        self.done = asyncio.get_running_loop().create_future()

    # -- asyncio callbacks ---------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]  # a stream transport
        self.live.add(self)

    def connection_lost(self, exc: Exception | None) -> None:
        self.live.discard(self)
        self.transport = None
        if not self.done.done():
            self.done.set_result(None)

    def pause_writing(self) -> None:
        if self.transport is not None:
            self.transport.pause_reading()

    def resume_writing(self) -> None:
        if self.transport is not None:
            self.transport.resume_reading()

    def data_received(self, data: bytes) -> None:
        if self.transport is None or self.transport.is_closing():
            return
        self.buf += data
        if not self.upgraded and not self.handshake():
            return
        try:
            self.read_frames()
        except ProtocolError as e:
            self.fail(e.code)

    # -- opening handshake ---------------------------------------------------------------

    def handshake(self) -> bool:
        assert self.transport is not None
        end = self.buf.find(b"\r\n\r\n")
        line_end = self.buf.find(b"\r\n", 0, MAX_REQUEST_LINE + 2)
        if line_end < 0 and len(self.buf) > MAX_REQUEST_LINE:
            self.http_error("414 URI Too Long")
            return False
        if end > MAX_REQUEST_HEAD or (end < 0 and len(self.buf) > MAX_REQUEST_HEAD):
            self.http_error("431 Request Header Fields Too Large")
            return False
        if end < 0:
            return False
        head = self.buf[:end].decode("latin-1")
        del self.buf[: end + 4]
        request_line, *lines = head.split("\r\n")
        if len(lines) > MAX_HEADER_FIELDS:
            self.http_error("431 Request Header Fields Too Large")
            return False
        method, _, rest = request_line.partition(" ")
        _, _, version = rest.rpartition(" ")
        if method != "GET" or version != "HTTP/1.1":
            self.http_error("400 Bad Request")
            return False
        headers: dict[str, str] = {}
        for line in lines:
            name, sep, value = line.partition(":")
            if not sep:
                self.http_error("400 Bad Request")
                return False
            name = name.strip().lower()
            value = value.strip()
            headers[name] = f"{headers[name]}, {value}" if name in headers else value
        if (
            "host" not in headers
            or "websocket" not in _tokens(headers.get("upgrade", ""))
            or "upgrade" not in _tokens(headers.get("connection", ""))
        ):
            self.http_error("400 Bad Request")
            return False
        if headers.get("sec-websocket-version") != "13":
            self.http_error("426 Upgrade Required", "Sec-WebSocket-Version: 13\r\n")
            return False
        key = headers.get("sec-websocket-key", "")
        try:
            ok = len(base64.b64decode(key, validate=True)) == 16
        except (binascii.Error, ValueError):
            ok = False
        if not ok:
            self.http_error("400 Bad Request")
            return False
        self.transport.write(
            b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
            b"Sec-WebSocket-Accept: " + accept_key(key) + b"\r\n\r\n"
        )
        self.upgraded = True
        return True

    def http_error(self, status: str, extra: str = "") -> None:
        assert self.transport is not None
        self.transport.write(
            f"HTTP/1.1 {status}\r\n{extra}Content-Length: 0\r\nConnection: close\r\n\r\n".encode()
        )
        self.transport.close()

    # -- frames --------------------------------------------------------------------------

    def read_frames(self) -> None:
        buf = self.buf
        end = len(buf)
        pos = 0
        with memoryview(buf) as view:
            while end - pos >= 2:
                b0 = buf[pos]
                b1 = buf[pos + 1]
                opcode = b0 & 0x0F
                fin = b0 & 0x80
                if b0 & 0x70 or not b1 & 0x80:  # RSV bits without an extension; unmasked
                    raise ProtocolError(1002)
                length = b1 & 0x7F
                if opcode >= 0x8:
                    if opcode > OP_PONG or not fin or length > 125:
                        raise ProtocolError(1002)
                elif opcode > OP_BINARY:
                    raise ProtocolError(1002)
                header = 6
                if length == 126:
                    header = 8
                    if end - pos < header:
                        break
                    length = int.from_bytes(view[pos + 2 : pos + 4], "big")
                elif length == 127:
                    header = 14
                    if end - pos < header:
                        break
                    length = int.from_bytes(view[pos + 2 : pos + 10], "big")
                    if length >> 63:
                        raise ProtocolError(1002)
                if length > self.max_size or (
                    opcode == OP_CONT and self.frag_size + length > self.max_size
                ):
                    raise ProtocolError(1009)
                if end - pos < header + length:
                    break
                start = pos + header
                pos = start + length
                payload = unmask(view[start:pos], bytes(view[start - 4 : start]))
                self.on_frame(opcode, fin, payload)
                if self.transport is None or self.transport.is_closing():
                    break
        del buf[:pos]

    def on_frame(self, opcode: int, fin: int, payload: bytes) -> None:
        if opcode == OP_TEXT or opcode == OP_BINARY:
            if self.frag_opcode >= 0:
                raise ProtocolError(1002)  # a new message inside a fragmented one
            if fin:
                self.on_message(opcode, payload)
            else:
                self.frag_opcode = opcode
                self.frags = [payload]
                self.frag_size = len(payload)
                if opcode == OP_TEXT:  # check text as it arrives: fail before the rest comes
                    self.frag_utf8 = codecs.getincrementaldecoder("utf-8")()
                    self.check_utf8(payload, False)
        elif opcode == OP_CONT:
            if self.frag_opcode < 0:
                raise ProtocolError(1002)  # continuation with nothing to continue
            self.frags.append(payload)
            self.frag_size += len(payload)
            if self.frag_utf8 is not None:
                self.check_utf8(payload, bool(fin))
            if fin:
                opcode, message = self.frag_opcode, b"".join(self.frags)
                self.frag_opcode, self.frags, self.frag_size = -1, [], 0
                self.frag_utf8 = None
                self.send(frame(opcode, message))
        elif opcode == OP_PING:
            self.send(frame(OP_PONG, payload))
        elif opcode == OP_CLOSE:
            self.on_close(payload)
        # OP_PONG: unsolicited or not, nothing to do

    def check_utf8(self, fragment: bytes, final: bool) -> None:
        assert self.frag_utf8 is not None
        try:
            self.frag_utf8.decode(fragment, final)
        except UnicodeDecodeError:
            raise ProtocolError(1007) from None

    def on_message(self, opcode: int, message: bytes) -> None:
        if opcode == OP_TEXT:
            try:
                message.decode("utf-8")
            except UnicodeDecodeError:
                raise ProtocolError(1007) from None
        self.send(frame(opcode, message))

    def on_close(self, payload: bytes) -> None:
        assert self.transport is not None
        if len(payload) == 1:
            raise ProtocolError(1002)
        if payload:
            if not valid_close_code(int.from_bytes(payload[:2], "big")):
                raise ProtocolError(1002)
            try:
                payload[2:].decode("utf-8")
            except UnicodeDecodeError:
                raise ProtocolError(1007) from None
        # Echo the code and reason (RFC 6455 5.5.1); if we sent ours first this is the reply.
        self.send(frame(OP_CLOSE, payload))
        self.close_sent = True
        self.transport.close()  # the server closes TCP first (7.1.1); buffered data goes out

    def send(self, data: bytes) -> None:
        if not self.close_sent and self.transport is not None:
            self.transport.write(data)

    def fail(self, code: int) -> None:
        """_Fail the WebSocket Connection_ (7.1.7): close frame if still possible, then TCP."""
        if self.transport is None:
            return
        self.send(frame(OP_CLOSE, code.to_bytes(2, "big")))
        self.close_sent = True
        self.buf.clear()
        self.transport.close()

    def start_close(self, code: int) -> None:
        """Server-initiated close: send our close frame; the client's reply ends it."""
        if self.transport is None:
            return
        if not self.upgraded:
            self.transport.close()
            return
        self.send(frame(OP_CLOSE, code.to_bytes(2, "big") + b"server shutdown"))
        self.close_sent = True


async def start(args: argparse.Namespace, ssl_context: ssl.SSLContext | None) -> common.Running:
    loop = asyncio.get_running_loop()
    live: set[EchoProtocol] = set()
    server = await loop.create_server(
        lambda: EchoProtocol(live, args.max_size), args.host, args.port, ssl=ssl_context
    )

    async def close() -> None:
        server.close()
        conns = list(live)
        for c in conns:
            c.start_close(1001)
        if conns:
            await asyncio.wait([c.done for c in conns], timeout=common.CLOSE_GRACE)
        for c in conns:
            if c.transport is not None:
                c.transport.abort()
        # Connections still in the TLS handshake have no protocol yet (Python 3.13+ can abort
        # them; from 3.12 on wait_closed() waits for them).
        abort_clients = getattr(server, "abort_clients", None)
        if abort_clients is not None:
            abort_clients()
        await server.wait_closed()

    common.info("asyncio_echo", args, "stdlib asyncio.Protocol + ssl")
    return common.Running(server.sockets[0].getsockname()[1], close)


def main() -> int:
    return common.run(
        common.parse_args("stdlib asyncio WebSocket echo server", default_loop="asyncio"), start
    )


if __name__ == "__main__":
    raise SystemExit(main())
