/*
 * offload.h - a thread pool that runs the echo hot path (wsecho_pump) for
 * connections the event loop hands over: the seed report's "async TLS
 * offload", with wsstls's rings as the hand-off.
 *
 * The event loop thread reads the socket into a connection's incoming ring
 * (tls_fill) and submits a job; a worker runs SSL_read/SSL_write (and the
 * framing) for it, its records going into the outgoing ring; the loop is
 * woken through an eventfd, collects finished jobs and sends the outgoing
 * ring (tls_flush).  Each ring has one producer and one consumer thread.
 *
 * A dispatch is one or more jobs run in order by one worker: one job per
 * message for "offload", every ready connection of a loop iteration for
 * "batched".  A job must not be submitted again before it came back from
 * offload_done: a connection's SSL object is used by one thread at a time.
 */
#ifndef WSSTLS_OFFLOAD_H
#define WSSTLS_OFFLOAD_H

#include <stddef.h>
#include <stdint.h>

#include "core/ring.h"
#include "core/tls.h"
#include "wsecho.h"

struct offload_job {
    tls_conn *tls;            /* in */
    ring *plain;              /* in */
    struct wsecho *echo;      /* in */
    int flags;                /* in: wsecho flags */
    int id;                   /* in: the caller's (e.g. the socket's fd) */
    int status;               /* out: wsecho_pump's result (enum wsecho_status) */
    struct offload_job *next; /* the pool's: the dispatch's jobs, then the done list */
    struct offload_job *queued; /* the pool's: the next dispatch (on a first job) */
};

typedef struct offload offload;

/* Start `threads` workers.  NULL with errno set on failure. */
offload *offload_new(int threads);
/* Run what was submitted, stop and join the workers, free.  NULL: no-op. */
void offload_free(offload *o);
/* Readable when jobs have finished (then call offload_done). */
int offload_fd(const offload *o);
/* Hand jobs[0..n) to one worker as one dispatch (no allocation: the jobs
 * are linked together).  0, or -1 (n == 0). */
int offload_submit(offload *o, struct offload_job *const *jobs, size_t n);
/* Up to max finished jobs into out; returns how many.  Clears the eventfd
 * first, so a job finishing meanwhile makes it readable again. */
size_t offload_done(offload *o, struct offload_job **out, size_t max);

#endif
