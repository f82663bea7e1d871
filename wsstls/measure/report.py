"""The bench's text report: the seed's tables, the design tables, the ledger, the scaling
table and the comparisons, each cell with its runs' spread and its marks.

Marks after a msg/s figure: ``c`` the client was saturated (the figure is the load
generator's, not the server's), ``!`` the runs disagree by more than 20 %, ``s`` the server
shared CPUs with the client.  A comparison built on a client-bound cell says so and falls
back on server CPU per message instead of drawing a conclusion from msg/s.
"""

from __future__ import annotations

import statistics
from collections.abc import Mapping, Sequence

from .runner import CLIENT_BOUND, UNSTABLE, Cell, CellKey, paired_ratios

__all__ = [
    "comparison",
    "design_table",
    "human_size",
    "latency",
    "ledger_table",
    "legend",
    "marks",
    "scaling_table",
    "seed_tables",
]

Results = Mapping[CellKey, Cell]


def human_size(n: int) -> str:
    """64 -> ``64 B``, 1024 -> ``1 KiB``, 1536 -> ``1.5 KiB``, 1 << 20 -> ``1 MiB``."""
    for unit, scale in (("MiB", 1 << 20), ("KiB", 1 << 10)):
        if n >= scale:
            v = n / scale
            return f"{v:.0f} {unit}" if v == int(v) else f"{v:.1f} {unit}"
    return f"{n} B"


def latency(us: float) -> str:
    return f"{us / 1000:.2f} ms" if us >= 1000 else f"{us:.0f} us"


def pct(a: float, b: float) -> str:
    return f"{(a / b - 1) * 100:+.0f}%" if b else "-"


def marks(c: Cell) -> str:
    """``c`` client-bound, ``!`` unstable, ``s`` shares CPUs with the client (3 columns)."""
    return (
        ("c" if c.client_bound else " ")
        + ("!" if c.unstable else " ")
        + ("s" if c.shares_client_cpus else " ")
    )


def spread(c: Cell) -> str:
    return f"{c.spread * 100:3.0f}%" if c.spread is not None else "  - "


def rate(c: Cell) -> str:
    """``184,849 msg/s  4% c  ``: median, spread of the runs, marks."""
    return f"{c.msg_per_s:9,.0f} msg/s {spread(c)} {marks(c)}"


def us_per_msg(c: Cell) -> str:
    return f"{c.server_us_per_msg:5.1f}" if c.server_us_per_msg is not None else "  -  "


def _ratio_range(a: Cell, b: Cell) -> str:
    """Paired ratio of msg/s, a over b, as a change: ``-30% [-33,-27]``."""
    r = paired_ratios(a, b)
    if not r:
        return "-"
    med = statistics.median(r)
    if len(r) < 2:
        return f"{(med - 1) * 100:+.0f}%"
    return f"{(med - 1) * 100:+.0f}% [{(min(r) - 1) * 100:+.0f},{(max(r) - 1) * 100:+.0f}]"


def _d_throughput(x: Cell, y: Cell) -> str:
    flag = " c" if (x.client_bound or y.client_bound) else "  "
    return _ratio_range(y, x) + flag


