"""Connections (sans-IO, h11-style): states, echo, ping/pong, the close handshake,
failing on protocol errors, handshake failures, client masking, and interop with
the websockets library in both directions."""

from __future__ import annotations

import os

import pytest
from websockets.client import ClientProtocol
from websockets.frames import Frame as WsFrame
from websockets.frames import Opcode as WsOpcode
from websockets.server import ServerProtocol
from websockets.uri import parse_uri

from wsstls.ws import (
    ClientConnection,
    Close,
    CloseCode,
    Connection,
    Event,
    Frame,
    HandshakeError,
    Message,
    Opcode,
    Ping,
    Pong,
    ProtocolError,
    ServerConnection,
    Side,
    State,
    encode_close,
    encode_frame,
)

KEY = b"\x01\x02\x03\x04"


def cframe(opcode: int, payload: bytes = b"", *, fin: bool = True, rsv: int = 0) -> bytes:
    return bytes(encode_frame(opcode, payload, fin=fin, rsv=rsv, mask_key=KEY))


def server_frames(data: bytes) -> list[Frame]:
    """Split a server's output into frames (unmasked, checked)."""
    frames = []
    while data:
        parsed = Frame.parse(data, masked=False)
        assert parsed is not None, "truncated output"
        frame, size = parsed
        frames.append(frame)
        data = data[size:]
    return frames


def echo(conn: Connection, data: bytes) -> tuple[list[Event], bytes]:
    """Run one round of an echo server; return the events and the bytes sent."""
    buf = bytearray(data)
    n = conn.receive_data(memoryview(buf))
    events = []
    for event in conn.events():
        if isinstance(event, Message):
            conn.send_message(event.opcode, event.data)
            event = Message(event.opcode, bytearray(event.data))  # outlive the buffer
        events.append(event)
    assert n == len(buf) or conn.state is not State.CLOSED
    return events, bytes(conn.data_to_send())


def open_server() -> ServerConnection:
    client = ClientConnection("example.com")
    server = ServerConnection()
    server.receive_data(bytearray(client.data_to_send()))
    assert server.state is State.OPEN
    server.data_to_send()
    return server


# ----------------------------------------------------------------------- server


def test_handshake_then_frames_in_one_buffer() -> None:
    client = ClientConnection("example.com", "/path")
    server = ServerConnection()
    data = client.data_to_send() + cframe(Opcode.TEXT, b"hello")
    events, out = echo(server, data)
    assert server.request is not None and server.request.target == "/path"
    assert events == [Message(Opcode.TEXT, bytearray(b"hello"))]
    assert out.startswith(b"HTTP/1.1 101 ")
    assert client.receive_data(bytearray(out)) == len(out)
    assert client.state is State.OPEN
    assert [(e.opcode, bytes(e.data)) for e in client.events()] == [(Opcode.TEXT, b"hello")]  # type: ignore[union-attr]


def test_handshake_byte_by_byte_leaves_frames() -> None:
    client = ClientConnection("h")
    server = ServerConnection()
    data = bytes(client.data_to_send()) + cframe(Opcode.BINARY, b"\x00\xff")
    pending = b""
    for i in range(len(data)):
        buf = bytearray(pending + data[i : i + 1])
        n = server.receive_data(buf)
        pending = bytes(buf[n:])
    assert server.state is State.OPEN
    assert [(e.opcode, bytes(e.data)) for e in server.events()] == [(Opcode.BINARY, b"\x00\xff")]  # type: ignore[union-attr]


def test_bad_handshake_sends_http_error_and_closes() -> None:
    server = ServerConnection()
    data = b"GET / HTTP/1.1\r\nHost: h\r\n\r\n"
    assert server.receive_data(bytearray(data)) == len(data)
    assert server.state is State.CLOSED
    assert isinstance(server.error, HandshakeError) and server.error.status == 400
    assert server.data_to_send().startswith(b"HTTP/1.1 400 Bad Request\r\n")
    assert server.receive_data(bytearray(b"more")) == 4
    assert server.data_to_send() == b""
    with pytest.raises(RuntimeError):
        ServerConnection().send_message(Opcode.TEXT, b"too early")


