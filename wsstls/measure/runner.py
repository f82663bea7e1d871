"""Measuring cells: the load generator on the client CPUs against a server on its own CPUs.

A *cell* is one server at one load (connections x message size).  It is measured ``repeat``
times, the cells of a group alternating run by run (A B A B: machine noise hits them alike),
and kept as a :class:`Cell`: the median of each figure, the runs' min/max, whether the runs
disagree (spread above :data:`UNSTABLE`) and whether the client was the bottleneck (client
saturation at or above :data:`CLIENT_BOUND`).

Client saturation of a run is the larger of: the busiest load-generator thread's load (each
thread is one event loop pinned to one CPU), and how busy the client's CPUs were in all
(/proc/stat, every process: a client CPU kept busy by others is no more available to it).
The server's CPU time comes from /proc over exactly the measured window.
"""

from __future__ import annotations

import json
import os
import signal
import statistics
import sys
import tempfile
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

from .. import loadgen
from .cpuplan import CorePlan
from .memcount import preload_env
from .servers import BenchError, Certs, Design, Running, ServerProcess, ServerSpec

__all__ = [
    "CLIENT_BOUND",
    "UNSTABLE",
    "BenchError",
    "Cell",
    "CellKey",
    "Runner",
    "Sample",
    "cpu_ticks",
]

#: Client saturation (cores busy / cores it had) from which a cell is client-bound.
CLIENT_BOUND = 0.90
#: Spread of a cell's runs, (max - min) / median of msg/s, above which it is flagged.
UNSTABLE = 0.20

CellKey = tuple[str, int, int]  # (server name, connections, size)
_TICK = os.sysconf("SC_CLK_TCK")


def cpu_ticks(cpus: Iterable[int]) -> dict[int, tuple[int, int]]:
    """(busy, total) clock ticks of each CPU since boot (/proc/stat; busy = not idle/iowait)."""
    want = set(cpus)
    out: dict[int, tuple[int, int]] = {}
    with open("/proc/stat") as f:
        for line in f:
            name, *ticks = line.split()
            if name.startswith("cpu") and name[3:].isdigit() and int(name[3:]) in want:
                t = [int(x) for x in ticks[:8]]
                total = sum(t)
                out[int(name[3:])] = (total - t[3] - t[4], total)
    return out


def _busy_fraction(a: dict[int, tuple[int, int]], b: dict[int, tuple[int, int]]) -> float | None:
    busy = sum(b[c][0] - a[c][0] for c in a if c in b)
    total = sum(b[c][1] - a[c][1] for c in a if c in b)
    return busy / total if total > 0 else None


@dataclass
class Sample:
    """One run of one cell."""

    msg_per_s: float
    mb_per_s: float
    lat_avg_us: float
    lat_p50_us: float
    lat_p99_us: float
    messages: int
    errors: int
    connect_failures: int
    connections: int
    client_cpu: float  # cores busy, all load-generator threads
    client_saturation: float  # 0 .. 1, see the module's docstring
    server_cpu: float | None  # cores busy
    server_us_per_msg: float | None
    first_error: str | None


