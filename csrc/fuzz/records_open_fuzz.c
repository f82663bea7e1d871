/*
 * records_open_fuzz.c - libFuzzer target: the direct record layer's open path
 * (csrc/core/records.c) on hostile ciphertext.
 *
 * fuzz-sources: core/records.c core/ring.c
 *
 * The first byte picks the suite and the mode:
 *   raw     the rest is ciphertext from the network, fed in chunks;
 *   sealed  the rest describes records that a peer holding the matching
 *           keys seals (any inner type, padding, content) and may corrupt
 *           one bit of: this reaches everything behind the tag check
 *           (content types, alerts, handshake reassembly, KeyUpdate).
 * Reads go to buffers of varying size (the spill path) and to a small
 * plaintext ring.  Every call must end in a byte count or a status, and a
 * dead layer must stay dead.
 */
#include <stdint.h>
#include <string.h>

#include "core/records.h"
#include "core/ring.h"

static const unsigned char secret_a[48] = {1, 2, 3, 4, 5, 6, 7, 8, 9};
static const unsigned char secret_b[48] = {9, 8, 7, 6, 5, 4, 3, 2, 1};

struct input {
    const uint8_t *p;
    size_t n;
};

static int take(struct input *in, size_t k, const uint8_t **out)
{
    if (in->n < k)
        return 0;
    *out = in->p;
    in->p += k;
    in->n -= k;
    return 1;
}

static unsigned byte(struct input *in)
{
    const uint8_t *b;
    return take(in, 1, &b) ? b[0] : 0;
}

/* Read everything the receiver can open, in reads shaped by the input. */
static void drain(records *rx, ring *plain, struct input *in)
{
    unsigned char buf[20000];
    for (int i = 0; i < 64; i++) {
        long got;
        if (byte(in) & 1) {
            got = records_read_ring(rx, plain);
            ring_discard(plain, ring_len(plain));
        } else {
            got = records_read(rx, buf, 1 + byte(in) * 80);
        }
        if (got == RECORDS_ERROR && records_read(rx, buf, sizeof buf) != RECORDS_ERROR)
            __builtin_trap(); /* a dead layer stays dead */
        if (got < 0 || (got == 0 && !records_has_pending(rx)))
            return;
    }
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    if (size < 1)
        return 0;
    struct input in = {data + 1, size - 1};
    int suite = 1 + data[0] % 3, sealed = data[0] & 4, server = data[0] & 8;
    size_t hash = suite == RECORDS_AES_256_GCM ? 48 : 32;
    ring *net = ring_create(1 << 17, 0), *back = ring_create(1 << 17, 0);
    ring *plain = ring_create(4096, 0);
    records *rx = NULL, *tx = NULL;
    if (!net || !back || !plain)
        goto out;
    rx = records_new(server, suite, secret_a, secret_b, hash, 0, 0, &net, &back);
    tx = records_new(!server, suite, secret_b, secret_a, hash, 0, 0, &back, &net);
    if (!rx || !tx)
        goto out;
    if (data[0] & 16)
        records_set_key_limit(rx, 2);
    if (!sealed) {
        while (in.n > 0) {
            size_t k = 1 + byte(&in) * 4;
            const uint8_t *chunk;
            if (k > in.n)
                k = in.n;
            if (k == 0 || !take(&in, k, &chunk))
                break;
            ring_write(net, chunk, k);
            drain(rx, plain, &in);
        }
    } else {
        while (in.n >= 4) {
            unsigned type = byte(&in), pad = byte(&in), len = byte(&in) << 4, flip = byte(&in);
            const uint8_t *content = in.p;
            if (len > in.n)
                len = (unsigned)in.n;
            in.p += len, in.n -= len;
            size_t before = ring_len(net);
            if (records_seal_raw(tx, (int)(type % 4 == 0 ? 23 : type % 4 == 1 ? 22
                                         : type % 4 == 2 ? 21 : type),
                                 content, len, pad) != 0)
                break;
            if (flip && ring_len(net) > before) { /* one bit of the new record */
                size_t at = (flip * 7) % (ring_len(net) - before);
                static unsigned char tmp[1 << 17];
                size_t n = ring_read(net, tmp, sizeof tmp); /* out and back in */
                tmp[before + at] ^= (unsigned char)(1u << (flip % 8));
                ring_write(net, tmp, n);
            }
            if (type & 0x80)
                records_key_update(tx, type & 0x40);
            drain(rx, plain, &in);
            ring_discard(back, ring_len(back)); /* the receiver's answers */
        }
    }
    if (byte(&in) & 1) {
        records_set_eof(rx);
        drain(rx, plain, &in);
    }
    records_close(rx);
out:
    records_free(rx);
    records_free(tx);
    ring_destroy(net);
    ring_destroy(back);
    ring_destroy(plain);
    return 0;
}
