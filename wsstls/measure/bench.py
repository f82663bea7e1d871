"""``python -m wsstls bench``: the seed report's tables, measured on this machine.

With no arguments it starts its own echo servers on 127.0.0.1 (one per design, RSA 2048
self-signed certificate, TLS 1.3), drives them with the C load generator
(wsstls.loadgen: each connection sends a message, waits for the echo, checks it byte for
byte, repeats), and prints:

1. WSS echo 64 B by connection count, inline vs offload (the seed's table 1);
2. by message size at 100 connections (table 2), transfer rate (table 3) and latency
   (table 4);
3. the report's recommendations - batched offload, a size threshold, one loop per core
   (``--workers``) - and plain ws:// as the no-TLS reference, at 64 B and 16 KiB;
4. copies and system calls per echoed message of each design, counted in the server by
   the preloaded shim (wsstls.measure.memcount);
5. on a machine whose server pool has 2 CPUs or more (``--scaling`` anywhere): wsstls with
   ``--workers`` 1, 2, 4, ... over wss and ws, beside picows (one process per core) and Go
   gorilla/websocket (GOMAXPROCS) given the same cores;
6. the comparisons, which draw no conclusion from a client-bound cell;
7. with ``--sweep-sizes``: OpenSSL's own designs (inline, async, pipelined,
   pipelined+async, all TLS 1.2) at each size against the load generator, with their
   crypto counters (records per cipher call, ASYNC pauses and jobs per message).

The core plan (wsstls.measure.cpuplan), printed first, splits the CPUs between the servers
and the load generator.  Every figure is the median of ``--repeat`` runs, the designs
alternating run by run, with the runs' spread, the server's CPU time per message (over
exactly the measured window) and the client's load, so a reader can tell which side
saturated.
"""

from __future__ import annotations

import argparse
import dataclasses
import importlib.util
import json
import os
import platform
import resource
import ssl
import statistics
import sys
import tempfile
import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

from .. import loadgen
from ..cliargs import (
    Parser,
    choice_list,
    cpu_list,
    integer,
    integer_list,
    number,
    output_file,
    size_list,
)
from ..cliargs import size as size_arg
from ..server.config import LIMITS
from ..tls import self_signed
from . import cryptocost, plot, report
from .cpuplan import MAX_CLIENT_THREADS, CorePlan, plan_for_this_machine
from .runner import BenchError, Cell, CellKey, Runner, paired_ratios
from .servers import (
    MODES,
    Certs,
    Design,
    DesignOptions,
    GorillaSpec,
    PeerSpec,
    ServerSpec,
    design,
    gorilla_binary,
    peers_dir,
    process_cpu_seconds,
    scaled,
)

__all__ = [
    "DESIGNS",
    "TABLES",
    "Context",
    "Design",
    "Outcome",
    "Table",
    "main",
    "parse",
    "peers_dir",
    "process_cpu_seconds",
]

DESIGNS = ("inline", "offload", "batched", "threshold", "workers", "ws")
TRANSPORTS = ("ring", "mem", "pair", "fd")
SCALING_PEERS = ("picows", "gorilla")
MAX_SIZE = 16 << 20  # the servers' default --max-message
MAX_SECONDS = 3600.0


# ---------------------------------------------------------------- the options


