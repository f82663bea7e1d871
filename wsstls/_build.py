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
uint64_t ringbench_minimal_pairs(ring *r, size_t msg, size_t iters, size_t start);
"""

WSMASK_CDEF = """
void ws_mask(unsigned char *buf, size_t n, uint32_t key, size_t offset);
void ws_mask_copy(unsigned char *dst, const unsigned char *src, size_t n, uint32_t key,
                  size_t offset);
"""

UTF8_CDEF = """
enum utf8_state { UTF8_ACCEPT = 0, UTF8_REJECT = 6 };
size_t utf8_validate(uint32_t *state, const unsigned char *buf, size_t n);
size_t ws_unmask_utf8(uint32_t *state, unsigned char *buf, size_t n, uint32_t key,
                      size_t offset);
"""

TLS_CDEF = """
typedef ... SSL_CTX;
#define TLS1_2_VERSION ...
#define TLS1_3_VERSION ...
enum tls_transport { TLS_RING, TLS_MEM, TLS_PAIR, TLS_FD };
enum tls_status { TLS_WANT_READ = -1, TLS_WANT_WRITE = -2, TLS_CLOSED = -3, TLS_EOF = -4,
                  TLS_ERROR = -5 };
enum tls_conn_flags { TLS_READ_AHEAD = 1, TLS_RING_VIA_RING = 2, TLS_MIRRORED_RINGS = 4,
                      TLS_CALLER_IO = 8 };

SSL_CTX *tls_ctx_new(int server);
void tls_ctx_free(SSL_CTX *ctx);
int tls_ctx_use_pem(SSL_CTX *ctx, const char *chain, size_t chain_len, const char *key,
                    size_t key_len);
int tls_ctx_use_files(SSL_CTX *ctx, const char *chain_file, const char *key_file);
int tls_ctx_set_verify(SSL_CTX *ctx, int verify, const char *cafile, const char *ca_pem,
                       size_t ca_len);
int tls_ctx_set_versions(SSL_CTX *ctx, int min_version, int max_version);
int tls_ctx_set_alpn(SSL_CTX *ctx, const unsigned char *wire, size_t len);
int tls_ctx_set_ciphers(SSL_CTX *ctx, const char *tls12, const char *tls13);
int tls_ctx_set_num_tickets(SSL_CTX *ctx, size_t n);
int tls_self_signed(const char *name, int bits, int days, char **cert_pem, size_t *cert_len,
                    char **key_pem, size_t *key_len);
void tls_free(void *p);
size_t tls_last_error(char *buf, size_t len);

typedef struct tls_conn tls_conn;
tls_conn *tls_conn_new(SSL_CTX *ctx, int transport, int fd, size_t ring_capacity, int flags,
                       const char *hostname);
void tls_conn_free(tls_conn *c);
int tls_handshake(tls_conn *c);
long tls_read(tls_conn *c, void *buf, size_t n);
long tls_read_ring(tls_conn *c, ring *plain);
long tls_write(tls_conn *c, const void *buf, size_t n);
long tls_write_ring(tls_conn *c, ring *plain, size_t n);
long tls_fill(tls_conn *c);
size_t tls_pending_in(tls_conn *c);
long tls_flush(tls_conn *c);
int tls_shutdown(tls_conn *c);
size_t tls_feed(tls_conn *c, const void *data, size_t n);
void tls_feed_eof(tls_conn *c);
size_t tls_take(tls_conn *c, void *buf, size_t n);
size_t tls_pending_out(tls_conn *c);
int tls_has_pending(tls_conn *c);
const char *tls_conn_error(const tls_conn *c);
int tls_conn_errno(const tls_conn *c);
const char *tls_version(const tls_conn *c);
const char *tls_cipher(const tls_conn *c);
size_t tls_alpn(const tls_conn *c, char *buf, size_t n);
size_t tls_peer_cert(const tls_conn *c, unsigned char **der);
int tls_session_reused(const tls_conn *c);

