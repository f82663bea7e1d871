/*
 * ring_spsc.c - one producer thread and one consumer thread move TOTAL bytes
 * through a small ring, using every producer and consumer operation in turn,
 * and check each byte against a pattern.  Built and run by
 * tests/test_ring_tsan.py under ThreadSanitizer and under ASan + UBSan.
 *
 * Exit status 0 when every byte arrived in order and the copy counters add
 * up; 1 with a message on stderr otherwise.  A side that makes no progress
 * for DEADLINE_S seconds fails instead of hanging.
 */
#define _GNU_SOURCE
#include <pthread.h>
#include <sched.h>
#include <stdatomic.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "ring.h"

#define TOTAL ((size_t)64 << 20)
#define DEADLINE_S 120.0
#define MAX_CHUNK 6000 /* above the plain ring's capacity: writes come up short */

enum { P_WRITE, P_RESERVE, P_WRITE_IOV, P_MODES };
enum { C_READ, C_PEEK_DISCARD, C_PEEK_REGION, C_READ_IOV, C_SPANS, C_MODES };

struct run {
    ring *r;
    size_t cap;
    int mirrored;
    atomic_int failed;
    double deadline;
    /* Filled by each side for the checks after join. */
    uint64_t p_ops[P_MODES], c_ops[C_MODES];
    uint64_t p_copies, p_bytes, c_copies, c_bytes;
};

static unsigned char pat(size_t pos) { return (unsigned char)((pos % 251) ^ (pos >> 13)); }

