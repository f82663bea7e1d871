"""cffi builder (API, out-of-line mode): csrc/*.c -> the extension ``wsstls._native``.

``setup.py`` names ``ffibuilder`` in ``cffi_modules``.  Run this file directly to
build the extension in place (``python wsstls/_build.py``).  Environment:

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

# One block per C header; each mirrors that header's public declarations.
RING_CDEF = """
struct iovec { void *iov_base; size_t iov_len; };
typedef struct ring ring;
enum ring_flags { RING_MIRRORED = 1 };

size_t ring_max_capacity(void);
ring *ring_create(size_t min_capacity, int flags);
void ring_destroy(ring *r);
void ring_reset(ring *r);

size_t ring_cap(const ring *r);
int ring_mirrored(const ring *r);
size_t ring_len(const ring *r);
size_t ring_writable(const ring *r);
int ring_empty(const ring *r);
int ring_full(const ring *r);

size_t ring_write(ring *r, const void *src, size_t n);
size_t ring_read(ring *r, void *dst, size_t n);
size_t ring_peek(ring *r, void *dst, size_t n);
size_t ring_discard(ring *r, size_t n);

int ring_read_iov(ring *r, struct iovec iov[2]);
int ring_write_iov(ring *r, struct iovec iov[2]);
int ring_readable_spans(ring *r, size_t limit, size_t out[4]);
int ring_writable_spans(ring *r, size_t out[4]);

void *ring_reserve(ring *r, size_t *len);
int ring_commit(ring *r, size_t n);
const void *ring_peek_region(ring *r, size_t *len);
int ring_consume(ring *r, size_t n);

ssize_t ring_read_fd(ring *r, int fd);
ssize_t ring_write_fd(ring *r, int fd);

void ring_stats(const ring *r, uint64_t out[2]);
void ring_reset_stats(ring *r);

unsigned char *ring_data(const ring *r);
size_t ring_data_offset(const ring *r);
size_t ring_data_span(const ring *r);
"""

RINGBENCH_CDEF = """
uint64_t ringbench_pairs(ring *r, size_t msg, size_t iters, size_t start);
uint64_t ringbench_minimal_pairs(size_t cap, size_t msg, size_t iters, size_t start);
"""

SOURCES = ["ring.c", "ringbench.c"]
HEADERS = ["ring.h", "ringbench.h"]
CDEF = RING_CDEF + RINGBENCH_CDEF

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
    os.chdir(ROOT)
    ffibuilder.compile(tmpdir=str(ROOT), verbose=True)
