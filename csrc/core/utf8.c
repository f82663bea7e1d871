/*
 * utf8.c - the UTF-8 DFA and the fused unmask + validate loop (see utf8.h).
 *
 * Bytes fall into 12 classes that differ in which states they may follow:
 *   0 ASCII 00..7F     1 cont 80..8F     2 cont 90..9F     3 cont A0..BF
 *   4 never valid: C0, C1, F5..FF
 *   5 lead of 2: C2..DF                  6 E0    7 lead of 3: E1..EC, EE, EF
 *   8 ED    9 F0    10 lead of 4: F1..F3    11 F4
 * The four continuation classes exist because four lead bytes restrict the
 * byte after them (RFC 3629 section 4):
 *   E0 -> A0..BF (shorter forms are overlong)
 *   ED -> 80..9F (A0..BF would encode surrogates)
 *   F0 -> 90..BF (overlong)      F4 -> 80..8F (above U+10FFFF otherwise)
 * States: ACCEPT, REJECT, "n continuation bytes to go" for n = 1, 2, 3 and
 * one state per restricted lead byte for its second byte.
 *
 * Layout (why it is not a plain [state][class] table): the step from one
 * byte to the next is the loop's critical path, and a table lookup indexed
 * by the state costs a load latency per byte.  Instead each state is a bit
 * offset (a multiple of 6) and each byte class has a 64-bit row holding,
 * at offset s, the next state from state s; a step is then
 *     s = (row[class[byte]] >> s) & 63
 * where both loads depend only on the byte, so only a shift and an AND sit
 * on the chain.  Nine states x 6 bits fit in 54 bits.  REJECT maps to
 * itself in every row, so blocks run without a branch per byte and are
 * rescanned only when they end in REJECT, to find the first invalid byte.
 */
#include "utf8.h"

#include <stdint.h>
#include <string.h>

#include "wsmask.h"

enum {
    S_ACCEPT = UTF8_ACCEPT, /* 0 */
    S_REJECT = UTF8_REJECT, /* 6 */
    S_NEED1 = 12,           /* one continuation byte 80..BF to go */
    S_NEED2 = 18,
    S_NEED3 = 24,
    S_E0 = 30, /* after E0: A0..BF, then one more */
    S_ED = 36, /* after ED: 80..9F, then one more */
    S_F0 = 42, /* after F0: 90..BF, then two more */
    S_F4 = 48, /* after F4: 80..8F, then two more */
    S_LAST = S_F4,
    N_CLASSES = 12,
};

static const uint8_t byte_class[256] = {
    0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0,     /* 00..0F */
    0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0,     /* 10..1F */
    0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0,     /* 20..2F */
    0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0,     /* 30..3F */
    0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0,     /* 40..4F */
    0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0,     /* 50..5F */
    0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0,     /* 60..6F */
    0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0,     /* 70..7F */
    1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1,     /* 80..8F */
    2, 2, 2, 2, 2, 2, 2, 2, 2, 2, 2, 2, 2, 2, 2, 2,     /* 90..9F */
    3, 3, 3, 3, 3, 3, 3, 3, 3, 3, 3, 3, 3, 3, 3, 3,     /* A0..AF */
    3, 3, 3, 3, 3, 3, 3, 3, 3, 3, 3, 3, 3, 3, 3, 3,     /* B0..BF */
    4, 4, 5, 5, 5, 5, 5, 5, 5, 5, 5, 5, 5, 5, 5, 5,     /* C0..CF */
    5, 5, 5, 5, 5, 5, 5, 5, 5, 5, 5, 5, 5, 5, 5, 5,     /* D0..DF */
    6, 7, 7, 7, 7, 7, 7, 7, 7, 7, 7, 7, 7, 8, 7, 7,     /* E0..EF */
    9, 10, 10, 10, 11, 4, 4, 4, 4, 4, 4, 4, 4, 4, 4, 4, /* F0..FF */
};

/* One row per byte class: where each state goes on a byte of that class. */
#define ROW(from_accept, from_need1, from_need2, from_need3, from_e0, from_ed, from_f0, from_f4) \
    ((uint64_t)(from_accept) << S_ACCEPT | (uint64_t)S_REJECT << S_REJECT |                      \
     (uint64_t)(from_need1) << S_NEED1 | (uint64_t)(from_need2) << S_NEED2 |                      \
     (uint64_t)(from_need3) << S_NEED3 | (uint64_t)(from_e0) << S_E0 |                            \
     (uint64_t)(from_ed) << S_ED | (uint64_t)(from_f0) << S_F0 | (uint64_t)(from_f4) << S_F4)
