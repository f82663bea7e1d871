"""``python -m wsstls serve``: the echo server's command line."""

from __future__ import annotations

import sys

from ..cliargs import Parser, cpu_list, host, input_file, integer, number, output_file, port, size
from ..tls import RECORDS, TLSError, Transport
from .config import LIMITS, Mode, ServerConfig
from .loop import server_context
from .workers import EXIT_FAILED, EXIT_USAGE, OnServer, serve

__all__ = ["main", "parse"]


def _limit(name: str) -> tuple[int, int]:
    lo, hi = LIMITS[name]
    return int(lo), int(hi)


def parse(argv: list[str] | None = None) -> tuple[ServerConfig, str | None]:
    """The command line as a checked ServerConfig and the ``--stats`` file.

    A bad input ends the process with one line naming the option (exit 2).
    """
    p = Parser(prog="wsstls serve", description="The WSS echo server.")
    p.add_argument("--host", type=host, default="127.0.0.1", help="address or name to listen on")
    p.add_argument("--port", type=port, default=0, help="0 picks a free port")
    g = p.add_mutually_exclusive_group()
    g.add_argument("--tls", dest="tls", action="store_true", default=True, help="wss:// (default)")
    g.add_argument("--no-tls", dest="tls", action="store_false", help="plain ws://")
    p.add_argument("--cert", type=input_file, help="certificate chain (PEM); default: "
                   "self-signed, in memory")  # fmt: skip
    p.add_argument("--key", type=input_file, help="its private key (PEM, unencrypted)")
    p.add_argument("--transport", choices=[t.value for t in Transport], default="ring")
    p.add_argument("--records", choices=RECORDS, default=None,
                   help="who seals and opens TLS 1.3 records after the handshake (default: "
                   "direct, but openssl for --transport mem/pair/fd and the async and "
                   "pipelined modes)")  # fmt: skip
    p.add_argument("--mode", choices=[m.value for m in Mode], default="inline")
    p.add_argument("--threads", type=integer(*_limit("threads")), default=2,
                   help="offload threads")  # fmt: skip
    p.add_argument("--offload-threshold", type=size(*_limit("offload_threshold")),
                   default=16384, metavar="BYTES", help="threshold mode")  # fmt: skip
    p.add_argument("--workers", type=integer(*_limit("workers")), default=1,
                   help="processes sharing the port (supervised: see the README)")  # fmt: skip
    p.add_argument("--cpus", type=cpu_list, default=(), metavar="LIST",
                   help="pin process i to CPU LIST[i], e.g. 0 or 0,1 or 0-3")  # fmt: skip
    p.add_argument("--max-message", type=size(*_limit("max_message")),
                   default=16 * 1024 * 1024, metavar="BYTES")  # fmt: skip
    p.add_argument("--ring-capacity", type=size(*_limit("ring_capacity")), default=65536,
                   metavar="BYTES", help="per connection, rounded up to 2**n")  # fmt: skip
    p.add_argument("--handshake-timeout", type=number(0, LIMITS["handshake_timeout"][1],
                   lo_open=True, unit="seconds"), default=10.0, metavar="SECONDS")  # fmt: skip
    p.add_argument("--no-fast-path", dest="fast_path", action="store_false",
                   help="every frame through the Python framer")  # fmt: skip
    p.add_argument("--memory-budget", type=size(*_limit("memory_budget")),
                   default=256 * 1024 * 1024, metavar="BYTES",
                   help="assembled messages and queued output, per process; a message "
                   "beyond it is refused with close code 1013 (default 256M)")  # fmt: skip
    p.add_argument("--ping-interval", type=number(*_limit("ping_interval"), unit="seconds"),
                   default=20.0, metavar="SECONDS",
                   help="ping a connection silent this long (default 20; 0: never)")  # fmt: skip
    p.add_argument("--idle-timeout", type=number(*_limit("idle_timeout"), unit="seconds"),
                   default=60.0, metavar="SECONDS",
                   help="close a connection silent this long (default 60; 0: never)")  # fmt: skip
    p.add_argument("--park-after", type=number(*_limit("park_after"), unit="seconds"),
                   default=1.0, metavar="SECONDS",
                   help="give an idle connection's ring and TLS buffers back after this "
                   "long (default 1; 0: never)")  # fmt: skip
    p.add_argument("--stats", type=output_file, metavar="FILE",
                   help="write counters as JSON on exit")  # fmt: skip
    k = p.add_argument_group("pipelining and ASYNC jobs (--mode pipelined, async, pipelined+async)")
    k.add_argument("--pipelines", type=integer(1, 32), default=4,
                   help="records per cipher call (TLS 1.2)")  # fmt: skip
    k.add_argument("--split-send-fragment", type=size(512, 16384), metavar="BYTES",
                   help="bytes per pipelined record (default: --max-send-fragment)")  # fmt: skip
    k.add_argument("--max-send-fragment", type=size(512, 16384), metavar="BYTES",
                   help="bytes per record (default 16384)")  # fmt: skip
    k.add_argument("--read-buffer", type=size(0, 1 << 24), metavar="BYTES",
                   help="OpenSSL's read buffer (default: pipelines x one record)")  # fmt: skip
    k.add_argument("--crypto-threads", type=integer(1, 256),
                   help="crypto pool workers (default: the usable CPUs less one)")  # fmt: skip
    k.add_argument("--tls-max", choices=["1.2", "1.3"],
                   help="highest TLS version (default 1.3; 1.2 when pipelined)")  # fmt: skip
    a = p.parse_args(argv)
    try:
        cfg = ServerConfig(
            host=a.host, port=a.port, tls=a.tls, certfile=a.cert, keyfile=a.key,
            transport=Transport(a.transport), records=a.records, mode=Mode(a.mode),
            threads=a.threads,
            offload_threshold=a.offload_threshold, workers=a.workers, cpus=a.cpus,
            max_message=a.max_message, ring_capacity=a.ring_capacity,
            handshake_timeout=a.handshake_timeout, fast_path=a.fast_path,
            memory_budget=a.memory_budget, ping_interval=a.ping_interval,
            idle_timeout=a.idle_timeout, park_after=a.park_after,
            pipelines=a.pipelines, split_send_fragment=a.split_send_fragment,
            max_send_fragment=a.max_send_fragment, read_buffer=a.read_buffer,
            crypto_threads=a.crypto_threads, tls_max=a.tls_max,
        )  # fmt: skip
        cfg.check()
        if cfg.tls:
            from ..tls import TLSContext

            # the record knobs checked now (a client context takes the same ones)
            TLSContext(False, verify=False, **cfg.context_kwargs())
    except ValueError as exc:
        p.error(str(exc))
    return cfg, a.stats


