"""Every design and transport echoes at least 10,000 messages intact on 100 concurrent
connections, at 64 B and at 20 KiB (a message that crosses the 16 KiB TLS record size).

The load generator (``wsstls.loadgen``, C) checks every byte of every echo; a connection
that sees anything wrong counts an error and is dropped, one that cannot connect counts a
connect failure.  Its runs are timed windows, so a round that echoed fewer than 10,000
messages (a slow machine, a sanitizer build) is followed by another, up to ``ROUNDS``:
the test asserts the *count* over clean rounds, never a rate.  The server runs as a
subprocess with ``--stats``: on exit it must have echoed at least what the client counted,
through the C fast path unless ``--no-fast-path`` (the Python framer then echoes all).
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest
import serverutil
from serverutil import DESIGNS, ServerProcess, client_tls_context

from wsstls.loadgen import LoadResult, run

pytestmark = pytest.mark.slow

server_certs = serverutil.server_certs


CONNECTIONS = 100
MESSAGES = 10_000
ROUNDS = 8  # at most this many timed windows to reach MESSAGES
WINDOW_S = 1.0
SIZES = [64, 20 * 1024]


@pytest.fixture
def stats_server(
    request: pytest.FixtureRequest, server_certs: serverutil.Certs, tmp_path: Path
) -> Iterator[tuple[ServerProcess, Path]]:
    """The design named by the test's ``design`` parameter, as a subprocess with --stats."""
    design = DESIGNS[request.node.callspec.params["design"]]
    stats = tmp_path / "stats.json"
    sp = ServerProcess(design, tmp_path, ["--stats", str(stats)])
    try:
        sp.start()
        yield sp, stats
    finally:
        sp.cleanup()


def load(url: str, size: int, text: bool = False) -> tuple[int, int, list[LoadResult]]:
    """Timed rounds until MESSAGES round trips: (counted, all echoed, the rounds)."""
    results: list[LoadResult] = []
    counted = echoed = 0
    for _ in range(ROUNDS):
        r = run(
            url,
            connections=CONNECTIONS,
            size=size,
            text=text,
            duration=WINDOW_S,
            warmup=0.2,
            tls_context=client_tls_context() if url.startswith("wss:") else None,
            connect_timeout=30.0,
            seed=size + len(results) + 1,
        )
        results.append(r)
        assert r.errors == 0, f"{r.errors} connections broke: {r.first_error}"
        assert r.connect_failures == 0, f"{r.connect_failures} failed: {r.first_error}"
        assert r.connections == CONNECTIONS, r
        assert not r.timed_out, r
        counted += r.messages
        echoed += r.messages + r.warmup_messages
        if counted >= MESSAGES:
            break
    return counted, echoed, results


@pytest.mark.parametrize("size", SIZES)
@pytest.mark.parametrize("design", list(DESIGNS))
def test_load(stats_server: tuple[ServerProcess, Path], design: str, size: int) -> None:
    sp, stats_file = stats_server
    assert sp.handle is not None
    counted, echoed, rounds = load(sp.handle.url, size)
    assert counted >= MESSAGES, f"{counted} messages in {len(rounds)} rounds"
    assert sp.stop() == 0
    sp.check()
    stats = json.loads(stats_file.read_text())
    assert stats["connections"] >= CONNECTIONS * len(rounds)
    server_echoed = stats["messages_fast"] + stats["messages_slow"]
    assert server_echoed >= echoed, stats
    assert stats["bytes_echoed"] >= echoed * size, stats
    if DESIGNS[design].fast_path:
        assert stats["messages_fast"] >= counted, stats  # plain frames: all in C
    else:
        assert stats["messages_fast"] == 0 and stats["messages_slow"] >= echoed, stats


@pytest.mark.parametrize("design", ["inline-ring", "plain"])
def test_load_text(stats_server: tuple[ServerProcess, Path], design: str) -> None:
    """Text messages (UTF-8 checked by the server on the way) at the larger size."""
    sp, _ = stats_server
    assert sp.handle is not None
    counted, _, rounds = load(sp.handle.url, SIZES[-1], text=True)
    assert counted >= MESSAGES, f"{counted} messages in {len(rounds)} rounds"
