"""The echo server's C fast path (csrc/server/wsecho.c) driven directly over a plain socketpair.

The server end is wsecho_pump on a mirrored plaintext ring (plain ws://, so
no TLS is needed); the client end writes masked frames by hand.
"""

from __future__ import annotations

import select
import socket
from collections.abc import Iterator

import pytest

from wsstls import RingBuffer
from wsstls._cdata import handle
from wsstls._native import ffi, lib
from wsstls.ws import Opcode, encode_frame

KEY = b"\x11\x22\x33\x44"


class Echo:
    """A socketpair: `client` writes frames, wsecho_pump serves `server`'s end."""

    def __init__(self) -> None:
        self.client, self.server = socket.socketpair()
        self.server.setblocking(False)
        self.plain = RingBuffer(65536, mirrored=True)
        self.st = ffi.new("struct wsecho *")
        self.st.max_message = 1 << 20
        self.st.fd = self.server.fileno()

    def pump(self, flags: int = lib.WSECHO_READ | lib.WSECHO_ECHO) -> int:
        select.select([self.server], [], [], 2.0)
        return lib.wsecho_pump(ffi.NULL, handle(self.plain), self.st, flags)

    def echoed(self) -> bytes:
        self.client.settimeout(2.0)
        return self.client.recv(1 << 20)

    def close(self) -> None:
        self.client.close()
        self.server.close()
        self.plain.close()


@pytest.fixture
def echo() -> Iterator[Echo]:
    e = Echo()
    yield e
    e.close()


def text_frame(payload: bytes) -> bytes:
    return bytes(encode_frame(Opcode.TEXT, payload, mask_key=KEY))


def test_a_plain_frame_is_echoed_unmasked(echo: Echo) -> None:
    echo.client.sendall(text_frame("héllo".encode()))
    assert echo.pump() == lib.WSECHO_WAIT
    assert echo.echoed() == bytes(encode_frame(Opcode.TEXT, "héllo".encode()))
    assert echo.st.messages == 1 and len(echo.plain) == 0


def test_a_trickled_text_frame_is_validated_once_per_byte(echo: Echo) -> None:
    payload = ("ü" * 3000).encode()  # two bytes per character: splits fall mid-character
    frame = text_frame(payload)
    header = len(frame) - len(payload)
    sent = 0
    for step in (header + 1, 1, 2, 999, 1500, 7):
        echo.client.sendall(frame[sent : sent + step])
        sent += step
        assert echo.pump() == lib.WSECHO_WAIT
        assert echo.st.text_done == sent - header  # exactly what has arrived, no rework
        assert echo.st.messages == 0
    echo.client.sendall(frame[sent:])
    assert echo.pump() == lib.WSECHO_WAIT
    assert echo.st.messages == 1 and echo.st.text_done == 0
    assert echo.echoed() == bytes(encode_frame(Opcode.TEXT, payload))


def test_invalid_utf8_fails_before_the_frame_is_complete(echo: Echo) -> None:
    payload = b"valid prefix " + b"\xff" + b"x" * 500
    frame = text_frame(payload)
    cut = len(frame) - len(payload) + 20  # the 0xff has arrived, the rest has not
    echo.client.sendall(frame[:10])
    assert echo.pump() == lib.WSECHO_WAIT
    echo.client.sendall(frame[10:cut])
    assert echo.pump() == lib.WSECHO_BAD_UTF8
    assert echo.st.text_done == 0


def test_a_read_only_pump_forgets_the_cache(echo: Echo) -> None:
    frame = text_frame(b"a" * 1000)
    echo.client.sendall(frame[:100])
    assert echo.pump() == lib.WSECHO_WAIT and echo.st.text_done > 0
    echo.client.sendall(frame[100:200])
    assert echo.pump(lib.WSECHO_READ) == lib.WSECHO_WAIT  # the framer's turn
    assert echo.st.text_done == 0
    echo.client.sendall(frame[200:])
    assert echo.pump() == lib.WSECHO_WAIT
    assert echo.echoed() == bytes(encode_frame(Opcode.TEXT, b"a" * 1000))


@pytest.mark.parametrize(
    "frame",
    [
        bytes([0x81, 0x05]) + b"hello",  # unmasked: the framer answers 1002
        bytes([0x01, 0x85]) + KEY + b"hello",  # not final: fragmentation is the framer's
        bytes([0x89, 0x80]) + KEY,  # a ping
        bytes([0xC1, 0x80]) + KEY,  # RSV1
        bytes([0x82, 0xFE, 0x00, 0x05]) + KEY + b"12345",  # non-minimal 16-bit length
    ],
)
def test_anything_else_is_left_to_the_framer_untouched(echo: Echo, frame: bytes) -> None:
    echo.client.sendall(frame)
    assert echo.pump() == lib.WSECHO_SLOW
    assert echo.plain.peek() == frame  # not unmasked, not consumed


def test_the_end_of_the_stream_is_reported(echo: Echo) -> None:
    echo.client.shutdown(socket.SHUT_WR)
    assert echo.pump() == lib.WSECHO_ENDED
    assert echo.st.ended == lib.TLS_EOF
    assert echo.st.sys_errno == 0  # an end, not a socket error
