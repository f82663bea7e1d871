/*
 * records_test.c - the direct record layer (csrc/core/records.c) against
 * OpenSSL's own records, in one process, sans-IO over ring BIOs.
 *
 * Two SSL objects shake hands through rings; then one side (or both) hands
 * over to records.c while the other keeps SSL_read/SSL_write.  For every
 * TLS 1.3 suite, both roles, with and without session tickets: data both
 * ways in random sizes, KeyUpdate both ways (with and without a requested
 * update), close_notify both ways, and hostile records each ending in the
 * right alert.  Prints one line per case ending in " ok"; exits non-zero on
 * the first failure.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <openssl/err.h>
#include <openssl/evp.h>
#include <openssl/pem.h>
#include <openssl/ssl.h>
#include <openssl/x509.h>

#include "records.h"
#include "ring.h"
#include "ringbio.h"

#define CHECK(cond)                                                                        \
    do {                                                                                   \
        if (!(cond)) {                                                                     \
            fprintf(stderr, "%s:%d: CHECK(%s) failed\n", __FILE__, __LINE__, #cond);       \
            ERR_print_errors_fp(stderr);                                                   \
            exit(1);                                                                       \
        }                                                                                  \
    } while (0)

#define CAP (1 << 18)

struct end {
    SSL *ssl;
    ring *rx, *tx;
    records_tap *tap;
    records *rec; /* NULL: OpenSSL's records */
};

static unsigned long long rng = 88172645463325252ULL;
static unsigned rnd(unsigned n)
{
    rng ^= rng << 13, rng ^= rng >> 7, rng ^= rng << 17;
    return (unsigned)(rng % n);
}

static SSL_CTX *make_ctx(int server, const char *suite, int tickets, EVP_PKEY *key, X509 *cert)
{
    SSL_CTX *ctx = SSL_CTX_new(server ? TLS_server_method() : TLS_client_method());
    CHECK(ctx != NULL);
    CHECK(SSL_CTX_set_min_proto_version(ctx, TLS1_3_VERSION));
    CHECK(SSL_CTX_set_ciphersuites(ctx, suite));
    SSL_CTX_set_mode(ctx, SSL_MODE_ENABLE_PARTIAL_WRITE | SSL_MODE_ACCEPT_MOVING_WRITE_BUFFER);
    if (server) {
        CHECK(SSL_CTX_use_certificate(ctx, cert) == 1);
        CHECK(SSL_CTX_use_PrivateKey(ctx, key) == 1);
        CHECK(SSL_CTX_set_num_tickets(ctx, (size_t)tickets));
    }
    CHECK(records_ctx_enable(ctx));
    return ctx;
}

static void end_init(struct end *e, SSL_CTX *ctx, int server)
{
    memset(e, 0, sizeof *e);
    CHECK((e->ssl = SSL_new(ctx)) != NULL);
    CHECK((e->rx = ring_create(CAP, 0)) != NULL);
    CHECK((e->tx = ring_create(CAP, 0)) != NULL);
    BIO *b = ringbio_new(&e->rx, &e->tx, CAP, 0, -1, 0);
    CHECK(b != NULL);
    SSL_set_bio(e->ssl, b, b);
    if (server)
        SSL_set_accept_state(e->ssl);
    else
        SSL_set_connect_state(e->ssl);
    CHECK((e->tap = records_tap_new(e->ssl)) != NULL);
}

static void end_free(struct end *e)
{
    records_free(e->rec);
    records_tap_free(e->tap, e->ssl);
    SSL_free(e->ssl);
    ring_destroy(e->rx);
    ring_destroy(e->tx);
}

/* Move ciphertext from a's tx to b's rx, in random chunks when asked. */
static size_t shuttle(struct end *a, struct end *b, int chunky)
{
    unsigned char buf[4096];
    size_t moved = 0;
    while (!ring_empty(a->tx)) {
        size_t n = chunky ? 1 + rnd(sizeof buf) : sizeof buf;
        n = ring_peek(a->tx, buf, n);
        n = ring_write(b->rx, buf, n);
        if (n == 0)
            break;
        ring_discard(a->tx, n);
        moved += n;
        if (chunky)
            break;
    }
    return moved;
}

