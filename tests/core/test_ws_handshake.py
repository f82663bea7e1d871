"""The opening handshake: request parsing (incremental, limits, errors), the 101,
the client's request and response checks, and interop with the websockets library."""

from __future__ import annotations

import base64
import hashlib
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st
from websockets.client import ClientProtocol
from websockets.extensions.permessage_deflate import ClientPerMessageDeflateFactory
from websockets.server import ServerProtocol
from websockets.uri import parse_uri

from wsstls.ws import (
    MAX_HEAD_SIZE,
    MAX_HEADERS,
    MAX_LINE,
    ClientHandshake,
    HandshakeError,
    ServerHandshake,
    accept_key,
)

KEY = "dGhlIHNhbXBsZSBub25jZQ=="
ACCEPT = "s3pPLMBiTxaQ9kYGzzhZRbK+xOo="


def request(*extra: str, drop: tuple[str, ...] = (), start: str = "GET /chat HTTP/1.1") -> bytes:
    """A valid request (the RFC 6455 example) with fields removed and appended."""
    fields = {
        "host": "Host: server.example.com",
        "upgrade": "Upgrade: websocket",
        "connection": "Connection: Upgrade",
        "key": f"Sec-WebSocket-Key: {KEY}",
        "version": "Sec-WebSocket-Version: 13",
    }
    lines = [start] + [v for k, v in fields.items() if k not in drop] + list(extra)
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")


def status_of(response: bytes) -> int:
    return int(response.split(b" ", 2)[1])


def headers_of(response: bytes) -> dict[str, str]:
    head = response.split(b"\r\n\r\n", 1)[0].decode("latin-1").split("\r\n")[1:]
    return {k.lower(): v.strip() for k, _, v in (line.partition(":") for line in head)}


def fail(data: bytes, **limits: int) -> HandshakeError:
    with pytest.raises(HandshakeError) as info:
        ServerHandshake(**limits).receive_data(data)
    return info.value


# ------------------------------------------------------------------ server side


def test_accept_key_rfc_example() -> None:
    assert accept_key(KEY) == ACCEPT
    assert accept_key(KEY.encode()) == ACCEPT


@given(st.binary(max_size=80))
def test_accept_key_is_sha1_of_key_and_guid(key: bytes) -> None:
    """The C accept key (csrc/core/wshandshake.c) against the RFC's formula in Python."""
    guid = b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11"
    model = base64.b64encode(hashlib.sha1(key + guid).digest()).decode("ascii")
    assert accept_key(key) == model


def test_the_guid_has_one_home() -> None:
    """The GUID is written once in wsstls's own sources (the peers are separate programs)."""
    root = Path(__file__).resolve().parents[2]
    sources = [*root.glob("csrc/**/*.[ch]"), *root.glob("wsstls/**/*.py")]
    homes = [
        str(p.relative_to(root))
        for p in sources
        if "peers" not in p.parts and "258EAFA5-E914-47DA-95CA-C5AB0DC85B11" in p.read_text()
    ]
    assert homes == ["csrc/core/wshandshake.c"]


def test_valid_request_gets_101() -> None:
    hs = ServerHandshake()
    data = request()
    assert hs.receive_data(data) == len(data)
    assert hs.request is not None
    assert hs.request.target == "/chat"
    assert hs.request.host == "server.example.com"
    assert hs.request.key == KEY
    assert hs.request.get("SEC-WEBSOCKET-VERSION") == "13"
    assert hs.request.get("origin") is None
    assert hs.response == (
        b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
        b"Sec-WebSocket-Accept: " + ACCEPT.encode() + b"\r\n\r\n"
    )
    assert hs.receive_data(b"more") == 0  # done: nothing more is taken


def test_request_one_byte_at_a_time_leaves_trailing_bytes() -> None:
    data = request("Origin: http://example.com")
    trailing = b"\x81\x85frame"
    hs = ServerHandshake()
    stream = data + trailing
    used = [hs.receive_data(stream[i : i + 1]) for i in range(len(stream))]
    assert used == [1] * len(data) + [0] * len(trailing)
    assert hs.request is not None and hs.request.get("Origin") == "http://example.com"


@pytest.mark.parametrize("chunk", [2, 3, 5, 64])
def test_request_in_chunks_with_frames_behind(chunk: int) -> None:
    stream = request() + b"\x81\x80abcd" * 3
    hs = ServerHandshake()
    pos = 0
    while hs.request is None:
        used = hs.receive_data(stream[pos : pos + chunk])
        assert used <= chunk
        pos += used
    assert pos == len(request())  # stopped exactly at the end of the request


def test_header_names_and_tokens_are_case_insensitive() -> None:
    data = request(
        "connection: keep-alive, UPGRADE", "UPGRADE: WebSocket", drop=("upgrade", "connection")
    ).replace(b"Host:", b"hOsT:")
    hs = ServerHandshake()
    hs.receive_data(data)
    assert hs.request is not None


