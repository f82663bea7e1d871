/*
 * ringbio.c - the ring-backed BIO_METHOD (see ringbio.h).
 *
 * OpenSSL calls read_ex for a record header and body (or, with read-ahead,
 * for as much as its buffer holds) and write_ex once per record.  Keeping
 * the socket I/O inside these callbacks is what lets a message cost no more
 * copies than SSL_set_fd: the kernel copies straight into OpenSSL's buffer
 * and out of it, and the rings only hold what does not fit in that moment.
 */
#define _GNU_SOURCE
#include "ringbio.h"

#include <errno.h>
#include <stdatomic.h>
#include <stdlib.h>
#include <sys/socket.h>
#include <sys/uio.h>

#include <openssl/crypto.h>

#include "counter.h"

struct ringbio {
    ring **rxp, **txp; /* the caller's: it owns and frees the rings */
    size_t cap;        /* RINGBIO_LAZY: of the rings made when needed */
    int ring_flags;
    int fd;
    int flags;
    /* Set by whoever reads the socket, read by whoever runs the SSL object
     * (another thread in offload mode): release/acquire, so a reader that
     * sees EOF also sees every byte committed to rx before it. */
    atomic_int eof;
    atomic_int last_errno;
    int read_failed; /* READ_FD: ringbio_read_batch met a socket error (kept for rb_read) */
    size_t limit;    /* ringbio_limit_read: what rb_read may still give (SIZE_MAX: any) */
    int drained; /* READ_FD only (one thread): socket emptied this batch */
    counter rx_syscalls, rx_bytes, rx_direct, tx_syscalls, tx_bytes, tx_direct, eagain;
};

#define RX(s) (*(s)->rxp)
#define TX(s) (*(s)->txp)

/* Queries that hold without rings (lazy, or parked). */
static int none_in(const ring *r) { return r == NULL || ring_empty(r); }
static size_t len_of(const ring *r) { return r != NULL ? ring_len(r) : 0; }

/* RINGBIO_LAZY: the ring at *where, made now if missing; NULL if it cannot be. */
static ring *need(struct ringbio *s, ring **where)
{
    if (*where == NULL && (s->flags & RINGBIO_LAZY))
        *where = ring_create(s->cap, s->ring_flags);
    return *where;
}

/* --------------------------------------------------------- socket calls */

static int would_block(int err) { return err == EAGAIN || err == EWOULDBLOCK; }

/* One readv: OpenSSL's buffer first, then the free space of rx (lazy: when
 * it exists, which it does once a read filled OpenSSL's buffer). */
static ssize_t read_direct(struct ringbio *s, char *buf, size_t len)
{
    struct iovec iov[3] = {{.iov_base = buf, .iov_len = len}};
    int segs = 1 + (RX(s) != NULL ? ring_write_iov(RX(s), iov + 1) : 0);
    size_t want = len;
    for (int i = 1; i < segs; i++)
        want += iov[i].iov_len;
    ssize_t got;
    do
        got = readv(s->fd, iov, segs);
    while (got < 0 && errno == EINTR);
    counter_add(&s->rx_syscalls, 1);
    if (got < 0) {
        int err = errno;
        if (would_block(err)) {
            counter_add(&s->eagain, 1);
            s->drained = 1;
            return -EAGAIN;
        }
        atomic_store_explicit(&s->last_errno, err, memory_order_relaxed);
        return -err;
    }
    if (got == 0) {
        atomic_store_explicit(&s->eof, 1, memory_order_release);
        return 0;
    }
    size_t n = (size_t)got;
    counter_add(&s->rx_bytes, n);
    if ((size_t)got < want)
        s->drained = 1; /* a stream socket that gave less than asked is empty */
    if (n > len) {
        ring_commit(RX(s), n - len); /* cannot fail: readv filled free space */
        n = len;
    } else if (n == want && segs == 1) {
        need(s, s->rxp); /* a full read: the next may take more at once */
    }
    counter_add(&s->rx_direct, n);
    return (ssize_t)n;
}

static ssize_t send_direct(struct ringbio *s, const void *data, size_t len)
{
    ssize_t put;
    do
        put = send(s->fd, data, len, MSG_NOSIGNAL);
    while (put < 0 && errno == EINTR);
    counter_add(&s->tx_syscalls, 1);
    if (put < 0) {
        int err = errno;
        if (would_block(err)) {
            counter_add(&s->eagain, 1);
            return -EAGAIN;
        }
        atomic_store_explicit(&s->last_errno, err, memory_order_relaxed);
        return -err;
    }
    counter_add(&s->tx_bytes, (uint64_t)put);
    counter_add(&s->tx_direct, (uint64_t)put);
    return put;
}

/* ------------------------------------------------------------- BIO_METHOD */

