/*
 * ring.c - the byte ring buffer (see ring.h for the contract).
 *
 * Ordering, as in the Linux kfifo: each index has exactly one writer.
 *   - The producer fills bytes, then publishes head with a release store;
 *     the consumer loads head with acquire, so the bytes it then reads are
 *     the ones the producer wrote.
 *   - The consumer reads bytes, then publishes tail with a release store;
 *     the producer loads tail with acquire, so it never overwrites bytes the
 *     consumer is still reading.
 * A side loads its own index relaxed: nobody else writes it.
 */
#define _GNU_SOURCE
#include "ring.h"

#include "counter.h"

#include <errno.h>
#include <limits.h>
#include <signal.h>
#include <stdalign.h>
#include <stdatomic.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#define CACHELINE 64

struct ring {
    /* Written by the producer only; its own cache line so the consumer's
     * stores do not invalidate it. */
    alignas(CACHELINE) atomic_size_t head;
    counter w_copies, w_bytes;

    /* Written by the consumer only. */
    alignas(CACHELINE) atomic_size_t tail;
    counter r_copies, r_bytes;

    /* Set by ring_create, read-only afterwards. */
    alignas(CACHELINE) size_t cap;
    size_t mask;
    size_t span; /* contiguous bytes mapped at data: cap, or 2 * cap mirrored */
    unsigned char *data;
    size_t alloc_len; /* bytes allocated (plain) or mapped (mirrored) */
    int flags;
};

static inline size_t min_sz(size_t a, size_t b) { return a < b ? a : b; }

static inline size_t load_own(const atomic_size_t *index)
{
    return atomic_load_explicit(index, memory_order_relaxed);
}

static inline size_t load_other(const atomic_size_t *index)
{
    return atomic_load_explicit(index, memory_order_acquire);
}

static inline void publish(atomic_size_t *index, size_t value)
{
    atomic_store_explicit(index, value, memory_order_release);
}

/* ------------------------------------------------------------------ life */

size_t ring_max_capacity(void)
{
    return (size_t)1 << (sizeof(size_t) * CHAR_BIT - 2);
}

static size_t round_pow2(size_t n)
{
    size_t cap = 1;
    while (cap < n)
        cap <<= 1;
    return cap;
}

static size_t round_up(size_t n, size_t align) /* align: a power of two */
{
    return (n + align - 1) & ~(align - 1);
}

static ring *init(void *mem, size_t hdr, size_t cap, size_t alloc_len, int flags)
{
    ring *r = mem;
    atomic_init(&r->head, 0);
    atomic_init(&r->tail, 0);
    counter_zero(&r->w_copies);
    counter_zero(&r->w_bytes);
    counter_zero(&r->r_copies);
    counter_zero(&r->r_bytes);
    r->cap = cap;
    r->mask = cap - 1;
    r->span = (flags & RING_MIRRORED) ? 2 * cap : cap;
    r->data = (unsigned char *)mem + hdr;
    r->alloc_len = alloc_len;
    r->flags = flags;
    return r;
}

/* Header and data in one allocation: [struct ring | pad | data]. */
static ring *create_plain(size_t cap)
{
    size_t hdr = round_up(sizeof(struct ring), CACHELINE);
    size_t total = round_up(hdr + cap, CACHELINE);
    void *mem = aligned_alloc(CACHELINE, total);
    if (mem == NULL) {
        errno = ENOMEM;
        return NULL;
    }
    return init(mem, hdr, cap, total, 0);
}

/* One mapping: [header page(s) | data | the same data again].  The two data
 * halves are the same memfd pages, so a span that runs past the end of the
 * first half continues, contiguously, at the start of the data. */
