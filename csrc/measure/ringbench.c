/*
 * ringbench.c - loops for the ring benchmark (see ringbench.h).
 */
#include "ringbench.h"

#include <stdlib.h>
#include <string.h>

static uint64_t checksum(const unsigned char *p, size_t n)
{
    return (uint64_t)p[0] + p[n - 1];
}

/* Source and destination for both loops: allocated once, so both copy
 * between the same addresses (memcpy speed depends on their alignment). */
static unsigned char *bench_src, *bench_dst;
static size_t bench_len;

static int buffers(size_t msg)
{
    if (msg <= bench_len)
        return 0;
    unsigned char *s = realloc(bench_src, msg), *d = realloc(bench_dst, msg);
    if (s != NULL)
        bench_src = s;
    if (d != NULL)
        bench_dst = d;
    if (s == NULL || d == NULL)
        return -1;
    for (size_t i = 0; i < msg; i++)
        bench_src[i] = (unsigned char)i;
    bench_len = msg;
    return 0;
}

uint64_t ringbench_pairs(ring *r, size_t msg, size_t iters, size_t start)
{
    if (msg == 0 || msg > ring_cap(r) || buffers(msg) != 0)
        return UINT64_MAX;
    ring_reset(r);
    for (size_t left = start % ring_cap(r); left > 0;) {
        size_t step = left < msg ? left : msg;
        ring_write(r, bench_src, step);
        ring_read(r, bench_dst, step);
        left -= step;
    }
    uint64_t sum = 0;
    for (size_t i = 0; i < iters; i++) {
        if (ring_write(r, bench_src, msg) != msg || ring_read(r, bench_dst, msg) != msg)
            return UINT64_MAX;
        sum += checksum(bench_dst, msg);
    }
    return sum;
}

struct minring {
    unsigned char *buf;
    size_t mask, head, tail;
};

/* noinline: one call per operation with the indices in memory, as any ring
 * used through an API is; inlined into the loop the indices would live in
 * registers and the comparison would measure inlining, not the ring. */
__attribute__((noinline)) static size_t min_write(struct minring *m, const unsigned char *src, size_t n)
{
    size_t room = m->mask + 1 - (m->head - m->tail);
    n = n < room ? n : room;
    size_t off = m->head & m->mask, first = m->mask + 1 - off;
    first = n < first ? n : first;
    memcpy(m->buf + off, src, first);
    memcpy(m->buf, src + first, n - first);
    m->head += n;
    return n;
}

__attribute__((noinline)) static size_t min_read(struct minring *m, unsigned char *dst, size_t n)
{
    size_t have = m->head - m->tail;
    n = n < have ? n : have;
    size_t off = m->tail & m->mask, first = m->mask + 1 - off;
    first = n < first ? n : first;
    memcpy(dst, m->buf + off, first);
    memcpy(dst + first, m->buf, n - first);
    m->tail += n;
    return n;
}

uint64_t ringbench_minimal_pairs(ring *r, size_t msg, size_t iters, size_t start)
{
    size_t cap = ring_cap(r);
    if (msg == 0 || msg > cap || buffers(msg) != 0)
        return UINT64_MAX;
    struct minring m = {ring_data(r), cap - 1, start % cap, start % cap};
    uint64_t sum = 0;
    for (size_t i = 0; i < iters; i++) {
        if (min_write(&m, bench_src, msg) != msg || min_read(&m, bench_dst, msg) != msg)
            return UINT64_MAX;
        sum += checksum(bench_dst, msg);
    }
    return sum;
}
