"""Every command-line input is checked before any work starts.

A bad one ends the command with exit status 2 and one line on stderr that names the
option and says what is allowed.  The table runs each command's ``main`` in this
process with its work replaced by a tripwire (a check that let a bad input through
fails the test instead of starting a server or a benchmark); two cases run the real
``python -m wsstls`` as a user would.
"""

from __future__ import annotations

import os
import re
import socket
import subprocess
import sys
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest
import serverutil
import trustme
from serverutil import ROOT, Certs

import wsstls.measure.ledger as ledger
import wsstls.measure.ringbench as ringbench
import wsstls.server.cli as serve_cli
from wsstls.__main__ import main as wsstls_main
from wsstls.cliargs import cpu_list, format_cpus, output_file, size
from wsstls.server.config import Mode, ServerConfig
from wsstls.server.workers import serve
from wsstls.tls import Transport

pytestmark = pytest.mark.no_sanitizer  # argument parsing: pure Python

server_certs = serverutil.server_certs

ALLOWED = sorted(os.sched_getaffinity(0))
NOT_ALLOWED = max(ALLOWED) + 1

# (command line, the option the line must name, what it must say is allowed)
# "{cert}", "{key}", "{other_key}", "{tmp}" are filled in per test.
# fmt: off
BAD: dict[str, tuple[list[str], str, str]] = {
    "serve-port-high": (["serve", "--port", "70000"], "--port", "from 0 to 65535"),
    "serve-port-negative": (["serve", "--port", "-1"], "--port", "from 0 to 65535"),
    "serve-port-word": (["serve", "--port", "http"], "--port", "from 0 to 65535"),
    "serve-host-empty": (["serve", "--host="], "--host", "an IP address or a host name"),
    "serve-cpus-negative": (["serve", "--cpus", "-1"], "--cpus", "this process may use"),
    "serve-cpus-absent": (["serve", "--cpus", str(NOT_ALLOWED)], "--cpus",
                          f"CPU {NOT_ALLOWED} is not one this process may use"),
    "serve-cpus-range-backwards": (["serve", "--cpus", "1-0"], "--cpus", "0,1 or 0-3"),
    "serve-threads-huge": (["serve", "--threads", "99999999999"], "--threads", "from 1 to 1024"),
    "serve-threads-huge-inline": (
        ["serve", "--mode", "inline", "--threads", "99999999999"], "--threads", "from 1 to 1024"
    ),
    "serve-threads-zero": (["serve", "--threads", "0"], "--threads", "from 1 to 1024"),
    "serve-threshold-float": (["serve", "--offload-threshold", "1e23"], "--offload-threshold",
                              "a size in bytes from 0 to 2**63 - 1"),
    "serve-workers-zero": (["serve", "--workers", "0"], "--workers", "from 1 to 1024"),
    "serve-max-message-negative": (["serve", "--max-message", "-1"], "--max-message",
                                   "from 0 to 2**63 - 1"),
    "serve-ring-huge": (["serve", "--ring-capacity", "99999999999999"], "--ring-capacity",
                        "from 4 KiB to 1 GiB"),
    "serve-ring-small": (["serve", "--ring-capacity", "100"], "--ring-capacity", "4 KiB"),
    "serve-timeout-nan": (["serve", "--handshake-timeout", "nan"], "--handshake-timeout",
                          "above 0 and at most 3600"),
    "serve-timeout-inf": (["serve", "--handshake-timeout", "inf"], "--handshake-timeout",
                          "above 0 and at most 3600"),
    "serve-timeout-zero": (["serve", "--handshake-timeout", "0"], "--handshake-timeout",
                           "above 0"),
    "serve-stats-no-dir": (["serve", "--stats", "{tmp}/no/such/dir/stats.json"], "--stats",
                           "a file that can be written"),
    "serve-stats-a-dir": (["serve", "--stats", "{tmp}"], "--stats", "it is a directory"),
    "serve-cert-missing": (["serve", "--cert", "{tmp}/none.pem", "--key", "{key}"], "--cert",
                           "No such file"),
    "serve-cert-alone": (["serve", "--cert", "{cert}"], "--cert", "give both --cert and --key"),
    "serve-key-mismatch": (["serve", "--cert", "{cert}", "--key", "{other_key}"], "--cert/--key",
                           "is not the key of the certificate"),
    "serve-key-not-pem": (["serve", "--cert", "{cert}", "--key", "{cert}"], "--cert/--key",
                          "no private key could be read"),
    "serve-no-tls-with-cert": (["serve", "--no-tls", "--cert", "{cert}", "--key", "{other_key}"],
                               "--no-tls", "--cert and --key are for --tls"),
    "serve-offload-no-tls": (["serve", "--mode", "offload", "--no-tls"], "--mode", "--tls"),
    "serve-batched-mem": (["serve", "--mode", "batched", "--transport", "mem"], "--mode",
                          "--transport ring"),
    "serve-transport-tcp": (["serve", "--transport", "tcp"], "--transport", "ring"),
    "serve-unknown-option": (["serve", "--bogus"], "--bogus", "unrecognized"),
    "copies-size-negative": (["copies", "--sizes", "-1"], "--sizes", "each from 1 to 16 MiB"),
    "copies-size-huge": (["copies", "--sizes", "999999999999"], "--sizes", "from 1 to 16 MiB"),
    "copies-size-zero": (["copies", "--sizes", "64,0"], "--sizes", "from 1 to 16 MiB"),
    "copies-size-empty": (["copies", "--sizes", ","], "--sizes", "from 1 to 16 MiB"),
    "copies-path-unknown": (["copies", "--paths", "ring,tcp"], "--paths", "ring, mem, pair, fd"),
    "copies-messages-zero": (["copies", "--messages", "0"], "--messages", "from 1 to"),
    "ring-bench-rounds-zero": (["ring-bench", "--rounds", "0"], "--rounds", "from 1 to 1000"),
    "ring-bench-target-nan": (["ring-bench", "--target", "nan"], "--target", "above 0"),
    "ring-bench-json-no-dir": (["ring-bench", "--json", "{tmp}/no/such/x.json"], "--json",
                               "a file that can be written"),
    "command-unknown": (["benhc"], "command", "choose from 'bench', 'serve'"),
}
# fmt: on


