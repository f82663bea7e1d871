/*
 * heap.c - the C heap's policy for a long-running server (see heap.h).
 */
#include "heap.h"

#include <string.h>

#if defined(__GLIBC__)
#include <malloc.h>
#endif

int heap_tune(size_t mmap_threshold, size_t trim_threshold)
{
#if defined(__GLIBC__)
    if (mmap_threshold > (size_t)0x7fffffff || trim_threshold > (size_t)0x7fffffff)
        return 0;
    /* Setting either turns off glibc's dynamic adjustment of both. */
    return mallopt(M_MMAP_THRESHOLD, (int)mmap_threshold) == 1 &&
           mallopt(M_TRIM_THRESHOLD, (int)trim_threshold) == 1;
#else
    (void)mmap_threshold, (void)trim_threshold;
    return 0;
#endif
}

int heap_trim(void)
{
#if defined(__GLIBC__)
    return malloc_trim(0);
#else
    return 0;
#endif
}

void heap_stats(struct heap_stats *out)
{
    memset(out, 0, sizeof *out);
#if defined(__GLIBC__) && (__GLIBC__ > 2 || (__GLIBC__ == 2 && __GLIBC_MINOR__ >= 33))
    struct mallinfo2 m = mallinfo2();
    out->in_use = m.uordblks + m.hblkhd;
    out->free = m.fordblks;
    out->mapped = m.hblkhd;
#endif
}
