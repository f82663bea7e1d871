/*
 * wsloop.c - the event loop core (see wsloop.h).
 *
 * Level-triggered epoll: an event not handed to Python for lack of room in
 * its array is simply reported again by the next epoll_wait.  A hot
 * connection's input is served until it would block.  An offloaded
 * connection keeps EPOLLIN while a worker has it, so a dispatch costs no
 * epoll_ctl call: input arriving meanwhile is read into the incoming ring
 * at once (the loop thread is that ring's producer while the worker
 * consumes) and marks `more`; only an end of stream or a full ring, which
 * would stay readable, stop the polling until the job is back.
 *
 * Parking and timers happen on the loop thread, between polls, never to a
 * connection a worker holds: a worker always finds its connection awake.
 */
#define _GNU_SOURCE
#include "wsloop.h"

#include <errno.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <time.h>
#include <unistd.h>

#include "core/counter.h"
#include "ringpool.h"

#define MAX_EVENTS 1024

struct slot {
    tls_conn *c; /* NULL: plain ws:// (the wsecho state has the fd) */
    ring *plain;
    struct wsecho *st;
    struct offload_job *job;
    uint32_t events; /* as registered with epoll */
    unsigned watched : 1, hot : 1, busy : 1, more : 1;
    unsigned kicked : 1;    /* input waits in its TLS layer: serve it (hot) or report
                               it (cold) at the next poll, as if readable */
    unsigned parked : 1;    /* its ring is back in the pool, its TLS buffers freed */
    unsigned keepalive : 1; /* the loop's ping and idle timers apply */
    unsigned expired : 1;   /* reported WSLOOP_EXPIRED: not again */
    int64_t active;         /* ms: its last event (or when it was watched) */
    int64_t pinged;         /* ms: the last keepalive ping (0: none) */
    int64_t deadline;       /* ms: report WSLOOP_EXPIRED then (0: none) */
    /* ASYNC contexts: the connection's SSL call paused in a job (a hot one
     * waits for its async fd, not its socket); its async fd in epoll + 1;
     * and, in the async fd's own slot, the connection's fd + 1. */
    unsigned paused : 1;
    int afd, owner;
};

struct wsloop {
    int epfd;
    int mode;
    offload *pool;
    int pool_fd;
    size_t threshold;
    int threads;
    size_t inflight; /* jobs in workers */
    struct slot *slots;
    size_t nslots;
    struct offload_job **batch;
    size_t nbatch;
    int *kicked;    /* fds of slots with `kicked` set (and stale ones) */
    size_t nkicked, kicked_cap;
    ringpool *rings; /* NULL: Python gives the plaintext rings */
    ring *shared;    /* with rings, inline: where a parked connection's input is read */
    int park_ms, ping_ms, idle_ms;
    int64_t now;       /* ms, CLOCK_MONOTONIC_COARSE, as of the last poll */
    int64_t next_scan; /* ms */
    size_t scan_from;  /* a scan cut short for lack of room goes on here */
    size_t nparked;
    struct offload_job *done[MAX_EVENTS];
    struct epoll_event ev[MAX_EVENTS];
    counter polls, hot_events, reported, dispatches, jobs, parks, unparks, pings, scans, wakes;
    counter async_waits, async_resumes;
};

static int64_t now_ms(void)
{
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC_COARSE, &t);
    return (int64_t)t.tv_sec * 1000 + t.tv_nsec / 1000000;
}

wsloop *wsloop_new(int mode, offload *pool, size_t threshold, int threads)
{
    if (mode < WSLOOP_INLINE || mode > WSLOOP_THRESHOLD || (mode != WSLOOP_INLINE) != (pool != NULL) ||
        threads < 1) {
        errno = EINVAL;
        return NULL;
    }
    wsloop *l = calloc(1, sizeof *l);
    if (l == NULL)
        return NULL;
    l->mode = mode;
    l->pool = pool;
    l->pool_fd = -1;
    l->threshold = threshold;
    l->threads = threads;
    l->now = now_ms();
    l->next_scan = l->now + WSLOOP_SCAN_MS;
    l->epfd = epoll_create1(EPOLL_CLOEXEC);
    if (l->epfd < 0) {
        free(l);
        return NULL;
    }
    if (pool != NULL) {
        l->pool_fd = offload_fd(pool);
        struct epoll_event e = {.events = EPOLLIN, .data.fd = l->pool_fd};
        if (epoll_ctl(l->epfd, EPOLL_CTL_ADD, l->pool_fd, &e) != 0) {
            int err = errno;
            wsloop_free(l);
            errno = err;
            return NULL;
        }
    }
    return l;
}

