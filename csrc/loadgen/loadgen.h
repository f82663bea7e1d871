/*
 * loadgen.h - the WebSocket echo load generator (the benchmark client).
 *
 * The method of the seed report's Go client (gorilla/websocket): every
 * connection sends one message of N bytes, waits for its echo, checks it
 * byte for byte and sends the next; only round trips completed inside the
 * measured window (after the warm-up) are counted.
 *
 * One call runs one event loop on the calling thread: one epoll instance,
 * level-triggered, over non-blocking sockets with TCP_NODELAY.  Per
 * connection: connect, TLS handshake (tls.h, TLS_RING transport on the
 * socket) for wss, the WebSocket opening handshake (random key, status 101,
 * Upgrade / Connection / Sec-WebSocket-Accept checked; no extension and no
 * subprotocol accepted), then the echo loop with masked client frames (a
 * fresh mask per frame) and a strict, incremental parse of the server's
 * frames straight from the plaintext ring.  Fragmented echoes are accepted,
 * pings answered, pongs ignored.
 *
 * Timeline: every connection starts connecting at once; when each one is
 * open or has failed (at most connect_timeout_ns), the warm-up begins
 * (messages already flow on the connections that are open), then the
 * measured window of duration_ns.  After it - or on the stop flag, or when
 * no connection is left - each open connection finishes the frame it is
 * sending, sends a close frame (1000), waits up to 1 s for the server's
 * close frame, sends TLS close_notify and closes.
 *
 * Failures: anything that goes wrong before a connection completes the
 * WebSocket handshake (connect refused or timed out, TLS handshake, an
 * upgrade refused or malformed) counts in connect_failures; anything after
 * it (a protocol surprise: wrong opcode, mask bit set, wrong length, bytes
 * that differ from the message, a close frame, EOF, a socket or TLS error)
 * counts in errors, whenever it happens before the close sequence (warm-up
 * included; failures while closing are not counted).  Either way that
 * connection is closed and NOT reconnected: a broken server shows as about
 * one error per connection rather than as a storm of handshakes, and the
 * run ends early once no connection is left.
 *
 * Latency: from just before a message is written to the moment its echo is
 * complete (CLOCK_MONOTONIC).  Every sample of the window is stored (a
 * preallocated array that grows by doubling), so the percentiles are exact:
 * nearest rank over the sorted samples, and loadgen_percentiles() merges
 * the samples of several results (threads) exactly as well.
 *
 * Thread safety: loadgen_run() keeps all its state on the calling thread,
 * so several threads may each run one (cffi releases the GIL); they may
 * share the SSL_CTX and the stop flag.
 */
#ifndef WSSTLS_LOADGEN_H
#define WSSTLS_LOADGEN_H

#include <stddef.h>
#include <stdint.h>

#include <openssl/ssl.h>

struct loadgen_config {
    const char *host;        /* IPv4 address, dotted quad */
    int port;                /* 1 .. 65535 */
    const char *path;        /* request target, starts with '/' */
    const char *host_header; /* value of the Host header */
    int use_tls;             /* 1: wss (ssl_ctx required), 0: ws */
    SSL_CTX *ssl_ctx;        /* a client context; verification is its business */
    const char *server_name; /* TLS: SNI and certificate name, NULL for none */
    int connections;         /* 1 .. 1048576 */
    size_t message_size;     /* payload bytes per message, 0 .. 1 GiB */
    int text;                /* 1: text frames (printable ASCII), 0: binary */
    uint64_t warmup_ns;      /* after setup, before the window */
    uint64_t duration_ns;    /* the measured window, > 0 */
    uint64_t connect_timeout_ns; /* for all connections to finish their handshakes, > 0 */
    uint64_t deadline_ns;    /* hard limit for the whole call from its start; 0: connect
                                timeout + warm-up + duration + 5 s */
    int cpu;                 /* pin the calling thread to this CPU for the call (its previous
                                affinity is restored on return), -1: no pinning */
    int *stop;               /* NULL, or a flag loadgen_request_stop() sets to end early */
    uint64_t seed;           /* payloads and masks (not the handshake keys); 0: random */
    int *phase;              /* NULL, or where the run publishes its phase as it changes:
                                1 warming up, 2 measuring, 3 the window closed (read it
                                with loadgen_phase() from another thread) */
};

struct loadgen_result {
    uint64_t messages;         /* round trips completed in the measured window */
    uint64_t bytes;            /* their payload bytes, one direction */
    uint64_t warmup_messages;  /* round trips completed before the window */
    uint64_t errors;           /* connections lost after their handshake */
    uint64_t connect_failures; /* connections that never completed the handshake */
    uint64_t connections;      /* connections that completed the WebSocket handshake */
    uint64_t lat_sum_ns;       /* latencies of the window: sum, min, average, */
    uint64_t lat_min_ns;       /* exact percentiles (nearest rank) and max */
    uint64_t lat_avg_ns;
    uint64_t lat_p50_ns;
    uint64_t lat_p99_ns;
    uint64_t lat_max_ns;
    uint64_t cpu_ns;           /* user + system CPU time of the thread in the window */
    uint64_t wall_ns;          /* length of the window (shorter if it ended early) */
    int stopped;               /* the stop flag ended the run */
    int timed_out;             /* the hard deadline ended the run */
    int samples_dropped;       /* the sample array could not grow: percentiles are
                                  over the first nsamples round trips only */
    uint64_t *samples;         /* latencies of the window (ns), sorted ascending;
                                  owned: release with loadgen_result_free() */
    size_t nsamples;
    char error[256];           /* the first failure, "" if none */
};

/* Run the benchmark.  0 when it ran (per-connection failures are counted in
 * *out, not returned); a negative errno when it could not (-EINVAL: a bad
 * config, -ENOMEM, or the failure of epoll_create1 / sched_setaffinity),
 * with the reason in out->error.  *out is always initialised: call
 * loadgen_result_free() on it either way. */
int loadgen_run(const struct loadgen_config *cfg, struct loadgen_result *out);

/* A run's published phase (see loadgen_config.phase), from any thread. */
int loadgen_phase(const int *phase);

/* Ask the runs watching `flag` to end now (safe from any thread). */
void loadgen_request_stop(int *flag);

/* Free the samples (idempotent). */
void loadgen_result_free(struct loadgen_result *r);

/* Exact percentiles over the samples of n results together: out[i] is the
 * nearest-rank q[i]-quantile (q in [0, 1]; 0 gives the minimum, 1 the
 * maximum), 0 when there are no samples.  0, -EINVAL or -ENOMEM. */
int loadgen_percentiles(const struct loadgen_result *const *results, size_t n, const double *q,
                        size_t nq, uint64_t *out);

#endif
