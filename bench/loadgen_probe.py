"""How fast can the load generator go?  Its own ceiling against the fastest echo server here.

Starts a peer echo server from wsstls/measure/peers/ (default: picows on uvloop, the fastest Python
server available) pinned to one CPU, runs wsstls's load generator pinned to another, over
ws:// and wss://, and prints per run: messages/s, the client's CPU load (cores) and CPU time
per round trip, the server's CPU load, and the client's implied ceiling (msg/s divided by its
load: what it would do with a whole core).  Whichever side is near 1.0 core saturates.

    python bench/loadgen_probe.py [--connections 100] [--size 64] [--duration 3] [--repeats 3]
        [--client-cpu 0] [--server-cpu 1] [--peer picows_echo] [--schemes ws,wss]
    python bench/loadgen_probe.py --url wss://127.0.0.1:9001/   # a server started elsewhere

The server's CPU is read from /proc and the client's from getrusage of its thread, both over
the measured window only (softirq time the kernel accounts separately is in neither).  "other
load" is what else kept the two CPUs busy (other processes): when it is not near 0 the machine
was shared and msg/s is not a ceiling - the CPU time per round trip still is.  Medians over
the repeats are printed last.
"""

from __future__ import annotations

import argparse
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from wsstls.cliargs import Parser, choice_list, cpu_list, integer, number, size  # noqa: E402
from wsstls.loadgen import LoadResult, run  # noqa: E402
from wsstls.measure.bench import process_cpu_seconds  # noqa: E402
from wsstls.tls import self_signed  # noqa: E402

PEERS = ROOT / "wsstls" / "measure" / "peers"
TICK = os.sysconf("SC_CLK_TCK")


def cpu_busy_s() -> dict[int, float]:
    """Busy seconds (everything but idle and iowait) of each CPU, from /proc/stat."""
    busy = {}
    with open("/proc/stat") as f:
        for line in f:
            name, *ticks = line.split()
            if name.startswith("cpu") and name[3:].isdigit():
                t = [int(x) for x in ticks]
                busy[int(name[3:])] = (sum(t[:8]) - t[3] - t[4]) / TICK
    return busy


class Peer:
    """A peer echo server subprocess, ready when it printed its 'listening on' line."""

    def __init__(self, name: str, tls: bool, cpu: int | None, loop: str, tmp: Path) -> None:
        cmd = [sys.executable, str(PEERS / f"{name}.py"), "--port", "0", "--loop", loop]
        if cpu is not None:
            cmd += ["--cpu", str(cpu)]
        if tls:
            pair = self_signed("127.0.0.1")
            (tmp / "cert.pem").write_bytes(pair.cert_pem)
            (tmp / "key.pem").write_bytes(pair.key_pem)
            cmd += ["--tls", "--cert", str(tmp / "cert.pem"), "--key", str(tmp / "key.pem")]
        self.proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, text=True)
        assert self.proc.stdout is not None
        line = self.proc.stdout.readline()
        if not line.startswith("listening on "):
            self.stop()
            raise SystemExit(f"{name} did not start: {line!r}")
        self.url = line.split()[-1]

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


@dataclass
class Sample:
    result: LoadResult
    server: float  # server process load (cores), whole run
    other_client: float  # load on the client's CPU not from the client (other processes)
    other_server: float  # load on the server's CPU not from the server


def one_run(url: str, pid: int | None, args: argparse.Namespace) -> Sample:
    marks: dict[str, tuple[float, float, dict[int, float]]] = {}

    def window(what: str) -> None:
        cpu = process_cpu_seconds(pid) if pid else 0.0
        marks[what] = (time.monotonic(), cpu, cpu_busy_s())

    r = run(
        url,
        connections=args.connections,
        size=args.size,
        duration=args.duration,
        warmup=args.warmup,
        threads=args.threads,
        cpu=args.client_cpu,
        on_window=window,
    )
    (t0, cpu0, busy0), (t1, cpu1, busy1) = marks["start"], marks["end"]
    wall = t1 - t0
    server = (cpu1 - cpu0) / wall if pid else float("nan")

    def load(cpu: int | None) -> float:
        return (busy1[cpu] - busy0[cpu]) / wall if cpu in busy0 else float("nan")

    nan = float("nan")
    other_client = load(args.client_cpu) - r.client_cpu
    other_server = load(args.server_cpu) - server if pid else nan
    return Sample(r, server, max(other_client, 0.0), max(other_server, 0.0))


