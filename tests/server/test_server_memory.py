"""The server's memory under load and at rest, as a subprocess (``python -m wsstls serve``):

* the memory budget: clients that send large messages and never read cannot take the
  server's RSS past the budget plus a fixed overhead; the messages beyond it are refused
  with close code 1013, fresh clients are served meanwhile, and nothing of a well-behaved
  client (messages that fit the plaintext ring) is ever refused;
* freed memory goes back: RSS after rounds of connection churn and after the budget's
  clients leave returns near its idle level;
* keepalive: a silent client is pinged, then closed with 1001 after ``--idle-timeout``; so
  is one silent in the middle of a message (its assembly buffer goes with it); a client
  that answers the pings stays;
* density: idle wss connections (ECDSA certificate) are parked, with no plaintext ring, no
  ciphertext ring and no OpenSSL record buffer each: at most 20 KB of RSS and no memory
  mapping per connection.

RSS comes from ``/proc/PID/status``, mappings from ``/proc/PID/maps``.  Waits for memory to
come back are bounded polls; no assertion is about time.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable

import pytest
import serverutil
from serverutil import SANITIZED, RunningServer, ServerProcess, WsClient, frame

from wsstls.measure.idle import IdleClients, hold

server_certs = serverutil.server_certs
process_factory = serverutil.process_factory
server_factory = serverutil.server_factory

Start = Callable[..., ServerProcess]
MIB = 1 << 20
WAIT_S = 60.0 if SANITIZED else 20.0
BINARY, CLOSE, PING, PONG = 0x2, 0x8, 0x9, 0xA
#: Plaintext rings the loop keeps for reuse (wsstls.server.loop.RING_SPARES): 3 maps each.
SPARE_MAPS = 3 * 64


def rss(pid: int) -> int:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    raise AssertionError("no VmRSS")


def maps(pid: int) -> int:
    with open(f"/proc/{pid}/maps") as f:
        return sum(1 for _ in f)


def settled_rss(pid: int, *, below: int | None = None, seconds: float = WAIT_S) -> int:
    """RSS once it stops falling (the loop parks after 1 s, trims once a second), or as soon
    as it is at most ``below``; bounded by ``seconds`` (then the last reading)."""
    deadline = time.monotonic() + seconds
    last = rss(pid)
    while time.monotonic() < deadline:
        time.sleep(0.5)
        now = rss(pid)
        if (below is not None and now <= below) or (below is None and now >= last - 64 * 1024):
            return now
        last = now
    return rss(pid)


def warm_up(server: RunningServer, count: int = 100) -> None:
    """Connections opened and closed: what a first connection costs once (code paths,
    OpenSSL's lazy tables, the ring pool's spares) is in the baseline."""
    with IdleClients(server.url, count) as held:
        assert held.opened == count, held.errors


# ---------------------------------------------------------------- the budget


@pytest.mark.slow
@pytest.mark.no_sanitizer
def test_budget_bounds_rss_refuses_with_1013_and_keeps_serving(process_factory: Start) -> None:
    budget, size, attackers = 32 * MIB, 12 * MIB, 8
    sp = process_factory(
        "inline-ring",
        ["--memory-budget", "32M", "--idle-timeout", "0", "--ping-interval", "0"],
    )
    server = sp.handle
    assert server is not None and server.pid is not None
    idle = settled_rss(server.pid)
    payload = os.urandom(size)
    clients = [WsClient(server) for _ in range(attackers)]
    for c in clients:  # they never read: what the kernel does not take stays in the server
        c.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    errors: list[BaseException] = []

    def send(c: WsClient) -> None:
        try:
            c.send(frame(BINARY, payload))
        except OSError as exc:  # refused: the server closed while the message came
            errors.append(exc)

    threads = [threading.Thread(target=send, args=(c,)) for c in clients]
    for t in threads:
        t.start()
    for t in threads:
        t.join(WAIT_S)
        assert not t.is_alive(), "a sender is still blocked"
    held = settled_rss(server.pid)
    # A well-behaved client meanwhile: messages that fit the plaintext ring are never charged.
    with WsClient(server) as fresh:
        for n in (0, 64, 4096, 65_000):
            fresh.echo(os.urandom(n))
    outcomes = []
    for c in clients:  # what came first: an echo's header (its payload is not read) or a close
        head = c.read_exactly(2)
        if head[0] & 0xF == CLOSE:
            outcomes.append(int.from_bytes(c.read_exactly(head[1] & 0x7F)[:2], "big"))
        else:
            outcomes.append(head[0] & 0xF)
        c.close()
    after = settled_rss(server.pid, below=idle + 8 * MIB)
    # The budget counts messages as their headers declare them; the assembly buffer's
    # growth (up to 1/8 more) and each busy connection's rings and TLS buffers are the rest.
    assert held - idle <= budget * 9 // 8 + 16 * MIB, (idle, held)
    assert 1013 in outcomes and BINARY in outcomes, outcomes
    assert set(outcomes) <= {1013, BINARY}, outcomes
    assert after <= idle + 8 * MIB, (idle, held, after)


def test_budget_option_checks() -> None:
    for args, needle in (
        (["--memory-budget", "0"], "--memory-budget"),
        (["--memory-budget", "12X"], "--memory-budget"),
        (["--idle-timeout", "nan"], "--idle-timeout"),
        (["--ping-interval", "-1"], "--ping-interval"),
        (["--park-after", "1e9"], "--park-after"),
        (["--ping-interval", "30", "--idle-timeout", "30"], "--ping-interval"),
    ):
        r = subprocess.run(
            [sys.executable, "-m", "wsstls", "serve", "--port", "0", *args],
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert r.returncode == 2, (args, r.stderr)
        lines = r.stderr.strip().splitlines()
        assert needle in lines[-1] and "Traceback" not in r.stderr, r.stderr


# ---------------------------------------------------------- freed memory back


@pytest.mark.slow
@pytest.mark.no_sanitizer
def test_rss_returns_near_idle_after_connection_churn(process_factory: Start) -> None:
    sp = process_factory("inline-ring")
    server = sp.handle
    assert server is not None and server.pid is not None
    warm_up(server)
    idle = settled_rss(server.pid)
    for _ in range(3):
        with IdleClients(server.url, 600) as held:
            assert held.opened == 600, held.errors
        after = settled_rss(server.pid, below=idle + 6 * MIB)
        assert after <= idle + 6 * MIB, (idle, after)


# ----------------------------------------------------------------- keepalive


@pytest.mark.slow
def test_silent_clients_are_pinged_then_closed_and_live_ones_stay(
    server_factory: Callable[..., RunningServer],
) -> None:
    idle_timeout = 4.0 if SANITIZED else 1.2  # (seconds of silence, not of work)
    server = server_factory(
        "inline-ring", ping_interval=idle_timeout / 4, idle_timeout=idle_timeout
    )
    silent, live, holder = WsClient(server), WsClient(server), WsClient(server)
    pongs: list[int] = []
    problems: list[BaseException] = []

    def answer_pings() -> None:  # the live client, for more than two idle timeouts
        try:
            live.sock.settimeout(0.2)
            deadline = time.monotonic() + 2.5 * idle_timeout
            while time.monotonic() < deadline:
                try:
                    got = live.recv_frame()
                except TimeoutError:
                    continue
                assert got.opcode == PING, got
                live.send_frame(PONG, got.payload)
                pongs.append(1)
        except BaseException as exc:
            problems.append(exc)

    answering = threading.Thread(target=answer_pings)
    answering.start()
    try:
        holder.send(frame(BINARY, b"h" * MIB)[: 300 * 1024])  # then silent mid-message
        for c in (silent, holder):
            got = c.recv_frame()
            while got.opcode == PING:  # any number of pings, then the close
                assert got.payload == b""
                got = c.recv_frame()
            assert got.opcode == CLOSE and got.close_code == 1001, got
            assert got.payload[2:] == b"idle timeout"
            assert c.at_eof()
        answering.join(WAIT_S)
        assert not answering.is_alive() and not problems, problems
        assert len(pongs) >= 2
        live.sock.settimeout(30)
        live.echo(b"still here")
    finally:
        answering.join(WAIT_S)
        for c in (silent, live, holder):
            c.close()


@pytest.mark.slow
def test_the_idle_holder_answers_pings_so_its_connections_stay(
    server_factory: Callable[..., RunningServer],
) -> None:
    """wsstls.measure.idle's clients (ws.ClientConnection) answer the keepalive pings: held
    for three idle timeouts, every connection is still open (silent ones are closed, above)."""
    idle_timeout = 4.0 if SANITIZED else 1.0
    server = server_factory(
        "inline-ring", ping_interval=idle_timeout / 4, idle_timeout=idle_timeout
    )
    end: list[float] = []

    def ready(r: object) -> None:
        end.append(time.monotonic() + 3 * idle_timeout)

    r = hold(server.url, 20, timeout=WAIT_S, ready=ready, until=lambda: time.monotonic() > end[0])
    assert (r.opened, r.failed) == (20, 0), r.first_error


# ------------------------------------------------------------------- density


@pytest.mark.slow
@pytest.mark.no_sanitizer
def test_idle_connections_are_parked_small_and_without_mappings(process_factory: Start) -> None:
    count = 1000
    sp = process_factory("inline-ring")
    server = sp.handle
    assert server is not None and server.pid is not None
    warm_up(server)
    idle, idle_maps = settled_rss(server.pid), maps(server.pid)
    with IdleClients(server.url, count) as held:
        assert held.opened == count, held.errors
        busy = rss(server.pid)
        # Once parked and trimmed: the RSS bound can be reached while the last connections
        # still hold their rings (their mappings), so wait for both, within WAIT_S.
        deadline = time.monotonic() + WAIT_S
        while True:
            parked = settled_rss(server.pid, below=idle + count * 20 * 1024)
            mapped = maps(server.pid)
            if mapped - idle_maps <= 16 or time.monotonic() > deadline:
                break
            time.sleep(0.5)
    per_conn = (parked - idle) / count
    assert per_conn <= 20 * 1024, (idle, busy, parked)
    assert mapped - idle_maps <= 16, (idle_maps, mapped)  # none per connection
