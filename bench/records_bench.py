"""The direct TLS 1.3 record path against OpenSSL's records: instructions and server CPU.

1. Instructions per seal + open pair (valgrind's callgrind, exact and repeatable): a
   client's ``tls_write`` of one message and the server's ``tls_read`` of it, sans-IO over
   the ring transport (bench/c/records_pair.c), counted only inside those two calls and
   inside the record layers' own calls (``SSL_write_ex`` + ``SSL_read_ex`` against
   ``records_write`` + ``records_read``).  Each figure is (I(N2) - I(N1)) / (N2 - N1): the
   handshake and first-call costs cancel out.
2. Instructions per 64 B echo in the server's hot path (``wsecho_pump`` under callgrind,
   whole: receive, decrypt, unmask, echo, encrypt, send) for ws, OpenSSL's records and
   direct records: TLS's share without the machine's noise.
3. Server CPU per 64 B echo (the bench's load generator, the server pinned to one CPU and
   the client to the others): ``serve --no-tls``, ``serve --records openssl``, ``serve
   --records direct``, and picows + aiofastnet when installed, in alternating rounds; TLS's
   share is (wss - ws) microseconds per message.  Wall-clock figures: on a busy machine
   they move, the ratios less so.

    python bench/records_bench.py [--rounds 5] [--duration 2] [--no-callgrind] [--no-cpu]
"""

from __future__ import annotations

import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from wsstls.cliargs import Parser, integer, number, size  # noqa: E402

SUITES = ("TLS_AES_256_GCM_SHA384", "TLS_AES_128_GCM_SHA256", "TLS_CHACHA20_POLY1305_SHA256")
CORE = [
    "core/tls.c",
    "core/ring.c",
    "core/ringbio.c",
    "core/records.c",
    "core/cryptopool.c",
    "core/pipecipher.c",
    "core/asyncjob.c",
]  # tls.c and what it links
#: What each callgrind run counts: the compound calls, or the record layers alone.
COUNTED = {
    "tls_write + tls_read": {"openssl": ["tls_write", "tls_read"],
                             "direct": ["tls_write", "tls_read"]},
    "record layer only": {"openssl": ["SSL_write_ex", "SSL_read_ex"],
                          "direct": ["records_write", "records_read"]},
}  # fmt: skip


def build(tmp: Path) -> Path:
    exe = tmp / "records_pair"
    cmd = ["gcc", "-std=c11", "-O2", "-g", "-pthread", f"-I{ROOT / 'csrc'}",
           str(ROOT / "bench" / "c" / "records_pair.c"), *(str(ROOT / "csrc" / c) for c in CORE),
           "-lssl", "-lcrypto", "-o", str(exe)]  # fmt: skip
    subprocess.run(cmd, check=True)
    return exe


def instructions(exe: Path, tmp: Path, path: str, suite: str, size: int, n: int,
                 functions: list[str]) -> int:  # fmt: skip
    out = tmp / f"cg.{path}.{n}"
    toggles = [f"--toggle-collect={f}" for f in functions]
    cmd = ["valgrind", "--tool=callgrind", f"--callgrind-out-file={out}", *toggles,
           str(exe), path, suite, str(size), str(n)]  # fmt: skip
    run = subprocess.run(cmd, capture_output=True, text=True, check=True)
    for line in run.stderr.splitlines():
        if "Collected :" in line:
            return int(line.split(":")[-1].strip())
    raise RuntimeError(f"no callgrind total in: {run.stderr[-500:]}")


def callgrind_table(size: int) -> None:
    if shutil.which("valgrind") is None or shutil.which("gcc") is None:
        print("callgrind: skipped (needs valgrind and gcc)\n")
        return
    n1, n2 = 1000, 3000
    print(
        f"Instructions per {size} B seal + open pair (callgrind, (I({n2}) - I({n1})) / {n2 - n1})"
    )
    print(f"  {'suite':30} {'counted':22} {'openssl':>9} {'direct':>9} {'direct/openssl':>15}")
    with tempfile.TemporaryDirectory() as d:
        tmp = Path(d)
        exe = build(tmp)
        for suite in SUITES:
            for what, funcs in COUNTED.items():
                per = {}
                for path in ("openssl", "direct"):
                    a = instructions(exe, tmp, path, suite, size, n1, funcs[path])
                    b = instructions(exe, tmp, path, suite, size, n2, funcs[path])
                    per[path] = (b - a) / (n2 - n1)
                ratio = per["direct"] / per["openssl"]
                print(f"  {suite:30} {what:22} {per['openssl']:9.0f} {per['direct']:9.0f}"
                      f" {ratio:14.2f}x")  # fmt: skip
    print()


# ------------------------------------------------ server instructions per echo


