/*
 * ring.h - a byte ring buffer with partial-write semantics.
 *
 * Capacity is a power of two; head and tail are monotonic byte counters, so
 * len = head - tail and an index into the data is (counter & mask).  Writes
 * are partial: ring_write() copies what fits and returns that count, a full
 * ring returns 0.
 *
 * Concurrency: lock-free for one producer thread and one consumer thread.
 *   producer side: write, write_iov, writable_spans, reserve, commit, read_fd
 *   consumer side: read, peek, discard, read_iov, readable_spans,
 *                  peek_region, consume, write_fd
 *   either side / any thread: cap, len, writable, empty, full, stats
 *   neither side running: reset, reset_stats, destroy
 * The memory ordering is documented at each barrier in ring.c.
 *
 * Mirrored mode (RING_MIRRORED): the data area is mapped twice back to back,
 * so the readable and the writable region are each one contiguous span at
 * every offset.  The capacity is then also a multiple of the page size.
 *
 * Errors: constructors return NULL with errno set; fd operations return a
 * negative errno; commit/consume return -1 (nothing changed) on a count
 * larger than what is there.
 */
#ifndef WSSTLS_RING_H
#define WSSTLS_RING_H

#include <stddef.h>
#include <stdint.h>
#include <sys/types.h>
#include <sys/uio.h>

typedef struct ring ring;

enum ring_flags {
    RING_MIRRORED = 1,
};

/* Largest capacity ring_create() accepts (before rounding). */
size_t ring_max_capacity(void);

/* min_capacity >= 1, rounded up to a power of two (and to the page size
 * when mirrored).  NULL with errno EINVAL (size), ENOMEM, or the error of
 * memfd_create/mmap for a mirrored ring. */
ring *ring_create(size_t min_capacity, int flags);
void ring_destroy(ring *r); /* NULL is a no-op */
void ring_reset(ring *r);   /* empties the ring; stats are kept */

size_t ring_cap(const ring *r);
int ring_mirrored(const ring *r);
size_t ring_len(const ring *r);
size_t ring_writable(const ring *r);
int ring_empty(const ring *r);
int ring_full(const ring *r);

/* Copying operations; each returns the number of bytes moved. */
size_t ring_write(ring *r, const void *src, size_t n);
size_t ring_read(ring *r, void *dst, size_t n);
size_t ring_peek(ring *r, void *dst, size_t n);
size_t ring_discard(ring *r, size_t n);

/* Scatter/gather views as iovecs: 0, 1 or 2 entries, in order. */
int ring_read_iov(ring *r, struct iovec iov[2]);  /* readable bytes */
int ring_write_iov(ring *r, struct iovec iov[2]); /* free space */

/* The same views as (offset, length) pairs relative to ring_data(), with the
 * readable side limited to `limit` bytes: out = {off0, len0, off1, len1}. */
int ring_readable_spans(ring *r, size_t limit, size_t out[4]);
int ring_writable_spans(ring *r, size_t out[4]);

/* Zero-copy: the first contiguous span of free space (producer) or of
 * readable bytes (consumer), then commit/consume what was used. */
void *ring_reserve(ring *r, size_t *len);
int ring_commit(ring *r, size_t n);
const void *ring_peek_region(ring *r, size_t *len);
int ring_consume(ring *r, size_t n);

/* One readv(2) into all free space: > 0 bytes read, 0 at EOF, -EAGAIN when
 * it would block, -ENOBUFS when the ring is full, other -errno on error.
 * EINTR is retried. */
ssize_t ring_read_fd(ring *r, int fd);
/* One gather write of all readable bytes (sendmsg with MSG_NOSIGNAL on a
 * socket, writev otherwise); consumes what the kernel took.  0 when the
 * ring is empty, -EAGAIN when it would block, other -errno on error. */
ssize_t ring_write_fd(ring *r, int fd);

/* Copy counters: memcpy calls the ring made and the bytes they moved
 * (kernel copies by readv/writev are not counted here).  out = {copies,
 * bytes}. */
void ring_stats(const ring *r, uint64_t out[2]);
void ring_reset_stats(ring *r);

/* Layout for zero-copy views: the data area starts ring_data_offset()
 * bytes after the ring pointer and spans ring_data_span() bytes (2 * cap
 * when mirrored). */
unsigned char *ring_data(const ring *r);
size_t ring_data_offset(const ring *r);
size_t ring_data_span(const ring *r);

#endif
