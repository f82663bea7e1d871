"""TLS round trips per second, one thread, per transport, beside the stdlib designs.

A round trip: the client encrypts and sends a message, the server receives,
decrypts and sends it back (from its plaintext ring: no copy), the client
receives it.  Both ends run in this one thread over a socketpair (TLS 1.3,
RSA 2048 self-signed), so the figure is the CPU cost of the path, syscalls
included.  Each figure is the median of several rounds, the paths timed back
to back within a round; ratios are against the stdlib paths of the same
rounds.  Copies and system calls per message (one direction, both sides) come
from ``python -m wsstls copies`` (the preloaded shim) on the same paths.

    python bench/tls_bench.py [--sizes 64,1024,16384] [--rounds 7] [--json FILE]
"""

from __future__ import annotations

import json
import platform
import ssl
import statistics
import subprocess
import sys
import time

from wsstls.cliargs import Parser, choice_list, integer, number, output_file, size_list
from wsstls.measure.paths import PATHS, VARIANTS, make_path
from wsstls.tls import self_signed

BASELINES = ("stdlib-socket", "stdlib-memorybio")


def time_round_trips(paths: list[str], size: int, rounds: int, target_s: float) -> dict:
    cert = self_signed("localhost")
    msg = bytes(range(256)) * (size // 256) + bytes(range(size % 256))
    live = {name: make_path(name, cert, max(65536, 2 * size)) for name in paths}
    try:
        counts = {}
        for name, path in live.items():  # warm up, then calibrate to ~target_s a round
            for _ in range(20):
                path.round_trip(msg)
            t0, n = time.perf_counter(), 0
            while time.perf_counter() - t0 < target_s / 4:
                path.round_trip(msg)
                n += 1
            counts[name] = max(10, int(n * 4 * target_s / (time.perf_counter() - t0)))
        per_round: dict[str, list[float]] = {name: [] for name in paths}
        for _ in range(rounds):
            for name, path in live.items():
                rt = path.round_trip
                t0 = time.perf_counter()
                for _ in range(counts[name]):
                    rt(msg)
                per_round[name].append(counts[name] / (time.perf_counter() - t0))
        return per_round
    finally:
        for path in live.values():
            path.close()


def ledger(paths: list[str], sizes: list[int]) -> dict[tuple[str, int], dict]:
    """Copies and syscalls per message from the copy ledger (a child process)."""
    cmd = [sys.executable, "-m", "wsstls", "copies", "--json", "--messages", "100",
           "--sizes", ",".join(map(str, sizes)), "--paths", ",".join(paths)]  # fmt: skip
    out = subprocess.run(cmd, capture_output=True, text=True, check=True, timeout=600)
    doc = json.loads(out.stdout)
    table = {}
    for r in doc["results"]:
        per: dict[str, float] = {"copies": 0.0, "bytes_copied": 0.0, "syscalls": 0.0}
        for side in ("sender", "receiver"):
            for key, v in r[side].items():
                kind = key.split(":")[0]
                if kind == "copy":
                    per["copies"] += v["calls"]
                    per["bytes_copied"] += v["bytes"]
                else:
                    per["syscalls"] += v["calls"]
        per["measured"] = doc["measured_openssl"]
        name = r["path"].removeprefix("wsstls ")
        name = {"stdlib SSLSocket": "stdlib-socket",
                "stdlib SSLObject+MemoryBIO": "stdlib-memorybio"}.get(name, name)  # fmt: skip
        table[(name, r["size"])] = per
    return table


def main(argv: list[str] | None = None) -> int:
    p = Parser(description=__doc__.split("\n\n")[0])
    p.add_argument("--sizes", type=size_list(1, 1 << 24), default=[64, 1024, 16384])
    p.add_argument("--paths", type=choice_list(dict.fromkeys((*PATHS, *VARIANTS, *BASELINES))),
                   default=[*PATHS, *VARIANTS])  # fmt: skip
    p.add_argument("--rounds", type=integer(1, 100), default=7)
    p.add_argument("--target", type=number(0, 60, lo_open=True, unit="seconds"), default=0.2,
                   help="seconds per path per round")  # fmt: skip
    p.add_argument("--quick", action="store_true", help="a tiny run (smoke test)")
    p.add_argument("--no-ledger", action="store_true", help="skip the copies/syscalls columns")
    p.add_argument("--json", type=output_file, metavar="FILE")
    args = p.parse_args(argv)
    sizes = args.sizes
    paths = list(args.paths)
    rounds, target = (2, 0.01) if args.quick else (args.rounds, args.target)
    for b in BASELINES:
        if b not in paths:
            paths.append(b)

    print(f"TLS round trips/s, one thread, socketpair - Python {platform.python_version()}, "
          f"{ssl.OPENSSL_VERSION}, median of {rounds} rounds", flush=True)  # fmt: skip
    led = {} if args.no_ledger else ledger(paths, sizes)
    records = []
    for size in sizes:
        res = {
            k: statistics.median(v)
            for k, v in time_round_trips(paths, size, rounds, target).items()
        }
        print(f"\n{size} B messages")
        print(f"  {'path':28s} {'round trips/s':>13s} {'vs SSLSocket':>13s} {'vs MemoryBIO':>13s}"
              f" {'copies/msg':>11s} {'syscalls/msg':>13s}")  # fmt: skip
        for name in paths:
            cells = led.get((name, size), {})
            record = {
                "path": name,
                "size": size,
                "round_trips_per_s": res[name],
                "vs_stdlib_socket": res[name] / res["stdlib-socket"],
                "vs_stdlib_memorybio": res[name] / res["stdlib-memorybio"],
                **cells,
            }
            records.append(record)
            copies = f"{cells['copies']:.2f}" if cells else "-"
            sys_ = f"{cells['syscalls']:.2f}" if cells else "-"
            ratios = f"{record['vs_stdlib_socket']:12.2f}x {record['vs_stdlib_memorybio']:12.2f}x"
            print(f"  {name:28s} {res[name]:13,.0f} {ratios} {copies:>11s} {sys_:>13s}", flush=True)
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"python": platform.python_version(), "openssl": ssl.OPENSSL_VERSION,
                       "rounds": rounds, "results": records}, f, indent=2)  # fmt: skip
        print(f"\nwrote {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