static ring *create_mirrored(size_t cap)
{
    long pg = sysconf(_SC_PAGESIZE);
    if (pg <= 0 || ((size_t)pg & ((size_t)pg - 1)) != 0) {
        errno = ENOSYS;
        return NULL;
    }
    size_t page = (size_t)pg;
    if (cap < page)
        cap = page;
    size_t hdr = round_up(sizeof(struct ring), page);
    size_t total = hdr + 2 * cap;

    unsigned char *base =
        mmap(NULL, total, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    if (base == MAP_FAILED)
        return NULL;
    int fd = memfd_create("wsstls-ring", MFD_CLOEXEC);
    if (fd < 0)
        goto fail;
    if (ftruncate(fd, (off_t)cap) != 0)
        goto fail;
    for (int half = 0; half < 2; half++) {
        void *at = base + hdr + (size_t)half * cap;
        if (mmap(at, cap, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_FIXED, fd, 0) != at)
            goto fail;
    }
    close(fd); /* the mappings keep the memory */
    return init(base, hdr, cap, total, RING_MIRRORED);

fail:;
    int saved = errno;
    if (fd >= 0)
        close(fd);
    munmap(base, total);
    errno = saved;
    return NULL;
}

ring *ring_create(size_t min_capacity, int flags)
{
    if (min_capacity == 0 || min_capacity > ring_max_capacity() || (flags & ~RING_MIRRORED)) {
        errno = EINVAL;
        return NULL;
    }
    size_t cap = round_pow2(min_capacity);
    return (flags & RING_MIRRORED) ? create_mirrored(cap) : create_plain(cap);
}

void ring_destroy(ring *r)
{
    if (r == NULL)
        return;
    if (r->flags & RING_MIRRORED)
        munmap(r, r->alloc_len);
    else
        free(r);
}

void ring_reset(ring *r)
{
    atomic_store_explicit(&r->head, 0, memory_order_relaxed);
    atomic_store_explicit(&r->tail, 0, memory_order_relaxed);
}

/* ------------------------------------------------------------ inspection */

size_t ring_cap(const ring *r) { return r->cap; }
int ring_mirrored(const ring *r) { return (r->flags & RING_MIRRORED) != 0; }
unsigned char *ring_data(const ring *r) { return r->data; }
size_t ring_data_offset(const ring *r) { return (size_t)(r->data - (const unsigned char *)r); }
size_t ring_data_span(const ring *r) { return r->span; }

/* Safe from any thread: tail is loaded first, so the head loaded after it is
 * at least as new and head - tail cannot wrap below zero.  Between the two
 * loads the consumer may drain and the producer refill, so the difference
 * can exceed cap: clamp it. */
size_t ring_len(const ring *r)
{
    size_t tail = load_other(&r->tail);
    size_t head = load_other(&r->head);
    return min_sz(head - tail, r->cap);
}

size_t ring_writable(const ring *r) { return r->cap - ring_len(r); }
int ring_empty(const ring *r) { return ring_len(r) == 0; }
int ring_full(const ring *r) { return ring_len(r) == r->cap; }

/* Bytes the consumer may read / the producer may fill, each as seen by its
 * own side (its own index exact, the other's possibly stale but safe).  The
 * clamp only matters if the one-producer-one-consumer rule is broken (or
 * reset races a side): then data is garbage, but no copy leaves the ring. */
static inline size_t readable(const ring *r, size_t *tail)
{
    *tail = load_own(&r->tail);
    return min_sz(load_other(&r->head) - *tail, r->cap);
}

static inline size_t free_space(const ring *r, size_t *head)
{
    *head = load_own(&r->head);
    return r->cap - min_sz(*head - load_other(&r->tail), r->cap);
}

/* The n bytes at counter `pos` as one or two (offset, length) spans.  In a
 * mirrored ring span - off >= cap >= n: always one. */
static inline int spans(const ring *r, size_t pos, size_t n, size_t out[4])
{
    size_t off = pos & r->mask;
    size_t first = min_sz(n, r->span - off);
    out[0] = off;
    out[1] = first;
    out[2] = 0;
    out[3] = n - first;
    return n == 0 ? 0 : (first == n ? 1 : 2);
}

/* ---------------------------------------------------------------- copies */

static void copy_in(ring *r, size_t head, const void *src, size_t n)
{
    size_t off = head & r->mask, room = r->span - off;
    if (n <= room) {
        memcpy(r->data + off, src, n);
        counter_add(&r->w_copies, 1);
    } else {
        memcpy(r->data + off, src, room);
        memcpy(r->data, (const unsigned char *)src + room, n - room);
        counter_add(&r->w_copies, 2);
    }
    counter_add(&r->w_bytes, n);
}

static void copy_out(ring *r, size_t tail, void *dst, size_t n)
{
    size_t off = tail & r->mask, room = r->span - off;
    if (n <= room) {
        memcpy(dst, r->data + off, n);
        counter_add(&r->r_copies, 1);
    } else {
        memcpy(dst, r->data + off, room);
        memcpy((unsigned char *)dst + room, r->data, n - room);
        counter_add(&r->r_copies, 2);
    }
    counter_add(&r->r_bytes, n);
}

size_t ring_write(ring *r, const void *src, size_t n)
{
    size_t head;
    n = min_sz(n, free_space(r, &head));
    if (n == 0)
        return 0;
    copy_in(r, head, src, n);
    publish(&r->head, head + n); /* release: the bytes before the index */
    return n;
}

size_t ring_peek(ring *r, void *dst, size_t n)
{
    size_t tail;
    n = min_sz(n, readable(r, &tail));
    if (n == 0)
        return 0;
    copy_out(r, tail, dst, n);
    return n;
}

size_t ring_read(ring *r, void *dst, size_t n)
{
    size_t tail;
    n = min_sz(n, readable(r, &tail));
    if (n == 0)
        return 0;
    copy_out(r, tail, dst, n);
    publish(&r->tail, tail + n); /* release: done reading before freeing */
    return n;
}

size_t ring_discard(ring *r, size_t n)
{
    size_t tail;
    n = min_sz(n, readable(r, &tail));
    if (n != 0)
        publish(&r->tail, tail + n);
    return n;
}

/* ------------------------------------------------------------- zero copy */

int ring_readable_spans(ring *r, size_t limit, size_t out[4])
{
    size_t tail;
    size_t n = min_sz(limit, readable(r, &tail));
    return spans(r, tail, n, out);
}

int ring_writable_spans(ring *r, size_t out[4])
{
    size_t head;
    size_t n = free_space(r, &head);
    return spans(r, head, n, out);
}

static int to_iov(const ring *r, int segs, const size_t s[4], struct iovec iov[2])
{
    for (int i = 0; i < segs; i++) {
        iov[i].iov_base = r->data + s[2 * i];
        iov[i].iov_len = s[2 * i + 1];
    }
    return segs;
}

int ring_read_iov(ring *r, struct iovec iov[2])
{
    size_t s[4];
    return to_iov(r, ring_readable_spans(r, SIZE_MAX, s), s, iov);
}

int ring_write_iov(ring *r, struct iovec iov[2])
{
    size_t s[4];
    return to_iov(r, ring_writable_spans(r, s), s, iov);
}

void *ring_reserve(ring *r, size_t *len)
{
    size_t s[4];
    ring_writable_spans(r, s);
    *len = s[1];
    return r->data + s[0];
}

int ring_commit(ring *r, size_t n)
{
    size_t head;
    if (n > free_space(r, &head))
        return -1;
    publish(&r->head, head + n); /* release: the caller's fill before the index */
    return 0;
}

const void *ring_peek_region(ring *r, size_t *len)
{
    size_t s[4];
    ring_readable_spans(r, SIZE_MAX, s);
    *len = s[1];
    return r->data + s[0];
}

int ring_consume(ring *r, size_t n)
{
    size_t tail;
    if (n > readable(r, &tail))
        return -1;
    publish(&r->tail, tail + n); /* release: the caller's reads before freeing */
    return 0;
}

/* -------------------------------------------------------------------- fd */

ssize_t ring_read_fd(ring *r, int fd)
{
    struct iovec iov[2];
    int segs = ring_write_iov(r, iov);
    if (segs == 0)
        return -ENOBUFS;
    ssize_t got;
    do
        got = readv(fd, iov, segs);
    while (got < 0 && errno == EINTR);
    if (got < 0)
        return errno == EWOULDBLOCK ? -EAGAIN : -errno;
    if (got > 0)
        publish(&r->head, load_own(&r->head) + (size_t)got);
    return got;
}

/* writev without SIGPIPE: a pipe has no MSG_NOSIGNAL, so block the signal
 * in this thread around the call and take back the one an EPIPE raised
 * (unless one was already pending, which is not ours to take). */
static ssize_t writev_nosigpipe(int fd, const struct iovec *iov, int segs)
{
    sigset_t pipe_only, pending, saved;
    sigemptyset(&pipe_only);
    sigaddset(&pipe_only, SIGPIPE);
    sigpending(&pending);
    int was_pending = sigismember(&pending, SIGPIPE);
    pthread_sigmask(SIG_BLOCK, &pipe_only, &saved);
    ssize_t put;
    do
        put = writev(fd, iov, segs);
    while (put < 0 && errno == EINTR);
    int err = errno;
    if (put < 0 && err == EPIPE && !was_pending) {
        const struct timespec now = {0, 0};
        while (sigtimedwait(&pipe_only, NULL, &now) < 0 && errno == EINTR)
            ;
    }
    pthread_sigmask(SIG_SETMASK, &saved, NULL);
    errno = err;
    return put;
}

ssize_t ring_write_fd(ring *r, int fd)
{
    struct iovec iov[2];
    int segs = ring_read_iov(r, iov);
    if (segs == 0)
        return 0;
    /* sendmsg so a vanished peer gives EPIPE, not SIGPIPE; pipes and files
     * are not sockets and take writev, with SIGPIPE blocked. */
    struct msghdr msg = {.msg_iov = iov, .msg_iovlen = (size_t)segs};
    ssize_t put;
    do
        put = sendmsg(fd, &msg, MSG_NOSIGNAL);
    while (put < 0 && errno == EINTR);
    if (put < 0 && errno == ENOTSOCK)
        put = writev_nosigpipe(fd, iov, segs);
    if (put < 0)
        return errno == EWOULDBLOCK ? -EAGAIN : -errno;
    if (put > 0)
        publish(&r->tail, load_own(&r->tail) + (size_t)put);
    return put;
}

/* ----------------------------------------------------------------- stats */

void ring_stats(const ring *r, uint64_t out[2])
{
    out[0] = counter_get(&r->w_copies) + counter_get(&r->r_copies);
    out[1] = counter_get(&r->w_bytes) + counter_get(&r->r_bytes);
}

void ring_reset_stats(ring *r)
{
    counter_zero(&r->w_copies);
    counter_zero(&r->w_bytes);
    counter_zero(&r->r_copies);
    counter_zero(&r->r_bytes);
}
