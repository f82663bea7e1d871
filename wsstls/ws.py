"""RFC 6455 WebSocket, sans-IO: opening handshake, frame parser and encoder, connections.

Nothing here does I/O.  Bytes go in through ``receive_data`` and come out of
``data_to_send``; the caller owns sockets, TLS and buffers.

The frame parser is built for the copy budget of this package: it runs on a
*writable* view of received plaintext (a ring view), reads headers straight
from the view, unmasks payloads in place (one C call per frame, which also
validates UTF-8 for text) and hands a single-frame message to the application
as a slice of that view, so an echoed message is copied only when it is
written out.  Bytes of an incomplete frame are left unconsumed, to be seen
again at the start of the next view, except for frames larger than
``in_place_limit`` (the ring's capacity), whose payload is moved into an
assembly buffer as it arrives.  Fragmented messages are assembled by copying.

Typical server loop (``ring`` holds received plaintext)::

    conn = ServerConnection(in_place_limit=ring.capacity)
    views = ring.readable_views()
    n = conn.receive_data(views[0], consume_all=len(views) > 1)
    for event in conn.events():          # before consuming: messages may be views
        if isinstance(event, Message):
            conn.send_message(event.opcode, event.data)
    ring.consume(n)
    write(conn.data_to_send())           # then close the transport once
                                         # conn.state is CLOSED and this is empty
"""

from __future__ import annotations

import base64
import binascii
import enum
import os
import re
import struct
from collections import deque
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from typing import Any, TypeAlias

from ._cdata import Buffer, ffi, lib

__all__ = [
    "DEFAULT_IN_PLACE_LIMIT",
    "DEFAULT_MAX_SIZE",
    "MAX_HEADERS",
    "MAX_HEAD_SIZE",
    "MAX_LINE",
    "ClientConnection",
    "ClientHandshake",
    "Close",
    "CloseCode",
    "Connection",
    "Event",
    "Frame",
    "FrameParser",
    "HandshakeError",
    "HandshakeRequest",
    "HandshakeResponse",
    "Message",
    "Opcode",
    "Ping",
    "Pong",
    "ProtocolError",
    "ServerConnection",
    "ServerHandshake",
    "Side",
    "State",
    "accept_key",
    "encode_close",
    "encode_frame",
    "encode_header",
    "is_valid_close_code",
    "parse_close",
]


#: Largest message (sum of its frames' payloads) accepted by default: 16 MiB.
DEFAULT_MAX_SIZE = 16 * 1024 * 1024
#: Frames up to this size (header + payload) are parsed in place by default.
DEFAULT_IN_PLACE_LIMIT = 64 * 1024
#: Handshake limits: longest start line, largest head (start line + headers), most headers.
MAX_LINE = 8192
MAX_HEAD_SIZE = 16384
MAX_HEADERS = 128


# --------------------------------------------------------------------------- constants


class Opcode(enum.IntEnum):
    """Frame opcodes (RFC 6455 section 5.2); 3-7 and 11-15 are reserved."""

    CONT = 0x0
    TEXT = 0x1
    BINARY = 0x2
    CLOSE = 0x8
    PING = 0x9
    PONG = 0xA


class CloseCode(enum.IntEnum):
    """Close status codes (RFC 6455 section 7.4 and the IANA registry)."""

    NORMAL_CLOSURE = 1000
    GOING_AWAY = 1001
    PROTOCOL_ERROR = 1002
    UNSUPPORTED_DATA = 1003
    NO_STATUS_RCVD = 1005  # never sent: stands for a close frame without a payload
    ABNORMAL_CLOSURE = 1006  # never sent: the connection dropped without a close frame
    INVALID_DATA = 1007
    POLICY_VIOLATION = 1008
    MESSAGE_TOO_BIG = 1009
    MANDATORY_EXTENSION = 1010
    INTERNAL_ERROR = 1011
    SERVICE_RESTART = 1012
    TRY_AGAIN_LATER = 1013
    BAD_GATEWAY = 1014
    TLS_HANDSHAKE = 1015  # never sent


class Side(enum.Enum):
    """Which end of the connection this object plays."""

    SERVER = "server"
    CLIENT = "client"


class State(enum.IntEnum):
    """Connection states (RFC 6455 section 4 and 7)."""

    CONNECTING = 0
    OPEN = 1
    CLOSING = 2  # we sent a close frame and wait for the peer's
    CLOSED = 3  # close handshake done or connection failed: flush, then close the transport


_OPEN = State.OPEN


def is_valid_close_code(code: int) -> bool:
    """True for codes an endpoint may send: 1000-1003, 1007-1014 and 3000-4999."""
    return 1000 <= code <= 1003 or 1007 <= code <= 1014 or 3000 <= code <= 4999


# --------------------------------------------------------------------------- errors


class ProtocolError(Exception):
    """The peer broke RFC 6455; the connection fails with close code ``code``."""

    def __init__(self, code: int, reason: str) -> None:
        super().__init__(code, reason)
        self.code = code
        self.reason = reason

    def __str__(self) -> str:
        return f"{self.code} {self.reason}"


_STATUS_PHRASES = {
    400: "Bad Request",
    414: "URI Too Long",
    426: "Upgrade Required",
    431: "Request Header Fields Too Large",
}


class HandshakeError(Exception):
    """The opening handshake failed.

    Server side: ``status`` is the HTTP status to answer with and ``response``
    the complete HTTP response to send before closing.  Client side:
    ``status`` is the server's status code (0 if no valid status line was
    read) and ``response`` is empty.
    """

    def __init__(
        self,
        status: int,
        reason: str,
        *,
        headers: Iterable[tuple[str, str]] = (),
        response: bytes | None = None,
    ) -> None:
        super().__init__(status, reason)
        self.status = status
        self.reason = reason
        self.response = _error_response(status, reason, headers) if response is None else response

    def __str__(self) -> str:
        return f"{self.status} {self.reason}"


def _error_response(status: int, reason: str, headers: Iterable[tuple[str, str]]) -> bytes:
    body = f"Failed to open a WebSocket connection: {reason}.\n".encode()
    lines = [f"HTTP/1.1 {status} {_STATUS_PHRASES.get(status, 'Error')}"]
    lines += [f"{name}: {value}" for name, value in headers]
    lines += [
        "Content-Type: text/plain; charset=utf-8",
        f"Content-Length: {len(body)}",
        "Connection: close" if status != 426 else "Connection: Upgrade, close",
    ]
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1") + body


# --------------------------------------------------------------------------- handshake


