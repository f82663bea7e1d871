/*
 * wsframe.h - RFC 6455 frame headers (section 5.2): parse and validate,
 * encode.  The one C home of the framing rules, used by the echo server's
 * hot path (server/wsecho.c) and the load generator (loadgen/loadgen.c).
 *
 * The rules a header can break on its own, without the connection's state:
 *   reserved bits set (no extension is ever negotiated), a reserved opcode,
 *   a control frame that is fragmented or longer than 125 bytes, the MASK
 *   bit the wrong way for the side (a server receives masked frames only,
 *   a client unmasked ones), a length not in its minimal encoding or with
 *   the 64-bit length's top bit set.  Each breaks the protocol: close 1002.
 * What needs the connection (a continuation outside a message, a data
 * frame inside one, the size limits) is the caller's.
 *
 * Order: everything the first two bytes decide is checked as soon as they
 * are there, so a broken frame fails before the rest of its header comes;
 * then the extended length, once complete.  The Python framer (wsstls/ws.py,
 * check_header) implements the same rules in the same order, and
 * tests/core/test_wsframe.py checks the two agree over random headers.
 */
#ifndef WSSTLS_WSFRAME_H
#define WSSTLS_WSFRAME_H

#include <stddef.h>
#include <stdint.h>

enum ws_opcode {
    WS_OP_CONT = 0x0,
    WS_OP_TEXT = 0x1,
    WS_OP_BINARY = 0x2,
    WS_OP_CLOSE = 0x8,
    WS_OP_PING = 0x9,
    WS_OP_PONG = 0xA,
};

/* Longest header: 2 bytes, 8 of extended length, 4 of masking key. */
#define WS_HEADER_MAX 14

/* What ws_parse_header found. */
enum ws_header_status {
    WS_HEADER_OK = 0,         /* a valid header: see struct ws_header */
    WS_HEADER_INCOMPLETE = 1, /* valid so far; more bytes are needed */
    WS_HEADER_RSV = 2,        /* reserved bits set */
    WS_HEADER_OPCODE = 3,     /* a reserved opcode */
    WS_HEADER_FRAGMENTED_CONTROL = 4,
    WS_HEADER_LONG_CONTROL = 5, /* a control frame over 125 bytes */
    WS_HEADER_MASK = 6,       /* the MASK bit is the wrong way for this side */
    WS_HEADER_LENGTH = 7,     /* a non-minimal length, or the 64-bit top bit set */
};

struct ws_header {
    unsigned fin;     /* 0 or 1 */
    unsigned rsv;     /* 0 (anything else is WS_HEADER_RSV) */
    unsigned opcode;  /* an enum ws_opcode */
    unsigned masked;  /* 0 or 1 */
    uint32_t key;     /* the masking key as wsmask.h takes it (0 unmasked) */
    uint64_t length;  /* payload bytes, < 2^63 */
    size_t size;      /* header bytes: 2 .. 14 */
};

/* The header at p (avail bytes readable), as a receiver of masked frames
 * (a server: masked = 1) or of unmasked ones (a client: masked = 0).
 * Fills *h only for WS_HEADER_OK. */
int ws_parse_header(const unsigned char *p, size_t avail, int masked, struct ws_header *h);

/* A one-line reason for a failed status ("reserved bits set", ...). */
const char *ws_header_error(int status);

/* Encode a header with the minimal length encoding into out (room for
 * WS_HEADER_MAX bytes): FIN as given, no RSV bits, masked with *key when
 * key != NULL.  Returns its size.  length < 2^63. */
size_t ws_encode_header(unsigned char *out, unsigned opcode, int fin, uint64_t length,
                        const uint32_t *key);

/* The size ws_encode_header gives for a payload of `length` bytes. */
size_t ws_header_size(uint64_t length, int masked);

#endif
