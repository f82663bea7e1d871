/*
 * wshandshake.h - the RFC 6455 opening handshake's one rule of arithmetic
 * (section 4.2.2): Sec-WebSocket-Accept = base64(SHA-1(key + GUID)).
 *
 * The one home of the GUID and of the accept key: the Python framer
 * (wsstls/ws.py accept_key: ServerHandshake answers with it,
 * ClientHandshake checks it) and the load generator (loadgen/loadgen.c,
 * the value a 101 response must carry) both call ws_accept_key.  Parsing
 * the request and response heads is the caller's: the Python framer's for
 * every library user and the server, the load generator's own minimal
 * client check in C (status 101, Upgrade, Connection, this accept value).
 */
#ifndef WSSTLS_WSHANDSHAKE_H
#define WSSTLS_WSHANDSHAKE_H

#include <stddef.h>

/* Characters of an accept value (base64 of a 20-byte SHA-1), without NUL. */
#define WS_ACCEPT_SIZE 28

/* The Sec-WebSocket-Accept value for the n bytes of a Sec-WebSocket-Key (as
 * sent, base64 text), NUL-terminated in out.  1, or 0 if OpenSSL's SHA-1
 * failed (out is then an empty string; the error queue is left empty). */
int ws_accept_key(const void *key, size_t n, char out[WS_ACCEPT_SIZE + 1]);

#endif
