"""The server's process(es): one loop, or N loops sharing the port (``--workers``)."""

from __future__ import annotations

import json
import os
import signal
import socket
from collections.abc import Callable
from dataclasses import asdict

from ..tls import TLSContext
from .config import ServerConfig, ServerStats
from .loop import Server, listen, server_context

__all__ = ["serve"]

#: Called with each process's Server before it serves (the measuring harness
#: hooks its copy-counting window in here).
OnServer = Callable[[Server], None]


def _raise_nofile() -> None:
    try:
        import resource

        soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
        if soft < hard:
            resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    except (ImportError, ValueError, OSError):
        pass


def _pin(cpus: tuple[int, ...], index: int) -> None:
    if cpus:
        os.sched_setaffinity(0, {cpus[index % len(cpus)]})


# ------------------------------------------------------------ the process(es)


def serve(
    config: ServerConfig,
    ready: Callable[[str], None] | None = None,
    stats_file: str | None = None,
    on_server: OnServer | None = None,
) -> int:
    """Run the server (and its worker processes) until SIGINT or SIGTERM.

    ``ready(url)`` is called once every process listens; ``on_server(server)`` in each
    process before it serves.  Returns the exit code.
    """
    config.check()
    _raise_nofile()
    context = server_context(config) if config.tls else None
    if config.workers == 1:
        return _serve_one(config, context, None, 0, ready, stats_file, on_server)
    return _serve_many(config, context, ready, stats_file, on_server)


def _serve_one(
    config: ServerConfig,
    context: TLSContext | None,
    sock: socket.socket | None,
    index: int,
    ready: Callable[[str], None] | None,
    stats_file: str | None,
    on_server: OnServer | None,
) -> int:
    _pin(config.cpus, index)
    server = Server(config, context, sock)
    old = {s: signal.signal(s, lambda *_: server.stop()) for s in (signal.SIGINT, signal.SIGTERM)}
    if on_server is not None:
        on_server(server)
    try:
        stats = server.serve_forever(ready)
    finally:
        for s, h in old.items():
            signal.signal(s, h)
    if stats_file is not None:
        with open(stats_file, "w") as f:
            json.dump(asdict(stats), f)
    return 0


def _serve_many(
    config: ServerConfig,
    context: TLSContext | None,
    ready: Callable[[str], None] | None,
    stats_file: str | None,
    on_server: OnServer | None,
) -> int:
    """Fork N workers, each with its own SO_REUSEPORT socket on one port."""
    holder = listen(config, reuse_port=True)  # picks the port (and holds it meanwhile)
    port = holder.getsockname()[1]
    cfg = ServerConfig(**{**asdict(config), "port": port})
    pids, pipes = [], []
    for i in range(config.workers):
        r, w = os.pipe()
        pid = os.fork()
        if pid == 0:  # the worker
            code = 1
            try:
                os.close(r)
                holder.close()
                sock = listen(cfg, reuse_port=True)
                part = None if stats_file is None else f"{stats_file}.{i}"
                code = _serve_one(
                    cfg, context, sock, i, lambda url, w=w: os.write(w, b"1"), part, on_server
                )
            finally:
                os._exit(code)
        os.close(w)
        pids.append(pid)
        pipes.append(r)
    stopping = False

    def forward(signum: int, frame: object) -> None:
        nonlocal stopping
        stopping = True
        for pid in pids:
            try:
                os.kill(pid, signal.SIGTERM)
            except ProcessLookupError:
                pass

    old = {s: signal.signal(s, forward) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        for r in pipes:
            if os.read(r, 1) != b"1":
                forward(signal.SIGTERM, None)
                break
        holder.close()
        if not stopping and ready is not None:
            ready(f"{'wss' if cfg.tls else 'ws'}://{cfg.host}:{port}/")
        code = 0
        for pid in pids:
            _, status = os.waitpid(pid, 0)
            code = code or os.waitstatus_to_exitcode(status)
    finally:
        for s, h in old.items():
            signal.signal(s, h)
        for r in pipes:
            os.close(r)
    if stats_file is not None:
        _merge_stats(stats_file, config.workers)
    return code


def _merge_stats(stats_file: str, workers: int) -> None:
    total = ServerStats()
    for i in range(workers):
        try:
            with open(f"{stats_file}.{i}") as f:
                part = json.load(f)
            os.unlink(f"{stats_file}.{i}")
        except (OSError, ValueError):
            continue
        for k in ("connections", "messages_fast", "messages_slow", "bytes_echoed", "cpu_s"):
            setattr(total, k, getattr(total, k) + part[k])
        for k, v in part["ledger"].items():
            total.ledger[k] = total.ledger.get(k, 0) + v
        for k, v in part.get("loop", {}).items():
            total.loop[k] = total.loop.get(k, 0) + v
    with open(stats_file, "w") as f:
        json.dump(asdict(total), f)