void wsloop_free(wsloop *l)
{
    if (l == NULL)
        return;
    close(l->epfd);
    if (l->rings != NULL) { /* the rings of fds never unwatched */
        for (size_t fd = 0; fd < l->nslots; fd++)
            ringpool_put(l->rings, l->slots[fd].plain);
        ringpool_free(l->rings);
    }
    ring_destroy(l->shared);
    free(l->slots);
    free(l->batch);
    free(l->kicked);
    free(l);
}

static struct slot *slot_of(wsloop *l, int fd)
{
    return fd >= 0 && (size_t)fd < l->nslots ? &l->slots[fd] : NULL;
}

static struct slot *grow_to(wsloop *l, int fd)
{
    if (fd < 0)
        return NULL;
    if ((size_t)fd >= l->nslots) {
        size_t n = l->nslots ? l->nslots : 64;
        while (n <= (size_t)fd)
            n *= 2;
        struct slot *s = realloc(l->slots, n * sizeof *s);
        if (s == NULL)
            return NULL;
        memset(s + l->nslots, 0, (n - l->nslots) * sizeof *s);
        l->slots = s; /* the grown table is consistent from here on */
        /* Every slot might sit in a batch at once: size the batch alike. */
        struct offload_job **b = realloc(l->batch, n * sizeof *b);
        if (b == NULL)
            return NULL; /* nslots unchanged: the next call grows them again */
        l->batch = b;
        l->nslots = n;
    }
    return &l->slots[fd];
}

static int set_events(wsloop *l, int fd, struct slot *s, uint32_t events)
{
    struct epoll_event e = {.events = events, .data.fd = fd};
    if (!s->watched) {
        if (epoll_ctl(l->epfd, EPOLL_CTL_ADD, fd, &e) != 0)
            return -errno;
        s->watched = 1;
    } else if (events != s->events && epoll_ctl(l->epfd, EPOLL_CTL_MOD, fd, &e) != 0) {
        return -errno;
    }
    s->events = events;
    return 0;
}

/* A parked connection gets its ring back (TLS takes its buffers itself, at
 * its next call).  0, or -ENOMEM. */
static int unpark(wsloop *l, struct slot *s)
{
    if (!s->parked)
        return 0;
    if (l->rings != NULL && s->plain == NULL && (s->plain = ringpool_get(l->rings)) == NULL)
        return -ENOMEM;
    s->parked = 0;
    l->nparked--;
    counter_add(&l->unparks, 1);
    return 0;
}

int wsloop_watch(wsloop *l, int fd, uint32_t events)
{
    struct slot *s = grow_to(l, fd);
    if (s == NULL)
        return -ENOMEM;
    if (s->busy)
        return -EBUSY;
    if (!s->watched)
        s->active = l->now;
    s->hot = 0;
    s->paused = 0; /* Python has it now: wsloop_async again if a call is still paused */
    return set_events(l, fd, s, events);
}

int wsloop_unwatch(wsloop *l, int fd)
{
    struct slot *s = slot_of(l, fd);
    if (s == NULL || !s->watched)
        return 0;
    if (s->busy)
        return -EBUSY;
    int r = epoll_ctl(l->epfd, EPOLL_CTL_DEL, fd, NULL) == 0 ? 0 : -errno;
    if (s->c != NULL && s->plain != NULL && tls_async_paused(s->c))
        tls_async_finish(s->c); /* its paused read may target the ring given back below */
    if (s->afd) { /* its async fd goes with it (closed with its SSL object) */
        struct slot *a = slot_of(l, s->afd - 1);
        epoll_ctl(l->epfd, EPOLL_CTL_DEL, s->afd - 1, NULL);
        if (a != NULL)
            a->owner = 0;
    }
    if (l->rings != NULL)
        ringpool_put(l->rings, s->plain);
    if (s->parked)
        l->nparked--;
    memset(s, 0, sizeof *s); /* an entry in l->kicked is stale now */
    return r;
}