def seed_tables(
    res: Results, a: str, b: str, conns: Sequence[int], sizes: Sequence[int], base_conns: int
) -> str:
    """The seed report's four tables: ``a`` (the baseline) against ``b``."""
    out = []
    if all((d, c, 64) in res for d in (a, b) for c in conns):
        out.append(f"\nWSS echo 64 B - varying connection count ({a} vs {b})")
        out.append(
            f"  {'conns':>5s}  {a + ' (baseline)':>33s}  {b:>33s}  {'d throughput':>18s}"
            f"  {'d latency':>9s}  server us/msg {a}/{b}"
        )
        for c in conns:
            x, y = res[(a, c, 64)], res[(b, c, 64)]
            out.append(
                f"  {c:5d}  {rate(x)} {latency(x.lat_avg_us):>9s}  "
                f"{rate(y)} {latency(y.lat_avg_us):>9s}  {_d_throughput(x, y):>18s}  "
                f"{pct(y.lat_avg_us, x.lat_avg_us):>9s}  {us_per_msg(x)} / {us_per_msg(y)}"
            )
    if all((d, base_conns, s) in res for d in (a, b) for s in sizes):
        rows = [(s, res[(a, base_conns, s)], res[(b, base_conns, s)]) for s in sizes]
        out.append(f"\nWSS echo - varying message size ({base_conns} connections)")
        out.append(
            f"  {'size':>7s}  {a:>23s}  {b:>23s}  {'d throughput':>18s}  server us/msg {a}/{b}"
        )
        for s, x, y in rows:
            out.append(
                f"  {human_size(s):>7s}  {rate(x)}  {rate(y)}  {_d_throughput(x, y):>18s}  "
                f"{us_per_msg(x)} / {us_per_msg(y)}"
            )
        out.append(
            f"\nTransfer rate ({base_conns} connections; MB/s as in the seed: payload both "
            "ways, MiB)"
        )
        out.append(f"  {'size':>7s}  {a:>12s}  {b:>12s}  {'d':>6s}")
        for s, x, y in rows:
            out.append(
                f"  {human_size(s):>7s}  {seed_mb(x):7.2f} MB/s  {seed_mb(y):7.2f} MB/s  "
                f"{pct(seed_mb(y), seed_mb(x)):>6s}"
            )
        out.append(f"\nLatency ({base_conns} connections; average, and p99)")
        out.append(f"  {'size':>7s}  {a:>20s}  {b:>20s}  {'d avg':>6s}")
        for s, x, y in rows:
            out.append(
                f"  {human_size(s):>7s}  {latency(x.lat_avg_us):>9s} / "
                f"{latency(x.lat_p99_us):>8s}  {latency(y.lat_avg_us):>9s} / "
                f"{latency(y.lat_p99_us):>8s}  {pct(y.lat_avg_us, x.lat_avg_us):>6s}"
            )
    return "\n".join(out)


def seed_mb(c: Cell) -> float:
    """The seed report's MB/s: payload both directions, in MiB."""
    return c.msg_per_s * c.size * 2 / 2**20


def design_table(
    title: str,
    rows: Sequence[tuple[str, Cell]],
    baseline: Cell | None,
    ledger: Mapping[str, Mapping[str, float] | None] | None = None,
) -> str:
    """One row per server: msg/s (spread, marks), vs the baseline, latency, CPU on each side."""
    out = [f"\n{title}"]
    head = (
        f"  {'design':44s} {'msg/s':>9s} {'spread':>6s} {'':3s} {'vs base':>15s} "
        f"{'p50':>8s} {'p99':>8s} {'server':>6s} {'us/msg':>6s} {'client':>6s}"
    )
    if ledger is not None:
        head += f" {'copies':>6s} {'syscalls':>8s}"
    out.append(head)
    for label, r in rows:
        if baseline is None:
            ratio = "-"
        elif r is baseline:
            ratio = "1.00x"
        else:
            rs = paired_ratios(r, baseline)
            ratio = f"{statistics.median(rs):.2f}x" if rs else "-"
            if len(rs) > 1:
                ratio += f" [{min(rs):.2f}-{max(rs):.2f}]"
        srv = f"{r.server_cpu:.2f}" if r.server_cpu is not None else "-"
        line = (
            f"  {label:44s} {r.msg_per_s:9,.0f} {spread(r):>6s} {marks(r)} {ratio:>15s} "
            f"{latency(r.lat_p50_us):>8s} {latency(r.lat_p99_us):>8s} {srv:>6s} "
            f"{us_per_msg(r):>6s} {r.client_cpu:6.2f}"
        )
        if ledger is not None:
            per = ledger.get(label)
            line += (
                f" {per['copies']:6.2f} {per['syscalls']:8.2f}" if per else f" {'-':>6s} {'-':>8s}"
            )
        out.append(line)
    return "\n".join(out)


def ledger_table(ledger: Mapping[str, Mapping[str, float] | None], size: int) -> str:
    cols = ["libssl", "libcrypto", "wsstls", "python", "libc", "other"]
    out = [
        f"\nCopies and system calls per echoed {size} B message, in the server (memcpy/"
        "memmove >= 16 B by library; read/write/epoll_wait calls)"
    ]
    out.append(
        f"  {'design':44s} "
        + " ".join(f"{c:>9s}" for c in cols)
        + f" {'bytes':>7s} {'reads':>6s} {'writes':>6s} {'polls':>6s}"
    )
    for label, per in ledger.items():
        if per is None:
            out.append(f"  {label:44s} (not measured: shim not built, or several processes)")
            continue
        cells = " ".join(f"{per.get('copies_' + c, 0):9.2f}" for c in cols)
        out.append(
            f"  {label:44s} {cells} {per.get('bytes_copied', 0):7.0f} "
            f"{per.get('read_syscalls', 0):6.2f} {per.get('write_syscalls', 0):6.2f} "
            f"{per.get('poll_syscalls', 0):6.2f}"
        )
    return "\n".join(out)


