"""The server's settings (what ``python -m wsstls serve`` can set) and its counters."""

from __future__ import annotations

import enum
from dataclasses import dataclass, field, fields
from typing import Any

from ..tls import Transport

__all__ = ["Mode", "ServerConfig", "ServerStats", "url"]


class Mode(str, enum.Enum):
    INLINE = "inline"
    OFFLOAD = "offload"
    BATCHED = "batched"
    THRESHOLD = "threshold"


@dataclass(frozen=True)
class ServerConfig:
    """Everything ``python -m wsstls serve`` can set."""

    host: str = "127.0.0.1"
    port: int = 0
    tls: bool = True
    certfile: str | None = None
    keyfile: str | None = None
    transport: Transport = Transport.RING
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

    def check(self) -> None:
        """Raise ValueError for settings that cannot work together."""
        if self.mode is not Mode.INLINE:
            if not self.tls:
                raise ValueError(f"--mode {self.mode.value} offloads TLS work: it needs --tls")
            if self.transport is not Transport.RING:
                raise ValueError(
                    f"--mode {self.mode.value} hands ciphertext over through the rings: "
                    "it needs --transport ring"
                )
        for name in ("threads", "workers", "ring_capacity", "backlog"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be at least 1")
        if self.ring_capacity < 4096:
            raise ValueError("ring_capacity must be at least 4096 (one page, mirrored)")
        if self.max_message < 0 or self.offload_threshold < 0 or self.handshake_timeout <= 0:
            raise ValueError("max_message, offload_threshold >= 0 and handshake_timeout > 0")
        if (self.certfile is None) != (self.keyfile is None):
            raise ValueError("give both --cert and --key, or neither")


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
    ledger: dict[str, int] = field(default_factory=dict)  # summed over connections
    loop: dict[str, int] = field(default_factory=dict)  # the C loop's counters
    # With the copy-counting shim preloaded: what the window between SIGUSR1
    # and SIGUSR2 counted, "kind:library" -> [calls, bytes] (see wsstls.measure.ledger).
    memcount: dict[str, list[int]] = field(default_factory=dict)

    def add_ledger(self, ledger: Any) -> None:
        for f in fields(ledger):
            self.ledger[f.name] = self.ledger.get(f.name, 0) + getattr(ledger, f.name)