def accept_key(key: str | bytes) -> str:
    """The Sec-WebSocket-Accept value for a Sec-WebSocket-Key (RFC 6455 section 4.2.2).

    Computed by csrc/core/wshandshake.c, the one home of the GUID, which the load
    generator uses too.  Raises UnicodeEncodeError for a non-ASCII str key.
    """
    raw = key.encode("ascii") if isinstance(key, str) else bytes(key)
    out = ffi.new("char[]", lib.WS_ACCEPT_SIZE + 1)
    if not lib.ws_accept_key(raw, len(raw), out):
        raise RuntimeError("SHA-1 failed (OpenSSL)")
    return str(ffi.string(out).decode("ascii"))


_TOKEN = re.compile(rb"[!#$%&'*+\-.^_`|~0-9A-Za-z]+")
_BAD_VALUE = re.compile(rb"[\x00-\x08\x0a-\x1f\x7f]")
_TARGET = re.compile(rb"[\x21-\x7e]+")
_STATUS_LINE = re.compile(rb"HTTP/1\.1 ([0-9]{3}) ([\t \x21-\x7e\x80-\xff]*)")


class _Malformed(Exception):
    """Raised by the head reader; each side turns it into its HandshakeError."""

    def __init__(self, status: int, reason: str) -> None:
        super().__init__(reason)
        self.status = status
        self.reason = reason


class _HeadReader:
    """Accumulates an HTTP/1.1 head (start line and header fields) up to its blank line.

    Copies what it is fed (the handshake is not a hot path) and never takes
    bytes past the head's end.
    """

    __slots__ = ("_buf", "_line_seen", "head", "max_headers", "max_line", "max_size")

    def __init__(self, max_line: int, max_size: int, max_headers: int) -> None:
        self._buf = bytearray()
        self._line_seen = False  # the start line's CRLF has arrived
        self.head: bytes | None = None
        self.max_line = max_line
        self.max_size = max_size
        self.max_headers = max_headers

    def feed(self, data: Buffer) -> int:
        """Take bytes up to the end of the head; return how many were taken."""
        buf = self._buf
        before = len(buf)
        # Only what fits under the limit (plus the 4-byte terminator) is
        # looked at, so a flood costs at most max_size of copying.
        room = self.max_size + 4 - before
        chunk = memoryview(data)[:room]
        buf += chunk
        if not self._line_seen:
            # Searched from just before the new bytes, so feeding one byte at
            # a time stays linear.
            if buf.find(b"\r\n", max(0, before - 1), self.max_line + 2) >= 0:
                self._line_seen = True
            elif len(buf) > self.max_line + 1:
                raise _Malformed(414, "request line too long")
        end = buf.find(b"\r\n\r\n", max(0, before - 3))
        if end < 0:
            if len(buf) > self.max_size:
                raise _Malformed(431, "request header too large")
            return len(chunk)
        used = end + 4 - before
        del buf[end + 4 :]
        self.head = bytes(buf)
        return used

    def parse(self) -> tuple[bytes, list[tuple[str, str]]]:
        """Split the head into its start line and (name, value) fields; names keep their case."""
        assert self.head is not None
        lines = self.head[:-4].split(b"\r\n")
        start, fields = lines[0], lines[1:]
        if len(fields) > self.max_headers:
            raise _Malformed(431, "too many header fields")
        headers = []
        for line in fields:
            if len(line) > self.max_line:
                raise _Malformed(431, "header field too long")
            name, colon, value = line.partition(b":")
            if not colon or not _TOKEN.fullmatch(name):
                # Also catches obs-fold continuation lines (RFC 9112 5.2).
                raise _Malformed(400, "malformed header field")
            value = value.strip(b" \t")
            if _BAD_VALUE.search(value):
                raise _Malformed(400, "control character in a header value")
            headers.append((name.decode("ascii"), value.decode("latin-1")))
        return start, headers


def _values(headers: list[tuple[str, str]], name: str) -> list[str]:
    return [v for n, v in headers if n.lower() == name]


def _tokens(headers: list[tuple[str, str]], name: str) -> list[str]:
    """All comma-separated elements of every ``name`` field, lowercased (RFC 9110 5.6.1)."""
    return [t.strip().lower() for v in _values(headers, name) for t in v.split(",") if t.strip()]


def _single(headers: list[tuple[str, str]], name: str, what: str) -> str:
    values = _values(headers, name)
    if not values:
        raise _Malformed(400, f"missing {what} header")
    if len(values) > 1:
        raise _Malformed(400, f"more than one {what} header")
    return values[0]


@dataclass(frozen=True, slots=True)
class HandshakeRequest:
    """A validated WebSocket opening request."""

    target: str
    """The request target as sent (path and query)."""
    headers: list[tuple[str, str]]
    """All header fields, in order, names as sent."""
    key: str
    """Sec-WebSocket-Key."""

    @property
    def host(self) -> str:
        """The Host header."""
        return _values(self.headers, "host")[0]

    def get(self, name: str) -> str | None:
        """The first value of header ``name`` (case-insensitive), or None."""
        values = _values(self.headers, name.lower())
        return values[0] if values else None


@dataclass(frozen=True, slots=True)
class HandshakeResponse:
    """A validated 101 response (client side)."""

    status: int
    headers: list[tuple[str, str]]


