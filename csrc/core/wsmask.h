/*
 * wsmask.h - RFC 6455 payload masking (section 5.3), word-wide.
 *
 * Masking is an XOR with the 4-byte key repeated, so the same operation
 * masks and unmasks.  `offset` is the position of the first byte within the
 * payload (only offset % 4 matters): a payload can be processed in pieces
 * as it arrives, each piece passing the count of payload bytes before it.
 *
 * The key is passed as an integer rather than a pointer because an integer
 * crosses cffi without building a cdata: the four key bytes as they appear
 * on the wire, k0 k1 k2 k3, packed little-endian,
 *     key = k0 | k1 << 8 | k2 << 16 | k3 << 24
 * (in Python: int.from_bytes(key_bytes, "little")).  The functions never
 * reinterpret it through memory, so the result does not depend on the
 * host's byte order.
 */
#ifndef WSSTLS_WSMASK_H
#define WSSTLS_WSMASK_H

#include <stddef.h>
#include <stdint.h>
#include <string.h>

/* XOR buf[0..n) with the key in place, buf[0] being payload byte `offset`. */
void ws_mask(unsigned char *buf, size_t n, uint32_t key, size_t offset);

/* dst[i] = src[i] ^ key byte (offset + i) % 4, for i in [0, n): the masking
 * copy of a client's frame, so masking costs no pass of its own.  The
 * ranges must not overlap unless dst == src (then it is ws_mask). */
void ws_mask_copy(unsigned char *dst, const unsigned char *src, size_t n, uint32_t key,
                  size_t offset);

/* The 8-byte pattern to XOR with a word starting at payload byte `offset`:
 * key bytes (offset + i) % 4 for i in [0, 8), put through memcpy so that a
 * word loaded from the payload with memcpy lines up with it byte for byte
 * whatever the host's byte order.  Inline because utf8.c's fused
 * unmask-and-validate loop shares it. */
static inline uint64_t ws_mask_word(uint32_t key, size_t offset)
{
    unsigned char pattern[8];
    for (size_t i = 0; i < 8; i++)
        pattern[i] = (unsigned char)(key >> (8 * ((offset + i) & 3)));
    uint64_t word;
    memcpy(&word, pattern, sizeof word);
    return word;
}

#endif
