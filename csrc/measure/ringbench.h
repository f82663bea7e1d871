/*
 * ringbench.h - C-side loops for bench/ring_bench.py: the ring driven from C
 * (no Python crossing per operation) and a minimal ring as the floor.
 */
#ifndef WSSTLS_RINGBENCH_H
#define WSSTLS_RINGBENCH_H

#include <stddef.h>
#include <stdint.h>

#include "core/ring.h"

/* `iters` write+read pairs of `msg` bytes through r, after advancing its
 * indices by `start` bytes (so pairs can be made to straddle the wrap).
 * Returns a checksum of what was read, or UINT64_MAX if a pair came up
 * short or msg exceeds the ring. */
uint64_t ringbench_pairs(ring *r, size_t msg, size_t iters, size_t start);

/* The same loop through the simplest correct power-of-two ring (no atomics,
 * no counters, no mirrored mode; one call per operation) working on r's own
 * data area and the same source and destination buffers, so the two loops
 * copy between the same addresses and only the ring logic differs. */
uint64_t ringbench_minimal_pairs(ring *r, size_t msg, size_t iters, size_t start);

#endif
