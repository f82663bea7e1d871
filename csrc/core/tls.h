/*
 * tls.h - TLS contexts and connections over four selectable transports, with
 * compound calls so that one crossing from Python does "receive + decrypt"
 * or "encrypt + send".
 *
 * Transports (how ciphertext reaches the SSL object):
 *   TLS_RING  our ring BIO (ringbio.h): with a socket, direct readv/send and
 *             the rings as overflow; without one, sans-IO through the rings;
 *   TLS_MEM   two BIO_s_mem, as Python's ssl.MemoryBIO/SSLObject does;
 *   TLS_PAIR  BIO_new_bio_pair, the seed report's design;
 *   TLS_FD    SSL_set_fd: OpenSSL reads and writes the socket itself.
 * MEM and PAIR with a socket pump through a scratch buffer (recv, BIO_write;
 * BIO_read, send), as an event loop around them does.
 *
 * Status codes: calls that move data return a byte count >= 0, or one of
 * enum tls_status (< 0).  WANT_* are not errors: retry when the socket is
 * ready (or, sans-IO, after feeding/taking ciphertext).  After TLS_ERROR the
 * connection is dead; tls_conn_error() says why.
 */
#ifndef WSSTLS_TLS_H
#define WSSTLS_TLS_H

#include <stddef.h>
#include <stdint.h>

#include <openssl/ssl.h>

#include "records.h"
#include "ring.h"

enum tls_transport {
    TLS_RING = 0,
    TLS_MEM = 1,
    TLS_PAIR = 2,
    TLS_FD = 3,
};

enum tls_status {
    TLS_WANT_READ = -1,
    TLS_WANT_WRITE = -2,
    TLS_CLOSED = -3, /* the peer sent close_notify */
    TLS_EOF = -4,    /* the transport ended without close_notify */
    TLS_ERROR = -5,  /* protocol, verification or socket error */
    TLS_WANT_ASYNC = -6, /* an ASYNC job paused the call: repeat the same call
                            when tls_async_fd() is readable */
};

enum tls_conn_flags {
    TLS_READ_AHEAD = 1,     /* let OpenSSL read more than one record at once */
    TLS_RING_VIA_RING = 2,  /* TLS_RING with a socket: no direct I/O, every byte
                               through the rings (for measuring the difference) */
    TLS_MIRRORED_RINGS = 4, /* ciphertext rings in mirrored mode */
    TLS_CALLER_IO = 8,      /* TLS_RING with a socket: compound calls never touch
                               it; the caller's thread moves ciphertext with
                               tls_fill/tls_flush while another thread may run
                               the SSL object (the rings are the hand-off) */
};

/* ------------------------------------------------------------- contexts */

/* A context with TLS 1.2 minimum, no compression, no renegotiation,
 * partial writes and moving write buffers allowed. NULL on failure. */
SSL_CTX *tls_ctx_new(int server);
void tls_ctx_free(SSL_CTX *ctx);
/* Certificate chain (leaf first) and private key, PEM in memory (an
 * encrypted key fails: no passphrase is asked for).  Returns TLS_PEM_OK, or
 * which part failed (the error queue has OpenSSL's reasons). */
enum tls_pem_result {
    TLS_PEM_OK = 1,
    TLS_PEM_FAILED = 0,        /* anything else (memory, the context) */
    TLS_PEM_BAD_CHAIN = -1,    /* no certificate could be read from chain */
    TLS_PEM_BAD_KEY = -2,      /* no private key could be read from key */
    TLS_PEM_KEY_MISMATCH = -3, /* the key is not the leaf certificate's */
};
int tls_ctx_use_pem(SSL_CTX *ctx, const char *chain, size_t chain_len, const char *key,
                    size_t key_len);
/* verify: 0 none, 1 verify the peer (client: the server; server: require a
 * client certificate).  Trust: cafile and/or ca_pem, or the system's default
 * paths when both are NULL. */
int tls_ctx_set_verify(SSL_CTX *ctx, int verify, const char *cafile, const char *ca_pem,
                       size_t ca_len);