SERVERS = (("ws (no TLS)", ["--no-tls"]),
           ("wss, OpenSSL's records", ["--records", "openssl"]),
           ("wss, direct records", ["--records", "direct"]))  # fmt: skip


def _echo_server(wrap: list[str], args: list[str], d: str, duration: float) -> tuple[int, str]:
    """``python -m wsstls serve ARGS`` under ``wrap`` (callgrind), or with ``wrap``
    attached to it when ``wrap`` holds ``{pid}`` (strace), serving 64 B echoes on 10
    connections for ``duration`` s; returns the echoes it counted and the wrapper's stderr
    (callgrind) or "" (strace writes its own file)."""
    import json
    import signal

    from wsstls import loadgen

    stats = Path(d, "stats.json")
    serve = [sys.executable, "-m", "wsstls", "serve", *args, "--stats", str(stats)]
    attach = any("{pid}" in w for w in wrap)
    proc = subprocess.Popen(serve if attach else [*wrap, *serve], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)  # fmt: skip
    tracer = None
    try:
        assert proc.stdout is not None
        url = proc.stdout.readline().split()[-1]
        if attach:
            tracer = subprocess.Popen([w.format(pid=proc.pid) for w in wrap],
                                      stderr=subprocess.DEVNULL)  # fmt: skip
            time.sleep(0.5)  # attached before the first echo
        loadgen.run(url, connections=10, size=64, duration=duration, warmup=0.5,
                    records="direct", connect_timeout=60)  # fmt: skip
    finally:
        if tracer is not None:
            tracer.send_signal(signal.SIGINT)
            tracer.wait(timeout=60)
        proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=120)
    doc = json.loads(stats.read_text())
    return int(doc["messages_fast"] + doc["messages_slow"]), "" if attach else err


def server_instructions(duration: float) -> None:
    """Instructions per 64 B echo under callgrind: in the hot path (``wsecho_pump``:
    receive, decrypt, echo, encrypt, send) and in the whole C loop (``wsloop_poll``: the
    same plus epoll and the loop's bookkeeping); ws, OpenSSL's records, direct records."""
    if shutil.which("valgrind") is None:
        print("server instructions: skipped (needs valgrind)\n")
        return
    for counted, what in (("wsecho_pump", "its hot path"), ("wsloop_poll", "its whole C loop")):
        print(f"Server instructions per 64 B echo in {what} (callgrind, {counted} inclusive;"
              " 10 connections)")  # fmt: skip
        per: dict[str, float] = {}
        for name, args in SERVERS:
            with tempfile.TemporaryDirectory() as d:
                wrap = ["valgrind", "--tool=callgrind", f"--callgrind-out-file={d}/cg",
                        f"--toggle-collect={counted}"]  # fmt: skip
                messages, err = _echo_server(wrap, args, d, duration)
            total = next(int(line.split(":")[-1].replace(",", "").strip())
                         for line in err.splitlines() if "Collected :" in line)  # fmt: skip
            per[name] = total / messages
            print(f"  {name:28} {per[name]:9.0f} instructions  ({messages} echoes)")
        ws = per["ws (no TLS)"]
        ossl, direct = per["wss, OpenSSL's records"] - ws, per["wss, direct records"] - ws
        print(f"  TLS's share (wss - ws): OpenSSL's records {ossl:.0f}, direct {direct:.0f}"
              f" = {direct / ossl:.2f}x\n")  # fmt: skip


def server_syscalls(duration: float) -> None:
    """System calls per 64 B echo in the server (``strace -c`` attached to it)."""
    if shutil.which("strace") is None:
        print("server system calls: skipped (needs strace)\n")
        return
    print("Server system calls per 64 B echo (strace -c, 10 connections; under 0.01 left out)")
    for name, args in SERVERS:
        with tempfile.TemporaryDirectory() as d:
            wrap = ["strace", "-c", "-f", "-p", "{pid}", "-o", f"{d}/strace"]
            messages, _ = _echo_server(wrap, args, d, duration)
            calls = []
            for line in Path(d, "strace").read_text().splitlines()[2:]:
                cols = line.split()
                if len(cols) >= 5 and cols[3].isdigit() and cols[-1] != "total":
                    if int(cols[3]) / messages >= 0.01:
                        calls.append(f"{cols[-1]} {int(cols[3]) / messages:.2f}")
        print(f"  {name:28} {', '.join(calls)}")
    print()


# ------------------------------------------------------------ server CPU


