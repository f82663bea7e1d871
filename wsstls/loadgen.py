"""The benchmark client: a WebSocket echo load generator with its hot loop in C.

The method is the seed report's Go client (gorilla/websocket): every connection
sends one message of ``size`` bytes (binary, or text), waits for the echo,
checks it byte for byte and sends the next.  Only round trips completed in the
measured window - after the connections are set up and ``warmup`` seconds have
passed - are counted.  See ``csrc/loadgen/loadgen.h`` for the event loop (one
level-triggered epoll per thread), failure accounting and the close sequence.

``threads`` > 1 splits the connections over that many Python threads, each
running one C event loop (the GIL is released for the whole run).  Each thread
measures its own window of ``duration`` seconds after its own warm-up; rates
and CPU loads are summed over the threads, latency percentiles come from all
samples of all threads together (exact, nearest rank).

Example::

    from wsstls.loadgen import run
    r = run("wss://127.0.0.1:9001/", connections=100, size=64, duration=5)
    print(f"{r.msg_per_s:,.0f} msg/s, p99 {r.lat_p99_us:.0f} us, client {r.client_cpu:.2f} cores")
"""

from __future__ import annotations

import ipaddress
import math
import os
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Protocol
from urllib.parse import urlsplit

from ._cdata import ffi, handle, lib
from .tls import TLSContext

__all__ = ["LoadResult", "LoadgenError", "StopFlag", "parse_url", "run"]

MAX_CONNECTIONS = 1 << 20
MAX_SIZE = 1 << 30


class LoadgenError(OSError):
    """The load generator could not run (a system call failed: CPU pinning, epoll, memory)."""


class StopFlag(Protocol):
    """Anything with ``is_set()``, such as ``threading.Event``."""

    def is_set(self) -> bool: ...


@dataclass(frozen=True)
class LoadResult:
    """Figures of one run (all threads merged).

    ``mb_per_s`` is payload in one direction, in 10**6 bytes per second.  The
    seed report's "MB/s" column counts both directions in MiB: that is
    ``seed_mb_per_s``.  ``client_cpu`` is the generator's CPU time over the
    window divided by the window (summed over threads: 0.95 = one core busy).
    Latencies are exact percentiles (nearest rank) over every round trip of
    the window.
    """

    msg_per_s: float
    mb_per_s: float
    lat_avg_us: float
    lat_p50_us: float
    lat_p99_us: float
    lat_max_us: float
    errors: int
    connect_failures: int
    messages: int
    client_cpu: float
    connections: int
    # the run
    url: str = ""
    size: int = 0
    text: bool = False
    threads: int = 1
    requested_connections: int = 0
    duration_s: float = 0.0  # the measured window (longest over the threads)
    client_cpu_s: float = 0.0  # CPU seconds the generator used in the window
    lat_min_us: float = 0.0
    warmup_messages: int = 0
    stopped: bool = False  # the stop event ended it early
    timed_out: bool = False  # the hard deadline ended it
    first_error: str | None = None  # the first failure, if any
    thread_cpu: tuple[float, ...] = ()  # each thread's load over its window (cores)

    @property
    def seed_mb_per_s(self) -> float:
        """Throughput as the seed report's MB/s column: both directions, MiB/s."""
        return self.msg_per_s * self.size * 2 / (1 << 20)

    @property
    def client_cpu_us_per_msg(self) -> float:
        """Client CPU time per round trip (µs): the generator's own cost."""
        return self.client_cpu_s * 1e6 / self.messages if self.messages else math.nan


@dataclass(frozen=True)
class Target:
    """A parsed ws:// or wss:// URL."""

    tls: bool
    host: str  # IPv4 address
    port: int
    path: str  # request target
    host_header: str
    server_name: str  # TLS name: the URL's host as written


def parse_url(url: str) -> Target:
    """Parse ``ws://`` / ``wss://`` URLs whose host is an IPv4 address or localhost."""
    if not isinstance(url, str):
        raise TypeError(f"url must be a str, not {type(url).__name__}")
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError as e:
        raise ValueError(f"url: {e}: {url!r}") from None
    scheme = parts.scheme.lower()
    if scheme not in ("ws", "wss"):
        raise ValueError(f"url: the scheme must be ws or wss, got {url!r}")
    if parts.username is not None or parts.password is not None:
        raise ValueError(f"url: user information is not supported: {url!r}")
    name = parts.hostname or ""
    if name == "localhost":
        host = "127.0.0.1"
    else:
        try:
            host = str(ipaddress.IPv4Address(name))
        except ValueError:
            raise ValueError(
                f"url: the host must be an IPv4 address or localhost, got {name!r}"
            ) from None
    tls = scheme == "wss"
    if port is None:
        port = 443 if tls else 80
    if port == 0:
        raise ValueError(f"url: port 0 is not a port: {url!r}")
    path = parts.path or "/"
    if parts.query:
        path += "?" + parts.query
    if any(ord(ch) <= 0x20 or ord(ch) >= 0x7F for ch in path):
        raise ValueError(f"url: the path must be printable ASCII without spaces: {path!r}")
    netloc_host = parts.netloc.rsplit("@", 1)[-1]
    return Target(tls, host, port, path, netloc_host, name)


