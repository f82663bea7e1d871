/*
 * wsframe_fuzz.c - libFuzzer target: RFC 6455 frame headers from a hostile
 * peer (csrc/core/wsframe.c), as both sides parse them.
 *
 * fuzz-sources: core/wsframe.c
 *
 * For each side (masked frames expected or not), on the input and on every
 * prefix of it:
 *   - the status is one of enum ws_header_status;
 *   - a prefix's verdict stands: a prefix that is invalid makes the whole
 *     input invalid for the same reason, a prefix that holds a whole header
 *     gives the same header (nothing after a header changes it);
 *   - only a prefix shorter than WS_HEADER_MAX can be incomplete;
 *   - a valid header encodes back (ws_encode_header) to exactly its bytes,
 *     its size is ws_header_size's, its length below 2^63.
 */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "core/wsframe.h"

static void check(int ok)
{
    if (!ok)
        abort();
}

static void one_side(const uint8_t *data, size_t size, int masked)
{
    struct ws_header full;
    int verdict = ws_parse_header(data, size, masked, &full);
    check(verdict >= WS_HEADER_OK && verdict <= WS_HEADER_LENGTH);
    if (verdict == WS_HEADER_INCOMPLETE)
        check(size < WS_HEADER_MAX);
    if (verdict == WS_HEADER_OK) {
        check(full.size <= size && full.length >> 63 == 0 && full.rsv == 0);
        check(full.masked == (unsigned)masked);
        check(full.size == ws_header_size(full.length, masked));
        unsigned char again[WS_HEADER_MAX];
        size_t n = ws_encode_header(again, full.opcode, (int)full.fin, full.length,
                                    masked ? &full.key : NULL);
        check(n == full.size && memcmp(again, data, n) == 0);
    }
    size_t limit = size < WS_HEADER_MAX + 2 ? size : WS_HEADER_MAX + 2;
    for (size_t k = 0; k < limit; k++) {
        struct ws_header part;
        int r = ws_parse_header(data, k, masked, &part);
        if (r == WS_HEADER_INCOMPLETE)
            continue;
        check(r == verdict);
        if (r == WS_HEADER_OK)
            check(part.size == full.size && part.length == full.length &&
                  part.key == full.key && part.opcode == full.opcode && part.fin == full.fin);
    }
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    one_side(data, size, 1);
    one_side(data, size, 0);
    return 0;
}