int tls_ctx_set_versions(SSL_CTX *ctx, int min_version, int max_version);
/* ALPN in wire format (length-prefixed names): offered by a client, the
 * server's preference list for selection on a server. */
int tls_ctx_set_alpn(SSL_CTX *ctx, const unsigned char *wire, size_t len);
int tls_ctx_set_ciphers(SSL_CTX *ctx, const char *tls12, const char *tls13);
int tls_ctx_set_num_tickets(SSL_CTX *ctx, size_t n);
/* Who seals and opens application data: 0 OpenSSL (SSL_read/SSL_write),
 * 1 direct: connections over TLS_RING hand over to wsstls's own TLS 1.3
 * record layer (records.h) after the handshake, when OpenSSL holds nothing
 * (TLS 1.2, other suites, other transports stay on OpenSSL's). */
int tls_ctx_set_record_path(SSL_CTX *ctx, int direct);

/* How a context's records are sealed and opened (tls_ctx_new_crypto):
 *   TLS_CRYPTO_PIPELINE  TLS 1.2 AES-GCM by our pipeline-capable cipher
 *                        (pipecipher.h): with max_pipelines > 1, one
 *                        SSL_write's records are sealed in one call, in
 *                        parallel on the crypto pool; TLS 1.3 stays at one;
 *   TLS_CRYPTO_ASYNC     SSL_MODE_ASYNC with our provider's AES-GCM
 *                        (asyncjob.h): records of at least the threshold
 *                        pause the SSL call (TLS_WANT_ASYNC) while a pool
 *                        worker seals them.  A call that can meet no such
 *                        record runs out of a job (SSL_MODE_ASYNC off for
 *                        it): a write shorter than the threshold, a read
 *                        whose next records' headers, seen in the incoming
 *                        ciphertext before OpenSSL takes them, are all
 *                        shorter (ring and mem transports; fd and pair
 *                        cannot be seen, so their reads always run in a
 *                        job).  The mode is never switched while a call is
 *                        paused. */
enum tls_crypto_flags {
    TLS_CRYPTO_PIPELINE = 1,
    TLS_CRYPTO_ASYNC = 2,
};

/* tls_ctx_new with crypto flags; threads: the crypto pool's workers when
 * this context starts it (< 1: one less than the usable CPUs).  NULL on
 * failure. */
SSL_CTX *tls_ctx_new_crypto(int server, int crypto, int threads, size_t async_threshold);
/* Record sizes: max_pipelines (0 = off), split_send_fragment and
 * max_send_fragment (0 = OpenSSL's default), the default read buffer length
 * (0 = OpenSSL's; pipelined reads need about pipelines x 16,709 bytes). */
int tls_ctx_set_records(SSL_CTX *ctx, size_t pipelines, size_t split, size_t max_fragment,
                        size_t read_buffer);

/* Process-wide crypto counters: the pipelined cipher, the ASYNC pauses, the pool. */
struct tls_crypto_counters {
    uint64_t cipher_calls, cipher_records, cipher_max_records;
    uint64_t records_hist[6]; /* records per call: 1, 2, 3-4, 5-8, 9-16, 17-32 */
    uint64_t parallel_calls, async_cipher_calls;
    uint64_t pauses, resumes, inline_ops, offloaded, want_async, job_calls, direct_calls;
    uint64_t pool_threads, dispatches, worker_tasks, caller_tasks, worker_ns, wait_ns;
};
void tls_crypto_counters(struct tls_crypto_counters *out);
void tls_crypto_reset_counters(void);

/* An RSA self-signed certificate for `name` (DNS and, when it parses as
 * one, IP subject alternative names), made with OpenSSL's own API.  The
 * PEM strings are NUL-terminated; free them with tls_free. */
int tls_self_signed(const char *name, int bits, int days, char **cert_pem, size_t *cert_len,
                    char **key_pem, size_t *key_len);
void tls_free(void *p);

/* The thread's OpenSSL error queue as one message (cleared); 0 if empty. */
size_t tls_last_error(char *buf, size_t len);

/* ----------------------------------------------------------- connections */

typedef struct tls_conn tls_conn;

