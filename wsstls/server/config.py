"""The server's settings (what ``python -m wsstls serve`` can set) and its counters."""

from __future__ import annotations

import enum
import math
import os
from dataclasses import dataclass, field, fields
from typing import Any

from ..tls import RECORDS, Transport

__all__ = ["LIMITS", "Mode", "ServerConfig", "ServerStats", "url"]

#: What each numeric setting may be, inclusive (``handshake_timeout``: above 0).
#: The command line's checks and ``ServerConfig.check`` both read these.
LIMITS: dict[str, tuple[float, float]] = {
    "port": (0, 65535),
    "threads": (1, 1024),  # offload_new's bound
    "workers": (1, 1024),
    "offload_threshold": (0, 2**63 - 1),  # bytes one read brought
    "max_message": (0, 2**63 - 1),  # RFC 6455's largest payload length
    "ring_capacity": (4096, 2**30),  # one page (mirrored) to TLSConnection's largest ring
    "handshake_timeout": (0, 3600),  # seconds, above 0
    "backlog": (1, 65535),
    "memory_budget": (1, 2**40),  # bytes, per process
    "ping_interval": (0, 86400),  # seconds, 0: off
    "idle_timeout": (0, 86400),  # seconds, 0: off
    "park_after": (0, 86400),  # seconds, 0: never
}
#: Settings in seconds (floats); the others are ints.  handshake_timeout must be above 0.
SECONDS = ("handshake_timeout", "ping_interval", "idle_timeout", "park_after")


class Mode(str, enum.Enum):
    INLINE = "inline"
    OFFLOAD = "offload"
    BATCHED = "batched"
    THRESHOLD = "threshold"
    ASYNC = "async"  # OpenSSL ASYNC jobs: records >= offload_threshold pause the SSL call
    PIPELINED = "pipelined"  # OpenSSL pipelining (TLS 1.2): N records per cipher call
    PIPELINED_ASYNC = "pipelined+async"  # both: one pause per pipelined batch

    @property
    def offloads(self) -> bool:
        """The seed's offload designs (the loop hands connections to a thread pool)."""
        return self in (Mode.OFFLOAD, Mode.BATCHED, Mode.THRESHOLD)

    @property
    def asynchronous(self) -> bool:
        return self in (Mode.ASYNC, Mode.PIPELINED_ASYNC)

    @property
    def pipelined(self) -> bool:
        return self in (Mode.PIPELINED, Mode.PIPELINED_ASYNC)


