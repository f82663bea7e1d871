"""One set of RFC 6455 header rules: the C parser and encoder (csrc/core/wsframe.c, used by
the echo hot path and the load generator) and the Python framer (wsstls/ws.py) agree.

Hypothesis draws headers around every boundary the rules have (opcodes, RSV, FIN, MASK,
the 7/16/64-bit length encodings and their minimal forms, control lengths) and cuts
them at random points: both sides must find the same header, the same "need more
bytes", or a protocol error with the same close code.
"""

from __future__ import annotations

import struct

from hypothesis import example, given
from hypothesis import strategies as st

from wsstls._native import ffi, lib
from wsstls.ws import FrameParser, ProtocolError, Side, _header, encode_header

LENGTHS = st.one_of(
    st.integers(0, 127),
    st.sampled_from([125, 126, 127, 65535, 65536, 2**32, 2**63 - 1, 2**63, 2**64 - 1]),
    st.integers(0, 2**64 - 1),
)


@st.composite
def headers(draw: st.DrawFn) -> bytes:
    """A header as a peer might send it: any first byte, any length encoding (minimal or
    not), any MASK bit, then cut at a random point (or kept whole, with a few extra bytes)."""
    b0 = draw(st.integers(0, 255))
    mask = draw(st.booleans())
    length = draw(LENGTHS)
    encoding = draw(st.sampled_from(["7", "16", "64", "minimal"]))
    if encoding == "minimal":
        encoding = "7" if length < 126 else "16" if length < 65536 else "64"
    if encoding == "7":
        head = bytes([b0, (0x80 if mask else 0) | min(length, 127)])
    elif encoding == "16":
        head = bytes([b0, (0x80 if mask else 0) | 126]) + struct.pack("!H", length % 65536)
    else:
        head = bytes([b0, (0x80 if mask else 0) | 127]) + struct.pack("!Q", length)
    if mask:
        head += draw(st.binary(min_size=4, max_size=4))
    head += draw(st.binary(max_size=3))
    return head[: draw(st.integers(0, len(head)))]


def c_parse(data: bytes, masked: bool) -> tuple[object, ...]:
    h = ffi.new("struct ws_header *")
    r = lib.ws_parse_header(data, len(data), int(masked), h)
    if r == lib.WS_HEADER_INCOMPLETE:
        return ("incomplete",)
    if r != lib.WS_HEADER_OK:
        return ("error", 1002)
    return ("ok", h.size, h.length, h.key, h.fin, h.opcode)


def py_parse(data: bytes, masked: bool) -> tuple[object, ...]:
    if len(data) < 2:
        return ("incomplete",)
    try:
        head = _header(memoryview(data), 0, len(data), 0x80 if masked else 0)
    except ProtocolError as exc:
        return ("error", exc.code)
    if head is None:
        return ("incomplete",)
    size, length, key = head
    return ("ok", size, length, key, data[0] >> 7, data[0] & 0x0F)


@given(headers(), st.booleans())
@example(bytes([0xC1, 0x7E]), True)  # RSV1 and an incomplete 16-bit length: RSV decides first
@example(bytes([0x89, 0xFE, 0x00]), True)  # a ping with a 16-bit length: too long already
@example(bytes([0x82, 0xFE, 0x00, 0x7D]), True)  # non-minimal 16-bit, before the key came
@example(bytes([0x82, 0x7F]) + struct.pack("!Q", 2**63), False)  # 64-bit MSB set
def test_c_and_python_parse_every_header_alike(data: bytes, masked: bool) -> None:
    assert c_parse(data, masked) == py_parse(data, masked)


@given(headers())
@example(b"\x01\x80\x00\x00\x00\x00\x00\x00")  # an empty frame, then a second header
def test_the_python_framer_fails_exactly_where_the_c_parser_does(data: bytes) -> None:
    """The whole FrameParser (its inlined short-header path included), as a server."""
    c = c_parse(data, True)
    if c[0] == "ok" and c[5] == 0:
        return  # a continuation needs a message first: a rule of the connection's state
    if c[0] == "ok":  # the header and its payload only: bytes past them are another frame
        data = data[: c[1] + c[2]]
    parser = FrameParser(Side.SERVER, max_size=2**64, in_place_limit=2**64)
    try:
        parser.receive_data(bytearray(data))
    except ProtocolError as exc:
        assert c == ("error", exc.code)
    else:
        assert c[0] != "error"


@given(
    st.integers(0, 15),
    st.booleans(),
    st.integers(0, 2**63 - 1),
    st.none() | st.binary(min_size=4, max_size=4),
)
def test_c_and_python_encode_every_header_alike(
    opcode: int, fin: bool, length: int, key: bytes | None
) -> None:
    out = ffi.new("unsigned char[]", 14)
    ckey = ffi.NULL if key is None else ffi.new("uint32_t *", int.from_bytes(key, "little"))
    n = lib.ws_encode_header(out, opcode, fin, length, ckey)
    encoded = ffi.buffer(out, n)[:]
    assert encoded == encode_header(opcode, length, fin=fin, mask_key=key)
    assert n == lib.ws_header_size(length, key is not None)
    if opcode in (0, 1, 2) or (opcode in (8, 9, 10) and fin and length <= 125):
        # and it parses back to what was encoded
        assert c_parse(encoded, key is not None) == (
            "ok", n, length, int.from_bytes(key or b"\0" * 4, "little"), int(fin), opcode,
        )  # fmt: skip


def test_every_status_has_its_own_reason() -> None:
    statuses = ffi.typeof("enum ws_header_status").relements.values()
    reasons = {ffi.string(lib.ws_header_error(s)) for s in statuses}
    assert len(reasons) == len(statuses)
