/*
 * heap.h - the C heap's policy for a long-running server (glibc malloc).
 *
 * Two habits of glibc make a server's RSS stay high after its load has gone:
 *   - the mmap threshold is dynamic: once a large block (say a 16 MiB
 *     message) is freed, blocks up to that size come from the heap instead
 *     of their own mappings, and a heap gives memory back only from its top;
 *   - free memory inside the heap, between blocks still in use (the buffers
 *     of connections that closed, among those that did not), stays resident.
 * heap_tune() fixes the thresholds, so large blocks are always their own
 * mappings and go back to the kernel when freed; heap_trim() returns the
 * free pages inside the heap (malloc_trim, which madvises them away).
 *
 * Elsewhere than glibc these do nothing and return 0.
 */
#ifndef WSSTLS_HEAP_H
#define WSSTLS_HEAP_H

#include <stddef.h>

struct heap_stats {
    size_t in_use;  /* bytes in blocks handed out (heap and mapped) */
    size_t free;    /* bytes free in the heap, resident or not */
    size_t mapped;  /* bytes in blocks that are their own mappings */
};

/* Blocks of `mmap_threshold` bytes or more get their own mapping; the heap's
 * top is given back once `trim_threshold` bytes are free there.  1 done,
 * 0 not supported or refused. */
int heap_tune(size_t mmap_threshold, size_t trim_threshold);
/* Give free heap memory back to the kernel: 1 if some was, else 0. */
int heap_trim(void);
/* What the allocator holds (zeros where unsupported). */
void heap_stats(struct heap_stats *out);

#endif
