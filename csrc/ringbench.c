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

uint64_t ringbench_pairs(ring *r, size_t msg, size_t iters, size_t start)
{
    if (msg == 0 || msg > ring_cap(r))
        return UINT64_MAX;
    unsigned char *src = malloc(msg), *dst = malloc(msg);
    uint64_t sum = UINT64_MAX;
    if (src == NULL || dst == NULL)
        goto out;
    for (size_t i = 0; i < msg; i++)
        src[i] = (unsigned char)i;
    ring_reset(r);
    for (size_t left = start % ring_cap(r); left > 0;) {
        size_t step = left < msg ? left : msg;
        ring_write(r, src, step);
        ring_read(r, dst, step);
        left -= step;
    }
    sum = 0;
    for (size_t i = 0; i < iters; i++) {
        if (ring_write(r, src, msg) != msg || ring_read(r, dst, msg) != msg) {
            sum = UINT64_MAX;
            break;
        }
        sum += checksum(dst, msg);
    }
out:
    free(src);
    free(dst);
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

uint64_t ringbench_minimal_pairs(size_t cap, size_t msg, size_t iters, size_t start)
{
    if (cap == 0 || (cap & (cap - 1)) != 0 || msg == 0 || msg > cap)
        return UINT64_MAX;
    struct minring m = {malloc(cap), cap - 1, start % cap, start % cap};
    unsigned char *src = malloc(msg), *dst = malloc(msg);
    uint64_t sum = UINT64_MAX;
    if (m.buf == NULL || src == NULL || dst == NULL)
        goto out;
    for (size_t i = 0; i < msg; i++)
        src[i] = (unsigned char)i;
    sum = 0;
    for (size_t i = 0; i < iters; i++) {
        if (min_write(&m, src, msg) != msg || min_read(&m, dst, msg) != msg) {
            sum = UINT64_MAX;
            break;
        }
        sum += checksum(dst, msg);
    }
out:
    free(m.buf);
    free(src);
    free(dst);
    return sum;
}