class WorkStarted(Exception):
    """A command got past its checks (a bad input was let through)."""


def _tripwire(*_: Any, **__: Any) -> Any:
    raise WorkStarted


@pytest.fixture
def no_work(monkeypatch: pytest.MonkeyPatch) -> None:
    """Whatever each command does after its checks raises WorkStarted."""
    monkeypatch.setattr(serve_cli, "serve", _tripwire)
    monkeypatch.setattr(ledger, "measure", _tripwire)
    monkeypatch.setattr(ledger.subprocess, "run", _tripwire)
    monkeypatch.setattr(ringbench, "bench_pairs", _tripwire)


def _fill(argv: list[str], tmp: Path, certs: Certs) -> list[str]:
    other_key = tmp / "other-key.pem"  # a key of another certificate
    trustme.CA().issue_cert("localhost").private_key_pem.write_to_path(str(other_key))
    values = {"tmp": str(tmp), "cert": certs.certfile, "key": certs.keyfile,
              "other_key": str(other_key)}  # fmt: skip
    return [a.format(**values) for a in argv]


@pytest.mark.parametrize("case", list(BAD))
def test_bad_input_is_one_line_naming_the_option(
    case: str,
    no_work: None,
    tmp_path: Path,
    server_certs: Certs,
    capsys: pytest.CaptureFixture[str],
) -> None:
    argv, option, allowed = BAD[case]
    argv = _fill(argv, tmp_path, server_certs)
    with pytest.raises(SystemExit) as info:
        code = wsstls_main(argv)
        raise SystemExit(code)  # (a command may return its status instead)
    out, err = capsys.readouterr()
    assert info.value.code == 2, err
    assert out == ""
    lines = err.splitlines()
    assert len(lines) == 1, err
    command = "wsstls" if case.startswith("command") else f"wsstls {argv[0]}"
    assert lines[0].startswith(f"{command}: error: "), lines[0]
    assert option in lines[0] and allowed in lines[0], lines[0]


