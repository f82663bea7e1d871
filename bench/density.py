"""Idle connections per server process: what each costs, and what holding them costs the rest.

For each count it starts ``python -m wsstls serve`` (ECDSA P-256 certificate: cheap
handshakes), opens and closes 100 connections (first-use costs go into the baseline),
reads RSS and the number of memory mappings from ``/proc/PID/{status,maps}``, then holds
COUNT idle wss connections from client processes (``wsstls.measure.idle``, each under its
fd limit), waits for the server to park them, and reads both again: connections held, KB
and mappings per connection.

Then the 64 B echo rate with and without the idle pool, in alternation (A B C A B C ...),
each the median of ``--repeat`` runs of the load generator (``--conns`` connections,
server on CPU 1, client on CPU 0 when there are two): ``--park-after 0`` (nothing parked,
the previous behaviour), the default (``--park-after 1``), and the default while the
largest COUNT idle connections are held.  Server CPU per echoed message is read from
``/proc/PID/stat`` over exactly the measured window.

Holding them is not free of CPU either: the loop scans its connections 4 times a second
(timers, parking) and pings each one silent for 20 s (the default ``--ping-interval``),
whose pong is read in the loop's shared ring.  ``--idle-window`` seconds of the server's
CPU time with nothing but the idle connections give that cost.

One process cannot hold more connections than its file descriptor limit (RLIMIT_NOFILE),
which only CAP_SYS_RESOURCE can raise: the largest count is capped below it and the
report says so.

    python bench/density.py [--counts 1000,5000,100000] [--repeat 3] [--duration 3]
                            [--conns 100] [--idle-window 10] [--quick] [--json FILE]
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from benchutil import ecdsa_cert, rss_kb  # noqa: E402

from wsstls.cliargs import Parser, integer, integer_list, number, output_file  # noqa: E402
from wsstls.loadgen import run as loadgen  # noqa: E402
from wsstls.measure.idle import IdleClients  # noqa: E402

TICK = os.sysconf("SC_CLK_TCK")
FD_MARGIN = 1000  # the server's own fds, the load generator's connections, a margin


def n_maps(pid: int) -> int:
    with open(f"/proc/{pid}/maps") as f:
        return sum(1 for _ in f)


def cpu_s(pid: int) -> float:
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / TICK


def settled(pid: int, seconds: float = 30.0) -> int:
    """RSS once it stopped falling for a second, from 3 s on (the server parks after 1 s
    without an event, scans 4 times a second, trims once a second)."""
    time.sleep(3.0)
    deadline = time.monotonic() + seconds
    last = rss_kb(pid)
    while time.monotonic() < deadline:
        time.sleep(1.0)
        now = rss_kb(pid)
        if now >= last - 64:
            return now
        last = now
    return rss_kb(pid)


class Server:
    def __init__(self, cert: tuple[str, str], extra: list[str], cpu: int | None) -> None:
        cmd = [sys.executable, "-m", "wsstls", "serve", "--port", "0",
               "--cert", cert[0], "--key", cert[1], *extra]  # fmt: skip
        if cpu is not None:
            cmd += ["--cpus", str(cpu)]
        self.proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, text=True, cwd=ROOT)
        assert self.proc.stdout is not None
        line = self.proc.stdout.readline()
        if not line.startswith("listening on "):
            self.stop()
            raise SystemExit(f"the server did not start: {line!r}")
        self.url = line.split()[-1]
        self.pid = self.proc.pid

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(60)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


def hold(url: str, count: int) -> IdleClients:
    clients = IdleClients(url, count).__enter__()
    if clients.opened < count:
        clients.__exit__()
        raise SystemExit(f"only {clients.opened} of {count} connections opened: {clients.errors}")
    return clients


def density(cert: tuple[str, str], count: int, idle_window: float) -> dict[str, float]:
    server = Server(cert, [], None)
    try:
        warm = hold(server.url, 100)
        warm.__exit__()
        base, base_maps = settled(server.pid), n_maps(server.pid)
        t0 = time.monotonic()
        clients = hold(server.url, count)
        opened_s = time.monotonic() - t0
        try:
            busy = rss_kb(server.pid)
            parked = settled(server.pid)
            maps = n_maps(server.pid)
            cpu0 = cpu_s(server.pid)
            time.sleep(idle_window)
            idle_cpu = (cpu_s(server.pid) - cpu0) / idle_window
        finally:
            clients.__exit__()
        return {
            "count": count,
            "open_s": opened_s,
            "base_kb": base,
            "busy_kb": busy,
            "parked_kb": parked,
            "kb_per_conn": (parked - base) / count,
            "busy_kb_per_conn": (busy - base) / count,
            "maps_per_conn": (maps - base_maps) / count,
            "idle_cpu": idle_cpu,
        }
    finally:
        server.stop()


def echo(server: Server, conns: int, duration: float, cpu: int | None) -> dict[str, float]:
    marks: dict[str, float] = {}

    def window(what: str) -> None:
        marks[what] = cpu_s(server.pid)

    r = loadgen(server.url, connections=conns, size=64, duration=duration, warmup=0.5,
                cpu=cpu, on_window=window)  # fmt: skip
    if r.errors or r.connect_failures:
        raise SystemExit(f"the load generator failed: {r.first_error}")
    server_s = marks["end"] - marks["start"]
    return {"msg_per_s": r.msg_per_s, "us_per_msg": server_s * 1e6 / r.messages}


def echo_rates(
    cert: tuple[str, str], idle: int, conns: int, duration: float, repeat: int
) -> dict[str, dict[str, float]]:
    two = len(os.sched_getaffinity(0)) >= 2
    server_cpu, client_cpu = (1, 0) if two else (None, None)
    configs = {
        "no idle pool (--park-after 0)": (["--park-after", "0"], 0),
        "idle pool (default)": ([], 0),
        f"idle pool, {idle:,} idle connections held": ([], idle),
    }
    servers, held = {}, []
    try:
        for name, (extra, n) in configs.items():
            s = servers[name] = Server(cert, extra, server_cpu)
            if n:
                held.append(hold(s.url, n))
        time.sleep(3)  # the idle ones parked
        runs: dict[str, list[dict[str, float]]] = {name: [] for name in configs}
        for _ in range(repeat):  # A B C A B C: the machine's drift spread over all
            for name, s in servers.items():
                runs[name].append(echo(s, conns, duration, client_cpu))
    finally:
        for h in held:
            h.__exit__()
        for s in servers.values():
            s.stop()
    out = {}
    for name, rs in runs.items():
        rates = [r["msg_per_s"] for r in rs]
        out[name] = {
            "msg_per_s": statistics.median(rates),
            "spread": (max(rates) - min(rates)) / statistics.median(rates),
            "us_per_msg": statistics.median(r["us_per_msg"] for r in rs),
        }
    return out


def main(argv: list[str] | None = None) -> int:
    p = Parser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--counts", type=integer_list(1, 10_000_000), default=[1000, 5000, 100_000],
                   help="idle connections to hold")  # fmt: skip
    p.add_argument("--idle-window", type=number(0, 3600, lo_open=True, unit="seconds"),
                   default=10.0, metavar="SECONDS",
                   help="server CPU measured with only the idle connections")  # fmt: skip
    p.add_argument("--repeat", type=integer(1, 100), default=3)
    p.add_argument("--duration", type=number(0, 600, lo_open=True, unit="seconds"), default=3.0)
    p.add_argument("--conns", type=integer(1, 10_000), default=100, help="echo connections")
    p.add_argument("--quick", action="store_true", help="counts 1000,2000; 1 run of 1 s")
    p.add_argument("--json", type=output_file, metavar="FILE")
    a = p.parse_args(argv)
    counts = list(a.counts)
    if a.quick:
        counts, a.repeat, a.duration, a.idle_window = [1000, 2000], 1, 1.0, 2.0
    _soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    limit = hard - FD_MARGIN - a.conns
    capped = [c for c in counts if c > limit]
    counts = sorted({min(c, limit) for c in counts})
    results: dict = {"fd_limit": hard, "counts": [], "echo": {}}
    with tempfile.TemporaryDirectory() as tmp:
        cert = ecdsa_cert(Path(tmp))
        print(f"idle wss connections per server process (ECDSA P-256, TLS 1.3); "
              f"fd limit {hard} (hard)")  # fmt: skip
        print(f"  {'held':>7} {'open s':>7} {'KB/conn':>8} {'maps/conn':>10} "
              f"{'RSS idle':>9} {'RSS held':>9} {'KB/conn unparked':>17} "
              f"{'CPU idle':>9}")  # fmt: skip
        for count in counts:
            d = density(cert, count, a.idle_window)
            results["counts"].append(d)
            print(f"  {count:7,} {d['open_s']:7.1f} {d['kb_per_conn']:8.1f} "
                  f"{d['maps_per_conn']:10.3f} {d['base_kb'] / 1024:7.1f} M "
                  f"{d['parked_kb'] / 1024:7.1f} M {d['busy_kb_per_conn']:17.1f} "
                  f"{d['idle_cpu']:8.1%}")  # fmt: skip
        if capped:
            last = results["counts"][-1]
            want = max(capped)
            print(f"  {want:,}: blocked by the fd limit (RLIMIT_NOFILE hard {hard}, raised only "
                  f"with CAP_SYS_RESOURCE); at {last['kb_per_conn']:.1f} KB each they would "
                  f"take {want * last['kb_per_conn'] / 1024:,.0f} MiB and no mapping")  # fmt: skip
        idle = counts[-1]
        print(f"\n64 B echo, {a.conns} connections, median of {a.repeat} x {a.duration:g} s "
              "(server CPU per message over the measured window)")  # fmt: skip
        rates = echo_rates(cert, idle, a.conns, a.duration, a.repeat)
        base = next(iter(rates.values()))["msg_per_s"]
        for name, r in rates.items():
            print(f"  {name:42} {r['msg_per_s']:10,.0f} msg/s ({r['spread']:4.0%} spread) "
                  f"{r['msg_per_s'] / base:5.2f}x  {r['us_per_msg']:5.2f} us/msg")  # fmt: skip
        results["echo"] = rates
    if a.json:
        Path(a.json).write_text(json.dumps(results, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
