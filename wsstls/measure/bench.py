"""``python -m wsstls bench``: the seed report's tables, measured on this machine.

With no arguments it starts its own echo servers on 127.0.0.1 (one per
design, RSA 2048 self-signed certificate, TLS 1.3), drives them with the C
load generator (wsstls.loadgen: each connection sends a message, waits for the
echo, checks it byte for byte, repeats), and prints:

1. WSS echo 64 B by connection count, inline vs offload (the seed's table 1);
2. by message size at 100 connections (table 2), transfer rate (table 3) and
   latency (table 4);
3. the report's recommendations - batched offload, a size threshold, one loop
   per core (``--workers``) - and plain ws:// as the no-TLS reference, at 64 B
   and 16 KiB;
4. copies and system calls per echoed message of each design, counted in
   the server by the preloaded shim (wsstls.measure.memcount).

Servers and client are pinned to different CPUs.  Every figure is the median
of ``--repeat`` runs, the designs alternating run by run, and each comes with
the server's CPU time per message (sampled over exactly the measured window)
and the client's CPU use, so a reader can tell which side saturated.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import signal
import ssl
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .. import loadgen
from ..tls import self_signed
from .memcount import preload_env

__all__ = ["DESIGNS", "Design", "main"]


def _cpu_pair() -> tuple[int | None, int | None]:
    """(client, server) CPUs: the first two this process may run on, or no pinning."""
    allowed = sorted(os.sched_getaffinity(0))
    return (allowed[0], allowed[1]) if len(allowed) >= 2 else (None, None)


CLIENT_CPU, SERVER_CPU = _cpu_pair()
_HZ = os.sysconf("SC_CLK_TCK")


# ------------------------------------------------------------------- designs


@dataclass(frozen=True)
class Design:
    """A server configuration under test."""

    name: str
    label: str
    args: tuple[str, ...]  # for `python -m wsstls serve`
    tls: bool = True
    single: bool = True  # one process (copies can be counted)


def _design(name: str, transport: str = "ring", threads: int = 2, workers: int = 2) -> Design:
    tls = ("--tls", "--transport", transport)
    if name == "ws":
        return Design("ws", "plain ws:// (no TLS)", ("--no-tls",), tls=False)
    if name == "workers":
        return Design(
            f"workers{workers}",
            f"inline x {workers} processes (SO_REUSEPORT)",
            (*tls, "--workers", str(workers)),
            single=False,
        )
    suffix = "" if transport == "ring" else f"/{transport}"
    if name == "inline":
        return Design(f"inline{suffix}", f"inline TLS ({transport})", (*tls, "--mode", "inline"))
    labels = {
        "offload": f"offload: {threads} threads, dispatch/message",
        "batched": f"batched: {threads} threads, dispatch/loop",
        "threshold": "threshold: offload >= 16 KiB",
    }
    return Design(name, labels[name], (*tls, "--mode", name, "--threads", str(threads)))


DESIGNS = ("inline", "offload", "batched", "threshold", "workers", "ws")


# ------------------------------------------------------------------ processes


def process_cpu_seconds(pid: int) -> float:
    """User + system CPU seconds of a process (all its threads), from /proc."""
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / _HZ


def _children(pid: int) -> list[int]:
    out = []
    for task in Path(f"/proc/{pid}/task").iterdir():
        try:
            out += [int(c) for c in (task / "children").read_text().split()]
        except OSError:
            pass
    return out


class _Process:
    """A server started from a command line that prints ``listening on URL``."""

    def __init__(self, name: str, cmd: list[str], env: dict[str, str] | None = None) -> None:
        self.name = name
        self.stats_file: str | None = None
        self.proc = subprocess.Popen(
            cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env
        )
        line = self._ready_line(30.0)
        if not line.startswith("listening on "):
            code, err = self.stop()
            tail = err.strip()[-800:]
            raise RuntimeError(f"{name}: did not start ({line!r}, exit {code}): {tail}")
        self.url = line.split()[-1]

    def _ready_line(self, timeout: float) -> str:
        import selectors

        with selectors.DefaultSelector() as sel:
            assert self.proc.stdout is not None
            sel.register(self.proc.stdout, selectors.EVENT_READ)
            if not sel.select(timeout):
                return "(timeout)"
            return self.proc.stdout.readline().strip()

    def cpu(self) -> float:
        """CPU seconds of the server: the process, its threads, its live children."""
        total = 0.0
        for pid in (self.proc.pid, *_children(self.proc.pid)):
            try:
                total += process_cpu_seconds(pid)
            except OSError:
                pass
        return total

    def signal(self, signum: int) -> None:
        self.proc.send_signal(signum)

    def stop(self) -> tuple[int | None, str]:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        try:
            _, err = self.proc.communicate(timeout=20)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            _, err = self.proc.communicate()
        return self.proc.returncode, err


def _serve_cmd(
    design: Design, cert: str, key: str, cpus: str, stats: str | None, counted: bool = False
) -> list[str]:
    """``python -m wsstls serve`` for a design (``counted``: with the copy-counting window)."""
    entry = ["wsstls.measure.counted"] if counted else ["wsstls", "serve"]
    cmd = [sys.executable, "-m", *entry, "--port", "0", "--cpus", cpus, *design.args]
    if SERVER_CPU is None:  # one CPU: nothing to keep apart
        cmd.remove("--cpus")
        cmd.remove(cpus)
    if design.tls:
        cmd += ["--cert", cert, "--key", key]
    if stats is not None:
        cmd += ["--stats", stats]
    return cmd


def _peer_cmd(script: Path, tls: bool, cert: str, key: str) -> list[str]:
    cmd = [sys.executable, str(script), "--host", "127.0.0.1", "--port", "0"]
    if SERVER_CPU is not None:
        cmd += ["--cpu", str(SERVER_CPU)]
    if tls:
        cmd += ["--tls", "--cert", cert, "--key", key]
    return cmd


def peers_dir() -> Path:
    """The peer echo servers' scripts (shipped with the package: wsstls/measure/peers)."""
    return Path(__file__).resolve().parent / "peers"


