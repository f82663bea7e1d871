/*
 * cryptopool.c - the record crypto worker pool (see cryptopool.h).
 *
 * A mutex-protected FIFO of tasks and a condition variable for the workers;
 * a second condition variable wakes callers waiting for a pipelined batch.
 * A caller spins a little before it sleeps: a batch of records takes a few
 * microseconds, less than a sleep and a wake-up.
 */
#define _GNU_SOURCE
#include "cryptopool.h"

#include <errno.h>
#include <pthread.h>
#include <sched.h>
#include <stdlib.h>
#include <time.h>
#include <unistd.h>

#include "counter.h"

#define SPINS 4000

struct cpool {
    pthread_mutex_t mu;
    pthread_cond_t work; /* workers: a task was queued, or stop */
    pthread_cond_t done; /* callers: a pipelined batch finished */
    struct cpool_task *head, *tail;
    int stop;
    int nthreads;
    pthread_t *threads;
};

static pthread_mutex_t life = PTHREAD_MUTEX_INITIALIZER; /* refs, pool */
static size_t refs;
static struct cpool *pool;           /* NULL: none */
static _Atomic(struct cpool *) live; /* what submitters read */

/* Written by many threads: atomic read-modify-write (counter.h is for one writer). */
static atomic_uint_fast64_t n_dispatches, n_tasks, n_caller, n_worker_ns, n_wait_ns;

static uint64_t now_ns(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000000000u + (uint64_t)ts.tv_nsec;
}

static void finish(struct cpool *p, struct cpool_task *t)
{
    struct cpool_batch *b = t->batch;
    int efd = b->efd; /* read before the decrement: after it, b may be gone */
    if (atomic_fetch_sub_explicit(&b->remaining, 1, memory_order_acq_rel) != 1)
        return;
    if (efd >= 0) {
        uint64_t one = 1;
        ssize_t w;
        do
            w = write(efd, &one, sizeof one);
        while (w < 0 && errno == EINTR);
        return; /* (an eventfd write of 1 cannot fail otherwise) */
    }
    pthread_mutex_lock(&p->mu);
    pthread_cond_broadcast(&p->done);
    pthread_mutex_unlock(&p->mu);
}

static void *worker(void *arg)
{
    struct cpool *p = arg;
    pthread_mutex_lock(&p->mu);
    for (;;) {
        while (p->head == NULL && !p->stop)
            pthread_cond_wait(&p->work, &p->mu);
        if (p->head == NULL) /* stop, and nothing left */
            break;
        struct cpool_task *t = p->head;
        p->head = t->next;
        if (p->head == NULL)
            p->tail = NULL;
        pthread_mutex_unlock(&p->mu);
        uint64_t t0 = now_ns();
        t->fn(t);
        atomic_fetch_add_explicit(&n_worker_ns, now_ns() - t0, memory_order_relaxed);
        atomic_fetch_add_explicit(&n_tasks, 1, memory_order_relaxed);
        finish(p, t);
        pthread_mutex_lock(&p->mu);
    }
    pthread_mutex_unlock(&p->mu);
    return NULL;
}

static void pool_free(struct cpool *p, int started)
{
    pthread_mutex_lock(&p->mu);
    p->stop = 1;
    pthread_cond_broadcast(&p->work);
    pthread_mutex_unlock(&p->mu);
    for (int i = 0; i < started; i++)
        pthread_join(p->threads[i], NULL);
    pthread_cond_destroy(&p->work);
    pthread_cond_destroy(&p->done);
    pthread_mutex_destroy(&p->mu);
    free(p->threads);
    free(p);
}

static int default_threads(void)
{
    cpu_set_t set;
    int n = 2;
    if (sched_getaffinity(0, sizeof set, &set) == 0)
        n = CPU_COUNT(&set);
    return n > 1 ? n - 1 : 1;
}

