/*
 * counter.h - statistics counters with one writer thread and any readers.
 *
 * One writer means load + store is enough (no locked read-modify-write);
 * relaxed, because a counter orders nothing.  _Atomic keeps the concurrent
 * reads defined behaviour.
 */
#ifndef WSSTLS_COUNTER_H
#define WSSTLS_COUNTER_H

#include <stdatomic.h>
#include <stdint.h>

typedef _Atomic uint64_t counter;

static inline void counter_add(counter *c, uint64_t delta)
{
    uint64_t now = atomic_load_explicit(c, memory_order_relaxed);
    atomic_store_explicit(c, now + delta, memory_order_relaxed);
}

static inline uint64_t counter_get(const counter *c)
{
    return atomic_load_explicit(c, memory_order_relaxed);
}

static inline void counter_zero(counter *c)
{
    atomic_store_explicit(c, 0, memory_order_relaxed);
}

#endif
