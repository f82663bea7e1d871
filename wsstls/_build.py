"""cffi builder (API, out-of-line mode): csrc/ -> the extension ``wsstls._native``.

The declarations Python sees come from one file, ``csrc/python_api.cdef``, given to
cffi as it is (cffi fails the build on anything it cannot parse).

``setup.py`` names ``ffibuilder`` in ``cffi_modules``.  Run this file directly to
rebuild the extension in place after a C change (``python wsstls/_build.py``);
``pip install -e .`` does the same.  Environment:

- ``WSSTLS_SANITIZE=1`` compiles with AddressSanitizer + UBSan (any UB aborts);
  load the result with ``LD_PRELOAD=$(gcc -print-file-name=libasan.so)``.
- ``WSSTLS_CFLAGS`` adds compiler flags (e.g. ``-O0 -g``).
"""

from __future__ import annotations

import os
import shlex
from pathlib import Path

from cffi import FFI

ROOT = Path(__file__).resolve().parent.parent
CSRC = ROOT / "csrc"

#: The declarations Python sees, given to cffi verbatim (see the file's header).
CDEF_FILE = CSRC / "python_api.cdef"

#: The headers that declare what CDEF_FILE repeats, included by the generated module
#: (the compiler checks the two agree), relative to csrc/ (the layer is the folder).
API_HEADERS = ["core/ring.h", "core/wsmask.h", "core/utf8.h", "core/wsframe.h",
               "core/wshandshake.h", "core/tls.h", "server/wsecho.h", "server/offload.h",
               "server/ringpool.h", "server/heap.h", "server/wsloop.h", "loadgen/loadgen.h",
               "measure/ringbench.h"]  # fmt: skip

#: Every C file of the extension (measure/memcount.c is the separate preload shim).
SOURCES = ["core/ring.c", "core/ringbio.c", "core/records.c", "core/tls.c", "core/wsmask.c",
           "core/utf8.c", "core/wsframe.c", "core/wshandshake.c", "server/wsecho.c",
           "server/offload.c", "server/ringpool.c", "server/heap.c", "server/wsloop.c",
           "loadgen/loadgen.c", "measure/ringbench.c",
           # C that Python reaches through tls.h only: the crypto pool, the
           # pipelined cipher's engine, the ASYNC provider
           "core/cryptopool.c", "core/pipecipher.c", "core/asyncjob.c"]  # fmt: skip


def read_cdef(path: Path = CDEF_FILE) -> str:
    """The cdef text; cffi rejects (CDefError) anything in it that it cannot parse."""
    return path.read_text()


# Hidden by default: the extension exports its module init only (cffi calls the C
# functions from inside the module, not through the dynamic symbol table).
CFLAGS = ["-std=c11", "-O2", "-Wall", "-Wextra", "-Werror", "-fvisibility=hidden"]
LDFLAGS: list[str] = []
if os.environ.get("WSSTLS_SANITIZE") == "1":
    san = ["-fsanitize=address,undefined", "-fno-sanitize-recover=all"]
    CFLAGS += [*san, "-fno-omit-frame-pointer", "-g", "-O1"]
    LDFLAGS += san
CFLAGS += shlex.split(os.environ.get("WSSTLS_CFLAGS", ""))

ffibuilder = FFI()
ffibuilder.cdef(read_cdef())
ffibuilder.set_source(
    "wsstls._native",
    "\n".join(f'#include "{h}"' for h in API_HEADERS),
    # Relative to the project root, which is the working directory of every
    # build (setuptools wants sources inside the tree).
    sources=[f"csrc/{s}" for s in SOURCES],
    include_dirs=[str(CSRC)],
    libraries=["ssl", "crypto"],
    extra_compile_args=CFLAGS,
    extra_link_args=LDFLAGS,
)

if __name__ == "__main__":
    # The file name pip gives it (cffi builds for the stable ABI), so an
    # in-place build replaces an installed one instead of shadowing it.
    os.chdir(ROOT)
    for stale in (ROOT / "wsstls").glob("_native.cpython-*.so"):
        stale.unlink()
    ffibuilder.compile(tmpdir=str(ROOT), target="_native.abi3.so", verbose=True)