static void handshake(struct end *c, struct end *s)
{
    int cd = 0, sd = 0;
    for (int i = 0; i < 100 && !(cd && sd); i++) {
        if (!cd) {
            int r = SSL_do_handshake(c->ssl);
            cd = r == 1;
            CHECK(cd || SSL_get_error(c->ssl, r) == SSL_ERROR_WANT_READ);
        }
        shuttle(c, s, 0);
        if (!sd) {
            int r = SSL_do_handshake(s->ssl);
            sd = r == 1;
            CHECK(sd || SSL_get_error(s->ssl, r) == SSL_ERROR_WANT_READ);
        }
        shuttle(s, c, 0);
    }
    CHECK(cd && sd);
}

static void take_over(struct end *e)
{
    char why[128];
    e->rec = records_take_over(e->tap, e->ssl, &e->rx, &e->tx, why, sizeof why);
    e->tap = NULL;
    if (e->rec == NULL)
        fprintf(stderr, "take over: %s\n", why);
    CHECK(e->rec != NULL);
}

static long e_write(struct end *e, const void *p, size_t n)
{
    if (e->rec) {
        long put = records_write(e->rec, p, n);
        if (put == RECORDS_WANT_WRITE)
            return 0;
        if (put < 0)
            fprintf(stderr, "records_write: %ld %s\n", put, records_error(e->rec));
        return put;
    }
    size_t put;
    if (SSL_write_ex(e->ssl, p, n, &put))
        return (long)put;
    CHECK(SSL_get_error(e->ssl, 0) == SSL_ERROR_WANT_WRITE);
    return 0;
}

/* Read what is there into buf: bytes, 0 none, -1 the peer closed, -2 error. */
static long e_read(struct end *e, void *p, size_t n)
{
    if (e->rec) {
        long got = records_read(e->rec, p, n);
        if (got >= 0)
            return got;
        if (got == RECORDS_WANT_READ)
            return 0;
        if (got != RECORDS_CLOSED)
            fprintf(stderr, "records_read: %ld %s\n", got, records_error(e->rec));
        return got == RECORDS_CLOSED ? -1 : -2;
    }
    size_t got;
    if (SSL_read_ex(e->ssl, p, n, &got))
        return (long)got;
    int err = SSL_get_error(e->ssl, 0);
    if (err == SSL_ERROR_WANT_READ)
        return 0;
    return err == SSL_ERROR_ZERO_RETURN ? -1 : -2;
}

/* Send `total` bytes from a to b in random sizes and TCP-like chunks. */
static void stream(struct end *a, struct end *b, size_t total, size_t max_msg)
{
    unsigned char *out = malloc(total), *in = malloc(total);
    CHECK(out && in);
    for (size_t i = 0; i < total; i++)
        out[i] = (unsigned char)rnd(256);
    size_t sent = 0, got = 0, retry = 0;
    for (int round = 0; got < total && round < 1000000; round++) {
        if (sent < total) {
            /* OpenSSL wants a write it refused retried with the same bytes */
            size_t n = retry ? retry : 1 + rnd((unsigned)max_msg);
            if (n > total - sent)
                n = total - sent;
            long put = e_write(a, out + sent, n);
            CHECK(put >= 0);
            retry = put == 0 ? n : 0;
            sent += (size_t)put;
        }
        shuttle(a, b, 1);
        long r = e_read(b, in + got, 1 + rnd((unsigned)(total - got)));
        CHECK(r >= 0);
        got += (size_t)r;
        shuttle(b, a, 0); /* KeyUpdate answers */
        if (!a->rec) { /* let OpenSSL process them: no data comes this way */
            unsigned char none[16];
            CHECK(e_read(a, none, sizeof none) == 0);
        }
    }
    CHECK(got == total);
    CHECK(memcmp(in, out, total) == 0);
    free(out);
    free(in);
}

static const char *suites[] = {"TLS_AES_128_GCM_SHA256", "TLS_AES_256_GCM_SHA384",
                               "TLS_CHACHA20_POLY1305_SHA256"};