def _open_file_limit() -> int:
    """Raise the soft open-file limit to the hard one; the connections the client can hold."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < hard:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
            soft = hard
        except (ValueError, OSError):
            pass
    limit = soft if soft != resource.RLIM_INFINITY else loadgen.MAX_CONNECTIONS
    return max(1, min(loadgen.MAX_CONNECTIONS, limit - 64))


@dataclass
class Options:
    """The checked command line."""

    conns: list[int]
    sizes: list[int]
    modes: list[str]
    transports: list[str]
    duration: float
    warmup: float
    repeat: int
    threads: int
    workers: int
    big: int
    peers: bool
    no_copies: bool
    url: str | None
    json: str | None
    plot: str | None
    quick: bool
    crypto: str  # the pipelining/ASYNC table: "on", "off" or "sweep" (wsstls.measure.cryptocost)
    sweep_sizes: list[int]  # the real-server sweep of OpenSSL's designs ([]: not run)
    sweep_conns: int
    plan: CorePlan
    scaling: list[int]
    scaling_conns: int
    scaling_peers: list[str]

    @property
    def base_conns(self) -> int:
        return 100 if 100 in self.conns else self.conns[0]


def _url(text: str) -> str:
    try:
        loadgen.parse_url(text)
    except ValueError as exc:
        why = str(exc).removeprefix("url: ")
        raise argparse.ArgumentTypeError(
            f"a ws:// or wss:// URL of an IPv4 address or localhost ({why})"
        ) from None
    return text


def _scaling_arg(text: str) -> str | list[int]:
    if text in ("auto", "off"):
        return text
    try:
        return sorted(integer_list(1, LIMITS_WORKERS)(text))
    except argparse.ArgumentTypeError:
        raise argparse.ArgumentTypeError(
            f"auto, off, or comma-separated worker counts from 1 to {LIMITS_WORKERS}, got {text!r}"
        ) from None


def _scaling_peers_arg(text: str) -> list[str]:
    if text.strip() == "none":
        return []
    try:
        return choice_list(SCALING_PEERS)(text)
    except argparse.ArgumentTypeError as exc:
        raise argparse.ArgumentTypeError(f"none, or {exc}") from None


LIMITS_WORKERS = int(LIMITS["workers"][1])


def _parser(max_conns: int) -> Parser:
    doc = __doc__ or ""
    p = Parser(
        prog="wsstls bench",
        description=doc.split("\n\n")[0],
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog=doc.split("\n\n", 1)[1],
    )
    conns = integer_list(1, max_conns, "connection counts")
    seconds = number(0, MAX_SECONDS, unit="seconds")
    p.add_argument(
        "--conns", type=conns, default="50,100,200,500", help="connection counts (64 B table)"
    )
    p.add_argument(
        "--sizes",
        type=size_list(0, MAX_SIZE),
        default="64,256,1024,4096",
        help="message sizes (size tables)",
    )
    p.add_argument(
        "--modes",
        type=choice_list(MODES),
        default="inline,offload,batched,threshold",
        help=f"TLS designs to measure ({', '.join(MODES)}; inline is the "
        "baseline, always measured)",
    )
    p.add_argument(
        "--transports",
        type=choice_list(TRANSPORTS),
        default="ring",
        help=f"transports of the inline design ({', '.join(TRANSPORTS)})",
    )
    p.add_argument(
        "--duration",
        type=number(0, MAX_SECONDS, lo_open=True, unit="seconds"),
        default="1.5",
        help="measured seconds per run",
    )
    p.add_argument("--warmup", type=seconds, default="0.5", help="seconds before each window")
    p.add_argument(
        "--repeat", type=integer(1, 100), default="3", help="runs per cell (median taken)"
    )
    p.add_argument(
        "--threads",
        type=integer(1, int(LIMITS["threads"][1])),
        default="2",
        help="offload threads of the offload designs",
    )
    p.add_argument(
        "--workers",
        type=integer(1, LIMITS_WORKERS),
        default="2",
        help="processes of the workers design",
    )
    p.add_argument(
        "--big",
        type=size_arg(1, MAX_SIZE),
        default="16384",
        help="the large size of the designs table",
    )
    p.add_argument(
        "--server-cpus",
        type=cpu_list,
        metavar="LIST",
        help="the server pool, e.g. 8-15 (default: the core plan's)",
    )
    p.add_argument(
        "--client-cpus",
        type=cpu_list,
        metavar="LIST",
        help="the load generator's CPUs, e.g. 0-7 (default: the core plan's)",
    )
    p.add_argument(
        "--client-threads",
        type=integer(1, MAX_CLIENT_THREADS),
        metavar="N",
        help="load-generator threads, pinned one per client CPU in turn "
        "(default: one per client CPU)",
    )
    p.add_argument(
        "--scaling",
        type=_scaling_arg,
        default="auto",
        metavar="auto|off|LIST",
        help="worker counts of the scaling table (auto: 1, 2, 4, ... up to the "
        "server pool when it has 2 CPUs or more)",
    )
    p.add_argument(
        "--scaling-conns",
        type=integer(1, max_conns),
        default="400",
        help="connections of the scaling table",
    )
    p.add_argument(
        "--scaling-peers",
        type=_scaling_peers_arg,
        default=",".join(SCALING_PEERS),
        help="peers of the scaling table (picows, gorilla; none)",
    )
    p.add_argument(
        "--peers",
        action="store_true",
        help="also picows, websockets, aiohttp, asyncio echo servers (wsstls/measure/peers)",
    )
    p.add_argument("--no-copies", action="store_true", help="skip the copy ledger runs")
    p.add_argument(
        "--url", type=_url, help="measure this ws:// or wss:// echo server instead (client only)"
    )
    p.add_argument(
        "--json", type=output_file, metavar="FILE", help="write every figure (schema: README)"
    )
    p.add_argument(
        "--plot", type=output_file, metavar="FILE.png", help="draw the figures (needs matplotlib)"
    )
    p.add_argument("--quick", action="store_true", help="a tiny run (smoke test)")
    p.add_argument(
        "--sweep-sizes",
        type=size_list(1, MAX_SIZE),
        metavar="LIST",
        help="also measure the servers inline, async, pipelined, pipelined+async (TLS 1.2) at "
        f"these sizes, e.g. {','.join(map(str, SWEEP_SIZES))} (default: not run)",
    )
    p.add_argument(
        "--sweep-conns",
        type=integer(1, max_conns),
        default="10",
        help="connections of the --sweep-sizes table",
    )
    p.add_argument(
        "--crypto",
        choices=["auto", "on", "off", "sweep"],
        default="auto",
        help="the pipelining/ASYNC table and its cost model (sweep: 64 B to 1 MiB; "
        "auto: on, but off with --quick)",
    )
    return p


def parse(argv: list[str] | None = None) -> Options:
    """The command line, every value checked before any work (exit 2 with one line if bad)."""
    max_conns = _open_file_limit()
    p = _parser(max_conns)
    a = p.parse_args(argv)
    if a.url is not None:
        for flag, given in (("--peers", a.peers), ("--scaling", a.scaling != "auto")):
            if given:
                p.error(f"{flag}: not with --url (it measures one external server)")
    if a.plot is not None and (why := plot.check()) is not None:
        p.error(f"--plot: {why}")
    try:
        plan = plan_for_this_machine(a.server_cpus, a.client_cpus, a.client_threads)
    except ValueError as exc:
        p.error(str(exc))
    if a.scaling == "off":
        scaling = []
    elif a.scaling == "auto":
        auto = plan.scaling_workers()
        scaling = auto if len(auto) > 1 and not a.quick else []
    else:
        scaling = a.scaling
    conns, sizes, duration, warmup, repeat = a.conns, a.sizes, a.duration, a.warmup, a.repeat
    sconns = a.scaling_conns
    if a.quick:
        conns, sizes, duration, warmup, repeat = [8], [64], 0.3, 0.1, 1
        sconns = min(sconns, 8)
    return Options(
        conns=list(dict.fromkeys(conns)), sizes=list(dict.fromkeys(sizes)), modes=a.modes,
        transports=a.transports, duration=duration, warmup=warmup, repeat=repeat,
        threads=a.threads, workers=a.workers, big=a.big, peers=a.peers, no_copies=a.no_copies,
        url=a.url, json=a.json, plot=a.plot, quick=a.quick,
        crypto=("off" if a.quick else "on") if a.crypto == "auto" else a.crypto,
        sweep_sizes=list(dict.fromkeys(a.sweep_sizes or [])), sweep_conns=a.sweep_conns,
        plan=plan, scaling=scaling, scaling_conns=sconns, scaling_peers=a.scaling_peers,
    )  # fmt: skip


# ------------------------------------------------------------------- the tables


@dataclass
class Context:
    """What the tables know of the run."""

    options: Options
    designs: list[Design]
    base: str  # the baseline design's name
    off: str | None  # the seed's offload design, when measured

    @property
    def by_name(self) -> dict[str, Design]:
        return {d.name: d for d in self.designs}

    def label(self, name: str) -> str:
        return self.by_name[name].label


@dataclass
class Outcome:
    """What the run measured."""

    res: dict[CellKey, Cell]
    ledger: dict[str, dict[str, float] | None] = field(default_factory=dict)
    peers: list[Cell] = field(default_factory=list)
    scaling: list[Cell] = field(default_factory=list)
    scaling_skipped: list[str] = field(default_factory=list)
    crypto: dict[str, Any] = field(default_factory=dict)  # cryptocost.run()
    sweep: list[Cell] = field(default_factory=list)  # --sweep-sizes


class Table(Protocol):
    """A section of the report: the cells it needs measured, and its text."""

    def cells(self, ctx: Context) -> list[CellKey]: ...

    def render(self, ctx: Context, out: Outcome) -> str: ...


def _alternating(
    designs: Iterable[str], conns: Iterable[int], sizes: Iterable[int]
) -> list[CellKey]:
    """Cells in measuring order: the designs alternate at each load."""
    return [(d, c, s) for c in conns for s in sizes for d in designs]


class SeedTables:
    """The seed's four tables: the baseline against offload, by connections and by size."""

    def cells(self, ctx: Context) -> list[CellKey]:
        o, pair = ctx.options, [ctx.base, *([ctx.off] if ctx.off else [])]
        return _alternating(pair, o.conns, [64]) + _alternating(pair, [o.base_conns], o.sizes)

    def render(self, ctx: Context, out: Outcome) -> str:
        if ctx.off is None:
            return ""
        o = ctx.options
        return report.seed_tables(out.res, ctx.base, ctx.off, o.conns, o.sizes, o.base_conns)