def _int_arg(value: Any, name: str, lo: int, hi: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"{name} must be an int, not {type(value).__name__}")
    if not lo <= value <= hi:
        raise ValueError(f"{name} must be {lo} .. {hi}, got {value}")
    return value


def _seconds(value: Any, name: str, *, positive: bool) -> int:
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise TypeError(f"{name} must be a number of seconds, not {type(value).__name__}")
    if not math.isfinite(value) or value < 0 or (positive and value == 0):
        need = "> 0" if positive else ">= 0"
        raise ValueError(f"{name} must be a finite number of seconds {need}, got {value}")
    if value > 1e9:
        raise ValueError(f"{name} is too large: {value}")
    ns = round(value * 1e9)
    return max(ns, 1) if positive else ns


def _cpus(cpu: int | Sequence[int] | None, threads: int) -> list[int]:
    if cpu is None:
        return [-1] * threads
    allowed = os.sched_getaffinity(0)
    if isinstance(cpu, int):
        cpus = [cpu] * threads
    elif isinstance(cpu, Sequence):
        cpus = list(cpu)
    else:
        raise TypeError(f"cpu must be an int, a sequence of ints or None, not {type(cpu).__name__}")
    if len(cpus) != threads:
        raise ValueError(f"cpu: {len(cpus)} CPUs given for {threads} threads")
    for c in cpus:
        if isinstance(c, bool) or not isinstance(c, int):
            raise TypeError(f"cpu must hold ints, not {type(c).__name__}")
        if c not in allowed:
            raise ValueError(f"cpu {c} is not available to this process (have {sorted(allowed)})")
    return cpus


