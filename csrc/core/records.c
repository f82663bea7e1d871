/*
 * records.c - TLS 1.3 records sealed and opened by wsstls (see records.h).
 *
 * The AEAD works on the rings' memory: a record is opened from the readable
 * spans of the incoming ring (up to two, where it wraps) into the free spans
 * of the plaintext ring, and sealed from the caller's bytes into the free
 * spans of the outgoing ring.  The only bytes moved by hand are the 5-byte
 * header and the 16-byte tag where a record straddles a ring's end; no
 * payload memcpy, unless the destination has no room for a whole record
 * (then it is opened into a spill buffer and copied out as room appears:
 * counted as spill_copies).
 *
 * Keys: HKDF-Expand-Label (RFC 8446 7.1) through OpenSSL's HKDF in
 * expand-only mode; key and IV per direction, the traffic secret kept only
 * for the next KeyUpdate and wiped when replaced or freed.
 */
#include "records.h"

#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <openssl/core_dispatch.h>
#include <openssl/core_names.h>
#include <openssl/crypto.h>
#include <openssl/provider.h>
#include <openssl/err.h>
#include <openssl/evp.h>
#include <openssl/kdf.h>

#define HDR_LEN 5
#define TAG_LEN 16
#define IV_LEN 12
#define OVERHEAD (HDR_LEN + 1 + TAG_LEN) /* header, inner type, tag */
#define MAX_PLAIN 16384
#define MAX_EXPANSION 256                /* RFC 8446 5.2: 2^14 + 256 */
#define MAX_HS_MSG (2 * 65536 + 512)     /* the largest NewSessionTicket */
#define KEY_UPDATE_STORM 32              /* KeyUpdates received in a row */
#define CT_ALERT 21
#define CT_HANDSHAKE 22
#define CT_APPLICATION_DATA 23
#define HS_NEW_SESSION_TICKET 4
#define HS_KEY_UPDATE 24
#define AL_CLOSE_NOTIFY 0
#define AL_UNEXPECTED_MESSAGE 10
#define AL_BAD_RECORD_MAC 20
#define AL_RECORD_OVERFLOW 22
#define AL_ILLEGAL_PARAMETER 47
#define AL_DECODE_ERROR 50
#define AL_INTERNAL_ERROR 80
#define AL_USER_CANCELED 90

static size_t min_sz(size_t a, size_t b) { return a < b ? a : b; }

/* ========================================================= the algorithms */

/* The AEAD: the provider's cipher functions, fetched once and called
 * directly.  Through EVP_CIPHER_CTX each record also paid for key and IV
 * length queries and tag get/set through OSSL_PARAM lookups (~1,400
 * instructions per 64 B seal + open, measured with callgrind: bench/
 * records_bench.py); the provider's own functions do the same AEAD work. */
struct aead {
    void *provctx;
    OSSL_FUNC_cipher_newctx_fn *newctx;
    OSSL_FUNC_cipher_freectx_fn *freectx;
    OSSL_FUNC_cipher_encrypt_init_fn *einit;
    OSSL_FUNC_cipher_decrypt_init_fn *dinit;
    OSSL_FUNC_cipher_update_fn *update;
    OSSL_FUNC_cipher_final_fn *final;
    OSSL_FUNC_cipher_get_ctx_params_fn *get_params;
    OSSL_FUNC_cipher_set_ctx_params_fn *set_params;
};

static const char *const cipher_names[4] = {NULL, "AES-128-GCM", "AES-256-GCM",
                                            "ChaCha20-Poly1305"};
static EVP_CIPHER *ciphers[4]; /* held: they keep their provider loaded */
static struct aead aeads[4];
static EVP_KDF *hkdf;
static CRYPTO_ONCE fetch_once = CRYPTO_ONCE_STATIC_INIT;

/* Whether `name` is one of the colon-separated names in `names`. */
static int has_name(const char *names, const char *name)
{
    size_t n = strlen(name);
    for (const char *p = names; p != NULL && *p; p = strchr(p, ':') ? strchr(p, ':') + 1 : NULL)
        if (OPENSSL_strncasecmp(p, name, n) == 0 && (p[n] == ':' || p[n] == '\0'))
            return 1;
    return 0;
}

/* The dispatch table of the implementation EVP_CIPHER_fetch chose. */
static int find_aead(int suite)
{
    EVP_CIPHER *c = ciphers[suite] = EVP_CIPHER_fetch(NULL, cipher_names[suite], NULL);
    OSSL_PROVIDER *prov = c ? (OSSL_PROVIDER *)EVP_CIPHER_get0_provider(c) : NULL;
    if (prov == NULL)
        return 0;
    int no_cache = 0;
    const OSSL_ALGORITHM *algs = OSSL_PROVIDER_query_operation(prov, OSSL_OP_CIPHER, &no_cache);
    const OSSL_DISPATCH *fns = NULL;
    for (const OSSL_ALGORITHM *a = algs; a != NULL && a->algorithm_names != NULL; a++)
        if (has_name(a->algorithm_names, cipher_names[suite])) {
            fns = a->implementation;
            break;
        }
    struct aead *x = &aeads[suite];
    for (; fns != NULL && fns->function_id != 0; fns++) {
        switch (fns->function_id) {
        case OSSL_FUNC_CIPHER_NEWCTX:
            x->newctx = OSSL_FUNC_cipher_newctx(fns);
            break;
        case OSSL_FUNC_CIPHER_FREECTX:
            x->freectx = OSSL_FUNC_cipher_freectx(fns);
            break;
        case OSSL_FUNC_CIPHER_ENCRYPT_INIT:
            x->einit = OSSL_FUNC_cipher_encrypt_init(fns);
            break;
        case OSSL_FUNC_CIPHER_DECRYPT_INIT:
            x->dinit = OSSL_FUNC_cipher_decrypt_init(fns);
            break;
        case OSSL_FUNC_CIPHER_UPDATE:
            x->update = OSSL_FUNC_cipher_update(fns);
            break;
        case OSSL_FUNC_CIPHER_FINAL:
            x->final = OSSL_FUNC_cipher_final(fns);
            break;
        case OSSL_FUNC_CIPHER_GET_CTX_PARAMS:
            x->get_params = OSSL_FUNC_cipher_get_ctx_params(fns);
            break;
        case OSSL_FUNC_CIPHER_SET_CTX_PARAMS:
            x->set_params = OSSL_FUNC_cipher_set_ctx_params(fns);
            break;
        default:
            break;
        }
    }
    OSSL_PROVIDER_unquery_operation(prov, OSSL_OP_CIPHER, algs);
    x->provctx = OSSL_PROVIDER_get0_provider_ctx(prov);
    return x->newctx && x->freectx && x->einit && x->dinit && x->update && x->final &&
           x->get_params && x->set_params;
}

