/*
 * wsecho.c - the echo server's hot path (see wsecho.h).
 */
#define _GNU_SOURCE
#include "wsecho.h"

#include <errno.h>
#include <sys/socket.h>

#include "core/utf8.h"
#include "core/wsframe.h"
#include "core/wsmask.h"

enum { KIND_FRAME = -1, KIND_PONG = -2 }; /* classify(): more than a wsecho status */

/* Receive into the plaintext ring: TLS, or (c == NULL) the plain socket
 * read until it is drained or the ring is full. */
static long receive(tls_conn *c, ring *plain, struct wsecho *st)
{
    if (c != NULL)
        return tls_read_ring(c, plain);
    long total = 0;
    for (;;) {
        size_t room = ring_writable(plain);
        ssize_t got = ring_read_fd(plain, st->fd);
        if (got > 0) {
            total += got;
            if ((size_t)got < room) /* a stream socket that gave less is empty: */
                return total;   /* asking again would only cost an EAGAIN */
            continue;
        }
        if (got == -EAGAIN || got == -ENOBUFS)
            return total > 0 ? total : TLS_WANT_READ;
        if (got == 0)
            return total > 0 ? total : TLS_EOF;
        st->sys_errno = (int)-got;
        return total > 0 ? total : TLS_ERROR;
    }
}

/* Send bytes of an echo: accepted count, or a status. */
static long send_out(tls_conn *c, struct wsecho *st, const unsigned char *p, size_t n)
{
    if (c != NULL)
        return tls_write(c, p, n);
    ssize_t put;
    do
        put = send(st->fd, p, n, MSG_NOSIGNAL);
    while (put < 0 && errno == EINTR);
    if (put >= 0)
        return put;
    if (errno == EAGAIN || errno == EWOULDBLOCK)
        return TLS_WANT_WRITE;
    st->sys_errno = errno;
    return TLS_ERROR;
}

/* Send what is left of the echo at the ring's head; consume its frame when
 * SSL_write has taken all of it.  1 done, 0 blocked, < 0 a TLS status. */
static long finish_pending(tls_conn *c, ring *plain, struct wsecho *st)
{
    size_t avail; /* >= pending_frame: the frame stays readable until consumed */
    const unsigned char *head = ring_peek_region(plain, &avail);
    const unsigned char *echo = head + st->pending_skip;
    while (st->pending_sent < st->pending_len) {
        long put = send_out(c, st, echo + st->pending_sent, st->pending_len - st->pending_sent);
        if (put == TLS_WANT_WRITE || put == TLS_WANT_READ || put == TLS_WANT_ASYNC || put == 0)
            return 0;
        if (put < 0)
            return put;
        st->pending_sent += (size_t)put;
    }
    ring_consume(plain, st->pending_frame); /* cannot fail: the frame is readable */
    st->pending_frame = st->pending_skip = st->pending_len = st->pending_sent = 0;
    return 1;
}

/* More of an incomplete text frame's payload (masked; bytes [done, have) of
 * it, the DFA in *state): 0 once a byte cannot be UTF-8, so the message fails
 * without waiting for the rest (RFC 6455 8.1), as in the framer.  Read only:
 * the bytes are unmasked into a scratch buffer, the frame stays as it came. */
static int text_so_far_valid(const unsigned char *payload, size_t done, size_t have,
                             uint32_t key, uint32_t *state)
{
    unsigned char scratch[256];
    while (done < have) {
        size_t n = have - done < sizeof scratch ? have - done : sizeof scratch;
        ws_mask_copy(scratch, payload + done, n, key, done);
        if (utf8_validate(state, scratch, n) != n)
            return 0;
        done += n;
    }
    return 1;
}

/* The frame at the head of `p` (avail bytes): WSECHO_WAIT if incomplete,
 * WSECHO_BAD_UTF8 if an incomplete text frame is invalid already,
 * WSECHO_SLOW if not plain (or not valid: the framer answers it), KIND_PONG
 * for a whole pong, else KIND_FRAME; the last two with its header in *h. */
