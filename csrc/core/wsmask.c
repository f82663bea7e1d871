/*
 * wsmask.c - RFC 6455 masking, 8 bytes per step (see wsmask.h).
 *
 * The word loop XORs a 64-bit word with the key pattern rotated to the
 * current offset; since 8 is a multiple of 4 the pattern is the same for
 * every word.  All word accesses go through memcpy: it makes unaligned
 * loads and stores defined (and the char-typed access sidesteps strict
 * aliasing), and compilers turn it into a single move.
 */
#include "wsmask.h"

#include <stdint.h>
#include <string.h>

void ws_mask_copy(unsigned char *dst, const unsigned char *src, size_t n, uint32_t key,
                  size_t offset)
{
    size_t i = 0;
    /* Bytes until dst is 8-aligned, so the word loop's stores never split a
     * cache line; src may stay misaligned, which costs little on a load. */
    size_t head = (size_t)(-(uintptr_t)dst & 7);
    if (head > n)
        head = n;
    for (; i < head; i++)
        dst[i] = src[i] ^ (unsigned char)(key >> (8 * ((offset + i) & 3)));

    const uint64_t mask = ws_mask_word(key, offset + i);
    /* Four independent words per iteration keep the load/XOR/store chains
     * overlapped without relying on the vectoriser. */
    for (; n - i >= 32; i += 32) {
        uint64_t w0, w1, w2, w3;
        memcpy(&w0, src + i, 8);
        memcpy(&w1, src + i + 8, 8);
        memcpy(&w2, src + i + 16, 8);
        memcpy(&w3, src + i + 24, 8);
        w0 ^= mask;
        w1 ^= mask;
        w2 ^= mask;
        w3 ^= mask;
        memcpy(dst + i, &w0, 8);
        memcpy(dst + i + 8, &w1, 8);
        memcpy(dst + i + 16, &w2, 8);
        memcpy(dst + i + 24, &w3, 8);
    }
    for (; n - i >= 8; i += 8) {
        uint64_t w;
        memcpy(&w, src + i, 8);
        w ^= mask;
        memcpy(dst + i, &w, 8);
    }
    for (; i < n; i++)
        dst[i] = src[i] ^ (unsigned char)(key >> (8 * ((offset + i) & 3)));
}

void ws_mask(unsigned char *buf, size_t n, uint32_t key, size_t offset)
{
    /* In place is the copy with dst == src: each word is loaded into a
     * register before it is stored back, so the overlap is harmless. */
    ws_mask_copy(buf, buf, n, key, offset);
}
