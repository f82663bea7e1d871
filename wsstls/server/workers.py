"""The server's process(es): one loop, or N supervised loops sharing the port (``--workers``).

With ``workers > 1`` the parent forks N workers, each with its own SO_REUSEPORT
socket on one port (the parent holds the port, bound but not listening, for
as long as it runs), and supervises them:

- each worker's end is logged on stderr with its status (``exited with status
  1``, ``was killed by SIGKILL``);
- a worker that ends while the server is not stopping is started again, at
  once; one that ends more than ``RESTARTS`` times within ``RESTART_WINDOW``
  seconds stops the whole server (exit status ``EXIT_WORKERS_DIED``);
- a worker that fails before it first listens stops the server (``EXIT_FAILED``);
- SIGINT or SIGTERM to the parent is passed on to every worker as SIGTERM;
  one that has not ended ``STOP_TIMEOUT`` seconds later is killed.
"""

from __future__ import annotations

import collections
import contextlib
import ctypes
import json
import os
import select
import signal
import socket
import sys
import time
import traceback
from collections.abc import Callable
from dataclasses import asdict, dataclass, field, replace
from typing import Any

from ..ring import RingBuffer
from ..tls import TLSContext, TLSError
from .config import ServerConfig, ServerStats, url
from .loop import Server, listen, server_context

__all__ = [
    "EXIT_FAILED",
    "EXIT_OK",
    "EXIT_USAGE",
    "EXIT_WORKERS_DIED",
    "RESTARTS",
    "RESTART_WINDOW",
    "STOP_TIMEOUT",
    "serve",
]

EXIT_OK = 0  # stopped by SIGINT/SIGTERM, every process ended cleanly
EXIT_FAILED = 1  # could not start, or a worker failed while stopping
EXIT_USAGE = 2  # a bad command line (nothing was started)
EXIT_WORKERS_DIED = 3  # a worker kept dying: the server stopped

RESTARTS = 5  # restarts of one worker allowed within RESTART_WINDOW seconds
RESTART_WINDOW = 60.0
STOP_TIMEOUT = 30.0  # seconds a worker has to end after SIGTERM before SIGKILL

#: Called with each process's Server before it serves (the measuring harness
#: hooks its copy-counting window in here).
OnServer = Callable[[Server], None]


def _log(message: str) -> None:
    print(f"wsstls serve: {message}", file=sys.stderr, flush=True)


def _raise_nofile() -> None:
    try:
        import resource

        soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
        if soft < hard:
            resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    except (ImportError, ValueError, OSError):
        pass


def _pin(cpus: tuple[int, ...], index: int) -> None:
    if cpus:
        os.sched_setaffinity(0, {cpus[index % len(cpus)]})


def _where(config: ServerConfig) -> str:
    return url(config.tls, config.host, config.port).split("//", 1)[1].rstrip("/")


def _listen(config: ServerConfig, reuse_port: bool = False) -> socket.socket:
    try:
        return listen(config, reuse_port)
    except OSError as exc:
        raise OSError(exc.errno, f"cannot listen on {_where(config)}: {exc.strerror}") from None


def _check_resources(config: ServerConfig) -> None:
    """Make one connection's plaintext ring now: a size the system refuses fails here,
    not on every connection once the server listens."""
    try:
        RingBuffer(config.ring_capacity, mirrored=True).close()
    except (OSError, MemoryError, ValueError) as exc:
        raise OSError(
            getattr(exc, "errno", None) or 0,
            f"cannot make a connection's ring of {config.ring_capacity} bytes "
            f"(--ring-capacity): {exc}",
        ) from None


# ------------------------------------------------------------ the process(es)


def serve(
    config: ServerConfig,
    ready: Callable[[str], None] | None = None,
    stats_file: str | None = None,
    on_server: OnServer | None = None,
    context: TLSContext | None = None,
) -> int:
    """Run the server (and its worker processes) until SIGINT or SIGTERM.

    ``ready(url)`` is called once every process listens; ``on_server(server)`` in each
    process before it serves.  ``context``: the TLS context (default: made from the
    config).  Returns the exit code (``EXIT_*``).  Raises ValueError for a bad config,
    OSError or TLSError when the server cannot start.
    """
    config.check()
    config.check_cpus()
    _raise_nofile()
    _check_resources(config)
    if config.tls and context is None:
        context = server_context(config)
    if not config.tls:
        context = None
    if config.workers == 1:
        stats = _serve_one(config, context, _listen(config), 0, ready, on_server)
        if stats_file is not None and not _write_stats(stats_file, stats):
            return EXIT_FAILED
        return EXIT_OK
    return _Supervisor(config, context, on_server).run(ready, stats_file)


def _serve_one(
    config: ServerConfig,
    context: TLSContext | None,
    sock: socket.socket,
    index: int,
    ready: Callable[[str], None] | None,
    on_server: OnServer | None,
) -> ServerStats:
    _pin(config.cpus, index)
    server = Server(config, context, sock)
    old = {s: signal.signal(s, lambda *_: server.stop()) for s in (signal.SIGINT, signal.SIGTERM)}
    if on_server is not None:
        on_server(server)
    try:
        return server.serve_forever(ready)
    finally:
        for s, h in old.items():
            signal.signal(s, h)