# ------------------------------------------------------------------ measuring


@dataclass
class Run:
    """One measured cell."""

    design: str
    tls: bool
    conns: int
    size: int
    messages: int  # round trips in the window (summed over runs in a median)
    msg_per_s: float
    mb_per_s: float
    lat_avg_us: float
    lat_p50_us: float
    lat_p99_us: float
    errors: int
    connect_failures: int
    client_cpu: float
    server_cpu: float | None  # cores, over the window
    server_us_per_msg: float | None


def _measure(
    url: str,
    conns: int,
    size: int,
    duration: float,
    warmup: float,
    cpu_of: Callable[[], float] | None,
    design: str,
    on_window: Callable[[str], None] | None = None,
) -> Run:
    marks: dict[str, tuple[float, float]] = {}

    def window(what: str) -> None:
        marks[what] = (time.monotonic(), cpu_of() if cpu_of else 0.0)
        if on_window is not None:
            on_window(what)

    r = loadgen.run(
        url,
        connections=conns,
        size=size,
        duration=duration,
        warmup=warmup,
        cpu=CLIENT_CPU,
        on_window=window,
        connect_timeout=30.0,
    )
    server_cpu = per_msg = None
    if cpu_of is not None and "start" in marks and "end" in marks:
        wall = marks["end"][0] - marks["start"][0]
        used = marks["end"][1] - marks["start"][1]
        server_cpu = used / wall if wall > 0 else None
        per_msg = used / r.messages * 1e6 if r.messages else None
    return Run(
        design=design,
        tls=url.startswith("wss"),
        conns=conns,
        size=size,
        messages=r.messages,
        msg_per_s=r.msg_per_s,
        mb_per_s=r.mb_per_s,
        lat_avg_us=r.lat_avg_us,
        lat_p50_us=r.lat_p50_us,
        lat_p99_us=r.lat_p99_us,
        errors=r.errors,
        connect_failures=r.connect_failures,
        client_cpu=r.client_cpu,
        server_cpu=server_cpu,
        server_us_per_msg=per_msg,
    )