def test_ping_gets_pong_and_unsolicited_pong_is_ignored() -> None:
    server = open_server()
    events, out = echo(server, cframe(Opcode.PING, b"abc") + cframe(Opcode.PONG, b"zzz"))
    assert events == [Ping(b"abc"), Pong(b"zzz")]
    assert server_frames(out) == [Frame(Opcode.PONG, b"abc")]


def test_replies_keep_the_order_of_what_they_answer() -> None:
    server = open_server()
    data = cframe(Opcode.TEXT, b"1") + cframe(Opcode.PING, b"p") + cframe(Opcode.TEXT, b"2")
    data += cframe(Opcode.CLOSE, encode_close(1001)) + cframe(Opcode.TEXT, b"after close")
    _, out = echo(server, data)
    assert server_frames(out) == [
        Frame(Opcode.TEXT, b"1"),
        Frame(Opcode.PONG, b"p"),
        Frame(Opcode.TEXT, b"2"),
        Frame(Opcode.CLOSE, encode_close(1001)),  # the peer's code, echoed
    ]
    assert server.state is State.CLOSED
    assert (server.close_code, server.close_reason) == (1001, "")


def test_close_without_code_is_answered_without_code() -> None:
    server = open_server()
    events, out = echo(server, cframe(Opcode.CLOSE))
    assert events == [Close(CloseCode.NO_STATUS_RCVD, "")]
    assert server_frames(out) == [Frame(Opcode.CLOSE, b"")]


def test_protocol_error_sends_its_close_code_after_earlier_replies() -> None:
    server = open_server()
    events, out = echo(server, cframe(Opcode.TEXT, b"ok") + cframe(Opcode.TEXT, b"\xff"))
    assert events == [Message(Opcode.TEXT, bytearray(b"ok"))]
    frames = server_frames(out)
    assert frames[0] == Frame(Opcode.TEXT, b"ok")
    assert frames[1].opcode == Opcode.CLOSE and frames[1].payload[:2] == b"\x03\xef"  # 1007
    assert len(frames) == 2
    assert server.state is State.CLOSED
    assert isinstance(server.error, ProtocolError) and server.error.code == 1007
    assert server.receive_data(bytearray(cframe(Opcode.TEXT, b"x"))) == 6 + 1
    assert server.data_to_send() == b""


def test_protocol_error_is_flushed_even_without_events() -> None:
    server = open_server()
    server.receive_data(bytearray(cframe(Opcode.PING, b"x" * 126)))
    assert server_frames(bytes(server.data_to_send()))[0].payload[:2] == b"\x03\xea"  # 1002
    assert server.state is State.CLOSED


def test_server_initiated_close() -> None:
    server = open_server()
    server.send_close(CloseCode.GOING_AWAY, "bye")
    assert server.state is State.CLOSING
    server.send_message(Opcode.TEXT, "dropped: close already sent")
    server.send_ping(b"dropped too")
    server.send_close()  # ignored
    assert server_frames(bytes(server.data_to_send())) == [
        Frame(Opcode.CLOSE, encode_close(1001, "bye"))
    ]
    events, out = echo(server, cframe(Opcode.PING, b"p") + cframe(Opcode.CLOSE, encode_close(1000)))
    assert events == [Ping(b"p"), Close(1000, "")]
    assert server_frames(out) == [Frame(Opcode.PONG, b"p")]  # no second close
    assert server.state is State.CLOSED


def test_send_argument_checks() -> None:
    server = open_server()
    with pytest.raises(ValueError):
        server.send_message(Opcode.PING, b"x")
    with pytest.raises(ValueError):
        server.send_ping(b"x" * 126)
    with pytest.raises(ValueError):
        server.send_close(1005)
    with pytest.raises(ValueError):
        server.send_close(1000, "x" * 124)
    server.send_message(Opcode.TEXT, "κόσμε")
    server.send_message(Opcode.BINARY, memoryview(b"\x00" * 70000))
    assert server_frames(bytes(server.data_to_send())) == [
        Frame(Opcode.TEXT, "κόσμε".encode()),
        Frame(Opcode.BINARY, b"\x00" * 70000),
    ]
    assert server.data_to_send() == b""