class DesignTable:
    """Every design at one size and the base connection count, vs the baseline."""

    def __init__(self, big: bool = False) -> None:
        self.big = big  # False: 64 B, with the ledger's columns; True: --big

    def _size(self, ctx: Context) -> int:
        return ctx.options.big if self.big else 64

    def _names(self, ctx: Context) -> list[str]:
        if not self.big:
            return [d.name for d in ctx.designs]
        if ctx.options.quick:
            return []
        return [d.name for d in ctx.designs if d.tls and d.single]

    def cells(self, ctx: Context) -> list[CellKey]:
        return _alternating(self._names(ctx), [ctx.options.base_conns], [self._size(ctx)])

    def render(self, ctx: Context, out: Outcome) -> str:
        size, c = self._size(ctx), ctx.options.base_conns
        rows = [
            (ctx.label(d), out.res[(d, c, size)])
            for d in self._names(ctx)
            if (d, c, size) in out.res
        ]
        if not rows:
            return ""
        base = out.res.get((ctx.base, c, size))
        if not self.big:
            title = (
                f"The report's recommendations, 64 B, {c} connections (server: cores "
                "busy, CPU per message; client: cores busy)"
            )
            return report.design_table(title, rows, base, out.ledger or None)
        return report.design_table(
            f"The designs at {report.human_size(size)}, {c} connections", rows, base
        )


