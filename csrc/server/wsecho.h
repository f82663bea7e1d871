/*
 * wsecho.h - the echo server's hot path in one call: receive and decrypt
 * into the plaintext ring, then echo every plain data frame straight from
 * the ring.
 *
 * A plain data frame is a complete, final (FIN), masked TEXT or BINARY frame
 * with no RSV bits, a minimally encoded length up to max_message, that fits
 * the ring.  It is unmasked in place (text: validated as UTF-8 in the same
 * pass), the server's header is written in place over the end of the
 * client's header (a server header is always at least 4 bytes shorter: no
 * mask key), and header + payload go to SSL_write as one contiguous span:
 * no copy but OpenSSL's own into its record.
 *
 * A pong (complete, masked, FIN, at most 125 bytes) needs no answer: it is
 * consumed in place, so the server's keepalive pings cost no trip through
 * the framer.  The first frame of any other kind stops the fast path
 * (WSECHO_SLOW): the
 * caller's RFC 6455 framer takes over from the ring's head, where that frame
 * is left untouched.  The caller only asks for the fast path between
 * messages (its framer idle), so the framer's state is never bypassed.
 */
#ifndef WSSTLS_WSECHO_H
#define WSSTLS_WSECHO_H

#include <stddef.h>
#include <stdint.h>

#include "core/ring.h"
#include "core/tls.h"

enum wsecho_flags {
    WSECHO_READ = 1, /* receive and decrypt first (tls_read_ring) */
    WSECHO_ECHO = 2, /* then echo plain frames from the ring */
};

enum wsecho_status {
    WSECHO_WAIT = 0,     /* all echoed, or an incomplete frame waits for bytes */
    WSECHO_SLOW = 1,     /* a frame for the framer is at the ring's head */
    WSECHO_BLOCKED = 2,  /* output full: flush when writable, then call again */
    WSECHO_BAD_UTF8 = 3, /* a text frame was not UTF-8: fail with 1007 */
    WSECHO_ENDED = 4,    /* the session ended (`ended` says how) and every
                            complete frame before its end was echoed */
};

struct wsecho {
    size_t max_message;  /* in: larger frames go to the framer (1009 there) */
    int fd;              /* in: the socket, for plain ws:// (c == NULL) */
    uint64_t messages;   /* out: echoed by the fast path */
    uint64_t bytes;      /* out: their payload bytes */
    uint64_t pongs;      /* out: pongs consumed by the fast path */
    long read_status;    /* out: the last read's result, as tls_read_ring's: bytes, or an
                            enum tls_status (for plain ws:// too: TLS_EOF, TLS_ERROR) */
    int ended;           /* out, with WSECHO_ENDED: how (an enum tls_status: TLS_CLOSED,
                            TLS_EOF or TLS_ERROR, the last also for a failed write) */
    int sys_errno;       /* out: plain mode, the socket's errno after TLS_ERROR */
    /* An echo cut short by backpressure: it stays at the ring's head until
     * SSL_write has taken all of it.  Zero when none. */
    size_t pending_frame; /* the client frame's length, consumed when done */
    size_t pending_skip;  /* bytes before the server header within it */
    size_t pending_len;   /* server header + payload */
    size_t pending_sent;  /* of which SSL_write has accepted */
    /* The incomplete text frame at the ring's head, validated so far: it stays
     * masked and unchanged until complete, so each call checks only what is
     * new (a frame trickled in byte by byte costs linear time, not
     * quadratic).  text_done == 0: nothing cached. */
    size_t text_done;
    uint32_t text_state;
};

/* One call per readable event: an enum wsecho_status.  c == NULL: plain
 * WebSocket on st->fd (its end is TLS_EOF, a socket error TLS_ERROR with the
 * errno in sys_errno). */
int wsecho_pump(tls_conn *c, ring *plain, struct wsecho *st, int flags);

/* Send an empty ping (a keepalive) on a TLS connection the fast path owns,
 * with nothing else on its way out: 1 sent (to the socket or the TLS
 * layer's outgoing ring), 0 not taken now (for the fd transport a record
 * may have been cut: the caller's next write must start with the same two
 * bytes, 0x89 0x00, the framer's empty ping), or a TLS status. */
int wsecho_ping(tls_conn *c, struct wsecho *st);

#endif