@pytest.mark.parametrize(
    "argv",
    [["serve", "--port", "70000"], ["serve", "--ring-capacity", "99999999999999"]],
    ids=["port", "ring-capacity"],
)
def test_the_real_command_exits_2_with_one_line(argv: list[str]) -> None:
    run = subprocess.run(
        [sys.executable, "-m", "wsstls", *argv],
        capture_output=True, text=True, timeout=60, cwd=ROOT, stdin=subprocess.DEVNULL,
    )  # fmt: skip
    assert run.returncode == 2, run
    assert run.stdout == "", run.stdout  # never "listening on ..."
    assert len(run.stderr.splitlines()) == 1, run.stderr
    assert run.stderr.startswith(f"wsstls serve: error: {argv[1]}: "), run.stderr


#: The bench/ scripts and the measuring helpers check their options the same way.
SCRIPTS = {
    "hotpath_ir": (["bench/hotpath_ir.py", "--conns", "0"], "--conns"),
    "framer_ir": (["bench/framer_ir.py", "--reps", "-1"], "--reps"),
    "async_ir": (["bench/async_ir.py", "--designs", "inline,fast"], "--designs"),
    "longest": ([".ci/longest.py", "--top", "0"], "--top"),
    "memory": (["bench/memory.py", "--scenarios", "budget,foo"], "--scenarios"),
    "records_bench": (["bench/records_bench.py", "--duration", "nan"], "--duration"),
    "tls_bench": (["bench/tls_bench.py", "--paths", "ring,nope"], "--paths"),
    "tls_bench-json": (["bench/tls_bench.py", "--json", "/nonexistent/x.json"], "--json"),
    "density": (["bench/density.py", "--counts", "1000,-5"], "--counts"),
    "loadgen_probe": (["bench/loadgen_probe.py", "--client-cpu", "0,1"], "--client-cpu"),
    "idle": (["-m", "wsstls.measure.idle", "ws://127.0.0.1:9/", "0"], "count"),
}


@pytest.mark.parametrize("case", list(SCRIPTS))
def test_bench_scripts_exit_2_with_one_line(case: str) -> None:
    argv, option = SCRIPTS[case]
    run = subprocess.run(
        [sys.executable, *argv],
        capture_output=True, text=True, timeout=60, cwd=ROOT, stdin=subprocess.DEVNULL,
    )  # fmt: skip
    assert run.returncode == 2, run
    assert run.stdout == "", run.stdout  # nothing measured, nothing started
    assert len(run.stderr.splitlines()) == 1, run.stderr
    assert f": error: {option}: " in run.stderr, run.stderr


def test_good_input_makes_the_config(tmp_path: Path, server_certs: Certs) -> None:
    stats = tmp_path / "stats.json"
    cfg, stats_file = serve_cli.parse([
        "--host", "[::1]", "--port", "8443", "--cert", server_certs.certfile,
        "--key", server_certs.keyfile, "--mode", "batched", "--threads", "3",
        "--offload-threshold", "4K", "--workers", "2", "--cpus", format_cpus(ALLOWED),
        "--max-message", "1M", "--ring-capacity", "64KiB", "--handshake-timeout", "2.5",
        "--stats", str(stats),
    ])  # fmt: skip
    assert cfg == ServerConfig(
        host="::1", port=8443, tls=True, certfile=server_certs.certfile,
        keyfile=server_certs.keyfile, transport=Transport.RING, mode=Mode.BATCHED, threads=3,
        offload_threshold=4096, workers=2, cpus=tuple(ALLOWED), max_message=1 << 20,
        ring_capacity=65536, handshake_timeout=2.5,
    )  # fmt: skip
    assert stats_file == str(stats)
    assert not stats.exists()  # checked, not created


