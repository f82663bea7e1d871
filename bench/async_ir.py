"""Server instructions per small-message echo for each TLS design (callgrind).

The issue's target "async at 64 B within 5 % of inline" is about CPU the loop spends
per message; on a shared 2-core machine only instruction counts compare reliably.
This runs the server half of an in-memory echo (wsstls ``TLSConnection``, ``ring``
transport, sans-IO, OpenSSL's records) against a stdlib ``ssl`` client (so that only
the server's calls are counted: ``--toggle-collect`` on tls_read, tls_write, tls_feed
and tls_take), under ``valgrind --tool=callgrind``, for 1,000 and 3,000 messages, and
prints (I(3000) - I(1000)) / 2000 per design and the ratio against inline.

    python bench/async_ir.py [--size 64] [--tls 1.2|1.3] [--designs inline,async,...]
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import ssl
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from wsstls.cliargs import Parser, choice_list  # noqa: E402
from wsstls.cliargs import size as size_arg  # noqa: E402

DESIGNS = ("inline", "async", "pipelined", "pipelined+async")
COUNTED = ("tls_read", "tls_write", "tls_feed", "tls_take")


def echo(design: str, size: int, tls: str, count: int) -> None:
    """The measured process: ``count`` echoes of ``size`` bytes (server: wsstls)."""
    from wsstls.measure.cryptocost import _PEM
    from wsstls.tls import TLSContext, TLSVersion

    pem = _PEM()
    # OpenSSL's records for every design (ASYNC and pipelining run on them; TLS 1.3's
    # default direct record layer is another comparison: bench/records_bench.py).
    kw: dict[str, object] = {"cert_pem": pem.cert_pem, "key_pem": pem.key_pem,
                             "records": "openssl"}  # fmt: skip
    if tls == "1.2":
        kw["max_version"] = TLSVersion.TLSv1_2
    if "pipelined" in design:
        kw.update(pipelines=4, split_send_fragment=16384)
    if "async" in design:
        kw.update(crypto="async", offload_threshold=16384)
    server = TLSContext(True, **kw).connection(transport="ring", ring_capacity=1 << 20)
    cctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    cctx.check_hostname, cctx.verify_mode = False, ssl.CERT_NONE
    cin, cout = ssl.MemoryBIO(), ssl.MemoryBIO()
    client = cctx.wrap_bio(cin, cout)
    for _ in range(100):
        try:
            client.do_handshake()
            done = True
        except ssl.SSLWantReadError:
            done = False
        server.feed(cout.read())
        server.do_handshake()
        cin.write(server.take())
        if done and server.version:
            break
    msg = os.urandom(size)
    buf = bytearray(max(size, 65536))
    for _ in range(count):
        client.write(msg)
        server.feed(cout.read())
        got = 0
        while got < size:
            n = server.readinto(buf)
            if n is None:
                raise RuntimeError(f"{design}: the server read stalled")
            got += n
        sent = 0
        while sent < size:
            sent += server.write(msg[sent:])
            cin.write(server.take())
        left = size
        while left:
            left -= len(client.read(left))


def instructions(design: str, size: int, tls: str, count: int, tmp: Path) -> int:
    out = tmp / f"cg.{count}"
    toggles = [f"--toggle-collect={f}" for f in COUNTED]
    cmd = ["valgrind", "--tool=callgrind", *toggles, f"--callgrind-out-file={out}",
           sys.executable, __file__, "--child", design, str(size), tls, str(count)]  # fmt: skip
    subprocess.run(cmd, check=True, cwd=ROOT, capture_output=True)
    m = re.search(r"^(?:summary|totals):\s*(\d+)", out.read_text(errors="replace"), re.M)
    if m is None:
        raise SystemExit("no instruction total in the callgrind output")
    return int(m.group(1))


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["--child"]:
        design, size, tls, count = argv[1:5]
        echo(design, int(size), tls, int(count))
        return 0
    p = Parser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--size", type=size_arg(1, 1 << 20), default="64", help="message bytes (64)")
    p.add_argument("--tls", type=choice_list(("1.2", "1.3")), default="1.2", help="1.2 or 1.3")
    p.add_argument("--designs", type=choice_list(DESIGNS), default=",".join(DESIGNS),
                   help=f"comma-separated, of {', '.join(DESIGNS)}")  # fmt: skip
    a = p.parse_args(argv)
    designs, tls = a.designs, a.tls[-1]
    if shutil.which("valgrind") is None:
        print("valgrind is not installed: nothing measured")
        return 1
    print(f"server instructions per {a.size} B echo (open + seal), TLS {tls}, in process, "
          "(I(3000) - I(1000)) / 2000")  # fmt: skip
    per: dict[str, float] = {}
    with tempfile.TemporaryDirectory() as tmp:
        for design in designs:
            lo, hi = (instructions(design, a.size, tls, n, Path(tmp)) for n in (1000, 3000))
            per[design] = (hi - lo) / 2000
            ratio = f"{per['inline'] / per[design]:.3f}x inline's rate" if "inline" in per else ""
            print(f"  {design:16} {per[design]:9,.0f} Ir/echo  {ratio}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