struct pair {
    SSL_CTX *cctx, *sctx;
    struct end c, s;
};

static void pair_up(struct pair *p, const char *suite, int tickets, int direct_c, int direct_s,
                    EVP_PKEY *key, X509 *cert)
{
    p->cctx = make_ctx(0, suite, 0, key, cert);
    p->sctx = make_ctx(1, suite, tickets, key, cert);
    end_init(&p->c, p->cctx, 0);
    end_init(&p->s, p->sctx, 1);
    handshake(&p->c, &p->s);
    if (direct_c)
        take_over(&p->c);
    if (direct_s)
        take_over(&p->s);
}

static void pair_free(struct pair *p)
{
    end_free(&p->c);
    end_free(&p->s);
    SSL_CTX_free(p->cctx);
    SSL_CTX_free(p->sctx);
}

static void case_exchange(const char *suite, int tickets, int dc, int ds, EVP_PKEY *k, X509 *x)
{
    struct pair p;
    pair_up(&p, suite, tickets, dc, ds, k, x);
    stream(&p.c, &p.s, 300000, 40000);
    stream(&p.s, &p.c, 300000, 40000);
    stream(&p.c, &p.s, 5000, 64);
    stream(&p.s, &p.c, 5000, 64);
    /* KeyUpdates, both kinds, from whichever side is OpenSSL's or ours. */
    for (int req = 0; req < 2; req++) {
        for (int side = 0; side < 2; side++) {
            struct end *a = side ? &p.s : &p.c, *b = side ? &p.c : &p.s;
            if (a->rec)
                CHECK(records_key_update(a->rec, req) == 0);
            else
                CHECK(SSL_key_update(a->ssl, req ? SSL_KEY_UPDATE_REQUESTED
                                                 : SSL_KEY_UPDATE_NOT_REQUESTED) == 1);
            stream(a, b, 20000, 3000);
            stream(b, a, 20000, 3000);
        }
    }
    if (p.c.rec)
        CHECK(records_alert_sent(p.c.rec) == -1);
    if (p.s.rec)
        CHECK(records_alert_sent(p.s.rec) == -1);
    /* close_notify from the client, then the server's. */
    if (p.c.rec)
        CHECK(records_close(p.c.rec) == 0);
    else
        CHECK(SSL_shutdown(p.c.ssl) == 0);
    shuttle(&p.c, &p.s, 0);
    unsigned char buf[64];
    CHECK(e_read(&p.s, buf, sizeof buf) == -1);
    if (p.s.rec)
        CHECK(records_close(p.s.rec) == 1);
    else
        CHECK(SSL_shutdown(p.s.ssl) == 1);
    shuttle(&p.s, &p.c, 0);
    if (p.c.rec)
        CHECK(records_close(p.c.rec) == 1);
    else
        CHECK(SSL_shutdown(p.c.ssl) == 1);
    if (p.s.rec) {
        struct records_counters n;
        records_counters(p.s.rec, &n);
        CHECK(n.key_updates_sent >= 2 && n.key_updates_received >= 2);
    }
    pair_free(&p);
    printf("exchange %s tickets=%d client=%s server=%s ok\n", suite, tickets,
           dc ? "direct" : "openssl", ds ? "direct" : "openssl");
}

/* The direct server gets a tampered record from an OpenSSL client: it must
 * seal `alert` and fail; the client must then read that alert. */