def test_output_file_check_leaves_no_trace(tmp_path: Path) -> None:
    new, old = tmp_path / "new.json", tmp_path / "old.json"
    old.write_text("kept")
    assert output_file(str(new)) == str(new) and not new.exists()
    assert output_file(str(old)) == str(old) and old.read_text() == "kept"


@pytest.mark.parametrize(
    ("text", "value"),
    [("0", 0), ("65536", 65536), ("64K", 65536), ("64 KiB", 65536), ("16M", 16 << 20),
     ("1g", 1 << 30), ("512B", 512)],
)  # fmt: skip
def test_sizes_take_binary_suffixes(text: str, value: int) -> None:
    assert size(0, 1 << 40)(text) == value


def test_cpu_lists_take_ranges() -> None:
    text = format_cpus(ALLOWED)
    assert cpu_list(text) == tuple(ALLOWED)
    assert format_cpus([0, 1, 2, 5, 7, 8]) == "0-2,5,7-8"


BAD_CONFIGS: dict[str, tuple[dict[str, Any], type[Exception], str]] = {
    "port": ({"port": 70000}, ValueError, "port"),
    "threads": ({"threads": 99999999999}, ValueError, "threads"),
    "timeout-nan": ({"handshake_timeout": float("nan")}, ValueError, "handshake_timeout"),
    "timeout-inf": ({"handshake_timeout": float("inf")}, ValueError, "handshake_timeout"),
    "timeout-str": ({"handshake_timeout": "10"}, TypeError, "handshake_timeout"),
    "ring-float": ({"ring_capacity": 65536.0}, TypeError, "ring_capacity"),
    "cpus": ({"cpus": (-1,)}, ValueError, "cpus"),
    "no-tls-with-cert": ({"tls": False, "certfile": "c", "keyfile": "k"}, ValueError, "--no-tls"),
}


@pytest.mark.parametrize("case", list(BAD_CONFIGS))
def test_server_config_check(case: str) -> None:
    """The library's way in gets the same checks (ValueError/TypeError naming the field)."""
    fields, exc_type, name = BAD_CONFIGS[case]
    with pytest.raises(exc_type, match=name):
        ServerConfig(**fields).check()


def test_serve_refuses_a_cpu_this_process_may_not_use() -> None:
    config = ServerConfig(tls=False, cpus=(NOT_ALLOWED,))
    config.check()  # (in range: a worker pinned to one CPU checks its config again)
    with pytest.raises(ValueError, match=f"CPU {NOT_ALLOWED} is not one this process may use"):
        serve(config, ready=_tripwire)


def _ipv6_loopback() -> bool:
    try:
        with socket.socket(socket.AF_INET6) as s:
            s.bind(("::1", 0))
        return True
    except OSError:
        return False


@pytest.mark.skipif(not _ipv6_loopback(), reason="no IPv6 loopback here")
@pytest.mark.parametrize("workers", [1, 2])
def test_ipv6_url_has_brackets(workers: int, tmp_path: Path) -> None:
    """``--host ::1`` prints ``ws://[::1]:PORT/`` (RFC 3986), and that URL works."""
    design = serverutil.Design(f"plain-ipv6-{workers}", tls=False, workers=workers)
    with serverutil.subprocess_server(design, tmp_path, ["--host", "::1"]) as server:
        assert re.fullmatch(r"ws://\[::1\]:\d+/", server.url), server.url
        assert urlsplit(server.url).hostname == "::1"
        with serverutil.WsClient(server) as ws:
            ws.echo(b"over IPv6")