class ServerHandshake:
    """Incremental server side of the opening handshake (RFC 6455 section 4.2).

    Feed received bytes to ``receive_data`` until ``request`` is set; then
    send ``response`` (the 101).  Bytes after the request's end are not
    consumed: they may already be frames.  permessage-deflate and other
    extensions are never accepted, nor subprotocols: the 101 carries neither.
    """

    __slots__ = ("_reader", "request", "response")

    def __init__(
        self,
        *,
        max_line: int = MAX_LINE,
        max_size: int = MAX_HEAD_SIZE,
        max_headers: int = MAX_HEADERS,
    ) -> None:
        self._reader = _HeadReader(max_line, max_size, max_headers)
        self.request: HandshakeRequest | None = None
        self.response = b""

    def receive_data(self, data: Buffer) -> int:
        """Consume request bytes; return how many were used (never past the request's end).

        Raises HandshakeError with the response to send: 400 for a malformed or
        non-WebSocket request, 426 (with ``Sec-WebSocket-Version: 13``) for
        another protocol version, 414/431 when a limit is exceeded.  Once the
        request is complete, further calls consume nothing.
        """
        if self.request is not None:
            return 0
        try:
            used = self._reader.feed(data)
            if self._reader.head is not None:
                self.request = self._validate(*self._reader.parse())
        except _Malformed as exc:
            headers = []
            if exc.status == 426:
                # RFC 9110 15.5.22 wants Upgrade in a 426; RFC 6455 4.4 the versions we speak.
                headers = [("Upgrade", "websocket"), ("Sec-WebSocket-Version", "13")]
            raise HandshakeError(exc.status, exc.reason, headers=headers) from None
        if self.request is not None:
            self.response = (
                "HTTP/1.1 101 Switching Protocols\r\n"
                "Upgrade: websocket\r\n"
                "Connection: Upgrade\r\n"
                f"Sec-WebSocket-Accept: {accept_key(self.request.key)}\r\n\r\n"
            ).encode("ascii")
        return used

    @staticmethod
    def _validate(start: bytes, headers: list[tuple[str, str]]) -> HandshakeRequest:
        parts = start.split(b" ")
        if len(parts) != 3:
            raise _Malformed(400, "malformed request line")
        method, target, version = parts
        if method != b"GET":
            raise _Malformed(400, "method must be GET")
        if version != b"HTTP/1.1":
            raise _Malformed(400, "HTTP version must be HTTP/1.1")
        if not _TARGET.fullmatch(target):
            raise _Malformed(400, "malformed request target")
        _single(headers, "host", "Host")
        if "websocket" not in [t.partition("/")[0].strip() for t in _tokens(headers, "upgrade")]:
            raise _Malformed(400, "missing 'Upgrade: websocket'")
        if "upgrade" not in _tokens(headers, "connection"):
            raise _Malformed(400, "missing 'Connection: upgrade'")
        versions = _values(headers, "sec-websocket-version")
        if not versions:
            raise _Malformed(400, "missing Sec-WebSocket-Version header")
        if [v.strip() for v in versions] != ["13"]:
            raise _Malformed(426, "unsupported WebSocket version (13 is)")
        key = _single(headers, "sec-websocket-key", "Sec-WebSocket-Key")
        try:
            raw = base64.b64decode(key.encode("latin-1"), validate=True)
        except (binascii.Error, ValueError):
            raw = b""
        if len(raw) != 16:
            raise _Malformed(400, "Sec-WebSocket-Key must be 16 bytes in base64")
        return HandshakeRequest(target.decode("ascii"), headers, key)


class ClientHandshake:
    """Client side of the opening handshake: the request and the response check.

    ``request`` holds the bytes to send (a fresh random key unless ``key`` is
    given); feed the server's bytes to ``receive_data`` until ``response`` is
    set.  No extension or subprotocol is requested, so a 101 that names one
    is rejected.
    """

    __slots__ = ("_reader", "key", "request", "response")

    def __init__(
        self,
        host: str,
        target: str = "/",
        *,
        origin: str | None = None,
        headers: Iterable[tuple[str, str]] = (),
        key: str | None = None,
    ) -> None:
        self.key = key if key is not None else base64.b64encode(os.urandom(16)).decode("ascii")
        lines = [
            f"GET {target} HTTP/1.1",
            f"Host: {host}",
            "Upgrade: websocket",
            "Connection: Upgrade",
            f"Sec-WebSocket-Key: {self.key}",
            "Sec-WebSocket-Version: 13",
        ]
        if origin is not None:
            lines.append(f"Origin: {origin}")
        lines += [f"{name}: {value}" for name, value in headers]
        self.request = ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")
        self._reader = _HeadReader(MAX_LINE, MAX_HEAD_SIZE, MAX_HEADERS)
        self.response: HandshakeResponse | None = None

    def receive_data(self, data: Buffer) -> int:
        """Consume response bytes; return how many were used (never past the response's end).

        Raises HandshakeError when the response is not a valid 101 for our
        request: its ``status`` is the server's status code, or 0 when the
        status line itself was unusable.
        """
        if self.response is not None:
            return 0
        try:
            used = self._reader.feed(data)
            if self._reader.head is None:
                return used
            start, headers = self._reader.parse()
        except _Malformed as exc:
            raise HandshakeError(0, f"malformed response: {exc.reason}", response=b"") from None
        match = _STATUS_LINE.fullmatch(start)
        if match is None:
            raise HandshakeError(0, "malformed status line", response=b"")
        status = int(match.group(1))

        def fail(reason: str) -> HandshakeError:
            return HandshakeError(status, reason, response=b"")

        if status != 101:
            raise fail(f"server answered {status}, not 101")
        if "websocket" not in _tokens(headers, "upgrade"):
            raise fail("missing 'Upgrade: websocket'")
        if "upgrade" not in _tokens(headers, "connection"):
            raise fail("missing 'Connection: upgrade'")
        accept = _values(headers, "sec-websocket-accept")
        if accept != [accept_key(self.key)]:
            raise fail("wrong Sec-WebSocket-Accept")
        if _values(headers, "sec-websocket-extensions"):
            raise fail("server accepted an extension that was not requested")
        if _values(headers, "sec-websocket-protocol"):
            raise fail("server selected a subprotocol that was not requested")
        self.response = HandshakeResponse(status, headers)
        return used


# --------------------------------------------------------------------------- encoding

_H2 = struct.Struct("!BB").pack
_H4 = struct.Struct("!BBH").pack
_H10 = struct.Struct("!BBQ").pack
_U16 = struct.Struct("!H").unpack_from
_U64 = struct.Struct("!Q").unpack_from
_KEY = struct.Struct("<I").unpack_from  # see wsmask.h: the key bytes packed little-endian

_from_buffer = ffi.from_buffer
_mask = lib.ws_mask
_mask_copy = lib.ws_mask_copy
_unmask_utf8 = lib.ws_unmask_utf8
_utf8_validate = lib.utf8_validate


def encode_header(
    opcode: int, length: int, *, fin: bool = True, rsv: int = 0, mask_key: bytes | None = None
) -> bytes:
    """A frame header of 2-14 bytes, with the minimal length encoding.

    Any opcode (0-15) and RSV bits (0-7) are accepted, so that invalid frames
    can be built for tests.  Raises ValueError for values the wire cannot
    carry or a mask key that is not 4 bytes.
    """
    if not 0 <= opcode <= 15 or not 0 <= rsv <= 7:
        raise ValueError("opcode must be 0-15 and rsv 0-7")
    if not 0 <= length < 1 << 63:
        raise ValueError(f"length {length} out of range")
    b0 = (0x80 if fin else 0) | rsv << 4 | opcode
    if mask_key is None:
        return _pack_header(b0, 0, length)
    if len(mask_key) != 4:
        raise ValueError("mask_key must be 4 bytes")
    return _pack_header(b0, 0x80, length) + bytes(mask_key)


