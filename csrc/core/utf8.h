/*
 * utf8.h - incremental UTF-8 validation (RFC 3629) and the WebSocket text
 * hot path: unmask in place and validate in one pass.
 *
 * The validator is a DFA whose state the caller keeps between calls, so a
 * text message can be checked piece by piece as its fragments (or parts of
 * one frame) arrive, and fails at the first byte that cannot continue any
 * valid UTF-8 string: overlong forms, surrogates (U+D800..U+DFFF), code
 * points above U+10FFFF, stray continuation bytes, C0, C1 and F5..FF.
 *
 * State: a uint32_t, UTF8_ACCEPT (0) at a character boundary, UTF8_REJECT
 * once an invalid byte was seen (sticky), another value mid-character.  A
 * message is valid when it ends in UTF8_ACCEPT; a truncated last character
 * shows as any other state.  A state that is none of the DFA's is treated
 * as UTF8_REJECT, so a corrupted state cannot index out of the tables.
 */
#ifndef WSSTLS_UTF8_H
#define WSSTLS_UTF8_H

#include <stddef.h>
#include <stdint.h>

enum utf8_state {
    UTF8_ACCEPT = 0,
    UTF8_REJECT = 6, /* the DFA's states are bit offsets: see utf8.c */
};

/* Advance *state over buf[0..n).  Returns the index of the first invalid
 * byte (then *state is UTF8_REJECT), or n if there is none.  With *state
 * already UTF8_REJECT (or not a state at all) it returns 0 and sets
 * *state to UTF8_REJECT. */
size_t utf8_validate(uint32_t *state, const unsigned char *buf, size_t n);

/* The text-frame hot path in one crossing: unmask buf[0..n) in place as
 * ws_mask() does (buf[0] is payload byte `offset`, key packed as in
 * wsmask.h) and advance *state over the unmasked bytes in the same pass.
 * Returns as utf8_validate().  After a failure, bytes past the invalid
 * one may be left masked or unmasked: the message is being rejected. */
size_t ws_unmask_utf8(uint32_t *state, unsigned char *buf, size_t n, uint32_t key,
                      size_t offset);

#endif
