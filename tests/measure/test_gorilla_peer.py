"""The Go gorilla/websocket echo peer (wsstls/measure/peers/gorilla_echo.go), built by the bench
into its cache and started as the scaling table starts it: echo of text and binary messages of
the edge sizes, ping/pong, and SIGTERM closing an open connection with 1001, exit 0.
Skipped (by the reason the bench prints) when go or golang-github-gorilla-websocket-dev is
not installed."""

from __future__ import annotations

import asyncio
import os
import signal
from pathlib import Path

import pytest

websockets = pytest.importorskip("websockets")
trustme = pytest.importorskip("trustme")
from websockets.asyncio.client import connect  # noqa: E402
from websockets.exceptions import ConnectionClosed  # noqa: E402

from wsstls.measure.servers import Certs, GorillaSpec, gorilla_binary  # noqa: E402

pytestmark = [pytest.mark.no_sanitizer, pytest.mark.slow, pytest.mark.timeout(600)]


@pytest.fixture(scope="module")
def binary() -> Path:
    built = gorilla_binary()
    if isinstance(built, str):
        if "not installed" in built:
            pytest.skip(built)
        pytest.fail(built)  # installed, yet it does not build
    return built


async def _echo(url: str, ssl_ctx: object) -> None:
    async with connect(url, ssl=ssl_ctx, compression=None, max_size=None, ping_interval=None,
                       open_timeout=15) as ws:  # fmt: skip
        for n in (0, 125, 126, 65536, 1 << 20):
            data = os.urandom(n)
            await ws.send(data)
            assert await asyncio.wait_for(ws.recv(), 15) == data
            text = "é" * (n // 2)
            await ws.send(text)
            assert await asyncio.wait_for(ws.recv(), 15) == text
        await asyncio.wait_for(await ws.ping(b"x"), 15)


async def _held_open(url: str, ssl_ctx: object, stop: object) -> int | None:
    async with connect(url, ssl=ssl_ctx, compression=None, ping_interval=None) as ws:
        await ws.send("hello")
        assert await asyncio.wait_for(ws.recv(), 15) == "hello"
        stop()  # type: ignore[operator]
        with pytest.raises(ConnectionClosed):
            await asyncio.wait_for(ws.recv(), 15)
        return ws.close_code


@pytest.mark.parametrize("tls", [False, True], ids=["ws", "wss"])
def test_gorilla_echo_and_sigterm(binary: Path, tls: bool, tmp_path: Path) -> None:
    ca = trustme.CA()
    leaf = ca.issue_cert("127.0.0.1")
    cert, key = tmp_path / "cert.pem", tmp_path / "key.pem"
    cert.write_bytes(b"".join(b.bytes() for b in leaf.cert_chain_pems))
    leaf.private_key_pem.write_to_path(str(key))
    ssl_ctx = None
    if tls:
        import ssl

        ssl_ctx = ssl.create_default_context()
        ca.configure_trust(ssl_ctx)
    cpu = min(os.sched_getaffinity(0))
    spec = GorillaSpec("gorilla", "gorilla", tls, binary, processors=1)
    running = spec.start(Certs(str(cert), str(key)), (cpu,))
    proc = running.processes[0].proc
    try:
        assert running.url.startswith("wss://" if tls else "ws://")
        assert os.sched_getaffinity(proc.pid) == {cpu}
        asyncio.run(_echo(running.url, ssl_ctx))
        code = asyncio.run(_held_open(running.url, ssl_ctx, lambda: proc.send_signal(
            signal.SIGTERM)))  # fmt: skip
        assert code == 1001
        assert proc.wait(10) == 0
        assert running.stop() == []
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
