/*
 * loadgen.c - the WebSocket echo load generator (see loadgen.h).
 *
 * Hot path of one round trip, per connection (wss):
 *   epoll_wait -> tls_read_ring (one readv into OpenSSL's buffer, decrypt
 *   into the plaintext ring) -> parse the header from the ring, memcmp the
 *   payload against the message in place -> latency sample -> next frame:
 *   header + ws_mask_copy of the message into the send buffer -> tls_write
 *   (encrypt, one send).
 * ws:// is the same with ring_read_fd and send.
 *
 * epoll is level-triggered: a connection is only ever interested in EPOLLIN
 * (plus EPOLLOUT while a connect is pending or bytes wait to be sent), and
 * level triggering means nothing can be lost when a read stops early (the
 * plaintext ring full, OpenSSL's read-ahead) - the next epoll_wait reports
 * the socket again.
 */
#define _GNU_SOURCE
#include "loadgen.h"

#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <sched.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/epoll.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#include <openssl/err.h>
#include <openssl/evp.h>
#include <openssl/rand.h>

#include "core/ring.h"
#include "core/tls.h"
#include "core/wsframe.h"
#include "core/wshandshake.h"
#include "core/wsmask.h"

#define MAX_EVENTS 256
#define POLL_MS 10                      /* longest sleep: how soon a stop is seen */
#define CLOSE_GRACE_NS 1000000000ull    /* wait for the server's close frame */
#define DEADLINE_SLACK_NS 5000000000ull /* default hard deadline beyond the plan */
#define TLS_RING_CAP 32768              /* ciphertext overflow rings (tls.h) */
#define HEAD_MAX 8192                   /* largest upgrade response head */
#define MAX_CONNECTIONS (1 << 20)
#define MAX_MESSAGE ((size_t)1 << 30)
#define MAX_PATH 4096
#define MAX_HOST 1024
#define CTL_CAP 280 /* queued control frames: one pong (131) + one close (8) */
#define INITIAL_SAMPLES 65536

enum phase { P_SETUP, P_WARMUP, P_MEASURE, P_CLOSING };

enum state {
    S_CONNECTING, /* TCP connect in progress */
    S_TLS,        /* TLS handshake */
    S_UPGRADE,    /* request sent (or being sent), waiting for the 101 */
    S_OPEN,       /* echo loop */
    S_CLOSING,    /* close frame queued, waiting for the server's */
    S_DONE,       /* closed, resources released */
};

enum rx_kind { RX_DATA, RX_CONTROL, RX_SKIP };


struct conn {
    int fd, index, state;
    uint32_t events;     /* current epoll interest */
    tls_conn *tls;       /* wss only */
    int hs_want_write;   /* TLS handshake waits for the socket to take bytes */
    ring *in;            /* received plaintext */
    unsigned char *payload; /* the message, made once */
    unsigned char *frame;   /* the masked frame being sent (first: the upgrade request) */
    size_t wlen, woff;
    unsigned char ctl[CTL_CAP]; /* masked control frames waiting to be sent */
    size_t ctl_len, ctl_off;
    char accept[WS_ACCEPT_SIZE + 1]; /* the Sec-WebSocket-Accept we expect */
    /* the frame being received */
    int rx_in_frame, rx_kind, rx_opcode, rx_fin;
    uint64_t rx_left;
    unsigned char ctl_in[125];
    size_t ctl_in_len;
    /* the message being echoed */
    size_t msg_got;
    int msg_frag, awaiting;
    uint64_t t_sent;
};

struct lg {
    const struct loadgen_config *cfg;
    struct loadgen_result *out;
    struct conn *conns;
    int n, ep, phase, setting_up, live;
    uint64_t now, connect_deadline, hard_deadline, t_start, t_end, close_deadline;
    uint64_t win_start, cpu0;
    uint64_t prng;
    uint8_t opcode;
    size_t frame_cap, ring_cap;
    struct sockaddr_in addr;
    uint64_t *samples;
    size_t nsamples, cap;
};

/* ----------------------------------------------------------------- utils */

static size_t min_sz(size_t a, size_t b) { return a < b ? a : b; }
static uint64_t min_u64(uint64_t a, uint64_t b) { return a < b ? a : b; }

static uint64_t clock_ns(struct lg *g)
{
    struct timespec ts;
    if (clock_gettime(CLOCK_MONOTONIC, &ts) != 0)
        return g->now; /* cannot happen with CLOCK_MONOTONIC; keep time still */
    return (uint64_t)ts.tv_sec * 1000000000ull + (uint64_t)ts.tv_nsec;
}

static uint64_t thread_cpu_ns(void)
{
    struct rusage ru;
    if (getrusage(RUSAGE_THREAD, &ru) != 0)
        return 0;
    return (uint64_t)(ru.ru_utime.tv_sec + ru.ru_stime.tv_sec) * 1000000000ull +
           (uint64_t)(ru.ru_utime.tv_usec + ru.ru_stime.tv_usec) * 1000ull;
}

/* xorshift64*: payloads and masking keys (RFC 6455 wants them unpredictable
 * to intermediaries, not cryptographic). */
static uint64_t rnd(struct lg *g)
{
    uint64_t x = g->prng;
    x ^= x >> 12;
    x ^= x << 25;
    x ^= x >> 27;
    g->prng = x;
    return x * 0x2545F4914F6CDD1Dull;
}

/* strerror is thread-safe in glibc (>= 2.32) and musl: static strings. */
static const char *errstr(int err) { return strerror(err); }

static void set_error(struct loadgen_result *out, const char *fmt, ...)
    __attribute__((format(printf, 2, 3)));