def scaling_table(
    rows: Sequence[Cell], conns: int, size: int, servers: Sequence[str], skipped: Sequence[str]
) -> str:
    """msg/s, server cores busy, µs per message and efficiency per core, by workers (cores).

    Efficiency of n cores: msg/s over n times the same server's msg/s on one core."""
    out = [
        f"\nScaling: {human_size(size)} x {conns} connections, each server given 1, 2, 4, ... "
        "cores (wsstls --workers N, one process per core; peers on the same cores)"
    ]
    out.append(
        f"  {'server':24s} {'cores':>5s} {'msg/s':>10s} {'spread':>6s} {'':3s} "
        f"{'busy':>5s} {'us/msg':>6s} {'eff/core':>8s} {'client':>6s}"
    )
    one = {
        (c.extra.get("server_kind"), c.tls): c
        for c in rows
        if c.extra.get("workers") == 1 and c.msg_per_s > 0
    }
    for name in servers:
        for c in sorted(
            (c for c in rows if c.extra.get("server_kind") == name),
            key=lambda c: (not c.tls, c.extra.get("workers", 0)),
        ):
            n = int(c.extra.get("workers", 1))
            base = one.get((name, c.tls))
            eff = f"{c.msg_per_s / (n * base.msg_per_s) * 100:7.0f}%" if base else "    -   "
            busy = f"{c.server_cpu:5.2f}" if c.server_cpu is not None else "    -"
            label = f"{name} {'wss' if c.tls else 'ws'}"
            out.append(
                f"  {label:24s} {n:5d} {c.msg_per_s:10,.0f} {spread(c):>6s} {marks(c)} "
                f"{busy} {us_per_msg(c):>6s} {eff:>8s} {c.client_cpu:6.2f}"
            )
    for line in skipped:
        out.append(f"  ({line})")
    return "\n".join(out)


def comparison(what: str, x: Cell, y: Cell, xname: str, yname: str) -> str:
    """One line comparing ``y`` with the baseline ``x`` - or saying why msg/s cannot."""
    cpu = ""
    if x.server_us_per_msg and y.server_us_per_msg:
        rs = paired_ratios(y, x, "server_us_per_msg")
        runs = f", runs {min(rs):.2f}-{max(rs):.2f}x" if len(rs) > 1 else ""
        cpu = (
            f"server CPU per message {y.server_us_per_msg:.1f} vs {x.server_us_per_msg:.1f} us "
            f"({y.server_us_per_msg / x.server_us_per_msg:.2f}x{runs})"
        )
    shared = [n for n, c in ((xname, x), (yname, y)) if c.shares_client_cpus]
    tail = f"; {' and '.join(shared)} shared the client's CPUs" if shared else ""
    bound = [n for n, c in ((xname, x), (yname, y)) if c.client_bound]
    if bound:
        return (
            f"  {what}: {yname} vs {xname}: no conclusion from msg/s, the client was saturated "
            f"in the cell of {' and '.join(bound)}; "
            + (cpu or "no server CPU figure either")
            + tail
        )
    rs = paired_ratios(y, x)
    if not rs:
        return f"  {what}: {yname} vs {xname}: not measured"
    shaky = [n for n, c in ((xname, x), (yname, y)) if c.unstable]
    ratio = f"{statistics.median(rs):.2f}x"
    if len(rs) > 1:
        ratio += f" (runs {min(rs):.2f}-{max(rs):.2f}x)"
    text = f"  {what}: {yname} makes {ratio} {xname}'s msg/s"
    if cpu:
        text += f"; {cpu}"
    if shaky:
        text += f"; the runs of {' and '.join(shaky)} disagree: re-run before concluding"
    return text + tail


def legend() -> str:
    return (
        f"Marks: c = client-bound (a load-generator thread or the client CPUs >= "
        f"{CLIENT_BOUND * 100:.0f} % busy: the figure is the client's), ! = the runs disagree "
        f"by more than {UNSTABLE * 100:.0f} % (spread = (max - min) / median of msg/s), s = "
        "the server shared CPUs with the client.  [a,b]: the range over runs of a ratio taken "
        "run by run."
    )