/* Fetched once, kept for the process's life like OpenSSL's own methods. */
static void fetch_all(void)
{
    for (int suite = RECORDS_AES_128_GCM; suite <= RECORDS_CHACHA20_POLY1305; suite++)
        if (!find_aead(suite))
            aeads[suite].newctx = NULL; /* unusable: records_new fails for it */
    hkdf = EVP_KDF_fetch(NULL, "HKDF", NULL);
}

static const char *suite_digest(int suite)
{
    return suite == RECORDS_AES_256_GCM ? "SHA384" : "SHA256";
}

static size_t suite_hash_len(int suite) { return suite == RECORDS_AES_256_GCM ? 48 : 32; }
static size_t suite_key_len(int suite) { return suite == RECORDS_AES_128_GCM ? 16 : 32; }

/* RFC 8446 5.5: AES-GCM keys for at most 2^24.5 full records; ChaCha20-
 * Poly1305's limit is beyond the sequence number's. */
static uint64_t suite_key_limit(int suite)
{
    return suite == RECORDS_CHACHA20_POLY1305 ? (UINT64_C(1) << 62) : (UINT64_C(1) << 24);
}

/* HKDF-Expand-Label(secret, label, "", n). */
static int expand_label(int suite, const unsigned char *secret, size_t secret_len,
                        const char *label, unsigned char *out, size_t n)
{
    unsigned char info[2 + 1 + 255 + 1];
    size_t label_len = strlen(label), i = 0;
    if (hkdf == NULL || 6 + label_len > 255)
        return 0;
    info[i++] = (unsigned char)(n >> 8);
    info[i++] = (unsigned char)n;
    info[i++] = (unsigned char)(6 + label_len);
    memcpy(info + i, "tls13 ", 6);
    memcpy(info + i + 6, label, label_len);
    i += 6 + label_len;
    info[i++] = 0; /* empty context */
    int mode = EVP_KDF_HKDF_MODE_EXPAND_ONLY;
    OSSL_PARAM params[] = {
        OSSL_PARAM_construct_int(OSSL_KDF_PARAM_MODE, &mode),
        OSSL_PARAM_construct_utf8_string(OSSL_KDF_PARAM_DIGEST, (char *)suite_digest(suite), 0),
        OSSL_PARAM_construct_octet_string(OSSL_KDF_PARAM_KEY, (void *)secret, secret_len),
        OSSL_PARAM_construct_octet_string(OSSL_KDF_PARAM_INFO, info, i),
        OSSL_PARAM_construct_end(),
    };
    EVP_KDF_CTX *k = EVP_KDF_CTX_new(hkdf);
    int ok = k != NULL && EVP_KDF_derive(k, out, n, params) > 0;
    EVP_KDF_CTX_free(k);
    return ok;
}

/* ============================================================ the layer */

struct direction {
    void *ctx; /* the provider's cipher context */
    unsigned char secret[EVP_MAX_MD_SIZE];
    unsigned char iv[IV_LEN];
    uint64_t seq;
};

struct records {
    int server, suite;
    const struct aead *aead;
    size_t hash_len;
    struct direction rd, wr;
    ring **in, **out;   /* the connection's ring fields: rings it may replace */
    size_t max_plain;
    uint64_t key_limit;
    int eof;            /* no more ciphertext will come */
    int read_status;    /* sticky once reading ended: CLOSED, EOF, ERROR */
    int dead;           /* fatal error: every call fails */
    int close_sent;
    int owe_update;     /* the peer asked for a KeyUpdate: sealed before our next record */
    int asked_update;   /* we asked the peer for one (read key limit) */
    unsigned updates_in_a_row;
    int alert_sent, alert_received;
    unsigned char *hs;  /* handshake bytes not yet a whole message */
    size_t hs_len, hs_cap;
    unsigned char *spill; /* an opened record's content with no room yet */
    size_t spill_off, spill_len;
    struct records_counters n;
    char error[200];
};

static int fatal(records *r, int alert, const char *fmt, ...);

/* Key and IV for one direction from its secret; a new key into its context. */
static int set_keys(records *r, struct direction *d, int enc)
{
    unsigned char key[32];
    size_t key_len = suite_key_len(r->suite);
    const struct aead *a = r->aead;
    int ok = expand_label(r->suite, d->secret, r->hash_len, "key", key, key_len) &&
             expand_label(r->suite, d->secret, r->hash_len, "iv", d->iv, IV_LEN);
    if (ok && d->ctx == NULL)
        ok = (d->ctx = a->newctx(a->provctx)) != NULL;
    if (ok)
        ok = (enc ? a->einit : a->dinit)(d->ctx, key, key_len, NULL, 0, NULL) == 1;
    OPENSSL_cleanse(key, sizeof key);
    d->seq = 0;
    return ok;
}

/* secret_{N+1} = HKDF-Expand-Label(secret_N, "traffic upd", "", Hash.length) */
static int next_secret(records *r, struct direction *d)
{
    unsigned char next[EVP_MAX_MD_SIZE];
    int ok = expand_label(r->suite, d->secret, r->hash_len, "traffic upd", next, r->hash_len);
    if (ok)
        memcpy(d->secret, next, r->hash_len);
    OPENSSL_cleanse(next, sizeof next);
    return ok;
}