def _median_run(runs: list[Run]) -> Run:
    """The median of each figure over repeated runs (counts are summed)."""
    first = runs[0]
    med: dict[str, Any] = {}
    for f in first.__dataclass_fields__:
        values = [getattr(r, f) for r in runs]
        if f in ("errors", "connect_failures", "messages"):
            med[f] = sum(values)
        elif isinstance(values[0], float) or values[0] is None:
            known = [v for v in values if v is not None]
            med[f] = statistics.median(known) if known else None
        else:
            med[f] = values[0]
    return Run(**med)


@dataclass
class Plan:
    """What to measure: (design, conns, size) cells, repeated."""

    cells: list[tuple[str, int, int]] = field(default_factory=list)

    def add(self, designs: Iterable[str], conns: Iterable[int], sizes: Iterable[int]) -> None:
        for c in conns:
            for s in sizes:
                for d in designs:  # designs alternate: noise hits them alike
                    if (d, c, s) not in self.cells:
                        self.cells.append((d, c, s))


def _progress(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def _run_plan(
    plan: Plan,
    servers: dict[str, _Process],
    repeat: int,
    duration: float,
    warmup: float,
) -> dict[tuple[str, int, int], Run]:
    runs: dict[tuple[str, int, int], list[Run]] = {cell: [] for cell in plan.cells}
    total, done, t0 = len(plan.cells) * repeat, 0, time.monotonic()
    for rep in range(repeat):
        for cell in plan.cells:
            name, conns, size = cell
            srv = servers[name]
            run = _measure(srv.url, conns, size, duration, warmup, srv.cpu, name)
            runs[cell].append(run)
            done += 1
            cpu = f"{run.server_us_per_msg:.1f} us/msg" if run.server_us_per_msg else "-"
            _progress(
                f"[{done:3d}/{total}] {time.monotonic() - t0:5.0f}s  {name:12s} {size:6d} B x "
                f"{conns:4d}: {run.msg_per_s:10,.0f} msg/s  p50 {run.lat_p50_us:7.0f} us  "
                f"server {cpu}  client {run.client_cpu:.2f}  (run {rep + 1}/{repeat})"
            )
    return {cell: _median_run(r) for cell, r in runs.items()}


def _copies(
    design: Design, cert: str, key: str, size: int, duration: float, warmup: float
) -> dict[str, float] | None:
    """Copies and system calls per echoed message in the server (shim preloaded)."""
    env = preload_env()
    if env is None or not design.single:
        return None
    with tempfile.TemporaryDirectory() as tmp:
        stats = os.path.join(tmp, "stats.json")
        cmd = _serve_cmd(design, cert, key, str(SERVER_CPU), stats, counted=True)
        srv = _Process(design.name, cmd, env)
        try:
            sig = {"start": signal.SIGUSR1, "end": signal.SIGUSR2}
            run = _measure(
                srv.url, 20, size, duration, warmup, None, design.name,
                on_window=lambda what: srv.signal(sig[what]),
            )  # fmt: skip
        finally:
            code, err = srv.stop()
        if code != 0:
            raise RuntimeError(f"{design.name} (counting copies) exited {code}: {err}")
        with open(stats) as f:
            counts = json.load(f).get("memcount", {})
    if not run.messages or not counts:
        return None
    msgs = run.messages  # the client's window, which the signals framed
    per: dict[str, float] = {}
    for key_, (calls, nbytes) in counts.items():
        kind, cls = key_.split(":")
        if kind == "copy":
            per[f"copies_{cls}"] = per.get(f"copies_{cls}", 0) + calls / msgs
            per["bytes_copied"] = per.get("bytes_copied", 0) + nbytes / msgs
        else:
            per[f"{kind}_syscalls"] = per.get(f"{kind}_syscalls", 0) + calls / msgs
    per["copies"] = sum(v for k, v in per.items() if k.startswith("copies_"))
    per["syscalls"] = sum(v for k, v in per.items() if k.endswith("_syscalls"))
    return per


# ------------------------------------------------------------------ reporting


def _pct(a: float, b: float) -> str:
    return f"{(a / b - 1) * 100:+.0f}%" if b else "-"


def _lat(us: float) -> str:
    return f"{us / 1000:.2f} ms" if us >= 1000 else f"{us:.0f} us"


def _cpu(r: Run) -> str:
    return f"{r.server_us_per_msg:5.1f}" if r.server_us_per_msg is not None else "  -  "


def _seed_mb(r: Run) -> float:
    """The seed report's MB/s: payload both directions, in MiB."""
    return r.msg_per_s * r.size * 2 / 2**20


def _tables(res: dict[tuple[str, int, int], Run], a: str, b: str, conns: list[int],
            sizes: list[int], base_conns: int) -> str:  # fmt: skip
    out = []
    if all((d, c, 64) in res for d in (a, b) for c in conns):
        out.append(f"\nWSS echo 64 B - varying connection count ({a} vs {b})")
        out.append(f"  {'conns':>5s}  {a + ' (baseline)':>26s}  {b:>26s}  {'d throughput':>12s}"
                   f"  {'d latency':>9s}  server us/msg {a}/{b}")  # fmt: skip
        for c in conns:
            x, y = res[(a, c, 64)], res[(b, c, 64)]
            out.append(
                f"  {c:5d}  {x.msg_per_s:10,.0f} msg/s, {_lat(x.lat_avg_us):>9s}  "
                f"{y.msg_per_s:10,.0f} msg/s, {_lat(y.lat_avg_us):>9s}  "
                f"{_pct(y.msg_per_s, x.msg_per_s):>12s}  {_pct(y.lat_avg_us, x.lat_avg_us):>9s}"
                f"  {_cpu(x)} / {_cpu(y)}"
            )
    if all((d, base_conns, s) in res for d in (a, b) for s in sizes):
        rows = [(s, res[(a, base_conns, s)], res[(b, base_conns, s)]) for s in sizes]
        out.append(f"\nWSS echo - varying message size ({base_conns} connections)")
        out.append(f"  {'size':>6s}  {a:>14s}  {b:>14s}  {'d throughput':>12s}"
                   f"  server us/msg {a}/{b}")  # fmt: skip
        for s, x, y in rows:
            out.append(f"  {s:6d}  {x.msg_per_s:8,.0f} msg/s  {y.msg_per_s:8,.0f} msg/s  "
                       f"{_pct(y.msg_per_s, x.msg_per_s):>12s}  {_cpu(x)} / {_cpu(y)}")  # fmt: skip
        out.append(f"\nTransfer rate ({base_conns} connections; MB/s as in the seed: payload "
                   "both ways, MiB)")  # fmt: skip
        out.append(f"  {'size':>6s}  {a:>12s}  {b:>12s}  {'d':>6s}")
        for s, x, y in rows:
            out.append(f"  {s:6d}  {_seed_mb(x):7.2f} MB/s  {_seed_mb(y):7.2f} MB/s  "
                       f"{_pct(_seed_mb(y), _seed_mb(x)):>6s}")  # fmt: skip
        out.append(f"\nLatency ({base_conns} connections; average, and p99)")
        out.append(f"  {'size':>6s}  {a:>20s}  {b:>20s}  {'d avg':>6s}")
        for s, x, y in rows:
            out.append(f"  {s:6d}  {_lat(x.lat_avg_us):>9s} / {_lat(x.lat_p99_us):>8s}  "
                       f"{_lat(y.lat_avg_us):>9s} / {_lat(y.lat_p99_us):>8s}  "
                       f"{_pct(y.lat_avg_us, x.lat_avg_us):>6s}")  # fmt: skip
    return "\n".join(out)


def _design_table(title: str, rows: list[tuple[str, Run]], baseline: Run | None,
                  ledger: dict[str, dict[str, float] | None] | None = None) -> str:  # fmt: skip
    out = [f"\n{title}"]
    head = (f"  {'design':44s} {'msg/s':>9s} {'vs base':>7s} {'p50':>8s} {'p99':>8s} "
            f"{'server':>7s} {'us/msg':>6s} {'client':>6s}")  # fmt: skip
    if ledger is not None:
        head += f" {'copies':>6s} {'syscalls':>8s}"
    out.append(head)
    for label, r in rows:
        ratio = f"{r.msg_per_s / baseline.msg_per_s:6.2f}x" if baseline else "      -"
        srv = f"{r.server_cpu:.2f}" if r.server_cpu is not None else "-"
        lat = f"{_lat(r.lat_p50_us):>8s} {_lat(r.lat_p99_us):>8s}"
        line = f"  {label:44s} {r.msg_per_s:9,.0f} {ratio:>7s} {lat} {srv:>7s} {_cpu(r):>6s}"
        line += f" {r.client_cpu:6.2f}"
        if ledger is not None:
            per = ledger.get(label)
            line += (f" {per['copies']:6.2f} {per['syscalls']:8.2f}" if per else
                     f" {'-':>6s} {'-':>8s}")  # fmt: skip
        out.append(line)
    return "\n".join(out)


def _ledger_table(ledger: dict[str, dict[str, float] | None], size: int) -> str:
    cols = ["libssl", "libcrypto", "wsstls", "python", "libc", "other"]
    out = [f"\nCopies and system calls per echoed {size} B message, in the server (memcpy/"
           "memmove >= 16 B by library; read/write/epoll_wait calls)"]  # fmt: skip
    out.append(f"  {'design':44s} " + " ".join(f"{c:>9s}" for c in cols)
               + f" {'bytes':>7s} {'reads':>6s} {'writes':>6s} {'polls':>6s}")  # fmt: skip
    for label, per in ledger.items():
        if per is None:
            out.append(f"  {label:44s} (not measured: shim not built, or several processes)")
            continue
        cells = " ".join(f"{per.get('copies_' + c, 0):9.2f}" for c in cols)
        out.append(f"  {label:44s} {cells} {per.get('bytes_copied', 0):7.0f} "
                   f"{per.get('read_syscalls', 0):6.2f} {per.get('write_syscalls', 0):6.2f} "
                   f"{per.get('poll_syscalls', 0):6.2f}")  # fmt: skip
    return "\n".join(out)


def _plot(path: str, res: dict[tuple[str, int, int], Run], designs: list[str],
          conns: list[int], sizes: list[int], base_conns: int) -> None:  # fmt: skip
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        raise SystemExit("--plot needs matplotlib: pip install 'wsstls[plot]'") from None
    fig, axes = plt.subplots(2, 2, figsize=(12, 8))
    for d in designs:
        measured = sorted({s for (dd, c, s) in res if dd == d and c == base_conns})
        by_size = [(s, res[(d, base_conns, s)]) for s in measured]
        by_conn = [(c, res[(d, c, 64)]) for c in conns if (d, c, 64) in res]
        if by_size:
            xs = [s for s, _ in by_size]
            axes[0][0].plot(xs, [r.msg_per_s for _, r in by_size], marker="o", label=d)
            axes[1][0].plot(xs, [r.lat_avg_us / 1000 for _, r in by_size], marker="o", label=d)
        if len(by_conn) > 1:
            xs = [c for c, _ in by_conn]
            axes[0][1].plot(xs, [r.msg_per_s for _, r in by_conn], marker="o", label=d)
            axes[1][1].plot(xs, [r.lat_avg_us / 1000 for _, r in by_conn], marker="o", label=d)
    for ax, title, y in (
        (axes[0][0], f"throughput by size ({base_conns} connections)", "msg/s"),
        (axes[1][0], f"average latency by size ({base_conns} connections)", "ms"),
        (axes[0][1], "throughput by connections (64 B)", "msg/s"),
        (axes[1][1], "average latency by connections (64 B)", "ms"),
    ):
        ax.set_title(title)
        ax.set_ylabel(y)
        ax.set_xscale("log", base=2)
        ax.grid(True, alpha=0.3)
        ax.legend(fontsize=8)
    fig.suptitle(f"wsstls echo benchmark - {platform.node()}, {os.cpu_count()} CPUs")
    fig.tight_layout()
    fig.savefig(path, dpi=100)


# ---------------------------------------------------------------------- main


def _ints(text: str, name: str) -> list[int]:
    try:
        values = [int(x) for x in text.split(",") if x]
    except ValueError:
        raise SystemExit(f"--{name}: comma-separated integers, got {text!r}") from None
    if not values or min(values) < 0:
        raise SystemExit(f"--{name}: comma-separated integers >= 0, got {text!r}")
    return values


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        prog="wsstls bench", description=__doc__.split("\n\n")[0],
        formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__.split("\n\n", 1)[1],
    )  # fmt: skip
    p.add_argument("--conns", default="50,100,200,500", help="connection counts (64 B table)")
    p.add_argument("--sizes", default="64,256,1024,4096", help="message sizes (size tables)")
    p.add_argument("--modes", default="inline,offload,batched,threshold",
                   help="TLS designs to measure (inline first: the baseline)")  # fmt: skip
    p.add_argument("--transports", default="ring", help="transports for inline (ring,mem,pair,fd)")
    p.add_argument("--duration", type=float, default=1.5, help="measured seconds per run")
    p.add_argument("--warmup", type=float, default=0.5, help="seconds before each window")
    p.add_argument("--repeat", type=int, default=3, help="runs per cell (median taken)")
    p.add_argument("--threads", type=int, default=2, help="offload threads")
    p.add_argument("--workers", type=int, default=2, help="processes of the workers design")
    p.add_argument("--big", type=int, default=16384, help="the large size of the designs table")
    p.add_argument("--peers", action="store_true", help="also picows, websockets, aiohttp, "
                   "asyncio echo servers (wsstls/measure/peers of a source checkout)")  # fmt: skip
    p.add_argument("--no-copies", action="store_true", help="skip the copy ledger runs")
    p.add_argument("--url", help="measure this ws:// or wss:// echo server instead (client only)")
    p.add_argument("--json", metavar="FILE", help="write every figure (schema: README)")
    p.add_argument("--plot", metavar="FILE.png", help="draw throughput and latency (matplotlib)")
    p.add_argument("--quick", action="store_true", help="a tiny run (smoke test)")
    a = p.parse_args(argv)
    conns, sizes = _ints(a.conns, "conns"), _ints(a.sizes, "sizes")
    if a.quick:
        conns, sizes, a.duration, a.warmup, a.repeat = [8], [64], 0.3, 0.1, 1
    if a.duration <= 0 or a.warmup < 0 or a.repeat < 1:
        p.error("--duration > 0, --warmup >= 0 and --repeat >= 1")
    base_conns = 100 if 100 in conns else conns[0]
    if SERVER_CPU is None:
        _progress("warning: one CPU: server and client share it, figures describe both")

    if a.url:
        return _external(a, conns, sizes, base_conns)

    modes = [m for m in a.modes.split(",") if m]
    transports = [t for t in a.transports.split(",") if t]
    for m in modes:
        if m not in ("inline", "offload", "batched", "threshold"):
            p.error(f"--modes: unknown design {m!r}")
    designs = [_design("inline", t) for t in transports]
    designs += [_design(m, threads=a.threads) for m in modes if m != "inline"]
    if not a.quick:
        designs += [_design("workers", workers=a.workers)]
    designs += [_design("ws")]
    by_name = {d.name: d for d in designs}
    base, off = designs[0].name, "offload" if "offload" in by_name else None

    plan = Plan()
    if off:
        plan.add([base, off], conns, [64])
        plan.add([base, off], [base_conns], sizes)
    else:
        plan.add([base], conns, [64])
        plan.add([base], [base_conns], sizes)
    others = [d.name for d in designs if d.name not in (base, off)]
    plan.add([base, *([off] if off else []), *others], [base_conns], [64])
    if not a.quick:
        big = [d.name for d in designs if d.name != "ws" and not d.name.startswith("workers")]
        plan.add(big, [base_conns], [a.big])

    started = time.monotonic()
    pinning = (f"server on CPU {SERVER_CPU}, client on CPU {CLIENT_CPU}" if SERVER_CPU is not None
               else "server and client not pinned (one CPU)")  # fmt: skip
    print(f"wsstls bench - {platform.node()}: {os.cpu_count()} CPUs, Python "
          f"{platform.python_version()}, {ssl.OPENSSL_VERSION}; {pinning}; "
          f"median of {a.repeat} x {a.duration:g} s per cell", flush=True)  # fmt: skip  # fmt: skip
    with tempfile.TemporaryDirectory() as tmp:
        cert, key = os.path.join(tmp, "cert.pem"), os.path.join(tmp, "key.pem")
        pair = self_signed("localhost", bits=2048)
        Path(cert).write_bytes(pair.cert_pem)
        Path(key).write_bytes(pair.key_pem)
        servers: dict[str, _Process] = {}
        try:
            for d in designs:
                cpus = f"{SERVER_CPU},{CLIENT_CPU}" if not d.single else f"{SERVER_CPU}"
                servers[d.name] = _Process(d.name, _serve_cmd(d, cert, key, cpus, None))
            _progress(f"{len(servers)} servers up; {len(plan.cells)} cells x {a.repeat} runs")
            res = _run_plan(plan, servers, a.repeat, a.duration, a.warmup)
        finally:
            failures = []
            for name, srv in servers.items():
                code, err = srv.stop()
                if code != 0 or "internal error" in err:
                    failures.append(f"{name}: exit {code}\n{err}")
        ledger: dict[str, dict[str, float] | None] = {}
        if not a.no_copies and not a.quick:
            for d in designs:
                _progress(f"counting copies: {d.name}")
                ledger[d.label] = _copies(d, cert, key, 64, 1.0, 0.3)

        peer_rows: list[tuple[str, Run]] = []
        if a.peers:
            peer_rows = _peers(a, cert, key, base_conns)

    if failures:
        print("\n".join(["servers failed:", *failures]), file=sys.stderr)
    print(_tables(res, base, off, conns, sizes, base_conns) if off else "")
    label = {d.name: d.label for d in designs}
    rows = [(label[d], res[(d, base_conns, 64)]) for d in by_name if (d, base_conns, 64) in res]
    print(_design_table(f"The report's recommendations, 64 B, {base_conns} connections "
                        "(server: cores busy, CPU per message; client: cores busy)",
                        rows, res.get((base, base_conns, 64)), ledger or None))  # fmt: skip
    bigrows = [(label[d], res[(d, base_conns, a.big)]) for d in by_name
               if (d, base_conns, a.big) in res]  # fmt: skip
    if bigrows:
        print(_design_table(f"The designs at {a.big} B, {base_conns} connections", bigrows,
                            res.get((base, base_conns, a.big))))  # fmt: skip
    if ledger:
        print(_ledger_table(ledger, 64))
    if peer_rows:
        print(_design_table(f"Peers, 64 B, {base_conns} connections (same client, same run)",
                            peer_rows, res.get((base, base_conns, 64))))  # fmt: skip
    print(f"\n{time.monotonic() - started:.0f} s in all.  Client CPU near 1.00 means the client "
          "saturated: compare servers on server CPU per message then.")  # fmt: skip

    if a.json:
        records = []
        for (d, _c, s), r in res.items():
            design = by_name[d]
            rec = {
                "design": d,
                "mode": _mode_of(design),
                "transport": _transport_of(design),
                "workers": _workers_of(design),
                **r.__dict__,
            }
            per = ledger.get(by_name[d].label) if s == 64 else None
            rec["copies_per_msg"] = per["copies"] if per else None
            rec["syscalls_per_msg"] = per["syscalls"] if per else None
            records.append(rec)
        for label_, r in peer_rows:
            records.append(
                {"design": label_, "mode": "peer", "transport": None, "workers": 1, **r.__dict__,
                 "copies_per_msg": None, "syscalls_per_msg": None}
            )  # fmt: skip
        doc = {"machine": {"node": platform.node(), "cpus": os.cpu_count(),
                           "python": platform.python_version(), "openssl": ssl.OPENSSL_VERSION},
               "settings": {"duration": a.duration, "warmup": a.warmup, "repeat": a.repeat,
                            "client_cpu": CLIENT_CPU, "server_cpu": SERVER_CPU},
               "records": records, "ledger": ledger}  # fmt: skip
        Path(a.json).write_text(json.dumps(doc, indent=2))
        print(f"wrote {a.json}")
    if a.plot:
        _plot(a.plot, res, list(by_name), conns, sizes, base_conns)
        print(f"wrote {a.plot}")
    return 1 if failures else 0