static int rb_write(BIO *b, const char *data, size_t len, size_t *written)
{
    struct ringbio *s = BIO_get_data(b);
    BIO_clear_retry_flags(b);
    *written = 0;
    size_t sent = 0;
    if ((s->flags & RINGBIO_WRITE_FD) && len > 0) {
        /* Queued bytes go first: order is the stream. */
        if (!none_in(TX(s))) {
            ssize_t put = ringbio_flush(b);
            if (put < 0 && put != -EAGAIN)
                return 0; /* no retry flag: a socket error */
        }
        if (none_in(TX(s))) {
            ssize_t put = send_direct(s, data, len);
            if (put < 0 && put != -EAGAIN)
                return 0; /* no retry flag: a socket error */
            if (put > 0)
                sent = (size_t)put;
        }
    }
    /* What the kernel refused waits in tx; if tx is full too, the write is
     * partial (or a retry), which OpenSSL resumes later. */
    ring *tx = sent < len ? need(s, s->txp) : TX(s);
    *written = sent + (tx != NULL ? ring_write(tx, data + sent, len - sent) : 0);
    if (*written == 0 && len > 0) {
        BIO_set_retry_write(b);
        return 0;
    }
    return 1;
}

static int rb_read(BIO *b, char *buf, size_t len, size_t *readbytes)
{
    struct ringbio *s = BIO_get_data(b);
    BIO_clear_retry_flags(b);
    if (s->limit != SIZE_MAX && !atomic_load_explicit(&s->eof, memory_order_acquire)) {
        /* rx's first bytes only, as many as allowed (at the end of the stream,
         * all of it: OpenSSL must see a record cut short, then the end) */
        *readbytes = RX(s) != NULL ? ring_read(RX(s), buf, len < s->limit ? len : s->limit) : 0;
        s->limit -= *readbytes;
        if (*readbytes > 0)
            return 1;
        if (s->read_failed)
            return 0; /* no retry flag: the socket error (last_errno) */
        BIO_set_retry_read(b);
        return 0;
    }
    *readbytes = RX(s) != NULL ? ring_read(RX(s), buf, len) : 0;
    if (*readbytes == 0 && len > 0 && s->read_failed)
        return 0; /* no retry flag: the socket error (last_errno) */
    if (*readbytes == 0 && len > 0 && (s->flags & RINGBIO_READ_FD) && !s->drained &&
        !atomic_load_explicit(&s->eof, memory_order_acquire)) {
        ssize_t got = read_direct(s, buf, len);
        if (got > 0)
            *readbytes = (size_t)got;
        else if (got < 0 && got != -EAGAIN)
            return 0; /* no retry flag: a socket error */
    }
    if (*readbytes > 0)
        return 1;
    if (ringbio_eof(b))
        return 0; /* no retry flag: end of stream */
    BIO_set_retry_read(b);
    return 0;
}

static long rb_ctrl(BIO *b, int cmd, long num, void *ptr)
{
    struct ringbio *s = BIO_get_data(b);
    switch (cmd) {
    case BIO_CTRL_PENDING:
        return (long)len_of(RX(s));
    case BIO_CTRL_WPENDING:
        return (long)len_of(TX(s));
    case BIO_CTRL_FLUSH:
        /* Queued ciphertext is as good as sent: the owner of the socket
         * flushes tx when it turns writable.  Answering "not flushed" here
         * would only stall the handshake on a full socket buffer. */
        if ((s->flags & RINGBIO_WRITE_FD) && !none_in(TX(s)))
            ringbio_flush(b);
        return 1;
    case BIO_CTRL_EOF:
        return ringbio_eof(b);
    case BIO_CTRL_GET_CLOSE:
        return BIO_get_shutdown(b);
    case BIO_CTRL_SET_CLOSE:
        BIO_set_shutdown(b, (int)num);
        return 1;
    case BIO_C_GET_FD:
        if (s->fd >= 0 && ptr != NULL)
            *(int *)ptr = s->fd;
        return s->fd;
    default:
        return 0; /* DUP, PUSH, POP, RESET, KTLS ...: not supported */
    }
}

static int rb_destroy(BIO *b)
{
    free(BIO_get_data(b)); /* the rings and the fd belong to the caller */
    BIO_set_data(b, NULL);
    BIO_set_init(b, 0);
    return 1;
}

static BIO_METHOD *method;
static CRYPTO_ONCE method_once = CRYPTO_ONCE_STATIC_INIT;

static void make_method(void)
{
    int index = BIO_get_new_index();
    if (index == -1)
        return;
    BIO_METHOD *m = BIO_meth_new(index | BIO_TYPE_SOURCE_SINK, "wsstls ring");
    if (m == NULL)
        return;
    if (!BIO_meth_set_write_ex(m, rb_write) || !BIO_meth_set_read_ex(m, rb_read) ||
        !BIO_meth_set_ctrl(m, rb_ctrl) || !BIO_meth_set_destroy(m, rb_destroy)) {
        BIO_meth_free(m);
        return;
    }
    method = m; /* lives as long as the process, like OpenSSL's own methods */
}

