/*
 * tlsconn.h - the inside of a tls_conn, for the files that implement one of
 * its two pluggable halves (not part of the extension's API: cffi never
 * reads it).
 *
 * A connection is put together from two tables of operations, chosen once in
 * tls_conn_new, as Redis's ae.c keeps its polling backends: nothing outside
 * that choice asks which transport or record layer a connection has.
 *
 *   struct tls_transport_ops  how ciphertext moves between the socket (or
 *                             the sans-IO caller) and the SSL object:
 *                             TLS_RING, TLS_MEM, TLS_PAIR, TLS_FD (tls.c);
 *   struct tls_record_ops     who seals and opens application-data records
 *                             once the handshake is done: OpenSSL's
 *                             SSL_read/SSL_write (tls.c), or a record layer
 *                             of wsstls's own that takes over after the
 *                             handshake by setting c->rec.  The handshake
 *                             itself is always OpenSSL's.
 *
 * Statuses: every operation that can fail returns an enum tls_status (< 0)
 * and leaves the reason with tls_conn_fail(); a new kind of waiting (say,
 * TLS_WANT_ASYNC) is a new value that the compound calls pass through to the
 * caller like TLS_WANT_WRITE.
 */
#ifndef WSSTLS_TLSCONN_H
#define WSSTLS_TLSCONN_H

#include <stddef.h>
#include <stdint.h>

#include <openssl/ssl.h>

#include "counter.h"
#include "records.h"
#include "ring.h"
#include "tls.h"

struct tls_transport_ops {
    const char *name;
    /* Give c->ssl its BIOs (and c its rings) for c->fd (< 0: sans-IO) and
     * set c->pumped.  1, or 0 with OpenSSL's error queue saying why. */
    int (*attach)(tls_conn *c, size_t ring_capacity);
    /* Free what SSL_free does not (called after it). */
    void (*detach)(tls_conn *c);
    /* c->pumped only: one receive from the socket into the transport.
     * > 0 bytes, 0 nothing moved (would block, no room; or the end of the
     * stream, reported once as 1 so that the caller's retry sees it), or a
     * status. */
    long (*pump_in)(tls_conn *c);
    /* With a socket: send queued ciphertext.  Bytes sent, or a status
     * (TLS_WANT_WRITE while some is still queued). */
    long (*pump_out)(tls_conn *c);
    /* tls_fill (TLS_CALLER_IO): see tls.h. */
    long (*fill)(tls_conn *c);
    /* Sans-IO: see tls_feed, tls_feed_eof, tls_take in tls.h. */
    size_t (*feed)(tls_conn *c, const void *data, size_t n);
    void (*feed_eof)(tls_conn *c);
    size_t (*take)(tls_conn *c, void *buf, size_t n);
    /* Ciphertext taken from the peer and not yet read by the record layer. */
    size_t (*pending_in)(const tls_conn *c);
    /* Ciphertext waiting for the socket (sans-IO: to be taken). */
    size_t (*pending_out)(const tls_conn *c);
    /* A new readiness event: the socket may have data again. */
    void (*new_batch)(tls_conn *c);
    /* 1 when a read could only find nothing (nothing buffered, the socket
     * known drained in this batch), so a futile SSL_read can be skipped. */
    int (*drained)(const tls_conn *c);
    /* ASYNC gates: the incoming ciphertext OpenSSL has not taken, as up to
     * two spans (a ring transport with a socket of its own reads the socket
     * into rx first); -1 when it cannot be seen (NULL: never). */
    int (*peek_in)(tls_conn *c, struct iovec iov[2]);
    /* ... and at most n of it for OpenSSL until called again with SIZE_MAX
     * (NULL: no such limit). */
    void (*limit_in)(tls_conn *c, size_t n);
    /* errno of the transport's last failed socket call, 0 if none. */
    int (*last_errno)(const tls_conn *c);
    /* The kernel half of the ledger: rx/tx system calls, bytes, direct
     * bytes, EAGAINs. */
    void (*kernel)(const tls_conn *c, struct tls_ledger *out);
    void (*reset_kernel)(tls_conn *c);
    /* tls_park: free the transport's buffers (they hold nothing: checked);
     * tls_unpark: make them again, 1, or 0 when memory is short. */
    void (*park)(tls_conn *c);
    int (*unpark)(tls_conn *c);
    /* Why direct records cannot run over this transport (they take over
     * the connection's ciphertext rings), or NULL when they can. */
    const char *no_direct;
};

