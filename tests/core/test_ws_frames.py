"""Frames: header encoding, encode/parse round trips, close payloads, every parser
rule of RFC 6455 section 5, zero copy, streaming, and (hypothesis) that any split
of a valid stream parses to the same events and that random bytes raise nothing
but ProtocolError."""

from __future__ import annotations

import itertools
import os
import struct
from collections.abc import Callable

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from wsstls.ring import RingBuffer
from wsstls.ws import (
    Close,
    CloseCode,
    Event,
    Frame,
    FrameParser,
    Message,
    Opcode,
    Ping,
    Pong,
    ProtocolError,
    Side,
    encode_close,
    encode_frame,
    encode_header,
    is_valid_close_code,
    parse_close,
)

KEY = b"\x37\xfa\x21\x3d"


def ref_mask(data: bytes, key: bytes) -> bytes:
    return bytes(b ^ key[i % 4] for i, b in enumerate(data))


def cframe(opcode: int, payload: bytes = b"", *, fin: bool = True, rsv: int = 0) -> bytes:
    """A client (masked) frame."""
    return bytes(encode_frame(opcode, payload, fin=fin, rsv=rsv, mask_key=KEY))


def norm(event: Event) -> tuple[object, ...]:
    """An event as plain values, dropping any view of the parser's input."""
    if isinstance(event, Message):
        return ("message", event.opcode, bytes(event.data))
    if isinstance(event, Ping):
        return ("ping", event.payload)
    if isinstance(event, Pong):
        return ("pong", event.payload)
    assert isinstance(event, Close)
    return ("close", event.code, event.reason)


def drain(parser: FrameParser) -> list[tuple[object, ...]]:
    out = [norm(e) for e in parser.events]
    parser.events.clear()
    return out


def parse_all(data: bytes, side: Side = Side.SERVER, **kw: int) -> list[tuple[object, ...]]:
    parser = FrameParser(side, **kw)
    buf = bytearray(data)
    assert parser.receive_data(memoryview(buf)) == len(buf)
    return drain(parser)


def error_of(data: bytes, side: Side = Side.SERVER, **kw: int) -> ProtocolError:
    parser = FrameParser(side, **kw)
    with pytest.raises(ProtocolError) as info:
        parser.receive_data(bytearray(data))
    return info.value


# ---------------------------------------------------------------- the three ways to feed


def feed_in_place(parser: FrameParser, chunks: list[bytes]) -> list[tuple[object, ...]]:
    """The contract: unconsumed bytes (as modified) come back at the start of the next view."""
    events = []
    pending = b""
    for chunk in chunks:
        buf = bytearray(pending + chunk)
        n = parser.receive_data(memoryview(buf))
        assert 0 <= n <= len(buf)
        events += drain(parser)
        pending = bytes(buf[n:])
    return events


def feed_consume_all(parser: FrameParser, chunks: list[bytes]) -> list[tuple[object, ...]]:
    """Every view is consumed whole; partial frames are carried inside the parser."""
    events = []
    for chunk in chunks:
        assert parser.receive_data(bytearray(chunk), consume_all=True) == len(chunk)
        events += drain(parser)
    return events


def feed_ring(
    parser: FrameParser, chunks: list[bytes], ring: RingBuffer
) -> list[tuple[object, ...]]:
    """As a server would: write into a ring, parse its views (two when it wraps)."""
    events = []
    for chunk in chunks:
        data = memoryview(chunk)
        while True:
            data = data[ring.write(data) :]
            while True:
                views = ring.readable_views()
                if not views:
                    break
                n = parser.receive_data(views[0], consume_all=len(views) > 1)
                events += drain(parser)
                del views
                ring.consume(n)
                if n == 0:
                    break
            if not data:
                break
            assert ring.writable, "the parser must make room in a full ring"
    return events


# ------------------------------------------------------------------ headers and frames


@pytest.mark.parametrize(
    ("length", "size"),
    [(0, 2), (125, 2), (126, 4), (65535, 4), (65536, 10), (2**63 - 1, 10)],
)
def test_header_sizes(length: int, size: int) -> None:
    assert len(encode_header(Opcode.BINARY, length)) == size
    assert len(encode_header(Opcode.BINARY, length, mask_key=KEY)) == size + 4


