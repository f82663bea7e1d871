"""The ring benchmark: RingBuffer beside the Python FIFOs and the C floor.

Every figure is the median of several rounds; within a round the candidates
run back to back (A B C ... A B C), and ratios are taken against
``ssl.MemoryBIO`` measured in the same rounds, so a noisy machine moves all
candidates together.  Run ``python bench/ring_bench.py --help``.
"""

from __future__ import annotations

import collections
import io
import json
import platform
import socket
import ssl
import statistics
import sys
import time
import timeit
import tracemalloc
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from typing import Any

from .._cdata import ffi, handle, lib
from ..cliargs import Parser, integer, number, output_file
from ..ring import STAGE_SIZE, RingBuffer

SIZES = (64, 1024, 16384)
RING_CAPACITY = 65536


@dataclass
class Row:
    """One candidate at one size: nanoseconds per operation (median of rounds)."""

    name: str
    size: int
    ns: float
    rounds: list[float] = field(default_factory=list)
    ratio: float | None = None  # ns / baseline ns
    note: str = ""


def _median_ns(
    candidates: dict[str, tuple[str, dict[str, Any]]], rounds: int, target_s: float
) -> dict[str, list[float]]:
    """Time each stmt in alternation; return per-round ns per execution.

    A globals dict may carry "__setup__": code run once that binds locals
    (a stmt that rebinds a name, like ``b += d``, needs it local)."""
    timers = {
        name: timeit.Timer(stmt, setup=g.pop("__setup__", "pass"), globals=g)
        for name, (stmt, g) in candidates.items()
    }
    numbers = {}
    for name, t in timers.items():  # calibrate: about target_s per round
        n, took = t.autorange()
        numbers[name] = max(1, int(n * target_s / max(took, 1e-9)))
    results: dict[str, list[float]] = {name: [] for name in timers}
    for _ in range(rounds):
        for name, t in timers.items():
            results[name].append(t.timeit(numbers[name]) / numbers[name] * 1e9)
    return results