def cpu_table(rounds: int, duration: float, conns: int) -> None:
    from wsstls import loadgen
    from wsstls.measure.servers import Certs, Design, PeerSpec, Running
    from wsstls.tls import self_signed

    cpus = sorted(os.sched_getaffinity(0))
    server_cpus = (cpus[0],)
    client_cpus = cpus[1:] or cpus[:1]
    pair = self_signed("localhost")
    with tempfile.TemporaryDirectory() as d:
        cert, key = Path(d, "cert.pem"), Path(d, "key.pem")
        cert.write_bytes(pair.cert_pem)
        key.write_bytes(pair.key_pem)
        certs = Certs(str(cert), str(key))
        specs: list[tuple[str, object]] = [
            ("ws (no TLS)", Design("ws", "ws", ("--no-tls",), tls=False, transport=None)),
            ("wss, OpenSSL's records", Design("openssl", "openssl", ("--records", "openssl"))),
            ("wss, direct records", Design("direct", "direct", ("--records", "direct"))),
        ]
        try:
            import aiofastnet  # noqa: F401
            import picows  # noqa: F401

            specs.append(("picows + aiofastnet (wss)",
                          PeerSpec("picows", "picows", "picows_echo", tls=True)))  # fmt: skip
        except ImportError:
            print("picows + aiofastnet: not installed (pip install picows aiofastnet)")
        samples: dict[str, list[tuple[float, float]]] = {name: [] for name, _ in specs}
        for r in range(rounds):
            order = specs if r % 2 == 0 else specs[::-1]  # A B C, C B A, ...
            for name, spec in order:
                running = spec.start(certs, server_cpus)  # type: ignore[attr-defined]
                marks: dict[str, float] = {}
                try:

                    def window(
                        what: str, running: Running = running, marks: dict[str, float] = marks
                    ) -> None:
                        marks[what] = running.cpu()

                    res = loadgen.run(running.url, connections=conns, size=64, duration=duration,
                                      warmup=0.5, threads=len(client_cpus), cpu=client_cpus,
                                      on_window=window, records="direct")  # fmt: skip
                finally:
                    failures = running.stop()
                if failures:
                    raise RuntimeError("\n".join(failures))
                if res.errors or not res.messages:
                    raise RuntimeError(f"{name}: {res.first_error or 'no messages'}")
                us = (marks["end"] - marks["start"]) / res.messages * 1e6
                samples[name].append((res.msg_per_s, us))
        machine = f"{len(cpus)} CPUs, server on CPU {server_cpus[0]}, client on {client_cpus}"
        print(f"Server CPU per 64 B echo ({conns} connections, {rounds} rounds of {duration} s,"
              f" medians [min-max]; {machine}; client: the bench's load generator)")  # fmt: skip
        med: dict[str, tuple[float, float]] = {}
        for name, got in samples.items():
            rate = statistics.median(s[0] for s in got)
            us = statistics.median(s[1] for s in got)
            med[name] = (rate, us)
            lo, hi = min(s[1] for s in got), max(s[1] for s in got)
            print(f"  {name:28} {rate:10,.0f} msg/s  {us:6.2f} us/msg  [{lo:.2f}-{hi:.2f}]")
        ws = med["ws (no TLS)"][1]
        ossl = med["wss, OpenSSL's records"][1] - ws
        direct = med["wss, direct records"][1] - ws
        if ossl > 0:
            print(f"  TLS's share (wss - ws): OpenSSL's records {ossl:.2f} us, direct"
                  f" {direct:.2f} us = {direct / ossl:.2f}x")  # fmt: skip
        else:
            print("  TLS's share (wss - ws): not measurable in this run")
        if "picows + aiofastnet (wss)" in med:
            p_rate, p_us = med["picows + aiofastnet (wss)"]
            d_rate, d_us = med["wss, direct records"]
            print(f"  direct vs picows: {d_rate / p_rate:.2f}x msg/s, {p_us / d_us:.2f}x less"
                  " server CPU per message")  # fmt: skip
    print()


def main(argv: list[str] | None = None) -> int:
    p = Parser(description=(__doc__ or "").split("\n")[0])
    p.add_argument("--rounds", type=integer(1, 100), default=5)
    p.add_argument("--duration", type=number(0, 600, lo_open=True, unit="seconds"), default=2.0)
    p.add_argument("--conns", type=integer(1, 10_000), default=100)
    p.add_argument("--size", type=size(1, 1 << 20), default=64, help="callgrind message size")
    p.add_argument("--no-callgrind", action="store_true")
    p.add_argument("--no-cpu", action="store_true")
    a = p.parse_args(argv)
    import ssl

    print(f"wsstls records benchmark - Python {sys.version.split()[0]}, {ssl.OPENSSL_VERSION},"
          f" {time.strftime('%Y-%m-%d')}\n")  # fmt: skip
    if not a.no_callgrind:
        callgrind_table(a.size)
    if not a.no_callgrind:
        server_instructions(a.duration)
        server_syscalls(a.duration)
    if not a.no_cpu:
        cpu_table(a.rounds, a.duration, a.conns)
    return 0


if __name__ == "__main__":
    sys.exit(main())