static void case_hostile(const char *name, int alert, EVP_PKEY *k, X509 *x)
{
    struct pair p;
    pair_up(&p, suites[0], 2, 0, 1, k, x);
    unsigned char msg[100] = {0};
    CHECK(e_write(&p.c, msg, sizeof msg) == (long)sizeof msg);
    size_t len = ring_len(p.c.tx);
    unsigned char rec[256];
    CHECK(len <= sizeof rec);
    CHECK(ring_read(p.c.tx, rec, len) == len);
    if (strcmp(name, "tag") == 0)
        rec[len - 1] ^= 1;
    else if (strcmp(name, "body") == 0)
        rec[10] ^= 0x80;
    else if (strcmp(name, "header") == 0)
        rec[4] ^= 1; /* the length, as AAD and framing */
    else if (strcmp(name, "type") == 0)
        rec[0] = 22; /* an outer type other than application_data */
    else if (strcmp(name, "version") == 0)
        rec[2] = 1;
    else if (strcmp(name, "oversize") == 0)
        rec[3] = 0x41, rec[4] = 0x01; /* 2^14 + 257 */
    if (strcmp(name, "header") == 0) { /* a longer claimed length: pad it out */
        memset(rec + len, 0, 1);
        len += 1;
    }
    CHECK(ring_write(p.s.rx, rec, len) == len);
    unsigned char buf[256];
    long r = records_read(p.s.rec, buf, sizeof buf);
    CHECK(r == RECORDS_ERROR);
    CHECK(records_alert_sent(p.s.rec) == alert);
    CHECK(records_read(p.s.rec, buf, sizeof buf) == RECORDS_ERROR); /* sticky */
    CHECK(records_write(p.s.rec, buf, 10) == RECORDS_ERROR);
    shuttle(&p.s, &p.c, 0);
    CHECK(e_read(&p.c, buf, sizeof buf) == -2);
    unsigned long e = ERR_peek_last_error();
    CHECK(ERR_GET_LIB(e) == ERR_LIB_SSL);
    ERR_clear_error();
    pair_free(&p);
    printf("hostile %s -> alert %d ok\n", name, alert);
}

/* Both ends direct: inner types and limits only a peer of ours can send. */
static void case_raw(EVP_PKEY *k, X509 *x)
{
    struct {
        const char *name;
        int type;
        size_t n, pad;
        int alert;
    } cases[] = {
        {"padded data", 23, 100, 300, -1},
        {"zero-length data", 23, 0, 0, -1},
        {"oversize plaintext", 23, 16385, 0, 22},
        {"oversize padding", 23, 10, 16384 + 10, 22},
        {"all padding", 0, 0, 20, 10},
        {"change_cipher_spec", 20, 1, 0, 10},
        {"unknown type", 99, 5, 0, 10},
        {"empty handshake", 22, 0, 0, 10},
        {"alert of 3 bytes", 21, 3, 0, 50},
        {"finished after handshake", 22, 4, 0, 10},
        {"bad key update", 22, 5, 0, 47},
        {"fatal alert", 21, 2, 0, -1},
    };
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        struct pair p;
        pair_up(&p, suites[i % 3], 1, 1, 1, k, x);
        unsigned char data[16385 + 16] = {0};
        for (size_t j = 0; j < cases[i].n && j < sizeof data; j++)
            data[j] = (unsigned char)(j + 1);
        if (strcmp(cases[i].name, "finished after handshake") == 0)
            data[0] = 20, data[1] = 0, data[2] = 0, data[3] = 0;
        if (strcmp(cases[i].name, "bad key update") == 0)
            data[0] = 24, data[1] = 0, data[2] = 0, data[3] = 1, data[4] = 7;
        if (strcmp(cases[i].name, "fatal alert") == 0)
            data[0] = 2, data[1] = 40;
        CHECK(records_seal_raw(p.c.rec, cases[i].type, data, cases[i].n, cases[i].pad) == 0);
        shuttle(&p.c, &p.s, 0);
        unsigned char buf[20000];
        long r = records_read(p.s.rec, buf, sizeof buf);
        if (cases[i].alert < 0 && strcmp(cases[i].name, "fatal alert") != 0) {
            CHECK(r == (long)cases[i].n || (cases[i].n == 0 && r == RECORDS_WANT_READ));
            CHECK(memcmp(buf, data, cases[i].n) == 0);
        } else if (cases[i].alert < 0) {
            CHECK(r == RECORDS_ERROR && records_alert_received(p.s.rec) == 40);
            CHECK(records_alert_sent(p.s.rec) == -1);
        } else {
            CHECK(r == RECORDS_ERROR);
            CHECK(records_alert_sent(p.s.rec) == cases[i].alert);
            shuttle(&p.s, &p.c, 0);
            CHECK(records_read(p.c.rec, buf, sizeof buf) == RECORDS_ERROR);
            CHECK(records_alert_received(p.c.rec) == cases[i].alert);
        }
        pair_free(&p);
        printf("raw %s ok\n", cases[i].name);
    }
}