@dataclass(frozen=True)
class ServerConfig:
    """Everything ``python -m wsstls serve`` can set."""

    host: str = "127.0.0.1"
    port: int = 0
    tls: bool = True
    certfile: str | None = None
    keyfile: str | None = None
    transport: Transport = Transport.RING
    # Who seals and opens TLS 1.3 records after the handshake: "direct" (wsstls) or
    # "openssl"; None: direct where it can run (the ring transport, a mode on
    # OpenSSL's default crypto), OpenSSL's records elsewhere.
    records: str | None = None
    mode: Mode = Mode.INLINE
    threads: int = 2
    offload_threshold: int = 16384
    workers: int = 1
    cpus: tuple[int, ...] = ()
    max_message: int = 16 * 1024 * 1024
    ring_capacity: int = 65536
    handshake_timeout: float = 10.0
    fast_path: bool = True
    backlog: int = 1024
    # Memory (per process): assembled messages and queued output together; a
    # message that would take more is refused with close code 1013.
    memory_budget: int = 256 * 1024 * 1024
    # Seconds without an event (input, or output progress) before an open
    # connection is pinged / closed; 0 turns either off.
    ping_interval: float = 20.0
    idle_timeout: float = 60.0
    # Seconds without an event before an idle connection's rings and TLS
    # buffers are given back (parked); 0 keeps them (no idle pool).
    park_after: float = 1.0
    # OpenSSL pipelining and ASYNC jobs (modes pipelined, async, pipelined+async)
    pipelines: int = 4
    split_send_fragment: int | None = None  # bytes; None: max_send_fragment
    max_send_fragment: int | None = None  # bytes; None: 16384
    read_buffer: int | None = None  # bytes; None: OpenSSL's (pipelines x a record)
    crypto_threads: int | None = None  # None: one less than the usable CPUs
    tls_max: str | None = None  # "1.2" or "1.3"; None: 1.3, but 1.2 when pipelined

    @property
    def record_path(self) -> str:
        """``records`` as the server uses it: None resolved to "direct" where the direct
        layer can run (the ring transport, not ASYNC or pipelined), else "openssl"."""
        if self.records is not None:
            return self.records
        if self.transport is Transport.RING and not (self.mode.asynchronous or self.mode.pipelined):
            return "direct"
        return "openssl"

    def check(self) -> None:
        """Raise ValueError for a setting out of its range (``LIMITS``) or settings that
        cannot work together; TypeError for a wrong type."""
        for name, (lo, hi) in LIMITS.items():
            value = getattr(self, name)
            if name in SECONDS:
                if isinstance(value, bool) or not isinstance(value, int | float):
                    raise TypeError(f"{name} must be a number, not {type(value).__name__}")
                above = name == "handshake_timeout"
                low_ok = lo < value if above else lo <= value
                if not (math.isfinite(value) and low_ok and value <= hi):
                    raise ValueError(f"{name} must be {'above' if above else 'from'} {lo} "
                                     f"{'and at most' if above else 'to'} {hi} seconds, "
                                     f"got {value!r}")  # fmt: skip
            elif isinstance(value, bool) or not isinstance(value, int):
                raise TypeError(f"{name} must be an int, not {type(value).__name__}")
            elif not lo <= value <= hi:
                raise ValueError(f"{name} must be from {lo} to {hi}, got {value}")
        for cpu in self.cpus:
            if isinstance(cpu, bool) or not isinstance(cpu, int) or cpu < 0:
                raise ValueError(f"cpus: CPU numbers are ints >= 0, got {cpu!r}")
        if self.mode is not Mode.INLINE:
            if not self.tls:
                raise ValueError(f"--mode {self.mode.value} offloads TLS work: it needs --tls")
            if self.mode.offloads and self.transport is not Transport.RING:
                raise ValueError(
                    f"--mode {self.mode.value} hands ciphertext over through the rings: "
                    "it needs --transport ring"
                )
        if self.records is not None and self.records not in RECORDS:
            raise ValueError(f"--records must be one of {', '.join(RECORDS)}")
        if self.records == "direct" and (self.mode.asynchronous or self.mode.pipelined):
            raise ValueError(f"--mode {self.mode.value} works through OpenSSL's own records: "
                             "not with --records direct")  # fmt: skip
        if self.records == "direct" and self.tls and self.transport is not Transport.RING:
            raise ValueError(
                "--records direct seals records in the rings: it needs --transport ring"
            )
        if self.ping_interval and self.idle_timeout and self.ping_interval >= self.idle_timeout:
            raise ValueError(
                f"--ping-interval ({self.ping_interval:g} s) must be below --idle-timeout "
                f"({self.idle_timeout:g} s): a live peer's pong could not come in time"
            )
        if (self.certfile is None) != (self.keyfile is None):
            raise ValueError("give both --cert and --key, or neither")
        if not self.tls and self.certfile is not None:
            raise ValueError("--no-tls serves plain ws://: --cert and --key are for --tls")
        if not 1 <= self.pipelines <= 32:
            raise ValueError(f"--pipelines must be 1 .. 32, got {self.pipelines}")
        if self.tls_max not in (None, "1.2", "1.3"):
            raise ValueError(f"--tls-max must be 1.2 or 1.3, got {self.tls_max}")
        if self.crypto_threads is not None and not 1 <= self.crypto_threads <= 256:
            raise ValueError(f"--crypto-threads must be 1 .. 256, got {self.crypto_threads}")

    def context_kwargs(self) -> dict[str, Any]:
        """The TLSContext settings of this design (mode, record sizes, versions)."""
        from ..tls import TLSVersion

        kw: dict[str, Any] = {}
        for name in ("split_send_fragment", "max_send_fragment", "crypto_threads"):
            if getattr(self, name) is not None:
                kw[name] = getattr(self, name)
        if self.read_buffer is not None:
            kw["read_buffer_len"] = self.read_buffer
        if self.mode.pipelined:
            kw["pipelines"] = self.pipelines
        if self.mode.asynchronous:
            kw.update(crypto="async", offload_threshold=self.offload_threshold)
        tls_max = self.tls_max or ("1.2" if self.mode.pipelined else None)
        if tls_max == "1.2":
            kw["max_version"] = TLSVersion.TLSv1_2
        return kw

    def check_cpus(self) -> None:
        """Raise ValueError for a CPU in ``cpus`` this process may not use (checked before
        a process pins itself to one of them, after which the others look forbidden)."""
        allowed = os.sched_getaffinity(0)
        for cpu in self.cpus:
            if cpu not in allowed:
                raise ValueError(f"cpus: CPU {cpu} is not one this process may use "
                                 f"({sorted(allowed)})")  # fmt: skip


def url(tls: bool, host: str, port: int) -> str:
    """``wss://HOST:PORT/``, an IPv6 address in brackets (RFC 3986)."""
    if ":" in host:
        host = f"[{host}]"
    return f"{'wss' if tls else 'ws'}://{host}:{port}/"


@dataclass
class ServerStats:
    """What a server process did, for the benchmark (``--stats FILE``)."""

    connections: int = 0
    messages_fast: int = 0  # echoed by the C fast path
    messages_slow: int = 0  # echoed by the Python framer
    bytes_echoed: int = 0
    cpu_s: float = 0.0  # user + system of the process (all its threads)
    pings: int = 0  # keepalive pings sent by Python (the C loop's are in loop["pings"])
    expired: int = 0  # connections closed for a handshake deadline or idle_timeout
    refused_memory: int = 0  # messages refused with 1013 (budget spent, or no ring)
    trims: int = 0  # heap trims (malloc_trim)
    ledger: dict[str, int] = field(default_factory=dict)  # summed over connections
    records: dict[str, int] = field(default_factory=dict)  # closed TLS connections by record path
    loop: dict[str, int] = field(default_factory=dict)  # the C loop's counters
    crypto: dict[str, Any] = field(default_factory=dict)  # pipelining/ASYNC (tls.CryptoCounters)
    # With the copy-counting shim preloaded: what the window between SIGUSR1
    # and SIGUSR2 counted, "kind:library" -> [calls, bytes] (see wsstls.measure.ledger).
    memcount: dict[str, list[int]] = field(default_factory=dict)

    def add_ledger(self, ledger: Any) -> None:
        for f in fields(ledger):
            self.ledger[f.name] = self.ledger.get(f.name, 0) + getattr(ledger, f.name)
