"""WebSocket echo-server conformance cases after the Autobahn|Testsuite, written as data.

Families (numbered as in Autobahn): 1 framing, 2 ping/pong, 3 reserved bits,
4 reserved opcodes, 5 fragmentation, 6 UTF-8, 7 close handling, 9 large
messages; plus "H", opening-handshake robustness.

A ``Case`` is what the client sends (``Send`` steps: frames, masked by the
runner, or raw bytes, in one write or chopped into small writes) and exactly
what the server must send back: echoed messages, pongs and its close frame,
in order, and then it must close the connection.  "The connection is failed
with code X" is ``ServerClose(X)`` with nothing sent by the client after the
offending data: a case whose offending data comes before the rest of a
message (the fail-fast cases of family 6) simply never sends the rest, so a
server that waits for it times out and fails the case.  Outcomes are strict:
a case passes exactly or fails.

Cases run through a ``Driver``, the client's end of one connection, so the
same data can run against the in-memory echo here (``MemoryEchoDriver``, the
sans-IO ``ServerConnection`` behind a ``RingBuffer``) and against a real
server over ws:// or wss:// sockets.  Run with ``run_case`` /
``run_handshake_case``.  Large payloads are described (``Payload``) and built
when a case runs, so importing this module costs little memory.
"""

from __future__ import annotations

import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from typing import Protocol

from wsstls.ring import RingBuffer
from wsstls.ws import (
    DEFAULT_MAX_SIZE,
    ClientHandshake,
    Close,
    FrameParser,
    HandshakeError,
    Message,
    Opcode,
    Ping,
    Pong,
    ProtocolError,
    ServerConnection,
    Side,
    State,
    encode_frame,
)

TEXT, BINARY, CONT = Opcode.TEXT, Opcode.BINARY, Opcode.CONT
PING, PONG, CLOSE = Opcode.PING, Opcode.PONG, Opcode.CLOSE

# --------------------------------------------------------------------------- data model


@dataclass(frozen=True)
class Payload:
    """``size`` bytes repeating ``pattern``; built only when a case runs."""

    pattern: bytes
    size: int

    def build(self) -> bytes:
        reps, rest = divmod(self.size, len(self.pattern))
        return self.pattern * reps + self.pattern[:rest]

    def __repr__(self) -> str:
        return f"Payload({self.pattern[:8]!r}, {self.size})"


PayloadLike = bytes | Payload


def _bytes(p: PayloadLike) -> bytes:
    return p.build() if isinstance(p, Payload) else p


@dataclass(frozen=True)
class F:
    """A frame the client sends; the runner masks it with a fresh key."""

    opcode: int
    payload: PayloadLike = b""
    fin: bool = True
    rsv: int = 0


@dataclass(frozen=True)
class Fragmented:
    """A message sent as frames of ``size`` payload bytes each (built when the case runs)."""

    opcode: int
    payload: PayloadLike
    size: int


Item = F | Fragmented | bytes


@dataclass(frozen=True)
class Send:
    """Frames and raw bytes, concatenated, sent in one write or in writes of ``chop`` bytes."""

    items: tuple[Item, ...]
    chop: int | None = None

    def __init__(self, *items: Item, chop: int | None = None) -> None:
        object.__setattr__(self, "items", items)
        object.__setattr__(self, "chop", chop)


@dataclass(frozen=True)
class Echo:
    """The server sends a data message (any fragmentation)."""

    opcode: int
    payload: PayloadLike


@dataclass(frozen=True)
class PongReply:
    """The server sends a pong."""

    payload: bytes


@dataclass(frozen=True)
class ServerClose:
    """The server sends a close frame with this code (1005: an empty close payload)."""

    code: int


@dataclass(frozen=True)
class ServerPing:
    """Observed only: the server sent a ping (no case expects one)."""

    payload: bytes


@dataclass(frozen=True)
class BadOutput:
    """Observed only: what the server sent is not valid WebSocket."""

    reason: str


Outcome = Echo | PongReply | ServerClose | ServerPing | BadOutput


@dataclass(frozen=True)
class Case:
    id: str
    description: str
    steps: tuple[Send, ...]
    expect: tuple[Outcome, ...]
    """What the server sends, in order; it must then close the connection."""


@dataclass(frozen=True)
class HandshakeCase:
    id: str
    description: str
    request: bytes
    """Raw bytes sent first (a request, possibly followed by frames)."""
    status: int
    chop: int | None = None
    headers: tuple[tuple[str, str | None], ...] = ()
    """Response header values required (None: the header must be absent)."""
    expect: tuple[Outcome, ...] = ()
    """For a 101: what the server sends once the client has also sent a close 1000."""


# --------------------------------------------------------------------------- driver


class Driver(Protocol):
    """The client's end of one connection to an echo server.

    ``send`` delivers bytes to the server as one write (a socket driver should
    use TCP_NODELAY so chopped writes stay separate) and ignores errors once
    the server has closed.  ``receive`` returns what the server sent, waiting
    up to ``timeout`` seconds for something to arrive (b"" if nothing did).
    ``closed`` is true once the server has closed the connection and
    everything it sent before that has been returned by ``receive``.
    """

    def send(self, data: bytes) -> None: ...

    def receive(self, timeout: float) -> bytes: ...

    @property
    def closed(self) -> bool: ...

    def close(self) -> None: ...


