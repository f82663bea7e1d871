"""The servers the bench measures, and how each is started on the CPUs the core plan gives it.

Every server is a :class:`ServerSpec`: a name, a label, ws or wss, how many cores it wants,
and ``start(certs, cpus)``, which returns a :class:`Running` group of processes once the
server printed ``listening on URL``.  The CPU time of a group is the sum of its processes,
their threads and their live children, read from /proc.

- :class:`Design`: ``python -m wsstls serve`` with a design's options.  ``--modes`` takes
  the names in :data:`MODES`; a new design is one :func:`register_mode` call.
- :class:`PeerSpec`: a peer script of ``wsstls/measure/peers`` (picows, websockets, ...),
  one process per core for ``processes`` > 1 (``--reuse-port``, each pinned to its CPU).
- :class:`GorillaSpec`: the Go gorilla/websocket echo server, built into a cache when
  ``go`` and Debian's golang-github-gorilla-websocket-dev are installed; GOMAXPROCS = cores.
"""

from __future__ import annotations

import hashlib
import os
import selectors
import shutil
import signal
import subprocess
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Protocol

__all__ = [
    "MODES",
    "BenchError",
    "Certs",
    "Design",
    "DesignOptions",
    "GorillaSpec",
    "PeerSpec",
    "Running",
    "ServerProcess",
    "ServerSpec",
    "design",
    "gorilla_binary",
    "peers_dir",
    "process_cpu_seconds",
    "register_mode",
]

_HZ = os.sysconf("SC_CLK_TCK")
READY_S = 30.0


class BenchError(RuntimeError):
    """The run cannot go on (a server did not start, nothing could connect)."""


def peers_dir() -> Path:
    """The peer echo servers' sources (shipped with the package: wsstls/measure/peers)."""
    return Path(__file__).resolve().parent / "peers"


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


@dataclass(frozen=True)
class Certs:
    """The certificate and key files every TLS server of a run uses."""

    cert: str
    key: str