records *records_new(int server, int suite, const unsigned char *read_secret,
                     const unsigned char *write_secret, size_t secret_len, uint64_t read_seq,
                     uint64_t write_seq, ring **in, ring **out)
{
    if (suite < RECORDS_AES_128_GCM || suite > RECORDS_CHACHA20_POLY1305 ||
        secret_len != suite_hash_len(suite) || in == NULL || out == NULL) {
        ERR_raise_data(ERR_LIB_SSL, ERR_R_PASSED_INVALID_ARGUMENT, "suite %d, secret of %zu bytes",
                       suite, secret_len);
        return NULL;
    }
    if (!CRYPTO_THREAD_run_once(&fetch_once, fetch_all) || aeads[suite].newctx == NULL ||
        hkdf == NULL)
        return NULL;
    records *r = calloc(1, sizeof *r);
    if (r == NULL)
        return NULL;
    r->server = server;
    r->suite = suite;
    r->aead = &aeads[suite];
    r->hash_len = secret_len;
    r->in = in;
    r->out = out;
    r->max_plain = MAX_PLAIN;
    r->key_limit = suite_key_limit(suite);
    r->alert_sent = r->alert_received = -1;
    memcpy(r->rd.secret, read_secret, secret_len);
    memcpy(r->wr.secret, write_secret, secret_len);
    if (!set_keys(r, &r->rd, 0) || !set_keys(r, &r->wr, 1)) {
        records_free(r);
        return NULL;
    }
    r->rd.seq = read_seq;
    r->wr.seq = write_seq;
    return r;
}

void records_free(records *r)
{
    if (r == NULL)
        return;
    if (r->rd.ctx != NULL) /* the provider clears the key schedule */
        r->aead->freectx(r->rd.ctx);
    if (r->wr.ctx != NULL)
        r->aead->freectx(r->wr.ctx);
    OPENSSL_clear_free(r->hs, r->hs_cap);
    OPENSSL_clear_free(r->spill, r->spill ? MAX_PLAIN + MAX_EXPANSION : 0);
    OPENSSL_cleanse(r, sizeof *r);
    free(r);
}

void records_trim(records *r)
{
    if (r->spill != NULL && r->spill_len == 0) {
        OPENSSL_clear_free(r->spill, MAX_PLAIN + MAX_EXPANSION);
        r->spill = NULL;
        r->spill_off = 0;
    }
    if (r->hs != NULL && r->hs_len == 0) {
        OPENSSL_clear_free(r->hs, r->hs_cap);
        r->hs = NULL;
        r->hs_cap = 0;
    }
}

void records_set_max_fragment(records *r, size_t n)
{
    r->max_plain = n < 512 ? 512 : n > MAX_PLAIN ? MAX_PLAIN : n;
}

void records_set_key_limit(records *r, uint64_t n)
{
    r->key_limit = n ? n : suite_key_limit(r->suite);
}

void records_set_eof(records *r) { r->eof = 1; }

const char *records_error(const records *r) { return r->error; }
int records_alert_sent(const records *r) { return r->alert_sent; }
int records_close_sent(const records *r) { return r->close_sent; }
int records_alert_received(const records *r) { return r->alert_received; }

void records_counters(const records *r, struct records_counters *out)
{
    *out = r->n;
    out->write_seq = r->wr.seq;
    out->read_seq = r->rd.seq;
}

/* ================================================================ spans */

/* A byte range over up to two memory spans (a ring's two halves). */
struct spans {
    struct iovec v[2];
    int n;
};

static size_t spans_len(const struct spans *s)
{
    size_t n = 0;
    for (int i = 0; i < s->n; i++)
        n += s->v[i].iov_len;
    return n;
}

/* The sub-range [off, off + len) of s (which must hold it). */
static struct spans spans_sub(const struct spans *s, size_t off, size_t len)
{
    struct spans out = {.n = 0};
    for (int i = 0; i < s->n && len > 0; i++) {
        size_t have = s->v[i].iov_len;
        if (off >= have) {
            off -= have;
            continue;
        }
        size_t take = min_sz(have - off, len);
        out.v[out.n].iov_base = (unsigned char *)s->v[i].iov_base + off;
        out.v[out.n].iov_len = take;
        out.n++;
        len -= take;
        off = 0;
    }
    return out;
}

static unsigned char *spans_at(const struct spans *s, size_t i)
{
    for (int k = 0; k < s->n; k++) {
        if (i < s->v[k].iov_len)
            return (unsigned char *)s->v[k].iov_base + i;
        i -= s->v[k].iov_len;
    }
    return NULL; /* callers stay in range */
}

/* Small fixed-size pieces (header, tag) in or out of spans, byte by byte. */
static void spans_get(const struct spans *s, size_t off, unsigned char *dst, size_t n)
{
    if (s->n > 0 && off + n <= s->v[0].iov_len) { /* the usual case: no wrap */
        const unsigned char *p = (const unsigned char *)s->v[0].iov_base + off;
        for (size_t i = 0; i < n; i++)
            dst[i] = p[i];
        return;
    }
    for (size_t i = 0; i < n; i++)
        dst[i] = *spans_at(s, off + i);
}

static void spans_put(const struct spans *s, size_t off, const unsigned char *src, size_t n)
{
    if (s->n > 0 && off + n <= s->v[0].iov_len) {
        unsigned char *p = (unsigned char *)s->v[0].iov_base + off;
        for (size_t i = 0; i < n; i++)
            p[i] = src[i];
        return;
    }
    for (size_t i = 0; i < n; i++)
        *spans_at(s, off + i) = src[i];
}

static struct spans ring_readable(ring *rg)
{
    struct spans s;
    s.n = ring_read_iov(rg, s.v);
    return s;
}

static struct spans ring_free(ring *rg)
{
    struct spans s;
    s.n = ring_write_iov(rg, s.v);
    return s;
}

/* One AEAD update from `in` to `out` (equal lengths), span by span. */
static int aead_update(const struct aead *a, void *ctx, const struct spans *in,
                       const struct spans *out)
{
    int i = 0, o = 0;
    size_t ioff = 0, ooff = 0, got;
    if (in->n == 1 && out->n == 1) { /* the usual case: one span each */
        size_t n = in->v[0].iov_len;
        return a->update(ctx, out->v[0].iov_base, &got, n, in->v[0].iov_base, n) == 1 && got == n;
    }
    while (i < in->n && o < out->n) {
        size_t n = min_sz(in->v[i].iov_len - ioff, out->v[o].iov_len - ooff);
        if (n > 0 && (a->update(ctx, (unsigned char *)out->v[o].iov_base + ooff, &got, n,
                                (const unsigned char *)in->v[i].iov_base + ioff, n) != 1 ||
                      got != n))
            return 0;
        ioff += n;
        ooff += n;
        if (ioff == in->v[i].iov_len)
            i++, ioff = 0;
        if (ooff == out->v[o].iov_len)
            o++, ooff = 0;
    }
    return 1;
}