def test_tokens_spread_over_several_fields() -> None:
    data = request("Connection: keep-alive", "Connection: upgrade", drop=("connection",))
    hs = ServerHandshake()
    hs.receive_data(data)
    assert hs.request is not None


def test_permessage_deflate_request_gets_101_without_extensions() -> None:
    data = request(
        "Sec-WebSocket-Extensions: permessage-deflate; client_max_window_bits",
        "Sec-WebSocket-Protocol: chat, superchat",
    )
    hs = ServerHandshake()
    hs.receive_data(data)
    assert status_of(hs.response) == 101
    headers = headers_of(hs.response)
    assert "sec-websocket-extensions" not in headers
    assert "sec-websocket-protocol" not in headers


BAD_REQUESTS = {
    "post": request(start="POST /chat HTTP/1.1"),
    "lowercase method": request(start="get /chat HTTP/1.1"),
    "http/1.0": request(start="GET /chat HTTP/1.0"),
    "http/2": request(start="GET /chat HTTP/2.0"),
    "two spaces": request(start="GET  /chat HTTP/1.1"),
    "no version": request(start="GET /chat"),
    "control char in target": request(start="GET /ch\x01at HTTP/1.1"),
    "missing host": request(drop=("host",)),
    "two hosts": request("Host: other.example.com"),
    "missing upgrade": request(drop=("upgrade",)),
    "upgrade h2c": request("Upgrade: h2c", drop=("upgrade",)),
    "missing connection": request(drop=("connection",)),
    "connection keep-alive": request("Connection: keep-alive", drop=("connection",)),
    "missing key": request(drop=("key",)),
    "two keys": request(f"Sec-WebSocket-Key: {KEY}"),
    "short key": request(
        f"Sec-WebSocket-Key: {base64.b64encode(b'x' * 15).decode()}", drop=("key",)
    ),
    "long key": request(
        f"Sec-WebSocket-Key: {base64.b64encode(b'x' * 17).decode()}", drop=("key",)
    ),
    "key not base64": request("Sec-WebSocket-Key: !!!!!!!!!!!!!!!!!!!!!!==", drop=("key",)),
    "key unpadded": request("Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ", drop=("key",)),
    "missing version": request(drop=("version",)),
    "field without colon": request("NoColonHere"),
    "space before colon": request("X-Test : 1"),
    "obs-fold": request("X-Test: a", " folded"),
    "control char in value": request("X-Test: a\x7fb"),
    "garbage": b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03\r\n\r\n",  # TLS to a ws:// port
    "empty line first": b"\r\n" + request(),
}


@pytest.mark.parametrize("data", BAD_REQUESTS.values(), ids=BAD_REQUESTS.keys())
def test_malformed_request_gets_400(data: bytes) -> None:
    exc = fail(data)
    assert exc.status == 400
    assert status_of(exc.response) == 400
    body = exc.response.split(b"\r\n\r\n", 1)[1]
    assert headers_of(exc.response)["content-length"] == str(len(body))
    assert headers_of(exc.response)["connection"] == "close"


@pytest.mark.parametrize("version", ["8", "12", "14", "13, 8", ""])
def test_wrong_version_gets_426_naming_13(version: str) -> None:
    exc = fail(request(f"Sec-WebSocket-Version: {version}", drop=("version",)))
    assert exc.status == 426
    headers = headers_of(exc.response)
    assert status_of(exc.response) == 426
    assert headers["sec-websocket-version"] == "13"
    assert headers["upgrade"] == "websocket"


def test_two_version_fields_get_426() -> None:
    assert fail(request("Sec-WebSocket-Version: 8")).status == 426


def test_long_request_line_fails_before_its_end() -> None:
    hs = ServerHandshake()
    line = b"GET /" + b"a" * MAX_LINE
    with pytest.raises(HandshakeError) as info:
        for i in range(len(line)):  # never sends CRLF: must not wait for it
            hs.receive_data(line[i : i + 1])
    assert info.value.status == 414


def test_request_line_at_the_limit_is_fine() -> None:
    start = "GET /" + "a" * (MAX_LINE - len("GET / HTTP/1.1")) + " HTTP/1.1"
    assert len(start) == MAX_LINE
    hs = ServerHandshake()
    hs.receive_data(request(start=start))
    assert hs.request is not None