BIO *ringbio_new(ring **rx, ring **tx, size_t capacity, int ring_flags, int fd, int flags)
{
    if (!CRYPTO_THREAD_run_once(&method_once, make_method) || method == NULL)
        return NULL;
    struct ringbio *s = calloc(1, sizeof *s);
    if (s == NULL)
        return NULL;
    s->rxp = rx;
    s->txp = tx;
    s->cap = capacity;
    s->ring_flags = ring_flags;
    s->fd = fd;
    s->limit = SIZE_MAX;
    s->flags = fd >= 0 ? flags : 0;
    if ((s->flags & (RINGBIO_READ_FD | RINGBIO_WRITE_FD)) != (RINGBIO_READ_FD | RINGBIO_WRITE_FD))
        s->flags &= ~RINGBIO_LAZY; /* the caller moves bytes through the rings */
    atomic_init(&s->eof, 0);
    atomic_init(&s->last_errno, 0);
    BIO *b = BIO_new(method);
    if (b == NULL) {
        free(s);
        return NULL;
    }
    BIO_set_data(b, s);
    BIO_set_init(b, 1);
    return b;
}

/* ------------------------------------------------------------ loop side */

ssize_t ringbio_fill(BIO *b)
{
    struct ringbio *s = BIO_get_data(b);
    if (RX(s) == NULL)
        return -ENOBUFS; /* no room: no system call was made */
    ssize_t got = ring_read_fd(RX(s), s->fd);
    if (got == -ENOBUFS)
        return got; /* ring full: no system call was made */
    counter_add(&s->rx_syscalls, 1);
    if (got > 0)
        counter_add(&s->rx_bytes, (uint64_t)got);
    else if (got == 0)
        atomic_store_explicit(&s->eof, 1, memory_order_release);
    else if (got == -EAGAIN)
        counter_add(&s->eagain, 1);
    else
        atomic_store_explicit(&s->last_errno, (int)-got, memory_order_relaxed);
    return got;
}

ssize_t ringbio_read_batch(BIO *b)
{
    struct ringbio *s = BIO_get_data(b);
    if (s->drained)
        return -EAGAIN;
    if (atomic_load_explicit(&s->eof, memory_order_acquire))
        return 0;
    if (need(s, s->rxp) == NULL)
        return -ENOBUFS;
    ssize_t got = ringbio_fill(b);
    if (got == -EAGAIN || (got > 0 && ring_writable(RX(s)) > 0))
        s->drained = 1; /* a stream socket that gave less than asked is empty */
    else if (got < 0 && got != -ENOBUFS)
        s->read_failed = 1; /* (a second readv would not say it again) */
    return got;
}

ssize_t ringbio_flush(BIO *b)
{
    struct ringbio *s = BIO_get_data(b);
    if (none_in(TX(s)))
        return 0;
    ssize_t put = ring_write_fd(TX(s), s->fd);
    counter_add(&s->tx_syscalls, 1);
    if (put > 0)
        counter_add(&s->tx_bytes, (uint64_t)put);
    else if (put == -EAGAIN)
        counter_add(&s->eagain, 1);
    else if (put < 0)
        atomic_store_explicit(&s->last_errno, (int)-put, memory_order_relaxed);
    return put;
}

void ringbio_limit_read(BIO *b, size_t n)
{
    struct ringbio *s = BIO_get_data(b);
    s->limit = n;
}

void ringbio_set_eof(BIO *b)
{
    struct ringbio *s = BIO_get_data(b);
    atomic_store_explicit(&s->eof, 1, memory_order_release);
}

int ringbio_eof(BIO *b)
{
    struct ringbio *s = BIO_get_data(b);
    return atomic_load_explicit(&s->eof, memory_order_acquire) && none_in(RX(s));
}

int ringbio_eof_seen(BIO *b)
{
    struct ringbio *s = BIO_get_data(b);
    return atomic_load_explicit(&s->eof, memory_order_acquire);
}

void ringbio_new_batch(BIO *b)
{
    struct ringbio *s = BIO_get_data(b);
    s->drained = 0;
}

int ringbio_idle(BIO *b)
{
    struct ringbio *s = BIO_get_data(b);
    if (!none_in(RX(s)))
        return 0;
    return !(s->flags & RINGBIO_READ_FD) || s->drained;
}

int ringbio_last_errno(BIO *b)
{
    struct ringbio *s = BIO_get_data(b);
    return atomic_load_explicit(&s->last_errno, memory_order_relaxed);
}

void ringbio_counters(BIO *b, struct ringbio_counters *out)
{
    struct ringbio *s = BIO_get_data(b);
    out->rx_syscalls = counter_get(&s->rx_syscalls);
    out->rx_bytes = counter_get(&s->rx_bytes);
    out->rx_direct = counter_get(&s->rx_direct);
    out->tx_syscalls = counter_get(&s->tx_syscalls);
    out->tx_bytes = counter_get(&s->tx_bytes);
    out->tx_direct = counter_get(&s->tx_direct);
    out->eagain = counter_get(&s->eagain);
}

void ringbio_reset_counters(BIO *b)
{
    struct ringbio *s = BIO_get_data(b);
    counter *all[] = {&s->rx_syscalls, &s->rx_bytes, &s->rx_direct, &s->tx_syscalls,
                      &s->tx_bytes,    &s->tx_direct, &s->eagain};
    for (size_t i = 0; i < sizeof all / sizeof all[0]; i++)
        counter_zero(all[i]);
}
