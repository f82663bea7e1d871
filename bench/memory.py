"""Server memory under attack and after churn: the issue-9 scenarios, before and after.

Each scenario starts its own ``python -m wsstls serve`` (ECDSA certificate made with the
``openssl`` command) and reads its RSS from ``/proc/PID/status``:

``budget``  32 clients each send one 16 MiB message and never read the echo: RSS at the
            start, while they hold, and after they leave; what each client got first (its
            echo, or close code 1013 when the budget was spent).
``holders`` 8 clients send 15 MiB of a 16 MiB frame and go silent: RSS while they hold,
            and after the server closed them (``--idle-timeout``, here 3 s).
``churn``   4 rounds of 2,000 idle connections opened and closed: RSS while held and
            after each round.

With ``--heap`` the budget and churn scenarios run once per heap policy of the server
(``WSSTLS_HEAP``: ``none``, ``tune`` = fixed mmap/trim thresholds, ``trim`` = malloc_trim
after closes and parks, ``both``, the default), to show which of glibc's remedies works.

    python bench/memory.py [--scenarios budget,holders,churn] [--heap] [--json FILE]
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import socket
import ssl
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from benchutil import ecdsa_cert, rss_kb  # noqa: E402

from wsstls.cliargs import Parser, choice_list, output_file  # noqa: E402
from wsstls.measure.idle import IdleClients  # noqa: E402

SCENARIOS = ("budget", "holders", "churn")

MIB = 1 << 20
UPGRADE = (
    b"GET / HTTP/1.1\r\nHost: localhost\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
    b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n"
)


def rss_mib(pid: int) -> float:
    return rss_kb(pid) / 1024


def settle(pid: int, seconds: float = 4.0) -> float:
    """RSS after the server's next park/trim sweeps (it parks after 1 s, trims once a second)."""
    time.sleep(seconds)
    return rss_mib(pid)


class Server:
    def __init__(self, cert: tuple[str, str], extra: list[str], heap: str = "both") -> None:
        cmd = [sys.executable, "-m", "wsstls", "serve", "--port", "0",
               "--cert", cert[0], "--key", cert[1], *extra]  # fmt: skip
        env = {**os.environ, "WSSTLS_HEAP": heap}
        self.proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, text=True, env=env, cwd=ROOT)
        assert self.proc.stdout is not None
        line = self.proc.stdout.readline()
        if not line.startswith("listening on "):
            self.stop()
            raise SystemExit(f"the server did not start: {line!r}")
        self.url = line.split()[-1]
        self.port = int(self.url.rsplit(":", 1)[1].strip("/"))
        self.pid = self.proc.pid
        time.sleep(0.5)

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


def _client(port: int) -> ssl.SSLSocket:
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    raw = socket.socket()
    raw.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)  # it never reads
    raw.connect(("127.0.0.1", port))
    s = ctx.wrap_socket(raw)
    s.sendall(UPGRADE)
    head = b""
    while b"\r\n\r\n" not in head:
        chunk = s.recv(4096)
        if not chunk:
            raise RuntimeError("closed during the upgrade")
        head += chunk
    s.settimeout(60)
    return s


def _header(size: int) -> bytes:  # binary, final, masked with a zero key
    return bytes([0x82, 0xFF]) + size.to_bytes(8, "big") + b"\0\0\0\0"


def _first_frame(s: ssl.SSLSocket) -> str:
    try:
        head = s.recv(4)
    except OSError as exc:
        return type(exc).__name__
    if head[:1] == b"\x88" and len(head) >= 4:
        return f"close {int.from_bytes(head[2:4], 'big')}"
    return "echo" if head[:1] == b"\x82" else f"{head!r}"