def run(
    url: str,
    *,
    connections: int = 100,
    size: int = 64,
    duration: float = 2.0,
    warmup: float = 0.5,
    threads: int = 1,
    text: bool = False,
    tls_context: TLSContext | None = None,
    records: str = "direct",
    cpu: int | Sequence[int] | None = None,
    stop_event: StopFlag | None = None,
    connect_timeout: float = 10.0,
    deadline: float | None = None,
    seed: int = 0,
    on_window: Callable[[str], None] | None = None,
) -> LoadResult:
    """Run the echo benchmark against ``url`` and return the merged figures.

    ``tls_context``: a client TLSContext for wss:// (default: one with
    ``verify=False`` and ``records``: "direct" for wsstls's own TLS 1.3
    record layer, or "openssl").  ``cpu``: pin every thread to this CPU, or thread i to
    ``cpu[i]`` (each thread's affinity is restored afterwards).
    ``stop_event``: when it is set (from another thread) the run ends early;
    the result then has ``stopped=True``.  ``connect_timeout``: for all the
    connections to finish connecting and their handshakes.  ``deadline``:
    hard limit for the whole run in seconds (default: connect_timeout +
    warmup + duration + 5).  ``seed``: payloads and masks (0: random).
    ``on_window``: called with "start" once every thread is measuring and
    with "end" once every thread's window closed (within about a
    millisecond of it, from the calling thread): e.g. to sample a server's
    CPU time over exactly the measured window.
    """
    target = parse_url(url)
    connections = _int_arg(connections, "connections", 1, MAX_CONNECTIONS)
    size = _int_arg(size, "size", 0, MAX_SIZE)
    threads = _int_arg(threads, "threads", 1, 1024)
    if threads > connections:
        raise ValueError(f"threads ({threads}) must not exceed connections ({connections})")
    if not isinstance(text, bool):
        raise TypeError(f"text must be a bool, not {type(text).__name__}")
    duration_ns = _seconds(duration, "duration", positive=True)
    warmup_ns = _seconds(warmup, "warmup", positive=False)
    connect_ns = _seconds(connect_timeout, "connect_timeout", positive=True)
    deadline_ns = 0 if deadline is None else _seconds(deadline, "deadline", positive=True)
    seed = _int_arg(seed, "seed", 0, (1 << 64) - 1)
    cpus = _cpus(cpu, threads)
    if stop_event is not None and not callable(getattr(stop_event, "is_set", None)):
        raise TypeError("stop_event must have an is_set() method (e.g. threading.Event)")
    if tls_context is not None:
        if not isinstance(tls_context, TLSContext):
            raise TypeError(f"tls_context must be a TLSContext, not {type(tls_context).__name__}")
        if tls_context.server:
            raise ValueError("tls_context must be a client context (server=False)")
        if not target.tls:
            raise ValueError("tls_context is only for wss:// URLs")
    elif target.tls:
        tls_context = TLSContext(False, verify=False, records=records)

    keep: list[Any] = []  # C strings referenced by the configs

    def cstr(s: str) -> Any:
        b = ffi.new("char[]", s.encode("ascii"))
        keep.append(b)
        return b

    stop = ffi.new("int *")
    phases = ffi.new("int[]", threads)
    shares = [connections // threads + (i < connections % threads) for i in range(threads)]
    cfgs, outs = [], []
    for i in range(threads):
        cfg = ffi.new("struct loadgen_config *")
        cfg.host = cstr(target.host)
        cfg.port = target.port
        cfg.path = cstr(target.path)
        cfg.host_header = cstr(target.host_header)
        cfg.use_tls = int(target.tls)
        cfg.ssl_ctx = handle(tls_context) if tls_context is not None else ffi.NULL
        cfg.server_name = cstr(target.server_name) if target.tls else ffi.NULL
        cfg.connections = shares[i]
        cfg.message_size = size
        cfg.text = int(text)
        cfg.warmup_ns = warmup_ns
        cfg.duration_ns = duration_ns
        cfg.connect_timeout_ns = connect_ns
        cfg.deadline_ns = deadline_ns
        cfg.cpu = cpus[i]
        cfg.stop = stop
        cfg.phase = phases + i
        cfg.seed = (seed + i * 0x9E3779B97F4A7C15) % (1 << 64) if seed else 0
        cfgs.append(cfg)
        outs.append(ffi.new("struct loadgen_result *"))

    rcs = [0] * threads

    def worker(i: int) -> None:
        rcs[i] = lib.loadgen_run(cfgs[i], outs[i])

    workers = [
        threading.Thread(target=worker, args=(i,), name=f"wsstls-loadgen-{i}", daemon=True)
        for i in range(threads)
    ]
    try:
        for t in workers:
            t.start()
        seen = 0  # 1: "start" reported, 3: "end" reported
        for t in workers:
            while t.is_alive():
                if stop_event is not None and stop_event.is_set():
                    lib.loadgen_request_stop(stop)
                if on_window is not None:
                    now = min(lib.loadgen_phase(phases + i) for i in range(threads))
                    if now >= 2 and seen < 1:
                        seen = 1
                        on_window("start")
                    if now >= 3 and seen < 3:
                        seen = 3
                        on_window("end")
                t.join(0.001 if on_window is not None else 0.02)
        if on_window is not None and seen == 1:
            on_window("end")
    except BaseException:  # KeyboardInterrupt: stop the C loops, then let it through
        lib.loadgen_request_stop(stop)
        for t in workers:
            if t.ident is not None:
                t.join()
        for out in outs:
            lib.loadgen_result_free(out)
        raise
    try:
        for i, rc in enumerate(rcs):
            if rc != 0:
                message = ffi.string(outs[i].error).decode("utf-8", "replace")
                raise LoadgenError(-rc, message or os.strerror(-rc))
        return _merge(outs, url=url, size=size, text=text, connections=connections)
    finally:
        for out in outs:
            lib.loadgen_result_free(out)


def _merge(outs: list[Any], *, url: str, size: int, text: bool, connections: int) -> LoadResult:
    messages = sum(o.messages for o in outs)
    rate = sum(o.messages * 1e9 / o.wall_ns for o in outs if o.wall_ns)
    load = sum(o.cpu_ns / o.wall_ns for o in outs if o.wall_ns)
    if len(outs) == 1:
        p50, p99 = outs[0].lat_p50_ns, outs[0].lat_p99_ns
    else:
        q = ffi.new("double[]", [0.5, 0.99])
        res = ffi.new("uint64_t[]", 2)
        ptrs = ffi.new("struct loadgen_result *[]", outs)
        rc = lib.loadgen_percentiles(ptrs, len(outs), q, 2, res)
        if rc != 0:
            raise LoadgenError(-rc, "cannot merge the latency samples: " + os.strerror(-rc))
        p50, p99 = res[0], res[1]
    with_msgs = [o for o in outs if o.messages]
    errors = [ffi.string(o.error).decode("utf-8", "replace") for o in outs if o.error[0] != b"\0"]
    return LoadResult(
        msg_per_s=rate,
        mb_per_s=rate * size / 1e6,
        lat_avg_us=sum(o.lat_sum_ns for o in outs) / messages / 1e3 if messages else 0.0,
        lat_p50_us=p50 / 1e3,
        lat_p99_us=p99 / 1e3,
        lat_max_us=max((o.lat_max_ns for o in outs), default=0) / 1e3,
        errors=sum(o.errors for o in outs),
        connect_failures=sum(o.connect_failures for o in outs),
        messages=messages,
        client_cpu=load,
        connections=sum(o.connections for o in outs),
        url=url,
        size=size,
        text=text,
        threads=len(outs),
        requested_connections=connections,
        duration_s=max((o.wall_ns for o in outs), default=0) / 1e9,
        client_cpu_s=sum(o.cpu_ns for o in outs) / 1e9,
        lat_min_us=min((o.lat_min_ns for o in with_msgs), default=0) / 1e3,
        warmup_messages=sum(o.warmup_messages for o in outs),
        stopped=any(o.stopped for o in outs),
        timed_out=any(o.timed_out for o in outs),
        first_error=errors[0] if errors else None,
        thread_cpu=tuple(o.cpu_ns / o.wall_ns if o.wall_ns else 0.0 for o in outs),
    )