def test_header_bits() -> None:
    assert encode_header(Opcode.TEXT, 5) == b"\x81\x05"
    assert encode_header(Opcode.CONT, 5, fin=False) == b"\x00\x05"
    assert encode_header(Opcode.PING, 0, rsv=5) == b"\xd9\x00"
    assert encode_header(Opcode.BINARY, 300, mask_key=KEY) == b"\x82\xfe\x01\x2c" + KEY
    assert encode_header(Opcode.BINARY, 70000) == b"\x82\x7f" + struct.pack("!Q", 70000)
    assert encode_header(15, 0) == b"\x8f\x00"  # reserved opcodes can be built, for tests


@pytest.mark.parametrize(
    "kwargs",
    [
        {"opcode": 16, "length": 0},
        {"opcode": -1, "length": 0},
        {"opcode": 1, "length": -1},
        {"opcode": 1, "length": 2**63},
        {"opcode": 1, "length": 0, "rsv": 8},
        {"opcode": 1, "length": 0, "mask_key": b"abc"},
    ],
)
def test_header_rejects_impossible_values(kwargs: dict[str, object]) -> None:
    with pytest.raises(ValueError):
        encode_header(**kwargs)  # type: ignore[arg-type]


def test_masked_frame_is_header_plus_masked_copy() -> None:
    payload = os.urandom(1000)
    src = bytearray(payload)
    frame = encode_frame(Opcode.BINARY, src, mask_key=KEY)
    assert frame == encode_header(Opcode.BINARY, 1000, mask_key=KEY) + ref_mask(payload, KEY)
    assert src == payload  # the source is not modified
    frame += b"resizable"  # no buffer export left behind
    assert encode_frame(Opcode.TEXT, memoryview(b"hi")) == b"\x81\x02hi"


frames = st.builds(
    Frame,
    opcode=st.sampled_from([Opcode.TEXT, Opcode.BINARY, Opcode.CONT]),
    payload=st.binary(max_size=300) | st.integers(65530, 65540).map(lambda n: b"z" * n),
    fin=st.booleans(),
) | st.builds(
    Frame,
    opcode=st.sampled_from([Opcode.PING, Opcode.PONG]),
    payload=st.binary(max_size=125),
)