@dataclass
class Cell:
    """A measured cell: medians over its runs, the runs' range, its flags."""

    server: str
    label: str
    tls: bool
    conns: int
    size: int
    samples: list[Sample]
    client_threads: int
    client_cores: int
    server_cpus: tuple[int, ...] | None  # None: an external server
    shares_client_cpus: bool
    kind: str = "wsstls"  # or "peer", "url"
    extra: dict[str, Any] = field(default_factory=dict)  # table-specific (workers, ...)

    def _median(self, name: str) -> Any:
        values = [getattr(s, name) for s in self.samples if getattr(s, name) is not None]
        return statistics.median(values) if values else None

    @property
    def msg_per_s(self) -> float:
        return float(self._median("msg_per_s") or 0.0)

    @property
    def msg_per_s_min(self) -> float:
        return min(s.msg_per_s for s in self.samples)

    @property
    def msg_per_s_max(self) -> float:
        return max(s.msg_per_s for s in self.samples)

    @property
    def spread(self) -> float | None:
        """(max - min) / median of the runs' msg/s; None with one run."""
        if len(self.samples) < 2 or self.msg_per_s <= 0:
            return None
        return (self.msg_per_s_max - self.msg_per_s_min) / self.msg_per_s

    @property
    def unstable(self) -> bool:
        return self.spread is not None and self.spread > UNSTABLE

    @property
    def client_saturation(self) -> float:
        return float(self._median("client_saturation") or 0.0)

    @property
    def client_bound(self) -> bool:
        return self.client_saturation >= CLIENT_BOUND

    @property
    def server_cores(self) -> int | None:
        return len(set(self.server_cpus)) if self.server_cpus is not None else None

    def _fmedian(self, name: str) -> float:
        return float(self._median(name) or 0.0)

    @property
    def mb_per_s(self) -> float:
        """Payload MB/s, one direction (median)."""
        return self._fmedian("mb_per_s")

    @property
    def lat_avg_us(self) -> float:
        """Average latency (median over runs)."""
        return self._fmedian("lat_avg_us")

    @property
    def lat_p50_us(self) -> float:
        """p50 latency (median over runs)."""
        return self._fmedian("lat_p50_us")

    @property
    def lat_p99_us(self) -> float:
        """p99 latency (median over runs)."""
        return self._fmedian("lat_p99_us")

    @property
    def client_cpu(self) -> float:
        """Load-generator cores busy (median)."""
        return self._fmedian("client_cpu")

    @property
    def server_cpu(self) -> float | None:
        """Server cores busy (median); None without a server to read."""
        v = self._median("server_cpu")
        return float(v) if v is not None else None

    @property
    def server_us_per_msg(self) -> float | None:
        """Server CPU µs per echoed message (median)."""
        v = self._median("server_us_per_msg")
        return float(v) if v is not None else None

    @property
    def messages(self) -> int:
        return sum(s.messages for s in self.samples)

    @property
    def errors(self) -> int:
        return sum(s.errors for s in self.samples)

    @property
    def connect_failures(self) -> int:
        return sum(s.connect_failures for s in self.samples)

    @property
    def first_error(self) -> str | None:
        return next((s.first_error for s in self.samples if s.first_error), None)

    def to_json(self) -> dict[str, Any]:
        """The record of the JSON report (schema: README)."""
        return {
            "server": self.server,
            "label": self.label,
            "kind": self.kind,
            "tls": self.tls,
            "conns": self.conns,
            "size": self.size,
            "runs": len(self.samples),
            "messages": self.messages,
            "msg_per_s": self.msg_per_s,
            "msg_per_s_min": self.msg_per_s_min,
            "msg_per_s_max": self.msg_per_s_max,
            "msg_per_s_runs": [s.msg_per_s for s in self.samples],
            "spread": self.spread,
            "unstable": self.unstable,
            "mb_per_s": self.mb_per_s,
            "lat_avg_us": self.lat_avg_us,
            "lat_p50_us": self.lat_p50_us,
            "lat_p99_us": self.lat_p99_us,
            "errors": self.errors,
            "connect_failures": self.connect_failures,
            "first_error": self.first_error,
            "client_cpu": self.client_cpu,
            "client_threads": self.client_threads,
            "client_cores": self.client_cores,
            "client_saturation": self.client_saturation,
            "client_bound": self.client_bound,
            "server_cpu": self.server_cpu,
            "server_cores": self.server_cores,
            "server_cpus": list(self.server_cpus) if self.server_cpus is not None else None,
            "shares_client_cpus": self.shares_client_cpus,
            "server_us_per_msg": self.server_us_per_msg,
            "server_us_per_msg_runs": [s.server_us_per_msg for s in self.samples],
            **self.extra,
        }