def _write_stats(stats_file: str, stats: ServerStats) -> bool:
    """Write the counters; if that fails now, print them on stderr rather than lose them."""
    doc = json.dumps(asdict(stats))
    try:
        with open(stats_file, "w") as f:
            f.write(doc)
        return True
    except OSError as exc:
        _log(f"cannot write --stats {stats_file}: {exc.strerror}; the stats: {doc}")
        return False


def _merge_stats(parts: list[dict[str, Any]]) -> ServerStats:
    total = ServerStats()
    for part in parts:
        for k in ("connections", "messages_fast", "messages_slow", "bytes_echoed", "cpu_s"):
            setattr(total, k, getattr(total, k) + part[k])
        for k, v in part["ledger"].items():
            total.ledger[k] = total.ledger.get(k, 0) + v
        for k, v in part.get("loop", {}).items():
            total.loop[k] = total.loop.get(k, 0) + v
        for k, v in part.get("records", {}).items():
            total.records[k] = total.records.get(k, 0) + v
    return total


def _describe(status: int) -> str:
    if os.WIFSIGNALED(status):
        sig = os.WTERMSIG(status)
        try:
            name = signal.Signals(sig).name
        except ValueError:
            name = f"signal {sig}"
        return f"was killed by {name}" + (" (core dumped)" if os.WCOREDUMP(status) else "")
    return f"exited with status {os.waitstatus_to_exitcode(status)}"


def _die_with_parent() -> None:
    """SIGTERM this worker if the supervisor itself dies (prctl PR_SET_PDEATHSIG)."""
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(1, signal.SIGTERM, 0, 0, 0)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        pass


# ---------------------------------------------------------------- supervision


@dataclass
class _Worker:
    index: int
    pid: int
    pipe: int  # read end: b"R" once it listens, then its stats as JSON when it ends
    ready: bool = False
    data: bytearray = field(default_factory=bytearray)