int cpool_acquire(int threads)
{
    int err = 0;
    pthread_mutex_lock(&life);
    if (pool == NULL) {
        if (threads < 1)
            threads = default_threads();
        struct cpool *p = calloc(1, sizeof *p);
        if (p == NULL || (p->threads = calloc((size_t)threads, sizeof *p->threads)) == NULL) {
            free(p);
            err = -ENOMEM;
            goto out;
        }
        pthread_mutex_init(&p->mu, NULL);
        pthread_cond_init(&p->work, NULL);
        pthread_cond_init(&p->done, NULL);
        for (int i = 0; i < threads; i++) {
            int r = pthread_create(&p->threads[i], NULL, worker, p);
            if (r != 0) {
                pool_free(p, i);
                err = -r;
                goto out;
            }
        }
        p->nthreads = threads;
        pool = p;
        atomic_store(&live, p);
    }
    refs++;
out:
    pthread_mutex_unlock(&life);
    return err;
}

void cpool_release(void)
{
    pthread_mutex_lock(&life);
    if (refs > 0 && --refs == 0) {
        struct cpool *p = pool;
        pool = NULL;
        atomic_store(&live, NULL);
        pool_free(p, p->nthreads);
    }
    pthread_mutex_unlock(&life);
}

int cpool_threads(void)
{
    struct cpool *p = atomic_load(&live);
    return p ? p->nthreads : 0;
}

int cpool_submit(struct cpool_batch *batch, struct cpool_task *tasks, size_t n)
{
    struct cpool *p = atomic_load(&live);
    if (p == NULL)
        return -ENOSYS;
    atomic_store_explicit(&batch->remaining, n, memory_order_relaxed);
    if (n == 0)
        return 0;
    for (size_t i = 0; i < n; i++) {
        tasks[i].batch = batch;
        tasks[i].next = i + 1 < n ? &tasks[i + 1] : NULL;
    }
    pthread_mutex_lock(&p->mu);
    if (p->tail != NULL)
        p->tail->next = &tasks[0];
    else
        p->head = &tasks[0];
    p->tail = &tasks[n - 1];
    if (n == 1)
        pthread_cond_signal(&p->work);
    else
        pthread_cond_broadcast(&p->work);
    pthread_mutex_unlock(&p->mu);
    atomic_fetch_add_explicit(&n_dispatches, 1, memory_order_relaxed);
    return 0;
}

void cpool_run_here(struct cpool_task *t)
{
    t->fn(t);
    atomic_fetch_add_explicit(&n_caller, 1, memory_order_relaxed);
}

void cpool_wait(struct cpool_batch *batch)
{
    if (atomic_load_explicit(&batch->remaining, memory_order_acquire) == 0)
        return;
    uint64_t t0 = now_ns();
    for (int i = 0; i < SPINS; i++) {
        if (atomic_load_explicit(&batch->remaining, memory_order_acquire) == 0)
            goto out;
#if defined(__x86_64__) || defined(__i386__)
        __builtin_ia32_pause();
#endif
    }
    struct cpool *p = atomic_load(&live); /* alive: the caller's context holds a reference */
    pthread_mutex_lock(&p->mu);
    while (atomic_load_explicit(&batch->remaining, memory_order_acquire) != 0)
        pthread_cond_wait(&p->done, &p->mu);
    pthread_mutex_unlock(&p->mu);
out:
    atomic_fetch_add_explicit(&n_wait_ns, now_ns() - t0, memory_order_relaxed);
}

void cpool_counters(struct cpool_counters *out)
{
    out->threads = (uint64_t)cpool_threads();
    out->dispatches = atomic_load(&n_dispatches);
    out->tasks = atomic_load(&n_tasks);
    out->caller_tasks = atomic_load(&n_caller);
    out->worker_ns = atomic_load(&n_worker_ns);
    out->wait_ns = atomic_load(&n_wait_ns);
}

void cpool_reset_counters(void)
{
    atomic_store(&n_dispatches, 0);
    atomic_store(&n_tasks, 0);
    atomic_store(&n_caller, 0);
    atomic_store(&n_worker_ns, 0);
    atomic_store(&n_wait_ns, 0);
}