struct tls_record_ops {
    const char *name;
    /* Decrypt up to n bytes into buf: bytes (> 0), or a status. */
    long (*read)(tls_conn *c, void *buf, size_t n);
    /* Decrypt into plain's free space (both spans where it wraps): bytes
     * (> 0), or a status; adds to c->reads per read that moved data. */
    long (*read_ring)(tls_conn *c, ring *plain);
    /* Encrypt up to n bytes from buf: bytes accepted (> 0), or a status. */
    long (*write)(tls_conn *c, const void *buf, size_t n);
    /* 1 when decrypted bytes or whole records wait inside the layer. */
    int (*pending)(const tls_conn *c);
    /* Send close_notify, and read the peer's: 1 both done, 0 not yet, or a
     * status. */
    int (*shutdown)(tls_conn *c);
    /* SSL_do_handshake has just returned 1: the moment a record layer of
     * our own takes over (sets c->rec). */
    void (*handshake_done)(tls_conn *c);
    /* TLS 1.3 KeyUpdate (request: ask the peer for one too), sent now when
     * the transport can: 0, or a status. */
    int (*key_update)(tls_conn *c, int request);
};

struct tls_conn {
    SSL *ssl;
    const struct tls_transport_ops *io;
    const struct tls_record_ops *rec;
    int fd, flags;
    int pumped; /* the compound calls move ciphertext between the socket and
                   the BIO (MEM, PAIR, RING via its rings), rather than the BIO
                   doing the socket I/O itself; set by attach */
    ring *rx, *tx;   /* TLS_RING: the ciphertext rings; MEM/PAIR: tx holds
                        what send() refused */
    BIO *ringbio;    /* TLS_RING (owned by ssl) */
    BIO *net_in;     /* MEM: the read BIO (owned by ssl); PAIR: our end */
    BIO *net_out;    /* MEM: the write BIO (owned by ssl); PAIR: our end */
    unsigned char *scratch;
    int read_status; /* sticky once the read side ended: CLOSED, EOF, ERROR */
    int dead;        /* TLS_ERROR seen: every call fails */
    int pumped_eof;  /* the pump read the end of the socket's stream */
    int peer_closed; /* the peer's close_notify alert was read (the SSL's info
                        callback is the connection's: tls.c) */
    int sys_errno;   /* a pump's failed socket call */
    int fd_errno;    /* TLS_FD: the socket BIO's last failed call */
    int parked;      /* tls_park: the buffers below and OpenSSL's are freed */
    size_t ring_capacity;          /* of rx and tx, to make them again */
    uint64_t parked_ring_copies;   /* ring copies counted by rings since freed */
    uint64_t parked_ring_bytes;
    int queue_checked; /* the thread's error queue is known empty in this call */
    records *direct;   /* the direct record layer, once it took over */
    records_tap *tap;  /* until then: what it needs from the handshake */
    char records_why[96]; /* why the connection stays on OpenSSL's records */
    char error[512];
    /* FD: kernel traffic seen through the socket BIO's callback; MEM/PAIR:
     * the pumps'.  TLS_RING keeps its own in the ring BIO. */
    counter rx_syscalls, rx_bytes, tx_syscalls, tx_bytes, eagain;
    counter bio_copies, bio_bytes, plain_in, plain_out, reads, writes;
    /* ASYNC contexts (asyncjob.h): the connection's pause state, and the
     * SSL call paused in a job (enum tls_async_op; its arguments, which the
     * resumed call uses whatever the retry passes). */
    struct async_conn *async;
    int jobs_on;        /* SSL_MODE_ASYNC is set on ssl now */
    int job_pipes;      /* records one cipher call may take (pipelined: up to 32) */
    int read_ahead;     /* OpenSSL may take more than one record at once */
    int held_small;     /* what OpenSSL holds unread came through the gate: small */
    int key_update_due; /* a KeyUpdate asked for while paused (1, 2: requested) */
    int paused;
    void *paused_buf;
    size_t paused_len;
};

/* Record a failure: the status, returned, and the first failure's reason
 * (what == NULL: c->error was written already). */
int tls_conn_fail(tls_conn *c, int status, const char *what);

#endif