/* fd < 0: sans-IO (not with TLS_FD).  ring_capacity: each ciphertext ring
 * (TLS_RING) or the pair buffer (TLS_PAIR).  hostname: client SNI and
 * certificate name check (DNS name or IP address), may be NULL.
 * NULL on failure (tls_last_error says why). */
tls_conn *tls_conn_new(SSL_CTX *ctx, int transport, int fd, size_t ring_capacity, int flags,
                       const char *hostname);
void tls_conn_free(tls_conn *c);

/* 0 when the handshake is complete, else a status. */
int tls_handshake(tls_conn *c);
/* Decrypt into buf: bytes, or a status when none were available. */
long tls_read(tls_conn *c, void *buf, size_t n);
/* Decrypt everything available into a plaintext ring (SSL_read straight
 * into its free space): bytes added, or a status when none were. */
long tls_read_ring(tls_conn *c, ring *plain);
/* Encrypt n bytes (and send them, with a socket): bytes accepted, which
 * may be fewer under backpressure, or a status when none were. */
long tls_write(tls_conn *c, const void *buf, size_t n);
/* Encrypt (and send) up to n readable bytes of a ring straight from its
 * memory, and consume what was accepted: bytes, or a status when none. */
long tls_write_ring(tls_conn *c, ring *plain, size_t n);
/* TLS 1.3: send a KeyUpdate (request: the peer must answer with its own)
 * and use the next write key: 0, or a status. */
int tls_key_update(tls_conn *c, int request);
/* TLS_RING with a socket: one readv of everything available into the
 * incoming ring.  Bytes read, 0 when the ring is full, or a status
 * (TLS_WANT_READ when the socket had nothing, TLS_EOF, TLS_ERROR). */
long tls_fill(tls_conn *c);
/* Ciphertext received but not yet decrypted (TLS_RING's incoming ring). */
size_t tls_pending_in(tls_conn *c);
/* Send queued ciphertext: bytes sent (0 if nothing queued) or a status. */
long tls_flush(tls_conn *c);
/* Send close_notify: 1 when the peer's was received too, 0 when not
 * (yet), or a status. */
int tls_shutdown(tls_conn *c);

/* Sans-IO: ciphertext from the peer in, ciphertext for the peer out. */
size_t tls_feed(tls_conn *c, const void *data, size_t n);
void tls_feed_eof(tls_conn *c);
size_t tls_take(tls_conn *c, void *buf, size_t n);
/* Ciphertext waiting to be sent (sans-IO: to be taken). */
size_t tls_pending_out(tls_conn *c);
/* 1 when a read would make progress without the socket: decrypted bytes or
 * records buffered inside OpenSSL, or ciphertext already taken from the
 * socket into the transport (the ring, the memory BIO, the pair). */
int tls_has_pending(tls_conn *c);

/* ASYNC contexts (TLS_CRYPTO_ASYNC).  The SSL call that returned
 * TLS_WANT_ASYNC is paused inside its job: wait until tls_async_fd() is
 * readable, then repeat exactly that call (same buffer; OpenSSL resumes it
 * with its first arguments whatever the retry passes).  Meanwhile any other
 * call that would run the SSL object returns TLS_WANT_ASYNC (reads:
 * TLS_WANT_READ) untouched, so a read never resumes a paused write.
 * Closing a paused connection: tls_async_finish() first, while the paused
 * call's buffer is still valid (it waits for the pool and completes the call,
 * which may fail if the socket is gone); tls_conn_free without it only waits
 * for the pool and leaves the job unresumed (its 32 KiB stack is not reused). */
enum tls_async_op {
    TLS_OP_NONE = 0,
    TLS_OP_HANDSHAKE = 1,
    TLS_OP_READ = 2,
    TLS_OP_WRITE = 3,
    TLS_OP_SHUTDOWN = 4,
};
/* Complete a paused call (waiting for the pool) before freeing or reusing its buffer. */
void tls_async_finish(tls_conn *c);
/* The paused call (enum tls_async_op), TLS_OP_NONE when none. */
int tls_async_paused(const tls_conn *c);
/* The connection's async fd (readable: the paused call can go on), -1 when
 * the context is not ASYNC. */