static double now(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

static uint64_t next_rand(uint64_t *s) /* xorshift64 */
{
    uint64_t x = *s;
    x ^= x << 13;
    x ^= x >> 7;
    x ^= x << 17;
    return *s = x;
}

static void fail(struct run *run, const char *side, const char *what, size_t pos)
{
    if (atomic_exchange(&run->failed, 1) == 0)
        fprintf(stderr, "%s ring, %s: %s at stream byte %zu\n",
                run->mirrored ? "mirrored" : "plain", side, what, pos);
}

/* Nothing to do this turn: yield; 0 when the side must stop. */
static int idle(struct run *run, const char *side, size_t pos)
{
    if (atomic_load(&run->failed))
        return 0;
    if (now() > run->deadline) {
        fail(run, side, "deadline passed", pos);
        return 0;
    }
    sched_yield();
    return 1;
}

/* memcpy calls a copy of n bytes at counter pos costs (see ring.c). */
static uint64_t copies_for(const struct run *run, size_t pos, size_t n)
{
    if (n == 0)
        return 0;
    return run->mirrored || (pos & (run->cap - 1)) + n <= run->cap ? 1 : 2;
}

static int check(struct run *run, const char *side, const unsigned char *p, size_t n, size_t pos)
{
    for (size_t i = 0; i < n; i++) {
        if (p[i] != pat(pos + i)) {
            fail(run, side, "wrong byte", pos + i);
            return 0;
        }
    }
    return 1;
}

static void fill(unsigned char *p, size_t n, size_t pos)
{
    for (size_t i = 0; i < n; i++)
        p[i] = pat(pos + i);
}

static void sanity(struct run *run, const char *side, size_t pos)
{
    size_t len = ring_len(run->r), room = ring_writable(run->r);
    if (len > run->cap || room > run->cap)
        fail(run, side, "len or writable out of range", pos);
    uint64_t st[2];
    ring_stats(run->r, st);
    (void)st;
}

static void *producer(void *arg)
{
    struct run *run = arg;
    ring *r = run->r;
    unsigned char buf[MAX_CHUNK];
    uint64_t seed = 0x9e3779b97f4a7c15u;
    size_t pos = 0;
    while (pos < TOTAL) {
        uint64_t rnd = next_rand(&seed);
        size_t want = 1 + (size_t)(rnd % MAX_CHUNK);
        if (want > TOTAL - pos)
            want = TOTAL - pos;
        int mode = (int)((rnd >> 32) % P_MODES);
        size_t n = 0;
        if (mode == P_WRITE) {
            fill(buf, want, pos);
            n = ring_write(r, buf, want);
            if (n > want) {
                fail(run, "producer", "ring_write took more than offered", pos);
                break;
            }
            run->p_copies += copies_for(run, pos, n);
            run->p_bytes += n;
        } else if (mode == P_RESERVE) {
            size_t len;
            unsigned char *p = ring_reserve(r, &len);
            n = len < want ? len : want;
            fill(p, n, pos);
            if (ring_commit(r, n) != 0) {
                fail(run, "producer", "ring_commit refused a reserved count", pos);
                break;
            }
        } else {
            struct iovec iov[2];
            int segs = ring_write_iov(r, iov);
            for (int i = 0; i < segs && n < want; i++) {
                size_t step = iov[i].iov_len < want - n ? iov[i].iov_len : want - n;
                fill(iov[i].iov_base, step, pos + n);
                n += step;
            }
            if (ring_commit(r, n) != 0) {
                fail(run, "producer", "ring_commit refused the free space", pos);
                break;
            }
        }
        if (n == 0) {
            if (!idle(run, "producer", pos))
                break;
            continue;
        }
        run->p_ops[mode]++;
        pos += n;
        if ((rnd & 0xff) == 0)
            sanity(run, "producer", pos);
    }
    return NULL;
}

static void *consumer(void *arg)
{
    struct run *run = arg;
    ring *r = run->r;
    unsigned char buf[MAX_CHUNK];
    uint64_t seed = 0x2545f4914f6cdd1du;
    size_t pos = 0;
    while (pos < TOTAL) {
        uint64_t rnd = next_rand(&seed);
        size_t want = 1 + (size_t)(rnd % MAX_CHUNK);
        int mode = (int)((rnd >> 32) % C_MODES);
        size_t n = 0;
        int ok = 1;
        if (mode == C_READ) {
            n = ring_read(r, buf, want);
            run->c_copies += copies_for(run, pos, n);
            run->c_bytes += n;
            ok = n <= want && check(run, "consumer/read", buf, n, pos);
        } else if (mode == C_PEEK_DISCARD) {
            n = ring_peek(r, buf, want);
            run->c_copies += copies_for(run, pos, n);
            run->c_bytes += n;
            ok = n <= want && check(run, "consumer/peek", buf, n, pos);
            if (ok && ring_discard(r, n) != n) {
                fail(run, "consumer", "ring_discard dropped less than peeked", pos);
                ok = 0;
            }
        } else if (mode == C_PEEK_REGION) {
            size_t len;
            const unsigned char *p = ring_peek_region(r, &len);
            n = len < want ? len : want;
            ok = check(run, "consumer/peek_region", p, n, pos);
            if (ok && ring_consume(r, n) != 0) {
                fail(run, "consumer", "ring_consume refused a peeked count", pos);
                ok = 0;
            }
        } else if (mode == C_READ_IOV) {
            struct iovec iov[2];
            int segs = ring_read_iov(r, iov);
            for (int i = 0; i < segs && ok; i++) {
                ok = check(run, "consumer/read_iov", iov[i].iov_base, iov[i].iov_len, pos + n);
                n += iov[i].iov_len;
            }
            if (ok && ring_consume(r, n) != 0) {
                fail(run, "consumer", "ring_consume refused the readable bytes", pos);
                ok = 0;
            }
        } else {
            size_t s[4];
            int segs = ring_readable_spans(r, want, s);
            const unsigned char *data = ring_data(r);
            for (int i = 0; i < segs && ok; i++) {
                ok = check(run, "consumer/spans", data + s[2 * i], s[2 * i + 1], pos + n);
                n += s[2 * i + 1];
            }
            if (ok && (n > want || ring_consume(r, n) != 0)) {
                fail(run, "consumer", "readable_spans past its limit", pos);
                ok = 0;
            }
        }
        if (!ok) {
            fail(run, "consumer", "check failed", pos);
            break;
        }
        if (n == 0) {
            if (!idle(run, "consumer", pos))
                break;
            continue;
        }
        run->c_ops[mode]++;
        pos += n;
        if ((rnd & 0xff) == 0)
            sanity(run, "consumer", pos);
    }
    return NULL;
}

static int run_one(size_t requested, int flags)
{
    struct run run = {0};
    run.r = ring_create(requested, flags);
    if (run.r == NULL) {
        perror("ring_create");
        return 1;
    }
    run.cap = ring_cap(run.r);
    run.mirrored = ring_mirrored(run.r);
    atomic_init(&run.failed, 0);
    run.deadline = now() + DEADLINE_S;

    pthread_t p, c;
    if (pthread_create(&p, NULL, producer, &run) != 0 ||
        pthread_create(&c, NULL, consumer, &run) != 0) {
        perror("pthread_create");
        return 1;
    }
    pthread_join(p, NULL);
    pthread_join(c, NULL);

    int bad = atomic_load(&run.failed);
    if (!bad && !ring_empty(run.r)) {
        fprintf(stderr, "ring not empty after the run\n");
        bad = 1;
    }
    uint64_t st[2];
    ring_stats(run.r, st);
    if (!bad && (st[0] != run.p_copies + run.c_copies || st[1] != run.p_bytes + run.c_bytes)) {
        fprintf(stderr, "stats: %llu copies / %llu bytes, expected %llu / %llu\n",
                (unsigned long long)st[0], (unsigned long long)st[1],
                (unsigned long long)(run.p_copies + run.c_copies),
                (unsigned long long)(run.p_bytes + run.c_bytes));
        bad = 1;
    }
    for (int m = 0; m < P_MODES && !bad; m++)
        if (run.p_ops[m] == 0) {
            fprintf(stderr, "producer mode %d never moved a byte\n", m);
            bad = 1;
        }
    for (int m = 0; m < C_MODES && !bad; m++)
        if (run.c_ops[m] == 0) {
            fprintf(stderr, "consumer mode %d never moved a byte\n", m);
            bad = 1;
        }
    printf("%s cap=%zu bytes=%zu copies=%llu producer_ops=%llu,%llu,%llu "
           "consumer_ops=%llu,%llu,%llu,%llu,%llu %s\n",
           run.mirrored ? "mirrored" : "plain", run.cap, TOTAL, (unsigned long long)st[0],
           (unsigned long long)run.p_ops[0], (unsigned long long)run.p_ops[1],
           (unsigned long long)run.p_ops[2], (unsigned long long)run.c_ops[0],
           (unsigned long long)run.c_ops[1], (unsigned long long)run.c_ops[2],
           (unsigned long long)run.c_ops[3], (unsigned long long)run.c_ops[4],
           bad ? "FAILED" : "ok");
    ring_destroy(run.r);
    return bad;
}

int main(void)
{
    int bad = run_one(1000, 0);          /* rounds to 1024 */
    bad |= run_one(1000, RING_MIRRORED); /* rounds to a page */
    return bad ? 1 : 0;
}