static void set_error(struct loadgen_result *out, const char *fmt, ...)
{
    if (out->error[0] != '\0')
        return; /* keep the first */
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(out->error, sizeof out->error, fmt, ap);
    va_end(ap);
}

/* --------------------------------------------------------------- samples */

static void record(struct lg *g, uint64_t lat)
{
    struct loadgen_result *out = g->out;
    out->messages++;
    out->bytes += g->cfg->message_size;
    out->lat_sum_ns += lat;
    if (lat < out->lat_min_ns)
        out->lat_min_ns = lat;
    if (lat > out->lat_max_ns)
        out->lat_max_ns = lat;
    if (g->nsamples == g->cap) {
        if (out->samples_dropped)
            return;
        size_t cap = g->cap ? 2 * g->cap : INITIAL_SAMPLES;
        uint64_t *grown = cap <= SIZE_MAX / sizeof *grown ? realloc(g->samples, cap * sizeof *grown)
                                                          : NULL;
        if (grown == NULL) {
            out->samples_dropped = 1;
            return;
        }
        g->samples = grown;
        g->cap = cap;
    }
    g->samples[g->nsamples++] = lat;
}

static int cmp_u64(const void *a, const void *b)
{
    uint64_t x = *(const uint64_t *)a, y = *(const uint64_t *)b;
    return (x > y) - (x < y);
}

/* LSD radix sort, 11-bit digits, only as many passes as the largest value
 * needs (3 for anything under 8.6 s).  Falls back to qsort without memory. */
static void sort_u64(uint64_t *a, size_t n)
{
    if (n < 2)
        return;
    uint64_t max = 0;
    for (size_t i = 0; i < n; i++)
        max = a[i] > max ? a[i] : max;
    uint64_t *tmp = n <= SIZE_MAX / sizeof *tmp ? malloc(n * sizeof *tmp) : NULL;
    if (tmp == NULL) {
        qsort(a, n, sizeof *a, cmp_u64);
        return;
    }
    uint64_t *src = a, *dst = tmp;
    for (unsigned shift = 0; shift < 64 && (max >> shift) != 0; shift += 11) {
        size_t count[2048] = {0};
        for (size_t i = 0; i < n; i++)
            count[(src[i] >> shift) & 2047]++;
        size_t pos = 0;
        for (size_t d = 0; d < 2048; d++) {
            size_t c = count[d];
            count[d] = pos;
            pos += c;
        }
        for (size_t i = 0; i < n; i++)
            dst[count[(src[i] >> shift) & 2047]++] = src[i];
        uint64_t *t = src;
        src = dst;
        dst = t;
    }
    if (src != a)
        memcpy(a, src, n * sizeof *a);
    free(tmp);
}

/* Nearest rank: the smallest sample with at least q * n samples <= it. */
static uint64_t quantile(const uint64_t *sorted, size_t n, double q)
{
    if (n == 0)
        return 0;
    if (!(q > 0)) /* also NaN */
        return sorted[0];
    if (q >= 1)
        return sorted[n - 1];
    double x = q * (double)n;
    size_t rank = (size_t)x;
    if ((double)rank < x)
        rank++;
    if (rank == 0)
        rank = 1;
    return sorted[min_sz(rank, n) - 1];
}

/* ----------------------------------------------------------- connections */

static void conn_close(struct lg *g, struct conn *c)
{
    if (c->state == S_DONE)
        return;
    if (c->state < S_OPEN)
        g->setting_up--;
    g->live--;
    tls_conn_free(c->tls);
    c->tls = NULL;
    if (c->fd >= 0 && close(c->fd) != 0) {
        /* Linux releases the descriptor even when close reports an error;
         * there is nothing to retry. */
    }
    c->fd = -1; /* close() also removed it from the epoll set */
    c->state = S_DONE;
}

static void conn_fail(struct lg *g, struct conn *c, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));

/* Count the failure (connect failure before the WebSocket handshake, error
 * after it, nothing while closing), keep the first reason, close. */
static void conn_fail(struct lg *g, struct conn *c, const char *fmt, ...)
{
    if (c->state == S_DONE)
        return;
    if (c->state < S_OPEN)
        g->out->connect_failures++;
    else if (c->state == S_OPEN)
        g->out->errors++;
    if (c->state <= S_OPEN && g->out->error[0] == '\0') {
        char msg[200];
        va_list ap;
        va_start(ap, fmt);
        vsnprintf(msg, sizeof msg, fmt, ap);
        va_end(ap);
        set_error(g->out, "connection %d: %s", c->index, msg);
    }
    conn_close(g, c);
}

static const char *tls_reason(tls_conn *t, long status)
{
    const char *e = tls_conn_error(t);
    if (e != NULL && *e != '\0')
        return e;
    switch (status) {
    case TLS_CLOSED:
        return "the server closed the TLS session";
    case TLS_EOF:
        return "the connection ended without close_notify";
    default:
        return "TLS error";
    }
}

static int update_interest(struct lg *g, struct conn *c)
{
    uint32_t want = EPOLLIN;
    if (c->state == S_CONNECTING)
        want = EPOLLOUT;
    else if (c->woff < c->wlen || c->ctl_off < c->ctl_len ||
             (c->tls != NULL &&
              (tls_pending_out(c->tls) > 0 || (c->state == S_TLS && c->hs_want_write))))
        want |= EPOLLOUT;
    if (want == c->events)
        return 0;
    struct epoll_event ev = {.events = want, .data.u32 = (uint32_t)c->index};
    if (epoll_ctl(g->ep, EPOLL_CTL_MOD, c->fd, &ev) != 0) {
        conn_fail(g, c, "epoll_ctl: %s", errstr(errno));
        return -1;
    }
    c->events = want;
    return 0;
}