def test_random_bytes_never_raise_from_a_connection() -> None:
    for seed in range(200):
        server = open_server()
        data = bytearray(os.urandom(seed % 50 + 1))
        server.receive_data(data)
        list(server.events())
        server.data_to_send()


# ----------------------------------------------------------------------- client


def test_client_against_server() -> None:
    client = ClientConnection("example.com", "/")
    server = ServerConnection()
    server.receive_data(bytearray(client.data_to_send()))
    client.receive_data(bytearray(server.data_to_send()))
    assert client.state is State.OPEN and client.response is not None
    client.send_message(Opcode.TEXT, "hi")
    client.send_message(Opcode.BINARY, b"\x01" * 300)
    client.send_ping(b"?")
    wire = bytes(client.data_to_send())
    # The server only accepts masked frames, so this also proves the masking.
    events, out = echo(server, wire)
    assert events == [
        Message(Opcode.TEXT, bytearray(b"hi")),
        Message(Opcode.BINARY, bytearray(b"\x01" * 300)),
        Ping(b"?"),
    ]
    assert b"hi" not in wire  # masked on the wire
    client.receive_data(bytearray(out))
    assert [type(e).__name__ for e in client.events()] == ["Message", "Message", "Pong"]
    client.send_close()
    assert client.state is State.CLOSING
    _, out = echo(server, bytes(client.data_to_send()))
    client.receive_data(bytearray(out))
    assert list(client.events()) == [Close(1000, "")]
    assert client.state is State.CLOSED and server.state is State.CLOSED


def test_client_mask_keys_differ() -> None:
    client = ClientConnection("h")
    client.state = State.OPEN
    client.data_to_send()
    keys = set()
    for _ in range(300):  # crosses a refill of the key pool
        client.send_message(Opcode.BINARY, b"")
        keys.add(bytes(client.data_to_send()[2:6]))
    assert len(keys) > 290


def test_client_rejects_bad_response_and_masked_server_frames() -> None:
    client = ClientConnection("h")
    client.receive_data(bytearray(b"HTTP/1.1 200 OK\r\n\r\n"))
    assert client.state is State.CLOSED
    assert isinstance(client.error, HandshakeError) and client.error.status == 200
    conn = Connection(Side.CLIENT)
    conn.receive_data(bytearray(cframe(Opcode.TEXT, b"masked")))
    assert list(conn.events()) == []
    assert isinstance(conn.error, ProtocolError) and conn.error.code == 1002


# ----------------------------------------------------------- websockets interop


def test_websockets_client_against_our_server() -> None:
    client = ClientProtocol(parse_uri("ws://example.com/"), max_size=None)
    client.send_request(client.connect())
    server = ServerConnection()

    def round_trip() -> list[object]:
        _, out = echo(server, b"".join(client.data_to_send()))
        client.receive_data(out)
        return client.events_received()

    [response] = round_trip()
    assert response.status_code == 101  # type: ignore[attr-defined]
    client.send_text("κόσμε".encode())
    client.send_binary(os.urandom(70000))
    client.send_text(b"frag", fin=False)
    client.send_ping(b"ping")
    client.send_continuation("mented ✓".encode(), fin=True)
    frames = round_trip()
    assert [(f.opcode, len(f.data)) for f in frames] == [  # type: ignore[attr-defined]
        (WsOpcode.TEXT, 10),
        (WsOpcode.BINARY, 70000),
        (WsOpcode.PONG, 4),
        (WsOpcode.TEXT, len("fragmented ✓".encode())),
    ]
    client.send_close(1000)
    [close] = round_trip()
    assert close.opcode == WsOpcode.CLOSE and close.data == b"\x03\xe8"  # type: ignore[attr-defined]
    assert server.state is State.CLOSED


