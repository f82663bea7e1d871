/*
 * wsframe.c - RFC 6455 frame headers (see wsframe.h).
 */
#include "wsframe.h"

static uint32_t key_at(const unsigned char *k)
{
    return (uint32_t)k[0] | (uint32_t)k[1] << 8 | (uint32_t)k[2] << 16 | (uint32_t)k[3] << 24;
}

int ws_parse_header(const unsigned char *p, size_t avail, int masked, struct ws_header *h)
{
    if (avail < 2)
        return WS_HEADER_INCOMPLETE;
    unsigned fin = p[0] >> 7, rsv = (p[0] >> 4) & 7, op = p[0] & 0x0f;
    unsigned mask = p[1] >> 7, len7 = p[1] & 0x7f;
    /* What the first two bytes decide. */
    if (rsv != 0)
        return WS_HEADER_RSV;
    if ((op > WS_OP_BINARY && op < WS_OP_CLOSE) || op > WS_OP_PONG)
        return WS_HEADER_OPCODE;
    if (op >= WS_OP_CLOSE && !fin)
        return WS_HEADER_FRAGMENTED_CONTROL;
    if (op >= WS_OP_CLOSE && len7 > 125)
        return WS_HEADER_LONG_CONTROL;
    if (mask != (masked ? 1u : 0u))
        return WS_HEADER_MASK;
    /* The extended length, then the key. */
    size_t ext = len7 == 126 ? 2 : len7 == 127 ? 8 : 0;
    size_t size = 2 + ext + (mask ? 4 : 0);
    if (avail < 2 + ext)
        return WS_HEADER_INCOMPLETE;
    uint64_t length = len7;
    if (ext == 2) {
        length = (uint64_t)p[2] << 8 | p[3];
        if (length < 126)
            return WS_HEADER_LENGTH;
    } else if (ext == 8) {
        length = 0;
        for (int i = 0; i < 8; i++)
            length = length << 8 | p[2 + i];
        if (length < 65536 || length >> 63)
            return WS_HEADER_LENGTH;
    }
    if (avail < size)
        return WS_HEADER_INCOMPLETE;
    h->fin = fin;
    h->rsv = rsv;
    h->opcode = op;
    h->masked = mask;
    h->key = mask ? key_at(p + size - 4) : 0;
    h->length = length;
    h->size = size;
    return WS_HEADER_OK;
}

const char *ws_header_error(int status)
{
    switch (status) {
    case WS_HEADER_OK:
        return "a valid header";
    case WS_HEADER_INCOMPLETE:
        return "an incomplete header";
    case WS_HEADER_RSV:
        return "reserved bits set";
    case WS_HEADER_OPCODE:
        return "a reserved opcode";
    case WS_HEADER_FRAGMENTED_CONTROL:
        return "a fragmented control frame";
    case WS_HEADER_LONG_CONTROL:
        return "a control frame over 125 bytes";
    case WS_HEADER_MASK:
        return "the MASK bit is wrong: a masked frame to a client, or an unmasked one to a server";
    case WS_HEADER_LENGTH:
        return "a length not in its minimal encoding";
    default:
        return "an unknown header status";
    }
}

size_t ws_header_size(uint64_t length, int masked)
{
    return (length < 126 ? 2 : length < 65536 ? 4 : 10) + (masked ? 4 : 0);
}

size_t ws_encode_header(unsigned char *out, unsigned opcode, int fin, uint64_t length,
                        const uint32_t *key)
{
    unsigned char mask = key != NULL ? 0x80 : 0;
    size_t i;
    out[0] = (unsigned char)((fin ? 0x80 : 0) | (opcode & 0x0f));
    if (length < 126) {
        out[1] = (unsigned char)(mask | length);
        i = 2;
    } else if (length < 65536) {
        out[1] = mask | 126;
        out[2] = (unsigned char)(length >> 8);
        out[3] = (unsigned char)length;
        i = 4;
    } else {
        out[1] = mask | 127;
        for (int b = 0; b < 8; b++)
            out[2 + b] = (unsigned char)(length >> (56 - 8 * b));
        i = 10;
    }
    if (key != NULL) /* wire order k0 k1 k2 k3: the key packed little-endian (wsmask.h) */
        for (int b = 0; b < 4; b++)
            out[i++] = (unsigned char)(*key >> (8 * b));
    return i;
}