struct tls_ledger {
    uint64_t rx_syscalls, rx_bytes, rx_direct;
    uint64_t tx_syscalls, tx_bytes, tx_direct;
    uint64_t eagain;
    uint64_t ring_copies, ring_bytes;
    uint64_t bio_copies, bio_bytes;
    uint64_t plain_in, plain_out;
    uint64_t reads, writes;
};
void tls_get_ledger(tls_conn *c, struct tls_ledger *out);
void tls_reset_ledger(tls_conn *c);
"""

LOADGEN_CDEF = """
struct loadgen_config {
    const char *host;
    int port;
    const char *path;
    const char *host_header;
    int use_tls;
    SSL_CTX *ssl_ctx;
    const char *server_name;
    int connections;
    size_t message_size;
    int text;
    uint64_t warmup_ns;
    uint64_t duration_ns;
    uint64_t connect_timeout_ns;
    uint64_t deadline_ns;
    int cpu;
    int *stop;
    uint64_t seed;
    int *phase;
};
struct loadgen_result {
    uint64_t messages;
    uint64_t bytes;
    uint64_t warmup_messages;
    uint64_t errors;
    uint64_t connect_failures;
    uint64_t connections;
    uint64_t lat_sum_ns;
    uint64_t lat_min_ns;
    uint64_t lat_avg_ns;
    uint64_t lat_p50_ns;
    uint64_t lat_p99_ns;
    uint64_t lat_max_ns;
    uint64_t cpu_ns;
    uint64_t wall_ns;
    int stopped;
    int timed_out;
    int samples_dropped;
    uint64_t *samples;
    size_t nsamples;
    char error[256];
};
int loadgen_run(const struct loadgen_config *cfg, struct loadgen_result *out);
int loadgen_phase(const int *phase);
void loadgen_request_stop(int *flag);
void loadgen_result_free(struct loadgen_result *r);
int loadgen_percentiles(const struct loadgen_result *const *results, size_t n, const double *q,
                        size_t nq, uint64_t *out);
"""

WSECHO_CDEF = """
enum wsecho_flags { WSECHO_READ = 1, WSECHO_ECHO = 2 };
enum wsecho_status { WSECHO_WAIT = 0, WSECHO_SLOW = 1, WSECHO_BLOCKED = 2,
                     WSECHO_BAD_UTF8 = 3 };
struct wsecho {
    size_t max_message;
    int fd;
    uint64_t messages;
    uint64_t bytes;
    long read_status;
    int sys_errno;
    size_t pending_frame;
    size_t pending_skip;
    size_t pending_len;
    size_t pending_sent;
};
long wsecho_pump(tls_conn *c, ring *plain, struct wsecho *st, int flags);
"""

OFFLOAD_CDEF = """
struct offload_job {
    tls_conn *tls;
    ring *plain;
    struct wsecho *echo;
    int flags;
    int id;
    long status;
    ...;
};
typedef struct offload offload;
offload *offload_new(int threads);
void offload_free(offload *o);
int offload_fd(const offload *o);
int offload_submit(offload *o, struct offload_job *const *jobs, size_t n);
size_t offload_done(offload *o, struct offload_job **out, size_t max);
"""

WSLOOP_CDEF = """
enum wsloop_mode { WSLOOP_INLINE, WSLOOP_OFFLOAD, WSLOOP_BATCHED, WSLOOP_THRESHOLD };
#define WSLOOP_RAW ...
struct wsloop_event { int fd; uint32_t events; long status; };
struct wsloop_counters { uint64_t polls, hot_events, reported, dispatches, jobs; };
typedef struct wsloop wsloop;
wsloop *wsloop_new(int mode, offload *pool, size_t threshold, int threads);
void wsloop_free(wsloop *l);
int wsloop_watch(wsloop *l, int fd, uint32_t events);
int wsloop_unwatch(wsloop *l, int fd);
int wsloop_hot(wsloop *l, int fd, tls_conn *c, ring *plain, struct wsecho *st,
               struct offload_job *job);
int wsloop_busy(wsloop *l, int fd);
int wsloop_poll(wsloop *l, int timeout_ms, struct wsloop_event *out, int max);
int wsloop_drain(wsloop *l, int timeout_ms);
void wsloop_get_counters(wsloop *l, struct wsloop_counters *out);
"""

SOURCES = ["ring.c", "ringbench.c", "wsmask.c", "utf8.c", "ringbio.c", "tls.c", "loadgen.c",
           "wsecho.c", "offload.c", "wsloop.c"]  # fmt: skip
HEADERS = ["ring.h", "ringbench.h", "wsmask.h", "utf8.h", "ringbio.h", "tls.h", "loadgen.h",
           "wsecho.h", "offload.h", "wsloop.h"]  # fmt: skip
CDEF = (RING_CDEF + RINGBENCH_CDEF + WSMASK_CDEF + UTF8_CDEF + TLS_CDEF + LOADGEN_CDEF
        + WSECHO_CDEF + OFFLOAD_CDEF + WSLOOP_CDEF)  # fmt: skip

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
