"""The copy ledger: where each copy of a message happens, per TLS transport.

``python -m wsstls copies`` drives messages through a real TLS 1.3 session
over a socketpair, one message at a time, for every transport and for the two
stdlib designs, and counts - per message, on the sending and on the
receiving side - the copies (memcpy/memmove of at least 16 bytes) by the
library that made them, and the system calls with the bytes the kernel moved.
OpenSSL's own copies are measured by the preloaded shim (wsstls.measure.memcount),
not assumed: the command re-runs itself in a child process that has it.

Hops, by the library that copies: ``libssl`` the record layer (plaintext into
a record before in-place encryption, decrypted record out to the caller);
``libcrypto`` the BIOs (memory and pair BIOs copy in and out) and one 16-byte
AEAD tag per record; ``wsstls`` its rings; ``python`` the interpreter
(bytes objects); the kernel's copies are the system calls' bytes.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field

from ..cliargs import Parser, choice_list, integer, size_list
from ..tls import openssl_version, self_signed
from .memcount import CLASSES, Counter, Counts, preload_env
from .paths import PATHS, VARIANTS, make_path

__all__ = ["PATHS", "Measurement", "main", "measure"]

_CHILD_FLAG = "--in-child"
MAX_SIZE = 16 << 20  # the largest message size measured (bytes)


# ------------------------------------------------------------------ measuring


@dataclass
class Measurement:
    """Per message, on each side of one direction (client sends, server receives)."""

    path: str
    size: int
    messages: int
    sender: Counts = field(default_factory=Counts)
    receiver: Counts = field(default_factory=Counts)
    ledger: dict[str, int] | None = None  # wsstls's own counters over the same messages

    def per_message(self, side: str, kind: str, cls: str) -> tuple[float, float]:
        counts: Counts = getattr(self, side)
        key = (kind, cls)
        return (
            counts.calls.get(key, 0) / self.messages,
            counts.bytes.get(key, 0) / self.messages,
        )

    def as_dict(self) -> dict[str, object]:
        out: dict[str, object] = {"path": self.path, "size": self.size, "messages": self.messages}
        for side in ("sender", "receiver"):
            counts: Counts = getattr(self, side)
            out[side] = {
                f"{kind}:{cls}": {
                    "calls": counts.calls[(kind, cls)] / self.messages,
                    "bytes": counts.bytes[(kind, cls)] / self.messages,
                }
                for kind, cls in sorted(counts.calls)
            }
        if self.ledger is not None:
            out["ledger"] = {k: v / self.messages for k, v in self.ledger.items()}
        return out


@contextmanager
def _window(counter: Counter | None, into: Counts) -> Iterator[None]:
    if counter is None:
        yield
        return
    counter.start()
    try:
        yield
    finally:
        into += counter.stop()


def measure(
    paths: tuple[str, ...], sizes: tuple[int, ...], messages: int, warmup: int = 5
) -> list[Measurement]:
    """Drive ``messages`` messages of each size through each path; count each side.

    Counts come from the shim when this process has it preloaded; the wsstls
    paths also report their own ledger either way.
    """
    counter = Counter() if Counter.available() else None
    cert = self_signed("localhost")
    results = []
    for size in sizes:
        msg = bytes(range(256)) * (size // 256) + bytes(range(size % 256))
        for name in paths:
            path = make_path(name, cert, max(65536, 2 * size))
            try:
                for _ in range(warmup):  # session tickets, buffer growth
                    path.client_send(msg)
                    path.server_recv(size)
                path.reset_ledger()
                m = Measurement(path.name, size, messages)
                for _ in range(messages):
                    with _window(counter, m.sender):
                        path.client_send(msg)
                    with _window(counter, m.receiver):
                        path.server_recv(size)
                m.ledger = path.ledger()
                results.append(m)
            finally:
                path.close()
    return results


# ------------------------------------------------------------------ reporting


def _fmt(x: float) -> str:
    return f"{x:.0f}" if x == int(x) else f"{x:.2f}"


_COLS = ("libssl", "libcrypto", "wsstls", "python", "other")
_HEAD = ("ssl", "crypto", "wsstls", "python", "other", "sys", "kernelB")


def _side(m: Measurement, side: str, measured: bool) -> list[str]:
    kernel = "write" if side == "sender" else "read"
    cells = []
    for cls in _COLS:
        group = ("libc", "other") if cls == "other" else (cls,)
        n = sum(m.per_message(side, "copy", c)[0] for c in group)
        cells.append(_fmt(n) if measured else "-")
    if measured:
        cells.append(_fmt(sum(m.per_message(side, kernel, c)[0] for c in CLASSES)))
        cells.append(_fmt(sum(m.per_message(side, kernel, c)[1] for c in CLASSES)))
    elif m.ledger is not None:  # wsstls's own count of its system calls
        key = "sender_tx_syscalls" if side == "sender" else "receiver_rx_syscalls"
        cells += [_fmt(m.ledger[key] / m.messages), "-"]
    else:
        cells += ["-", "-"]
    return cells


def _table(results: list[Measurement], measured: bool) -> str:
    w = 7
    group = " ".join(f"{h:>{w}s}" for h in _HEAD)
    half = len(group)
    lines = []
    for size in sorted({m.size for m in results}):
        lines.append(f"\n{size} B messages, per message: copies (memcpy/memmove >= 16 B) "
                     "by library, system calls, kernel bytes")  # fmt: skip
        lines.append(f"  {'':26s} {'sender':^{half}s} | {'receiver':^{half}s} | both sides")
        lines.append(f"  {'path':26s} {group} | {group} | copies   bytes")
        for m in (m for m in results if m.size == size):
            snd = " ".join(f"{c:>{w}s}" for c in _side(m, "sender", measured))
            rcv = " ".join(f"{c:>{w}s}" for c in _side(m, "receiver", measured))
            both = ""
            if measured:
                sides = ("sender", "receiver")
                copies = sum(m.per_message(s, "copy", c)[0] for s in sides for c in CLASSES)
                copied = sum(m.per_message(s, "copy", c)[1] for s in sides for c in CLASSES)
                both = f"{_fmt(copies):>6s} {_fmt(copied):>7s}"
            lines.append(f"  {m.path:26s} {snd} | {rcv} | {both}")
    return "\n".join(lines)


def _run(args: argparse.Namespace) -> int:
    results = measure(tuple(args.paths), tuple(args.sizes), args.messages)
    measured = Counter.available()
    if args.json:
        doc = {
            "openssl": openssl_version(),  # the library the counts are OpenSSL's copies of
            "measured_openssl": measured,
            "results": [m.as_dict() for m in results],
        }
        json.dump(doc, sys.stdout, indent=2)
        print()
        return 0
    print(f"wsstls copy ledger - {openssl_version()}, TLS 1.3 over a socketpair, "
          f"{args.messages} messages per cell")  # fmt: skip
    if not measured:
        print("(the copy-counting shim is not preloaded: OpenSSL's own copies are not measured;"
              " system calls from wsstls's counters)")  # fmt: skip
    print(_table(results, measured))
    return 0


def main(argv: list[str] | None = None) -> int:
    p = Parser(prog="wsstls copies", description=__doc__.split("\n\n")[0])
    p.add_argument("--sizes", type=size_list(1, MAX_SIZE), default=[64, 1024, 16384],
                   help="message sizes in bytes, comma separated (64,1K,16K)")  # fmt: skip
    p.add_argument("--paths", type=choice_list((*PATHS, *VARIANTS)), default=list(PATHS),
                   help=f"comma separated, any of {', '.join((*PATHS, *VARIANTS))}")  # fmt: skip
    p.add_argument("--messages", type=integer(1, 1_000_000), default=200,
                   help="messages per cell")  # fmt: skip
    p.add_argument("--json", action="store_true", help="print JSON instead of tables")
    p.add_argument(_CHILD_FLAG, action="store_true", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if getattr(args, _CHILD_FLAG.lstrip("-").replace("-", "_")) or Counter.available():
        return _run(args)
    env = preload_env()
    if env is None:
        return _run(args)
    argv = list(sys.argv[1:] if argv is None else argv)
    cmd = [sys.executable, "-m", "wsstls", "copies", *argv, _CHILD_FLAG]
    return subprocess.run(cmd, env=env, check=False).returncode
