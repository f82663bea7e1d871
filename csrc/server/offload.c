/*
 * offload.c - the offload thread pool (see offload.h).
 *
 * One mutex and condition variable guard the queue of dispatches, another
 * mutex the list of finished jobs: the costs the seed report measured (a
 * lock, a wake-up and a cache-cold worker per message) are here on purpose,
 * as in any thread-pool dispatch; batching amortises them.
 */
#define _GNU_SOURCE
#include "offload.h"

#include <errno.h>
#include <pthread.h>
#include <stdlib.h>
#include <sys/eventfd.h>
#include <unistd.h>

/* A dispatch is a chain of jobs linked through `next`; queued dispatches
 * are linked through their first job's `queued`. */
struct offload {
    pthread_mutex_t lock; /* queue, stopping */
    pthread_cond_t work;
    struct offload_job *head, *tail; /* first jobs of queued dispatches */
    int stopping;
    pthread_mutex_t done_lock; /* done list */
    struct offload_job *done;
    int efd;
    int nthreads;
    pthread_t threads[];
};

static void finish(offload *o, struct offload_job *first)
{
    struct offload_job *last = first;
    while (last->next != NULL)
        last = last->next;
    pthread_mutex_lock(&o->done_lock);
    last->next = o->done;
    o->done = first;
    pthread_mutex_unlock(&o->done_lock);
    uint64_t one = 1;
    ssize_t w;
    do /* the counter cannot overflow in practice; EAGAIN would mean it did */
        w = write(o->efd, &one, sizeof one);
    while (w < 0 && errno == EINTR);
}

static void *worker(void *arg)
{
    offload *o = arg;
    pthread_mutex_lock(&o->lock);
    for (;;) {
        while (o->head == NULL && !o->stopping)
            pthread_cond_wait(&o->work, &o->lock);
        struct offload_job *first = o->head;
        if (first == NULL)
            break; /* stopping and nothing left */
        o->head = first->queued;
        if (o->head == NULL)
            o->tail = NULL;
        pthread_mutex_unlock(&o->lock);
        for (struct offload_job *j = first; j != NULL; j = j->next)
            j->status = wsecho_pump(j->tls, j->plain, j->echo, j->flags);
        finish(o, first);
        pthread_mutex_lock(&o->lock);
    }
    pthread_mutex_unlock(&o->lock);
    return NULL;
}

offload *offload_new(int threads)
{
    if (threads < 1 || threads > 1024) {
        errno = EINVAL;
        return NULL;
    }
    offload *o = calloc(1, sizeof *o + (size_t)threads * sizeof(pthread_t));
    if (o == NULL)
        return NULL;
    o->efd = eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC);
    if (o->efd < 0) {
        free(o);
        return NULL;
    }
    int err = pthread_mutex_init(&o->lock, NULL);
    if (err == 0 && (err = pthread_mutex_init(&o->done_lock, NULL)) != 0)
        pthread_mutex_destroy(&o->lock);
    if (err == 0 && (err = pthread_cond_init(&o->work, NULL)) != 0) {
        pthread_mutex_destroy(&o->lock);
        pthread_mutex_destroy(&o->done_lock);
    }
    if (err != 0) {
        close(o->efd);
        free(o);
        errno = err;
        return NULL;
    }
    for (; o->nthreads < threads; o->nthreads++) {
        err = pthread_create(&o->threads[o->nthreads], NULL, worker, o);
        if (err != 0) {
            offload_free(o); /* joins the ones started */
            errno = err;
            return NULL;
        }
    }
    return o;
}

void offload_free(offload *o)
{
    if (o == NULL)
        return;
    pthread_mutex_lock(&o->lock);
    o->stopping = 1;
    pthread_cond_broadcast(&o->work);
    pthread_mutex_unlock(&o->lock);
    for (int i = 0; i < o->nthreads; i++)
        pthread_join(o->threads[i], NULL);
    pthread_cond_destroy(&o->work);
    pthread_mutex_destroy(&o->lock);
    pthread_mutex_destroy(&o->done_lock);
    close(o->efd);
    free(o);
}

int offload_fd(const offload *o) { return o->efd; }

int offload_submit(offload *o, struct offload_job *const *jobs, size_t n)
{
    if (n == 0)
        return -1;
    for (size_t i = 0; i < n; i++)
        jobs[i]->next = i + 1 < n ? jobs[i + 1] : NULL;
    struct offload_job *first = jobs[0];
    first->queued = NULL;
    pthread_mutex_lock(&o->lock);
    if (o->tail != NULL)
        o->tail->queued = first;
    else
        o->head = first;
    o->tail = first;
    pthread_cond_signal(&o->work);
    pthread_mutex_unlock(&o->lock);
    return 0;
}

size_t offload_done(offload *o, struct offload_job **out, size_t max)
{
    uint64_t count;
    while (read(o->efd, &count, sizeof count) < 0 && errno == EINTR)
        ; /* EAGAIN: nothing signalled since the last call */
    size_t n = 0;
    pthread_mutex_lock(&o->done_lock);
    while (o->done != NULL && n < max) {
        out[n++] = o->done;
        o->done = o->done->next;
    }
    int more = o->done != NULL;
    pthread_mutex_unlock(&o->done_lock);
    if (more) { /* keep the eventfd readable for the rest */
        uint64_t one = 1;
        ssize_t w;
        do
            w = write(o->efd, &one, sizeof one);
        while (w < 0 && errno == EINTR);
    }
    return n;
}
