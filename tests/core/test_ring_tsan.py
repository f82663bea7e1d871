"""The C ring under ThreadSanitizer and under ASan + UBSan.

tests/c/ring_spsc.c runs a producer and a consumer pthread through a plain
and a mirrored ring with every producer and consumer operation; it checks
every byte and the copy counters itself.  Here it is compiled against
csrc/core/ring.c with a sanitizer and must exit 0 without a single report.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
SOURCES = [
    str(ROOT / "csrc" / "core" / "ring.c"),
    str(ROOT / "tests" / "core" / "c" / "ring_spsc.c"),
]
GCC = shutil.which("gcc")

pytestmark = [pytest.mark.slow, pytest.mark.skipif(GCC is None, reason="gcc is not installed")]

SANITIZERS = {
    "tsan": ["-fsanitize=thread"],
    "asan-ubsan": ["-fsanitize=address,undefined", "-fno-sanitize-recover=all"],
}
REPORTS = re.compile(
    r"WARNING: ThreadSanitizer|ERROR: AddressSanitizer|runtime error:|ERROR: LeakSanitizer"
)


def build_and_run(tmp_path: Path, flags: list[str]) -> subprocess.CompletedProcess[str]:
    exe = tmp_path / "ring_spsc"
    cmd = [
        str(GCC),
        "-std=c11",
        "-O1",
        "-g",
        *flags,
        "-pthread",
        f"-I{ROOT / 'csrc' / 'core'}",
        *SOURCES,
        "-o",
        str(exe),
    ]
    built = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
    assert built.returncode == 0, f"{' '.join(cmd)}\n{built.stderr}"
    env = dict(os.environ)
    env.pop("LD_PRELOAD", None)  # a preloaded runtime would clash with the sanitizer's
    env["TSAN_OPTIONS"] = "halt_on_error=0 second_deadlock_stack=1"
    env["ASAN_OPTIONS"] = "detect_leaks=1 abort_on_error=0"
    env["UBSAN_OPTIONS"] = "print_stacktrace=1"
    return subprocess.run([str(exe)], capture_output=True, text=True, timeout=300, env=env)


@pytest.mark.parametrize("sanitizer", list(SANITIZERS))
def test_spsc_under_sanitizer(tmp_path: Path, sanitizer: str) -> None:
    proc = build_and_run(tmp_path, SANITIZERS[sanitizer])
    report = REPORTS.search(proc.stderr)
    assert report is None, proc.stderr[-8000:]
    assert proc.returncode == 0, f"exit {proc.returncode}\n{proc.stdout}\n{proc.stderr[-8000:]}"
    lines = proc.stdout.split("\n")
    assert any(line.startswith("plain cap=1024 ") and line.endswith(" ok") for line in lines)
    assert any(line.startswith("mirrored cap=") and line.endswith(" ok") for line in lines)