/* Bytes taken (> 0), 0 when the socket (or TLS) must drain first, -1 when
 * the connection failed (and is closed). */
static long conn_write(struct lg *g, struct conn *c, const unsigned char *p, size_t n)
{
    if (c->tls != NULL) {
        long r = tls_write(c->tls, p, n);
        if (r >= 0 || r == TLS_WANT_WRITE || r == TLS_WANT_READ)
            return r > 0 ? r : 0;
        conn_fail(g, c, "TLS write: %s", tls_reason(c->tls, r));
        return -1;
    }
    for (;;) {
        ssize_t r = send(c->fd, p, n, MSG_NOSIGNAL);
        if (r >= 0)
            return (long)r;
        if (errno == EINTR)
            continue;
        if (errno == EAGAIN || errno == EWOULDBLOCK)
            return 0;
        conn_fail(g, c, "send: %s", errstr(errno));
        return -1;
    }
}

/* Send what waits: queued ciphertext, the rest of the frame, then control
 * frames (never in the middle of a data frame).  0, or -1 when closed. */
static int pump_output(struct lg *g, struct conn *c)
{
    if (c->tls != NULL && tls_pending_out(c->tls) > 0) {
        long r = tls_flush(c->tls);
        if (r < 0 && r != TLS_WANT_WRITE) {
            conn_fail(g, c, "TLS flush: %s", tls_reason(c->tls, r));
            return -1;
        }
    }
    while (c->woff < c->wlen) {
        long r = conn_write(g, c, c->frame + c->woff, c->wlen - c->woff);
        if (r < 0)
            return -1;
        if (r == 0)
            return update_interest(g, c);
        c->woff += (size_t)r;
    }
    while (c->ctl_off < c->ctl_len) {
        long r = conn_write(g, c, c->ctl + c->ctl_off, c->ctl_len - c->ctl_off);
        if (r < 0)
            return -1;
        if (r == 0)
            return update_interest(g, c);
        c->ctl_off += (size_t)r;
    }
    c->ctl_off = c->ctl_len = 0;
    return update_interest(g, c);
}

/* Queue a masked control frame (payload <= 125 bytes). */
static void queue_control(struct lg *g, struct conn *c, unsigned opcode, const unsigned char *data,
                          size_t len)
{
    if (c->ctl_off == c->ctl_len)
        c->ctl_off = c->ctl_len = 0;
    uint32_t key = (uint32_t)(rnd(g) >> 32);
    size_t h = ws_encode_header(c->ctl + c->ctl_len, opcode, 1, len, &key);
    ws_mask_copy(c->ctl + c->ctl_len + h, data, len, key, 0);
    c->ctl_len += h + len;
}

/* Start the next round trip. */
static int send_message(struct lg *g, struct conn *c, uint64_t now)
{
    size_t n = g->cfg->message_size;
    uint32_t key = (uint32_t)(rnd(g) >> 32);
    size_t h = ws_encode_header(c->frame, g->opcode, 1, n, &key);
    ws_mask_copy(c->frame + h, c->payload, n, key, 0);
    c->wlen = h + n;
    c->woff = 0;
    c->awaiting = 1;
    c->msg_got = 0;
    c->msg_frag = 0;
    c->t_sent = now;
    return pump_output(g, c);
}

/* ------------------------------------------------------------ handshakes */

static int start_upgrade(struct lg *g, struct conn *c)
{
    unsigned char raw[16], key[32];
    if (RAND_bytes(raw, sizeof raw) != 1) {
        conn_fail(g, c, "RAND_bytes failed");
        return -1;
    }
    int klen = EVP_EncodeBlock(key, raw, sizeof raw); /* 24 characters */
    if (klen != 24) {
        conn_fail(g, c, "EVP_EncodeBlock failed");
        return -1;
    }
    if (!ws_accept_key(key, 24, c->accept)) {
        conn_fail(g, c, "SHA-1 of the key failed");
        return -1;
    }
    int n = snprintf((char *)c->frame, g->frame_cap,
                     "GET %s HTTP/1.1\r\n"
                     "Host: %s\r\n"
                     "Upgrade: websocket\r\n"
                     "Connection: Upgrade\r\n"
                     "Sec-WebSocket-Key: %.24s\r\n"
                     "Sec-WebSocket-Version: 13\r\n"
                     "\r\n",
                     g->cfg->path, g->cfg->host_header, (const char *)key);
    if (n < 0 || (size_t)n >= g->frame_cap) {
        conn_fail(g, c, "the upgrade request does not fit");
        return -1;
    }
    c->state = S_UPGRADE;
    c->wlen = (size_t)n;
    c->woff = 0;
    return pump_output(g, c);
}

static int step_tls(struct lg *g, struct conn *c)
{
    int r = tls_handshake(c->tls);
    if (r == 0)
        return start_upgrade(g, c);
    if (r == TLS_WANT_READ || r == TLS_WANT_WRITE) {
        c->hs_want_write = r == TLS_WANT_WRITE;
        return update_interest(g, c);
    }
    conn_fail(g, c, "TLS handshake: %s", tls_reason(c->tls, r));
    return -1;
}

static int on_connected(struct lg *g, struct conn *c)
{
    if (!g->cfg->use_tls)
        return start_upgrade(g, c);
    c->tls = tls_conn_new(g->cfg->ssl_ctx, TLS_RING, c->fd, TLS_RING_CAP, TLS_READ_AHEAD,
                          g->cfg->server_name);
    if (c->tls == NULL) {
        char buf[160];
        if (tls_last_error(buf, sizeof buf) == 0)
            snprintf(buf, sizeof buf, "tls_conn_new failed");
        conn_fail(g, c, "TLS setup: %s", buf);
        return -1;
    }
    c->state = S_TLS;
    return step_tls(g, c);
}

