/*
 * cryptopool.h - the worker threads that seal and open records for the
 * pipelined cipher (pipecipher.h) and the ASYNC provider (asyncprov.h).
 *
 * One pool per process, started by the first context that needs it and
 * joined when the last one is freed (cpool_acquire / cpool_release).  Work
 * comes as a batch of tasks:
 *   - a pipelined batch: the caller queues all tasks but its own share, runs
 *     that share itself, then waits for the rest (cpool_wait);
 *   - an ASYNC batch: every task goes to the workers; the worker finishing
 *     the last task adds 1 to the batch's eventfd, which is the only
 *     completion signal (the paused SSL call resumes when it is readable).
 * After its last task a worker never touches the batch again, so the caller
 * may free or reuse the batch as soon as it knows the batch is done.
 */
#ifndef WSSTLS_CRYPTOPOOL_H
#define WSSTLS_CRYPTOPOOL_H

#include <stdatomic.h>
#include <stddef.h>
#include <stdint.h>

struct cpool_task;
typedef void (*cpool_fn)(struct cpool_task *t);

struct cpool_batch {
    atomic_size_t remaining; /* tasks not finished */
    int efd;                 /* >= 0: written once when remaining reaches 0 */
};

struct cpool_task {
    cpool_fn fn;
    struct cpool_batch *batch;
    struct cpool_task *next; /* the queue's link (the pool's) */
    void *arg;
    size_t index;
    int ok; /* set by fn */
};

/* Counters since the pool started (cpool_counters). */
struct cpool_counters {
    uint64_t threads;     /* workers running */
    uint64_t dispatches;  /* batches given to the workers */
    uint64_t tasks;       /* tasks run by workers */
    uint64_t caller_tasks;/* tasks run by the calling thread (its share) */
    uint64_t worker_ns;   /* time workers spent running tasks */
    uint64_t wait_ns;     /* time callers spent waiting for workers (pipelined) */
};

/* Take a reference to the process's pool, starting `threads` workers when it
 * is the first (later callers share it; threads < 1 means one less than the
 * CPUs this process may use, at least 1).  0 on success, else -errno. */
int cpool_acquire(int threads);
/* Drop a reference; the last one joins the workers. */
void cpool_release(void);
/* The workers running now (0: no pool). */
int cpool_threads(void);

/* Start a batch of n tasks: batch->remaining = n, then queue tasks[0..n).
 * Each task's fn, arg and index are the caller's; the pool sets batch.
 * Returns 0, or -ENOSYS when no pool runs (run them inline instead). */
int cpool_submit(struct cpool_batch *batch, struct cpool_task *tasks, size_t n);
/* Run one task on the calling thread, as part of its batch. */
void cpool_run_here(struct cpool_task *t);
/* Wait until every task of the batch is done (pipelined batches). */
void cpool_wait(struct cpool_batch *batch);

void cpool_counters(struct cpool_counters *out);
void cpool_reset_counters(void);

#endif