/* The per-record nonce (RFC 8446 5.3), then the header as AAD. */
static int aead_start(const struct aead *a, struct direction *d, int enc,
                      const unsigned char hdr[HDR_LEN])
{
    unsigned char nonce[IV_LEN];
    memcpy(nonce, d->iv, IV_LEN);
    for (int i = 0; i < 8; i++)
        nonce[IV_LEN - 1 - i] ^= (unsigned char)(d->seq >> (8 * i));
    size_t got;
    return (enc ? a->einit : a->dinit)(d->ctx, NULL, 0, nonce, IV_LEN, NULL) == 1 &&
           a->update(d->ctx, NULL, &got, HDR_LEN, hdr, HDR_LEN) == 1;
}

/* The tag out of (seal) or into (open) the context. */
static int aead_tag(const struct aead *a, void *ctx, unsigned char tag[TAG_LEN], int get)
{
    OSSL_PARAM p[2] = {
        OSSL_PARAM_construct_octet_string(OSSL_CIPHER_PARAM_AEAD_TAG, tag, TAG_LEN),
        OSSL_PARAM_construct_end(),
    };
    return get ? a->get_params(ctx, p) == 1 : a->set_params(ctx, p) == 1;
}

/* ================================================================ seal */

/* Seal one record: content from `src` (len bytes), its inner type and pad
 * zero bytes, into the outgoing ring, which must have room. */
static int seal(records *r, int type, const struct spans *src, size_t len, size_t pad)
{
    size_t body = len + 1 + pad + TAG_LEN, total = HDR_LEN + body;
    struct spans dst = ring_free((*r->out));
    if (spans_len(&dst) < total)
        return 0;
    dst = spans_sub(&dst, 0, total);
    unsigned char hdr[HDR_LEN] = {CT_APPLICATION_DATA, 3, 3, (unsigned char)(body >> 8),
                                  (unsigned char)body};
    unsigned char tail[1 + 64] = {(unsigned char)type}, tag[TAG_LEN];
    spans_put(&dst, 0, hdr, HDR_LEN);
    struct direction *d = &r->wr;
    const struct aead *a = r->aead;
    if (!aead_start(a, d, 1, hdr))
        return 0;
    struct spans payload = spans_sub(&dst, HDR_LEN, len);
    if (len > 0 && !aead_update(a, d->ctx, src, &payload))
        return 0;
    /* The inner type, then the padding, in pieces of the zeros in tail. */
    size_t off = HDR_LEN + len, left = 1 + pad;
    while (left > 0) {
        size_t n = min_sz(left, sizeof tail);
        struct spans piece = {.v = {{.iov_base = tail, .iov_len = n}}, .n = 1};
        struct spans where = spans_sub(&dst, off, n);
        if (!aead_update(a, d->ctx, &piece, &where))
            return 0;
        tail[0] = 0;
        off += n;
        left -= n;
    }
    size_t got;
    if (a->final(d->ctx, tag, &got, 0) != 1 || !aead_tag(a, d->ctx, tag, 1))
        return 0;
    spans_put(&dst, off, tag, TAG_LEN);
    ring_commit((*r->out), total); /* cannot fail: it fitted */
    d->seq++;
    r->n.sealed++;
    return 1;
}

static int seal_bytes(records *r, int type, const void *data, size_t len)
{
    struct spans src = {.v = {{.iov_base = (void *)data, .iov_len = len}}, .n = len > 0};
    return seal(r, type, &src, len, 0);
}

static int send_alert(records *r, int level, int desc)
{
    unsigned char a[2] = {(unsigned char)level, (unsigned char)desc};
    return seal_bytes(r, CT_ALERT, a, 2);
}

static int fatal(records *r, int alert, const char *fmt, ...)
{
    if (r->dead)
        return RECORDS_ERROR;
    r->dead = 1;
    r->read_status = RECORDS_ERROR;
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(r->error, sizeof r->error, fmt, ap);
    va_end(ap);
    if (alert >= 0 && !r->close_sent && send_alert(r, 2, alert)) /* best effort */
        r->alert_sent = alert;
    return RECORDS_ERROR;
}

/* Our KeyUpdate: the message under the old key, then the new key. */
static int key_update(records *r, int request)
{
    unsigned char msg[5] = {HS_KEY_UPDATE, 0, 0, 1, (unsigned char)(request ? 1 : 0)};
    if (ring_writable((*r->out)) < HDR_LEN + sizeof msg + 1 + TAG_LEN)
        return RECORDS_WANT_WRITE;
    if (!seal_bytes(r, CT_HANDSHAKE, msg, sizeof msg) || !next_secret(r, &r->wr) ||
        !set_keys(r, &r->wr, 1))
        return fatal(r, AL_INTERNAL_ERROR, "KeyUpdate failed");
    r->owe_update = 0;
    r->n.key_updates_sent++;
    if (request)
        r->asked_update = 1;
    return 0;
}

int records_key_update(records *r, int request)
{
    if (r->dead)
        return RECORDS_ERROR;
    return key_update(r, request);
}

/* What is owed before the next record: the answer to the peer's request,
 * a new write key before the usage limit. */
static int before_seal(records *r)
{
    if (r->owe_update || r->wr.seq >= r->key_limit)
        return key_update(r, 0);
    return 0;
}

int records_flush(records *r)
{
    if (r->dead)
        return RECORDS_ERROR;
    return r->owe_update && !r->close_sent ? key_update(r, 0) : 0;
}

/* The next record's content length from `left` bytes, given the ring's
 * room; 0 when the room is too small to be worth a record yet. */
static size_t next_chunk(records *r, size_t left)
{
    size_t chunk = min_sz(left, r->max_plain), room = ring_writable((*r->out));
    if (room >= chunk + OVERHEAD)
        return chunk;
    /* A part, when the part is worth a record (a quarter of the ring). */
    size_t worth = min_sz(chunk, ring_cap((*r->out)) / 4);
    return room >= worth + OVERHEAD && room > OVERHEAD ? room - OVERHEAD : 0;
}