static void start_connect(struct lg *g, struct conn *c)
{
    c->fd = socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
    if (c->fd < 0) {
        conn_fail(g, c, "socket: %s", errstr(errno));
        return;
    }
    int one = 1;
    if (setsockopt(c->fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one) != 0) {
        conn_fail(g, c, "TCP_NODELAY: %s", errstr(errno));
        return;
    }
    int r = connect(c->fd, (const struct sockaddr *)&g->addr, sizeof g->addr);
    /* EINTR: the connection continues asynchronously, as with EINPROGRESS. */
    if (r != 0 && errno != EINPROGRESS && errno != EINTR) {
        conn_fail(g, c, "connect: %s", errstr(errno));
        return;
    }
    struct epoll_event ev = {.events = EPOLLOUT, .data.u32 = (uint32_t)c->index};
    if (epoll_ctl(g->ep, EPOLL_CTL_ADD, c->fd, &ev) != 0) {
        conn_fail(g, c, "epoll_ctl: %s", errstr(errno));
        return;
    }
    c->events = EPOLLOUT;
    if (r == 0) {
        c->state = S_UPGRADE; /* not connecting any more; on_connected sets the rest */
        on_connected(g, c);
    }
}

static void on_connect_ready(struct lg *g, struct conn *c)
{
    int err = 0;
    socklen_t len = sizeof err;
    if (getsockopt(c->fd, SOL_SOCKET, SO_ERROR, &err, &len) != 0)
        err = errno;
    if (err != 0) {
        conn_fail(g, c, "connect: %s", errstr(err));
        return;
    }
    c->state = S_UPGRADE;
    on_connected(g, c);
}

static int has_token(const char *v, size_t len, const char *token)
{
    size_t tl = strlen(token), i = 0;
    while (i < len) {
        while (i < len && (v[i] == ' ' || v[i] == '\t' || v[i] == ','))
            i++;
        size_t start = i;
        while (i < len && v[i] != ',')
            i++;
        size_t end = i;
        while (end > start && (v[end - 1] == ' ' || v[end - 1] == '\t'))
            end--;
        if (end - start == tl && strncasecmp(v + start, token, tl) == 0)
            return 1;
    }
    return 0;
}

static int process_frames(struct lg *g, struct conn *c);

/* Parse the 101 once its head is complete: 1 done, 0 need more, -1 closed. */
static int process_upgrade(struct lg *g, struct conn *c)
{
    char head[HEAD_MAX];
    size_t n = ring_peek(c->in, head, min_sz(ring_len(c->in), sizeof head));
    size_t end = 0;
    for (size_t i = 3; i < n; i++)
        if (head[i] == '\n' && head[i - 1] == '\r' && head[i - 2] == '\n' && head[i - 3] == '\r') {
            end = i + 1;
            break;
        }
    if (end == 0) {
        if (n >= sizeof head) {
            conn_fail(g, c, "upgrade response head larger than %d bytes", HEAD_MAX);
            return -1;
        }
        return 0;
    }
    const char *line = head, *stop = head + end - 2; /* the final empty line */
    const char *eol = memchr(line, '\r', (size_t)(stop - line));
    size_t llen = eol ? (size_t)(eol - line) : 0;
    if (llen < 12 || memcmp(line, "HTTP/1.1 101", 12) != 0 || (llen > 12 && line[12] != ' ')) {
        conn_fail(g, c, "upgrade refused: %.*s", (int)min_sz(llen, 80), line);
        return -1;
    }
    int upgrade = 0, connection = 0, accept = 0;
    for (line = eol + 2; line < stop; line = eol + 2) {
        eol = memchr(line, '\r', (size_t)(stop - line) + 1);
        if (eol == NULL || eol[1] != '\n')
            break;
        const char *colon = memchr(line, ':', (size_t)(eol - line));
        if (colon == NULL) {
            conn_fail(g, c, "malformed header line in the upgrade response");
            return -1;
        }
        size_t nlen = (size_t)(colon - line);
        const char *v = colon + 1;
        while (v < eol && (*v == ' ' || *v == '\t'))
            v++;
        size_t vlen = (size_t)(eol - v);
        while (vlen > 0 && (v[vlen - 1] == ' ' || v[vlen - 1] == '\t'))
            vlen--;
#define NAME_IS(s) (nlen == sizeof(s) - 1 && strncasecmp(line, s, nlen) == 0)
        if (NAME_IS("upgrade"))
            upgrade |= has_token(v, vlen, "websocket");
        else if (NAME_IS("connection"))
            connection |= has_token(v, vlen, "upgrade");
        else if (NAME_IS("sec-websocket-accept"))
            accept = vlen == WS_ACCEPT_SIZE && memcmp(v, c->accept, WS_ACCEPT_SIZE) == 0 ? 1 : -1;
        else if (NAME_IS("sec-websocket-extensions") || NAME_IS("sec-websocket-protocol")) {
            conn_fail(g, c, "the server chose an extension or subprotocol not offered");
            return -1;
        }
#undef NAME_IS
    }
    if (!upgrade || !connection || accept != 1) {
        conn_fail(g, c, "%s", !upgrade      ? "no 'Upgrade: websocket' in the 101 response"
                              : !connection ? "no 'Connection: Upgrade' in the 101 response"
                              : accept == 0 ? "no Sec-WebSocket-Accept in the 101 response"
                                            : "wrong Sec-WebSocket-Accept");
        return -1;
    }
    if (ring_discard(c->in, end) != end) {
        conn_fail(g, c, "internal: ring_discard");
        return -1;
    }
    c->state = S_OPEN;
    g->setting_up--;
    g->out->connections++;
    if (send_message(g, c, clock_ns(g)) < 0)
        return -1;
    if (ring_len(c->in) > 0 && process_frames(g, c) < 0)
        return -1;
    return 1;
}