def _pair_candidates(size: int) -> tuple[dict[str, tuple[str, dict[str, Any]]], dict[str, str]]:
    """write+read of `size` bytes through every FIFO; all leave themselves empty."""
    data = bytes(range(256)) * (size // 256) or bytes(range(size))
    data = data[:size]
    c: dict[str, tuple[str, dict[str, Any]]] = {}
    notes: dict[str, str] = {}

    c["ssl.MemoryBIO"] = ("m.write(d); m.read(n)", {"m": ssl.MemoryBIO(), "d": data, "n": size})
    rb = RingBuffer(RING_CAPACITY)
    c["wsstls RingBuffer"] = ("rb.write(d); rb.read(n)", {"rb": rb, "d": data, "n": size})
    rbm = RingBuffer(RING_CAPACITY, mirrored=True)
    c["wsstls RingBuffer mirrored"] = ("rb.write(d); rb.read(n)", {"rb": rbm, "d": data, "n": size})

    # The same cffi calls RingBuffer makes, without the method layer.
    raw = RingBuffer(RING_CAPACITY)
    g = {"r": handle(raw), "d": data, "n": size, "w": lib.ring_write, "rd": lib.ring_read}
    if size <= STAGE_SIZE:
        g |= {"st": raw._stage, "u": ffi.unpack}
        c["raw cffi calls"] = ("w(r, d, n); u(st, rd(r, st, n))", g)
    else:
        assert raw._mem is not None
        g |= {"sp": raw._rspans, "s": lib.ring_readable_spans, "m": raw._mem,
              "cons": lib.ring_consume}  # fmt: skip
        c["raw cffi calls"] = (
            "w(r, d, n); s(r, n, sp); m[sp[0]:sp[0] + n].tobytes(); cons(r, n)",
            g,
        )
    notes["raw cffi calls"] = "what RingBuffer calls, minus the method layer"

    c["bytearray FIFO"] = (
        "b += d; out = b[:n]; del b[:n]",
        {"__setup__": "b = bytearray()", "d": data, "n": size},
    )
    notes["bytearray FIFO"] = "returns bytearray"
    c["collections.deque"] = ("q.append(d); q.popleft()", {"q": collections.deque(), "d": data})
    notes["collections.deque"] = "whole chunks only (its best case)"
    bio_stmt = (
        "f.seek(0, 2); f.write(d); f.seek(p); out = f.read(n); p = f.tell()\n"
        "if p == f.seek(0, 2): f.seek(0); f.truncate(); p = 0"
    )
    c["io.BytesIO"] = (
        bio_stmt,
        {"__setup__": "f = io.BytesIO(); p = 0", "io": io, "d": data, "n": size},
    )
    try:
        import ringbuf  # the only published C-backed ring (Cython + Boost)

        rbuf = ringbuf.RingBuffer(format="B", capacity=RING_CAPACITY)
        c["ringbuf (PyPI)"] = ("q.push(d); q.pop(n)", {"q": rbuf, "d": data, "n": size})
        notes["ringbuf (PyPI)"] = "pop returns a memoryview"
    except ImportError:
        notes["ringbuf (PyPI)"] = "not installed (pip install 'wsstls[peers]')"
    return c, notes


def bench_pairs(sizes: tuple[int, ...], rounds: int, target_s: float) -> list[Row]:
    rows = []
    for size in sizes:
        cands, notes = _pair_candidates(size)
        res = _median_ns(cands, rounds, target_s)
        base = statistics.median(res["ssl.MemoryBIO"])
        for name, per_round in res.items():
            ns = statistics.median(per_round)
            rows.append(Row(name, size, ns, per_round, ns / base, notes.get(name, "")))
        for name, note in notes.items():
            if name not in res:
                rows.append(Row(name, size, float("nan"), note=note))
    return rows


def bench_readinto(size: int, rounds: int, target_s: float) -> list[Row]:
    """write + readinto (no allocation) against MemoryBIO write + read.

    Two ring sizes: one record (its memory stays in L1, like MemoryBIO's reused
    buffer) and the default 64 KiB (the copies walk the whole ring)."""
    data = bytes(size)
    cands: dict[str, tuple[str, dict[str, Any]]] = {
        "ssl.MemoryBIO write+read": ("m.write(d); m.read(n)",
                                     {"m": ssl.MemoryBIO(), "d": data, "n": size}),
    }  # fmt: skip
    for cap in (size, RING_CAPACITY):
        for mirrored in (False, True):
            name = f"wsstls{' mirrored' if mirrored else ''} write+readinto, ring {cap // 1024} KiB"
            rb = RingBuffer(cap, mirrored=mirrored)
            cands[name] = ("rb.write(d); rb.readinto(buf)",
                           {"rb": rb, "d": data, "buf": bytearray(size)})  # fmt: skip
    res = _median_ns(cands, rounds, target_s)
    base = statistics.median(res["ssl.MemoryBIO write+read"])
    return [
        Row(n, size, statistics.median(v), v, statistics.median(v) / base) for n, v in res.items()
    ]


def bench_c_floor(sizes: tuple[int, ...], rounds: int) -> list[Row]:
    """The ring driven by a C loop (one crossing) against a minimal C ring."""
    rows = []
    for size in sizes:
        iters = max(1000, 40_000_000 // (size + 200))
        for mirrored in (False, True):
            for straddle in (False, True):
                cap = (max(size, 4096) if mirrored else size) if straddle else RING_CAPACITY
                raw = lib.ring_create(cap, lib.RING_MIRRORED if mirrored else 0)
                if raw == ffi.NULL:
                    raise OSError(ffi.errno, "ring_create failed")
                try:
                    cap = lib.ring_cap(raw)
                    start = cap - size // 2 if straddle else 0
                    ours: list[float] = []
                    floor: list[float] = []
                    for _ in range(rounds):
                        t0 = time.perf_counter()
                        a = lib.ringbench_pairs(raw, size, iters, start)
                        t1 = time.perf_counter()
                        b = lib.ringbench_minimal_pairs(raw, size, iters, start)
                        t2 = time.perf_counter()
                        if a != b or a == 2**64 - 1:
                            raise RuntimeError(f"C loops disagree ({a} != {b})")
                        ours.append((t1 - t0) / iters * 1e9)
                        floor.append((t2 - t1) / iters * 1e9)
                finally:
                    lib.ring_destroy(raw)
                kind = ("mirrored" if mirrored else "plain") + (", straddling" if straddle else "")
                f = statistics.median(floor)
                o = statistics.median(ours)
                rows.append(Row(f"minimal C ring ({kind})", size, f, floor, 1.0))
                rows.append(Row(f"wsstls C ring ({kind})", size, o, ours, o / f))
    return rows


def bench_partial_writes(total: int, rounds: int) -> list[Row]:
    """1500-byte chunks pushed into a 64 KiB ring until a write is partial, then
    drained with 4 KiB reads; figure: ns per 1500-byte chunk delivered."""

    def wsstls_run(rb: RingBuffer) -> float:
        chunk = memoryview(bytes(1500))
        out = bytearray(4096)
        write, readinto = rb.write, rb.readinto
        pending, moved = chunk, 0
        t0 = time.perf_counter()
        while moved < total:
            while True:  # producer: fill until a write is partial
                k = write(pending)
                if k < len(pending):
                    pending = pending[k:]
                    break
                pending = chunk
            while n := readinto(out):  # consumer: drain
                moved += n
        return (time.perf_counter() - t0) / (moved / 1500) * 1e9

    def ringbuf_run(q: Any) -> float:
        chunk = memoryview(bytes(1500))
        pending, moved = chunk, 0
        t0 = time.perf_counter()
        while moved < total:
            while True:
                rest = q.push(pending)
                if rest is not None:
                    pending = rest
                    break
                pending = chunk
            while (avail := q.read_available) > 0:
                moved += len(q.pop(min(avail, 4096)))
        return (time.perf_counter() - t0) / (moved / 1500) * 1e9

    runs: dict[str, Callable[[], float]] = {
        "wsstls RingBuffer": lambda: wsstls_run(RingBuffer(RING_CAPACITY)),
        "wsstls RingBuffer mirrored": lambda: wsstls_run(RingBuffer(RING_CAPACITY, mirrored=True)),
    }
    try:
        import ringbuf

        runs["ringbuf (PyPI)"] = lambda: ringbuf_run(
            ringbuf.RingBuffer(format="B", capacity=RING_CAPACITY)
        )
    except ImportError:
        pass
    res: dict[str, list[float]] = {name: [] for name in runs}
    for _ in range(rounds):
        for name, fn in runs.items():
            res[name].append(fn())
    base = statistics.median(res["wsstls RingBuffer"])
    return [
        Row(n, 1500, statistics.median(v), v, statistics.median(v) / base) for n, v in res.items()
    ]


def _send_recv(rb: RingBuffer, buf: bytearray, a: socket.socket, b: socket.socket) -> None:
    rb.write(buf)
    rb.send_to(a)
    rb.recv_from(b)
    rb.reset()


def alloc_per_call(calls: int = 2000) -> dict[str, dict[str, int]]:
    """tracemalloc: net and peak bytes over `calls` calls of each zero-copy operation."""
    rb = RingBuffer(RING_CAPACITY)
    buf = bytearray(16384)
    a, b = socket.socketpair()
    ops: dict[str, Callable[[], object]] = {
        "readinto": lambda: (rb.write(buf), rb.readinto(buf)),
        "readable_views": lambda: rb.readable_views(),
        "writable_views": lambda: rb.writable_views(),
        "send_to+recv_from": lambda: _send_recv(rb, buf, a, b),
    }
    out = {}
    try:
        for name, op in ops.items():
            op()  # warm caches (interned ints, method caches)
            tracemalloc.start()
            before, _ = tracemalloc.get_traced_memory()
            tracemalloc.reset_peak()
            for _ in range(calls):
                op()
            after, peak = tracemalloc.get_traced_memory()
            tracemalloc.stop()
            out[name] = {"net_bytes": after - before, "peak_bytes": peak - before, "calls": calls}
    finally:
        a.close()
        b.close()
        rb.close()
    return out


def _table(title: str, rows: list[Row], ratio_label: str) -> str:
    lines = [title, f"  {'candidate':44s} {'size':>6s} {'ns/op':>9s} {ratio_label:>12s}  note"]
    for r in rows:
        ratio = "" if r.ratio is None or r.ratio != r.ratio else f"{r.ratio:.2f}x"
        ns = "n/a" if r.ns != r.ns else f"{r.ns:.1f}"
        lines.append(f"  {r.name:44s} {r.size:6d} {ns:>9s} {ratio:>12s}  {r.note}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = Parser(
        prog="wsstls ring-bench", description="Benchmark the wsstls ring against Python FIFOs."
    )
    p.add_argument("--rounds", type=integer(1, 1000), default=7,
                   help="rounds per figure (median taken)")  # fmt: skip
    p.add_argument("--target", type=number(0, 10, lo_open=True, unit="seconds"), default=0.05,
                   help="seconds per round per candidate")  # fmt: skip
    p.add_argument("--quick", action="store_true", help="tiny run (smoke test)")
    p.add_argument("--json", type=output_file, metavar="FILE", help="write every figure as JSON")
    args = p.parse_args(argv)
    rounds, target = (3, 0.002) if args.quick else (args.rounds, args.target)
    total = (1 << 20) if args.quick else (32 << 20)

    print(f"wsstls ring benchmark - Python {platform.python_version()}, {ssl.OPENSSL_VERSION}, "
          f"median of {rounds} rounds", flush=True)  # fmt: skip
    pairs = bench_pairs(SIZES, rounds, target)
    print(_table("\nwrite+read pairs (ratio: against ssl.MemoryBIO, same rounds)", pairs,
                 "vs MemoryBIO"), flush=True)  # fmt: skip
    readinto = bench_readinto(16384, rounds, target)
    print(_table("\n16 KiB write + readinto", readinto, "vs MemoryBIO"), flush=True)
    floor = bench_c_floor(SIZES, rounds if not args.quick else 1)
    print(_table("\nC loop called once from Python (ratio: against the minimal C ring)", floor,
                 "vs minimal"), flush=True)  # fmt: skip
    partial = bench_partial_writes(total, rounds)
    print(_table("\npartial writes: 1500 B chunks into a 64 KiB ring, 4 KiB drains (ns per chunk)",
                 partial, "vs wsstls"), flush=True)  # fmt: skip
    allocs = alloc_per_call(200 if args.quick else 2000)
    print("\ntracemalloc over repeated calls (bytes; net = left allocated, peak = high-water)")
    for name, a in allocs.items():
        print(f"  {name:22s} net {a['net_bytes']:6d}   peak {a['peak_bytes']:6d}   "
              f"({a['calls']} calls)")  # fmt: skip

    if args.json:
        doc = {
            "python": platform.python_version(),
            "openssl": ssl.OPENSSL_VERSION,
            "machine": platform.machine(),
            "rounds": rounds,
            "pairs": [asdict(r) for r in pairs],
            "readinto_16k": [asdict(r) for r in readinto],
            "c_floor": [asdict(r) for r in floor],
            "partial_writes": [asdict(r) for r in partial],
            "alloc_per_call": allocs,
        }
        with open(args.json, "w") as f:
            json.dump(doc, f, indent=2)
        print(f"\nwrote {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
