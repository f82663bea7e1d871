"""cffi builder (API, out-of-line mode): csrc/*.c -> the extension ``wsstls._native``.

``setup.py`` names ``ffibuilder`` in ``cffi_modules``.  Run this file directly to
rebuild the extension in place after a C change (``python wsstls/_build.py``);
``pip install -e .`` does the same.  Environment:

- ``WSSTLS_SANITIZE=1`` compiles with AddressSanitizer + UBSan (any UB aborts);
  load the result with ``LD_PRELOAD=$(gcc -print-file-name=libasan.so)``.
- ``WSSTLS_CFLAGS`` adds compiler flags (e.g. ``-O0 -g``).
"""

from __future__ import annotations

import os
import re
import shlex
from pathlib import Path

from cffi import FFI

ROOT = Path(__file__).resolve().parent.parent
CSRC = ROOT / "csrc"

# The headers are the declarations: cffi reads them as they are, less
# comments, include guards and #includes.  This prelude declares what they
# take from system and OpenSSL headers, opaque where Python never looks inside.
PRELUDE = """
struct iovec { void *iov_base; size_t iov_len; };
typedef ... SSL_CTX;
typedef ... BIO;
#define TLS1_2_VERSION ...
#define TLS1_3_VERSION ...
"""

# In dependency order, relative to csrc/ (the layer is the folder); counter.h
# (only static inline helpers) is C-only.
HEADERS = ["core/ring.h", "core/wsmask.h", "core/utf8.h", "core/ringbio.h", "core/tls.h",
           "server/wsecho.h", "server/offload.h", "server/ringpool.h", "server/heap.h",
           "server/wsloop.h", "loadgen/loadgen.h",
           "measure/ringbench.h"]  # fmt: skip
SOURCES = [h.replace(".h", ".c") for h in HEADERS]


def declarations(header: Path) -> str:
    """A header's text as cffi's cdef takes it."""
    text = re.sub(r"/\*.*?\*/", "", header.read_text(), flags=re.S)
    text = re.sub(r"//[^\n]*", "", text)
    # static inline helpers are C's business: up to their closing brace at column 0
    text = re.sub(r"^static inline\b.*?^\}", "", text, flags=re.S | re.M)
    keep = []
    for line in text.splitlines():
        directive = line.strip()
        if directive.startswith(("#include", "#ifndef", "#endif")):
            continue
        if re.fullmatch(r"#define\s+WSSTLS_\w+_H", directive):
            continue  # the include guard
        keep.append(line)
    return "\n".join(keep)


CDEF = PRELUDE + "".join(declarations(CSRC / h) for h in HEADERS)

CFLAGS = ["-std=c11", "-O2", "-Wall", "-Wextra", "-Werror"]
LDFLAGS: list[str] = []
if os.environ.get("WSSTLS_SANITIZE") == "1":
    san = ["-fsanitize=address,undefined", "-fno-sanitize-recover=all"]
    CFLAGS += [*san, "-fno-omit-frame-pointer", "-g", "-O1"]
    LDFLAGS += san
CFLAGS += shlex.split(os.environ.get("WSSTLS_CFLAGS", ""))

ffibuilder = FFI()
ffibuilder.cdef(CDEF)
ffibuilder.set_source(
    "wsstls._native",
    "\n".join(f'#include "{h}"' for h in HEADERS),
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
