/*
 * records_handshake_fuzz.c - libFuzzer target: the post-handshake message
 * parser of the direct record layer (KeyUpdate, NewSessionTicket, anything
 * else refused), fed record contents split where the input says.
 *
 * fuzz-sources: core/records.c core/ring.c
 *
 * Input: a flags byte (role, suite), then chunks of <length byte> <bytes>,
 * each handed over as one record's content (aligned: it ended a record).
 */
#include <stdint.h>

#include "core/records.h"
#include "core/ring.h"

static const unsigned char secret_a[48] = {1, 2, 3};
static const unsigned char secret_b[48] = {3, 2, 1};

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    if (size < 1)
        return 0;
    int suite = 1 + data[0] % 3, server = data[0] & 4;
    size_t hash = suite == RECORDS_AES_256_GCM ? 48 : 32;
    ring *in = ring_create(4096, 0), *out = ring_create(1 << 16, 0);
    records *r = NULL;
    if (in && out)
        r = records_new(server, suite, secret_a, secret_b, hash, 0, 0, &in, &out);
    if (r != NULL) {
        size_t i = 1;
        while (i < size) {
            size_t n = data[i++];
            if (n > size - i)
                n = size - i;
            int s = records_handshake_input(r, data + i, n, 1);
            i += n;
            if (s == RECORDS_ERROR) {
                if (records_alert_sent(r) < 0)
                    __builtin_trap(); /* every refusal tells the peer why */
                break;
            }
            ring_discard(out, ring_len(out));
        }
    }
    records_free(r);
    ring_destroy(in);
    ring_destroy(out);
    return 0;
}