def budget(cert: tuple[str, str], heap: str, clients: int = 32, size: int = 16 * MIB) -> dict:
    server = Server(cert, ["--idle-timeout", "0", "--ping-interval", "0"], heap)
    try:
        start = rss_mib(server.pid)
        payload = os.urandom(size)
        socks: list[ssl.SSLSocket] = []

        def send() -> None:
            s = _client(server.port)
            socks.append(s)
            try:
                s.sendall(_header(size) + payload)
            except OSError:
                pass  # refused: the server closed while the message came

        threads = [threading.Thread(target=send) for _ in range(clients)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        held = settle(server.pid, 2.0)
        got: dict[str, int] = {}
        for s in socks:
            kind = _first_frame(s)
            got[kind] = got.get(kind, 0) + 1
            s.close()
        after = settle(server.pid)
        return {"start": start, "held": held, "after": after, "clients": got}
    finally:
        server.stop()


def holders(cert: tuple[str, str], clients: int = 8, idle_timeout: float = 3.0) -> dict:
    server = Server(cert, ["--idle-timeout", str(idle_timeout), "--ping-interval", "1"])
    try:
        start = rss_mib(server.pid)
        socks = [_client(server.port) for _ in range(clients)]
        for s in socks:
            s.sendall(_header(16 * MIB) + os.urandom(15 * MIB))
        held = rss_mib(server.pid)
        after = settle(server.pid, idle_timeout + 3.0)
        closed = sum(1 for s in socks if "close 1001" in _drain(s))
        for s in socks:
            s.close()
        return {"start": start, "held": held, "after": after, "closed_1001": closed}
    finally:
        server.stop()


def _drain(s: ssl.SSLSocket) -> str:
    """The close frame at the end of what the server sent (pings before it)."""
    data = b""
    s.settimeout(5)
    try:
        while True:
            chunk = s.recv(4096)
            if not chunk:
                break
            data += chunk
    except OSError:
        pass
    i = data.find(b"\x88")
    return f"close {int.from_bytes(data[i + 2 : i + 4], 'big')}" if i >= 0 else ""


def churn(cert: tuple[str, str], heap: str, rounds: int = 4, count: int = 2000) -> dict:
    server = Server(cert, [], heap)
    try:
        out: dict = {"start": rss_mib(server.pid), "held": [], "after": []}
        for _ in range(rounds):
            with IdleClients(server.url, count) as held:
                if held.opened != count:
                    raise SystemExit(f"only {held.opened} of {count} opened: {held.errors}")
                out["held"].append(settle(server.pid, 2.0))
            out["after"].append(settle(server.pid, 3.0))
        return out
    finally:
        server.stop()


def main(argv: list[str] | None = None) -> int:
    p = Parser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--scenarios", type=choice_list(SCENARIOS), default=list(SCENARIOS))
    p.add_argument("--heap", action="store_true", help="budget and churn under every heap policy")
    p.add_argument("--json", type=output_file, metavar="FILE")
    a = p.parse_args(argv)
    scenarios = a.scenarios
    policies = ["none", "tune", "trim", "both"] if a.heap else ["both"]
    results: dict = {}
    with tempfile.TemporaryDirectory() as tmp:
        cert = ecdsa_cert(Path(tmp))
        print("server RSS (MiB) from /proc/PID/status; ECDSA P-256 certificate")
        if "budget" in scenarios:
            print("\nbudget: 32 clients x one 16 MiB message, never reading (budget 256 MiB)")
            print(f"  {'heap':6} {'start':>7} {'held':>7} {'after':>7}  first frame per client")
            for h in policies:
                r = results.setdefault("budget", {})[h] = budget(cert, h)
                figures = f"{r['start']:7.0f} {r['held']:7.0f} {r['after']:7.0f}"
                print(f"  {h:6} {figures}  {r['clients']}")
        if "holders" in scenarios:
            r = results["holders"] = holders(cert)
            print("\nholders: 8 clients x 15 MiB of a 16 MiB frame, then silent (--idle-timeout 3)")
            print(f"  start {r['start']:.0f}, holding {r['held']:.0f}, after the timeout "
                  f"{r['after']:.0f}; closed with 1001: {r['closed_1001']} of 8")  # fmt: skip
        if "churn" in scenarios:
            print("\nchurn: 4 rounds of 2,000 idle connections opened and closed")
            print(f"  {'heap':6} {'start':>7}   held / after each round")
            for h in policies:
                r = results.setdefault("churn", {})[h] = churn(cert, h)
                pairs = zip(r["held"], r["after"], strict=True)
                rounds = "  ".join(f"{x:.0f}/{y:.0f}" for x, y in pairs)
                print(f"  {h:6} {r['start']:7.0f}   {rounds}")
    if a.json:
        Path(a.json).write_text(json.dumps(results, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