static int kick(wsloop *l, int fd, struct slot *s)
{
    if (l->nkicked == l->kicked_cap) {
        size_t n = l->kicked_cap ? 2 * l->kicked_cap : 64;
        int *k = realloc(l->kicked, n * sizeof *k);
        if (k == NULL)
            return -ENOMEM;
        l->kicked = k;
        l->kicked_cap = n;
    }
    l->kicked[l->nkicked++] = fd;
    s->kicked = 1;
    return 0;
}

int wsloop_hot(wsloop *l, int fd, tls_conn *c, ring *plain, struct wsecho *st,
               struct offload_job *job)
{
    struct slot *s = slot_of(l, fd);
    if (s == NULL || !s->watched || st == NULL ||
        (l->mode != WSLOOP_INLINE && (job == NULL || c == NULL)))
        return -EINVAL;
    if (l->rings != NULL) { /* the slot's own ring (or none while parked) */
        if ((plain != NULL && plain != s->plain) || (s->plain == NULL && !s->parked))
            return -EINVAL;
    } else if (plain == NULL) {
        return -EINVAL;
    } else {
        s->plain = plain;
    }
    s->c = c;
    s->st = st;
    s->job = job;
    s->more = 0;
    s->paused = 0;
    s->hot = 1;
    int r = set_events(l, fd, s, EPOLLIN | EPOLLRDHUP);
    if (r == 0 && c != NULL && !s->kicked && tls_has_pending(c)) {
        /* Input taken from the socket already (say, while a job ran, or
         * before the framer's turn): no readiness will come for it. */
        r = kick(l, fd, s);
    }
    return r;
}

int wsloop_kick(wsloop *l, int fd)
{
    struct slot *s = slot_of(l, fd);
    if (s == NULL || !s->watched)
        return -EINVAL;
    return s->kicked ? 0 : kick(l, fd, s);
}

int wsloop_set_rings(wsloop *l, size_t capacity, size_t max_spare)
{
    if (l->rings != NULL || l->nslots > 0)
        return -EINVAL;
    if ((l->rings = ringpool_new(capacity, RING_MIRRORED, max_spare)) == NULL)
        return -errno;
    if (l->mode == WSLOOP_INLINE && (l->shared = ring_create(capacity, RING_MIRRORED)) == NULL) {
        int err = errno;
        ringpool_free(l->rings);
        l->rings = NULL;
        return -err;
    }
    return 0;
}

ring *wsloop_plain(wsloop *l, int fd)
{
    struct slot *s = slot_of(l, fd);
    if (l->rings == NULL || s == NULL || !s->watched || s->busy) {
        errno = EINVAL;
        return NULL;
    }
    if (s->parked) {
        if (unpark(l, s) != 0) {
            errno = ENOMEM;
            return NULL;
        }
    } else if (s->plain == NULL && (s->plain = ringpool_get(l->rings)) == NULL) {
        return NULL;
    }
    return s->plain;
}

int wsloop_set_timers(wsloop *l, int park_ms, int ping_ms, int idle_ms)
{
    if (park_ms < 0 || ping_ms < 0 || idle_ms < 0)
        return -EINVAL;
    l->park_ms = park_ms;
    l->ping_ms = ping_ms;
    l->idle_ms = idle_ms;
    l->next_scan = l->now + WSLOOP_SCAN_MS;
    return 0;
}

int wsloop_timers(wsloop *l, int fd, int deadline_ms, int keepalive)
{
    struct slot *s = slot_of(l, fd);
    if (s == NULL || !s->watched || deadline_ms < 0)
        return -EINVAL;
    l->now = now_ms();
    s->deadline = deadline_ms > 0 ? l->now + deadline_ms : 0;
    s->keepalive = keepalive != 0;
    s->expired = 0;
    s->active = l->now;
    return 0;
}

