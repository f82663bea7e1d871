/*
 * ringpool.h - plaintext rings for the connections that have bytes in
 * flight, and none for the idle ones.
 *
 * An idle connection needs no ring: the event loop hands its ring back here
 * when the connection goes idle ("parks") and takes one again when bytes
 * arrive.  The pool keeps up to `max_spare` returned rings, emptied, for the
 * next taker (a mirrored ring costs five system calls to make and three
 * memory mappings to keep) and destroys the rest, so what it holds stays
 * bounded whatever the number of connections: the rings in use plus
 * `max_spare`.
 *
 * One thread: the event loop's.
 */
#ifndef WSSTLS_RINGPOOL_H
#define WSSTLS_RINGPOOL_H

#include <stddef.h>

#include "core/ring.h"

typedef struct ringpool ringpool;

struct ringpool_counters {
    size_t out;      /* rings taken and not returned */
    size_t spare;    /* rings kept for the next taker */
    size_t created;  /* rings made since the pool was made */
    size_t reused;   /* takes served from the spares */
};

/* Rings of `capacity` bytes (rounded as ring_create does) with ring_create's
 * `flags`.  NULL with errno EINVAL (size, flags) or ENOMEM. */
ringpool *ringpool_new(size_t capacity, int flags, size_t max_spare);
/* Destroys the spares.  Rings still out are the takers' to give back first. */
void ringpool_free(ringpool *p);

/* An empty ring: a spare, or a new one (NULL with ring_create's errno). */
ring *ringpool_get(ringpool *p);
/* Give a ring back (from this pool; NULL is a no-op): emptied and kept as a
 * spare, or destroyed when max_spare are kept already. */
void ringpool_put(ringpool *p, ring *r);
/* Destroy spares until at most `keep` are left. */
void ringpool_shrink(ringpool *p, size_t keep);

size_t ringpool_capacity(const ringpool *p);
void ringpool_counters(const ringpool *p, struct ringpool_counters *out);

#endif