def _pack_header(b0: int, mask_bit: int, n: int) -> bytes:
    """First byte ``b0``, then the MASK bit and the minimal encoding of length ``n``."""
    if n < 126:
        return _H2(b0, mask_bit | n)
    if n < 65536:
        return _H4(b0, mask_bit | 126, n)
    return _H10(b0, mask_bit | 127, n)


def encode_frame(
    opcode: int,
    payload: Buffer = b"",
    *,
    fin: bool = True,
    rsv: int = 0,
    mask_key: bytes | None = None,
) -> bytearray:
    """Header and payload in one new buffer; with ``mask_key`` the payload is masked.

    Masking is the C masking copy (dst <- src ^ key), so a client's frame
    costs one pass over the payload.  Raises as encode_header.
    """
    src = memoryview(payload).cast("B")
    n = src.nbytes
    head = encode_header(opcode, n, fin=fin, rsv=rsv, mask_key=mask_key)
    hl = len(head)
    if mask_key is None:
        out = bytearray(head)
        out += src
        return out
    out = bytearray(hl + n)
    out[:hl] = head
    if n:
        dst = _from_buffer("unsigned char[]", out)
        _mask_copy(dst + hl, _from_buffer("unsigned char[]", src), n, _KEY(mask_key)[0], 0)
        ffi.release(dst)  # lets `out` be resized by the caller
    return out


def encode_close(code: int | None = CloseCode.NORMAL_CLOSURE, reason: str = "") -> bytes:
    """A close frame payload: empty when ``code`` is None, else code and UTF-8 reason.

    Raises ValueError when the code may not be sent or the payload would
    exceed 125 bytes.
    """
    if code is None:
        if reason:
            raise ValueError("a close reason needs a close code")
        return b""
    if not is_valid_close_code(code):
        raise ValueError(f"close code {code} may not be sent")
    data = reason.encode("utf-8")
    if len(data) > 123:
        raise ValueError("close reason longer than 123 bytes")
    return code.to_bytes(2, "big") + data


def parse_close(payload: Buffer) -> tuple[int, str]:
    """(code, reason) of a close frame payload; (1005, "") when it is empty.

    Raises ProtocolError: 1002 for a 1-byte payload or a code that may not be
    sent, 1007 for a reason that is not UTF-8.
    """
    data = bytes(payload)
    if not data:
        return CloseCode.NO_STATUS_RCVD, ""
    if len(data) == 1:
        raise ProtocolError(CloseCode.PROTOCOL_ERROR, "close frame with a 1-byte payload")
    code = int.from_bytes(data[:2], "big")
    if not is_valid_close_code(code):
        raise ProtocolError(CloseCode.PROTOCOL_ERROR, f"invalid close code {code}")
    try:
        reason = data[2:].decode("utf-8")
    except UnicodeDecodeError:
        raise ProtocolError(CloseCode.INVALID_DATA, "close reason is not UTF-8") from None
    return code, reason


def _check_header(b0: int, length: int) -> None:
    """Raise ProtocolError (1002) if a frame header breaks a rule of RFC 6455 5.2 that
    needs no connection state: reserved bits (no extension is negotiated), a reserved
    opcode, a control frame that is fragmented or longer than 125 bytes.

    ``length`` is the payload length, or the header's 7-bit length field (over 125
    exactly when the payload is).  The rules and their order are those of
    csrc/core/wsframe.c, the C frame parser (tests/core/test_wsframe.py checks that
    the two agree over random headers).
    """
    if b0 & 0x70:
        raise ProtocolError(CloseCode.PROTOCOL_ERROR, "reserved bits set")
    op = b0 & 0x0F
    if op & 8:
        if op > Opcode.PONG:
            raise ProtocolError(CloseCode.PROTOCOL_ERROR, f"reserved opcode {op}")
        if not b0 & 0x80:
            raise ProtocolError(CloseCode.PROTOCOL_ERROR, "fragmented control frame")
        if length > 125:
            raise ProtocolError(CloseCode.PROTOCOL_ERROR, "control frame over 125 bytes")
    elif op > Opcode.BINARY:
        raise ProtocolError(CloseCode.PROTOCOL_ERROR, f"reserved opcode {op}")


def _header(view: Buffer, pos: int, avail: int, mask_bit: int) -> tuple[int, int, int] | None:
    """(header length, payload length, key) of the header at view[pos:], None if incomplete.

    ``avail`` >= 2 bytes are readable from ``pos``.  Raises ProtocolError for what the
    first two bytes decide (``_check_header``, then a wrong MASK bit) as soon as they
    are there, then for length encodings RFC 6455 5.2 forbids.
    """
    b0, b1 = view[pos], view[pos + 1]
    ln = b1 & 0x7F
    if b0 != 0x81 and b0 != 0x82:  # (a whole text or binary frame breaks none of its rules)
        _check_header(b0, ln)
    if b1 & 0x80 != mask_bit:
        if mask_bit:
            raise ProtocolError(CloseCode.PROTOCOL_ERROR, "unmasked frame from a client")
        raise ProtocolError(CloseCode.PROTOCOL_ERROR, "masked frame from a server")
    hl = 6 if mask_bit else 2
    if ln == 126:
        hl += 2
        if avail < hl - (4 if mask_bit else 0):
            return None
        ln = _U16(view, pos + 2)[0]
        if ln < 126:
            raise ProtocolError(CloseCode.PROTOCOL_ERROR, "non-minimal 16-bit length")
    elif ln == 127:
        hl += 8
        if avail < hl - (4 if mask_bit else 0):
            return None
        ln = _U64(view, pos + 2)[0]
        if ln >> 63:
            raise ProtocolError(CloseCode.PROTOCOL_ERROR, "64-bit length with its MSB set")
        if ln < 65536:
            raise ProtocolError(CloseCode.PROTOCOL_ERROR, "non-minimal 64-bit length")
    if avail < hl:
        return None
    return hl, ln, _KEY(view, pos + hl - 4)[0] if mask_bit else 0


