"""csrc/core/wsmask.c and csrc/core/utf8.c against pure-Python references.

Masking: every offset, length and alignment of source and destination, in
place and as a copy, in one piece and in pieces.  UTF-8: the validator and
the fused unmask+validate call against Python's own decoder, including the
index of the first invalid byte, with the input split at every position.
"""

from __future__ import annotations

import itertools

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from wsstls._native import ffi, lib

ACCEPT = lib.UTF8_ACCEPT
REJECT = lib.UTF8_REJECT


def key_int(key: bytes) -> int:
    return int.from_bytes(key, "little")


def ref_mask(data: bytes, key: bytes, offset: int = 0) -> bytes:
    return bytes(b ^ key[(offset + i) % 4] for i, b in enumerate(data))


def c_mask(buf: bytearray, start: int, n: int, key: bytes, offset: int) -> None:
    cbuf = ffi.from_buffer("unsigned char[]", buf)
    lib.ws_mask(cbuf + start, n, key_int(key), offset)
    ffi.release(cbuf)


# ------------------------------------------------------------------ masking

keys = st.binary(min_size=4, max_size=4)


@given(data=st.binary(max_size=300), key=keys, offset=st.integers(0, 11), align=st.integers(0, 15))
def test_mask_in_place_matches_reference(data: bytes, key: bytes, offset: int, align: int) -> None:
    guard = b"\xa5" * 16
    buf = bytearray(guard[:align] + data + guard)
    c_mask(buf, align, len(data), key, offset)
    assert bytes(buf[align : align + len(data)]) == ref_mask(data, key, offset)
    assert buf[:align] == guard[:align] and buf[align + len(data) :] == guard  # nothing else


@given(
    data=st.binary(max_size=300),
    key=keys,
    offset=st.integers(0, 7),
    src_align=st.integers(0, 15),
    dst_align=st.integers(0, 15),
)
def test_mask_copy_matches_reference(
    data: bytes, key: bytes, offset: int, src_align: int, dst_align: int
) -> None:
    src = bytearray(b"\x00" * src_align + data)
    dst = bytearray(b"\x5a" * (dst_align + len(data) + 16))
    csrc = ffi.from_buffer("unsigned char[]", src)
    cdst = ffi.from_buffer("unsigned char[]", dst)
    lib.ws_mask_copy(cdst + dst_align, csrc + src_align, len(data), key_int(key), offset)
    assert bytes(dst[dst_align : dst_align + len(data)]) == ref_mask(data, key, offset)
    assert dst[:dst_align] == b"\x5a" * dst_align
    assert dst[dst_align + len(data) :] == b"\x5a" * 16
    assert bytes(src[src_align:]) == data  # the source is not touched


@given(data=st.binary(max_size=200), key=keys, cuts=st.lists(st.integers(0, 200), max_size=6))
def test_mask_in_pieces_equals_mask_whole(data: bytes, key: bytes, cuts: list[int]) -> None:
    buf = bytearray(data)
    points = sorted({0, len(data), *(c for c in cuts if c <= len(data))})
    for a, b in itertools.pairwise(points):
        c_mask(buf, a, b - a, key, a)  # each piece passes its offset in the payload
    assert bytes(buf) == ref_mask(data, key)


def test_mask_is_an_involution_on_large_buffers() -> None:
    data = bytes(range(256)) * 4099  # odd size: head, words and tail
    buf = bytearray(data)
    for offset in range(4):
        c_mask(buf, 1, len(data) - 1, b"\x12\x34\x56\x78", offset)
        assert bytes(buf[1:]) == ref_mask(data[1:], b"\x12\x34\x56\x78", offset)
        c_mask(buf, 1, len(data) - 1, b"\x12\x34\x56\x78", offset)
        assert bytes(buf) == data


def test_mask_zero_length_and_zero_key() -> None:
    buf = bytearray(b"abc")
    c_mask(buf, 0, 0, b"\xff\xff\xff\xff", 3)
    c_mask(buf, 0, 3, b"\x00\x00\x00\x00", 1)
    assert buf == b"abc"