/* ------------------------------------------------------------- hot path */

static int output_pending(const struct slot *s)
{
    return s->st->pending_len > 0 || (s->c != NULL && tls_pending_out(s->c) > 0);
}

/* The hot path failed on the loop's side (a socket or epoll error). */
static int ended(struct slot *s, int tls_status)
{
    s->st->ended = tls_status;
    return WSECHO_ENDED;
}

/* After the hot path: WSECHO_WAIT when it may go on alone, else the wsecho
 * status to report (the connection goes cold). */
static int settle(wsloop *l, struct slot *s, int status)
{
    if (l->mode != WSLOOP_INLINE && tls_flush(s->c) == TLS_ERROR && status != WSECHO_ENDED)
        status = ended(s, TLS_ERROR);
    if (status == WSECHO_WAIT && output_pending(s))
        status = WSECHO_BLOCKED;
    return status;
}

/* The design's inline step: echo what is there.  A read stops at a full
 * plaintext ring (and the TLS layer reads ahead): input it still holds,
 * which the socket will not signal, is served at the next poll, after the
 * other connections had their turn (kicked).  Nothing read: what is
 * buffered is an incomplete record, which only the socket can complete.
 * A call paused in an ASYNC job: the same pump again once the job is done
 * (await_async).  WSECHO_WAIT, or a status to report. */
static int await_async(wsloop *l, int fd, int quiet);

static int run_inline(wsloop *l, int fd, struct slot *s)
{
    int raw = wsecho_pump(s->c, s->plain, s->st, WSECHO_READ | WSECHO_ECHO);
    if (s->c != NULL && tls_async_paused(s->c) && raw != WSECHO_BAD_UTF8 && raw != WSECHO_ENDED)
        return await_async(l, fd, 1) == 0 ? WSECHO_WAIT : ended(slot_of(l, fd), TLS_ERROR);
    int r = settle(l, s, raw);
    if (r != WSECHO_WAIT || s->c == NULL || s->kicked)
        return r;
    if (ring_writable(s->plain) > 0 && s->st->read_status > 0 && tls_has_pending(s->c) &&
        kick(l, fd, s) != 0)
        return ended(s, TLS_ERROR); /* no memory to remember it */
    return WSECHO_WAIT;
}

static void queue_job(wsloop *l, struct slot *s)
{
    s->job->plain = s->plain; /* (a parked connection's came back from the pool) */
    s->job->flags = WSECHO_READ | WSECHO_ECHO;
    s->busy = 1;
    s->more = 0;
    l->inflight++;
    if (l->mode == WSLOOP_BATCHED) {
        l->batch[l->nbatch++] = s->job;
    } else {
        offload_submit(l->pool, &s->job, 1); /* cannot fail: n == 1 */
        counter_add(&l->dispatches, 1);
        counter_add(&l->jobs, 1);
    }
}

/* One dispatch per worker for this iteration's ready connections. */
static void submit_batch(wsloop *l)
{
    size_t n = l->nbatch, parts = (size_t)l->threads < n ? (size_t)l->threads : n;
    for (size_t i = 0, start = 0; i < parts; i++) {
        size_t len = n / parts + (i < n % parts);
        offload_submit(l->pool, &l->batch[start], len);
        counter_add(&l->dispatches, 1);
        counter_add(&l->jobs, len);
        start += len;
    }
    l->nbatch = 0;
}

#define NO_RING (-1) /* serve(): a parked connection's input came, and no ring */

/* A parked connection's input, in the inline design: read and echoed in the
 * loop's shared ring.  When that leaves nothing in flight (a keepalive's pong,
 * a sparse small message) the connection stays parked, its TLS buffers freed
 * again; else it takes a ring of its own with what the shared one holds (one
 * copy, once). */
