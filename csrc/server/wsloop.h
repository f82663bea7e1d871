/*
 * wsloop.h - the echo server's event loop core: epoll, and the hot path of
 * every TLS design, in C.
 *
 * Python owns the server: accepting, handshakes, the RFC 6455 framer,
 * backpressure, closing.  It hands a connection over ("hot") when it is open,
 * between messages, with no output waiting; from then on the loop serves the
 * connection's input alone, in the configured design:
 *   inline     wsecho_pump(READ|ECHO) on the loop thread;
 *   offload    tls_fill, then one offload job per message;
 *   batched    tls_fill, then one dispatch per worker per loop iteration;
 *   threshold  offload when the bytes waiting reach `threshold`, else inline.
 * The first result that needs a decision (a frame for the framer, output the
 * kernel refused, invalid UTF-8, the session ending) makes the connection
 * cold again and is reported as a WSLOOP_COLD event with that wsecho status.
 * Readiness of cold connections and of other watched fds is reported as
 * WSLOOP_READY events as it comes.
 *
 * The loop keeps pointers to the connection's tls_conn, plaintext ring and
 * wsecho state: unwatch a connection before freeing them.
 *
 * Memory (wsloop_set_rings, wsloop_set_timers): with a ring pool the loop
 * owns each connection's plaintext ring (wsloop_plain hands it to Python).
 * A hot connection that had no event for `park_ms` and has nothing in
 * flight is parked: its plaintext ring goes back to the pool and its TLS
 * buffers are freed (tls_park); its next event takes them again.  In the
 * inline design that input is first read into one ring the loop shares:
 * when it leaves nothing in flight (a keepalive's pong, a sparse small
 * message), the connection stays parked.  So an idle connection costs no
 * ring and no record buffer, whatever else is busy.
 *
 * Timers: every watched fd has the time of its last event (input, or room
 * to write: progress either way).  A connection under keepalive
 * (wsloop_timers) is pinged after `ping_ms` without an event (by the loop
 * itself when the connection is hot and TLS, else reported as WSLOOP_PING)
 * and reported as WSLOOP_EXPIRED after `idle_ms`; any fd can have a
 * deadline (a handshake's).  The loop looks at every slot once per scan
 * (WSLOOP_SCAN_MS): O(connections) per scan, nothing per event.
 */
#ifndef WSSTLS_WSLOOP_H
#define WSSTLS_WSLOOP_H

#include <stdint.h>

#include "offload.h"
#include "core/ring.h"
#include "core/tls.h"
#include "wsecho.h"

enum wsloop_mode {
    WSLOOP_INLINE = 0,
    WSLOOP_OFFLOAD = 1,
    WSLOOP_BATCHED = 2,
    WSLOOP_THRESHOLD = 3,
};

/* What an event reports. */
enum wsloop_report {
    WSLOOP_READY = 0, /* a watched fd Python serves is ready: see `events` */
    WSLOOP_COLD = 1,  /* a hot connection's hot path stopped at something that
                         needs a decision (`echo`); it is Python's again */
    WSLOOP_EXPIRED = 2, /* its deadline passed, or it was idle for idle_ms:
                           close it (it is Python's again) */
    WSLOOP_PING = 3,    /* a keepalive ping is due and the loop could not send
                           it: send one (the connection is Python's again) */
    WSLOOP_NOMEM = 4,   /* a parked connection's input came and no ring could
                           be had for it (it is Python's again) */
};

#define WSLOOP_SCAN_MS 250 /* how often the timers and parking are looked at */

struct wsloop_event {
    int fd;
    uint32_t events; /* WSLOOP_READY: the epoll events */
    int report;      /* an enum wsloop_report */
    int echo;        /* WSLOOP_COLD: an enum wsecho_status other than
                        WSECHO_WAIT (with WSECHO_ENDED, the connection's
                        struct wsecho says how it ended) */
};