/* ---------------------------------------------------------------- frames */

static void finish_close(struct lg *g, struct conn *c)
{
    if (c->tls != NULL) {
        int r = tls_shutdown(c->tls); /* close_notify, best effort */
        (void)r;                      /* the connection is closed either way */
    }
    conn_close(g, c);
}

/* The echo of the current message is complete. */
static int on_message(struct lg *g, struct conn *c)
{
    uint64_t t = clock_ns(g);
    if (c->woff < c->wlen) {
        conn_fail(g, c, "an echo arrived before the message was sent");
        return -1;
    }
    uint64_t lat = t - c->t_sent;
    if (g->phase == P_MEASURE)
        record(g, lat);
    else
        g->out->warmup_messages++;
    c->awaiting = 0;
    return send_message(g, c, t);
}

/* A frame header: 1 parsed, 0 incomplete, -1 failed (closed). */
static int parse_header(struct lg *g, struct conn *c)
{
    size_t avail = ring_len(c->in), span;
    unsigned char copy[WS_HEADER_MAX];
    const unsigned char *p = ring_peek_region(c->in, &span);
    size_t have = span;
    if (span < WS_HEADER_MAX && span < avail) { /* the header wraps around the ring */
        have = ring_peek(c->in, copy, min_sz(avail, sizeof copy));
        p = copy;
    }
    struct ws_header h;
    int r = ws_parse_header(p, have, 0, &h); /* a server's frames are unmasked */
    if (r == WS_HEADER_INCOMPLETE)
        return 0;
    if (r != WS_HEADER_OK) {
        conn_fail(g, c, "bad frame header from the server (0x%02x 0x%02x): %s", p[0], p[1],
                  ws_header_error(r));
        return -1;
    }
    unsigned fin = h.fin, op = h.opcode;
    uint64_t len = h.length;
    size_t need = h.size;
    int closing = c->state == S_CLOSING;
    if (op >= WS_OP_CLOSE) {
        c->rx_kind = RX_CONTROL;
        c->ctl_in_len = 0;
    } else if (closing) {
        c->rx_kind = RX_SKIP; /* the echo still in flight when we closed */
    } else {
        size_t size = g->cfg->message_size;
        if (op == WS_OP_CONT ? !c->msg_frag : c->msg_frag) {
            conn_fail(g, c, op == WS_OP_CONT ? "a continuation frame outside a message"
                                             : "a new message inside a fragmented one");
            return -1;
        }
        if (op != WS_OP_CONT && op != g->opcode) {
            conn_fail(g, c, "wrong opcode %u (expected %u)", op, (unsigned)g->opcode);
            return -1;
        }
        if (!c->awaiting) {
            conn_fail(g, c, "a data frame while no message was outstanding");
            return -1;
        }
        if (len > size - c->msg_got || (fin && c->msg_got + len != size)) {
            conn_fail(g, c, "echo of %llu bytes for a message of %zu",
                      (unsigned long long)(c->msg_got + len), size);
            return -1;
        }
        c->rx_kind = RX_DATA;
        c->msg_frag = !fin;
    }
    if (ring_discard(c->in, need) != need) {
        conn_fail(g, c, "internal: ring_discard");
        return -1;
    }
    c->rx_in_frame = 1;
    c->rx_opcode = (int)op;
    c->rx_fin = (int)fin;
    c->rx_left = len;
    return 1;
}

/* A whole frame has been received. */
static int end_frame(struct lg *g, struct conn *c)
{
    c->rx_in_frame = 0;
    switch (c->rx_opcode) {
    case WS_OP_CLOSE:
        if (c->state == S_CLOSING) {
            finish_close(g, c);
            return -1;
        }
        conn_fail(g, c, "the server sent a close frame (code %u)",
                  c->ctl_in_len >= 2 ? (unsigned)c->ctl_in[0] << 8 | c->ctl_in[1] : 1005u);
        return -1;
    case WS_OP_PING:
        /* Answer pings until our close frame is queued; when two pongs
         * already wait, the newest ping goes unanswered (RFC 6455 5.5.3
         * allows answering only some). */
        if (c->state == S_OPEN &&
            (c->ctl_len == c->ctl_off || c->ctl_len + 6 + 125 + 8 <= CTL_CAP))
            queue_control(g, c, WS_OP_PONG, c->ctl_in, c->ctl_in_len);
        return pump_output(g, c);
    case WS_OP_PONG:
        return 0;
    default:
        if (c->rx_kind == RX_DATA && c->rx_fin && c->state == S_OPEN)
            return on_message(g, c);
        return 0;
    }
}

/* Everything the plaintext ring holds.  0, or -1 when closed. */
static int process_frames(struct lg *g, struct conn *c)
{
    for (;;) {
        if (!c->rx_in_frame) {
            int r = parse_header(g, c);
            if (r <= 0)
                return r;
        }
        while (c->rx_left > 0) {
            size_t span;
            const unsigned char *p = ring_peek_region(c->in, &span);
            if (span == 0)
                return 0;
            size_t take = (size_t)min_u64(span, c->rx_left);
            if (c->rx_kind == RX_DATA) {
                const unsigned char *want = c->payload + c->msg_got;
                if (memcmp(p, want, take) != 0) {
                    size_t i = 0;
                    while (p[i] == want[i])
                        i++;
                    conn_fail(g, c, "echo differs from the message at byte %zu of %zu",
                              c->msg_got + i, g->cfg->message_size);
                    return -1;
                }
                c->msg_got += take;
            } else if (c->rx_kind == RX_CONTROL) {
                memcpy(c->ctl_in + c->ctl_in_len, p, take);
                c->ctl_in_len += take;
            }
            if (ring_consume(c->in, take) != 0) {
                conn_fail(g, c, "internal: ring_consume");
                return -1;
            }
            c->rx_left -= take;
        }
        if (end_frame(g, c) < 0)
            return -1;
    }
}