@dataclass(slots=True)
class Frame:
    """One frame, for tests, tools and clients that want frames rather than messages."""

    opcode: int
    payload: bytes = b""
    fin: bool = True
    rsv: int = 0

    def check(self) -> None:
        """Raise ProtocolError (1002, or 1007 for a close reason) if RFC 6455 forbids this frame.

        Checks what needs no connection state: the header's rules (as the parser
        does) and a close frame's payload.
        """
        _check_header((0x80 if self.fin else 0) | self.rsv << 4 | self.opcode, len(self.payload))
        if self.opcode == Opcode.CLOSE:
            parse_close(self.payload)

    def serialize(self, *, mask_key: bytes | None = None) -> bytearray:
        """The frame's bytes, masked with ``mask_key`` if given (a client's frame)."""
        return encode_frame(
            self.opcode, self.payload, fin=self.fin, rsv=self.rsv, mask_key=mask_key
        )

    @classmethod
    def parse(
        cls, data: Buffer, *, masked: bool, max_size: int | None = None
    ) -> tuple[Frame, int] | None:
        """The frame at the start of ``data`` and its size in bytes, or None if incomplete.

        ``masked`` says whether the frame must be masked (sent by a client).
        The payload is unmasked into a copy; ``data`` is not modified.
        Raises ProtocolError as ``check`` does, for a wrong MASK bit or a
        forbidden length encoding, and 1009 for a payload over ``max_size``.
        """
        view = memoryview(data).cast("B")
        avail = view.nbytes
        if avail < 2:
            return None
        head = _header(view, 0, avail, 0x80 if masked else 0)
        if head is None:
            return None
        hl, ln, key = head
        if max_size is not None and ln > max_size:
            raise ProtocolError(CloseCode.MESSAGE_TOO_BIG, "frame too big")
        if avail < hl + ln:
            return None
        payload = bytearray(view[hl : hl + ln])
        if key and ln:
            cbuf = _from_buffer("unsigned char[]", payload)
            _mask(cbuf, ln, key, 0)
            ffi.release(cbuf)
        b0 = view[0]
        frame = cls(b0 & 0x0F, bytes(payload), bool(b0 & 0x80), (b0 >> 4) & 7)
        frame.check()
        return frame, hl + ln


# --------------------------------------------------------------------------- events


class Message:
    """A complete data message.

    ``data`` is a memoryview slice of the buffer given to ``receive_data``
    when the message was one frame inside it (zero copy: valid until the
    caller consumes those bytes), else the bytearray it was assembled in
    (owned by the receiver).
    """

    __slots__ = ("data", "opcode")

    def __init__(self, opcode: Opcode, data: memoryview | bytearray) -> None:
        self.opcode = opcode
        self.data = data

    @property
    def text(self) -> str:
        """The payload decoded as UTF-8 (already validated for TEXT messages)."""
        return str(self.data, "utf-8")

    def __eq__(self, other: object) -> bool:
        if type(other) is not Message:
            return NotImplemented
        return self.opcode == other.opcode and self.data == other.data

    __hash__ = None  # type: ignore[assignment]  # mutable payload

    def __repr__(self) -> str:
        data = bytes(self.data)
        shown = repr(data[:40]) + ("..." if len(data) > 40 else "")
        return f"Message({Opcode(self.opcode).name}, {shown}, len={len(data)})"


@dataclass(frozen=True, slots=True)
class Ping:
    """A ping from the peer (a connection answers it with a pong by itself)."""

    payload: bytes


@dataclass(frozen=True, slots=True)
class Pong:
    """A pong from the peer, solicited or not."""

    payload: bytes


@dataclass(frozen=True, slots=True)
class Close:
    """The peer's close frame: ``code`` 1005 when it carried no payload."""

    code: int
    reason: str


Event: TypeAlias = "Message | Ping | Pong | Close"

_DATA_OPCODES = (Opcode.CONT, Opcode.TEXT, Opcode.BINARY)
_UTF8_ACCEPT: int = lib.UTF8_ACCEPT


# --------------------------------------------------------------------------- parser


@dataclass(slots=True)
class _Stream:
    """A frame larger than the parser's in-place limit, streamed as its payload comes."""

    op: int  # its opcode
    fin: int  # its FIN bit (0x80) or 0
    key: int  # its masking key (0: unmasked)
    off: int  # payload bytes already moved (the masking offset)
    left: int  # payload bytes still to come
    text: bool  # validated as UTF-8 (TEXT, or a continuation of one)