def report(scheme: str, sample: Sample) -> None:
    r, server = sample.result, sample.server
    ceiling = r.msg_per_s / r.client_cpu if r.client_cpu else float("nan")
    print(
        f"{scheme:4} {r.msg_per_s:>10,.0f} msg/s"
        f"  p50 {r.lat_p50_us:6.0f} us  p99 {r.lat_p99_us:6.0f} us"
        f"  client {r.client_cpu:4.2f} cores ({r.client_cpu_us_per_msg:5.2f} us/msg,"
        f" ceiling ~{ceiling:>9,.0f} msg/s)  server {server:4.2f} cores"
        f"  other load: client CPU {sample.other_client:.2f}, server CPU {sample.other_server:.2f}"
        f"  errors {r.errors} connect_failures {r.connect_failures}",
        flush=True,
    )


def one_cpu(text: str) -> int:
    """One CPU number this process may use (``cliargs.cpu_list`` of length one)."""
    cpus = cpu_list(text)
    if len(cpus) != 1:
        raise argparse.ArgumentTypeError(f"one CPU number, got {text!r}")
    return cpus[0]


def main() -> int:
    p = Parser(description=__doc__.split("\n\n")[0])
    p.add_argument("--url", help="probe this server instead of starting a peer")
    p.add_argument("--peer", default="picows_echo", help="script in wsstls/measure/peers/")
    p.add_argument("--loop", default="uvloop", choices=("uvloop", "asyncio"))
    p.add_argument("--schemes", type=choice_list(("ws", "wss")), default=["ws", "wss"])
    p.add_argument("--connections", type=integer(1, 10_000), default=100)
    p.add_argument("--size", type=size(1, 16 << 20), default=64)
    p.add_argument("--duration", type=number(0, 600, lo_open=True, unit="seconds"), default=3.0)
    p.add_argument("--warmup", type=number(0, 60, unit="seconds"), default=0.5)
    p.add_argument("--threads", type=integer(1, 256), default=1)
    p.add_argument("--repeats", type=integer(1, 100), default=3)
    cpus = sorted(os.sched_getaffinity(0))
    p.add_argument("--client-cpu", type=one_cpu, default=cpus[0])
    p.add_argument("--server-cpu", type=one_cpu, default=cpus[-1] if len(cpus) > 1 else None)
    args = p.parse_args()

    print(
        f"{args.connections} connections, {args.size} B, {args.duration} s windows, "
        f"client on CPU {args.client_cpu}, server on CPU {args.server_cpu}, {os.cpu_count()} CPUs"
    )
    medians: list[str] = []
    if args.url:
        targets = [(args.url.split(":", 1)[0], None)]
    else:
        targets = [(s, s == "wss") for s in args.schemes]
    for scheme, tls in targets:
        with tempfile.TemporaryDirectory() as tmp:
            peer = None
            if tls is not None:
                peer = Peer(args.peer, tls, args.server_cpu, args.loop, Path(tmp))
                print(f"{args.peer} ({args.loop}) at {peer.url}", flush=True)
            try:
                url = peer.url if peer else args.url
                runs = []
                for _ in range(args.repeats):
                    sample = one_run(url, peer.proc.pid if peer else None, args)
                    report(scheme, sample)
                    runs.append(sample)
            finally:
                if peer:
                    peer.stop()
        rates = [x.result.msg_per_s for x in runs]
        loads = [x.result.client_cpu for x in runs]
        per_msg = [x.result.client_cpu_us_per_msg for x in runs]
        servers = [x.server for x in runs]
        medians.append(
            f"{scheme:4} median {statistics.median(rates):>10,.0f} msg/s, client "
            f"{statistics.median(loads):.2f} cores ({statistics.median(per_msg):.2f} us/msg, "
            f"ceiling ~{1e6 / statistics.median(per_msg):,.0f} msg/s), server "
            f"{statistics.median(servers):.2f} cores"
        )
    print("\n".join(["", *medians]))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