/* The socket is readable (or in error): read and process until it would
 * block.  0, or -1 when the connection is closed. */
static int read_input(struct lg *g, struct conn *c)
{
    for (;;) {
        long got = 0;
        int ended = 0;
        if (c->tls != NULL) {
            long r = tls_read_ring(c->tls, c->in);
            if (r > 0)
                got = r;
            else if (r == TLS_CLOSED || r == TLS_EOF)
                ended = 1;
            else if (r != 0 && r != TLS_WANT_READ && r != TLS_WANT_WRITE) {
                conn_fail(g, c, "TLS read: %s", tls_reason(c->tls, r));
                return -1;
            }
        } else {
            ssize_t r = ring_read_fd(c->in, c->fd);
            if (r > 0)
                got = (long)r;
            else if (r == 0)
                ended = 1;
            else if (r != -EAGAIN && r != -ENOBUFS) {
                conn_fail(g, c, "recv: %s", errstr((int)-r));
                return -1;
            }
        }
        int full = ring_writable(c->in) == 0;
        if (ring_len(c->in) > 0) {
            int r = c->state == S_UPGRADE ? process_upgrade(g, c) : process_frames(g, c);
            if (r < 0)
                return -1;
        }
        if (ended) {
            if (c->state == S_CLOSING)
                conn_close(g, c);
            else
                conn_fail(g, c, "the server closed the connection%s",
                          c->state == S_OPEN ? " (no close frame)" : "");
            return -1;
        }
        if (!full || got == 0)
            break;
    }
    return update_interest(g, c);
}

static void on_writable(struct lg *g, struct conn *c)
{
    if (c->state == S_TLS) {
        if (tls_pending_out(c->tls) > 0) {
            long r = tls_flush(c->tls);
            if (r < 0 && r != TLS_WANT_WRITE) {
                conn_fail(g, c, "TLS flush: %s", tls_reason(c->tls, r));
                return;
            }
        }
        step_tls(g, c);
    } else {
        pump_output(g, c);
    }
}

/* ------------------------------------------------------------ the phases */

/* Release: whoever sees a phase also sees the figures recorded before it. */
static void publish_phase(struct lg *g, int phase)
{
    if (g->cfg->phase != NULL)
        __atomic_store_n(g->cfg->phase, phase, __ATOMIC_RELEASE);
}

static void end_window(struct lg *g)
{
    if (g->phase != P_MEASURE)
        return;
    publish_phase(g, 3);
    g->out->wall_ns = g->now - g->win_start;
    g->out->cpu_ns = thread_cpu_ns() - g->cpu0;
}

static void begin_close(struct lg *g)
{
    static const unsigned char normal[2] = {0x03, 0xE8}; /* 1000 */
    end_window(g);
    g->phase = P_CLOSING;
    g->close_deadline = min_u64(g->now + CLOSE_GRACE_NS, g->hard_deadline);
    for (int i = 0; i < g->n; i++) {
        struct conn *c = &g->conns[i];
        if (c->state < S_OPEN) {
            conn_close(g, c); /* the run ended before it was set up: not a failure */
        } else if (c->state == S_OPEN) {
            c->state = S_CLOSING;
            queue_control(g, c, WS_OP_CLOSE, normal, sizeof normal);
            pump_output(g, c);
        }
    }
}

static void fail_setup_timeouts(struct lg *g)
{
    for (int i = 0; i < g->n; i++) {
        struct conn *c = &g->conns[i];
        if (c->state < S_OPEN)
            conn_fail(g, c, "%s timed out",
                      c->state == S_CONNECTING ? "connect"
                      : c->state == S_TLS      ? "TLS handshake"
                                               : "WebSocket upgrade");
    }
}

static int stop_requested(const struct loadgen_config *cfg)
{
    return cfg->stop != NULL && __atomic_load_n(cfg->stop, __ATOMIC_ACQUIRE) != 0;
}

static void dispatch(struct lg *g, const struct epoll_event *ev)
{
    if (ev->data.u32 >= (uint32_t)g->n)
        return;
    struct conn *c = &g->conns[ev->data.u32];
    if (c->state == S_DONE)
        return; /* closed earlier in this batch */
    if (c->state == S_CONNECTING) {
        on_connect_ready(g, c);
        return;
    }
    if (ev->events & EPOLLOUT) {
        on_writable(g, c);
        if (c->state == S_DONE)
            return;
    }
    if (ev->events & (EPOLLIN | EPOLLERR | EPOLLHUP)) {
        if (c->state == S_TLS)
            step_tls(g, c);
        else
            read_input(g, c);
    }
}

