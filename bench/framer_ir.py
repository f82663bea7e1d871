"""The Python framer's cost per frame, in instructions (callgrind).

``FrameParser.receive_data`` (server side: masked frames, unmasked in place) over a
buffer of 100 frames of one kind, given in three pieces so that frames are cut between
calls, ``--reps`` times, under ``valgrind --tool=callgrind``; the same run with no
repetition is subtracted (start-up, imports, building the frames), so what is left is
the parsing: printed as instructions per frame.  Kinds: 64 B binary, 64 B text (UTF-8
validated while unmasked), 32 B fragments (text, two per message), 8 B pings.  Needs
valgrind.  The server's hot path parses in C (csrc/core/wsframe.c); this is the rest:
clients, control frames, fragments, large messages.

    python bench/framer_ir.py [--reps 200]
"""

from __future__ import annotations

import argparse
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from wsstls.cliargs import Parser, integer  # noqa: E402

KINDS = ("bin64", "text64", "frag32", "ping8")
FRAMES = 100


def workload(kind: str, reps: int) -> None:
    """Parse the kind's 100 frames ``reps`` times (run under callgrind by ``main``)."""
    from wsstls.ws import FrameParser, Opcode, Side, encode_frame

    key = b"abcd"
    if kind == "bin64":
        frames = [encode_frame(Opcode.BINARY, bytes(range(64)), mask_key=key)] * FRAMES
    elif kind == "text64":
        frames = [encode_frame(Opcode.TEXT, b"x" * 64, mask_key=key)] * FRAMES
    elif kind == "frag32":
        frames = [
            encode_frame(Opcode.CONT if i % 2 else Opcode.TEXT, b"y" * 32, fin=bool(i % 2),
                         mask_key=key)
            for i in range(FRAMES)
        ]  # fmt: skip
    else:
        frames = [encode_frame(Opcode.PING, b"p" * 8, mask_key=key)] * FRAMES
    blob = b"".join(frames)
    cuts = (0, len(blob) // 3, 2 * len(blob) // 3, len(blob))
    for _ in range(reps):
        parser = FrameParser(Side.SERVER)
        buf = memoryview(bytearray(blob))
        used = 0
        for end in cuts[1:]:
            used += parser.receive_data(buf[used:end])
        if used != len(blob) or not parser.events:
            raise SystemExit(f"{kind}: parsed {used} of {len(blob)} bytes")


def instructions(kind: str, reps: int, tmp: Path) -> int:
    out = tmp / f"{kind}.{reps}.out"
    cmd = ["valgrind", "--tool=callgrind", f"--callgrind-out-file={out}", sys.executable,
           __file__, "--run", f"{kind}:{reps}"]  # fmt: skip
    subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    m = re.search(r"^(?:summary|totals):\s*(\d+)", out.read_text(errors="replace"), re.M)
    if m is None:
        raise SystemExit("no instruction total in the callgrind output")
    return int(m.group(1))


def main(argv: list[str] | None = None) -> None:
    p = Parser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--reps", type=integer(1, 100_000), default=200)
    p.add_argument("--run", help=argparse.SUPPRESS)  # KIND:REPS, under callgrind
    a = p.parse_args(argv)
    if a.run:
        kind, reps = a.run.split(":")
        workload(kind, int(reps))
        return
    if shutil.which("valgrind") is None:
        print("valgrind is not installed: nothing measured")
        return
    with tempfile.TemporaryDirectory() as d:
        print("kind    instructions per frame")
        for kind in KINDS:
            base = instructions(kind, 0, Path(d))
            total = instructions(kind, a.reps, Path(d))
            print(f"{kind:7} {(total - base) / (a.reps * FRAMES):,.0f}")


if __name__ == "__main__":
    main()