class ServerProcess:
    """One server process, started from a command line that prints ``listening on URL``."""

    def __init__(
        self,
        name: str,
        cmd: list[str],
        env: dict[str, str] | None = None,
        cpus: Sequence[int] | None = None,
    ) -> None:
        self.name = name
        affinity = set(cpus) if cpus else None

        def pin() -> None:  # in the child, before exec: all its threads inherit the set
            if affinity:
                os.sched_setaffinity(0, affinity)

        self.proc = subprocess.Popen(
            cmd,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env=env,
            preexec_fn=pin if affinity else None,  # no load-generator thread runs meanwhile
        )
        line = self._ready_line(READY_S)
        if not line.startswith("listening on "):
            code, err = self.stop()
            tail = err.strip()[-800:]
            raise BenchError(f"{name}: did not start ({line!r}, exit {code}): {tail}")
        self.url = line.split()[-1]

    def _ready_line(self, timeout: float) -> str:
        with selectors.DefaultSelector() as sel:
            assert self.proc.stdout is not None
            sel.register(self.proc.stdout, selectors.EVENT_READ)
            if not sel.select(timeout):
                return "(timeout)"
            return self.proc.stdout.readline().strip()

    def cpu(self) -> float:
        """CPU seconds: the process, its threads, its live children."""
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
        """SIGTERM, wait (then SIGKILL): (exit code, stderr)."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        try:
            _, err = self.proc.communicate(timeout=20)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            _, err = self.proc.communicate()
        return self.proc.returncode, err


@dataclass
class Running:
    """A started server: its processes (one URL), the CPUs it was given."""

    name: str
    processes: list[ServerProcess]
    cpus: tuple[int, ...]

    @property
    def url(self) -> str:
        return self.processes[0].url

    def cpu(self) -> float:
        return sum(p.cpu() for p in self.processes)

    def stop(self) -> list[str]:
        """Stop every process; the failures (exit code not 0, or an internal error)."""
        failures = []
        for p in self.processes:
            code, err = p.stop()
            if code != 0 or "internal error" in err:
                failures.append(f"{p.name}: exit {code}\n{err}")
        return failures


class ServerSpec(Protocol):
    """Anything the bench can start and measure."""

    @property
    def name(self) -> str: ...

    @property
    def label(self) -> str: ...

    @property
    def tls(self) -> bool: ...

    @property
    def cores(self) -> int:
        """The CPUs it asks of the server pool."""
        ...

    @property
    def spans(self) -> bool:
        """Its cores are its size (processes, GOMAXPROCS): past the pool it borrows client
        CPUs.  Otherwise (a loop's offload threads) it gets only what the pool has."""
        ...

    def start(self, certs: Certs, cpus: tuple[int, ...]) -> Running: ...


# ------------------------------------------------------------------- designs


@dataclass(frozen=True)
class Design:
    """A wsstls server configuration under test (``python -m wsstls serve`` options)."""

    name: str
    label: str
    args: tuple[str, ...]
    tls: bool = True
    mode: str = "inline"
    transport: str | None = "ring"
    workers: int = 1  # processes sharing the port
    threads: int = 0  # offload threads: each wants a CPU beside the loop's

    @property
    def single(self) -> bool:
        """One process (its copies can be counted)."""
        return self.workers == 1

    @property
    def cores(self) -> int:
        return self.workers if self.workers > 1 else 1 + self.threads

    @property
    def spans(self) -> bool:
        return self.workers > 1

    def command(
        self, certs: Certs, cpus: Sequence[int], stats: str | None = None, counted: bool = False
    ) -> list[str]:
        """``python -m wsstls serve`` (``counted``: with the copy-counting window)."""
        entry = ["wsstls.measure.counted"] if counted else ["wsstls", "serve"]
        cmd = [sys.executable, "-m", *entry, "--port", "0", *self.args]
        if self.workers > 1 and cpus:  # worker i on cpus[i]; one loop: the affinity set
            cmd += ["--cpus", ",".join(map(str, cpus))]
        if self.tls:
            cmd += ["--cert", certs.cert, "--key", certs.key]
        if stats is not None:
            cmd += ["--stats", stats]
        return cmd

    def start(self, certs: Certs, cpus: tuple[int, ...]) -> Running:
        proc = ServerProcess(self.name, self.command(certs, cpus), cpus=cpus)
        return Running(self.name, [proc], cpus)


@dataclass(frozen=True)
class DesignOptions:
    """What the bench's command line says about designs."""

    threads: int = 2
    workers: int = 2
    transport: str = "ring"


#: ``--modes`` names -> their Design.  Register new designs with :func:`register_mode`.
MODES: dict[str, Callable[[DesignOptions], Design]] = {}


def register_mode(name: str, make: Callable[[DesignOptions], Design]) -> None:
    """Make ``--modes NAME`` measure ``make(options)``."""
    MODES[name] = make


def _tls(o: DesignOptions) -> tuple[str, ...]:
    return ("--tls", "--transport", o.transport)


def _inline(o: DesignOptions) -> Design:
    suffix = "" if o.transport == "ring" else f"/{o.transport}"
    return Design(
        f"inline{suffix}",
        # serve's default record path: direct over the ring, OpenSSL's over the others
        f"inline TLS ({o.transport}{', direct records' if o.transport == 'ring' else ''})",
        (*_tls(o), "--mode", "inline"),
        transport=o.transport,
    )


def _offloaded(mode: str, label: str) -> Callable[[DesignOptions], Design]:
    def make(o: DesignOptions) -> Design:
        return Design(
            mode,
            label.format(threads=o.threads),
            ("--tls", "--transport", "ring", "--mode", mode, "--threads", str(o.threads)),
            mode=mode,
            threads=o.threads,
        )

    return make


register_mode("inline", _inline)
register_mode("offload", _offloaded("offload", "offload: {threads} threads, dispatch/message"))
register_mode("batched", _offloaded("batched", "batched: {threads} threads, dispatch/loop"))
register_mode("threshold", _offloaded("threshold", "threshold: offload >= 16 KiB"))


def _openssl(mode: str, label: str) -> Callable[[DesignOptions], Design]:
    """OpenSSL's own designs (issue 10): ASYNC jobs, pipelining (TLS 1.2), both."""

    def make(o: DesignOptions) -> Design:
        return Design(
            mode,
            label,
            ("--tls", "--transport", "ring", "--mode", mode, "--offload-threshold", "16384"),
            mode=mode,
            threads=1,  # the crypto pool's worker (one less than 2 CPUs)
        )

    return make


register_mode("async", _openssl("async", "ASYNC jobs: records >= 16 KiB pause"))
register_mode("pipelined", _openssl("pipelined", "pipelined: TLS 1.2, 4 records/call"))
register_mode("pipelined+async", _openssl("pipelined+async", "pipelined + ASYNC: 1 pause/batch"))


def design(name: str, options: DesignOptions | None = None) -> Design:
    """A design by ``--modes`` name, or ``workers`` (``--workers`` loops) or ``ws`` (no TLS)."""
    o = options or DesignOptions()
    if name == "ws":
        return Design("ws", "plain ws:// (no TLS)", ("--no-tls",), tls=False, transport=None)
    if name == "workers":
        return Design(
            f"workers{o.workers}",
            f"inline x {o.workers} processes (SO_REUSEPORT)",
            (*_tls(o), "--workers", str(o.workers)),
            workers=o.workers,
        )
    return MODES[name](o)


def scaled(d: Design, workers: int) -> Design:
    """``d`` with ``--workers N`` (the scaling table's rows)."""
    tag = "wss" if d.tls else "ws"
    return replace(
        d,
        name=f"wsstls-{tag}-x{workers}",
        label=f"wsstls {tag} --workers {workers}",
        args=(*d.args, "--workers", str(workers)),
        workers=workers,
    )


# --------------------------------------------------------------------- peers


@dataclass(frozen=True)
class PeerSpec:
    """A peer echo server script of wsstls/measure/peers, ``processes`` of it on one port."""

    name: str
    label: str
    script: str  # e.g. "picows_echo"
    tls: bool
    processes: int = 1

    @property
    def cores(self) -> int:
        return self.processes

    @property
    def spans(self) -> bool:
        return self.processes > 1

    def _cmd(self, certs: Certs, port: int, cpu: int | None) -> list[str]:
        cmd = [
            sys.executable,
            str(peers_dir() / f"{self.script}.py"),
            "--host",
            "127.0.0.1",
            "--port",
            str(port),
        ]
        if cpu is not None:
            cmd += ["--cpu", str(cpu)]
        if self.processes > 1:
            cmd.append("--reuse-port")
        if self.tls:
            cmd += ["--tls", "--cert", certs.cert, "--key", certs.key]
        return cmd

    def start(self, certs: Certs, cpus: tuple[int, ...]) -> Running:
        procs: list[ServerProcess] = []
        try:
            for i in range(self.processes):
                port = 0 if not procs else int(procs[0].url.rsplit(":", 1)[1].strip("/"))
                cpu = cpus[i % len(cpus)] if cpus else None
                procs.append(ServerProcess(f"{self.name}#{i}", self._cmd(certs, port, cpu)))
        except BaseException:
            for p in procs:
                p.stop()
            raise
        return Running(self.name, procs, cpus)


# -------------------------------------------------------------------- gorilla


GORILLA_IMPORT = "github.com/gorilla/websocket"


def _gopath() -> str | None:
    """A GOPATH that has gorilla/websocket (``$GOPATH``, then Debian's /usr/share/gocode)."""
    for root in (*os.environ.get("GOPATH", "").split(os.pathsep), "/usr/share/gocode"):
        if root and (Path(root) / "src" / GORILLA_IMPORT).is_dir():
            return root
    return None


def _cache_dir() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "wsstls"


def gorilla_binary(progress: Callable[[str], None] | None = None) -> Path | str:
    """The built Go echo server (cached by source and Go version), or why it cannot be built."""
    go = shutil.which("go")
    if go is None:
        return "go is not installed (Debian: golang-go)"
    gopath = _gopath()
    if gopath is None:
        return f"{GORILLA_IMPORT} is not installed (Debian: golang-github-gorilla-websocket-dev)"
    src = peers_dir() / "gorilla_echo.go"
    try:
        version = subprocess.run(
            [go, "version"], capture_output=True, text=True, timeout=60, check=True
        ).stdout
    except (OSError, subprocess.SubprocessError) as exc:
        return f"go version failed: {exc}"
    gorilla = sorted(p.name for p in (Path(gopath) / "src" / GORILLA_IMPORT).glob("*.go"))
    digest = hashlib.sha256(src.read_bytes() + version.encode() + " ".join(gorilla).encode())
    cache = _cache_dir()
    exe = cache / f"gorilla_echo-{digest.hexdigest()[:16]}"
    if exe.is_file() and os.access(exe, os.X_OK):
        return exe
    if progress is not None:
        progress(f"building the Go gorilla/websocket peer into {cache} (once)")
    cache.mkdir(parents=True, exist_ok=True)
    tmp = exe.with_suffix(f".tmp{os.getpid()}")
    env = {
        **os.environ,
        "GO111MODULE": "off",
        "GOPATH": gopath,
        "GOFLAGS": "",
        "GOCACHE": str(cache / "go-build"),
    }
    try:
        r = subprocess.run(
            [go, "build", "-trimpath", "-o", str(tmp), str(src)],
            env=env,
            capture_output=True,
            text=True,
            timeout=600,
            cwd=cache,
        )
    except (OSError, subprocess.SubprocessError) as exc:
        return f"go build failed: {exc}"
    if r.returncode != 0:
        return f"go build failed: {(r.stderr or r.stdout).strip()[-400:]}"
    os.replace(tmp, exe)
    return exe


@dataclass(frozen=True)
class GorillaSpec:
    """The Go gorilla/websocket echo server, GOMAXPROCS = its cores."""

    name: str
    label: str
    tls: bool
    binary: Path
    processors: int = 1
    env: dict[str, str] = field(default_factory=dict)

    @property
    def cores(self) -> int:
        return self.processors

    @property
    def spans(self) -> bool:
        return True

    def start(self, certs: Certs, cpus: tuple[int, ...]) -> Running:
        cmd = [str(self.binary), "--host", "127.0.0.1", "--port", "0"]
        if self.tls:
            cmd += ["--tls", "--cert", certs.cert, "--key", certs.key]
        env = {**os.environ, **self.env, "GOMAXPROCS": str(self.processors)}
        proc = ServerProcess(self.name, cmd, env=env, cpus=cpus)
        return Running(self.name, [proc], cpus)