static int event_loop(struct lg *g)
{
    struct epoll_event evs[MAX_EVENTS];
    const struct loadgen_config *cfg = g->cfg;
    for (;;) {
        g->now = clock_ns(g);
        if (g->phase != P_CLOSING && stop_requested(cfg)) {
            g->out->stopped = 1;
            begin_close(g);
        }
        if (g->now >= g->hard_deadline) {
            if (g->phase != P_CLOSING) {
                g->out->timed_out = 1;
                end_window(g);
            }
            return 0;
        }
        if (g->phase == P_SETUP) {
            if (g->setting_up > 0 && g->now >= g->connect_deadline)
                fail_setup_timeouts(g);
            if (g->setting_up == 0) {
                g->phase = P_WARMUP;
                publish_phase(g, 1);
                g->t_start = g->now + cfg->warmup_ns;
                g->t_end = g->t_start + cfg->duration_ns;
            }
        }
        if (g->phase == P_WARMUP && g->now >= g->t_start) {
            g->phase = P_MEASURE;
            publish_phase(g, 2);
            g->win_start = g->now;
            g->cpu0 = thread_cpu_ns();
        }
        if ((g->phase == P_MEASURE && g->now >= g->t_end) ||
            (g->phase != P_CLOSING && g->live == 0))
            begin_close(g);
        if (g->phase == P_CLOSING && (g->live == 0 || g->now >= g->close_deadline))
            return 0;

        uint64_t next = g->hard_deadline;
        switch (g->phase) {
        case P_SETUP:
            next = min_u64(next, g->connect_deadline);
            break;
        case P_WARMUP:
            next = min_u64(next, g->t_start);
            break;
        case P_MEASURE:
            next = min_u64(next, g->t_end);
            break;
        default:
            next = min_u64(next, g->close_deadline);
            break;
        }
        uint64_t wait = next > g->now ? (next - g->now + 999999) / 1000000 : 0;
        int n = epoll_wait(g->ep, evs, MAX_EVENTS, (int)min_u64(wait, POLL_MS));
        if (n < 0) {
            if (errno == EINTR)
                continue;
            int err = errno;
            set_error(g->out, "epoll_wait: %s", errstr(err));
            return -err;
        }
        for (int i = 0; i < n; i++)
            dispatch(g, &evs[i]);
    }
}

/* ------------------------------------------------------------ the run */

static int header_value_ok(const char *s, size_t max)
{
    size_t n = strnlen(s, max + 1);
    if (n == 0 || n > max)
        return 0;
    for (size_t i = 0; i < n; i++)
        if ((unsigned char)s[i] <= 0x20 || (unsigned char)s[i] == 0x7F)
            return 0;
    return 1;
}

static int check_config(const struct loadgen_config *cfg, struct loadgen_result *out,
                        struct sockaddr_in *addr)
{
#define BAD(...)                                                                                   \
    do {                                                                                           \
        set_error(out, __VA_ARGS__);                                                               \
        return -EINVAL;                                                                            \
    } while (0)
    if (cfg == NULL)
        BAD("no config");
    memset(addr, 0, sizeof *addr);
    addr->sin_family = AF_INET;
    if (cfg->host == NULL || inet_pton(AF_INET, cfg->host, &addr->sin_addr) != 1)
        BAD("host must be an IPv4 address");
    if (cfg->port < 1 || cfg->port > 65535)
        BAD("port must be 1 .. 65535, got %d", cfg->port);
    addr->sin_port = htons((uint16_t)cfg->port);
    if (cfg->path == NULL || cfg->path[0] != '/' || !header_value_ok(cfg->path, MAX_PATH))
        BAD("path must start with '/' and hold no space or control character");
    if (cfg->host_header == NULL || !header_value_ok(cfg->host_header, MAX_HOST))
        BAD("host_header must be non-empty and hold no space or control character");
    if (cfg->use_tls != 0 && cfg->use_tls != 1)
        BAD("use_tls must be 0 or 1");
    if (cfg->use_tls && cfg->ssl_ctx == NULL)
        BAD("use_tls needs an ssl_ctx");
    if (cfg->connections < 1 || cfg->connections > MAX_CONNECTIONS)
        BAD("connections must be 1 .. %d, got %d", MAX_CONNECTIONS, cfg->connections);
    if (cfg->message_size > MAX_MESSAGE)
        BAD("message_size must be at most %zu", MAX_MESSAGE);
    if (cfg->text != 0 && cfg->text != 1)
        BAD("text must be 0 or 1");
    if (cfg->duration_ns == 0 || cfg->connect_timeout_ns == 0)
        BAD("duration_ns and connect_timeout_ns must be > 0");
    if (cfg->warmup_ns > UINT64_MAX / 8 || cfg->duration_ns > UINT64_MAX / 8 ||
        cfg->connect_timeout_ns > UINT64_MAX / 8 || cfg->deadline_ns > UINT64_MAX / 8)
        BAD("durations too large");
    if (cfg->cpu < -1 || cfg->cpu >= CPU_SETSIZE)
        BAD("cpu must be -1 or 0 .. %d, got %d", CPU_SETSIZE - 1, cfg->cpu);
    return 0;
#undef BAD
}

static size_t pow2_at_least(size_t n)
{
    size_t p = 1;
    while (p < n)
        p <<= 1;
    return p;
}

static int alloc_conns(struct lg *g)
{
    const struct loadgen_config *cfg = g->cfg;
    size_t n = cfg->message_size;
    size_t request = strlen(cfg->path) + strlen(cfg->host_header) + 256;
    g->frame_cap = ws_header_size(n, 1) + n > request ? ws_header_size(n, 1) + n : request;
    /* Room for a whole small echo; large ones are compared as they arrive. */
    g->ring_cap = pow2_at_least(n + 14 < HEAD_MAX ? HEAD_MAX : min_sz(n + 14, 65536));
    g->conns = calloc((size_t)g->n, sizeof *g->conns);
    if (g->conns == NULL)
        return -ENOMEM;
    for (int i = 0; i < g->n; i++) {
        struct conn *c = &g->conns[i];
        c->fd = -1;
        c->index = i;
        c->state = S_CONNECTING;
        g->setting_up++;
        g->live++;
    }
    for (int i = 0; i < g->n; i++) {
        struct conn *c = &g->conns[i];
        c->payload = malloc(n ? n : 1);
        c->frame = malloc(g->frame_cap);
        c->in = ring_create(g->ring_cap, 0);
        if (c->payload == NULL || c->frame == NULL || c->in == NULL)
            return -ENOMEM;
        /* Printable ASCII for text (valid UTF-8), any bytes for binary. */
        for (size_t j = 0; j < n; j += 8) {
            uint64_t r = rnd(g);
            for (size_t k = j; k < j + 8 && k < n; k++, r >>= 8)
                c->payload[k] = cfg->text ? (unsigned char)(' ' + (r & 0xFF) % 95)
                                          : (unsigned char)r;
        }
    }
    return 0;
}