int tls_async_fd(const tls_conn *c);
/* SSL_get_changed_async_fds: fds to add to / remove from a poller since the
 * last call (up to `max` each).  0, or -1 on failure. */
int tls_async_changed_fds(tls_conn *c, int *add, size_t *nadd, int *del, size_t *ndel,
                          size_t max);
struct tls_async_stats {
    uint64_t pauses, resumes, want_async, offloaded, inline_ops, job_calls, direct_calls;
};
/* This connection's ASYNC counters (zeros when not ASYNC). */
void tls_async_stats(const tls_conn *c, struct tls_async_stats *out);

/* After a status: the error message (TLS_ERROR), the socket's errno. */
const char *tls_conn_error(const tls_conn *c);
int tls_conn_errno(const tls_conn *c);

/* Negotiated parameters, NULL before the handshake ends (static strings). */
const char *tls_version(const tls_conn *c);
const char *tls_cipher(const tls_conn *c);
/* The selected ALPN protocol into buf (not terminated): its length, 0 none. */
size_t tls_alpn(const tls_conn *c, char *buf, size_t n);
/* The peer's certificate as DER (free with tls_free): length, 0 if none. */
size_t tls_peer_cert(const tls_conn *c, unsigned char **der);
int tls_session_reused(const tls_conn *c);

/* The OpenSSL this extension runs with ("OpenSSL 3.0.19 27 Jan 2026"), a static
 * string: the copy ledger's exact counts hold for the versions they were measured on. */
const char *tls_openssl_version(void);
/* The record path: "openssl", "direct", or "handover" until a direct
 * context's handshake is done; why a direct context's connection stayed on
 * OpenSSL's ("" if it did not); the direct layer's counters (zeros on
 * OpenSSL's path). */
const char *tls_records(const tls_conn *c);
const char *tls_records_why(const tls_conn *c);
void tls_records_counters(const tls_conn *c, struct records_counters *out);

/* ---------------------------------------------------------------- memory */

/* Give back what an idle connection does not need: its ciphertext rings
 * (TLS_RING), the pumps' ring and scratch buffer (MEM, PAIR) and OpenSSL's
 * record buffers (SSL_free_buffers), about 34 KB plus the rings.  Only with
 * nothing in flight: the handshake done, no ciphertext or plaintext buffered
 * either way, the connection not failed, OpenSSL's own record layer.
 * 1 parked (or already), 0 not now.  Every call that moves bytes takes the
 * buffers again first (tls_unpark); OpenSSL makes its own again when it
 * next reads or writes.  TLS_CALLER_IO: from the thread that owns the
 * socket, while no other thread runs the SSL object. */
int tls_park(tls_conn *c);
/* Take the buffers again now: 0, or TLS_ERROR when memory is short (the
 * connection is then failed). */
int tls_unpark(tls_conn *c);
int tls_parked(const tls_conn *c);

/* ------------------------------------------------------------ the ledger */

/* What moved through the connection, as counted by wsstls itself: system
 * calls and kernel bytes, copies into and out of its rings, and the copies
 * its MEM/PAIR pumps ask of OpenSSL's BIOs.  OpenSSL's own copies inside
 * SSL_read/SSL_write are measured separately (wsstls.memcount). */
struct tls_ledger {
    uint64_t rx_syscalls, rx_bytes, rx_direct;
    uint64_t tx_syscalls, tx_bytes, tx_direct;
    uint64_t eagain;
    uint64_t ring_copies, ring_bytes;  /* ciphertext rings (TLS_RING) */
    uint64_t bio_copies, bio_bytes;    /* BIO_write/BIO_read by the MEM/PAIR pumps */
    uint64_t plain_in, plain_out;      /* plaintext bytes decrypted / encrypted */
    uint64_t reads, writes;            /* SSL_read / SSL_write calls that moved data */
};

void tls_get_ledger(tls_conn *c, struct tls_ledger *out);
void tls_reset_ledger(tls_conn *c);

#endif