static long write_spans(records *r, const struct spans *src, size_t n)
{
    if (r->dead)
        return RECORDS_ERROR;
    if (r->close_sent)
        return fatal(r, -1, "write after shutdown: our close_notify was sent");
    size_t total = 0;
    while (total < n) {
        int s = before_seal(r);
        if (s < 0) {
            if (s == RECORDS_ERROR || total == 0)
                return s;
            break;
        }
        size_t chunk = next_chunk(r, n - total);
        if (chunk == 0)
            break;
        struct spans part = spans_sub(src, total, chunk);
        if (!seal(r, CT_APPLICATION_DATA, &part, chunk, 0))
            return fatal(r, AL_INTERNAL_ERROR, "sealing a record failed");
        total += chunk;
    }
    r->n.plain_out += total;
    return total > 0 || n == 0 ? (long)total : RECORDS_WANT_WRITE;
}

long records_write(records *r, const void *buf, size_t n)
{
    struct spans src = {.v = {{.iov_base = (void *)buf, .iov_len = n}}, .n = n > 0};
    return write_spans(r, &src, n);
}

long records_write_ring(records *r, ring *plain, size_t n)
{
    struct spans src = ring_readable(plain);
    n = min_sz(n, spans_len(&src));
    long put = write_spans(r, &src, n);
    if (put > 0)
        ring_consume(plain, (size_t)put); /* cannot fail: put <= readable */
    return put;
}

int records_seal_raw(records *r, int type, const unsigned char *data, size_t n, size_t pad)
{
    if (r->dead)
        return RECORDS_ERROR;
    if (n + 1 + pad + TAG_LEN > 0xffff)
        return RECORDS_ERROR; /* not a record: the caller's mistake, not fatal */
    if (ring_writable((*r->out)) < n + pad + OVERHEAD)
        return RECORDS_WANT_WRITE;
    struct spans src = {.v = {{.iov_base = (void *)data, .iov_len = n}}, .n = n > 0};
    if (!seal(r, type, &src, n, pad))
        return fatal(r, AL_INTERNAL_ERROR, "sealing a record failed");
    return 0;
}

/* ================================================ post-handshake messages */

static int new_session_ticket(records *r, const unsigned char *m, size_t len)
{
    /* lifetime(4) age_add(4) nonce<0..255> ticket<1..2^16-1> extensions<0..2^16-2> */
    size_t i = 8;
    if (len < i + 1 || len < i + 1 + m[i])
        return fatal(r, AL_DECODE_ERROR, "NewSessionTicket: bad nonce");
    i += 1 + m[i];
    if (len < i + 2)
        return fatal(r, AL_DECODE_ERROR, "NewSessionTicket: bad ticket");
    size_t ticket = (size_t)m[i] << 8 | m[i + 1];
    if (ticket == 0 || len < i + 2 + ticket)
        return fatal(r, AL_DECODE_ERROR, "NewSessionTicket: bad ticket");
    i += 2 + ticket;
    if (len < i + 2)
        return fatal(r, AL_DECODE_ERROR, "NewSessionTicket: bad extensions");
    size_t ext = (size_t)m[i] << 8 | m[i + 1];
    if (len != i + 2 + ext)
        return fatal(r, AL_DECODE_ERROR, "NewSessionTicket: bad length");
    r->n.tickets++; /* resumption is OpenSSL's; the direct path drops tickets */
    return 0;
}

static int peer_key_update(records *r, const unsigned char *m, size_t len, int last)
{
    if (len != 1)
        return fatal(r, AL_DECODE_ERROR, "KeyUpdate: bad length");
    if (m[0] > 1)
        return fatal(r, AL_ILLEGAL_PARAMETER, "KeyUpdate: bad request_update");
    if (!last) /* RFC 8446 5.1: aligned with a record boundary */
        return fatal(r, AL_UNEXPECTED_MESSAGE, "KeyUpdate not at the end of its record");
    /* Unasked-for updates with no data between them: a storm.  (An answer
     * to our own request is not counted.) */
    if (!r->asked_update && ++r->updates_in_a_row > KEY_UPDATE_STORM)
        return fatal(r, AL_UNEXPECTED_MESSAGE, "more than %d KeyUpdates without data",
                     KEY_UPDATE_STORM);
    if (!next_secret(r, &r->rd) || !set_keys(r, &r->rd, 0))
        return fatal(r, AL_INTERNAL_ERROR, "KeyUpdate failed");
    r->n.key_updates_received++;
    r->asked_update = 0;
    if (m[0] == 1 && !r->close_sent) {
        r->owe_update = 1; /* one answer for any number of requests */
        int s = key_update(r, 0);
        if (s == RECORDS_ERROR)
            return s; /* WANT_WRITE: answered before our next record */
    }
    return 0;
}

static int handshake_message(records *r, int type, const unsigned char *m, size_t len, int last)
{
    switch (type) {
    case HS_KEY_UPDATE:
        return peer_key_update(r, m, len, last);
    case HS_NEW_SESSION_TICKET:
        if (!r->server)
            return new_session_ticket(r, m, len);
        break;
    default:
        break;
    }
    return fatal(r, AL_UNEXPECTED_MESSAGE, "unexpected handshake message %d after the handshake",
                 type);
}

int records_handshake_input(records *r, const unsigned char *data, size_t n, int aligned)
{
    if (r->dead)
        return RECORDS_ERROR;
    if (n > MAX_HS_MSG + 4 - r->hs_len)
        return fatal(r, AL_ILLEGAL_PARAMETER, "handshake message too long");
    if (r->hs_len + n > r->hs_cap) {
        size_t cap = r->hs_cap ? r->hs_cap : 256;
        while (cap < r->hs_len + n)
            cap *= 2;
        unsigned char *hs = OPENSSL_malloc(cap);
        if (hs == NULL)
            return fatal(r, AL_INTERNAL_ERROR, "out of memory");
        if (r->hs_len > 0)
            memcpy(hs, r->hs, r->hs_len);
        OPENSSL_clear_free(r->hs, r->hs_cap);
        r->hs = hs;
        r->hs_cap = cap;
    }
    if (n > 0)
        memcpy(r->hs + r->hs_len, data, n);
    r->hs_len += n;
    size_t at = 0;
    while (r->hs_len - at >= 4) {
        const unsigned char *m = r->hs + at;
        size_t len = (size_t)m[1] << 16 | (size_t)m[2] << 8 | m[3];
        if (len > MAX_HS_MSG)
            return fatal(r, AL_ILLEGAL_PARAMETER, "handshake message too long");
        if (r->hs_len - at < 4 + len)
            break;
        at += 4 + len;
        int s = handshake_message(r, m[0], m + 4, len, aligned && at == r->hs_len);
        if (s < 0)
            return s;
    }
    if (at > 0) {
        memmove(r->hs, r->hs + at, r->hs_len - at);
        r->hs_len -= at;
    }
    return 0;
}

