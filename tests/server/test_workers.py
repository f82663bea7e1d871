"""``--workers N``: the parent supervises its workers.

A worker that dies is logged with its status and restarted, the server keeps serving,
and SIGTERM still ends everything with exit status 0 (before, the parent exited 247
later, nothing logged, one worker short).  A worker that keeps dying stops the server
with exit status 3; one that cannot start stops it with exit status 1.  Real processes,
real signals; every wait is bounded.
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
import serverutil
from serverutil import ROOT, Design, RunningServer, ServerProcess, WsClient

from wsstls.server.workers import EXIT_FAILED, EXIT_WORKERS_DIED, RESTARTS

pytestmark = pytest.mark.no_sanitizer  # fork + exec of a plain interpreter

server_certs = serverutil.server_certs
WORKERS2 = Design("workers2-plain", tls=False, workers=2)
WAIT_S = 20.0


def _children(pid: int) -> set[int]:
    with open(f"/proc/{pid}/task/{pid}/children") as f:
        return {int(c) for c in f.read().split()}


def _running(pid: int) -> bool:
    """True while ``pid`` exists and is not a zombie (its reaper may be slow)."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except (FileNotFoundError, ProcessLookupError, IndexError):
        return False


def _wait_log(sp: ServerProcess, pattern: str, after: int = 0) -> tuple[re.Match[str], int]:
    """The first match of ``pattern`` in the server's stderr past offset ``after``."""
    deadline = time.monotonic() + WAIT_S
    for _ in range(100_000):
        text = Path(sp.stderr_path).read_text()
        m = re.compile(pattern).search(text, after)
        if m is not None:
            return m, m.end()
        assert time.monotonic() < deadline, f"no {pattern!r} in stderr:\n{text[-2000:]}"
        assert sp.alive() or pattern.endswith("server"), f"the server exited:\n{text[-2000:]}"
        time.sleep(0.02)
    raise AssertionError("unreachable")


def _echoes(server: RunningServer, n: int) -> None:
    for i in range(n):
        with WsClient(server, timeout=WAIT_S) as ws:
            ws.echo(b"after the restart %d" % i)


def test_killed_worker_is_logged_and_restarted(tmp_path: Path) -> None:
    stats = tmp_path / "stats.json"
    sp = ServerProcess(WORKERS2, tmp_path, ["--stats", str(stats)])
    try:
        server = sp.start()
        assert sp.proc is not None
        parent = sp.proc.pid
        before = _children(parent)
        assert len(before) == 2
        victim = min(before)
        os.kill(victim, signal.SIGKILL)
        m, _ = _wait_log(
            sp, rf"worker (\d) \(pid {victim}\) was killed by SIGKILL: restarted as pid (\d+)\n"
        )
        new = int(m.group(2))
        assert _children(parent) == (before - {victim}) | {new}
        _echoes(server, 20)  # both workers serve (the port is shared), the new one included
        assert sp.stop() == 0  # not 247 (the killed worker's -9)
        sp.check()
        lines = Path(sp.stderr_path).read_text().splitlines()
        assert lines == [f"wsstls serve: {m.group(0).strip()}"]  # that line, nothing else
        assert json.loads(stats.read_text())["connections"] >= 20
    finally:
        sp.cleanup()


def test_worker_that_keeps_dying_stops_the_server(tmp_path: Path) -> None:
    sp = ServerProcess(WORKERS2, tmp_path)
    try:
        sp.start()
        assert sp.proc is not None
        parent = sp.proc.pid
        victim, offset = min(_children(parent)), 0
        for _ in range(RESTARTS):
            os.kill(victim, signal.SIGKILL)
            m, offset = _wait_log(sp, rf"\(pid {victim}\) was killed by SIGKILL: "
                                  r"restarted as pid (\d+)\n", offset)  # fmt: skip
            victim = int(m.group(1))
        os.kill(victim, signal.SIGKILL)
        _wait_log(sp, rf"\(pid {victim}\) was killed by SIGKILL, its {RESTARTS + 1}th end "
                  r"within 60 s: stopping the server", offset)  # fmt: skip
        sp.proc.wait(WAIT_S)
        assert sp.proc.returncode == EXIT_WORKERS_DIED
        with pytest.raises(ProcessLookupError):  # the other worker went too
            for _ in range(int(WAIT_S / 0.02)):
                os.killpg(parent, 0)
                time.sleep(0.02)
    finally:
        sp.cleanup()


def test_worker_that_cannot_start_stops_the_server(tmp_path: Path) -> None:
    script = textwrap.dedent("""
        import sys
        from wsstls.server.config import ServerConfig
        from wsstls.server.workers import serve

        def cannot_start(server):
            raise RuntimeError("this worker cannot start")

        config = ServerConfig(tls=False, workers=2)
        sys.exit(serve(config, lambda url: print("listening on", url), None, cannot_start))
    """)
    run = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=60, cwd=ROOT,
        stdin=subprocess.DEVNULL,
    )  # fmt: skip
    assert run.returncode == EXIT_FAILED, run
    assert run.stdout == ""  # never "listening"
    assert re.search(r"worker \d \(pid \d+\) exited with status 1 before listening: "
                     "stopping the server", run.stderr), run.stderr  # fmt: skip
    assert "RuntimeError: this worker cannot start" in run.stderr


def test_workers_end_with_their_supervisor(tmp_path: Path) -> None:
    """SIGKILL to the parent (no chance to pass anything on): the workers get SIGTERM
    (PR_SET_PDEATHSIG), stop cleanly and say nothing."""
    sp = ServerProcess(WORKERS2, tmp_path)
    try:
        sp.start()
        assert sp.proc is not None
        workers = _children(sp.proc.pid)
        os.kill(sp.proc.pid, signal.SIGKILL)
        sp.proc.wait(WAIT_S)
        for _ in range(int(WAIT_S / 0.02)):
            if not any(_running(pid) for pid in workers):
                break
            time.sleep(0.02)
        else:
            raise AssertionError(f"workers {workers} outlived their supervisor")
        assert Path(sp.stderr_path).read_text() == ""
    finally:
        sp.cleanup()