class _Supervisor:
    """Fork the workers, restart the ones that die (bounded), stop them all on a signal."""

    def __init__(
        self, config: ServerConfig, context: TLSContext | None, on_server: OnServer | None
    ) -> None:
        self.context = context
        self.on_server = on_server
        # The port, held (bound, not listening: no connection waits on it) while the
        # parent runs, so a restarted worker gets it back.
        family = socket.AF_INET6 if ":" in config.host else socket.AF_INET
        self.holder = socket.socket(family, socket.SOCK_STREAM)
        try:
            self.holder.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            self.holder.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
            self.holder.bind((config.host, config.port))
        except OSError as exc:
            self.holder.close()
            raise OSError(exc.errno, f"cannot listen on {_where(config)}: {exc.strerror}") from None
        self.config = replace(config, port=self.holder.getsockname()[1])
        self.workers: dict[int, _Worker] = {}  # by pid
        self.deaths: dict[int, collections.deque[float]] = collections.defaultdict(
            collections.deque
        )
        self.stats: list[dict[str, Any]] = []
        self.poller = select.poll()
        self.stop_requested = False
        self.announced = False  # ready(url) called: every worker listened once
        self.stopping_since: float | None = None
        self.code = EXIT_OK
        self.wake_r, self.wake_w = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)

    # -------------------------------------------------------------- workers

    def _start(self, index: int) -> _Worker:
        r, w = os.pipe2(os.O_CLOEXEC)
        pid = os.fork()
        if pid == 0:  # the worker: never returns
            self._worker(index, r, w)
        os.close(w)
        worker = _Worker(index, pid, r)
        self.workers[pid] = worker
        self.poller.register(r, select.POLLIN)
        if self.stopping_since is not None:  # a signal came while it was forked
            os.kill(pid, signal.SIGTERM)
        return worker

    def _worker(self, index: int, r: int, w: int) -> None:
        code = EXIT_FAILED
        try:
            signal.set_wakeup_fd(-1)
            for s in (signal.SIGINT, signal.SIGTERM, signal.SIGCHLD):
                signal.signal(s, signal.SIG_DFL)
            _die_with_parent()
            for fd in (r, self.wake_r, self.wake_w, *(x.pipe for x in self.workers.values())):
                os.close(fd)
            self.holder.close()
            sock = _listen(self.config, reuse_port=True)

            def listening(_url: str) -> None:
                with contextlib.suppress(BrokenPipeError):  # (the supervisor is gone)
                    os.write(w, b"R")

            stats = _serve_one(self.config, self.context, sock, index, listening, self.on_server)
            doc = memoryview(json.dumps(asdict(stats)).encode())
            with contextlib.suppress(BrokenPipeError):  # the supervisor is gone: no one to tell
                while doc:
                    doc = doc[os.write(w, doc) :]
            code = EXIT_OK
        except (OSError, TLSError) as exc:
            _log(f"worker {index}: {exc}")
        except BaseException:
            traceback.print_exc()
        finally:
            sys.stderr.flush()
            os._exit(code)

    def _read(self, worker: _Worker, until_eof: bool) -> None:
        while True:
            try:
                chunk = os.read(worker.pipe, 65536)
            except BlockingIOError:
                return
            worker.data += chunk
            if not worker.ready and worker.data[:1] == b"R":
                worker.ready = True
            if not chunk or not until_eof:
                return

    def _reap(self) -> None:
        for pid, worker in list(self.workers.items()):
            try:
                done, status = os.waitpid(pid, os.WNOHANG)
            except ChildProcessError:  # reaped by someone else: its status is lost
                done, status = pid, 0
            if done:
                del self.workers[pid]
                self.poller.unregister(worker.pipe)
                self._read(worker, until_eof=True)  # it has ended: EOF comes
                os.close(worker.pipe)
                self._ended(worker, status)

    def _ended(self, worker: _Worker, status: int) -> None:
        what = f"worker {worker.index} (pid {worker.pid}) {_describe(status)}"
        if worker.data[1:]:
            try:
                self.stats.append(json.loads(bytes(worker.data[1:])))
            except ValueError:
                pass
        if self.stopping_since is not None:
            clean = status == 0 or (
                os.WIFSIGNALED(status) and os.WTERMSIG(status) == signal.SIGTERM
            )
            if not clean:
                _log(f"{what} while stopping")
                self.code = self.code or EXIT_FAILED
            return
        if not self.announced:
            _log(f"{what} before listening: stopping the server")
            self.code = EXIT_FAILED
            self._stop()
            return
        now = time.monotonic()
        deaths = self.deaths[worker.index]
        deaths.append(now)
        while deaths and deaths[0] < now - RESTART_WINDOW:
            deaths.popleft()
        if len(deaths) > RESTARTS:
            _log(f"{what}, its {len(deaths)}th end within {RESTART_WINDOW:g} s: "
                 "stopping the server")  # fmt: skip
            self.code = EXIT_WORKERS_DIED
            self._stop()
            return
        new = self._start(worker.index)
        _log(f"{what}: restarted as pid {new.pid}")

    # ------------------------------------------------------------- stopping

    def _stop(self) -> None:
        if self.stopping_since is None:
            self.stopping_since = time.monotonic()
            for pid in self.workers:
                try:
                    os.kill(pid, signal.SIGTERM)
                except ProcessLookupError:
                    pass

    def _on_signal(self, signum: int, frame: object) -> None:
        if signum != signal.SIGCHLD:
            self.stop_requested = True

    # ----------------------------------------------------------------- run

    def run(self, ready: Callable[[str], None] | None, stats_file: str | None) -> int:
        handled = (signal.SIGINT, signal.SIGTERM, signal.SIGCHLD)
        old = {s: signal.signal(s, self._on_signal) for s in handled}
        old_wakeup = signal.set_wakeup_fd(self.wake_w, warn_on_full_buffer=False)
        self.poller.register(self.wake_r, select.POLLIN)
        try:
            for i in range(self.config.workers):
                self._start(i)
                if self.stop_requested:
                    break
            while self.workers:
                self._turn(ready)
        finally:
            signal.set_wakeup_fd(old_wakeup)
            for s, h in old.items():
                signal.signal(s, h)
            for worker in self.workers.values():  # only after an exception
                os.kill(worker.pid, signal.SIGKILL)
                os.waitpid(worker.pid, 0)
                os.close(worker.pipe)
            os.close(self.wake_r)
            os.close(self.wake_w)
            self.holder.close()
        if stats_file is not None and not _write_stats(stats_file, _merge_stats(self.stats)):
            self.code = self.code or EXIT_FAILED
        return self.code

    def _turn(self, ready: Callable[[str], None] | None) -> None:
        """One wait for a worker's message, a worker's end, a signal or a deadline."""
        for fd, _ in self.poller.poll(1000):
            if fd == self.wake_r:
                try:
                    while os.read(self.wake_r, 512):
                        pass
                except BlockingIOError:
                    pass
            else:
                for worker in self.workers.values():
                    if worker.pipe == fd:
                        self._read(worker, until_eof=False)
        if self.stop_requested:
            self._stop()
        self._reap()
        if (
            not self.announced
            and self.stopping_since is None
            and len(self.workers) == self.config.workers
            and all(w.ready for w in self.workers.values())
        ):
            self.announced = True
            if ready is not None:
                ready(url(self.config.tls, self.config.host, self.config.port))
        if self.stopping_since is not None and time.monotonic() > (
            self.stopping_since + STOP_TIMEOUT
        ):
            for pid, worker in self.workers.items():
                _log(f"worker {worker.index} (pid {pid}) did not end within "
                     f"{STOP_TIMEOUT:g} s of SIGTERM: killing it")  # fmt: skip
                os.kill(pid, signal.SIGKILL)
            self.code = self.code or EXIT_FAILED
            self.stopping_since = time.monotonic()  # (once per STOP_TIMEOUT)