class FrameParser:
    """Sans-IO RFC 6455 frame parser over writable views of received bytes.

    ``receive_data(view)`` parses frames from the start of ``view``, unmasks
    them in place, appends events to ``events`` and returns how many bytes it
    consumed.  An incomplete frame is not consumed: pass its bytes again (as
    modified: text payloads are unmasked and validated as they arrive, so an
    invalid byte fails the message at once) at the start of the next view.
    A frame larger than ``in_place_limit`` (header and payload) is consumed
    as it arrives instead, into an assembly buffer.  ``consume_all=True``
    does the same for an incomplete frame at the end of the view (for data
    that will not be presented again contiguously, e.g. the first of a
    ring's two views).

    After a close frame the parser ignores all further bytes.  A protocol
    violation raises ProtocolError; the parser then raises it again on every
    call.
    """

    __slots__ = (
        "_ctrl",
        "_cview",
        "_done",
        "_hdr",
        "_mask_bit",
        "_msg_buf",
        "_msg_len",
        "_msg_op",
        "_streaming",
        "_utf8",
        "closed",
        "error",
        "events",
        "in_place_limit",
        "max_size",
        "side",
    )

    def __init__(
        self,
        side: Side,
        *,
        max_size: int = DEFAULT_MAX_SIZE,
        in_place_limit: int = DEFAULT_IN_PLACE_LIMIT,
    ) -> None:
        if not isinstance(side, Side):
            raise TypeError(f"side must be a Side, not {type(side).__name__}")
        if max_size < 0 or in_place_limit < 0:
            raise ValueError("max_size and in_place_limit must be >= 0")
        self.side = side
        self.max_size = max_size
        self.in_place_limit = in_place_limit
        self.events: deque[Event] = deque()
        self.closed = False  # a close frame was received
        self.error: ProtocolError | None = None
        # A server receives masked frames, a client unmasked ones.
        self._mask_bit = 0x80 if side is Side.SERVER else 0
        # The message being assembled (fragmented or streamed): opcode 0 = none.
        self._msg_op = 0
        self._msg_buf = bytearray()
        self._msg_len = 0
        # The UTF-8 DFA state, reused by every text message: one allocation
        # per parser, and no reset per message, since a message only ends
        # (or a binary one starts) when the state is at UTF8_ACCEPT.
        self._utf8 = ffi.new("uint32_t *")
        # Payload bytes of the incomplete frame at the start of the next view
        # that were already unmasked (and validated).
        self._done = 0
        # The frame being streamed, if any: its payload goes to the
        # message buffer (data) or _ctrl (control) as it arrives.
        self._streaming: _Stream | None = None
        self._ctrl = bytearray()
        # Header bytes carried over by consume_all when a view ended mid-header.
        self._hdr = bytearray()
        # The view being parsed as a C pointer, made when first needed by _unmask
        # and dropped when receive_data returns (it holds the caller's buffer).
        self._cview: Any = None

    @property
    def idle(self) -> bool:
        """True between messages: no partial frame, no message being assembled.

        Only then may frames be handled elsewhere (the server's C fast path)
        without this parser's state being bypassed."""
        return (
            self._msg_op == 0
            and self._streaming is None
            and self._done == 0
            and not self._hdr
            and self.error is None
            and not self.closed
        )

    @property
    def assembling(self) -> int:
        """Bytes of the message being assembled outside the caller's buffer, as declared
        by the headers of its frames so far (0 when none): what it will hold once the
        frames seen so far are complete."""
        return self._msg_len

    def discard(self) -> None:
        """Drop the message being assembled (the parser is failed or closed: its memory
        goes now, not when the parser does)."""
        self._msg_buf = bytearray()
        self._ctrl = bytearray()
        self._msg_len = 0

    def receive_data(self, data: Buffer, *, consume_all: bool = False) -> int:
        """Parse frames from the start of ``data``; return the number of bytes consumed.

        ``data`` must be writable when frames are masked (server side).
        Raises ProtocolError for a protocol violation (events parsed before it
        stay in ``events``), TypeError for a read-only buffer that needs
        unmasking.
        """
        if self.error is not None:
            raise self.error
        view = data if type(data) is memoryview else memoryview(data)
        if view.format != "B":
            view = view.cast("B")
        if self.closed:
            return view.nbytes
        try:
            return self._parse(view, view.nbytes, consume_all)
        except ProtocolError as exc:
            # No traceback: it would keep this frame's views (and so the
            # caller's buffer) alive for as long as the error is kept.
            self.error = exc.with_traceback(None)
            raise
        finally:
            self._cview = None

    def _cbuf(self, view: memoryview) -> Any:
        try:
            return _from_buffer("unsigned char[]", view, require_writable=bool(self._mask_bit))
        except (TypeError, BufferError):
            raise TypeError("received data must be a writable buffer (unmasked in place)") from None

    def _check_state(self, b0: int, ln: int) -> None:
        """Raise ProtocolError if a valid frame (b0, length ln) may not come now: a
        continuation outside a message, a data frame inside one, a message too big."""
        op = b0 & 0x0F
        if op & 8:
            return
        if op == 0:
            if not self._msg_op:
                raise ProtocolError(CloseCode.PROTOCOL_ERROR, "continuation without a message")
            if self._msg_len + ln > self.max_size:
                raise ProtocolError(CloseCode.MESSAGE_TOO_BIG, "message too big")
        else:
            if self._msg_op:
                raise ProtocolError(
                    CloseCode.PROTOCOL_ERROR, "new data frame inside a fragmented message"
                )
            if ln > self.max_size:
                raise ProtocolError(CloseCode.MESSAGE_TOO_BIG, "message too big")

    def _unmask(
        self, view: memoryview, start: int, count: int, key: int, off: int, text: bool
    ) -> None:
        """Unmask view[start:start+count] in place (payload offset ``off``), validating text:
        the one C call per frame.  The view's C pointer is made once per receive_data."""
        cbuf = self._cview
        if cbuf is None:
            cbuf = self._cview = self._cbuf(view)
        if text:
            if key:
                good = _unmask_utf8(self._utf8, cbuf + start, count, key, off)
            else:
                good = _utf8_validate(self._utf8, cbuf + start, count)
            if good != count:
                raise ProtocolError(CloseCode.INVALID_DATA, "invalid UTF-8 in a text message")
        elif key:
            _mask(cbuf + start, count, key, off)

    def _control(self, op: int, payload: bytes) -> None:
        if op == Opcode.PING:
            self.events.append(Ping(payload))
        elif op == Opcode.PONG:
            self.events.append(Pong(payload))
        else:
            code, reason = parse_close(payload)
            self.events.append(Close(code, reason))
            self.closed = True

    def _end_message(self) -> None:
        if self._msg_op == Opcode.TEXT and self._utf8[0] != _UTF8_ACCEPT:
            raise ProtocolError(CloseCode.INVALID_DATA, "text message ends mid-character")
        self.events.append(Message(_DATA_OPCODES[self._msg_op], self._msg_buf))
        self._msg_op = 0
        self._msg_buf = bytearray()
        self._msg_len = 0

    def _begin_stream(self, b0: int, ln: int, key: int, off: int) -> None:
        """Set up streaming of a frame whose first ``off`` payload bytes are already processed."""
        op = b0 & 0x0F
        if op & 8:
            self._ctrl = bytearray()
            text = False
        else:
            if op:
                self._msg_op = op
                self._msg_buf = bytearray()
                self._msg_len = 0
            self._msg_len += ln
            text = self._msg_op == Opcode.TEXT
        self._streaming = _Stream(op, b0 & 0x80, key, off, ln - off, text)

    def _stream(self, st: _Stream, view: memoryview, pos: int, n: int) -> int:
        """Move the streamed frame's payload from view[pos:n]; finish it when complete."""
        take = min(st.left, n - pos)
        if take:
            if st.key or st.text:
                self._unmask(view, pos, take, st.key, st.off, st.text)
            target = self._ctrl if st.op & 8 else self._msg_buf
            target += view[pos : pos + take]
            st.off += take
            st.left -= take
            pos += take
        if st.left == 0:
            self._streaming = None
            if st.op & 8:
                self._control(st.op, bytes(self._ctrl))
            elif st.fin:
                self._end_message()
        return pos

    def _carry_header(self, view: memoryview, pos: int, n: int) -> int:
        """Complete a header split by consume_all; once complete, start streaming its frame.

        Its rules are checked as its bytes come (``_header``), as for a header in a view."""
        hdr = self._hdr
        if len(hdr) < 2:
            take = min(2 - len(hdr), n - pos)
            hdr += view[pos : pos + take]
            pos += take
            if len(hdr) < 2:
                return pos
        ln7 = hdr[1] & 0x7F
        hl = (6 if self._mask_bit else 2) + (2 if ln7 == 126 else 8 if ln7 == 127 else 0)
        take = min(hl - len(hdr), n - pos)
        hdr += view[pos : pos + take]
        pos += take
        head = _header(hdr, 0, len(hdr), self._mask_bit)
        if head is None:
            return pos
        _, ln, key = head
        b0 = hdr[0]
        self._check_state(b0, ln)
        hdr.clear()
        self._begin_stream(b0, ln, key, 0)
        return pos

    def _parse(self, view: memoryview, n: int, consume_all: bool) -> int:
        """Parse frames from view[:n]; return the bytes consumed (see ``receive_data``)."""
        pos = 0
        while True:
            if self._streaming is not None:
                pos = self._stream(self._streaming, view, pos, n)
                if self._streaming is not None or self.closed:
                    return n
            elif self._hdr:
                pos = self._carry_header(view, pos, n)
                if self._hdr:
                    return n
            else:
                head = _header(view, pos, n - pos, self._mask_bit) if n - pos >= 2 else None
                if head is None:
                    if consume_all and pos < n:
                        self._hdr += view[pos:n]
                        return n
                    return pos
                after = self._frame(view, pos, n, head, consume_all)
                if self.closed:
                    return n
                if after == pos:
                    return pos
                pos = after

    def _frame(
        self, view: memoryview, pos: int, n: int, head: tuple[int, int, int], consume_all: bool
    ) -> int:
        """The frame whose header ``head`` (its length, the payload's, the key) is at view[pos].

        Returns where parsing goes on: past the frame when it is whole in the view; past
        its header when it is streamed (over ``in_place_limit``, or cut by consume_all);
        ``n`` when consume_all took the rest of the view into the message; ``pos`` when
        it is incomplete and will be presented again."""
        hl, ln, key = head
        b0 = view[pos]
        op = b0 & 0x0F
        if not op or self._msg_op or ln > self.max_size:  # else no state rule can apply
            self._check_state(b0, ln)
        p0 = pos + hl
        have = n - p0  # payload bytes in this view
        if hl + ln > self.in_place_limit or (op & 8 and have < ln and consume_all):
            self._begin_stream(b0, ln, key, 0)
            return p0
        if op & 8:
            if have < ln:
                return pos
            if key and ln:
                self._unmask(view, p0, ln, key, 0, False)
            self._control(op, bytes(view[p0 : p0 + ln]))
            return p0 + ln
        text = op == Opcode.TEXT or (op == 0 and self._msg_op == Opcode.TEXT)
        done = self._done
        if have < ln:
            # Incomplete: text is unmasked and validated as it arrives, so an
            # invalid byte fails the message without waiting for the rest.
            if have > done and (text or consume_all):
                self._unmask(view, p0 + done, have - done, key, done, text)
                self._done = have
            if not consume_all:
                return pos
            self._done = 0
            self._begin_stream(b0, ln, key, have)
            self._msg_buf += view[p0:n]
            return n
        if ln > done and (key or text):
            self._unmask(view, p0 + done, ln - done, key, done, text)
        self._done = 0
        end = p0 + ln
        if op and b0 & 0x80:  # a whole message
            if text and self._utf8[0] != _UTF8_ACCEPT:
                raise ProtocolError(CloseCode.INVALID_DATA, "text message ends mid-character")
            self.events.append(Message(_DATA_OPCODES[op], view[p0:end]))
        elif op:  # the first frame of a fragmented message
            self._msg_op = op
            self._msg_buf = bytearray(view[p0:end])
            self._msg_len = ln
        else:
            self._msg_buf += view[p0:end]
            self._msg_len += ln
            if b0 & 0x80:
                self._end_message()
        return end