class MemoryEchoDriver:
    """An echo server in memory: a RingBuffer of received bytes and a ServerConnection.

    It is the reference loop of a ring-backed server: parse the ring's views
    in place, echo each message (copied once, into the output), consume.  A
    non-mirrored ring splits its readable bytes in two views when they wrap;
    the first is then parsed with ``consume_all`` since it is never seen
    again contiguously.
    """

    def __init__(
        self, *, capacity: int = 64 * 1024, mirrored: bool = False, max_size: int = DEFAULT_MAX_SIZE
    ) -> None:
        self.ring = RingBuffer(capacity, mirrored=mirrored)
        self.conn = ServerConnection(max_size=max_size, in_place_limit=self.ring.capacity)
        self._out = bytearray()

    def send(self, data: bytes) -> None:
        view = memoryview(data)
        while view and self.conn.state is not State.CLOSED:
            view = view[self.ring.write(view) :]
            self._pump()

    def _pump(self) -> None:
        conn, ring = self.conn, self.ring
        while True:
            views = ring.readable_views()
            if not views:
                return
            n = conn.receive_data(views[0], consume_all=len(views) > 1)
            for event in conn.events():
                if isinstance(event, Message):
                    conn.send_message(event.opcode, event.data)  # copied into the output
            ring.consume(n)  # only now: a message may have been a view of these bytes
            self._out += conn.data_to_send()
            if n == 0:
                return

    def receive(self, timeout: float) -> bytes:
        out = bytes(self._out)
        self._out.clear()
        return out

    @property
    def closed(self) -> bool:
        return self.conn.state is State.CLOSED and not self._out

    def close(self) -> None:
        self.ring.close()


# --------------------------------------------------------------------------- runner


@dataclass
class Result:
    id: str
    passed: bool
    detail: str = ""
    observed: list[Outcome] = field(default_factory=list)


def _encode(items: Sequence[Item]) -> bytes:
    out = bytearray()
    for item in items:
        if isinstance(item, bytes):
            out += item
        elif isinstance(item, Fragmented):
            out += _encode(fragments(item.opcode, _bytes(item.payload), item.size))
        else:
            key = _KEYS.next()
            out += encode_frame(
                item.opcode, _bytes(item.payload), fin=item.fin, rsv=item.rsv, mask_key=key
            )
    return bytes(out)


class _KeySource:
    """Masking keys that differ from frame to frame; deterministic, so failures repeat."""

    def __init__(self) -> None:
        self._n = 0

    def next(self) -> bytes:
        self._n = (self._n * 1103515245 + 12345) & 0xFFFFFFFF
        return self._n.to_bytes(4, "little")


_KEYS = _KeySource()


class _Reader:
    """Parses what the server sends, strictly, into outcomes."""

    def __init__(self) -> None:
        self.parser = FrameParser(Side.CLIENT, max_size=1 << 62, in_place_limit=1 << 62)
        self.observed: list[Outcome] = []
        self.failed = False

    def feed(self, data: bytes) -> None:
        if not data or self.failed:
            return
        try:
            self.parser.receive_data(bytearray(data), consume_all=True)
        except ProtocolError as exc:
            self.failed = True
            self.observed.append(BadOutput(f"{exc.code} {exc.reason}"))
        for event in self.parser.events:
            if isinstance(event, Message):
                self.observed.append(Echo(event.opcode, bytes(event.data)))
            elif isinstance(event, Pong):
                self.observed.append(PongReply(event.payload))
            elif isinstance(event, Ping):
                self.observed.append(ServerPing(event.payload))
            elif isinstance(event, Close):
                self.observed.append(ServerClose(event.code))
        self.parser.events.clear()


def _chunks(data: bytes, chop: int | None) -> Iterator[bytes]:
    if chop is None:
        yield data
        return
    for i in range(0, len(data), chop):
        yield data[i : i + chop]


