"""The echo hot path's cost with and without the idle pool, in instructions (callgrind).

Wall-clock rates on a shared 2-core machine move by tens of percent from run to run;
instruction counts do not.  This runs ``python -m wsstls serve`` under
``valgrind --tool=callgrind --toggle-collect=wsloop_poll`` (only what the C loop does is
counted: epoll, the hot path, OpenSSL, the timer scans) with ``--park-after 0`` (nothing
is ever parked) and with the default (``--park-after 1``), drives it with the load
generator (64 B, ``--conns`` connections, ``--duration`` seconds), and prints the
instructions per echoed message.  Needs valgrind.

    python bench/hotpath_ir.py [--conns 50] [--duration 5]
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from wsstls.cliargs import Parser, integer, number  # noqa: E402
from wsstls.loadgen import run as loadgen  # noqa: E402


def measure(extra: list[str], conns: int, duration: float, tmp: Path) -> tuple[int, int]:
    out, stats = tmp / "callgrind.out", tmp / "stats.json"
    cmd = ["valgrind", "--tool=callgrind", "--toggle-collect=wsloop_poll",
           f"--callgrind-out-file={out}", sys.executable, "-m", "wsstls", "serve",
           "--port", "0", "--stats", str(stats), *extra]  # fmt: skip
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True,
                            cwd=ROOT)  # fmt: skip
    try:
        assert proc.stdout is not None
        line = proc.stdout.readline()
        if not line.startswith("listening on "):
            raise SystemExit(f"the server did not start under valgrind: {line!r}")
        r = loadgen(line.split()[-1], connections=conns, size=64, duration=duration,
                    warmup=1.0, connect_timeout=120.0)  # fmt: skip
        if r.errors or r.connect_failures:
            raise SystemExit(f"the load generator failed: {r.first_error}")
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(300)
    messages = json.loads(stats.read_text())["messages_fast"]
    text = out.read_text(errors="replace")
    m = re.search(r"^(?:summary|totals):\s*(\d+)", text, re.M)
    if m is None:
        raise SystemExit("no instruction total in the callgrind output")
    return int(m.group(1)), messages


def main(argv: list[str] | None = None) -> int:
    p = Parser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--conns", type=integer(1, 1000), default=50)
    p.add_argument("--duration", type=number(0, 600, lo_open=True, unit="seconds"), default=5.0)
    a = p.parse_args(argv)
    if shutil.which("valgrind") is None:
        print("valgrind is not installed: nothing measured")
        return 1
    print(f"instructions in wsloop_poll per echoed 64 B message ({a.conns} connections, wss)")
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for name, extra in (("no idle pool (--park-after 0)", ["--park-after", "0"]),
                            ("idle pool (default)", [])):  # fmt: skip
            t0 = time.monotonic()
            ir, messages = measure(extra, a.conns, a.duration, Path(tmp))
            rows.append((name, ir / messages))
            print(f"  {name:32} {ir / messages:9,.0f} Ir/msg  ({messages:,} messages, "
                  f"{time.monotonic() - t0:.0f} s)")  # fmt: skip
    print(f"  ratio {rows[1][1] / rows[0][1]:.3f}")
    os.environ.pop("_", None)
    return 0


if __name__ == "__main__":
    sys.exit(main())