def main(argv: list[str] | None = None, on_server: OnServer | None = None) -> int:
    """``python -m wsstls serve``: the exit status (``wsstls.server.workers.EXIT_*``)."""
    cfg, stats = parse(argv)
    context = None
    if cfg.tls:
        try:
            context = server_context(cfg)
        except (OSError, TLSError) as exc:  # a file named on the command line: exit 2
            what = str(exc) if isinstance(exc, TLSError) else f"{exc.filename}: {exc.strerror}"
            print(f"wsstls serve: error: --cert/--key: {what}", file=sys.stderr)
            return EXIT_USAGE

    def ready(url: str) -> None:
        print(f"listening on {url}", flush=True)

    if cfg.mode.pipelined:  # said plainly: pipelining is a TLS 1.2 feature
        print(f"wsstls serve: --mode {cfg.mode.value}: TLS 1.2 clients get up to "
              f"{cfg.pipelines} records per cipher call; TLS 1.3 clients get one"
              + (" (TLS 1.3 allowed by --tls-max 1.3)" if cfg.tls_max == "1.3" else
                 " (the server offers TLS 1.2 at most; --tls-max 1.3 to allow 1.3)"),
              file=sys.stderr, flush=True)  # fmt: skip

    try:
        return serve(cfg, ready, stats, on_server, context)
    except (OSError, TLSError) as exc:
        print(f"wsstls serve: {exc.strerror or exc}" if isinstance(exc, OSError) else
              f"wsstls serve: {exc}", file=sys.stderr)  # fmt: skip
        return EXIT_FAILED