def _wait_closed(driver: Driver, reader: _Reader, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while not driver.closed:
        left = deadline - time.monotonic()
        if left <= 0:
            return False
        reader.feed(driver.receive(min(left, 0.5)))
    reader.feed(driver.receive(0))
    return True


def _compare(expected: Sequence[Outcome], observed: Sequence[Outcome], closed: bool) -> str:
    """ "" when they match, else what differs first."""
    for i, want in enumerate(expected):
        if i >= len(observed):
            return f"missing #{i}: expected {_show(want)}, got nothing more"
        got = observed[i]
        if isinstance(want, Echo):
            same = isinstance(got, Echo) and (want.opcode, _bytes(want.payload)) == (
                got.opcode,
                got.payload,
            )
        else:
            same = want == got
        if not same:
            return f"#{i}: expected {_show(want)}, got {_show(got)}"
    if len(observed) > len(expected):
        return f"unexpected #{len(expected)}: {_show(observed[len(expected)])}"
    if not closed:
        return "the server did not close the connection"
    return ""


def _show(outcome: Outcome) -> str:
    if isinstance(outcome, Echo):
        data = _bytes(outcome.payload)
        shown = repr(data[:24]) + ("..." if len(data) > 24 else "")
        return f"Echo({Opcode(outcome.opcode).name}, {shown}, len={len(data)})"
    return repr(outcome)


def _open(driver: Driver, timeout: float) -> tuple[bytes, str]:
    """Run the opening handshake; (bytes after the 101, "") or (b"", why it failed)."""
    hs = ClientHandshake("localhost", "/")
    driver.send(hs.request)
    buf = b""
    deadline = time.monotonic() + timeout
    while hs.response is None:
        data = driver.receive(max(0.0, min(deadline - time.monotonic(), 0.5)))
        if not data:
            if driver.closed or time.monotonic() >= deadline:
                return b"", "no 101 response"
            continue
        buf += data
        try:
            used = hs.receive_data(buf)
        except HandshakeError as exc:
            return b"", f"handshake failed: {exc}"
        buf = buf[used:]
    return buf, ""


def run_case(case: Case, driver: Driver, *, timeout: float = 10.0) -> Result:
    """Open a connection on ``driver``, play the case, compare strictly."""
    rest, error = _open(driver, timeout)
    if error:
        return Result(case.id, False, error)
    reader = _Reader()
    reader.feed(rest)
    for step in case.steps:
        for chunk in _chunks(_encode(step.items), step.chop):
            if driver.closed:
                break
            driver.send(chunk)
            reader.feed(driver.receive(0))  # keep the server's output flowing
    closed = _wait_closed(driver, reader, timeout)
    detail = _compare(case.expect, reader.observed, closed)
    return Result(case.id, not detail, detail, reader.observed)


def _http_response(data: bytes) -> tuple[int, dict[str, str], int] | None:
    """(status, headers, length of head + body) of a complete HTTP response, else None."""
    end = data.find(b"\r\n\r\n")
    if end < 0:
        return None
    lines = data[:end].decode("latin-1").split("\r\n")
    status = int(lines[0].split(" ")[1])
    headers = {}
    for line in lines[1:]:
        name, _, value = line.partition(":")
        headers[name.strip().lower()] = value.strip()
    body = int(headers.get("content-length", "0")) if status != 101 else 0
    if len(data) < end + 4 + body:
        return None
    return status, headers, end + 4 + body


def run_handshake_case(case: HandshakeCase, driver: Driver, *, timeout: float = 10.0) -> Result:
    """Send the raw request; check the status, headers, and (for a 101) what follows."""
    for chunk in _chunks(case.request, case.chop):
        if driver.closed:
            break
        driver.send(chunk)
    buf = b""
    deadline = time.monotonic() + timeout
    while (parsed := _http_response(buf)) is None:
        data = driver.receive(max(0.0, min(deadline - time.monotonic(), 0.5)))
        if not data and (driver.closed or time.monotonic() >= deadline):
            return Result(case.id, False, f"no complete HTTP response (got {buf[:80]!r})")
        buf += data
    status, headers, size = parsed
    if status != case.status:
        return Result(case.id, False, f"status {status}, expected {case.status}")
    for name, value in case.headers:
        if headers.get(name.lower()) != value:
            return Result(case.id, False, f"header {name}: {headers.get(name.lower())!r}")
    reader = _Reader()
    if status == 101:
        key = next(
            (
                line.split(b":", 1)[1].strip().decode()
                for line in case.request.split(b"\r\n")
                if line.lower().startswith(b"sec-websocket-key:")
            ),
            "",
        )
        try:
            ClientHandshake("localhost", key=key).receive_data(buf[:size])
        except HandshakeError as exc:
            return Result(case.id, False, f"invalid 101: {exc}")
        reader.feed(buf[size:])
        driver.send(_encode([F(CLOSE, b"\x03\xe8")]))
    elif buf[size:]:
        return Result(case.id, False, f"bytes after the error response: {buf[size:80]!r}")
    closed = _wait_closed(driver, reader, timeout)
    detail = _compare(case.expect, reader.observed, closed)
    return Result(case.id, not detail, detail, reader.observed)


# --------------------------------------------------------------------------- case helpers

CLOSE_1000 = F(CLOSE, b"\x03\xe8")


def echo_case(id: str, description: str, steps: Sequence[Send], *expect: Outcome) -> Case:
    """Steps, then the client's close 1000: expect ``expect`` and the server's close 1000."""
    return Case(id, description, (*steps, Send(CLOSE_1000)), (*expect, ServerClose(1000)))


def fail_case(
    id: str, description: str, steps: Sequence[Send], code: int, *before: Outcome
) -> Case:
    """The server sends ``before``, then fails the connection with ``code``."""
    return Case(id, description, tuple(steps), (*before, ServerClose(code)))


def _cut(data: bytes, size: int) -> list[bytes]:
    return [data[i : i + size] for i in range(0, len(data), size)] or [b""]


def fragments(opcode: int, payload: bytes, size: int) -> list[F]:
    """A message as frames of ``size`` payload bytes (one frame if it fits)."""
    pieces = _cut(payload, size)
    return [
        F(opcode if i == 0 else CONT, piece, fin=i == len(pieces) - 1)
        for i, piece in enumerate(pieces)
    ]


# --------------------------------------------------------------------------- 1 framing

FRAMING_SIZES = (0, 125, 126, 127, 128, 65535, 65536)


def family_1() -> list[Case]:
    cases = []
    for sub, (opcode, byte) in enumerate(((TEXT, b"*"), (BINARY, b"\xfe")), start=1):
        kind = "text" if opcode == TEXT else "binary"
        for i, size in enumerate(FRAMING_SIZES, start=1):
            payload = byte * size
            msg = F(opcode, payload)
            cases.append(
                echo_case(
                    f"1.{sub}.{i}", f"{kind}, {size} bytes", [Send(msg)], Echo(opcode, payload)
                )
            )
            chop = 997 if size > 1000 else 7
            cases.append(
                echo_case(
                    f"1.{sub}.{i}.chopped",
                    f"{kind}, {size} bytes, in writes of {chop} bytes",
                    [Send(msg, chop=chop)],
                    Echo(opcode, payload),
                )
            )
    return cases


# --------------------------------------------------------------------------- 2 ping/pong


def family_2() -> list[Case]:
    binary = b"\x00\xff\xfe\xfd\xfc\xfb\x00\xff"
    pings = [F(PING, f"payload-{i}".encode()) for i in range(10)]
    pongs = [PongReply(f"payload-{i}".encode()) for i in range(10)]
    return [
        echo_case("2.1", "ping without payload", [Send(F(PING))], PongReply(b"")),
        echo_case(
            "2.2", "ping with text", [Send(F(PING, b"Hello, world!"))], PongReply(b"Hello, world!")
        ),
        echo_case("2.3", "ping with binary", [Send(F(PING, binary))], PongReply(binary)),
        echo_case(
            "2.4", "ping with 125 bytes", [Send(F(PING, b"\xfe" * 125))], PongReply(b"\xfe" * 125)
        ),
        fail_case("2.5", "ping with 126 bytes", [Send(F(PING, b"\xfe" * 126))], 1002),
        echo_case(
            "2.6",
            "ping with 125 bytes in 1-byte writes",
            [Send(F(PING, b"\xfe" * 125), chop=1)],
            PongReply(b"\xfe" * 125),
        ),
        echo_case("2.7", "unsolicited pong without payload", [Send(F(PONG))]),
        echo_case(
            "2.8", "unsolicited pong with payload", [Send(F(PONG, b"unsolicited pong payload"))]
        ),
        echo_case(
            "2.9",
            "unsolicited pong, then ping",
            [Send(F(PONG, b"unsolicited pong payload")), Send(F(PING, b"ping payload"))],
            PongReply(b"ping payload"),
        ),
        echo_case("2.10", "10 pings", [Send(p) for p in pings], *pongs),
        echo_case("2.11", "10 pings in 1-byte writes", [Send(*pings, chop=1)], *pongs),
    ]


# --------------------------------------------------------------------------- 3 reserved bits


def family_3() -> list[Case]:
    small = F(TEXT, b"Hello, world!")
    echoed = Echo(TEXT, b"Hello, world!")
    ping = F(PING, b"Hello, world!")
    return [
        fail_case("3.1", "text with RSV = 1", [Send(F(TEXT, b"Hello, world!", rsv=1))], 1002),
        fail_case(
            "3.2",
            "text, text with RSV = 2, ping: frame by frame",
            [Send(small), Send(F(TEXT, b"Hello, world!", rsv=2)), Send(ping)],
            1002,
            echoed,
        ),
        fail_case(
            "3.3",
            "text, text with RSV = 3, ping: in one write",
            [Send(small, F(TEXT, b"Hello, world!", rsv=3), ping)],
            1002,
            echoed,
        ),
        fail_case(
            "3.4",
            "text, text with RSV = 4, ping: in 1-byte writes",
            [Send(small, F(TEXT, b"Hello, world!", rsv=4), ping, chop=1)],
            1002,
            echoed,
        ),
        fail_case(
            "3.5", "binary with RSV = 5", [Send(F(BINARY, b"\x00\xff\xfe\xfd", rsv=5))], 1002
        ),
        fail_case("3.6", "ping with RSV = 6", [Send(F(PING, b"Hello, world!", rsv=6))], 1002),
        fail_case("3.7", "close with RSV = 7", [Send(F(CLOSE, b"\x03\xe8", rsv=7))], 1002),
    ]


# --------------------------------------------------------------------------- 4 opcodes


def family_4() -> list[Case]:
    cases = []
    small = F(TEXT, b"Hello, world!")
    echoed = Echo(TEXT, b"Hello, world!")
    ping = F(PING, b"Hello, world!")
    for sub, opcodes in ((1, (3, 4, 5, 6, 7)), (2, (11, 12, 13, 14, 15))):
        kind = "non-control" if sub == 1 else "control"
        a, b, c, d, e = opcodes
        cases += [
            fail_case(f"4.{sub}.1", f"{kind} opcode {a}", [Send(F(a))], 1002),
            fail_case(
                f"4.{sub}.2",
                f"{kind} opcode {b} with payload",
                [Send(F(b, b"reserved opcode payload"))],
                1002,
            ),
            fail_case(
                f"4.{sub}.3",
                f"text, {kind} opcode {c}, ping",
                [Send(small), Send(F(c)), Send(ping)],
                1002,
                echoed,
            ),
            fail_case(
                f"4.{sub}.4",
                f"text, {kind} opcode {d} with payload, ping",
                [Send(small), Send(F(d, b"reserved opcode payload")), Send(ping)],
                1002,
                echoed,
            ),
            fail_case(
                f"4.{sub}.5",
                f"text, {kind} opcode {e} with payload, ping: in 1-byte writes",
                [Send(small, F(e, b"reserved opcode payload"), ping, chop=1)],
                1002,
                echoed,
            ),
        ]
    return cases


# --------------------------------------------------------------------------- 5 fragmentation


def family_5() -> list[Case]:
    f1, f2 = b"fragment1", b"fragment2"
    two = [F(TEXT, f1, fin=False), F(CONT, f2)]
    with_ping = [F(TEXT, f1, fin=False), F(PING, b"ping payload"), F(CONT, f2)]
    message = Echo(TEXT, f1 + f2)
    pong = PongReply(b"ping payload")
    orphan_fin = [F(CONT, b"non-continuation payload"), F(TEXT, b"Hello, world!")]
    orphan_nofin = [F(CONT, b"non-continuation payload", fin=False), F(TEXT, b"Hello, world!")]
    five = [
        F(TEXT, b"fragment1", fin=False),
        F(CONT, b"fragment2", fin=False),
        F(PING, b"pongme 1!"),
        F(CONT, b"fragment3", fin=False),
        F(CONT, b"fragment4", fin=False),
        F(PING, b"pongme 2!"),
        F(CONT, b"fragment5"),
    ]
    five_expect = (
        PongReply(b"pongme 1!"),
        PongReply(b"pongme 2!"),
        Echo(TEXT, b"fragment1fragment2fragment3fragment4fragment5"),
    )
    return [
        fail_case("5.1", "ping in 2 fragments", [Send(F(PING, f1, fin=False), F(CONT, f2))], 1002),
        fail_case("5.2", "pong in 2 fragments", [Send(F(PONG, f1, fin=False), F(CONT, f2))], 1002),
        echo_case("5.3", "text in 2 fragments, one write", [Send(*two)], message),
        echo_case("5.4", "text in 2 fragments, frame by frame", [Send(f) for f in two], message),
        echo_case("5.5", "text in 2 fragments, 1-byte writes", [Send(*two, chop=1)], message),
        echo_case(
            "5.6", "text in 2 fragments with a ping between", [Send(*with_ping)], pong, message
        ),
        echo_case("5.7", "as 5.6, frame by frame", [Send(f) for f in with_ping], pong, message),
        echo_case("5.8", "as 5.6, 1-byte writes", [Send(*with_ping, chop=1)], pong, message),
        fail_case(
            "5.9",
            "continuation (FIN) with nothing to continue, then text",
            [Send(*orphan_fin)],
            1002,
        ),
        fail_case("5.10", "as 5.9, frame by frame", [Send(f) for f in orphan_fin], 1002),
        fail_case("5.11", "as 5.9, 1-byte writes", [Send(*orphan_fin, chop=1)], 1002),
        fail_case(
            "5.12",
            "continuation (no FIN) with nothing to continue, then text",
            [Send(*orphan_nofin)],
            1002,
        ),
        fail_case("5.13", "as 5.12, frame by frame", [Send(f) for f in orphan_nofin], 1002),
        fail_case("5.14", "as 5.12, 1-byte writes", [Send(*orphan_nofin, chop=1)], 1002),
        fail_case(
            "5.15",
            "text in 2 fragments, then a continuation with nothing to continue",
            [Send(*two, F(CONT, b"fragment3", fin=False), F(TEXT, b"fragment4"))],
            1002,
            message,
        ),
        fail_case(
            "5.16",
            "twice: continuation (no FIN) with nothing to continue, text in 2 fragments",
            [Send(*orphan_nofin[:1], *two, *orphan_nofin[:1], *two)],
            1002,
        ),
        fail_case(
            "5.17",
            "twice: continuation (FIN) with nothing to continue, text in 2 fragments",
            [Send(*orphan_fin[:1], *two, *orphan_fin[:1], *two)],
            1002,
        ),
        fail_case(
            "5.18",
            "text in 2 fragments, both with opcode text",
            [Send(F(TEXT, f1, fin=False), F(TEXT, f2))],
            1002,
        ),
        echo_case("5.19", "text in 5 fragments with 2 pings between", [Send(*five)], *five_expect),
        echo_case("5.20", "as 5.19, frame by frame", [Send(f) for f in five], *five_expect),
    ]


# --------------------------------------------------------------------------- 6 UTF-8

KOSME = "κόσμε".encode()  # ce ba e1 bd b9 cf 83 ce bc ce b5
HELLO = "Hello-µ@ßöäüàá-UTF-8!!".encode()

# (group, description, sequences, valid): Markus Kuhn's UTF-8 decoder stress
# test, as grouped by Autobahn's 6.5-6.23.
UTF8_VECTORS: list[tuple[int, str, list[bytes], bool]] = [
    (5, "valid text", [KOSME, HELLO, "中文 𝄞 ∮ E⋅da = Q".encode(), b"\xef\xbb\xbfBOM"], True),
    (
        7,
        "first sequence of each length",
        [b"\x00", b"\xc2\x80", b"\xe0\xa0\x80", b"\xf0\x90\x80\x80"],
        True,
    ),
    (8, "5- and 6-byte sequences", [b"\xf8\x88\x80\x80\x80", b"\xfc\x84\x80\x80\x80\x80"], False),
    (
        9,
        "last sequence of each length",
        [b"\x7f", b"\xdf\xbf", b"\xef\xbf\xbf", b"\xf4\x8f\xbf\xbf"],
        True,
    ),
    (
        10,
        "beyond the last sequence",
        [b"\xf7\xbf\xbf\xbf", b"\xfb\xbf\xbf\xbf\xbf", b"\xfd\xbf\xbf\xbf\xbf\xbf"],
        False,
    ),
    (
        11,
        "boundaries, valid",
        [b"\xed\x9f\xbf", b"\xee\x80\x80", b"\xef\xbf\xbd", b"\xf4\x8f\xbf\xbf"],
        True,
    ),
    (11, "boundaries, above U+10FFFF", [b"\xf4\x90\x80\x80"], False),
    (
        12,
        "unexpected continuation bytes",
        [
            b"\x80",
            b"\xbf",
            b"\x80\xbf",
            b"\x80\xbf\x80",
            b"\x80\xbf\x80\xbf",
            bytes(range(0x80, 0xC0)),
        ],
        False,
    ),
    (
        13,
        "lonely start bytes",
        [
            b"".join(bytes((b, 0x20)) for b in range(0xC0, 0xE0)),
            b"".join(bytes((b, 0x20)) for b in range(0xE0, 0xF0)),
            b"".join(bytes((b, 0x20)) for b in range(0xF0, 0xF8)),
            b"".join(bytes((b, 0x20)) for b in range(0xF8, 0xFC)),
            b"\xfc\x20\xfd\x20",
        ],
        False,
    ),
    (
        14,
        "last continuation byte missing",
        [
            b"\xc0",
            b"\xe0\x80",
            b"\xf0\x80\x80",
            b"\xf8\x80\x80\x80",
            b"\xfc\x80\x80\x80\x80",
            b"\xdf",
            b"\xef\xbf",
            b"\xf7\xbf\xbf",
            b"\xfb\xbf\xbf\xbf",
            b"\xfd\xbf\xbf\xbf\xbf",
            b"\xc2",  # a valid lead byte, at the very end
            b"\xe1\x80",
            b"\xf1\x80\x80",
        ],
        False,
    ),
    (
        15,
        "concatenated incomplete sequences",
        [b"\xc0\xe0\x80\xf0\x80\x80\xf8\x80\x80\x80\xfc\x80\x80\x80\x80\xdf\xef\xbf\xf7\xbf\xbf"],
        False,
    ),
    (16, "impossible bytes", [b"\xfe", b"\xff", b"\xfe\xfe\xff\xff"], False),
    (
        17,
        "overlong ASCII slash",
        [
            b"\xc0\xaf",
            b"\xe0\x80\xaf",
            b"\xf0\x80\x80\xaf",
            b"\xf8\x80\x80\x80\xaf",
            b"\xfc\x80\x80\x80\x80\xaf",
        ],
        False,
    ),
    (
        18,
        "maximum overlong sequences",
        [
            b"\xc1\xbf",
            b"\xe0\x9f\xbf",
            b"\xf0\x8f\xbf\xbf",
            b"\xf8\x87\xbf\xbf\xbf",
            b"\xfc\x83\xbf\xbf\xbf\xbf",
        ],
        False,
    ),
    (
        19,
        "overlong NUL",
        [
            b"\xc0\x80",
            b"\xe0\x80\x80",
            b"\xf0\x80\x80\x80",
            b"\xf8\x80\x80\x80\x80",
            b"\xfc\x80\x80\x80\x80\x80",
        ],
        False,
    ),
    (
        20,
        "single UTF-16 surrogates",
        [
            bytes((0xED, b, c))
            for b, c in (
                (0xA0, 0x80),
                (0xAD, 0xBF),
                (0xAE, 0x80),
                (0xAF, 0xBF),
                (0xB0, 0x80),
                (0xBE, 0x80),
                (0xBF, 0xBF),
            )
        ],
        False,
    ),
    (
        21,
        "paired UTF-16 surrogates",
        [
            bytes((0xED, hi1, hi2, 0xED, lo1, lo2))
            for hi1, hi2 in ((0xA0, 0x80), (0xAD, 0xBF), (0xAE, 0x80), (0xAF, 0xBF))
            for lo1, lo2 in ((0xB0, 0x80), (0xBF, 0xBF))
        ],
        False,
    ),
    (
        22,
        "noncharacters (valid UTF-8)",
        [chr(c).encode() for c in (0xFFFE, 0xFFFF, *range(0xFDD0, 0xFDF0))]
        + [
            chr(plane * 0x10000 + low).encode()
            for plane in range(1, 17)
            for low in (0xFFFE, 0xFFFF)
        ],
        True,
    ),
    (
        23,
        "replacement character and neighbours",
        [b"\xef\xbf\xbd", b"\xef\xbf\xbc", b"\xef\xbf\xbe\xef\xbf\xbf"],
        True,
    ),
]


def family_6() -> list[Case]:
    cases = [
        echo_case("6.1.1", "empty text", [Send(F(TEXT))], Echo(TEXT, b"")),
        echo_case(
            "6.1.2",
            "text of 3 empty fragments",
            [Send(F(TEXT, fin=False), F(CONT, fin=False), F(CONT))],
            Echo(TEXT, b""),
        ),
        echo_case(
            "6.1.3",
            "empty, non-empty, empty fragments",
            [Send(F(TEXT, fin=False), F(CONT, b"middle frame payload", fin=False), F(CONT))],
            Echo(TEXT, b"middle frame payload"),
        ),
        echo_case("6.2.1", "valid UTF-8 in one frame", [Send(F(TEXT, HELLO))], Echo(TEXT, HELLO)),
        echo_case(
            "6.2.2",
            "valid UTF-8, fragmented at code point boundaries",
            [Send(*_at_boundaries(HELLO.decode()))],
            Echo(TEXT, HELLO),
        ),
        echo_case(
            "6.2.3",
            "valid UTF-8, 1-byte fragments (split inside code points)",
            [Send(*fragments(TEXT, HELLO, 1))],
            Echo(TEXT, HELLO),
        ),
        echo_case(
            "6.2.4",
            "valid UTF-8 (Greek), 1-byte fragments",
            [Send(*fragments(TEXT, KOSME * 3, 1))],
            Echo(TEXT, KOSME * 3),
        ),
    ]
    invalid = KOSME + b"\xed\xa0\x80" + b"edited"  # a surrogate inside
    cases += [
        fail_case("6.3.1", "invalid UTF-8 in one frame", [Send(F(TEXT, invalid))], 1007),
        fail_case(
            "6.3.2", "invalid UTF-8, 1-byte fragments", [Send(*fragments(TEXT, invalid, 1))], 1007
        ),
    ]
    # Fail fast: the rest of the message is never sent, so the server must
    # fail on what it has.  F4 90 80 80 would be above U+10FFFF.
    whole = KOSME + b"\xf4\x90\x80\x80" + b"edited"
    head = 6  # a masked header with a 7-bit length
    cases += [
        fail_case(
            "6.4.1",
            "fragment 2 of 3 invalid: fail before fragment 3",
            [Send(F(TEXT, KOSME, fin=False)), Send(F(CONT, b"\xf4\x90\x80\x80", fin=False))],
            1007,
        ),
        fail_case(
            "6.4.2",
            "invalid sequence split over fragments 1 and 2: fail before fragment 3",
            [Send(F(TEXT, KOSME + b"\xf4", fin=False)), Send(F(CONT, b"\x90\x80\x80", fin=False))],
            1007,
        ),
        Case(
            "6.4.3",
            "one frame in chops, the second holding the invalid sequence: fail before the rest",
            (
                Send(_raw_chop(whole, 0, head + len(KOSME))),
                Send(_raw_chop(whole, head + len(KOSME), 4)),
            ),
            (ServerClose(1007),),
        ),
        Case(
            "6.4.4",
            "one frame in chops, failing at its one-byte second chop",
            (
                Send(_raw_chop(whole, 0, head + len(KOSME) + 1)),
                Send(_raw_chop(whole, head + len(KOSME) + 1, 1)),
            ),
            (ServerClose(1007),),
        ),
    ]
    # 6.6: every prefix of "κόσμε": valid exactly when it ends on a character.
    for i in range(1, len(KOSME) + 1):
        prefix = KOSME[:i]
        cases += _utf8_cases(f"6.6.{i}", f"prefix of κόσμε, {i} bytes", prefix, _valid(prefix))
    for group, description, sequences, valid in UTF8_VECTORS:
        numbered = sum(1 for c in cases if c.id.startswith(f"6.{group}.") and ".frag" not in c.id)
        for j, seq in enumerate(sequences, start=numbered + 1):
            assert _valid(seq) == valid, (group, seq)
            cases += _utf8_cases(
                f"6.{group}.{j}", f"{description}: {seq[:12].hex(' ')}", seq, valid
            )
    return cases


def _valid(data: bytes) -> bool:
    try:
        data.decode("utf-8")
        return True
    except UnicodeDecodeError:
        return False


def _utf8_cases(id: str, description: str, payload: bytes, valid: bool) -> list[Case]:
    """The payload as one frame and as 1-byte fragments."""
    one, frags = [Send(F(TEXT, payload))], [Send(*fragments(TEXT, payload, 1))]
    if valid:
        return [
            echo_case(id, description, one, Echo(TEXT, payload)),
            echo_case(f"{id}.frag", description + ", 1-byte fragments", frags, Echo(TEXT, payload)),
        ]
    return [
        fail_case(id, description, one, 1007),
        fail_case(f"{id}.frag", description + ", 1-byte fragments", frags, 1007),
    ]


def _at_boundaries(text: str) -> list[F]:
    pieces = [c.encode() for c in text]
    return [F(TEXT if i == 0 else CONT, p, fin=i == len(pieces) - 1) for i, p in enumerate(pieces)]


_CHOP_CACHE: dict[bytes, bytes] = {}


def _raw_chop(payload: bytes, start: int, length: int) -> bytes:
    """Bytes [start, start+length) of one fixed masked text frame carrying ``payload``."""
    frame = _CHOP_CACHE.get(payload)
    if frame is None:
        frame = _CHOP_CACHE[payload] = bytes(
            encode_frame(TEXT, payload, mask_key=b"\x0f\xf0\x5a\xa5")
        )
    return frame[start : start + length]


# --------------------------------------------------------------------------- 7 close


VALID_CLOSE_CODES = (
    1000,
    1001,
    1002,
    1003,
    1007,
    1008,
    1009,
    1010,
    1011,
    1012,
    1013,
    1014,
    3000,
    3999,
    4000,
    4999,
)
INVALID_CLOSE_CODES = (0, 999, 1004, 1005, 1006, 1015, 1016, 1100, 2000, 2999)


def family_7() -> list[Case]:
    hello = F(TEXT, b"Hello World!")
    cases = [
        echo_case("7.1.1", "text, then close", [Send(hello)], Echo(TEXT, b"Hello World!")),
        Case(
            "7.1.2",
            "close, then close again",
            (Send(CLOSE_1000), Send(CLOSE_1000)),
            (ServerClose(1000),),
        ),
        Case(
            "7.1.3",
            "close, then ping",
            (Send(CLOSE_1000), Send(F(PING, b"ping"))),
            (ServerClose(1000),),
        ),
        Case("7.1.4", "close, then text", (Send(CLOSE_1000), Send(hello)), (ServerClose(1000),)),
        Case(
            "7.1.5",
            "text fragment, close, last fragment",
            (Send(F(TEXT, b"fragment1", fin=False)), Send(CLOSE_1000), Send(F(CONT, b"fragment2"))),
            (ServerClose(1000),),
        ),
        Case(
            "7.1.6",
            "256 KiB text, close, ping: all in one write",
            (Send(F(TEXT, Payload(b"BAsd7&jh23", 256 * 1024)), CLOSE_1000, F(PING, b"ping")),),
            (Echo(TEXT, Payload(b"BAsd7&jh23", 256 * 1024)), ServerClose(1000)),
        ),
        Case("7.3.1", "close without payload", (Send(F(CLOSE)),), (ServerClose(1005),)),
        fail_case("7.3.2", "close with a 1-byte payload", [Send(F(CLOSE, b"\x03"))], 1002),
        Case("7.3.3", "close 1000 without reason", (Send(CLOSE_1000),), (ServerClose(1000),)),
        Case(
            "7.3.4",
            "close 1000 with reason",
            (Send(F(CLOSE, b"\x03\xe8Hello World!")),),
            (ServerClose(1000),),
        ),
        Case(
            "7.3.5",
            "close with a 123-byte reason",
            (Send(F(CLOSE, b"\x03\xe8" + b"*" * 123)),),
            (ServerClose(1000),),
        ),
        fail_case(
            "7.3.6",
            "close with a 124-byte reason (126-byte payload)",
            [Send(F(CLOSE, b"\x03\xe8" + b"*" * 124))],
            1002,
        ),
        fail_case(
            "7.5.1",
            "close reason not UTF-8",
            [Send(F(CLOSE, b"\x03\xe8" + KOSME + b"\xed\xa0\x80" + b"edited"))],
            1007,
        ),
    ]
    for i, code in enumerate(VALID_CLOSE_CODES, start=1):
        cases.append(
            Case(
                f"7.7.{i}",
                f"close code {code}",
                (Send(F(CLOSE, code.to_bytes(2, "big"))),),
                (ServerClose(code),),
            )
        )
    for i, code in enumerate(INVALID_CLOSE_CODES, start=1):
        cases.append(
            fail_case(
                f"7.9.{i}",
                f"invalid close code {code}",
                [Send(F(CLOSE, code.to_bytes(2, "big")))],
                1002,
            )
        )
    for i, code in enumerate((5000, 65535), start=1):
        cases.append(
            fail_case(
                f"7.13.{i}", f"close code {code}", [Send(F(CLOSE, code.to_bytes(2, "big")))], 1002
            )
        )
    return cases


# --------------------------------------------------------------------------- 9 large


KIB, MIB = 1024, 1024 * 1024
TEXT_PATTERN = b"BAsd7&jh23\xce\xba\xcf\x8c\xcf\x83\xce\xbc\xce\xb5"  # ASCII and Greek, 20 bytes
BINARY_PATTERN = bytes(range(256))


def family_9() -> list[Case]:
    cases = []
    for sub, (opcode, pattern) in enumerate(
        ((TEXT, TEXT_PATTERN), (BINARY, BINARY_PATTERN)), start=1
    ):
        kind = "text" if opcode == TEXT else "binary"
        for i, size in enumerate((64 * KIB, 256 * KIB, MIB, 4 * MIB, 8 * MIB, 16 * MIB), start=1):
            payload = Payload(pattern, size)
            cases.append(
                echo_case(
                    f"9.{sub}.{i}",
                    f"{kind}, {size // KIB} KiB in one frame",
                    [Send(F(opcode, payload))],
                    Echo(opcode, payload),
                )
            )
        big = Payload(pattern, 4 * MIB)
        for i, frag in enumerate(
            (64, 256, KIB, 4 * KIB, 16 * KIB, 64 * KIB, 256 * KIB, MIB, 4 * MIB), start=1
        ):
            cases.append(
                Case(
                    f"9.{sub + 2}.{i}",
                    f"{kind}, 4 MiB in fragments of {frag} bytes",
                    (Send(Fragmented(opcode, big, frag)), Send(CLOSE_1000)),
                    (Echo(opcode, big), ServerClose(1000)),
                )
            )
        one = Payload(pattern, MIB)
        for i, chop in enumerate((64, 128, 256, 512, KIB, 2 * KIB), start=1):
            cases.append(
                echo_case(
                    f"9.{sub + 4}.{i}",
                    f"{kind}, 1 MiB in one frame, written in chops of {chop} bytes",
                    [Send(F(opcode, one), chop=chop)],
                    Echo(opcode, one),
                )
            )
        for i, size in enumerate((0, 16, 64, 256, KIB, 4 * KIB), start=1):
            payload = Payload(pattern, size)
            cases.append(
                echo_case(
                    f"9.{sub + 6}.{i}",
                    f"1000 {kind} messages of {size} bytes",
                    [Send(*[F(opcode, payload)] * 100)] * 10,
                    *[Echo(opcode, payload)] * 1000,
                )
            )
    # The limit itself: a message one byte over the maximum is refused from its header.
    cases.append(
        Case(
            "9.9.1",
            "a frame header announcing 16 MiB + 1: fails at once with 1009",
            (Send(b"\x82\xff" + (16 * MIB + 1).to_bytes(8, "big") + b"\x00\x00\x00\x00"),),
            (ServerClose(1009),),
        )
    )
    cases.append(
        fail_case(
            "9.9.2",
            "fragments adding up to 16 MiB + 1: fails with 1009",
            [
                Send(F(BINARY, Payload(b"\x00", 8 * MIB), fin=False)),
                Send(F(CONT, Payload(b"\x00", 8 * MIB + 1))),
            ],
            1009,
        )
    )
    return cases


# --------------------------------------------------------------------------- H handshake


def _request(*extra: str, drop: tuple[str, ...] = (), start: str = "GET / HTTP/1.1") -> bytes:
    fields = {
        "host": "Host: localhost",
        "upgrade": "Upgrade: websocket",
        "connection": "Connection: Upgrade",
        "key": "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==",
        "version": "Sec-WebSocket-Version: 13",
    }
    lines = [start, *(v for k, v in fields.items() if k not in drop), *extra]
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")


def handshake_cases() -> list[HandshakeCase]:
    ok = (ServerClose(1000),)
    early = bytes(encode_frame(TEXT, b"early", mask_key=b"abcd"))
    return [
        HandshakeCase("H.1", "valid request", _request(), 101, expect=ok),
        HandshakeCase("H.2", "valid request, 1-byte writes", _request(), 101, chop=1, expect=ok),
        HandshakeCase(
            "H.3",
            "a frame in the same write as the request",
            _request() + early,
            101,
            expect=(Echo(TEXT, b"early"), ServerClose(1000)),
        ),
        HandshakeCase(
            "H.4",
            "odd case and a token list in Connection",
            _request(
                "connection: keep-alive, UPGRADE",
                "UPGRADE: WebSocket",
                drop=("upgrade", "connection"),
            ),
            101,
            expect=ok,
        ),
        HandshakeCase(
            "H.5",
            "permessage-deflate offered: not accepted",
            _request("Sec-WebSocket-Extensions: permessage-deflate; client_max_window_bits"),
            101,
            headers=(("Sec-WebSocket-Extensions", None),),
            expect=ok,
        ),
        HandshakeCase(
            "H.6",
            "subprotocols offered: none selected",
            _request("Sec-WebSocket-Protocol: chat, superchat"),
            101,
            headers=(("Sec-WebSocket-Protocol", None),),
            expect=ok,
        ),
        HandshakeCase(
            "H.7",
            "version 8",
            _request("Sec-WebSocket-Version: 8", drop=("version",)),
            426,
            headers=(("Sec-WebSocket-Version", "13"),),
        ),
        HandshakeCase("H.8", "no Sec-WebSocket-Key", _request(drop=("key",)), 400),
        HandshakeCase(
            "H.9",
            "a 15-byte key",
            _request("Sec-WebSocket-Key: eHh4eHh4eHh4eHh4eHh4", drop=("key",)),
            400,
        ),
        HandshakeCase("H.10", "POST", _request(start="POST / HTTP/1.1"), 400),
        HandshakeCase("H.11", "HTTP/1.0", _request(start="GET / HTTP/1.0"), 400),
        HandshakeCase("H.12", "no Host", _request(drop=("host",)), 400),
        HandshakeCase("H.13", "no Upgrade", _request(drop=("upgrade",)), 400),
        HandshakeCase(
            "H.14",
            "Connection without upgrade",
            _request("Connection: close", drop=("connection",)),
            400,
        ),
        HandshakeCase(
            "H.15", "not HTTP", b"\x16\x03\x01\x00\xa5\x01\x00\x00\xa1\x03\x03\r\n\r\n", 400
        ),
        HandshakeCase("H.16", "obs-fold header line", _request("X-Folded: a", " b"), 400),
        HandshakeCase("H.17", "a 9000-byte request line, never ended", b"GET /" + b"a" * 9000, 414),
        HandshakeCase(
            "H.18",
            "17 KiB of header fields",
            _request(*[f"X-Pad-{i}: {'p' * 100}" for i in range(170)]),
            431,
        ),
        HandshakeCase(
            "H.19", "200 header fields", _request(*[f"X-{i}: {i}" for i in range(200)]), 431
        ),
    ]


CASES: list[Case] = [
    *family_1(),
    *family_2(),
    *family_3(),
    *family_4(),
    *family_5(),
    *family_6(),
    *family_7(),
    *family_9(),
]
HANDSHAKE_CASES: list[HandshakeCase] = handshake_cases()