struct wsloop_counters {
    uint64_t polls;       /* epoll_wait calls */
    uint64_t hot_events;  /* readiness events served without Python */
    uint64_t reported;    /* events handed to Python */
    uint64_t dispatches;  /* offload dispatches submitted */
    uint64_t jobs;        /* jobs in them */
    uint64_t parks;       /* connections parked (each time) */
    uint64_t unparks;     /* parked connections woken by an event */
    uint64_t pings;       /* keepalive pings the loop sent itself */
    uint64_t scans;       /* timer scans */
    uint64_t wakes;       /* parked connections' input served in the shared ring (inline):
                             they stayed parked */
    uint64_t parked;      /* connections parked now */
    uint64_t rings_out;   /* plaintext rings held by connections now */
    uint64_t rings_spare; /* plaintext rings kept for the next taker */
    uint64_t async_waits;   /* ASYNC pauses the loop waited for (async fd) */
    uint64_t async_resumes; /* of which resumed */
};

typedef struct wsloop wsloop;

/* pool: the offload pool for the offload designs (NULL for inline). */
wsloop *wsloop_new(int mode, offload *pool, size_t threshold, int threads);
void wsloop_free(wsloop *l);

/* Report fd's readiness for `events` (EPOLLIN, EPOLLOUT, ...; 0 = none for
 * now) to Python.  Makes a hot connection cold. */
int wsloop_watch(wsloop *l, int fd, uint32_t events);
/* Forget fd (before closing it or freeing what wsloop_hot gave). */
int wsloop_unwatch(wsloop *l, int fd);
/* Serve fd's input in C.  job: the connection's offload job (offload
 * designs), else NULL.  fd must be watched already.  With a ring pool,
 * plain is NULL or fd's own ring (wsloop_plain). */
int wsloop_hot(wsloop *l, int fd, tls_conn *c, ring *plain, struct wsecho *st,
               struct offload_job *job);

/* fd's input waits in its TLS layer, where no readiness will signal it (a
 * read stopped at a full plaintext ring, or input came while the connection
 * was Python's): at the next poll, serve it if hot, else report it as a
 * WSLOOP_READY event with EPOLLIN if it is watched for input.  The loop does
 * the same by itself for its hot connections: it is the one place where
 * "read again while TLS holds input" lives.  0 or -errno. */
int wsloop_kick(wsloop *l, int fd);

/* Plaintext rings from a pool of the loop's (see ringpool.h): up to
 * max_spare kept for reuse.  Once, before any fd is watched.  0 or -errno. */
int wsloop_set_rings(wsloop *l, size_t capacity, size_t max_spare);
/* fd's plaintext ring (the pool's), taken when it has none (a new or parked
 * connection: this unparks it).  NULL with errno when none can be had. */
ring *wsloop_plain(wsloop *l, int fd);
/* park_ms: park a hot connection after this long without an event (0: never);
 * ping_ms, idle_ms: keepalive (0: off).  0 or -EINVAL. */
int wsloop_set_timers(wsloop *l, int park_ms, int ping_ms, int idle_ms);
/* fd's own timers: WSLOOP_EXPIRED once deadline_ms have passed (0: no
 * deadline); keepalive: the loop's ping and idle timers apply.  0 or -errno. */
int wsloop_timers(wsloop *l, int fd, int deadline_ms, int keepalive);

/* One epoll_wait (timeout in ms, -1 = forever): serve hot connections and
 * the offload pool, return up to `max` events for Python (0: nothing for
 * it), or -errno. */
int wsloop_poll(wsloop *l, int timeout_ms, struct wsloop_event *out, int max);

/* Shutting down: wait (up to timeout_ms without progress) until every job is
 * back from the workers, without acting on the results; the connections are
 * cold and can be unwatched.  0, or -ETIMEDOUT. */
int wsloop_drain(wsloop *l, int timeout_ms);

/* fd's connection (Python-driven, not hot) has an SSL call paused in an
 * ASYNC job: report fd ready (EPOLLIN | EPOLLOUT) once the job is done, so
 * that Python repeats the call.  0, or -errno.  Hot connections are handled
 * by the loop itself: their pump runs again when their async fd is ready. */
int wsloop_async(wsloop *l, int fd, tls_conn *c);
void wsloop_get_counters(wsloop *l, struct wsloop_counters *out);

#endif