# -------------------------------------------------------------------- UTF-8

# Completions that reach every class of continuation byte (80..8F, 90..9F,
# A0..BF): a prefix that none of them completes cannot be completed at all.
_TAILS = [bytes(t) for k in range(4) for t in itertools.product((0x80, 0x90, 0xA0, 0xBF), repeat=k)]


def is_valid_prefix(data: bytes) -> bool:
    """True when some valid UTF-8 string starts with ``data`` (by Python's decoder)."""
    try:
        data.decode("utf-8")
        return True
    except UnicodeDecodeError as exc:
        tail = data[exc.start :]
    if len(tail) > 3:  # longer than any incomplete character: truly invalid
        return False
    for completion in _TAILS:
        try:
            (tail + completion).decode("utf-8")
            return True
        except UnicodeDecodeError:
            pass
    return False


def ref_first_invalid(data: bytes) -> int:
    """Index of the first byte at which ``data`` stops being a valid prefix, or len(data)."""
    lo, hi = 0, len(data)  # data[:lo] is a valid prefix; find the largest such length
    while lo < hi:
        mid = (lo + hi + 1) // 2
        if is_valid_prefix(data[:mid]):
            lo = mid
        else:
            hi = mid - 1
    return lo


def ref_valid(data: bytes) -> bool:
    try:
        data.decode("utf-8")
        return True
    except UnicodeDecodeError:
        return False


def c_validate(chunks: list[bytes]) -> tuple[int, int]:
    """Feed chunks to utf8_validate; (index of the first invalid byte or total, final state)."""
    state = ffi.new("uint32_t *")
    seen = 0
    for chunk in chunks:
        good = lib.utf8_validate(state, chunk, len(chunk))
        if good < len(chunk):
            assert state[0] == REJECT
            return seen + good, state[0]
        seen += len(chunk)
    return seen, state[0]


def check_validator(data: bytes, chunks: list[bytes]) -> None:
    index, state = c_validate(chunks)
    assert index == ref_first_invalid(data)
    assert (state == ACCEPT) == ref_valid(data)


# Text that exercises every length of encoding and the edges of each range.
_EDGE_CHARS = "\x00\x7f\x80\u07ff\u0800\ud7ff\ue000\ufffd\ufffe\uffff\U00010000\U0010ffff"
chars = st.characters(exclude_categories=["Cs"]) | st.sampled_from(_EDGE_CHARS)
valid_utf8 = st.text(alphabet=chars, max_size=60).map(lambda s: s.encode("utf-8"))

# Byte patterns that break UTF-8 in each known way.
_BAD = [
    b"\x80",  # stray continuation
    b"\xbf",
    b"\xc0\xaf",  # overlong "/"
    b"\xc1\xbf",
    b"\xe0\x80\xaf",  # overlong, 3 bytes
    b"\xe0\x9f\xbf",
    b"\xf0\x80\x80\xaf",  # overlong, 4 bytes
    b"\xf0\x8f\xbf\xbf",
    b"\xed\xa0\x80",  # surrogates U+D800, U+DFFF
    b"\xed\xbf\xbf",
    b"\xed\xa0\x80\xed\xb0\x80",  # a surrogate pair, UTF-16 style
    b"\xf4\x90\x80\x80",  # U+110000
    b"\xf5\x80\x80\x80",
    b"\xf8\x88\x80\x80\x80",  # 5- and 6-byte forms
    b"\xfc\x84\x80\x80\x80\x80",
    b"\xfe",
    b"\xff",
    b"\xc2",  # truncated sequences
    b"\xe1\x80",
    b"\xf1\x80\x80",
    b"\xc2\x41",  # lead byte followed by ASCII
    b"\xe1\x80\x41",
]


@st.composite
def utf8_with_damage(draw: st.DrawFn) -> bytes:
    parts = draw(st.lists(valid_utf8 | st.sampled_from(_BAD), max_size=6))
    return b"".join(parts)


