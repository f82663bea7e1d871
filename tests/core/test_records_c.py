"""The direct record layer in C, against OpenSSL's records, under ASan + UBSan.

tests/core/c/records_test.c shakes hands between two SSL objects over ring BIOs,
hands one side (or both) over to csrc/core/records.c and checks every suite in
both roles, with and without tickets: data both ways in random sizes and
chunks, KeyUpdate both ways with and without a requested update, the AEAD
usage limit, close_notify both ways, and each hostile record ending in its
alert.  Compiled with the sanitizers (leak checking on), it must exit 0 with
no report.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
CORE = ROOT / "csrc" / "core"
C = ROOT / "tests" / "core" / "c"
SOURCES = [CORE / "records.c", CORE / "ring.c", CORE / "ringbio.c", C / "records_test.c"]
GCC = shutil.which("gcc")
REPORTS = re.compile(r"ERROR: AddressSanitizer|runtime error:|ERROR: LeakSanitizer")

pytestmark = [pytest.mark.slow, pytest.mark.skipif(GCC is None, reason="gcc is not installed")]


def test_records_against_openssl_under_sanitizers(tmp_path: Path) -> None:
    exe = tmp_path / "records_test"
    cmd = [str(GCC), "-std=c11", "-O1", "-g", "-Wall", "-Wextra", "-Werror",
           "-fsanitize=address,undefined", "-fno-sanitize-recover=all", f"-I{CORE}",
           *map(str, SOURCES), "-lssl", "-lcrypto", "-o", str(exe)]  # fmt: skip
    built = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
    assert built.returncode == 0, f"{' '.join(cmd)}\n{built.stderr}"
    env = dict(os.environ)
    env.pop("LD_PRELOAD", None)  # a preloaded runtime would clash with the sanitizer's
    env["ASAN_OPTIONS"] = "detect_leaks=1 abort_on_error=0"
    env["UBSAN_OPTIONS"] = "print_stacktrace=1"
    proc = subprocess.run([str(exe)], capture_output=True, text=True, timeout=300, env=env)
    assert REPORTS.search(proc.stderr) is None, proc.stderr[-8000:]
    out = f"exit {proc.returncode}\n{proc.stdout[-4000:]}\n{proc.stderr[-4000:]}"
    assert proc.returncode == 0, out
    lines = proc.stdout.splitlines()
    assert lines[-1] == "all ok"
    suites = ("TLS_AES_128_GCM_SHA256", "TLS_AES_256_GCM_SHA384", "TLS_CHACHA20_POLY1305_SHA256")
    for suite in suites:
        done = [line for line in lines if line.startswith(f"exchange {suite} ")]
        assert len(done) == 6, done  # 2 ticket settings x 3 (client, server, both direct)
    for name in ("tag", "body", "header", "type", "version", "oversize"):
        assert any(line.startswith(f"hostile {name} -> alert") for line in lines), name
    assert sum(line.startswith("raw ") for line in lines) == 12
    assert sum(line.startswith("protocol ") for line in lines) == 7