def test_our_client_against_websockets_server() -> None:
    client = ClientConnection("example.com")
    server = ServerProtocol(max_size=None)
    server.receive_data(bytes(client.data_to_send()))
    [request] = server.events_received()
    server.send_response(server.accept(request))
    client.receive_data(bytearray(b"".join(server.data_to_send())))
    assert client.state is State.OPEN
    payload = os.urandom(100_000)
    client.send_message(Opcode.BINARY, payload)
    client.send_message(Opcode.TEXT, "héllo")
    client.send_ping(b"p")
    server.receive_data(bytes(client.data_to_send()))
    frames: list[WsFrame] = server.events_received()  # type: ignore[assignment]
    assert [(f.opcode, f.data) for f in frames] == [
        (WsOpcode.BINARY, payload),
        (WsOpcode.TEXT, "héllo".encode()),
        (WsOpcode.PING, b"p"),
    ]
    server.send_text(b"back")
    server.send_close(4000, "done")
    client.receive_data(bytearray(b"".join(server.data_to_send())))
    assert list(client.events()) == [
        Pong(b"p"),  # websockets answered our ping
        Message(Opcode.TEXT, bytearray(b"back")),
        Close(4000, "done"),
    ]
    server.receive_data(bytes(client.data_to_send()))
    assert server.close_rcvd is not None and server.close_rcvd.code == 4000  # echoed


# ------------------------------------------------------- memory the framer holds


def test_assembling_counts_declared_bytes_of_streamed_and_fragmented_messages() -> None:
    server = Connection(Side.SERVER, in_place_limit=1024)
    assert server.assembling == 0
    big = cframe(Opcode.BINARY, b"a" * 5000)
    server.receive_data(bytearray(big[:100]), consume_all=True)
    assert server.assembling == 5000  # the header's length, before the payload came
    server.receive_data(bytearray(big[100:]), consume_all=True)
    assert [type(e) for e in server.events()] == [Message]
    assert server.assembling == 0
    # fragments in place: what was declared so far
    server.receive_data(bytearray(cframe(Opcode.TEXT, b"xy", fin=False)))
    assert server.assembling == 2
    server.receive_data(bytearray(cframe(Opcode.CONT, b"z" * 10, fin=False)))
    assert server.assembling == 12
    server.receive_data(bytearray(cframe(Opcode.CONT, b"!")))
    messages = [e.data for e in server.events() if isinstance(e, Message)]
    assert messages == [bytearray(b"xy" + b"z" * 10 + b"!")]
    assert server.assembling == 0
    # a single frame parsed in place holds nothing of its own
    buf = bytearray(cframe(Opcode.BINARY, b"q" * 100))
    server.receive_data(buf[:50])
    assert server.assembling == 0


def test_failing_drops_the_message_being_assembled() -> None:
    server = Connection(Side.SERVER, in_place_limit=1024)
    server.receive_data(bytearray(cframe(Opcode.BINARY, b"a" * 3000)[:2000]), consume_all=True)
    assert server.assembling == 3000
    server.fail(CloseCode.TRY_AGAIN_LATER, "server busy")
    assert server.assembling == 0 and server.state is State.CLOSED
    assert server_frames(bytes(server.data_to_send()))[0].payload[:2] == b"\x03\xf5"  # 1013


@pytest.mark.parametrize("size", [0, 125, 126, 65535, 65536, 70000])
def test_send_message_take_builds_the_frame_in_the_callers_bytearray(size: int) -> None:
    server = Connection(Side.SERVER)
    data = bytearray(os.urandom(size))
    expected = bytes(encode_frame(Opcode.BINARY, bytes(data)))
    server.send_message(Opcode.BINARY, data, take=True)
    out = server.data_to_send()
    assert out is data and bytes(out) == expected  # no copy: the frame is the caller's buffer
    # with output queued already, or a view alive, or not a bytearray: copied as usual
    server.send_ping(b"p")
    second = bytearray(b"abc")
    server.send_message(Opcode.TEXT, second, take=True)
    assert bytes(server.data_to_send()).endswith(b"\x81\x03abc") and second == b"abc"
    third = bytearray(b"xyz")
    view = memoryview(third)
    server.send_message(Opcode.BINARY, third, take=True)
    assert server.data_to_send() == b"\x82\x03xyz" and third == b"xyz"
    view.release()