static int serve_parked(wsloop *l, int fd, struct slot *s)
{
    ring *shared = l->shared;
    s->plain = shared;
    int r = run_inline(l, fd, s);
    if (r == WSECHO_WAIT && !s->kicked && ring_empty(shared) && s->st->text_done == 0 &&
        !output_pending(s) && (s->c == NULL || tls_park(s->c))) {
        s->plain = NULL;
        counter_add(&l->wakes, 1);
        return WSECHO_WAIT;
    }
    ring *own = ringpool_get(l->rings);
    if (own == NULL) {
        ring_reset(shared); /* the connection is lost: its bytes with it */
        s->plain = NULL;
        return NO_RING;
    }
    size_t n;
    const void *held = ring_peek_region(shared, &n); /* mirrored: every readable byte */
    ring_write(own, held, n); /* all of it: the same capacity, and own is empty */
    ring_reset(shared);
    s->plain = own;
    s->parked = 0;
    l->nparked--;
    counter_add(&l->unparks, 1);
    return r;
}

/* Readiness of a hot connection: WSECHO_WAIT handled, else a status to
 * report (or NO_RING). */
static int serve(wsloop *l, int fd, struct slot *s)
{
    if (s->paused)
        return WSECHO_WAIT; /* its async fd, not its socket, says when to go on */
    if (s->parked && l->shared != NULL)
        return serve_parked(l, fd, s);
    if (s->parked && unpark(l, s) != 0)
        return NO_RING;
    if (l->mode == WSLOOP_INLINE)
        return run_inline(l, fd, s);
    long got = tls_fill(s->c);
    if (s->busy) { /* the worker's result decides what comes next */
        s->more = 1;
        if (got == 0 || got == TLS_EOF || got == TLS_ERROR)
            set_events(l, fd, s, 0); /* would stay readable: wait for the job */
        return 0;
    }
    if (got == TLS_ERROR)
        return ended(s, TLS_ERROR);
    if (got == TLS_WANT_READ && !tls_has_pending(s->c))
        return 0;
    if (l->mode == WSLOOP_THRESHOLD && tls_pending_in(s->c) < l->threshold && got != TLS_EOF)
        return run_inline(l, fd, s);
    queue_job(l, s);
    return 0;
}

/* A job is back: WSECHO_WAIT handled (resubmitted or idle), else a status to report. */
static int complete(wsloop *l, struct offload_job *job)
{
    struct slot *s = slot_of(l, job->id);
    l->inflight--;
    if (s == NULL || !s->busy)
        return 0;
    s->busy = 0;
    if (s->events != (EPOLLIN | EPOLLRDHUP) && set_events(l, job->id, s, EPOLLIN | EPOLLRDHUP) != 0)
        return ended(s, TLS_ERROR);
    int r = settle(l, s, job->status);
    if (r != WSECHO_WAIT)
        return r;
    /* Again if input came meanwhile (or the end of it), or if the job read
     * and more is buffered (it stops at a full plaintext ring).  Not when it
     * could read nothing: what is buffered is an incomplete record, and only
     * the socket can complete it. */
    if (s->more || (s->st->read_status >= 0 && tls_has_pending(s->c)))
        queue_job(l, s);
    return 0;
}

static int report(struct wsloop_event *out, int n, int fd, uint32_t events, int echo)
{
    out[n].fd = fd;
    out[n].events = events;
    out[n].report = echo == WSECHO_WAIT ? WSLOOP_READY : WSLOOP_COLD;
    out[n].echo = echo;
    return n + 1;
}

/* An event of another kind (EXPIRED, PING, NOMEM): fd is Python's again. */
static int report_kind(struct wsloop_event *out, int n, int fd, struct slot *s, int kind)
{
    s->hot = 0;
    out[n].fd = fd;
    out[n].events = 0;
    out[n].report = kind;
    out[n].echo = WSECHO_WAIT;
    return n + 1;
}

/* A hot connection's hot path stopped at `echo`: it is Python's again. */
static int report_cold(struct wsloop_event *out, int n, int fd, struct slot *s, int echo)
{
    if (echo == NO_RING)
        return report_kind(out, n, fd, s, WSLOOP_NOMEM);
    s->hot = 0;
    return report(out, n, fd, 0, echo);
}

/* The kicked connections, once each, with the room left in `out` (the
 * others stay kicked for the next poll): a hot one is served as if
 * readable, a cold one reading input is reported readable.  Entries of
 * slots unwatched since are dropped. */