def test_head_larger_than_limit_fails_before_its_end() -> None:
    hs = ServerHandshake()
    data = request().replace(b"\r\n\r\n", b"\r\n") + b"X-Pad: " + b"p" * 1000 + b"\r\n"
    with pytest.raises(HandshakeError) as info:
        for _ in range(MAX_HEAD_SIZE // 1000 + 2):
            hs.receive_data(data)
            data = b"X-Pad: " + b"p" * 1000 + b"\r\n"
    assert info.value.status == 431


def test_too_many_fields() -> None:
    extra = [f"X-{i}: {i}" for i in range(MAX_HEADERS)]
    assert fail(request(*extra)).status == 431
    hs = ServerHandshake()
    hs.receive_data(request(*extra[: MAX_HEADERS - 5]))
    assert hs.request is not None


def test_custom_limits() -> None:
    data = request()
    assert fail(data, max_size=len(data) - 10).status == 431
    assert fail(data, max_line=10).status == 414
    assert fail(data, max_headers=4).status == 431
    longest = max(len(line) for line in data.split(b"\r\n"))
    assert fail(data, max_line=longest - 1).status in (414, 431)
    hs = ServerHandshake(max_size=len(data) - 4, max_line=longest, max_headers=5)
    hs.receive_data(data)
    assert hs.request is not None


def test_flood_without_end_costs_at_most_the_limit() -> None:
    hs = ServerHandshake()
    hs.receive_data(request().replace(b"\r\n\r\n", b"\r\n"))
    with pytest.raises(HandshakeError) as info:
        hs.receive_data(b"X" * (10 * MAX_HEAD_SIZE))
    assert info.value.status in (431,)


# ------------------------------------------------------------------ client side


def response(key: str, *extra: str, status: str = "101 Switching Protocols") -> bytes:
    lines = [
        f"HTTP/1.1 {status}",
        "Upgrade: websocket",
        "Connection: Upgrade",
        f"Sec-WebSocket-Accept: {accept_key(key)}",
        *extra,
    ]
    return ("\r\n".join(lines) + "\r\n\r\n").encode()


def test_client_request_shape() -> None:
    hs = ClientHandshake("example.com:8080", "/echo?x=1", origin="http://example.com")
    head = hs.request.decode()
    assert head.startswith("GET /echo?x=1 HTTP/1.1\r\n")
    assert head.endswith("\r\n\r\n")
    server = ServerHandshake()
    server.receive_data(hs.request)
    assert server.request is not None
    assert server.request.host == "example.com:8080"
    assert server.request.get("origin") == "http://example.com"
    assert len(base64.b64decode(hs.key)) == 16
    assert ClientHandshake("h").key != hs.key  # random


def test_client_accepts_valid_101_byte_by_byte() -> None:
    hs = ClientHandshake("h")
    data = response(hs.key) + b"\x81\x02hi"
    used = sum(hs.receive_data(data[i : i + 1]) for i in range(len(data)))
    assert used == len(data) - 4
    assert hs.response is not None and hs.response.status == 101


@pytest.mark.parametrize(
    ("make", "status"),
    [
        (lambda key: response(key, status="200 OK"), 200),
        (lambda key: response(key, status="400 Bad Request"), 400),
        (lambda key: response("AAAAAAAAAAAAAAAAAAAAAA=="), 101),
        (lambda key: response(key, "Sec-WebSocket-Extensions: permessage-deflate"), 101),
        (lambda key: response(key, "Sec-WebSocket-Protocol: chat"), 101),
        (lambda key: response(key).replace(b"Upgrade: websocket\r\n", b""), 101),
        (lambda key: response(key).replace(b"Connection: Upgrade", b"Connection: close"), 101),
        (lambda key: response(key).replace(b"HTTP/1.1 101", b"HTTP/1.0 101"), 0),
        (lambda key: b"garbage\r\n\r\n", 0),
    ],
)
def test_client_rejects_bad_responses(make: object, status: int) -> None:
    hs = ClientHandshake("h")
    with pytest.raises(HandshakeError) as info:
        hs.receive_data(make(hs.key))  # type: ignore[operator]
    assert info.value.status == status
    assert info.value.response == b""


# ---------------------------------------------------------- websockets interop


def test_websockets_client_against_our_server() -> None:
    client = ClientProtocol(
        parse_uri("ws://example.com/chat"), extensions=[ClientPerMessageDeflateFactory()]
    )
    client.send_request(client.connect())
    hs = ServerHandshake()
    data = b"".join(client.data_to_send())
    assert b"permessage-deflate" in data
    assert hs.receive_data(data) == len(data)
    client.receive_data(hs.response)
    [resp] = client.events_received()
    assert resp.status_code == 101
    assert client.handshake_exc is None
    assert client.extensions == []  # deflate was asked for and not granted


def test_our_client_against_websockets_server() -> None:
    hs = ClientHandshake("example.com", "/chat")
    server = ServerProtocol()
    server.receive_data(hs.request)
    [req] = server.events_received()
    server.send_response(server.accept(req))
    out = b"".join(server.data_to_send())
    assert hs.receive_data(out) == len(out)
    assert hs.response is not None
