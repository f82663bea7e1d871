/*
 * ringbio.h - an OpenSSL BIO over two rings: reads drain an incoming ring
 * (ciphertext from the peer), writes feed an outgoing ring (ciphertext for
 * the peer).
 *
 * With a socket attached the rings become overflow stores rather than a
 * mandatory detour (flags below):
 *   RINGBIO_READ_FD   when the incoming ring is empty, one readv(2) fills
 *                     OpenSSL's buffer directly and puts whatever else the
 *                     socket holds into the ring (read at most once per
 *                     batch once the socket is known drained);
 *   RINGBIO_WRITE_FD  write-through: records go straight to the socket and
 *                     only what the kernel refuses is kept in the outgoing
 *                     ring, in order, for ringbio_flush().
 * Without them the BIO is sans-IO: the caller moves ciphertext in and out of
 * the rings (in offload mode the event loop thread does, while a worker runs
 * the SSL object: each ring then has one producer and one consumer thread).
 *
 * The rings are the caller's: the BIO reads and writes them through the
 * caller's pointers (so the caller may free them while the connection is
 * parked and set them NULL), and with RINGBIO_LAZY (a socket for both ways)
 * makes a missing one when it needs it, into the caller's pointer: the
 * outgoing ring when the kernel refuses a record, the incoming ring once a
 * read filled OpenSSL's buffer.  A connection that never meets either has
 * no rings at all.
 */
#ifndef WSSTLS_RINGBIO_H
#define WSSTLS_RINGBIO_H

#include <stdint.h>
#include <sys/types.h>

#include <openssl/bio.h>

#include "ring.h"

enum ringbio_flags {
    RINGBIO_READ_FD = 1,
    RINGBIO_WRITE_FD = 2,
    RINGBIO_LAZY = 4, /* with both: rings made when needed (see above) */
};

/* Kernel traffic and where ciphertext went, for the copy ledger. */
struct ringbio_counters {
    uint64_t rx_syscalls;  /* readv calls, including those that found nothing */
    uint64_t rx_bytes;     /* bytes the kernel copied in */
    uint64_t rx_direct;    /* ... of which straight into OpenSSL's buffer */
    uint64_t tx_syscalls;  /* sendmsg/writev calls */
    uint64_t tx_bytes;     /* bytes the kernel took */
    uint64_t tx_direct;    /* ... of which straight from OpenSSL's buffer */
    uint64_t eagain;       /* calls that would have blocked */
};

/* rx, tx: where the caller keeps the rings (the rings may be NULL with
 * RINGBIO_LAZY); capacity, ring_flags: of the rings made when needed.  NULL
 * on allocation failure (OpenSSL error queue set). */
BIO *ringbio_new(ring **rx, ring **tx, size_t capacity, int ring_flags, int fd, int flags);

/* Loop-thread side of a sans-IO BIO with a socket: readv into rx (one call),
 * and send what tx holds.  Same returns as ring_read_fd/ring_write_fd; an
 * EOF is remembered and reported to OpenSSL once rx is drained. */
ssize_t ringbio_fill(BIO *b);
ssize_t ringbio_flush(BIO *b);

/* A record layer of our own with a socket (READ_FD), or a look at the next
 * records before OpenSSL reads them: one readv into rx, unless the socket
 * was found drained in this batch (-EAGAIN then without a system call); a
 * read that leaves rx room drains it; a socket error is kept for OpenSSL's
 * next read of an empty rx to fail with.  Returns as ringbio_fill. */
ssize_t ringbio_read_batch(BIO *b);

/* OpenSSL's reads take at most n more bytes, from rx only (no socket
 * read), until the limit is set again; SIZE_MAX: no limit (the default).
 * Once the end of the stream was seen the limit no longer holds. */
void ringbio_limit_read(BIO *b, size_t n);

void ringbio_set_eof(BIO *b);       /* the peer will send no more */
int ringbio_eof_seen(BIO *b);       /* ... even with bytes still in rx */
int ringbio_eof(BIO *b);            /* EOF seen and rx empty */
void ringbio_new_batch(BIO *b);     /* the socket may have data again */
/* 1 when a read could only find nothing: rx is empty and (with a socket)
 * the socket was found drained in this batch.  Lets a caller skip a futile
 * SSL_read. */
int ringbio_idle(BIO *b);
int ringbio_last_errno(BIO *b);     /* errno of the last failed socket call */
void ringbio_counters(BIO *b, struct ringbio_counters *out);
void ringbio_reset_counters(BIO *b);

#endif