static int serve_kicked(wsloop *l, struct wsloop_event *out, int n, int max)
{
    size_t keep = 0;
    for (size_t i = 0; i < l->nkicked; i++) {
        int fd = l->kicked[i];
        struct slot *s = slot_of(l, fd);
        if (s == NULL || !s->kicked)
            continue;
        if (n >= max) {
            l->kicked[keep++] = fd;
            continue;
        }
        s->kicked = 0;
        if (!s->hot) {
            if (s->events & EPOLLIN)
                n = report(out, n, fd, EPOLLIN, WSECHO_WAIT);
            continue;
        }
        int r = serve(l, fd, s);
        if (r != WSECHO_WAIT)
            n = report_cold(out, n, fd, s, r);
    }
    l->nkicked = keep;
    return n;
}

/* ---------------------------------------------------------------- memory */

/* Give back an idle hot connection's ring and TLS buffers, when nothing is
 * in flight. */
static void park(wsloop *l, struct slot *s)
{
    if (s->kicked || output_pending(s) || s->st->text_done > 0 ||
        (s->plain != NULL && !ring_empty(s->plain)))
        return;
    if (s->c != NULL && !tls_park(s->c))
        return;
    if (l->rings != NULL) {
        ringpool_put(l->rings, s->plain);
        s->plain = NULL;
        if (s->job != NULL)
            s->job->plain = NULL;
    }
    s->parked = 1;
    l->nparked++;
    counter_add(&l->parks, 1);
}

/* A keepalive ping from the loop (a hot TLS connection): 1 sent, 0 left to
 * Python, or a TLS status (the session ended). */
static int ping(wsloop *l, struct slot *s)
{
    if (s->c == NULL)
        return 0; /* plain ws://: a send may be partial; the framer's queue takes it */
    int r = wsecho_ping(s->c, s->st);
    if (r != 1)
        return r;
    counter_add(&l->pings, 1);
    if (l->mode != WSLOOP_INLINE && tls_flush(s->c) == TLS_ERROR)
        return TLS_ERROR;
    if (s->parked)
        tls_park(s->c); /* writing took the buffers back: give them back again */
    return 1;
}

/* Timers and parking of every slot, from where the last scan stopped, with
 * the room left in `out`. */
static int scan(wsloop *l, struct wsloop_event *out, int n, int max)
{
    const int64_t now = l->now;
    for (size_t fd = l->scan_from; fd < l->nslots; fd++) {
        struct slot *s = &l->slots[fd];
        if (!s->watched || s->busy || s->expired)
            continue;
        if (n >= max) {
            l->scan_from = fd; /* the next poll goes on from here */
            return n;
        }
        int64_t idle = now - s->active;
        if ((s->deadline != 0 && now >= s->deadline) ||
            (s->keepalive && l->idle_ms > 0 && idle >= l->idle_ms)) {
            s->expired = 1;
            n = report_kind(out, n, (int)fd, s, WSLOOP_EXPIRED);
            continue;
        }
        int64_t last = s->pinged > s->active ? s->pinged : s->active;
        if (s->keepalive && l->ping_ms > 0 && now - last >= l->ping_ms) {
            s->pinged = now;
            int r = s->hot ? ping(l, s) : 0;
            if (r < 0) {
                n = report_cold(out, n, (int)fd, s, ended(s, r));
                continue;
            }
            if (r == 0) {
                n = report_kind(out, n, (int)fd, s, WSLOOP_PING);
                continue;
            }
            if (output_pending(s)) { /* the ping waits for room: Python flushes it */
                n = report_cold(out, n, (int)fd, s, WSECHO_BLOCKED);
                continue;
            }
        }
        if (s->hot && !s->parked && l->park_ms > 0 && idle >= l->park_ms)
            park(l, s);
    }
    l->scan_from = 0;
    l->next_scan = now + WSLOOP_SCAN_MS;
    counter_add(&l->scans, 1);
    return n;
}

/* ----------------------------------------------------------- ASYNC jobs */

/* fd's SSL call paused in an ASYNC job: put the async fds OpenSSL reports as
 * changed into epoll (mapped to fd), and (quiet) stop serving its socket
 * until the job is done (the same pump, or Python's handler, then resumes the
 * call: nothing resumes it early).
 * 0, or -errno. */