def _mode_of(d: Design) -> str:
    return "inline" if "--mode" not in d.args else d.args[d.args.index("--mode") + 1]


def _transport_of(d: Design) -> str | None:
    return d.args[d.args.index("--transport") + 1] if "--transport" in d.args else None


def _workers_of(d: Design) -> int:
    return int(d.args[d.args.index("--workers") + 1]) if "--workers" in d.args else 1


def _peers(a: argparse.Namespace, cert: str, key: str, conns: int) -> list[tuple[str, Run]]:
    where = peers_dir()
    rows: list[tuple[str, Run]] = []
    names = ["picows_echo", "websockets_echo", "aiohttp_echo", "asyncio_echo"]
    for tls in (True, False):
        for name in names:
            peer = name.removesuffix("_echo")
            if peer == "picows":  # its default TLS: aiofastnet, libssl over its own memory BIO
                peer = "picows+aiofastnet"
            label = f"{peer} ({'wss' if tls else 'ws'})"
            try:
                srv = _Process(label, _peer_cmd(where / f"{name}.py", tls, cert, key))
            except RuntimeError as exc:
                _progress(f"{label}: not measured ({exc})")
                continue
            try:
                runs = [_measure(srv.url, conns, 64, a.duration, a.warmup, srv.cpu, label)
                        for _ in range(a.repeat)]  # fmt: skip
            finally:
                srv.stop()
            rows.append((label, _median_run(runs)))
            _progress(f"{label}: {rows[-1][1].msg_per_s:,.0f} msg/s")
    return rows


def _external(a: argparse.Namespace, conns: list[int], sizes: list[int], base_conns: int) -> int:
    """--url: the seed's tables for one external server (no server CPU)."""
    print(f"wsstls bench --url {a.url}: client on CPU {CLIENT_CPU}, median of {a.repeat}")
    res: dict[tuple[str, int, int], Run] = {}
    plan = Plan()
    plan.add(["url"], conns, [64])
    plan.add(["url"], [base_conns], sizes)
    for cell in plan.cells:
        _, c, s = cell
        res[cell] = _median_run([_measure(a.url, c, s, a.duration, a.warmup, None, "url")
                                 for _ in range(a.repeat)])  # fmt: skip
        r = res[cell]
        _progress(f"{s:6d} B x {c:4d}: {r.msg_per_s:10,.0f} msg/s  p50 {r.lat_p50_us:.0f} us")
    rows = [(f"{s} B x {c} connections", r) for (_, c, s), r in res.items()]
    print(_design_table(f"External server {a.url}", rows, None))
    if a.json:
        Path(a.json).write_text(json.dumps({"url": a.url,
                                            "records": [r.__dict__ for r in res.values()]},
                                           indent=2))  # fmt: skip
    return 0