/* ================================================================ open */

/* An alert's name: OpenSSL 3.0's table, which predates the alerts TLS 1.3 added. */
static const char *alert_name(int desc)
{
    switch (desc) {
    case 109: return "missing extension";
    case 116: return "certificate required";
    case 120: return "no application protocol";
    default: return SSL_alert_desc_string_long(desc);
    }
}

/* The record at the head of the incoming ring: its body length, or 0 when
 * it is not all there yet; < 0 a fatal status. */
static long complete_record(records *r, const struct spans *in, unsigned char hdr[HDR_LEN])
{
    size_t have = spans_len(in);
    if (have < HDR_LEN)
        return 0;
    spans_get(in, 0, hdr, HDR_LEN);
    size_t len = (size_t)hdr[3] << 8 | hdr[4];
    if (hdr[0] != CT_APPLICATION_DATA)
        return fatal(r, AL_UNEXPECTED_MESSAGE, "unexpected record type %d", hdr[0]);
    if (hdr[1] != 3 || hdr[2] != 3)
        return fatal(r, AL_DECODE_ERROR, "bad record version %d.%d", hdr[1], hdr[2]);
    if (len > r->max_plain + MAX_EXPANSION)
        return fatal(r, AL_RECORD_OVERFLOW, "record of %zu bytes (the limit is %zu)", len,
                     r->max_plain + MAX_EXPANSION);
    if (len < 1 + TAG_LEN)
        return fatal(r, AL_BAD_RECORD_MAC, "record of %zu bytes is too short", len);
    /* RFC 8446 5.4: the inner plaintext is at most the fragment limit + 1. */
    if (len - TAG_LEN > r->max_plain + 1)
        return fatal(r, AL_RECORD_OVERFLOW, "record with %zu bytes of plaintext (the limit is %zu)",
                     len - TAG_LEN - 1, r->max_plain);
    return have >= HDR_LEN + len ? (long)len : 0;
}

/* Where an opened record's inner plaintext goes. */
static unsigned char *spill_buffer(records *r)
{
    if (r->spill == NULL)
        r->spill = OPENSSL_malloc(MAX_PLAIN + MAX_EXPANSION);
    return r->spill;
}

/* Open the record at the head of the incoming ring into dst (when it has
 * room for the inner plaintext) or the spill buffer.  Returns the
 * application bytes placed in dst (spilled ones are in r->spill_len), 0 for
 * a record of another type (handled), or a status. */
static long open_one(records *r, const struct spans *dst_free)
{
    struct spans in = ring_readable((*r->in));
    unsigned char hdr[HDR_LEN], tag[TAG_LEN];
    long body = complete_record(r, &in, hdr);
    if (body <= 0)
        return body < 0 ? body : RECORDS_WANT_READ;
    size_t inner = (size_t)body - TAG_LEN;
    struct spans dst;
    int spilled = spans_len(dst_free) < inner;
    if (spilled) {
        unsigned char *s = spill_buffer(r);
        if (s == NULL)
            return fatal(r, AL_INTERNAL_ERROR, "out of memory");
        dst = (struct spans){.v = {{.iov_base = s, .iov_len = inner}}, .n = 1};
    } else {
        dst = spans_sub(dst_free, 0, inner);
    }
    struct spans ct = spans_sub(&in, HDR_LEN, inner);
    spans_get(&in, HDR_LEN + inner, tag, TAG_LEN);
    struct direction *d = &r->rd;
    const struct aead *a = r->aead;
    size_t got;
    if (!aead_start(a, d, 0, hdr) || !aead_update(a, d->ctx, &ct, &dst) ||
        !aead_tag(a, d->ctx, tag, 0))
        return fatal(r, AL_INTERNAL_ERROR, "opening a record failed");
    if (a->final(d->ctx, tag, &got, 0) != 1) {
        ERR_clear_error();
        return fatal(r, AL_BAD_RECORD_MAC, "bad record mac");
    }
    ring_consume((*r->in), HDR_LEN + (size_t)body); /* cannot fail: it was there */
    d->seq++;
    r->n.opened++;
    /* The inner type: the last non-zero byte; zeros after it are padding. */
    size_t len = inner;
    while (len > 0 && *spans_at(&dst, len - 1) == 0)
        len--;
    if (len == 0)
        return fatal(r, AL_UNEXPECTED_MESSAGE, "a record without a content type");
    int type = *spans_at(&dst, --len);
    if (type != CT_HANDSHAKE && r->hs_len > 0)
        return fatal(r, AL_UNEXPECTED_MESSAGE, "record type %d inside a handshake message", type);
    if (type == CT_APPLICATION_DATA) {
        r->updates_in_a_row = 0;
        r->n.plain_in += len;
        if (!spilled)
            return (long)len;
        r->spill_off = 0;
        r->spill_len = len;
        return 0;
    }
    if (type == CT_HANDSHAKE) {
        if (len == 0)
            return fatal(r, AL_UNEXPECTED_MESSAGE, "an empty handshake record");
        struct spans m = spans_sub(&dst, 0, len);
        for (int i = 0; i < m.n; i++) {
            int s = records_handshake_input(r, m.v[i].iov_base, m.v[i].iov_len, i == m.n - 1);
            if (s < 0)
                return s;
        }
        return 0;
    }
    if (type == CT_ALERT) {
        if (len != 2)
            return fatal(r, AL_DECODE_ERROR, "an alert record of %zu bytes", len);
        unsigned char level = *spans_at(&dst, 0), desc = *spans_at(&dst, 1);
        if (desc == AL_CLOSE_NOTIFY) {
            r->read_status = RECORDS_CLOSED;
            snprintf(r->error, sizeof r->error, "the peer closed the TLS session");
            return RECORDS_CLOSED;
        }
        if (desc == AL_USER_CANCELED && level == 1)
            return 0; /* a close_notify should follow */
        fatal(r, -1, "the peer sent alert %d (%s)", desc, alert_name(desc));
        r->alert_received = desc;
        return RECORDS_ERROR;
    }
    return fatal(r, AL_UNEXPECTED_MESSAGE, "unexpected record type %d", type);
}