static int await_async(wsloop *l, int fd, int quiet)
{
    int add[4], del[4];
    size_t nadd = 0, ndel = 0;
    struct slot *s = slot_of(l, fd);
    if (s != NULL && s->paused)
        return 0; /* waiting already (Python may ask twice for one pause) */
    if (s == NULL || s->c == NULL ||
        tls_async_changed_fds(s->c, add, &nadd, del, &ndel, 4) != 0)
        return -EINVAL;
    for (size_t i = 0; i < ndel; i++) {
        struct slot *a = slot_of(l, del[i]);
        epoll_ctl(l->epfd, EPOLL_CTL_DEL, del[i], NULL); /* (gone already if closed) */
        if (a != NULL)
            a->owner = 0;
        if (s->afd == del[i] + 1)
            s->afd = 0;
    }
    /* OpenSSL reports an fd as added once, during the job that added it: a
     * call that finished and started a new job since (a partial write, say)
     * took that report with it.  Our own fd (one per connection) is the one
     * to be sure of, whatever the report said. */
    int own = tls_async_fd(s->c);
    if (!s->afd && own >= 0 && nadd < 4)
        add[nadd++] = own;
    for (size_t i = 0; i < nadd; i++) {
        if (s->afd == add[i] + 1)
            continue;
        struct slot *a = grow_to(l, add[i]);
        s = slot_of(l, fd); /* (the table may have moved) */
        if (a == NULL)
            return -ENOMEM;
        struct epoll_event e = {.events = EPOLLIN, .data.fd = add[i]};
        if (epoll_ctl(l->epfd, EPOLL_CTL_ADD, add[i], &e) != 0 && errno != EEXIST)
            return -errno;
        a->owner = fd + 1;
        s->afd = add[i] + 1;
    }
    if (quiet) {
        int r = set_events(l, fd, s, 0);
        if (r != 0)
            return r;
    }
    s->paused = 1;
    counter_add(&l->async_waits, 1);
    return 0;
}

int wsloop_async(wsloop *l, int fd, tls_conn *c)
{
    struct slot *s = slot_of(l, fd);
    if (s == NULL || !s->watched || c == NULL || s->hot)
        return -EINVAL;
    s->c = c;
    return await_async(l, fd, 1); /* (its socket waits too: only the job's end resumes) */
}

/* An async fd is readable: its connection's paused call can go on.  A hot
 * connection's pump runs again (WSECHO_WAIT, or a status to report); a
 * Python-driven one is reported ready for reading and writing (Python repeats
 * what paused). */
static int async_ready(wsloop *l, struct slot *a, struct wsloop_event *out, int n)
{
    int fd = a->owner - 1;
    struct slot *s = slot_of(l, fd);
    if (s == NULL || !s->watched)
        return n;
    /* Whoever paused it (the loop, or Python, which may have taken the
     * connection back since), the job is done: the paused call goes on now. */
    s->paused = 0;
    counter_add(&l->async_resumes, 1);
    if (!s->hot) { /* Python repeats what paused: a read, a write, or either */
        int op = s->c != NULL ? tls_async_paused(s->c) : TLS_OP_NONE;
        uint32_t ev = op == TLS_OP_READ    ? EPOLLIN
                      : op == TLS_OP_WRITE ? EPOLLOUT
                                           : EPOLLIN | EPOLLOUT;
        return report(out, n, fd, ev, WSECHO_WAIT);
    }
    if (set_events(l, fd, s, EPOLLIN | EPOLLRDHUP) != 0)
        return report_cold(out, n, fd, s, ended(s, TLS_ERROR));
    int r = run_inline(l, fd, s);
    if (r != WSECHO_WAIT)
        return report_cold(out, n, fd, slot_of(l, fd), r);
    /* The pump's read may have stood back for the paused call (a write): what
     * the TLS layer holds now gets no socket event, so serve it again. */
    s = slot_of(l, fd);
    if (!s->paused && !s->kicked && tls_has_pending(s->c) && kick(l, fd, s) != 0)
        return report_cold(out, n, fd, s, ended(s, TLS_ERROR));
    return n;
}

