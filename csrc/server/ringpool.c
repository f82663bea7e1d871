/*
 * ringpool.c - plaintext rings for connections with bytes in flight (see
 * ringpool.h).
 */
#include "ringpool.h"

#include <errno.h>
#include <stdlib.h>

struct ringpool {
    size_t capacity;
    int flags;
    size_t max_spare;
    size_t nspare;
    ring **spare; /* max_spare slots, a stack: the most recently used first */
    size_t out, created, reused;
};

ringpool *ringpool_new(size_t capacity, int flags, size_t max_spare)
{
    /* A trial ring checks the size and flags as ring_create does, and is the
     * first spare. */
    ring *first = ring_create(capacity, flags);
    if (first == NULL)
        return NULL;
    ringpool *p = calloc(1, sizeof *p);
    ring **spare = calloc(max_spare ? max_spare : 1, sizeof *spare);
    if (p == NULL || spare == NULL) {
        free(p);
        free(spare);
        ring_destroy(first);
        errno = ENOMEM;
        return NULL;
    }
    p->capacity = ring_cap(first);
    p->flags = flags;
    p->max_spare = max_spare;
    p->spare = spare;
    p->created = 1;
    if (max_spare > 0)
        p->spare[p->nspare++] = first;
    else
        ring_destroy(first);
    return p;
}

void ringpool_free(ringpool *p)
{
    if (p == NULL)
        return;
    ringpool_shrink(p, 0);
    free(p->spare);
    free(p);
}

ring *ringpool_get(ringpool *p)
{
    ring *r;
    if (p->nspare > 0) {
        r = p->spare[--p->nspare];
        p->reused++;
    } else {
        r = ring_create(p->capacity, p->flags);
        if (r == NULL)
            return NULL;
        p->created++;
    }
    p->out++;
    return r;
}

void ringpool_put(ringpool *p, ring *r)
{
    if (r == NULL)
        return;
    p->out--;
    if (p->nspare < p->max_spare) {
        ring_reset(r);
        p->spare[p->nspare++] = r;
    } else {
        ring_destroy(r);
    }
}

void ringpool_shrink(ringpool *p, size_t keep)
{
    while (p->nspare > keep)
        ring_destroy(p->spare[--p->nspare]);
}

size_t ringpool_capacity(const ringpool *p) { return p->capacity; }

void ringpool_counters(const ringpool *p, struct ringpool_counters *out)
{
    out->out = p->out;
    out->spare = p->nspare;
    out->created = p->created;
    out->reused = p->reused;
}