/* Move kept-back plaintext into dst: bytes moved. */
static size_t unspill(records *r, const struct spans *dst)
{
    size_t n = min_sz(r->spill_len, spans_len(dst)), done = 0;
    for (int i = 0; i < dst->n && done < n; i++) {
        size_t k = min_sz(dst->v[i].iov_len, n - done);
        memcpy(dst->v[i].iov_base, r->spill + r->spill_off + done, k);
        done += k;
    }
    if (n > 0) {
        r->n.spill_copies++;
        r->n.spill_bytes += n;
    }
    r->spill_off += n;
    r->spill_len -= n;
    return n;
}

/* The status when no record is complete. */
static long read_end(records *r)
{
    if (r->read_status)
        return r->read_status;
    /* The read key's usage limit: ask the peer for a new one (once). */
    if (r->rd.seq >= r->key_limit && !r->asked_update && !r->close_sent) {
        int s = key_update(r, 1);
        if (s == RECORDS_ERROR)
            return s;
    }
    if (!r->eof)
        return RECORDS_WANT_READ;
    r->read_status = RECORDS_EOF;
    if (ring_empty((*r->in))) {
        snprintf(r->error, sizeof r->error, "the transport ended without close_notify");
    } else { /* as OpenSSL: decode_error for a record cut short */
        snprintf(r->error, sizeof r->error,
                 "the transport ended without close_notify, inside a record");
        if (!r->close_sent && send_alert(r, 2, AL_DECODE_ERROR))
            r->alert_sent = AL_DECODE_ERROR;
        r->dead = 1; /* a fatal alert ends the connection both ways */
    }
    return RECORDS_EOF;
}

/* Open records into the free space dst_of() gives, until none is complete
 * or there is no room.  Returns application bytes placed, or a status. */
static long read_spans(records *r, ring *plain, void *buf, size_t n)
{
    if (r->dead)
        return RECORDS_ERROR;
    long total = 0;
    for (;;) {
        struct spans dst;
        if (plain != NULL)
            dst = ring_free(plain);
        else
            dst = (struct spans){.v = {{.iov_base = (unsigned char *)buf + total,
                                        .iov_len = n - (size_t)total}},
                                 .n = n > (size_t)total};
        if (r->spill_len > 0) {
            size_t moved = unspill(r, &dst);
            if (plain != NULL)
                ring_commit(plain, moved);
            total += (long)moved;
            if (r->spill_len > 0)
                return total;
            continue;
        }
        if (spans_len(&dst) == 0)
            return total;
        if (r->read_status)
            return total > 0 ? total : r->read_status;
        long got = open_one(r, &dst);
        if (got > 0) {
            if (plain != NULL)
                ring_commit(plain, (size_t)got);
            total += got;
            continue;
        }
        if (got == 0)
            continue; /* another type of record, or spilled */
        if (got == RECORDS_WANT_READ)
            got = read_end(r);
        if (got == RECORDS_ERROR)
            return RECORDS_ERROR; /* nothing of a failed stream is delivered after it */
        return total > 0 ? total : got;
    }
}

long records_read_ring(records *r, ring *plain) { return read_spans(r, plain, NULL, 0); }

long records_read(records *r, void *buf, size_t n) { return read_spans(r, NULL, buf, n); }

int records_has_pending(const records *r)
{
    if (r->spill_len > 0)
        return 1;
    if (*r->in == NULL) /* the owner gave the ring back: nothing in it */
        return 0;
    struct spans in = ring_readable((*r->in));
    if (spans_len(&in) < HDR_LEN)
        return 0;
    size_t len = (size_t)*spans_at(&in, 3) << 8 | *spans_at(&in, 4);
    return spans_len(&in) >= HDR_LEN + len;
}

int records_close(records *r)
{
    if (r->dead)
        return RECORDS_ERROR;
    if (!r->close_sent) {
        if (ring_writable((*r->out)) < HDR_LEN + 2 + 1 + TAG_LEN)
            return RECORDS_WANT_WRITE;
        if (!send_alert(r, 1, AL_CLOSE_NOTIFY))
            return fatal(r, AL_INTERNAL_ERROR, "sealing close_notify failed");
        r->close_sent = 1;
        /* As SSL_shutdown: the call that sends ours reports only a close_notify
         * already read; looking for the peer's is the next calls' work (so the
         * answer does not depend on how fast the peer replies). */
        return r->read_status == RECORDS_CLOSED;
    }
    /* Read up to the peer's close_notify, dropping what comes before it. */
    for (int i = 0; i < 64 && !r->read_status; i++) {
        struct spans none = {.n = 0};
        long got = open_one(r, &none);
        r->spill_len = 0;
        if (got == RECORDS_WANT_READ)
            got = read_end(r);
        if (got == RECORDS_WANT_READ)
            return 0;
        if (got < 0 && got != RECORDS_CLOSED)
            return (int)got;
    }
    return r->read_status == RECORDS_CLOSED ? 1 : r->read_status ? r->read_status : 0;
}

/* ============================================================ hand-over */

struct records_tap {
    unsigned char rd_secret[EVP_MAX_MD_SIZE], wr_secret[EVP_MAX_MD_SIZE];
    size_t rd_len, wr_len;
    /* Records OpenSSL handled with the application keys, from their
     * installation (the keylog line) on: headers written and read, and
     * records read whose inner content type it reported (decrypted). */
    uint64_t wr_headers, rd_headers, rd_opened;
};

static int tap_index = -1;
static CRYPTO_ONCE tap_once = CRYPTO_ONCE_STATIC_INIT;