def paired_ratios(a: Cell, b: Cell, figure: str = "msg_per_s") -> list[float]:
    """``figure`` of ``a`` over ``b``, run by run (runs i of both were taken back to back)."""
    n = min(len(a.samples), len(b.samples))
    out = []
    for x, y in zip(a.samples[:n], b.samples[:n], strict=True):
        num, den = getattr(x, figure), getattr(y, figure)
        if num is not None and den:
            out.append(num / den)
    return out


def _progress(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


@dataclass
class Runner:
    """Measures cells on a core plan."""

    plan: CorePlan
    certs: Certs
    duration: float
    warmup: float
    repeat: int
    progress: Callable[[str], None] = _progress
    problems: list[str] = field(default_factory=list)  # errors seen in cells

    def server_cpus(self, spec: ServerSpec) -> tuple[int, ...]:
        """The CPUs ``spec`` runs on: the pool's first ``cores`` (see ServerSpec.spans)."""
        n = spec.cores if spec.spans else min(spec.cores, len(self.plan.server))
        return self.plan.server_cpus(n)

    def sample(
        self,
        url: str,
        conns: int,
        size: int,
        cpu_of: Callable[[], float] | None,
        on_window: Callable[[str], None] | None = None,
    ) -> Sample:
        """One run: the load generator on the client CPUs, the server's CPU over the window."""
        pins = self.plan.client_pins(conns)
        client = sorted(set(pins))
        marks: dict[str, tuple[float, float, dict[int, tuple[int, int]]]] = {}

        def window(what: str) -> None:
            marks[what] = (time.monotonic(), cpu_of() if cpu_of else 0.0, cpu_ticks(client))
            if on_window is not None:
                on_window(what)

        r = loadgen.run(
            url,
            connections=conns,
            size=size,
            duration=self.duration,
            warmup=self.warmup,
            threads=len(pins),
            cpu=pins,
            on_window=window,
            connect_timeout=30.0,
        )
        server_cpu = per_msg = None
        busy = None
        if "start" in marks and "end" in marks:
            (t0, c0, k0), (t1, c1, k1) = marks["start"], marks["end"]
            busy = _busy_fraction(k0, k1)
            if cpu_of is not None and t1 > t0:
                server_cpu = (c1 - c0) / (t1 - t0)
                per_msg = (c1 - c0) / r.messages * 1e6 if r.messages else None
        threads = r.thread_cpu or (r.client_cpu,)
        saturation = max(max(threads), busy or 0.0)
        return Sample(
            msg_per_s=r.msg_per_s,
            mb_per_s=r.mb_per_s,
            lat_avg_us=r.lat_avg_us,
            lat_p50_us=r.lat_p50_us,
            lat_p99_us=r.lat_p99_us,
            messages=r.messages,
            errors=r.errors,
            connect_failures=r.connect_failures,
            connections=r.connections,
            client_cpu=r.client_cpu,
            client_saturation=saturation,
            server_cpu=server_cpu,
            server_us_per_msg=per_msg,
            first_error=r.first_error,
        )

    def _checked(self, what: str, url: str, s: Sample) -> Sample:
        if s.connections == 0:
            raise BenchError(
                f"{what}: no connection to {url} could be set up: "
                f"{s.first_error or 'no reason given'}"
            )
        if s.errors or s.connect_failures:
            self.problems.append(
                f"{what}: {s.errors} connections lost, {s.connect_failures} "
                f"never set up; first: {s.first_error}"
            )
        return s

    def _cell(
        self,
        key: CellKey,
        label: str,
        tls: bool,
        running: Running | None,
        kind: str,
        extra: dict[str, Any] | None = None,
    ) -> Cell:
        _, conns, _ = key
        pins = self.plan.client_pins(conns)
        cpus = running.cpus if running is not None else None
        shares = cpus is not None and bool(set(cpus) & set(pins))
        return Cell(
            key[0],
            label,
            tls,
            conns,
            key[2],
            [],
            len(pins),
            len(set(pins)),
            cpus,
            shares,
            kind,
            dict(extra or {}),
        )

    def run_group(
        self,
        specs: Sequence[ServerSpec],
        cells: Sequence[CellKey],
        kind: str = "wsstls",
        extra: Callable[[ServerSpec], dict[str, Any]] | None = None,
    ) -> tuple[dict[CellKey, Cell], list[str]]:
        """Start ``specs`` on their CPUs, measure ``cells`` alternating, stop them.

        Returns the cells and the servers' failures (exit code, stderr)."""
        by_name = {s.name: s for s in specs}
        running: dict[str, Running] = {}
        failures: list[str] = []
        try:
            for spec in specs:
                running[spec.name] = spec.start(self.certs, self.server_cpus(spec))
            out = {
                key: self._cell(
                    key,
                    by_name[key[0]].label,
                    by_name[key[0]].tls,
                    running[key[0]],
                    kind,
                    extra(by_name[key[0]]) if extra else None,
                )
                for key in cells
            }
            total, done, t0 = len(cells) * self.repeat, 0, time.monotonic()
            for rep in range(self.repeat):
                for key in cells:
                    name, conns, size = key
                    srv = running[name]
                    what = f"{name} {size} B x {conns}"
                    s = self._checked(what, srv.url, self.sample(srv.url, conns, size, srv.cpu))
                    out[key].samples.append(s)
                    done += 1
                    cpu = f"{s.server_us_per_msg:.1f} us/msg" if s.server_us_per_msg else "-"
                    self.progress(
                        f"[{done:3d}/{total}] {time.monotonic() - t0:5.0f}s  {name:16s} "
                        f"{size:6d} B x {conns:4d}: {s.msg_per_s:10,.0f} msg/s  p50 "
                        f"{s.lat_p50_us:7.0f} us  server {cpu}  client {s.client_cpu:.2f} "
                        f"(sat. {s.client_saturation:.2f})  (run {rep + 1}/{self.repeat})"
                    )
        except BenchError as exc:  # say what the servers said
            for r in running.values():
                failures += r.stop()
            running.clear()
            if failures:
                raise BenchError("\n".join([str(exc), "servers failed:", *failures])) from None
            raise
        finally:
            for r in running.values():
                failures += r.stop()
        return out, failures

    def run_external(self, url: str, cells: Sequence[CellKey]) -> dict[CellKey, Cell]:
        """``--url``: cells against a server started elsewhere (no server CPU)."""
        out: dict[CellKey, Cell] = {}
        for key in cells:
            cell = self._cell(key, url, url.startswith("wss"), None, "url")
            for _ in range(self.repeat):
                what = f"{key[2]} B x {key[1]}"
                cell.samples.append(
                    self._checked(what, url, self.sample(url, key[1], key[2], None))
                )
            out[key] = cell
            self.progress(
                f"{key[2]:6d} B x {key[1]:4d}: {cell.msg_per_s:10,.0f} msg/s  "
                f"p50 {cell.lat_p50_us:.0f} us  client sat. "
                f"{cell.client_saturation:.2f}"
            )
        return out

    def count_copies(
        self, design: Design, size: int, conns: int = 20, duration: float = 1.0, warmup: float = 0.3
    ) -> dict[str, float] | None:
        """Copies and system calls per echoed message in the server (shim preloaded)."""
        env = preload_env()
        if env is None or not design.single:
            return None
        cpus = self.server_cpus(design)
        with tempfile.TemporaryDirectory() as tmp:
            stats = os.path.join(tmp, "stats.json")
            srv = ServerProcess(
                design.name, design.command(self.certs, cpus, stats, True), env, cpus
            )
            sig = {"start": signal.SIGUSR1, "end": signal.SIGUSR2}
            saved = self.duration, self.warmup
            try:
                self.duration, self.warmup = duration, warmup
                run = self.sample(
                    srv.url, conns, size, None, on_window=lambda what: srv.signal(sig[what])
                )
            finally:
                self.duration, self.warmup = saved
                code, err = srv.stop()
            if code != 0:
                raise BenchError(f"{design.name} (counting copies) exited {code}: {err}")
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