class LedgerTable:
    def cells(self, ctx: Context) -> list[CellKey]:
        return []

    def render(self, ctx: Context, out: Outcome) -> str:
        return report.ledger_table(out.ledger, 64) if out.ledger else ""


class PeersTable:
    def cells(self, ctx: Context) -> list[CellKey]:
        return []

    def render(self, ctx: Context, out: Outcome) -> str:
        if not out.peers:
            return ""
        c = ctx.options.base_conns
        return report.design_table(
            f"Peers, 64 B, {c} connections (same client, same run)",
            [(p.label, p) for p in out.peers],
            out.res.get((ctx.base, c, 64)),
        )


class ScalingTable:
    def cells(self, ctx: Context) -> list[CellKey]:
        return []

    def render(self, ctx: Context, out: Outcome) -> str:
        if not out.scaling:
            return ""
        o = ctx.options
        kinds = [
            "wsstls",
            *[
                k
                for k in o.scaling_peers
                if any(c.extra.get("server_kind") == k for c in out.scaling)
            ],
        ]
        return report.scaling_table(out.scaling, o.scaling_conns, 64, kinds, out.scaling_skipped)


class Comparisons:
    """Each design against the baseline: from msg/s only where no cell was client-bound."""

    def cells(self, ctx: Context) -> list[CellKey]:
        return []

    def render(self, ctx: Context, out: Outcome) -> str:
        c = ctx.options.base_conns
        lines = []
        for size in (64, ctx.options.big):
            x = out.res.get((ctx.base, c, size))
            if x is None:
                continue
            for d in ctx.designs:
                y = out.res.get((d.name, c, size))
                if y is None or d.name == ctx.base:
                    continue
                lines.append(
                    report.comparison(f"{report.human_size(size)} x {c}", x, y, ctx.base, d.name)
                )
        if not lines:
            return ""
        return "\nComparisons with the baseline (msg/s ratios taken run by run)\n" + "\n".join(
            lines
        )