# --------------------------------------------------------------------------- connections


class Connection:
    """A sans-IO WebSocket connection after the opening handshake (state OPEN).

    Feed received bytes to ``receive_data``, then iterate ``events()`` (pings
    are answered and the close handshake is run as their events come out, so
    replies to earlier messages go first), then send ``data_to_send()``.
    When ``state`` is CLOSED and ``data_to_send()`` returns nothing, close
    the transport.  A protocol violation by the peer sends a close frame with
    its code and moves to CLOSED; ``error`` then holds it.
    """

    def __init__(
        self,
        side: Side,
        *,
        max_size: int = DEFAULT_MAX_SIZE,
        in_place_limit: int = DEFAULT_IN_PLACE_LIMIT,
    ) -> None:
        self.side = side
        self.state = State.OPEN
        self.error: ProtocolError | HandshakeError | None = None
        #: The peer's close code and reason, once its close frame came out of events().
        self.close_code: int | None = None
        self.close_reason = ""
        self._parser = FrameParser(side, max_size=max_size, in_place_limit=in_place_limit)
        self._pending: ProtocolError | None = None
        self._out = bytearray()
        self._client = side is Side.CLIENT
        self._keys = b""
        self._key_pos = 0

    # ------------------------------------------------------------- input

    def receive_data(self, data: Buffer, *, consume_all: bool = False) -> int:
        """Take received bytes; return how many were consumed (see FrameParser).

        Consume them only after handling ``events()``: a message may be a
        view of them.  Never raises for anything the peer sends.
        """
        if self.state is State.OPEN or self.state is State.CLOSING:
            if self._pending is None:
                try:
                    return self._parser.receive_data(data, consume_all=consume_all)
                except ProtocolError as exc:
                    self._pending = exc
        elif self.state is State.CONNECTING:
            return self._handshake_data(data, consume_all)
        return data.nbytes if type(data) is memoryview else len(data)

    def _handshake_data(self, data: Buffer, consume_all: bool) -> int:
        raise NotImplementedError  # pragma: no cover - a base Connection starts OPEN

    @property
    def assembling(self) -> int:
        """Bytes of the message being assembled (FrameParser.assembling): memory this
        connection holds beyond the caller's buffer until the message is complete."""
        return self._parser.assembling

    @property
    def fast_path_ok(self) -> bool:
        """True when OPEN, between messages, with nothing pending: frames may be
        echoed by someone else (the server's C fast path) until the next one
        that needs this connection."""
        return self.state is State.OPEN and self._pending is None and self._parser.idle

    def fail(self, code: int, reason: str) -> None:
        """Fail the connection as for a protocol violation found elsewhere.

        Sends a close frame with ``code`` (e.g. 1007 for invalid UTF-8 seen by
        the fast path) and moves to CLOSED."""
        if self.state is State.OPEN or self.state is State.CLOSING:
            self._pending = ProtocolError(code, reason)
            self._fail()

    def events(self) -> Iterator[Event]:
        """Yield received events in order, acting on control frames as they come out.

        A ping is answered with a pong with the same payload; the peer's
        close is answered with a close echoing its code (the connection is
        then CLOSED); after the last event, a pending protocol violation
        fails the connection.
        """
        queue = self._parser.events
        while queue:
            event = queue.popleft()
            if isinstance(event, Ping):
                if self.state is State.OPEN or self.state is State.CLOSING:
                    self._send_frame(Opcode.PONG, event.payload)
            elif isinstance(event, Close):
                self._on_close(event)
            yield event
        if self._pending is not None:
            self._fail()

    def _on_close(self, event: Close) -> None:
        self.close_code = event.code
        self.close_reason = event.reason
        if self.state is State.OPEN:
            code = None if event.code == CloseCode.NO_STATUS_RCVD else event.code
            self._send_frame(Opcode.CLOSE, encode_close(code))
        self.state = State.CLOSED

    def _fail(self) -> None:
        exc, self._pending = self._pending, None
        assert exc is not None
        self.error = exc
        self._parser.discard()  # nothing more is parsed: the assembly buffer can go now
        if self.state is State.OPEN:
            reason = exc.reason.encode("utf-8")[:123].decode("utf-8", "ignore")
            self._send_frame(Opcode.CLOSE, encode_close(exc.code, reason))
        self.state = State.CLOSED

    # ------------------------------------------------------------ output

    def send_message(self, opcode: int, data: Buffer | str, *, take: bool = False) -> None:
        """Queue a TEXT or BINARY message (a str is sent as UTF-8).

        Dropped once a close frame was sent or the connection failed.
        Raises RuntimeError before the handshake completed, ValueError for
        another opcode.  ``take=True`` gives up a bytearray ``data`` (an
        assembled ``Message.data``, say): on the server side, when nothing else
        is queued, the frame is built in it, without a copy of the payload.
        """
        if self.state is not _OPEN or (opcode != 1 and opcode != 2):
            if opcode != Opcode.TEXT and opcode != Opcode.BINARY:
                raise ValueError(f"send_message: opcode must be TEXT or BINARY, not {opcode}")
            if self.state is State.CONNECTING:
                raise RuntimeError("send_message before the opening handshake completed")
            return
        if type(data) is str:
            data = data.encode("utf-8")
        if take and not self._out and not self._client and type(data) is bytearray:
            try:  # moves the payload up in place (a realloc at most)
                data[:0] = _pack_header(0x80 | opcode, 0, len(data))
            except BufferError:  # a view of it is alive: it cannot move
                pass
            else:
                self._out = data
                return
        self._send_frame(opcode, data)

    def send_ping(self, payload: Buffer = b"") -> None:
        """Queue a ping (payload up to 125 bytes); dropped unless OPEN. Raises ValueError."""
        payload = bytes(payload)
        if len(payload) > 125:
            raise ValueError("ping payload over 125 bytes")
        if self.state is State.OPEN:
            self._send_frame(Opcode.PING, payload)

    def send_close(self, code: int | None = CloseCode.NORMAL_CLOSURE, reason: str = "") -> None:
        """Start the close handshake (OPEN -> CLOSING); ignored in other states.

        Raises ValueError for a code that may not be sent or a reason over
        123 bytes in UTF-8.
        """
        payload = encode_close(code, reason)
        if self.state is State.OPEN:
            self._send_frame(Opcode.CLOSE, payload)
            self.state = State.CLOSING

    def data_to_send(self) -> bytearray:
        """Everything queued for the peer since the last call (ownership passes to the caller).

        Applies a pending protocol violation first, if events() has not.
        """
        if self._pending is not None:
            self._fail()
        out = self._out
        if not out:
            return out[:0]
        self._out = bytearray()
        return out

    def _send_frame(self, opcode: int, payload: Buffer) -> None:
        if self._client:
            frame = encode_frame(opcode, payload, mask_key=self._mask_key())
            if self._out:
                self._out += frame
            else:
                self._out = frame
            return
        n = len(payload) if type(payload) is not memoryview else payload.nbytes
        out = self._out
        out += _pack_header(0x80 | opcode, 0, n)
        out += payload

    def _mask_key(self) -> bytes:
        # Keys come from the OS CSPRNG (RFC 6455 10.3), drawn 256 at a time
        # so a message does not cost a system call.
        pos = self._key_pos
        if pos >= len(self._keys):
            self._keys = os.urandom(1024)
            pos = 0
        self._key_pos = pos + 4
        return self._keys[pos : pos + 4]