/* A handshake message split over records, a KeyUpdate storm, the usage
 * limit, truncation then EOF, records after close_notify. */
static void case_protocol(EVP_PKEY *k, X509 *x)
{
    struct pair p;
    unsigned char buf[4096];
    /* A NewSessionTicket over three records: reassembled, checked, dropped. */
    pair_up(&p, suites[1], 0, 1, 1, k, x);
    unsigned char nst[4 + 8 + 1 + 2 + 3000 + 2] = {4, 0, (3000 + 13) >> 8, (3000 + 13) & 255};
    nst[12] = 0;                                 /* nonce<0..255>: empty */
    nst[13] = 3000 >> 8, nst[14] = 3000 & 255;   /* ticket */
    nst[sizeof nst - 2] = 0, nst[sizeof nst - 1] = 0; /* extensions */
    CHECK(records_seal_raw(p.s.rec, 22, nst, 2, 0) == 0);
    CHECK(records_seal_raw(p.s.rec, 22, nst + 2, 1000, 0) == 0);
    shuttle(&p.s, &p.c, 0);
    CHECK(records_read(p.c.rec, buf, sizeof buf) == RECORDS_WANT_READ);
    CHECK(records_seal_raw(p.s.rec, 22, nst + 1002, sizeof nst - 1002, 0) == 0);
    CHECK(records_write(p.s.rec, "after", 5) == 5);
    shuttle(&p.s, &p.c, 0);
    CHECK(records_read(p.c.rec, buf, sizeof buf) == 5 && memcmp(buf, "after", 5) == 0);
    struct records_counters n;
    records_counters(p.c.rec, &n);
    CHECK(n.tickets == 1);
    /* ... but a server gets none, and data inside a handshake message is refused */
    CHECK(records_seal_raw(p.c.rec, 22, nst, 100, 0) == 0);
    shuttle(&p.c, &p.s, 0);
    CHECK(records_read(p.s.rec, buf, sizeof buf) == RECORDS_WANT_READ);
    CHECK(records_write(p.c.rec, "x", 1) == 1);
    shuttle(&p.c, &p.s, 0);
    CHECK(records_read(p.s.rec, buf, sizeof buf) == RECORDS_ERROR);
    CHECK(records_alert_sent(p.s.rec) == 10);
    pair_free(&p);
    printf("protocol split handshake message ok\n");

    /* A KeyUpdate with more after it in its record. */
    pair_up(&p, suites[1], 0, 1, 1, k, x);
    unsigned char ku2[10] = {24, 0, 0, 1, 0, 24, 0, 0, 1, 0};
    CHECK(records_seal_raw(p.c.rec, 22, ku2, sizeof ku2, 0) == 0);
    shuttle(&p.c, &p.s, 0);
    CHECK(records_read(p.s.rec, buf, sizeof buf) == RECORDS_ERROR);
    CHECK(records_alert_sent(p.s.rec) == 10);
    pair_free(&p);
    printf("protocol unaligned key update ok\n");

    /* KeyUpdate storm: the 33rd in a row without data is refused. */
    pair_up(&p, suites[2], 0, 1, 1, k, x);
    int i;
    for (i = 0; i < 40; i++) {
        CHECK(records_key_update(p.c.rec, 1) == 0);
        shuttle(&p.c, &p.s, 0);
        long r = records_read(p.s.rec, buf, sizeof buf);
        if (r == RECORDS_ERROR)
            break;
        CHECK(r == RECORDS_WANT_READ);
        shuttle(&p.s, &p.c, 0);
        CHECK(records_read(p.c.rec, buf, sizeof buf) == RECORDS_WANT_READ);
    }
    CHECK(i == 32 && records_alert_sent(p.s.rec) == 10);
    pair_free(&p);
    printf("protocol key update storm ok\n");

    /* The usage limit: a new write key every 3 records, seamlessly. */
    pair_up(&p, suites[0], 0, 1, 0, k, x);
    records_set_key_limit(p.c.rec, 3);
    stream(&p.c, &p.s, 50000, 1000);
    records_counters(p.c.rec, &n);
    CHECK(n.key_updates_sent >= 10);
    pair_free(&p);
    printf("protocol usage limit ok\n");

    /* The read side at its limit asks the OpenSSL peer for an update. */
    pair_up(&p, suites[0], 0, 0, 1, k, x);
    records_set_key_limit(p.s.rec, 4);
    stream(&p.c, &p.s, 50000, 1000);
    records_counters(p.s.rec, &n);
    CHECK(n.key_updates_received >= 3);
    pair_free(&p);
    printf("protocol read limit ok\n");

    /* Truncated record then EOF: decode_error, EOF status. */
    pair_up(&p, suites[0], 0, 0, 1, k, x);
    CHECK(e_write(&p.c, buf, 100) == 100);
    size_t len = ring_len(p.c.tx);
    unsigned char rec[256];
    CHECK(ring_read(p.c.tx, rec, len) == len);
    CHECK(ring_write(p.s.rx, rec, len - 3) == len - 3);
    CHECK(records_read(p.s.rec, buf, sizeof buf) == RECORDS_WANT_READ);
    records_set_eof(p.s.rec);
    CHECK(records_read(p.s.rec, buf, sizeof buf) == RECORDS_EOF);
    CHECK(records_alert_sent(p.s.rec) == 50);
    pair_free(&p);
    printf("protocol truncated then eof ok\n");

    /* Records after close_notify are ignored. */
    pair_up(&p, suites[0], 0, 0, 1, k, x);
    CHECK(SSL_shutdown(p.c.ssl) == 0);
    shuttle(&p.c, &p.s, 0);
    CHECK(records_read(p.s.rec, buf, sizeof buf) == RECORDS_CLOSED);
    /* a record an attacker appends after it (the real client cannot write now) */
    CHECK(ring_write(p.s.rx, "\x17\x03\x03\x00\x20xxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxx", 37) == 37);
    CHECK(records_read(p.s.rec, buf, sizeof buf) == RECORDS_CLOSED);
    CHECK(records_alert_sent(p.s.rec) == -1);
    CHECK(records_write(p.s.rec, "late", 4) == 4); /* half-close: still writable */
    CHECK(records_close(p.s.rec) == 1);
    shuttle(&p.s, &p.c, 0);
    CHECK(e_read(&p.c, buf, sizeof buf) == 4);
    CHECK(SSL_shutdown(p.c.ssl) == 1);
    pair_free(&p);
    printf("protocol after close_notify ok\n");
}