#: The report's sections, in order.  A new table is one more entry (its cells are measured
#: in the main group, alternating with the others).
TABLES: list[Table] = [
    SeedTables(),
    DesignTable(),
    DesignTable(big=True),
    LedgerTable(),
    PeersTable(),
    ScalingTable(),
    Comparisons(),
]


# ------------------------------------------------------------------- the run


def _progress(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def _designs(o: Options) -> list[Design]:
    designs = [design("inline", DesignOptions(o.threads, o.workers, t)) for t in o.transports]
    opts = DesignOptions(o.threads, o.workers)
    designs += [design(m, opts) for m in o.modes if m != "inline"]
    if not o.quick:
        designs.append(design("workers", opts))
    designs.append(design("ws"))
    return designs


def _certs(tmp: str) -> Certs:
    certs = Certs(os.path.join(tmp, "cert.pem"), os.path.join(tmp, "key.pem"))
    pair = self_signed("localhost", bits=2048)
    Path(certs.cert).write_bytes(pair.cert_pem)
    Path(certs.key).write_bytes(pair.key_pem)
    return certs


def _scaling(runner: Runner, o: Options, out: Outcome) -> list[str]:
    """The scaling table's groups, one per worker count: wsstls, picows, gorilla; wss and ws."""
    kinds: dict[str, Any] = {}
    for peer in o.scaling_peers:
        if peer == "picows":
            if importlib.util.find_spec("picows") is None:
                out.scaling_skipped.append("picows: not installed (pip install picows)")
            else:
                kinds["picows"] = None
        elif peer == "gorilla":
            built = gorilla_binary(_progress)
            if isinstance(built, str):
                out.scaling_skipped.append(f"gorilla: not measured: {built}")
            else:
                kinds["gorilla"] = built
    for line in out.scaling_skipped:
        _progress(f"scaling: {line}")
    failures: list[str] = []
    for n in o.scaling:
        specs: list[ServerSpec] = []
        for tls in (True, False):
            tag = "wss" if tls else "ws"
            base = design("inline") if tls else design("ws")
            specs.append(scaled(base, n))
            if "picows" in kinds:
                specs.append(
                    PeerSpec(
                        f"picows-{tag}-x{n}", f"picows {tag} x {n}", "picows_echo", tls, processes=n
                    )
                )
            if "gorilla" in kinds:
                specs.append(
                    GorillaSpec(
                        f"gorilla-{tag}-x{n}",
                        f"gorilla {tag}, GOMAXPROCS={n}",
                        tls,
                        kinds["gorilla"],
                        processors=n,
                    )
                )

        def extra(spec: ServerSpec, n: int = n) -> dict[str, Any]:
            kind = spec.name.split("-", 1)[0]
            return {"table": "scaling", "workers": n, "server_kind": kind}

        if o.plan.borrows(n):
            _progress(
                f"scaling: {n} cores are more than the server pool: they share the "
                "client's CPUs (cells marked s)"
            )
        cells = [(s.name, o.scaling_conns, 64) for s in specs]
        res, fails = runner.run_group(specs, cells, kind="scaling", extra=extra)
        out.scaling += list(res.values())
        failures += fails
    return failures


def _python_peers(runner: Runner, o: Options, out: Outcome) -> list[str]:
    failures: list[str] = []
    for tls in (True, False):
        for script in ("picows_echo", "websockets_echo", "aiohttp_echo", "asyncio_echo"):
            peer = script.removesuffix("_echo")
            if peer == "picows":  # its default TLS: aiofastnet, libssl over its own memory BIO
                peer = "picows+aiofastnet"
            label = f"{peer} ({'wss' if tls else 'ws'})"
            spec = PeerSpec(label, label, script, tls)
            try:
                res, fails = runner.run_group([spec], [(label, o.base_conns, 64)], kind="peer")
            except RuntimeError as exc:
                _progress(f"{label}: not measured ({exc})")
                continue
            failures += fails
            out.peers += list(res.values())
            _progress(f"{label}: {out.peers[-1].msg_per_s:,.0f} msg/s")
    return failures


def _header(o: Options, what: str) -> None:
    print(
        f"wsstls bench - {platform.node()}: {os.cpu_count()} CPUs, Python "
        f"{platform.python_version()}, {ssl.OPENSSL_VERSION}; {what}",
        flush=True,
    )
    print(f"core plan: {o.plan.describe()}", flush=True)
    for note in o.plan.notes:
        print(f"  note: {note}", flush=True)


def _records(ctx: Context, out: Outcome) -> list[dict[str, Any]]:
    records = []
    for (name, _c, size), cell in out.res.items():
        d = ctx.by_name[name]
        per = out.ledger.get(d.label) if size == 64 else None
        records.append(
            {
                "table": "designs",
                "design": name,
                "mode": d.mode,
                "transport": d.transport,
                "workers": d.workers,
                **cell.to_json(),
                "copies_per_msg": per["copies"] if per else None,
                "syscalls_per_msg": per["syscalls"] if per else None,
            }
        )
    for cell in out.peers:
        records.append(
            {
                "table": "peers",
                "design": cell.label,
                "mode": "peer",
                "transport": None,
                "workers": 1,
                **cell.to_json(),
                "copies_per_msg": None,
                "syscalls_per_msg": None,
            }
        )
    for cell in out.scaling:
        records.append({"design": cell.server, **cell.to_json()})
    return records


def _settings(o: Options) -> dict[str, Any]:
    return {
        "duration": o.duration,
        "warmup": o.warmup,
        "repeat": o.repeat,
        **o.plan.to_json(),
        "scaling_workers": o.scaling,
        "scaling_conns": o.scaling_conns,
    }


def _machine() -> dict[str, Any]:
    return {
        "node": platform.node(),
        "cpus": os.cpu_count(),
        "python": platform.python_version(),
        "openssl": ssl.OPENSSL_VERSION,
    }


#: The sweep's designs (issue 10) and their sizes when ``--sweep-sizes`` names none.
SWEEP_DESIGNS = ("inline", "async", "pipelined", "pipelined+async")
SWEEP_SIZES = (64, 1024, 16384, 65536, 262144, 1 << 20)


def _sweep(runner: Runner, o: Options, out: Outcome, tmp: Path) -> list[str]:
    """OpenSSL's designs at each ``--sweep-sizes`` size, TLS 1.2, ``--sweep-conns``: a
    group of fresh servers per size (their ``--stats`` at exit give that size's crypto
    counters per message), the designs alternating run by run."""
    failures: list[str] = []
    opts = DesignOptions(o.threads, o.workers)
    for size in o.sweep_sizes:
        specs, stats = [], {}
        for name in SWEEP_DESIGNS:
            d = design(name, opts)
            stats[d.name] = tmp / f"sweep-{d.name}-{size}.json"
            args = (*d.args, "--tls-max", "1.2", "--stats", str(stats[d.name]))
            specs.append(dataclasses.replace(d, args=args))
        _progress(f"sweep: {report.human_size(size)} x {o.sweep_conns}")
        cells = _alternating([d.name for d in specs], [o.sweep_conns], [size])
        res, fails = runner.run_group(specs, cells)
        failures += fails
        for (name, _, _), cell in res.items():
            cell.extra.update(_sweep_counters(stats[name]))
            out.sweep.append(cell)
    return failures


def _sweep_counters(path: Path) -> dict[str, Any]:
    """Per message, from a server's ``--stats``: records per call of the pipelined cipher
    (None: not used), ASYNC pauses, SSL calls in jobs and out of them."""
    try:
        doc = json.loads(path.read_text())
    except (OSError, ValueError):
        return {}
    k = doc.get("crypto") or {}
    msgs = (doc.get("messages_fast") or 0) + (doc.get("messages_slow") or 0)
    calls = k.get("cipher_calls") or 0
    return {
        "server_messages": msgs,
        "records_per_call": k.get("cipher_records", 0) / calls if calls else None,
        **{f"{name}_per_msg": k.get(name, 0) / msgs if msgs else None
           for name in ("pauses", "job_calls", "direct_calls")},
    }  # fmt: skip


def sweep_table(cells: list[Cell]) -> str:
    """The --sweep-sizes table: each size's designs against its inline row."""
    conns = cells[0].conns if cells else 0
    out = [
        f"\nOpenSSL's designs by size, TLS 1.2, {conns} connections, real servers "
        "(msg/s median; vs inline run by run; counters per message from the server's --stats)",
        f"  {'size':>8s} {'design':16s} {'msg/s':>9s} {'MB/s':>8s} {'spread':>6s} {'':3s} "
        f"{'vs inline':>15s} {'us/msg':>8s} {'rec/call':>8s} {'pauses':>7s} {'jobs':>6s}",
    ]
    base: dict[int, Cell] = {c.size: c for c in cells if c.server == "inline"}
    for c in cells:
        b = base.get(c.size)
        rs = paired_ratios(c, b) if b is not None and b is not c else []
        ratio = "1.00x" if b is c else (f"{statistics.median(rs):.2f}x" if rs else "-")
        if len(rs) > 1:
            ratio += f" [{min(rs):.2f}-{max(rs):.2f}]"
        rpc, pauses, jobs = (c.extra.get(k) for k in ("records_per_call", "pauses_per_msg",
                                                      "job_calls_per_msg"))  # fmt: skip
        out.append(
            f"  {report.human_size(c.size):>8s} {c.server:16s} {c.msg_per_s:9,.0f} "
            f"{c.mb_per_s:8.1f} {report.spread(c):>6s} {report.marks(c)} {ratio:>15s} "
            f"{report.us_per_msg(c):>8s} {f'{rpc:.1f}' if rpc else '-':>8s} "
            f"{f'{pauses:.2f}' if pauses is not None else '-':>7s} "
            f"{f'{jobs:.2f}' if jobs is not None else '-':>6s}"
        )
    return "\n".join(out)


def _run(o: Options) -> int:
    designs = _designs(o)
    names = [d.name for d in designs]
    ctx = Context(o, designs, designs[0].name, "offload" if "offload" in names else None)
    cells: list[CellKey] = []
    for table in TABLES:
        for c in table.cells(ctx):
            if c not in cells:
                cells.append(c)
    started = time.monotonic()
    _header(o, f"median of {o.repeat} x {o.duration:g} s per cell")
    with tempfile.TemporaryDirectory() as tmp:
        certs = _certs(tmp)
        runner = Runner(o.plan, certs, o.duration, o.warmup, o.repeat, _progress)
        _progress(f"{len(designs)} servers; {len(cells)} cells x {o.repeat} runs")
        res, failures = runner.run_group(designs, cells)
        out = Outcome(res)
        if not o.no_copies and not o.quick:
            for d in designs:
                _progress(f"counting copies: {d.name}")
                out.ledger[d.label] = runner.count_copies(d, 64)
        if o.peers:
            failures += _python_peers(runner, o, out)
        if o.scaling:
            failures += _scaling(runner, o, out)
        if o.sweep_sizes:
            failures += _sweep(runner, o, out, Path(tmp))
        if o.crypto != "off":  # in this process, once the servers are stopped
            _progress("pipelining and ASYNC jobs: costs, in-process echoes on 1 and 2 cores")
            sizes = cryptocost.SWEEP if o.crypto == "sweep" else cryptocost.SIZES
            out.crypto = cryptocost.run(sizes, repeat=1 if o.quick else 3)

    if failures:
        print("\n".join(["servers failed:", *failures]), file=sys.stderr)
    for table in TABLES:
        text = table.render(ctx, out)
        if text:
            print(text)
    if out.sweep:
        print(sweep_table(out.sweep))
    if out.crypto:
        print(cryptocost.render(out.crypto))
    print(f"\n{report.legend()}")
    print(f"{time.monotonic() - started:.0f} s in all.")
    if o.json:
        doc = {
            "machine": _machine(),
            "settings": _settings(o),
            "records": _records(ctx, out),
            "ledger": out.ledger,
            "crypto": out.crypto,
            "sweep": [c.to_json() for c in out.sweep],
        }
        Path(o.json).write_text(json.dumps(doc, indent=2))
        print(f"wrote {o.json}")
    if o.plot:
        plot.draw(o.plot, out.res, names, o.conns, o.base_conns, out.scaling)
        print(f"wrote {o.plot}")
    if runner.problems:
        print("\n".join(["connections failed:", *runner.problems]), file=sys.stderr)
    return 1 if failures or runner.problems else 0


def _external(o: Options) -> int:
    """--url: the seed's tables for one external server (no server CPU)."""
    assert o.url is not None
    _header(o, f"--url {o.url}, median of {o.repeat} x {o.duration:g} s per cell")
    cells = _alternating(["url"], o.conns, [64])
    cells += [c for c in _alternating(["url"], [o.base_conns], o.sizes) if c not in cells]
    runner = Runner(o.plan, Certs("", ""), o.duration, o.warmup, o.repeat, _progress)
    res = runner.run_external(o.url, cells)
    rows = [(f"{report.human_size(s)} x {c} connections", r) for (_, c, s), r in res.items()]
    print(report.design_table(f"External server {o.url}", rows, None))
    print(f"\n{report.legend()}")
    if o.json:
        doc = {
            "url": o.url,
            "machine": _machine(),
            "settings": _settings(o),
            "records": [r.to_json() for r in res.values()],
        }
        Path(o.json).write_text(json.dumps(doc, indent=2))
    if runner.problems:
        print("\n".join(["connections failed:", *runner.problems]), file=sys.stderr)
        return 1
    return 0


def main(argv: list[str] | None = None) -> int:
    """``python -m wsstls bench``."""
    o = parse(argv)
    try:
        return _external(o) if o.url else _run(o)
    except BenchError as exc:
        print(f"wsstls bench: {exc}", file=sys.stderr)
        return 1