class ServerConnection(Connection):
    """Server side: runs the opening handshake (CONNECTING), then frames.

    An invalid request is answered with its HTTP error (``error`` is the
    HandshakeError) and the connection is CLOSED.  ``request`` is the
    accepted HandshakeRequest.
    """

    def __init__(
        self,
        *,
        max_size: int = DEFAULT_MAX_SIZE,
        in_place_limit: int = DEFAULT_IN_PLACE_LIMIT,
        max_line: int = MAX_LINE,
        max_head_size: int = MAX_HEAD_SIZE,
        max_headers: int = MAX_HEADERS,
    ) -> None:
        super().__init__(Side.SERVER, max_size=max_size, in_place_limit=in_place_limit)
        self.state = State.CONNECTING
        self.request: HandshakeRequest | None = None
        self._handshake = ServerHandshake(
            max_line=max_line, max_size=max_head_size, max_headers=max_headers
        )

    def _handshake_data(self, data: Buffer, consume_all: bool) -> int:
        view = data if type(data) is memoryview else memoryview(data)
        try:
            used = self._handshake.receive_data(view)
        except HandshakeError as exc:
            self.error = exc.with_traceback(None)
            self._out += exc.response
            self.state = State.CLOSED
            return view.nbytes
        if self._handshake.request is None:
            return used
        self.request = self._handshake.request
        self._out += self._handshake.response
        self.state = State.OPEN
        return used + self.receive_data(view[used:], consume_all=consume_all)


class ClientConnection(Connection):
    """Client side: sends the opening request (first ``data_to_send()``), checks the 101.

    Frames it sends are masked with random keys.  A bad response makes the
    connection CLOSED with ``error`` set to the HandshakeError.
    """

    def __init__(
        self,
        host: str,
        target: str = "/",
        *,
        origin: str | None = None,
        headers: Iterable[tuple[str, str]] = (),
        max_size: int = DEFAULT_MAX_SIZE,
        in_place_limit: int = DEFAULT_IN_PLACE_LIMIT,
    ) -> None:
        super().__init__(Side.CLIENT, max_size=max_size, in_place_limit=in_place_limit)
        self.state = State.CONNECTING
        self.handshake = ClientHandshake(host, target, origin=origin, headers=headers)
        self.response: HandshakeResponse | None = None
        self._out += self.handshake.request

    def _handshake_data(self, data: Buffer, consume_all: bool) -> int:
        view = data if type(data) is memoryview else memoryview(data)
        try:
            used = self.handshake.receive_data(view)
        except HandshakeError as exc:
            self.error = exc.with_traceback(None)
            self.state = State.CLOSED
            return view.nbytes
        if self.handshake.response is None:
            return used
        self.response = self.handshake.response
        self.state = State.OPEN
        return used + self.receive_data(view[used:], consume_all=consume_all)