static int classify(const unsigned char *p, size_t avail, size_t cap, struct wsecho *st,
                    struct ws_header *h)
{
    int r = ws_parse_header(p, avail, 1, h);
    if (r == WS_HEADER_INCOMPLETE)
        return WSECHO_WAIT;
    if (r == WS_HEADER_OK && h->opcode == WS_OP_PONG) /* final, <= 125 bytes: valid */
        return avail < h->size + h->length ? WSECHO_WAIT : KIND_PONG;
    if (r != WS_HEADER_OK || !h->fin || (h->opcode != WS_OP_TEXT && h->opcode != WS_OP_BINARY))
        return WSECHO_SLOW; /* not final, not data, or broken: the framer's */
    if (h->length > st->max_message || h->size + h->length > cap)
        return WSECHO_SLOW; /* too big to echo in place: the framer streams it */
    if (avail < h->size + h->length) {
        size_t have = avail - h->size;
        if (h->opcode == WS_OP_TEXT && have > st->text_done) {
            if (st->text_done == 0)
                st->text_state = UTF8_ACCEPT;
            if (!text_so_far_valid(p + h->size, st->text_done, have, h->key, &st->text_state))
                return WSECHO_BAD_UTF8;
            st->text_done = have;
        }
        return WSECHO_WAIT;
    }
    return KIND_FRAME;
}

/* What a pump ends with: ENDED when the session has ended, else `status`. */
static int settled(struct wsecho *st, int status)
{
    return st->ended ? WSECHO_ENDED : status;
}

int wsecho_pump(tls_conn *c, ring *plain, struct wsecho *st, int flags)
{
    st->read_status = 0;
    st->ended = 0;
    if (flags & WSECHO_READ) {
        st->read_status = receive(c, plain, st);
        if (st->read_status == TLS_CLOSED || st->read_status == TLS_EOF ||
            st->read_status == TLS_ERROR)
            st->ended = (int)st->read_status;
    }
    if (!(flags & WSECHO_ECHO)) {
        st->text_done = 0; /* the framer may take the frame at the head */
        return settled(st, WSECHO_WAIT);
    }
    if (st->pending_len > 0) {
        long r = finish_pending(c, plain, st);
        if (r < 0) {
            st->ended = (int)r;
            return WSECHO_ENDED;
        }
        if (r == 0)
            return WSECHO_BLOCKED;
    }
    const size_t cap = ring_cap(plain);
    for (;;) {
        struct iovec iov[2];
        if (ring_read_iov(plain, iov) == 0)
            return settled(st, WSECHO_WAIT);
        unsigned char *p = iov[0].iov_base; /* mirrored: all readable bytes */
        struct ws_header h;
        int kind = classify(p, iov[0].iov_len, cap, st, &h);
        if (kind == WSECHO_WAIT && !st->ended)
            return WSECHO_WAIT; /* an incomplete frame: the only way the cache lives on */
        st->text_done = 0; /* from here on the head frame is complete, or not ours */
        if (kind == WSECHO_WAIT)
            return WSECHO_ENDED; /* an incomplete frame that will never complete */
        if (kind == WSECHO_SLOW || kind == WSECHO_BAD_UTF8)
            return kind; /* BAD_UTF8: the caller fails the connection */
        size_t len = (size_t)h.length; /* fits: at most the ring's capacity */
        if (kind == KIND_PONG) { /* nothing to answer: the keepalive's reply */
            ring_consume(plain, h.size + len); /* cannot fail: the frame is readable */
            st->pongs++;
            continue;
        }
        unsigned char *payload = p + h.size;
        if (h.opcode == WS_OP_TEXT) {
            uint32_t state = UTF8_ACCEPT;
            if (ws_unmask_utf8(&state, payload, len, h.key, 0) != len || state != UTF8_ACCEPT)
                return WSECHO_BAD_UTF8; /* the frame is now garbage: the caller fails */
        } else {
            ws_mask(payload, len, h.key, 0);
        }
        unsigned char sh[WS_HEADER_MAX];
        size_t shlen = ws_encode_header(sh, h.opcode, 1, len, NULL);
        unsigned char *echo = payload - shlen; /* over the client header's tail */
        for (size_t i = 0; i < shlen; i++)
            echo[i] = sh[i];
        st->messages++; /* committed: it goes out, or the connection dies */
        st->bytes += len;
        st->pending_frame = h.size + len;
        st->pending_skip = h.size - shlen;
        st->pending_len = shlen + len;
        st->pending_sent = 0;
        long r = finish_pending(c, plain, st);
        if (r < 0) {
            st->ended = (int)r;
            return WSECHO_ENDED;
        }
        if (r == 0)
            return WSECHO_BLOCKED;
    }
}

int wsecho_ping(tls_conn *c, struct wsecho *st)
{
    unsigned char empty_ping[WS_HEADER_MAX];
    if (c == NULL || st->pending_len > 0)
        return 0;
    size_t n = ws_encode_header(empty_ping, WS_OP_PING, 1, 0, NULL); /* 0x89 0x00 */
    long put = tls_write(c, empty_ping, n);
    if (put == (long)n)
        return 1;
    if (put == TLS_WANT_WRITE || put == TLS_WANT_READ || put >= 0)
        return 0;
    return (int)put;
}