#define R S_REJECT
static const uint64_t class_row[N_CLASSES] = {
    /*                 ACCEPT   NEED1     NEED2    NEED3    E0       ED       F0       F4 */
    /* ASCII   */ ROW(S_ACCEPT, R,        R,       R,       R,       R,       R,       R),
    /* 80..8F  */ ROW(R,        S_ACCEPT, S_NEED1, S_NEED2, R,       S_NEED1, R,       S_NEED2),
    /* 90..9F  */ ROW(R,        S_ACCEPT, S_NEED1, S_NEED2, R,       S_NEED1, S_NEED2, R),
    /* A0..BF  */ ROW(R,        S_ACCEPT, S_NEED1, S_NEED2, S_NEED1, R,       S_NEED2, R),
    /* bad     */ ROW(R,        R,        R,       R,       R,       R,       R,       R),
    /* C2..DF  */ ROW(S_NEED1,  R,        R,       R,       R,       R,       R,       R),
    /* E0      */ ROW(S_E0,     R,        R,       R,       R,       R,       R,       R),
    /* E1..EF  */ ROW(S_NEED2,  R,        R,       R,       R,       R,       R,       R),
    /* ED      */ ROW(S_ED,     R,        R,       R,       R,       R,       R,       R),
    /* F0      */ ROW(S_F0,     R,        R,       R,       R,       R,       R,       R),
    /* F1..F3  */ ROW(S_NEED3,  R,        R,       R,       R,       R,       R,       R),
    /* F4      */ ROW(S_F4,     R,        R,       R,       R,       R,       R,       R),
};
#undef R
#undef ROW

#define HIGH_BITS UINT64_C(0x8080808080808080)

static inline uint32_t step(uint32_t s, unsigned char byte)
{
    return (uint32_t)(class_row[byte_class[byte]] >> s) & 63;
}

/* A state from the caller that the DFA does not have is a rejection: a
 * shift by it could exceed 63 (undefined) or land mid-field. */
static inline uint32_t load_state(const uint32_t *state)
{
    uint32_t s = *state;
    return s <= S_LAST && s % 6 == 0 ? s : S_REJECT;
}

/* Advance *s over buf[from..to), branch-free.  If that ends in REJECT,
 * step again from the saved state to find the first invalid byte and
 * return its index; otherwise return `to`. */
static inline size_t run(uint32_t *s, const unsigned char *buf, size_t from, size_t to)
{
    uint32_t st = *s;
    for (size_t i = from; i < to; i++)
        st = step(st, buf[i]);
    if (st != S_REJECT) {
        *s = st;
        return to;
    }
    st = *s;
    size_t i = from;
    while ((st = step(st, buf[i])) != S_REJECT)
        i++;
    *s = S_REJECT;
    return i;
}

size_t utf8_validate(uint32_t *state, const unsigned char *buf, size_t n)
{
    uint32_t s = load_state(state);
    if (s == S_REJECT) {
        *state = S_REJECT; /* normalise a corrupted state too */
        return 0;
    }
    size_t i = 0;
    for (; n - i >= 16; i += 16) {
        /* At a character boundary a block of ASCII needs no DFA steps: in
         * mostly-ASCII text that is where the time goes. */
        if (s == S_ACCEPT) {
            uint64_t a, b;
            memcpy(&a, buf + i, 8);
            memcpy(&b, buf + i + 8, 8);
            if (!((a | b) & HIGH_BITS))
                continue;
        }
        size_t bad = run(&s, buf, i, i + 16);
        if (bad < i + 16) {
            *state = s;
            return bad;
        }
    }
    size_t bad = run(&s, buf, i, n);
    *state = s;
    return bad;
}

size_t ws_unmask_utf8(uint32_t *state, unsigned char *buf, size_t n, uint32_t key,
                      size_t offset)
{
    uint32_t s = load_state(state);
    if (s == S_REJECT) {
        *state = S_REJECT; /* normalise a corrupted state too */
        return 0;
    }
    size_t i = 0;
    /* Head: bytewise until buf + i is 8-aligned (as ws_mask does). */
    size_t head = (size_t)(-(uintptr_t)buf & 7);
    if (head > n)
        head = n;
    for (; i < head; i++) {
        buf[i] ^= (unsigned char)(key >> (8 * ((offset + i) & 3)));
        s = step(s, buf[i]);
        if (s == S_REJECT) {
            *state = s;
            return i;
        }
    }
    /* Words: unmask, store, and validate while the word is still in a
     * register; the DFA only runs on words that are not all ASCII or that
     * start mid-character. */
    const uint64_t mask = ws_mask_word(key, offset + i);
    for (; n - i >= 8; i += 8) {
        uint64_t w;
        memcpy(&w, buf + i, 8);
        w ^= mask;
        memcpy(buf + i, &w, 8);
        if (s == S_ACCEPT && !(w & HIGH_BITS))
            continue;
        size_t bad = run(&s, buf, i, i + 8);
        if (bad < i + 8) {
            *state = s;
            return bad;
        }
    }
    for (; i < n; i++) {
        buf[i] ^= (unsigned char)(key >> (8 * ((offset + i) & 3)));
        s = step(s, buf[i]);
        if (s == S_REJECT) {
            *state = s;
            return i;
        }
    }
    *state = s;
    return n;
}