int main(void)
{
    EVP_PKEY *key = EVP_EC_gen("P-256");
    X509 *cert = X509_new();
    CHECK(key && cert);
    CHECK(X509_set_version(cert, X509_VERSION_3));
    CHECK(ASN1_INTEGER_set(X509_get_serialNumber(cert), 1));
    CHECK(X509_gmtime_adj(X509_getm_notBefore(cert), -3600));
    CHECK(X509_gmtime_adj(X509_getm_notAfter(cert), 3600));
    CHECK(X509_set_pubkey(cert, key));
    X509_NAME *name = X509_get_subject_name(cert);
    CHECK(X509_NAME_add_entry_by_txt(name, "CN", MBSTRING_ASC, (const unsigned char *)"t", -1,
                                     -1, 0));
    CHECK(X509_set_issuer_name(cert, name));
    CHECK(X509_sign(cert, key, EVP_sha256()));

    for (int s = 0; s < 3; s++)
        for (int tickets = 0; tickets <= 2; tickets += 2)
            for (int mode = 1; mode < 4; mode++)
                case_exchange(suites[s], tickets, mode & 1, mode >> 1, key, cert);
    const char *hostile[] = {"tag", "body", "header", "type", "version", "oversize"};
    int alerts[] = {20, 20, 20, 10, 50, 22};
    for (int i = 0; i < 6; i++)
        case_hostile(hostile[i], alerts[i], key, cert);
    case_raw(key, cert);
    case_protocol(key, cert);
    X509_free(cert);
    EVP_PKEY_free(key);
    printf("all ok\n");
    return 0;
}