@given(frame=frames, key=st.binary(min_size=4, max_size=4) | st.none())
def test_frame_round_trip(frame: Frame, key: bytes | None) -> None:
    data = bytes(frame.serialize(mask_key=key))
    parsed = Frame.parse(data + b"next", masked=key is not None)
    assert parsed == (frame, len(data))
    for cut in (0, 1, len(data) // 2, len(data) - 1):
        assert Frame.parse(data[:cut], masked=key is not None) is None


def test_frame_parse_checks() -> None:
    with pytest.raises(ProtocolError):
        Frame.parse(cframe(Opcode.TEXT), masked=False)
    with pytest.raises(ProtocolError) as info:
        Frame.parse(cframe(Opcode.TEXT, b"x" * 10), masked=True, max_size=9)
    assert info.value.code == CloseCode.MESSAGE_TOO_BIG
    with pytest.raises(ProtocolError):
        Frame.parse(cframe(Opcode.PING, fin=False), masked=True)
    with pytest.raises(ProtocolError):
        Frame(Opcode.CLOSE, b"\x03\xe8\xff").check()
    Frame(Opcode.CLOSE, b"\x03\xe8ok").check()


# ---------------------------------------------------------------------- close payloads

VALID_CODES = [1000, 1001, 1002, 1003, 1007, 1008, 1009, 1010, 1011, 1012, 1013, 1014]
VALID_CODES += [3000, 3999, 4000, 4999]
INVALID_CODES = [0, 1, 999, 1004, 1005, 1006, 1015, 1016, 1100, 2000, 2999, 5000, 65535]


def test_close_code_ranges_exhaustively() -> None:
    valid = set(range(1000, 1004)) | set(range(1007, 1015)) | set(range(3000, 5000))
    assert {c for c in range(65536) if is_valid_close_code(c)} == valid


@pytest.mark.parametrize("code", VALID_CODES)
def test_valid_close_codes_parse(code: int) -> None:
    assert parse_close(encode_close(code, "bye κόσμε")) == (code, "bye κόσμε")
    assert parse_all(cframe(Opcode.CLOSE, code.to_bytes(2, "big"))) == [("close", code, "")]


@pytest.mark.parametrize("code", INVALID_CODES)
def test_invalid_close_codes_are_1002(code: int) -> None:
    assert error_of(cframe(Opcode.CLOSE, code.to_bytes(2, "big"))).code == 1002
    with pytest.raises(ValueError):
        encode_close(code)


def test_close_payload_rules() -> None:
    assert parse_close(b"") == (1005, "")
    assert encode_close(None) == b""
    assert error_of(cframe(Opcode.CLOSE, b"\x03")).code == 1002
    assert error_of(cframe(Opcode.CLOSE, b"\x03\xe8\xce\xba\xe1\xbd")).code == 1007
    assert error_of(cframe(Opcode.CLOSE, b"\x03\xe8" + b"\xed\xa0\x80")).code == 1007
    assert parse_close(b"\x03\xe8" + "é".encode() * 61) == (1000, "é" * 61)
    with pytest.raises(ValueError):
        encode_close(1000, "x" * 124)
    with pytest.raises(ValueError):
        encode_close(None, "reason without code")


# ----------------------------------------------------------------------- parser rules


def test_lengths_7_16_64() -> None:
    for size in (0, 1, 125, 126, 127, 65535, 65536, 100_000):
        payload = os.urandom(size)
        assert parse_all(cframe(Opcode.BINARY, payload), in_place_limit=1 << 20) == [
            ("message", Opcode.BINARY, payload)
        ]


@pytest.mark.parametrize(
    "header",
    [
        b"\x82\xfe\x00\x7d",  # 125 in 16 bits
        b"\x82\xfe\x00\x00",
        b"\x82\xff" + struct.pack("!Q", 65535),  # fits 16 bits
        b"\x82\xff" + struct.pack("!Q", 0),
        b"\x82\xff" + struct.pack("!Q", 2**63),  # most significant bit set
        b"\x82\xff" + struct.pack("!Q", 2**64 - 1),
    ],
    ids=["16bit-125", "16bit-0", "64bit-65535", "64bit-0", "64bit-msb", "64bit-max"],
)
def test_bad_length_encodings_are_1002(header: bytes) -> None:
    masked = header[:1] + bytes([header[1] | 0x80]) + header[2:] + KEY
    assert error_of(masked).code == 1002  # from the header alone, before any payload


def test_masking_rules() -> None:
    assert error_of(bytes(encode_frame(Opcode.TEXT, b"hi")), Side.SERVER).code == 1002
    assert error_of(cframe(Opcode.TEXT, b"hi"), Side.CLIENT).code == 1002
    assert parse_all(bytes(encode_frame(Opcode.TEXT, b"hi")), Side.CLIENT) == [
        ("message", Opcode.TEXT, b"hi")
    ]


def test_zero_mask_key_is_a_mask() -> None:
    data = bytes(encode_frame(Opcode.TEXT, b"plain", mask_key=b"\0\0\0\0"))
    assert parse_all(data) == [("message", Opcode.TEXT, b"plain")]


@pytest.mark.parametrize("rsv", range(1, 8))
@pytest.mark.parametrize("opcode", [Opcode.TEXT, Opcode.BINARY, Opcode.PING, Opcode.CLOSE])
def test_reserved_bits_are_1002(rsv: int, opcode: int) -> None:
    assert error_of(cframe(opcode, b"", rsv=rsv)).code == 1002


@pytest.mark.parametrize("opcode", [3, 4, 5, 6, 7, 11, 12, 13, 14, 15])
def test_reserved_opcodes_are_1002(opcode: int) -> None:
    assert error_of(cframe(opcode, b"payload")).code == 1002


@pytest.mark.parametrize("opcode", [Opcode.PING, Opcode.PONG, Opcode.CLOSE])
def test_control_frame_rules(opcode: int) -> None:
    payload = b"\x03\xe8" + b"r" * 123 if opcode == Opcode.CLOSE else b"p" * 125
    assert len(parse_all(cframe(opcode, payload))) == 1
    assert error_of(cframe(opcode, payload + b"x")).code == 1002  # 126 bytes
    assert error_of(cframe(opcode, b"", fin=False)).code == 1002


def test_fragmentation_rules() -> None:
    text = "κόσμε".encode()
    stream = (
        cframe(Opcode.TEXT, text[:3], fin=False)
        + cframe(Opcode.PING, b"1")
        + cframe(Opcode.CONT, text[3:7], fin=False)
        + cframe(Opcode.PONG, b"2")
        + cframe(Opcode.CONT, text[7:])
        + cframe(Opcode.BINARY, b"next")
    )
    assert parse_all(stream) == [
        ("ping", b"1"),
        ("pong", b"2"),
        ("message", Opcode.TEXT, text),
        ("message", Opcode.BINARY, b"next"),
    ]
    assert error_of(cframe(Opcode.CONT, b"x")).code == 1002
    assert error_of(cframe(Opcode.CONT, b"x", fin=False)).code == 1002
    new_inside = cframe(Opcode.TEXT, b"a", fin=False) + cframe(Opcode.BINARY, b"b")
    assert error_of(new_inside).code == 1002
    assert error_of(cframe(Opcode.TEXT, b"a", fin=False) + cframe(Opcode.TEXT, b"b")).code == 1002


def test_utf8_fails_at_first_invalid_byte_across_fragments_and_chops() -> None:
    # Fragment 2 makes the text invalid (F4 90 = above U+10FFFF): the error
    # comes with fragment 2 even though fragment 3 never arrives.
    parser = FrameParser(Side.SERVER)
    assert parser.receive_data(bytearray(cframe(Opcode.TEXT, "κόσμε".encode(), fin=False))) > 0
    with pytest.raises(ProtocolError) as info:
        parser.receive_data(bytearray(cframe(Opcode.CONT, b"\xf4", fin=False) + cframe(0, b"\x90")))
    assert info.value.code == 1007
    # One frame whose payload arrives in pieces: fails on the piece with the bad byte.
    frame = cframe(Opcode.TEXT, "κόσμε".encode() + b"\xf4\x90\x80\x80" + b"x" * 1000)
    parser = FrameParser(Side.SERVER)
    buf = bytearray(frame[:19])  # 8-byte header + "κόσμε" (10 bytes) + F4
    assert parser.receive_data(buf) == 0  # incomplete, valid so far
    with pytest.raises(ProtocolError) as info:
        parser.receive_data(buf + frame[19:20])  # + 90: invalid now
    assert info.value.code == 1007
    with pytest.raises(ProtocolError):  # and it stays failed
        parser.receive_data(bytearray(cframe(Opcode.PING)))


def test_text_ending_mid_character_is_1007() -> None:
    assert error_of(cframe(Opcode.TEXT, b"ok\xce")).code == 1007
    stream = cframe(Opcode.TEXT, b"ok\xce", fin=False) + cframe(Opcode.CONT, b"")
    assert error_of(stream).code == 1007
    stream = cframe(Opcode.TEXT, b"ok\xce", fin=False) + cframe(Opcode.CONT, b"\xba")
    assert parse_all(stream) == [("message", Opcode.TEXT, "okκ".encode())]


def test_binary_is_not_validated() -> None:
    data = b"\xff\xfe\xed\xa0\x80"
    assert parse_all(cframe(Opcode.BINARY, data)) == [("message", Opcode.BINARY, data)]


def test_max_size_is_checked_from_the_header() -> None:
    parser = FrameParser(Side.SERVER, max_size=1000)
    header = encode_header(Opcode.BINARY, 1001, mask_key=KEY)
    with pytest.raises(ProtocolError) as info:
        parser.receive_data(bytearray(header))  # no payload sent at all
    assert info.value.code == 1009
    assert parse_all(cframe(Opcode.BINARY, b"x" * 1000), max_size=1000)
    fragmented = cframe(Opcode.TEXT, b"x" * 600, fin=False) + cframe(Opcode.CONT, b"x" * 401)
    assert error_of(fragmented, max_size=1000).code == 1009
    ok = cframe(Opcode.TEXT, b"x" * 600, fin=False) + cframe(Opcode.PING, b"p" * 125)
    ok += cframe(Opcode.CONT, b"x" * 400)  # control frames do not count
    assert len(parse_all(ok, max_size=1000)) == 2
    huge = encode_header(Opcode.BINARY, 2**62, mask_key=KEY)
    assert error_of(huge).code == 1009


def test_incomplete_frames_are_not_consumed() -> None:
    stream = cframe(Opcode.TEXT, b"one") + cframe(Opcode.BINARY, b"two" * 100)
    parser = FrameParser(Side.SERVER)
    first = len(cframe(Opcode.TEXT, b"one"))
    for cut in range(first, len(stream)):
        parser = FrameParser(Side.SERVER)
        assert parser.receive_data(bytearray(stream[:cut])) == first
        assert drain(parser) == [("message", Opcode.TEXT, b"one")]
    for cut in range(first):
        assert FrameParser(Side.SERVER).receive_data(bytearray(stream[:cut])) == 0


def test_single_frame_message_is_a_view_unmasked_in_place() -> None:
    buf = bytearray(cframe(Opcode.TEXT, b"hello") + cframe(Opcode.BINARY, b"world"))
    parser = FrameParser(Side.SERVER)
    parser.receive_data(memoryview(buf))
    first, second = parser.events
    assert isinstance(first, Message) and isinstance(first.data, memoryview)
    assert first.data == b"hello" and second.data == b"world" and first.text == "hello"
    assert b"hello" in buf and b"world" in buf  # unmasked where it lay: zero copy
    buf_view = memoryview(buf)
    assert first.data.obj is buf_view.obj


def test_fragmented_message_is_assembled() -> None:
    parser = FrameParser(Side.SERVER)
    parser.receive_data(bytearray(cframe(1, b"ab", fin=False) + cframe(0, b"cd")))
    [event] = parser.events
    assert isinstance(event, Message) and isinstance(event.data, bytearray)
    assert event.data == b"abcd"


def test_large_frame_is_streamed_past_the_in_place_limit() -> None:
    payload = os.urandom(5000)
    frame = cframe(Opcode.BINARY, payload)
    parser = FrameParser(Side.SERVER, in_place_limit=1024)
    consumed = 0
    for i in range(0, len(frame), 700):
        buf = bytearray(frame[i : i + 700])
        assert parser.receive_data(buf) == len(buf)  # streamed: every byte is taken
        consumed += len(buf)
    assert drain(parser) == [("message", Opcode.BINARY, payload)]
    # At the limit itself the frame stays in place.
    small = cframe(Opcode.BINARY, b"x" * 1016)
    assert len(small) == 1024
    parser = FrameParser(Side.SERVER, in_place_limit=1024)
    assert parser.receive_data(bytearray(small[:-1])) == 0


def test_nothing_after_a_close_frame_is_parsed() -> None:
    stream = cframe(Opcode.CLOSE, b"\x03\xe8") + cframe(Opcode.TEXT, b"late") + b"\xff\xff"
    parser = FrameParser(Side.SERVER)
    assert parser.receive_data(bytearray(stream)) == len(stream)
    assert drain(parser) == [("close", 1000, "")]
    assert parser.receive_data(bytearray(b"\x00garbage")) == 8
    assert drain(parser) == []


def test_events_before_an_error_are_kept() -> None:
    stream = cframe(Opcode.TEXT, b"fine") + cframe(5, b"") + cframe(Opcode.PING)
    parser = FrameParser(Side.SERVER)
    with pytest.raises(ProtocolError):
        parser.receive_data(bytearray(stream))
    assert drain(parser) == [("message", Opcode.TEXT, b"fine")]


def test_read_only_input() -> None:
    with pytest.raises(TypeError):
        FrameParser(Side.SERVER).receive_data(cframe(Opcode.TEXT, b"x"))
    parser = FrameParser(Side.CLIENT)  # nothing to unmask: bytes will do
    parser.receive_data(bytes(encode_frame(Opcode.TEXT, "é".encode())))
    assert drain(parser) == [("message", Opcode.TEXT, "é".encode())]


def test_constructor_arguments() -> None:
    with pytest.raises(TypeError):
        FrameParser("server")  # type: ignore[arg-type]
    with pytest.raises(ValueError):
        FrameParser(Side.SERVER, max_size=-1)


# ------------------------------------------------------------------------ hypothesis

# A message: opcode, payload, the cut points of its fragments, and control
# frames to put after each fragment but the last.
texts = st.text(max_size=80).map(str.encode)
blobs = st.binary(max_size=300) | st.sampled_from([125, 126, 65535, 65536]).map(os.urandom)


@st.composite
def streams(draw: st.DrawFn, masked: bool) -> tuple[bytes, list[tuple[object, ...]]]:
    """A valid stream of frames and the events it must parse to."""
    data = bytearray()
    expected: list[tuple[object, ...]] = []

    def put(opcode: int, payload: bytes, fin: bool = True) -> None:
        key = draw(st.binary(min_size=4, max_size=4)) if masked else None
        data.extend(encode_frame(opcode, payload, fin=fin, mask_key=key))

    for _ in range(draw(st.integers(1, 5))):
        if draw(st.integers(0, 4)) == 0:
            kind = draw(st.sampled_from([Opcode.PING, Opcode.PONG]))
            payload = draw(st.binary(max_size=125))
            put(kind, payload)
            expected.append((kind.name.lower(), payload))
            continue
        opcode = draw(st.sampled_from([Opcode.TEXT, Opcode.BINARY]))
        payload = draw(texts if opcode == Opcode.TEXT else blobs)
        cuts = sorted(draw(st.lists(st.integers(0, len(payload)), max_size=3)))
        pieces = [payload[a:b] for a, b in itertools.pairwise([0, *cuts, len(payload)])]
        for i, piece in enumerate(pieces):
            last = i == len(pieces) - 1
            put(opcode if i == 0 else Opcode.CONT, piece, fin=last)
            if not last and draw(st.booleans()):
                ping = draw(st.binary(max_size=125))
                put(Opcode.PING, ping)
                expected.append(("ping", ping))
        expected.append(("message", opcode, payload))
    if draw(st.booleans()):
        put(Opcode.CLOSE, encode_close(1000, "done"))
        expected.append(("close", 1000, "done"))
        data.extend(b"ignored after close")
    return bytes(data), expected


@st.composite
def chunked(draw: st.DrawFn, data: bytes) -> list[bytes]:
    if len(data) > 2000:  # large payloads: a few cuts, not a byte-by-byte walk
        cuts = draw(st.lists(st.integers(0, len(data)), max_size=8))
    else:
        cuts = draw(st.lists(st.integers(0, len(data)), max_size=40))
    points = [0, *sorted(cuts), len(data)]
    return [data[a:b] for a, b in itertools.pairwise(points)]


FEEDERS: dict[str, Callable[[Side], tuple[FrameParser, Callable[..., object]]]] = {
    "in place": lambda side: (FrameParser(side, in_place_limit=1 << 20), feed_in_place),
    "streamed": lambda side: (FrameParser(side, in_place_limit=40), feed_in_place),
    "consume all": lambda side: (FrameParser(side), feed_consume_all),
    "ring": lambda side: (
        FrameParser(side, in_place_limit=256),
        lambda p, chunks: feed_ring(p, chunks, RingBuffer(256)),
    ),
}


def test_byte_by_byte_in_every_mode() -> None:
    stream = (
        cframe(Opcode.TEXT, "κόσμε".encode() * 30, fin=False)
        + cframe(Opcode.PING, b"p")
        + cframe(Opcode.CONT, b"x" * 200)
        + cframe(Opcode.BINARY, os.urandom(2000))
        + cframe(Opcode.TEXT, b"")
        + cframe(Opcode.CLOSE, encode_close(1000, "done"))
    )
    expected = parse_all(stream, in_place_limit=1 << 20)
    assert len(expected) == 5
    chunks = [stream[i : i + 1] for i in range(len(stream))]
    for how, make in FEEDERS.items():
        parser, feed = make(Side.SERVER)
        assert feed(parser, chunks) == expected, how


@settings(max_examples=60, suppress_health_check=[HealthCheck.too_slow], deadline=None)
@given(data=st.data(), side=st.sampled_from(Side), how=st.sampled_from(sorted(FEEDERS)))
def test_any_split_of_a_valid_stream_parses_the_same(
    data: st.DataObject, side: Side, how: str
) -> None:
    stream, expected = data.draw(streams(masked=side is Side.SERVER))
    chunks = data.draw(chunked(stream))
    parser, feed = FEEDERS[how](side)
    assert feed(parser, chunks) == expected


@settings(max_examples=300, deadline=None)
@given(
    data=st.data(),
    side=st.sampled_from(Side),
    how=st.sampled_from(sorted(FEEDERS)),
    noise=st.binary(max_size=400),
)
def test_random_bytes_raise_only_protocol_error(
    data: st.DataObject, side: Side, how: str, noise: bytes
) -> None:
    parser, feed = FEEDERS[how](side)
    parser.max_size = 100_000
    try:
        feed(parser, data.draw(chunked(noise)))
    except ProtocolError as exc:
        assert exc.code in (1002, 1007, 1009)


@settings(max_examples=200, deadline=None)
@given(data=st.data(), side=st.sampled_from(Side), how=st.sampled_from(sorted(FEEDERS)))
def test_damaged_valid_streams_raise_only_protocol_error(
    data: st.DataObject, side: Side, how: str
) -> None:
    stream, _ = data.draw(streams(masked=side is Side.SERVER))
    damaged = bytearray(stream)
    for _ in range(data.draw(st.integers(1, 4))):
        damaged[data.draw(st.integers(0, len(damaged) - 1))] ^= 1 << data.draw(st.integers(0, 7))
    parser, feed = FEEDERS[how](side)
    try:
        feed(parser, data.draw(chunked(bytes(damaged))))
    except ProtocolError as exc:
        assert exc.code in (1002, 1007, 1009)