@st.composite
def split(draw: st.DrawFn, data: bytes) -> list[bytes]:
    cuts = sorted(draw(st.lists(st.integers(0, len(data)), max_size=5)))
    points = [0, *cuts, len(data)]
    return [data[a:b] for a, b in itertools.pairwise(points)]


@given(valid_utf8)
def test_valid_utf8_is_accepted(data: bytes) -> None:
    check_validator(data, [data])


@given(st.binary(max_size=80))
def test_random_bytes_against_python(data: bytes) -> None:
    check_validator(data, [data])


@given(st.data())
def test_damaged_text_split_anywhere(data: st.DataObject) -> None:
    text = data.draw(utf8_with_damage())
    check_validator(text, data.draw(split(text)))


@pytest.mark.parametrize("bad", _BAD, ids=[b.hex() for b in _BAD])
def test_each_damage_split_at_every_position(bad: bytes) -> None:
    text = "κόσμε".encode() + bad + b"tail"
    expected = ref_first_invalid(text)
    for cut in range(len(text) + 1):
        index, state = c_validate([text[:cut], text[cut:]])
        assert index == expected, cut
        assert state != ACCEPT


@pytest.mark.slow
def test_every_two_byte_sequence() -> None:
    for a, b in itertools.product(range(256), repeat=2):
        data = bytes((a, b))
        check_validator(data, [data[:1], data[1:]])


def test_long_valid_text_is_accepted_and_first_invalid_byte_found() -> None:
    text = ("ASCII runs then κόσμε, 中文, 𝄞 " * 500).encode()
    check_validator(text, [text])
    for at in (0, 7, 8, 15, 16, 1000, len(text) - 1):
        damaged = text[:at] + b"\xff" + text[at:]
        assert c_validate([damaged]) == (ref_first_invalid(damaged), REJECT)


def test_reject_is_sticky_and_bad_state_is_rejected() -> None:
    state = ffi.new("uint32_t *", REJECT)
    assert lib.utf8_validate(state, b"abc", 3) == 0
    for bogus in (3, 7, 54, 60, 63, 64, 1000, 2**32 - 1):
        state[0] = bogus  # not a DFA state: must not index out of the tables
        assert lib.utf8_validate(state, b"abc", 3) == 0
        assert state[0] == REJECT


# ----------------------------------------------------- fused unmask + validate


@given(data=st.data(), key=keys, align=st.integers(0, 15))
def test_unmask_utf8_matches_separate_steps(data: st.DataObject, key: bytes, align: int) -> None:
    text = data.draw(utf8_with_damage() | valid_utf8)
    pieces = data.draw(split(text))
    buf = bytearray(b"\x00" * align + ref_mask(text, key))
    cbuf = ffi.from_buffer("unsigned char[]", buf)
    state = ffi.new("uint32_t *")
    expected = ref_first_invalid(text)
    pos, index = 0, len(text)
    for piece in pieces:
        good = lib.ws_unmask_utf8(state, cbuf + align + pos, len(piece), key_int(key), pos)
        if good < len(piece):
            index = pos + good
            break
        pos += len(piece)
    ffi.release(cbuf)
    assert index == expected
    # Everything up to and including the first invalid byte is unmasked.
    upto = min(index + 1, len(text))
    assert bytes(buf[align : align + upto]) == text[:upto]
    if index == len(text):
        assert (state[0] == ACCEPT) == ref_valid(text)
    else:
        assert state[0] == REJECT


@settings(max_examples=50)
@given(key=keys, offset=st.integers(0, 3))
def test_unmask_utf8_long_mixed_text(key: bytes, offset: int) -> None:
    text = ("héllo wörld κόσμε 𝄞 " * 300).encode()
    buf = bytearray(ref_mask(text, key, offset))
    state = ffi.new("uint32_t *")
    cbuf = ffi.from_buffer("unsigned char[]", buf)
    assert lib.ws_unmask_utf8(state, cbuf, len(buf), key_int(key), offset) == len(text)
    ffi.release(cbuf)
    assert bytes(buf) == text and state[0] == ACCEPT