static void free_conns(struct lg *g)
{
    if (g->conns == NULL)
        return;
    for (int i = 0; i < g->n; i++) {
        struct conn *c = &g->conns[i];
        conn_close(g, c);
        free(c->payload);
        free(c->frame);
        ring_destroy(c->in);
    }
    free(g->conns);
    g->conns = NULL;
}

int loadgen_run(const struct loadgen_config *cfg, struct loadgen_result *out)
{
    if (out == NULL)
        return -EINVAL;
    memset(out, 0, sizeof *out);
    struct lg g;
    memset(&g, 0, sizeof g);
    g.cfg = cfg;
    g.out = out;
    g.ep = -1;
    int rc = check_config(cfg, out, &g.addr);
    if (rc != 0)
        return rc;

    cpu_set_t old;
    int pinned = 0;
    if (cfg->cpu >= 0) {
        cpu_set_t set;
        CPU_ZERO(&set);
        CPU_SET(cfg->cpu, &set);
        if (sched_getaffinity(0, sizeof old, &old) != 0 ||
            sched_setaffinity(0, sizeof set, &set) != 0) {
            int err = errno;
            set_error(out, "cannot pin the thread to CPU %d: %s", cfg->cpu,
                      errstr(err));
            return -err;
        }
        pinned = 1;
    }

    g.n = cfg->connections;
    g.opcode = cfg->text ? WS_OP_TEXT : WS_OP_BINARY;
    g.prng = cfg->seed;
    if (g.prng == 0 && RAND_bytes((unsigned char *)&g.prng, sizeof g.prng) != 1) {
        ERR_clear_error();
        g.prng = (uint64_t)(uintptr_t)&g ^ clock_ns(&g); /* the masks still vary */
    }
    if (g.prng == 0)
        g.prng = 0x9E3779B97F4A7C15ull;
    out->lat_min_ns = UINT64_MAX;

    g.now = clock_ns(&g);
    g.connect_deadline = g.now + cfg->connect_timeout_ns;
    g.hard_deadline =
        g.now + (cfg->deadline_ns ? cfg->deadline_ns
                                  : cfg->connect_timeout_ns + cfg->warmup_ns + cfg->duration_ns +
                                        DEADLINE_SLACK_NS);
    g.phase = P_SETUP;

    rc = alloc_conns(&g);
    if (rc != 0) {
        set_error(out, "out of memory for %d connections of %zu-byte messages", g.n,
                  cfg->message_size);
        goto done;
    }
    g.ep = epoll_create1(EPOLL_CLOEXEC);
    if (g.ep < 0) {
        rc = -errno;
        set_error(out, "epoll_create1: %s", errstr(-rc));
        goto done;
    }
    for (int i = 0; i < g.n; i++)
        start_connect(&g, &g.conns[i]);
    rc = event_loop(&g);

done:
    free_conns(&g);
    if (g.ep >= 0 && close(g.ep) != 0) {
        /* nothing to retry (see conn_close) */
    }
    sort_u64(g.samples, g.nsamples);
    out->samples = g.samples;
    out->nsamples = g.nsamples;
    if (out->messages == 0) {
        out->lat_min_ns = 0;
    } else {
        out->lat_avg_ns = out->lat_sum_ns / out->messages;
        out->lat_p50_ns = quantile(g.samples, g.nsamples, 0.50);
        out->lat_p99_ns = quantile(g.samples, g.nsamples, 0.99);
    }
    if (pinned && sched_setaffinity(0, sizeof old, &old) != 0)
        set_error(out, "cannot restore the thread's CPU affinity: %s",
                  errstr(errno));
    return rc;
}

int loadgen_phase(const int *phase)
{
    return phase == NULL ? 0 : __atomic_load_n(phase, __ATOMIC_ACQUIRE);
}

void loadgen_request_stop(int *flag)
{
    if (flag != NULL)
        __atomic_store_n(flag, 1, __ATOMIC_RELEASE);
}

void loadgen_result_free(struct loadgen_result *r)
{
    if (r == NULL)
        return;
    free(r->samples);
    r->samples = NULL;
    r->nsamples = 0;
}

int loadgen_percentiles(const struct loadgen_result *const *results, size_t n, const double *q,
                        size_t nq, uint64_t *out)
{
    if ((n > 0 && results == NULL) || (nq > 0 && (q == NULL || out == NULL)))
        return -EINVAL;
    size_t total = 0;
    for (size_t i = 0; i < n; i++) {
        if (results[i] == NULL || (results[i]->nsamples > 0 && results[i]->samples == NULL))
            return -EINVAL;
        total += results[i]->nsamples;
    }
    uint64_t *all = NULL;
    if (total > 0) {
        all = total <= SIZE_MAX / sizeof *all ? malloc(total * sizeof *all) : NULL;
        if (all == NULL)
            return -ENOMEM;
        size_t at = 0;
        for (size_t i = 0; i < n; i++) {
            if (results[i]->nsamples > 0)
                memcpy(all + at, results[i]->samples, results[i]->nsamples * sizeof *all);
            at += results[i]->nsamples;
        }
        sort_u64(all, total);
    }
    for (size_t i = 0; i < nq; i++)
        out[i] = quantile(all, total, q[i]);
    free(all);
    return 0;
}