int wsloop_poll(wsloop *l, int timeout_ms, struct wsloop_event *out, int max)
{
    if (max <= 0)
        return -EINVAL;
    /* Each epoll event and each finished job reports at most once: ask for no
     * more than there is room for, the rest stays pending. */
    int wait = l->nkicked > 0 ? 0 : timeout_ms;
    int64_t to_scan = l->next_scan - now_ms();
    if (wait < 0 || to_scan < wait)
        wait = to_scan > 0 ? (int)to_scan : 0;
    int ready = epoll_wait(l->epfd, l->ev, max < MAX_EVENTS ? max : MAX_EVENTS, wait);
    counter_add(&l->polls, 1);
    if (ready < 0)
        return errno == EINTR ? 0 : -errno;
    l->now = now_ms();
    int n = 0, pool_ready = 0;
    for (int i = 0; i < ready; i++) {
        int fd = l->ev[i].data.fd;
        uint32_t events = l->ev[i].events;
        if (fd == l->pool_fd) {
            pool_ready = 1; /* last, with the room the others leave */
            continue;
        }
        struct slot *s = slot_of(l, fd);
        if (s != NULL && s->owner) {
            n = async_ready(l, s, out, n);
            continue;
        }
        if (s != NULL)
            s->active = l->now;
        if (s != NULL && s->hot) {
            counter_add(&l->hot_events, 1);
            int r = serve(l, fd, s);
            if (r != WSECHO_WAIT)
                n = report_cold(out, n, fd, s, r);
        } else if (s != NULL && s->watched) {
            n = report(out, n, fd, events, WSECHO_WAIT);
        }
    }
    if (l->nkicked > 0)
        n = serve_kicked(l, out, n, max);
    if (pool_ready && n < max) { /* jobs beyond the room keep the eventfd readable */
        size_t done = offload_done(l->pool, l->done, (size_t)(max - n));
        for (size_t j = 0; j < done; j++) {
            int r = complete(l, l->done[j]);
            if (r != WSECHO_WAIT)
                n = report_cold(out, n, l->done[j]->id, &l->slots[l->done[j]->id], r);
        }
    }
    if (l->nbatch > 0)
        submit_batch(l);
    if (l->now >= l->next_scan && n < max)
        n = scan(l, out, n, max);
    counter_add(&l->reported, (uint64_t)n);
    return n;
}

int wsloop_drain(wsloop *l, int timeout_ms)
{
    if (l->nbatch > 0)
        submit_batch(l);
    while (l->inflight > 0) {
        struct epoll_event e;
        int ready;
        do /* only the pool fd matters now; other fds' events stay pending */
            ready = epoll_wait(l->epfd, &e, 1, timeout_ms);
        while (ready < 0 && errno == EINTR);
        size_t done = offload_done(l->pool, l->done, MAX_EVENTS);
        for (size_t j = 0; j < done; j++) {
            struct slot *s = slot_of(l, l->done[j]->id);
            l->inflight--;
            if (s != NULL)
                s->busy = s->hot = 0;
        }
        if (ready == 0 && done == 0)
            return -ETIMEDOUT;
    }
    return 0;
}

void wsloop_get_counters(wsloop *l, struct wsloop_counters *out)
{
    out->polls = counter_get(&l->polls);
    out->hot_events = counter_get(&l->hot_events);
    out->reported = counter_get(&l->reported);
    out->dispatches = counter_get(&l->dispatches);
    out->jobs = counter_get(&l->jobs);
    out->parks = counter_get(&l->parks);
    out->unparks = counter_get(&l->unparks);
    out->pings = counter_get(&l->pings);
    out->scans = counter_get(&l->scans);
    out->wakes = counter_get(&l->wakes);
    out->async_waits = counter_get(&l->async_waits);
    out->async_resumes = counter_get(&l->async_resumes);
    out->parked = l->nparked;
    struct ringpool_counters rc = {0};
    if (l->rings != NULL)
        ringpool_counters(l->rings, &rc);
    out->rings_out = rc.out;
    out->rings_spare = rc.spare;
}