static void tap_index_init(void)
{
    tap_index = SSL_get_ex_new_index(0, "wsstls records tap", NULL, NULL, NULL);
}

static int hex_value(int ch)
{
    if (ch >= '0' && ch <= '9')
        return ch - '0';
    if (ch >= 'a' && ch <= 'f')
        return ch - 'a' + 10;
    if (ch >= 'A' && ch <= 'F')
        return ch - 'A' + 10;
    return -1;
}

/* "LABEL <client random hex> <secret hex>" into out: its length, 0 if bad. */
static size_t parse_secret(const char *line, unsigned char *out, size_t cap)
{
    const char *p = strchr(line, ' ');
    p = p ? strchr(p + 1, ' ') : NULL;
    if (p == NULL)
        return 0;
    p++;
    size_t n = 0;
    for (; p[0] && p[1] && n < cap; p += 2) {
        int hi = hex_value(p[0]), lo = hex_value(p[1]);
        if (hi < 0 || lo < 0)
            return 0;
        out[n++] = (unsigned char)(hi << 4 | lo);
    }
    return *p == '\0' ? n : 0;
}

static void keylog(const SSL *ssl, const char *line)
{
    records_tap *t = tap_index >= 0 ? SSL_get_ex_data(ssl, tap_index) : NULL;
    if (t == NULL)
        return;
    static const char client[] = "CLIENT_TRAFFIC_SECRET_0 ", server[] = "SERVER_TRAFFIC_SECRET_0 ";
    int is_client = strncmp(line, client, sizeof client - 1) == 0;
    if (!is_client && strncmp(line, server, sizeof server - 1) != 0)
        return;
    int mine = is_client != SSL_is_server(ssl); /* this end's write secret */
    if (mine) {
        t->wr_len = parse_secret(line, t->wr_secret, sizeof t->wr_secret);
        t->wr_headers = 0;
    } else {
        t->rd_len = parse_secret(line, t->rd_secret, sizeof t->rd_secret);
        t->rd_headers = t->rd_opened = 0;
    }
}

static void count_records(int write_p, int version, int content_type, const void *buf,
                          size_t len, SSL *ssl, void *arg)
{
    (void)version, (void)buf, (void)len, (void)ssl;
    records_tap *t = arg;
    if (content_type == SSL3_RT_HEADER) {
        if (write_p && t->wr_len)
            t->wr_headers++;
        else if (!write_p && t->rd_len)
            t->rd_headers++;
    } else if (content_type == SSL3_RT_INNER_CONTENT_TYPE && !write_p && t->rd_len) {
        t->rd_opened++;
    }
}

int records_ctx_enable(SSL_CTX *ctx)
{
    SSL_CTX_set_keylog_callback(ctx, keylog);
    return 1;
}

int records_ctx_enabled(const SSL_CTX *ctx) { return SSL_CTX_get_keylog_callback(ctx) == keylog; }

records_tap *records_tap_new(SSL *ssl)
{
    if (!CRYPTO_THREAD_run_once(&tap_once, tap_index_init) || tap_index < 0)
        return NULL;
    records_tap *t = OPENSSL_zalloc(sizeof *t);
    if (t == NULL)
        return NULL;
    if (!SSL_set_ex_data(ssl, tap_index, t)) {
        OPENSSL_free(t);
        return NULL;
    }
    SSL_set_msg_callback(ssl, count_records);
    SSL_set_msg_callback_arg(ssl, t);
    return t;
}

void records_tap_free(records_tap *t, SSL *ssl)
{
    if (t == NULL)
        return;
    if (ssl != NULL && tap_index >= 0 && SSL_get_ex_data(ssl, tap_index) == t) {
        SSL_set_ex_data(ssl, tap_index, NULL);
        SSL_set_msg_callback(ssl, NULL);
        SSL_set_msg_callback_arg(ssl, NULL);
    }
    OPENSSL_clear_free(t, sizeof *t);
}

static int suite_of(const SSL *ssl)
{
    const SSL_CIPHER *c = SSL_get_current_cipher(ssl);
    switch (c ? SSL_CIPHER_get_protocol_id(c) : 0) {
    case 0x1301:
        return RECORDS_AES_128_GCM;
    case 0x1302:
        return RECORDS_AES_256_GCM;
    case 0x1303:
        return RECORDS_CHACHA20_POLY1305;
    default:
        return 0;
    }
}

records *records_take_over(records_tap *t, SSL *ssl, ring **in, ring **out, char *why,
                           size_t why_len)
{
    records *r = NULL;
    int suite = suite_of(ssl);
    const char *reason = NULL;
    if (!SSL_is_init_finished(ssl))
        reason = "the handshake is not finished";
    else if (SSL_version(ssl) != TLS1_3_VERSION)
        reason = "not TLS 1.3";
    else if (suite == 0)
        reason = "a cipher suite the direct path does not seal";
    else if (SSL_get_early_data_status(ssl) == SSL_EARLY_DATA_ACCEPTED)
        reason = "early data was accepted";
    else if (SSL_pending(ssl) > 0 || SSL_has_pending(ssl))
        reason = "OpenSSL holds unread data";
    else if (t == NULL || t->rd_len != suite_hash_len(suite) || t->wr_len != suite_hash_len(suite))
        reason = "the traffic secrets were not seen";
    else if (t->rd_headers != t->rd_opened)
        reason = "OpenSSL holds part of a record";
    if (reason == NULL) {
        r = records_new(SSL_is_server(ssl), suite, t->rd_secret, t->wr_secret, t->rd_len,
                        t->rd_headers, t->wr_headers, in, out);
        if (r == NULL)
            reason = "the record layer could not be set up";
    }
    if (r != NULL) {
        SSL_SESSION *s = SSL_get_session(ssl);
        uint8_t mfl = s ? SSL_SESSION_get_max_fragment_length(s) : 0;
        if (mfl >= TLSEXT_max_fragment_length_512 && mfl <= TLSEXT_max_fragment_length_4096)
            records_set_max_fragment(r, (size_t)256 << mfl);
    }
    if (why != NULL && why_len > 0)
        snprintf(why, why_len, "%s", reason ? reason : "");
    records_tap_free(t, ssl);
    return r;
}
