/*
 * tls.c - TLS contexts and connections (see tls.h).
 *
 * A connection is its SSL object plus two tables of operations (tlsconn.h):
 * a transport (ring, mem, pair, fd: how ciphertext reaches the SSL object)
 * and a record layer (OpenSSL's SSL_read/SSL_write).  The compound calls at
 * the end of this file are written once, against the tables.
 *
 * Every OpenSSL call's result is checked; failures leave their reason in
 * OpenSSL's error queue (contexts) or in the connection's error message.
 * The thread's error queue is cleared before each SSL I/O call, as
 * SSL_get_error requires.
 */
#define _GNU_SOURCE
#include "tls.h"

#include <arpa/inet.h>
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>

#include <openssl/err.h>
#include <openssl/pem.h>
#include <openssl/rand.h>
#include <openssl/x509v3.h>

#include "asyncjob.h"
#include "cryptopool.h"
#include "pipecipher.h"
#include "ringbio.h"
#include "tlsconn.h"

#define SCRATCH_SIZE (64 * 1024) /* MEM/PAIR pump buffer: one recv/send each */

static size_t min_sz(size_t a, size_t b) { return a < b ? a : b; }

/* ============================================================== contexts */

/* Per-context data OpenSSL frees with the context: the server's ALPN list. */
static int alpn_index = -1;
static CRYPTO_ONCE alpn_once = CRYPTO_ONCE_STATIC_INIT;

static void alpn_free(void *parent, void *ptr, CRYPTO_EX_DATA *ad, int idx, long argl, void *argp)
{
    (void)parent, (void)ad, (void)idx, (void)argl, (void)argp;
    free(ptr);
}

static void alpn_index_init(void)
{
    alpn_index = SSL_CTX_get_ex_new_index(0, NULL, NULL, NULL, alpn_free);
}

struct alpn_list {
    size_t len;
    unsigned char wire[];
};

SSL_CTX *tls_ctx_new(int server)
{
    SSL_CTX *ctx = SSL_CTX_new(server ? TLS_server_method() : TLS_client_method());
    if (ctx == NULL)
        return NULL;
    if (!SSL_CTX_set_min_proto_version(ctx, TLS1_2_VERSION)) {
        SSL_CTX_free(ctx);
        return NULL;
    }
    SSL_CTX_set_options(ctx, SSL_OP_NO_COMPRESSION | SSL_OP_NO_RENEGOTIATION);
    /* Partial writes: a full outgoing ring makes SSL_write return what it
     * took.  Moving buffer: the retry may come from another address (a ring
     * view), as long as the bytes are the same. */
    SSL_CTX_set_mode(ctx, SSL_MODE_ENABLE_PARTIAL_WRITE | SSL_MODE_ACCEPT_MOVING_WRITE_BUFFER);
    return ctx;
}

void tls_ctx_free(SSL_CTX *ctx) { SSL_CTX_free(ctx); }

/* Never ask on the terminal for a passphrase (OpenSSL's default callback
 * does): an encrypted key fails to load instead. */
static int no_passphrase(char *buf, int size, int rwflag, void *u)
{
    (void)buf, (void)size, (void)rwflag, (void)u;
    return -1;
}

int tls_ctx_use_pem(SSL_CTX *ctx, const char *chain, size_t chain_len, const char *key,
                    size_t key_len)
{
    if (chain_len > INT32_MAX || key_len > INT32_MAX)
        return TLS_PEM_FAILED;
    int ok = TLS_PEM_FAILED;
    X509 *leaf = NULL, *extra = NULL;
    EVP_PKEY *pkey = NULL;
    BIO *cb = BIO_new_mem_buf(chain, (int)chain_len);
    BIO *kb = BIO_new_mem_buf(key, (int)key_len);
    if (cb == NULL || kb == NULL)
        goto out;
    ok = TLS_PEM_BAD_CHAIN;
    if ((leaf = PEM_read_bio_X509_AUX(cb, NULL, no_passphrase, NULL)) == NULL)
        goto out;
    ok = TLS_PEM_FAILED;
    if (SSL_CTX_use_certificate(ctx, leaf) != 1 || !SSL_CTX_clear_chain_certs(ctx))
        goto out;
    while ((extra = PEM_read_bio_X509(cb, NULL, no_passphrase, NULL)) != NULL) {
        if (!SSL_CTX_add0_chain_cert(ctx, extra)) /* takes ownership on success */
            goto out;
        extra = NULL;
    }
    /* The loop ends on "no start line" at the end of the data: not an error. */
    unsigned long err = ERR_peek_last_error();
    if (ERR_GET_LIB(err) == ERR_LIB_PEM && ERR_GET_REASON(err) == PEM_R_NO_START_LINE)
        ERR_clear_error();
    else if (err != 0) {
        ok = TLS_PEM_BAD_CHAIN;
        goto out;
    }
    ok = TLS_PEM_BAD_KEY;
    if ((pkey = PEM_read_bio_PrivateKey(kb, NULL, no_passphrase, NULL)) == NULL)
        goto out;
    ok = TLS_PEM_KEY_MISMATCH;
    if (SSL_CTX_use_PrivateKey(ctx, pkey) == 1 && SSL_CTX_check_private_key(ctx) == 1)
        ok = TLS_PEM_OK;
out:
    X509_free(extra);
    X509_free(leaf);
    EVP_PKEY_free(pkey);
    BIO_free(cb);
    BIO_free(kb);
    return ok;
}

static int add_ca_pem(SSL_CTX *ctx, const char *pem, size_t len)
{
    if (len > INT32_MAX)
        return 0;
    BIO *b = BIO_new_mem_buf(pem, (int)len);
    if (b == NULL)
        return 0;
    X509_STORE *store = SSL_CTX_get_cert_store(ctx);
    int added = 0, ok = 1;
    X509 *x;
    while (ok && (x = PEM_read_bio_X509(b, NULL, NULL, NULL)) != NULL) {
        ok = X509_STORE_add_cert(store, x) == 1;
        X509_free(x);
        added += ok;
    }
    unsigned long err = ERR_peek_last_error();
    if (ok && added > 0 && ERR_GET_LIB(err) == ERR_LIB_PEM &&
        ERR_GET_REASON(err) == PEM_R_NO_START_LINE)
        ERR_clear_error();
    else
        ok = 0;
    BIO_free(b);
    return ok;
}

int tls_ctx_set_verify(SSL_CTX *ctx, int verify, const char *cafile, const char *ca_pem,
                       size_t ca_len)
{
    int server = SSL_CTX_get_ssl_method(ctx) == TLS_server_method();
    int mode = SSL_VERIFY_NONE;
    if (verify)
        mode = SSL_VERIFY_PEER | (server ? SSL_VERIFY_FAIL_IF_NO_PEER_CERT : 0);
    SSL_CTX_set_verify(ctx, mode, NULL);
    if (!verify)
        return 1;
    if (cafile != NULL && SSL_CTX_load_verify_file(ctx, cafile) != 1)
        return 0;
    if (ca_pem != NULL && !add_ca_pem(ctx, ca_pem, ca_len))
        return 0;
    if (cafile == NULL && ca_pem == NULL && SSL_CTX_set_default_verify_paths(ctx) != 1)
        return 0;
    return 1;
}

int tls_ctx_set_versions(SSL_CTX *ctx, int min_version, int max_version)
{
    return SSL_CTX_set_min_proto_version(ctx, min_version) &&
           SSL_CTX_set_max_proto_version(ctx, max_version);
}

static int alpn_select(SSL *ssl, const unsigned char **out, unsigned char *outlen,
                       const unsigned char *in, unsigned int inlen, void *arg)
{
    (void)arg;
    const struct alpn_list *mine = SSL_CTX_get_ex_data(SSL_get_SSL_CTX(ssl), alpn_index);
    if (mine == NULL)
        return SSL_TLSEXT_ERR_NOACK;
    unsigned char *chosen;
    /* Our preference order first; no overlap means no ALPN, as CPython's
     * ssl module does, rather than a fatal alert. */
    if (SSL_select_next_proto(&chosen, outlen, mine->wire, (unsigned int)mine->len, in, inlen) !=
        OPENSSL_NPN_NEGOTIATED)
        return SSL_TLSEXT_ERR_NOACK;
    *out = chosen;
    return SSL_TLSEXT_ERR_OK;
}

int tls_ctx_set_alpn(SSL_CTX *ctx, const unsigned char *wire, size_t len)
{
    if (len == 0 || len > 65535)
        return 0;
    if (SSL_CTX_get_ssl_method(ctx) != TLS_server_method())
        return SSL_CTX_set_alpn_protos(ctx, wire, (unsigned int)len) == 0; /* 0 = success */
    if (!CRYPTO_THREAD_run_once(&alpn_once, alpn_index_init) || alpn_index < 0)
        return 0;
    struct alpn_list *list = malloc(sizeof *list + len);
    if (list == NULL)
        return 0;
    list->len = len;
    memcpy(list->wire, wire, len);
    free(SSL_CTX_get_ex_data(ctx, alpn_index));
    if (!SSL_CTX_set_ex_data(ctx, alpn_index, list)) {
        free(list);
        return 0;
    }
    SSL_CTX_set_alpn_select_cb(ctx, alpn_select, NULL);
    return 1;
}

/* Per-context crypto settings, freed (and the pool reference dropped) with
 * the context. */
struct crypto_cfg {
    int crypto;
    size_t async_threshold;
};

static int crypto_index = -1;
static CRYPTO_ONCE crypto_once = CRYPTO_ONCE_STATIC_INIT;

static void crypto_free(void *parent, void *ptr, CRYPTO_EX_DATA *ad, int idx, long argl,
                        void *argp)
{
    (void)parent, (void)ad, (void)idx, (void)argl, (void)argp;
    if (ptr != NULL)
        cpool_release();
    free(ptr);
}

static void crypto_index_init(void)
{
    crypto_index = SSL_CTX_get_ex_new_index(0, NULL, NULL, NULL, crypto_free);
}

static const struct crypto_cfg *crypto_of(SSL_CTX *ctx)
{
    return crypto_index < 0 ? NULL : SSL_CTX_get_ex_data(ctx, crypto_index);
}

SSL_CTX *tls_ctx_new_crypto(int server, int crypto, int threads, size_t async_threshold)
{
    if (crypto == 0)
        return tls_ctx_new(server);
    if ((crypto & ~(TLS_CRYPTO_PIPELINE | TLS_CRYPTO_ASYNC)) != 0 ||
        !CRYPTO_THREAD_run_once(&crypto_once, crypto_index_init) || crypto_index < 0) {
        ERR_raise_data(ERR_LIB_SSL, ERR_R_PASSED_INVALID_ARGUMENT, "crypto flags %d", crypto);
        return NULL;
    }
    if ((crypto & TLS_CRYPTO_ASYNC) && !async_provider_init()) {
        ERR_raise_data(ERR_LIB_SSL, ERR_R_INIT_FAIL, "the wsstls-async provider");
        return NULL;
    }
    const SSL_METHOD *meth = server ? TLS_server_method() : TLS_client_method();
    const char *propq = (crypto & TLS_CRYPTO_ASYNC) ? ASYNC_PROPQ : NULL;
    SSL_CTX *ctx = (crypto & TLS_CRYPTO_PIPELINE) ? pipecipher_ssl_ctx_new(NULL, propq, meth)
                                                  : SSL_CTX_new_ex(NULL, propq, meth);
    if (ctx == NULL)
        return NULL;
    struct crypto_cfg *cfg = calloc(1, sizeof *cfg);
    int err = cfg == NULL ? ENOMEM : -cpool_acquire(threads);
    if (err != 0) {
        free(cfg);
        SSL_CTX_free(ctx);
        ERR_raise_data(ERR_LIB_SSL, ERR_R_INIT_FAIL, "crypto pool: %s", strerror(err));
        return NULL;
    }
    cfg->crypto = crypto;
    cfg->async_threshold = async_threshold;
    if (!SSL_CTX_set_ex_data(ctx, crypto_index, cfg)) { /* (the pool reference with it) */
        cpool_release();
        free(cfg);
        SSL_CTX_free(ctx);
        return NULL;
    }
    if (!SSL_CTX_set_min_proto_version(ctx, TLS1_2_VERSION)) {
        SSL_CTX_free(ctx);
        return NULL;
    }
    SSL_CTX_set_options(ctx, SSL_OP_NO_COMPRESSION | SSL_OP_NO_RENEGOTIATION);
    SSL_CTX_set_mode(ctx, SSL_MODE_ENABLE_PARTIAL_WRITE | SSL_MODE_ACCEPT_MOVING_WRITE_BUFFER |
                              ((crypto & TLS_CRYPTO_ASYNC) ? SSL_MODE_ASYNC : 0));
    return ctx;
}

int tls_ctx_set_records(SSL_CTX *ctx, size_t pipelines, size_t split, size_t max_fragment,
                        size_t read_buffer)
{
    if (pipelines > SSL_MAX_PIPELINES || (max_fragment && (max_fragment < 512 ||
        max_fragment > SSL3_RT_MAX_PLAIN_LENGTH)) || (split && max_fragment && split > max_fragment))
        return 0;
    if (max_fragment && !SSL_CTX_set_max_send_fragment(ctx, (long)max_fragment))
        return 0;
    if (split && !SSL_CTX_set_split_send_fragment(ctx, (long)split))
        return 0;
    if (pipelines && !SSL_CTX_set_max_pipelines(ctx, (long)pipelines)) /* (1..32) */
        return 0;
    if (read_buffer)
        SSL_CTX_set_default_read_buffer_len(ctx, read_buffer);
    return 1;
}

void tls_crypto_counters(struct tls_crypto_counters *out)
{
    struct pipe_counters p;
    struct async_counters a;
    struct cpool_counters k;
    pipecipher_counters(&p);
    async_global_counters(&a);
    cpool_counters(&k);
    memset(out, 0, sizeof *out);
    out->cipher_calls = p.calls;
    out->cipher_records = p.records;
    out->cipher_max_records = p.max_records;
    for (int i = 0; i < PIPE_HIST; i++)
        out->records_hist[i] = p.hist[i];
    out->parallel_calls = p.parallel_calls;
    out->async_cipher_calls = p.async_calls;
    out->pauses = a.pauses;
    out->resumes = a.resumes;
    out->inline_ops = a.inline_ops;
    out->offloaded = a.offloaded;
    out->want_async = a.want_async;
    out->job_calls = a.job_calls;
    out->direct_calls = a.direct_calls;
    out->pool_threads = k.threads;
    out->dispatches = k.dispatches;
    out->worker_tasks = k.tasks;
    out->caller_tasks = k.caller_tasks;
    out->worker_ns = k.worker_ns;
    out->wait_ns = k.wait_ns;
}

void tls_crypto_reset_counters(void)
{
    pipecipher_reset_counters();
    async_reset_global_counters();
    cpool_reset_counters();
}

int tls_ctx_set_ciphers(SSL_CTX *ctx, const char *tls12, const char *tls13)
{
    return (tls12 == NULL || SSL_CTX_set_cipher_list(ctx, tls12) == 1) &&
           (tls13 == NULL || SSL_CTX_set_ciphersuites(ctx, tls13) == 1);
}

int tls_ctx_set_record_path(SSL_CTX *ctx, int direct)
{
    if (direct)
        return records_ctx_enable(ctx);
    if (records_ctx_enabled(ctx))
        SSL_CTX_set_keylog_callback(ctx, NULL);
    return 1;
}

int tls_ctx_set_num_tickets(SSL_CTX *ctx, size_t n) { return SSL_CTX_set_num_tickets(ctx, n); }

/* ------------------------------------------------------- self-signed cert */

static int is_ip(const char *name)
{
    unsigned char addr[16];
    return inet_pton(AF_INET, name, addr) == 1 || inet_pton(AF_INET6, name, addr) == 1;
}

static int add_ext(X509 *x, int nid, const char *value)
{
    X509V3_CTX v3;
    X509V3_set_ctx(&v3, x, x, NULL, NULL, 0);
    X509_EXTENSION *ext = X509V3_EXT_conf_nid(NULL, &v3, nid, value);
    if (ext == NULL)
        return 0;
    int ok = X509_add_ext(x, ext, -1);
    X509_EXTENSION_free(ext);
    return ok;
}

/* The memory BIO's contents as a NUL-terminated OPENSSL_malloc'd string. */
static int take_pem(BIO *b, char **out, size_t *len)
{
    char *data;
    long n = BIO_get_mem_data(b, &data);
    if (n <= 0 || (*out = OPENSSL_malloc((size_t)n + 1)) == NULL)
        return 0;
    memcpy(*out, data, (size_t)n);
    (*out)[n] = '\0';
    *len = (size_t)n;
    return 1;
}

int tls_self_signed(const char *name, int bits, int days, char **cert_pem, size_t *cert_len,
                    char **key_pem, size_t *key_len)
{
    int ok = 0;
    X509 *x = NULL;
    BIO *cb = NULL, *kb = NULL;
    *cert_pem = *key_pem = NULL;
    char san[300];
    if (strlen(name) > 255)
        return 0;
    snprintf(san, sizeof san, "%s:%s", is_ip(name) ? "IP" : "DNS", name);

    EVP_PKEY *pkey = EVP_RSA_gen((unsigned int)bits);
    uint64_t serial;
    if (pkey == NULL || (x = X509_new()) == NULL || RAND_bytes((void *)&serial, sizeof serial) != 1)
        goto out;
    X509_NAME *subject = X509_get_subject_name(x);
    if (!X509_set_version(x, X509_VERSION_3) ||
        !ASN1_INTEGER_set_int64(X509_get_serialNumber(x), (int64_t)(serial >> 1)) ||
        X509_gmtime_adj(X509_getm_notBefore(x), -3600) == NULL ||
        X509_gmtime_adj(X509_getm_notAfter(x), (long)days * 86400) == NULL ||
        !X509_set_pubkey(x, pkey) ||
        !X509_NAME_add_entry_by_txt(subject, "CN", MBSTRING_UTF8, (const unsigned char *)name,
                                    -1, -1, 0) ||
        !X509_set_issuer_name(x, subject) ||
        !add_ext(x, NID_basic_constraints, "critical,CA:FALSE") ||
        !add_ext(x, NID_key_usage, "critical,digitalSignature,keyEncipherment") ||
        !add_ext(x, NID_ext_key_usage, "serverAuth,clientAuth") ||
        !add_ext(x, NID_subject_key_identifier, "hash") ||
        !add_ext(x, NID_subject_alt_name, san) || X509_sign(x, pkey, EVP_sha256()) == 0)
        goto out;
    if ((cb = BIO_new(BIO_s_mem())) == NULL || (kb = BIO_new(BIO_s_mem())) == NULL ||
        !PEM_write_bio_X509(cb, x) ||
        !PEM_write_bio_PrivateKey(kb, pkey, NULL, NULL, 0, NULL, NULL) ||
        !take_pem(cb, cert_pem, cert_len) || !take_pem(kb, key_pem, key_len))
        goto out;
    ok = 1;
out:
    if (!ok) {
        OPENSSL_free(*cert_pem);
        OPENSSL_clear_free(*key_pem, *key_pem ? *key_len : 0);
        *cert_pem = *key_pem = NULL;
    }
    BIO_free(cb);
    BIO_free(kb);
    X509_free(x);
    EVP_PKEY_free(pkey);
    return ok;
}

void tls_free(void *p) { OPENSSL_free(p); }

static size_t error_queue(char *buf, size_t len, size_t used)
{
    unsigned long e;
    const char *file, *data;
    int line, flags;
    while ((e = ERR_get_error_all(&file, &line, NULL, &data, &flags)) != 0) {
        if (used >= len)
            continue; /* drain the rest */
        const char *reason = ERR_reason_error_string(e);
        char code[32];
        if (ERR_SYSTEM_ERROR(e))
            reason = strerror(ERR_GET_REASON(e)); /* errno: "error 2" says nothing */
        if (reason == NULL) {
            snprintf(code, sizeof code, "error %d", ERR_GET_REASON(e));
            reason = code;
        }
        int n = snprintf(buf + used, len - used, "%s%s%s%s", used ? "; " : "", reason,
                         (flags & ERR_TXT_STRING) && *data ? ": " : "",
                         (flags & ERR_TXT_STRING) ? data : "");
        used = n < 0 ? used : min_sz(len - 1, used + (size_t)n);
    }
    return used;
}

size_t tls_last_error(char *buf, size_t len)
{
    if (len == 0)
        return 0;
    buf[0] = '\0';
    return error_queue(buf, len, 0);
}

/* =========================================================== connections */

/* SSL_get_error needs the thread's error queue empty before each SSL I/O
 * call.  Clearing it walks every slot (3k instructions per 64 B round trip,
 * measured): our calls drain it on every failure, so it is almost always
 * empty already and a peek settles it. */
static inline void clear_errors(tls_conn *c)
{
    /* Within one compound call the queue stays empty after the first check:
     * successful calls add nothing and ssl_status drains what a failed one
     * left.  c->queue_checked is reset at each entry from the caller, whose
     * other code (on this thread) may have left errors in between. */
    if (c->queue_checked)
        return;
    if (ERR_peek_error() != 0)
        ERR_clear_error();
    c->queue_checked = 1;
}

int tls_conn_fail(tls_conn *c, int status, const char *what)
{
    /* The first failure explains the connection's end; later ones follow
     * from it (say, sending the alert to a peer that has gone). */
    int first = c->read_status == 0 || c->read_status == TLS_CLOSED;
    if (status == TLS_ERROR)
        c->dead = 1;
    if (first && (status == TLS_ERROR || status == TLS_CLOSED || status == TLS_EOF))
        c->read_status = status;
    if (what != NULL && first)
        snprintf(c->error, sizeof c->error, "%s", what);
    return status;
}

static long fail_errno(tls_conn *c, int err)
{
    c->sys_errno = err;
    return tls_conn_fail(c, TLS_ERROR, strerror(err));
}

/* The transport read the end of the peer's stream and handed it to the SSL
 * object: 1 the first time, so that the caller's retry reports it now rather
 * than at a next call that no socket event may ever prompt; 0 after that. */
static long eof_in(tls_conn *c)
{
    if (c->pumped_eof)
        return 0;
    c->pumped_eof = 1;
    return 1;
}

static size_t no_bytes(const tls_conn *c)
{
    (void)c;
    return 0;
}

static void nothing(tls_conn *c) { (void)c; }

static int never(const tls_conn *c)
{
    (void)c;
    return 0;
}

static int can_always(tls_conn *c)
{
    (void)c;
    return 1;
}

static size_t held(const ring *r) { return r != NULL ? ring_len(r) : 0; }

/* Free a ring (parking), keeping its copy counts for the ledger. */
static void drop_ring(tls_conn *c, ring **r)
{
    if (*r == NULL)
        return;
    uint64_t s[2];
    ring_stats(*r, s);
    c->parked_ring_copies += s[0];
    c->parked_ring_bytes += s[1];
    ring_destroy(*r);
    *r = NULL;
}

/* The counters kept in the tls_conn (FD, MEM, PAIR): the kernel's half. */
static void own_kernel_counters(const tls_conn *c, struct tls_ledger *out)
{
    out->rx_syscalls = counter_get(&c->rx_syscalls);
    out->rx_bytes = counter_get(&c->rx_bytes);
    out->tx_syscalls = counter_get(&c->tx_syscalls);
    out->tx_bytes = counter_get(&c->tx_bytes);
    out->eagain = counter_get(&c->eagain);
}

static void reset_own_kernel_counters(tls_conn *c)
{
    counter *all[] = {&c->rx_syscalls, &c->rx_bytes, &c->tx_syscalls, &c->tx_bytes, &c->eagain};
    for (size_t i = 0; i < sizeof all / sizeof all[0]; i++)
        counter_zero(all[i]);
}

static int ring_flags(const tls_conn *c)
{
    return (c->flags & TLS_MIRRORED_RINGS) ? RING_MIRRORED : 0;
}

/* ------------------------------------------------ transport: TLS_RING */

/* The ring BIO (ringbio.h): with a socket it reads and writes it itself,
 * the rings holding only the overflow; via_ring, caller I/O and sans-IO
 * move every byte through the rings. */

/* With a socket both ways (direct I/O) the rings are only overflow, made when
 * first needed (RINGBIO_LAZY); otherwise every byte goes through them. */
static int ring_lazy(const tls_conn *c)
{
    return c->fd >= 0 && !(c->flags & (TLS_RING_VIA_RING | TLS_CALLER_IO));
}

static int ring_attach(tls_conn *c, size_t ring_capacity)
{
    if (!ring_lazy(c) && ((c->rx = ring_create(ring_capacity, ring_flags(c))) == NULL ||
                          (c->tx = ring_create(ring_capacity, ring_flags(c))) == NULL))
        return 0;
    int bio_flags = ring_lazy(c) ? RINGBIO_READ_FD | RINGBIO_WRITE_FD | RINGBIO_LAZY : 0;
    c->ringbio = ringbio_new(&c->rx, &c->tx, ring_capacity, ring_flags(c), c->fd, bio_flags);
    if (c->ringbio == NULL)
        return 0;
    SSL_set_bio(c->ssl, c->ringbio, c->ringbio); /* one reference, taken */
    c->pumped = c->fd >= 0 && (c->flags & TLS_RING_VIA_RING) && !(c->flags & TLS_CALLER_IO);
    return 1;
}

/* via_ring: one readv into the incoming ring. */
static long ring_pump_in(tls_conn *c)
{
    ssize_t got = ringbio_fill(c->ringbio);
    if (got > 0)
        return got;
    if (got == 0)
        return eof_in(c); /* the BIO reports it once rx is drained */
    if (got == -EAGAIN || got == -ENOBUFS)
        return 0;
    return fail_errno(c, (int)-got);
}

/* What the socket refused, in order, from the outgoing ring. */
static long ring_pump_out(tls_conn *c)
{
    long sent = 0;
    while (held(c->tx) > 0) {
        ssize_t put = ringbio_flush(c->ringbio);
        if (put == -EAGAIN)
            return sent ? sent : TLS_WANT_WRITE;
        if (put < 0)
            return fail_errno(c, (int)-put);
        sent += put;
    }
    return sent;
}

static long ring_fill(tls_conn *c)
{
    if (c->fd < 0)
        return 0;
    ssize_t got = ringbio_fill(c->ringbio);
    if (got > 0)
        return got;
    if (got == -ENOBUFS)
        return 0;
    if (got == -EAGAIN)
        return TLS_WANT_READ;
    if (got == 0)
        return TLS_EOF; /* the BIO reports it to OpenSSL once rx is drained */
    /* The errno is kept by the BIO (atomically): a worker may be writing
     * this connection's own error fields right now. */
    return TLS_ERROR;
}

static size_t ring_feed(tls_conn *c, const void *data, size_t n)
{
    return c->rx != NULL ? ring_write(c->rx, data, n) : 0;
}
static void ring_feed_eof(tls_conn *c) { ringbio_set_eof(c->ringbio); }
static size_t ring_take(tls_conn *c, void *buf, size_t n)
{
    return c->tx != NULL ? ring_read(c->tx, buf, n) : 0;
}
static size_t ring_pending_in(const tls_conn *c) { return held(c->rx); }
static size_t ring_pending_out(const tls_conn *c) { return held(c->tx); }
static void ring_new_batch(tls_conn *c) { ringbio_new_batch(c->ringbio); }

static int ring_drained(const tls_conn *c)
{
    return !c->pumped && ringbio_idle(c->ringbio); /* pumped: the pump may find more */
}

static int ring_last_errno(const tls_conn *c) { return ringbio_last_errno(c->ringbio); }

static int ring_peek_in(tls_conn *c, struct iovec iov[2])
{
    /* A socket read straight into OpenSSL's buffer could not be seen first:
     * read it into rx (the readv that read would have made, once per batch;
     * a failure is kept for OpenSSL's read to report). */
    if (ring_lazy(c))
        ringbio_read_batch(c->ringbio);
    /* OpenSSL is given whole records from rx only: rx must hold the largest. */
    if (c->rx == NULL || ring_cap(c->rx) < SSL3_RT_MAX_PACKET_SIZE)
        return -1;
    return ring_read_iov(c->rx, iov);
}

static void ring_limit_in(tls_conn *c, size_t n) { ringbio_limit_read(c->ringbio, n); }

static void ring_kernel(const tls_conn *c, struct tls_ledger *out)
{
    struct ringbio_counters k;
    ringbio_counters(c->ringbio, &k);
    out->rx_syscalls = k.rx_syscalls;
    out->rx_bytes = k.rx_bytes;
    out->rx_direct = k.rx_direct;
    out->tx_syscalls = k.tx_syscalls;
    out->tx_bytes = k.tx_bytes;
    out->tx_direct = k.tx_direct;
    out->eagain = k.eagain;
}

static void ring_reset_kernel(tls_conn *c) { ringbio_reset_counters(c->ringbio); }

static void ring_park(tls_conn *c)
{
    drop_ring(c, &c->rx); /* the BIO sees them go: it reads them through c */
    drop_ring(c, &c->tx);
}

static int ring_unpark(tls_conn *c)
{
    if (ring_lazy(c))
        return 1; /* the BIO makes them again when it needs them */
    if ((c->rx = ring_create(c->ring_capacity, ring_flags(c))) == NULL ||
        (c->tx = ring_create(c->ring_capacity, ring_flags(c))) == NULL) {
        drop_ring(c, &c->rx);
        return 0;
    }
    return 1;
}

static const struct tls_transport_ops ring_transport = {
    .name = "ring",
    .attach = ring_attach,
    .detach = nothing,
    .pump_in = ring_pump_in,
    .pump_out = ring_pump_out,
    .fill = ring_fill,
    .feed = ring_feed,
    .feed_eof = ring_feed_eof,
    .take = ring_take,
    .pending_in = ring_pending_in,
    .pending_out = ring_pending_out,
    .new_batch = ring_new_batch,
    .drained = ring_drained,
    .peek_in = ring_peek_in,
    .limit_in = ring_limit_in,
    .last_errno = ring_last_errno,
    .kernel = ring_kernel,
    .reset_kernel = ring_reset_kernel,
    .park = ring_park,
    .unpark = ring_unpark,
};

/* ------------------------------------ transports: TLS_MEM and TLS_PAIR */

/* OpenSSL's own BIOs, as an event loop around them uses them: with a
 * socket, the compound calls pump through a scratch buffer (recv,
 * BIO_write; BIO_read, send), what send() refuses waiting in c->tx. */

static int bio_attach_common(tls_conn *c, size_t ring_capacity)
{
    if ((c->tx = ring_create(ring_capacity, ring_flags(c))) == NULL)
        return 0;
    if (c->fd >= 0 && (c->scratch = malloc(SCRATCH_SIZE)) == NULL)
        return 0;
    c->pumped = c->fd >= 0 && !(c->flags & TLS_CALLER_IO);
    return 1;
}

static int mem_attach(tls_conn *c, size_t ring_capacity)
{
    BIO *in = BIO_new(BIO_s_mem()), *out = BIO_new(BIO_s_mem());
    if (in == NULL || out == NULL) {
        BIO_free(in);
        BIO_free(out);
        return 0;
    }
    BIO_set_mem_eof_return(in, -1); /* empty means "retry", not EOF */
    SSL_set_bio(c->ssl, in, out);
    c->net_in = in;
    c->net_out = out;
    return bio_attach_common(c, ring_capacity);
}

static int pair_attach(tls_conn *c, size_t ring_capacity)
{
    BIO *inner, *outer;
    if (!BIO_new_bio_pair(&inner, ring_capacity, &outer, ring_capacity))
        return 0;
    SSL_set_bio(c->ssl, inner, inner);
    c->net_in = c->net_out = outer;
    return bio_attach_common(c, ring_capacity);
}

static void pair_detach(tls_conn *c) { BIO_free(c->net_in); } /* our end */

static void bio_park(tls_conn *c)
{
    drop_ring(c, &c->tx);
    free(c->scratch);
    c->scratch = NULL;
}

static int bio_unpark(tls_conn *c)
{
    if ((c->tx = ring_create(c->ring_capacity, ring_flags(c))) == NULL)
        return 0;
    return c->fd < 0 || (c->scratch = malloc(SCRATCH_SIZE)) != NULL;
}

/* Up to n ciphertext bytes into the network-side BIO (one copy). */
static size_t bio_feed(tls_conn *c, const void *data, size_t n)
{
    if (n == 0)
        return 0;
    int put = BIO_write(c->net_in, data, (int)min_sz(n, INT32_MAX));
    if (put <= 0)
        return 0;
    counter_add(&c->bio_copies, 1);
    counter_add(&c->bio_bytes, (uint64_t)put);
    return (size_t)put;
}

static size_t mem_feed(tls_conn *c, const void *data, size_t n) { return bio_feed(c, data, n); }

static size_t pair_feed(tls_conn *c, const void *data, size_t n)
{
    return bio_feed(c, data, min_sz(n, BIO_ctrl_get_write_guarantee(c->net_in)));
}

static void mem_feed_eof(tls_conn *c) { BIO_set_mem_eof_return(c->net_in, 0); }
static void pair_feed_eof(tls_conn *c) { BIO_shutdown_wr(c->net_in); }

/* One recv of up to `room` bytes into the network-side BIO. */
static long bio_pump_in(tls_conn *c, size_t room)
{
    if (room == 0)
        return 0;
    ssize_t got;
    do
        got = recv(c->fd, c->scratch, room, 0);
    while (got < 0 && errno == EINTR);
    counter_add(&c->rx_syscalls, 1);
    if (got < 0) {
        if (errno == EAGAIN || errno == EWOULDBLOCK) {
            counter_add(&c->eagain, 1);
            return 0;
        }
        return fail_errno(c, errno);
    }
    if (got == 0) { /* let the SSL object see the end of the stream */
        c->io->feed_eof(c);
        return eof_in(c);
    }
    counter_add(&c->rx_bytes, (uint64_t)got);
    if (bio_feed(c, c->scratch, (size_t)got) != (size_t)got)
        return tls_conn_fail(c, TLS_ERROR, "BIO_write into the network BIO failed");
    return got;
}

static long mem_pump_in(tls_conn *c) { return bio_pump_in(c, SCRATCH_SIZE); }

static long pair_pump_in(tls_conn *c)
{
    return bio_pump_in(c, min_sz(SCRATCH_SIZE, BIO_ctrl_get_write_guarantee(c->net_in)));
}

static size_t bio_pending_out(const tls_conn *c)
{
    return held(c->tx) + (size_t)BIO_ctrl_pending(c->net_out);
}

/* Send what the SSL object wrote: first what send() refused before (c->tx),
 * then from the BIO, taking no more than tx could absorb if send() refuses
 * again. */
static long bio_pump_out(tls_conn *c)
{
    long sent = 0;
    if (!ring_empty(c->tx)) {
        ssize_t put = ring_write_fd(c->tx, c->fd);
        counter_add(&c->tx_syscalls, 1);
        if (put == -EAGAIN)
            counter_add(&c->eagain, 1);
        else if (put < 0)
            return fail_errno(c, (int)-put);
        else {
            counter_add(&c->tx_bytes, (uint64_t)put);
            sent += put;
        }
        if (!ring_empty(c->tx))
            return sent ? sent : TLS_WANT_WRITE;
    }
    for (;;) {
        size_t want = min_sz(min_sz(SCRATCH_SIZE, (size_t)BIO_ctrl_pending(c->net_out)),
                             ring_writable(c->tx));
        if (want == 0)
            break;
        int n = BIO_read(c->net_out, c->scratch, (int)want);
        if (n <= 0)
            break;
        counter_add(&c->bio_copies, 1);
        counter_add(&c->bio_bytes, (uint64_t)n);
        ssize_t put;
        do
            put = send(c->fd, c->scratch, (size_t)n, MSG_NOSIGNAL);
        while (put < 0 && errno == EINTR);
        counter_add(&c->tx_syscalls, 1);
        if (put < 0) {
            if (errno != EAGAIN && errno != EWOULDBLOCK)
                return fail_errno(c, errno);
            counter_add(&c->eagain, 1);
            put = 0;
        }
        counter_add(&c->tx_bytes, (uint64_t)put);
        sent += put;
        if (put < n) { /* the rest fits: want was bounded by ring_writable */
            ring_write(c->tx, c->scratch + put, (size_t)(n - put));
            return sent ? sent : TLS_WANT_WRITE;
        }
    }
    return sent;
}

static long no_fill(tls_conn *c)
{
    (void)c;
    return 0;
}

static size_t bio_take(tls_conn *c, void *buf, size_t n)
{
    size_t got = c->tx != NULL ? ring_read(c->tx, buf, n) : 0; /* send() leftovers first */
    if (got == n)
        return got;
    int more = BIO_read(c->net_out, (char *)buf + got, (int)min_sz(n - got, INT32_MAX));
    if (more > 0) {
        counter_add(&c->bio_copies, 1);
        counter_add(&c->bio_bytes, (uint64_t)more);
        got += (size_t)more;
    }
    return got;
}

static size_t mem_pending_in(const tls_conn *c) { return (size_t)BIO_ctrl_pending(c->net_in); }

static size_t pair_pending_in(const tls_conn *c)
{
    return (size_t)BIO_ctrl_pending(SSL_get_rbio(c->ssl)); /* what our end wrote */
}

static int own_errno(const tls_conn *c) { return c->sys_errno; }

static int mem_peek_in(tls_conn *c, struct iovec iov[2])
{
    char *p;
    long n = BIO_get_mem_data(c->net_in, &p);
    iov[0] = (struct iovec){.iov_base = p, .iov_len = n > 0 ? (size_t)n : 0};
    return 1;
}

static const struct tls_transport_ops mem_transport = {
    .name = "mem",
    .attach = mem_attach,
    .detach = nothing,
    .pump_in = mem_pump_in,
    .pump_out = bio_pump_out,
    .fill = no_fill,
    .feed = mem_feed,
    .feed_eof = mem_feed_eof,
    .take = bio_take,
    .pending_in = mem_pending_in,
    .pending_out = bio_pending_out,
    .new_batch = nothing,
    .drained = never,
    .peek_in = mem_peek_in,
    .last_errno = own_errno,
    .kernel = own_kernel_counters,
    .reset_kernel = reset_own_kernel_counters,
    .park = bio_park,
    .unpark = bio_unpark,
    .no_direct = "the direct path needs the ring transport",
};

static const struct tls_transport_ops pair_transport = {
    .name = "pair",
    .attach = pair_attach,
    .detach = pair_detach,
    .pump_in = pair_pump_in,
    .pump_out = bio_pump_out,
    .fill = no_fill,
    .feed = pair_feed,
    .feed_eof = pair_feed_eof,
    .take = bio_take,
    .pending_in = pair_pending_in,
    .pending_out = bio_pending_out,
    .new_batch = nothing,
    .drained = never,
    .last_errno = own_errno,
    .kernel = own_kernel_counters,
    .reset_kernel = reset_own_kernel_counters,
    .park = bio_park,
    .unpark = bio_unpark,
    .no_direct = "the direct path needs the ring transport",
};

/* --------------------------------------------------- transport: TLS_FD */

/* SSL_set_fd: OpenSSL reads and writes the socket itself; the socket BIO's
 * callback counts its system calls.  No sans-IO. */

static long fd_callback(BIO *b, int oper, const char *argp, size_t len, int argi, long argl,
                        int ret, size_t *processed)
{
    (void)argp, (void)len, (void)argi, (void)argl;
    tls_conn *c = (tls_conn *)BIO_get_callback_arg(b);
    int read = oper == (BIO_CB_READ | BIO_CB_RETURN);
    if (c == NULL || (!read && oper != (BIO_CB_WRITE | BIO_CB_RETURN)))
        return ret;
    int err = errno; /* the socket call's, right before this callback */
    counter_add(read ? &c->rx_syscalls : &c->tx_syscalls, 1);
    if (ret > 0 && processed != NULL)
        counter_add(read ? &c->rx_bytes : &c->tx_bytes, *processed);
    else if (BIO_should_retry(b))
        counter_add(&c->eagain, 1);
    else
        c->fd_errno = ret < 0 ? err : 0; /* 0: the end of the stream */
    errno = err;
    return ret;
}

static int fd_attach(tls_conn *c, size_t ring_capacity)
{
    (void)ring_capacity;
    if (c->fd < 0) {
        ERR_raise_data(ERR_LIB_SSL, ERR_R_PASSED_INVALID_ARGUMENT, "the fd transport needs a socket");
        return 0;
    }
    if (!SSL_set_fd(c->ssl, c->fd))
        return 0;
    BIO *sock = SSL_get_rbio(c->ssl); /* the same BIO reads and writes */
    BIO_set_callback_arg(sock, (char *)c);
    BIO_set_callback_ex(sock, fd_callback);
    c->pumped = 0;
    return 1;
}

static long fd_pump(tls_conn *c)
{
    (void)c;
    return 0;
}

static size_t fd_feed(tls_conn *c, const void *data, size_t n)
{
    (void)c, (void)data, (void)n;
    return 0;
}

static size_t fd_take(tls_conn *c, void *buf, size_t n)
{
    (void)c, (void)buf, (void)n;
    return 0; /* OpenSSL sends its records itself */
}

static int fd_last_errno(const tls_conn *c) { return c->fd_errno; }

static void fd_kernel(const tls_conn *c, struct tls_ledger *out)
{
    own_kernel_counters(c, out);
    out->rx_direct = out->rx_bytes; /* OpenSSL's buffers are the only ones */
    out->tx_direct = out->tx_bytes;
}

static const struct tls_transport_ops fd_transport = {
    .name = "fd",
    .attach = fd_attach,
    .detach = nothing,
    .pump_in = fd_pump,
    .pump_out = fd_pump,
    .fill = no_fill,
    .feed = fd_feed,
    .feed_eof = nothing,
    .take = fd_take,
    .pending_in = no_bytes,
    .pending_out = no_bytes,
    .new_batch = nothing,
    .drained = never,
    .last_errno = fd_last_errno,
    .kernel = fd_kernel,
    .reset_kernel = reset_own_kernel_counters,
    .park = nothing,
    .unpark = can_always,
    .no_direct = "the direct path needs the ring transport",
};

/* ------------------------------------------- records: OpenSSL's own */

/* An SSL call's failure as a status, with the reason in c->error. */
static int ssl_status(tls_conn *c, int ret)
{
    switch (SSL_get_error(c->ssl, ret)) {
    case SSL_ERROR_WANT_READ:
        return TLS_WANT_READ;
    case SSL_ERROR_WANT_WRITE:
        return TLS_WANT_WRITE;
    case SSL_ERROR_WANT_ASYNC:
        if (c->async != NULL)
            async_conn_want(c->async);
        return TLS_WANT_ASYNC;
    case SSL_ERROR_ZERO_RETURN:
        /* SSL_OP_IGNORE_UNEXPECTED_EOF makes a bare end of the stream look
         * like close_notify, and keeps the session usable for writing what
         * is owed to the peer (the echoes of what it sent before its end);
         * the alert callback tells the two apart. */
        if (c->peer_closed)
            return tls_conn_fail(c, TLS_CLOSED, "the peer closed the TLS session");
        return tls_conn_fail(c, TLS_EOF, "the transport ended without close_notify");
    case SSL_ERROR_SYSCALL: {
        int err = c->io->last_errno(c);
        if (ERR_peek_error() == 0 && err == 0)
            return tls_conn_fail(c, TLS_EOF, "the transport ended without close_notify");
        c->sys_errno = err;
        size_t n = (size_t)snprintf(c->error, sizeof c->error, "%s", err ? strerror(err) : "");
        error_queue(c->error, sizeof c->error, n);
        return tls_conn_fail(c, TLS_ERROR, NULL);
    }
    case SSL_ERROR_SSL: {
        unsigned long e = ERR_peek_error();
        if (ERR_GET_LIB(e) == ERR_LIB_SSL && ERR_GET_REASON(e) == SSL_R_UNEXPECTED_EOF_WHILE_READING) {
            ERR_clear_error();
            return tls_conn_fail(c, TLS_EOF, "the transport ended without close_notify");
        }
        size_t n = error_queue(c->error, sizeof c->error, 0);
        long v = SSL_get_verify_result(c->ssl);
        if (v != X509_V_OK && n < sizeof c->error)
            snprintf(c->error + n, sizeof c->error - n, " (%s)", X509_verify_cert_error_string(v));
        return tls_conn_fail(c, TLS_ERROR, NULL);
    }
    default:
        error_queue(c->error, sizeof c->error, 0);
        return tls_conn_fail(c, TLS_ERROR, NULL);
    }
}

static long ossl_read(tls_conn *c, void *buf, size_t n)
{
    size_t got;
    clear_errors(c);
    if (SSL_read_ex(c->ssl, buf, n, &got))
        return (long)got;
    return ssl_status(c, 0);
}

static long ossl_write(tls_conn *c, const void *buf, size_t n)
{
    size_t put;
    clear_errors(c);
    if (SSL_write_ex(c->ssl, buf, n, &put))
        return (long)put;
    return ssl_status(c, 0);
}

static int ossl_pending(const tls_conn *c)
{
    return SSL_pending(c->ssl) > 0 || SSL_has_pending(c->ssl);
}

static int ossl_shutdown(tls_conn *c)
{
    clear_errors(c);
    int r = SSL_shutdown(c->ssl);
    return r >= 0 ? r : ssl_status(c, r);
}

/* A read straight into each contiguous span of the ring's free space. */
static long read_ring_by(tls_conn *c, ring *plain, long (*read)(tls_conn *, void *, size_t))
{
    long total = 0;
    for (;;) {
        size_t room;
        void *p = ring_reserve(plain, &room);
        if (room == 0)
            return total;
        long got = read(c, p, room);
        if (got <= 0)
            return total > 0 ? total : got;
        ring_commit(plain, (size_t)got);
        total += got;
        counter_add(&c->reads, 1);
        /* Nothing buffered anywhere: another read would only find that out
         * (a call and an error-queue round trip per message). */
        if (c->io->drained(c) && !ossl_pending(c))
            return total;
    }
}

static long ossl_read_ring(tls_conn *c, ring *plain) { return read_ring_by(c, plain, ossl_read); }

static int ossl_key_update(tls_conn *c, int request)
{
    clear_errors(c);
    if (SSL_key_update(c->ssl, request ? SSL_KEY_UPDATE_REQUESTED : SSL_KEY_UPDATE_NOT_REQUESTED) != 1)
        return ssl_status(c, 0);
    int r = SSL_do_handshake(c->ssl); /* writes the message now */
    return r == 1 ? 0 : ssl_status(c, r);
}

static const struct tls_record_ops openssl_records = {
    .name = "openssl",
    .read = ossl_read,
    .read_ring = ossl_read_ring,
    .write = ossl_write,
    .pending = ossl_pending,
    .shutdown = ossl_shutdown,
    .handshake_done = nothing,
    .key_update = ossl_key_update,
};

/* ------------------------------------ records: direct (records.h) */

/* After the handshake wsstls seals and opens TLS 1.3 records itself, in the
 * ring transport's rings; OpenSSL's SSL object keeps the session (version,
 * cipher, peer certificate) and sees no more records.  With a socket of its
 * own (not pumped, not caller I/O) the layer reads the socket into rx once
 * per batch and sends what it sealed at once, as the ring BIO does for
 * OpenSSL. */

static int direct_status(tls_conn *c, long status)
{
    switch (status) {
    case RECORDS_WANT_READ:
        return TLS_WANT_READ;
    case RECORDS_WANT_WRITE:
        return TLS_WANT_WRITE;
    case RECORDS_CLOSED:
        return tls_conn_fail(c, TLS_CLOSED, records_error(c->direct));
    case RECORDS_EOF:
        return tls_conn_fail(c, TLS_EOF, records_error(c->direct));
    default:
        return tls_conn_fail(c, TLS_ERROR, records_error(c->direct));
    }
}

/* The rings the direct layer works in: the ring transport may have none
 * yet (lazy, with a socket both ways) or have given them back (parked).
 * 0, or TLS_ERROR. */
static int direct_rings(tls_conn *c)
{
    if ((c->rx == NULL && (c->rx = ring_create(c->ring_capacity, ring_flags(c))) == NULL) ||
        (c->tx == NULL && (c->tx = ring_create(c->ring_capacity, ring_flags(c))) == NULL))
        return tls_conn_fail(c, TLS_ERROR, "out of memory for the connection's rings");
    return 0;
}

static int direct_own_io(const tls_conn *c)
{
    return c->fd >= 0 && !c->pumped && !(c->flags & TLS_CALLER_IO);
}

/* More ciphertext for a read that found no whole record: 1 when there may
 * be some now (or the end of the stream became known), else a status. */
static long direct_more(tls_conn *c)
{
    if (ringbio_eof_seen(c->ringbio)) { /* fed, pumped, read by the loop or by us */
        records_set_eof(c->direct);
        return 1;
    }
    if (!direct_own_io(c))
        return TLS_WANT_READ; /* the caller or the pump brings more */
    ssize_t got = ringbio_read_batch(c->ringbio);
    if (got >= 0)
        return 1; /* bytes, or the end of the stream (seen on the retry) */
    if (got == -EAGAIN || got == -ENOBUFS)
        return TLS_WANT_READ;
    return fail_errno(c, (int)-got);
}

/* Open into plain (or buf); when no whole record is there, fetch more and
 * retry (three tries: the read, the EOF, the status). */
static long direct_open(tls_conn *c, ring *plain, void *buf, size_t n)
{
    if (direct_rings(c) < 0)
        return TLS_ERROR;
    for (int tries = 0;; tries++) {
        long got = plain != NULL ? records_read_ring(c->direct, plain)
                                 : records_read(c->direct, buf, n);
        if (got > 0 && plain != NULL)
            counter_add(&c->reads, 1);
        if (got != RECORDS_WANT_READ || tries == 2)
            return got >= 0 ? got : direct_status(c, got);
        long more = direct_more(c);
        if (more < 0)
            return more;
    }
}

static long direct_read(tls_conn *c, void *buf, size_t n) { return direct_open(c, NULL, buf, n); }
static long direct_read_ring(tls_conn *c, ring *plain) { return direct_open(c, plain, NULL, 0); }

static long direct_write(tls_conn *c, const void *buf, size_t n)
{
    if (direct_rings(c) < 0)
        return TLS_ERROR;
    long put = records_write(c->direct, buf, n);
    if (put < 0 && put != RECORDS_WANT_WRITE)
        return direct_status(c, put);
    /* What was sealed goes out now; what the socket refuses stays in tx. */
    if (direct_own_io(c) && !ring_empty(c->tx)) {
        long sent = c->io->pump_out(c);
        if (sent == TLS_ERROR)
            return TLS_ERROR;
    }
    return put == RECORDS_WANT_WRITE ? TLS_WANT_WRITE : put;
}

static int direct_pending(const tls_conn *c)
{
    return !c->parked && records_has_pending(c->direct); /* parked: nothing held */
}

static int direct_shutdown(tls_conn *c)
{
    if (direct_rings(c) < 0)
        return TLS_ERROR;
    /* The call that sends our close_notify does not wait for the peer's (as
     * SSL_shutdown); the later ones read what the socket has for it. */
    int sent_before = records_close_sent(c->direct);
    for (int tries = 0;; tries++) {
        int r = records_close(c->direct);
        if (r >= 0 && direct_own_io(c) && !ring_empty(c->tx) && c->io->pump_out(c) == TLS_ERROR)
            return TLS_ERROR;
        if (r == 0 && sent_before && tries < 2 && direct_more(c) == 1)
            continue;
        if (r == RECORDS_CLOSED)
            return 1;
        return r >= 0 ? r : direct_status(c, r);
    }
}

static int direct_key_update(tls_conn *c, int request)
{
    if (direct_rings(c) < 0)
        return TLS_ERROR;
    int r = records_key_update(c->direct, request);
    if (r < 0)
        return direct_status(c, r);
    if (direct_own_io(c) && c->io->pump_out(c) == TLS_ERROR)
        return TLS_ERROR;
    return 0;
}

static const struct tls_record_ops direct_records = {
    .name = "direct",
    .read = direct_read,
    .read_ring = direct_read_ring,
    .write = direct_write,
    .pending = direct_pending,
    .shutdown = direct_shutdown,
    .handshake_done = nothing,
    .key_update = direct_key_update,
};

/* Before the hand-over: OpenSSL's records for the handshake, and at its
 * end the direct layer takes over, or the connection stays on OpenSSL's
 * (c->records_why says why).  A read, write or shutdown before the
 * handshake is done drives the handshake first (never SSL_read, which
 * could leave OpenSSL holding application records). */
static void hand_over(tls_conn *c)
{
    c->direct = records_take_over(c->tap, c->ssl, &c->rx, &c->tx, c->records_why,
                                  sizeof c->records_why);
    c->tap = NULL; /* freed by records_take_over */
    c->rec = c->direct != NULL ? &direct_records : &openssl_records;
    if (c->direct == NULL && (c->flags & TLS_READ_AHEAD))
        SSL_set_read_ahead(c->ssl, 1);
}

static int handover_handshake(tls_conn *c)
{
    clear_errors(c);
    int r = SSL_do_handshake(c->ssl);
    if (r != 1)
        return ssl_status(c, r);
    hand_over(c);
    return 0;
}

static long handover_read(tls_conn *c, void *buf, size_t n)
{
    int s = handover_handshake(c);
    return s < 0 ? s : c->rec->read(c, buf, n);
}

static long handover_read_ring(tls_conn *c, ring *plain)
{
    int s = handover_handshake(c);
    return s < 0 ? s : c->rec->read_ring(c, plain);
}

static long handover_write(tls_conn *c, const void *buf, size_t n)
{
    int s = handover_handshake(c);
    return s < 0 ? s : c->rec->write(c, buf, n);
}

static int handover_shutdown(tls_conn *c)
{
    if (!SSL_is_init_finished(c->ssl))
        return ossl_shutdown(c); /* what OpenSSL says of a shutdown in the handshake */
    hand_over(c);
    return c->rec->shutdown(c);
}

static int handover_key_update(tls_conn *c, int request)
{
    int s = handover_handshake(c);
    return s < 0 ? s : c->rec->key_update(c, request);
}

static const struct tls_record_ops handover_records = {
    .name = "handover",
    .read = handover_read,
    .read_ring = handover_read_ring,
    .write = handover_write,
    .pending = ossl_pending,
    .shutdown = handover_shutdown,
    .handshake_done = hand_over,
    .key_update = handover_key_update,
};

/* ------------------------------------ records: OpenSSL's, in ASYNC jobs */

/* SSL_MODE_ASYNC on or off for the next call: only while nothing is paused
 * (a paused job is resumed by the next call that runs in job mode). */
static void use_jobs(tls_conn *c, int on)
{
    if (c->jobs_on == on)
        return;
    if (on)
        SSL_set_mode(c->ssl, SSL_MODE_ASYNC);
    else
        SSL_clear_mode(c->ssl, SSL_MODE_ASYNC);
    c->jobs_on = on;
}

static int ossl_key_update(tls_conn *c, int request);

/* Run one SSL call with the connection's async state current (the ciphers
 * find it there), and keep what paused. */
static long in_job(tls_conn *c, int op, void *buf, size_t n, long (*call)(tls_conn *, void *, size_t))
{
    /* The paused call again before its work is done (say, a write that made
     * progress and paused again, retried at once by its caller): not yet. */
    if (c->paused == op && !async_conn_ready(c->async))
        return TLS_WANT_ASYNC;
    use_jobs(c, 1);
    async_enter(c->async);
    long r = call(c, buf, n);
    async_leave();
    async_conn_call(c->async, 1);
    if (r == TLS_WANT_ASYNC) {
        c->paused = op;
        c->paused_buf = buf;
        c->paused_len = n;
        return r;
    }
    c->paused = TLS_OP_NONE;
    if (c->key_update_due) { /* asked for while this call was paused: now */
        int request = c->key_update_due == 2;
        c->key_update_due = 0;
        use_jobs(c, 0);
        ossl_key_update(c, request); /* (a failure is sticky: the next call sees it) */
    }
    return r;
}

/* The same call out of any job: nothing it seals or opens reaches the
 * threshold, so running it in a job would only cost the job. */
static long out_of_job(tls_conn *c, void *buf, size_t n, long (*call)(tls_conn *, void *, size_t))
{
    use_jobs(c, 0);
    long r = call(c, buf, n); /* (no async_enter: the cipher goes straight to its work) */
    async_conn_call(c->async, 0);
    return r;
}

/* The bytes one cipher call is given for a record of `len` bytes (TLS 1.2:
 * explicit nonce and tag besides; TLS 1.3: the content type), at most. */
#define RECORD_SLACK 24

/* Can this write meet a cipher call of at least the threshold?  Its records
 * carry at most n bytes each (a pipelined batch, up to job_pipes of them). */
static int write_may_offload(const tls_conn *c, size_t n)
{
    size_t most = n + RECORD_SLACK;
    if (c->job_pipes > 1) /* a batch: n bytes in up to job_pipes records */
        most = n + (size_t)c->job_pipes * RECORD_SLACK;
    return most >= async_conn_threshold(c->async);
}

/* Byte `at` of the spans (at < their total). */
static unsigned char span_byte(const struct iovec *iov, int n, size_t at)
{
    for (int i = 0; i < n; i++) {
        if (at < iov[i].iov_len)
            return ((const unsigned char *)iov[i].iov_base)[at];
        at -= iov[i].iov_len;
    }
    return 0;
}

enum gate {
    GATE_JOB,   /* the read may meet a record of the threshold: in a job */
    GATE_COPY,  /* opened plaintext is waiting: the read only copies it */
    GATE_LIMIT, /* whole small records, *limit bytes of them: out of a job */
    GATE_OPEN,  /* out of a job, OpenSSL reading on (nothing whole to limit it to) */
};

/* Can this read meet a cipher call of at least the threshold?  Not when
 * the record headers at the front of the incoming ciphertext all announce
 * shorter records and OpenSSL can take no other bytes.
 *
 * The ring transport hands OpenSSL whole records seen here only (*limit at
 * the end of the last one, up to 64; 0 while none is whole), so what
 * OpenSSL holds afterwards was seen, and small (held_small).  Where it
 * cannot (mem), a read opens one record, more when the first carry no data
 * (handshake messages, alerts): the first two decide, and with read-ahead
 * every header up to 64. */
static enum gate read_gate(tls_conn *c, size_t *limit)
{
    if (SSL_has_pending(c->ssl)) {
        if (SSL_pending(c->ssl) > 0)
            return GATE_COPY;
        if (!c->held_small)
            return GATE_JOB; /* OpenSSL holds ciphertext not seen here */
    }
    struct iovec iov[2];
    int spans = c->io->peek_in != NULL ? c->io->peek_in(c, iov) : -1;
    if (spans < 0)
        return GATE_JOB;
    size_t total = 0;
    for (int i = 0; i < spans; i++)
        total += iov[i].iov_len;
    size_t threshold = async_conn_threshold(c->async);
    int limited = c->io->limit_in != NULL;
    int pipes = c->job_pipes, most = limited || c->read_ahead ? 64 : 2, seen = 1;
    size_t window[SSL_MAX_PIPELINES], sum = 0; /* the last `pipes` records' lengths */
    size_t at = 0;
    for (int k = 0; at < total; k++) {
        if (k == most || total - at < SSL3_RT_HEADER_LENGTH) {
            seen = 0; /* more than we look at, or a header cut short */
            break;
        }
        size_t len = (size_t)span_byte(iov, spans, at + 3) << 8 | span_byte(iov, spans, at + 4);
        sum = sum - (k >= pipes ? window[k % pipes] : 0) + len;
        window[k % pipes] = len;
        if (sum >= threshold)
            return GATE_JOB;
        if (total - at - SSL3_RT_HEADER_LENGTH < len)
            break; /* the last record, not all here yet (its header seen) */
        at += SSL3_RT_HEADER_LENGTH + len;
    }
    if (limited) { /* (none at all: OpenSSL reads nothing, the caller waits) */
        *limit = at;
        return GATE_LIMIT;
    }
    /* OpenSSL may read on from the transport, beyond what was seen. */
    return seen ? GATE_OPEN : GATE_JOB;
}

static long call_read(tls_conn *c, void *buf, size_t n) { return ossl_read(c, buf, n); }
static long call_write(tls_conn *c, void *buf, size_t n) { return ossl_write(c, buf, n); }
static long call_shutdown(tls_conn *c, void *buf, size_t n)
{
    (void)buf, (void)n;
    return ossl_shutdown(c);
}
static long call_handshake(tls_conn *c, void *buf, size_t n)
{
    (void)buf, (void)n;
    clear_errors(c);
    int r = SSL_do_handshake(c->ssl);
    return r == 1 ? 0 : ssl_status(c, r);
}

/* Another call is paused: OpenSSL would resume it in this call's place. */
static int other_paused(const tls_conn *c, int op) { return c->paused && c->paused != op; }

static long async_read(tls_conn *c, void *buf, size_t n)
{
    if (other_paused(c, TLS_OP_READ))
        return TLS_WANT_READ; /* nothing to read until the paused call is done */
    size_t limit = SIZE_MAX;
    long r;
    switch (c->paused ? GATE_JOB : read_gate(c, &limit)) {
    case GATE_COPY:
        return out_of_job(c, buf, n, call_read);
    case GATE_LIMIT:
        c->io->limit_in(c, limit);
        r = out_of_job(c, buf, n, call_read);
        c->io->limit_in(c, SIZE_MAX);
        c->held_small = 1; /* what OpenSSL took: whole records, seen, small */
        return r;
    case GATE_OPEN:
        c->held_small = 0;
        return out_of_job(c, buf, n, call_read);
    default:
        c->held_small = 0;
        return in_job(c, TLS_OP_READ, buf, n, call_read);
    }
}

static long async_write(tls_conn *c, const void *buf, size_t n)
{
    if (other_paused(c, TLS_OP_WRITE))
        return TLS_WANT_ASYNC;
    if (!c->paused && !write_may_offload(c, n))
        return out_of_job(c, (void *)buf, n, call_write);
    return in_job(c, TLS_OP_WRITE, (void *)buf, n, call_write);
}

static int async_shutdown(tls_conn *c)
{
    if (other_paused(c, TLS_OP_SHUTDOWN))
        return TLS_WANT_ASYNC;
    return (int)in_job(c, TLS_OP_SHUTDOWN, NULL, 0, call_shutdown);
}

static long async_read_ring(tls_conn *c, ring *plain) { return read_ring_by(c, plain, async_read); }

/* SSL_key_update's SSL_do_handshake would resume a paused call in its place
 * (its result lost): while one is paused the update waits for it (in_job). */
static int async_key_update(tls_conn *c, int request)
{
    if (c->paused) {
        if (!SSL_is_init_finished(c->ssl) || SSL_version(c->ssl) != TLS1_3_VERSION)
            return ossl_key_update(c, request); /* (the same error as unpaused) */
        if (c->key_update_due != 2)
            c->key_update_due = request ? 2 : 1;
        return 0;
    }
    use_jobs(c, 0); /* (a KeyUpdate record is a few bytes) */
    return ossl_key_update(c, request);
}

static const struct tls_record_ops async_records = {
    .name = "openssl-async",
    .read = async_read,
    .read_ring = async_read_ring,
    .write = async_write,
    .pending = ossl_pending,
    .shutdown = async_shutdown,
    .handshake_done = nothing,
    .key_update = async_key_update,
};

/* The SSL handshake step, in a job for ASYNC contexts. */
static int handshake_step(tls_conn *c)
{
    if (c->async == NULL)
        return (int)call_handshake(c, NULL, 0);
    if (other_paused(c, TLS_OP_HANDSHAKE))
        return TLS_WANT_ASYNC;
    return (int)in_job(c, TLS_OP_HANDSHAKE, NULL, 0, call_handshake);
}

/* Freeing a paused connection: let the pool finish with its buffers, then
 * finish the paused call (its job would leak otherwise).  Bounded. */
static void finish_paused(tls_conn *c)
{
    for (int i = 0; i < 64 && c->paused; i++) {
        async_conn_wait_idle(c->async);
        void *buf = c->paused_buf;
        size_t n = c->paused_len;
        switch (c->paused) {
        case TLS_OP_READ:
            in_job(c, TLS_OP_READ, buf, n, call_read);
            break;
        case TLS_OP_WRITE:
            in_job(c, TLS_OP_WRITE, buf, n, call_write);
            break;
        case TLS_OP_SHUTDOWN:
            in_job(c, TLS_OP_SHUTDOWN, NULL, 0, call_shutdown);
            break;
        default:
            in_job(c, TLS_OP_HANDSHAKE, NULL, 0, call_handshake);
            break;
        }
    }
}

void tls_async_finish(tls_conn *c)
{
    if (c->paused)
        finish_paused(c);
}

int tls_async_paused(const tls_conn *c) { return c->paused; }

int tls_async_fd(const tls_conn *c) { return c->async ? async_conn_fd(c->async) : -1; }

int tls_async_changed_fds(tls_conn *c, int *add, size_t *nadd, int *del, size_t *ndel,
                          size_t max)
{
    size_t na = 0, nd = 0;
    if (!SSL_get_changed_async_fds(c->ssl, NULL, &na, NULL, &nd) || na > max || nd > max)
        return -1;
    *nadd = na;
    *ndel = nd;
    if (na + nd == 0)
        return 0;
    return SSL_get_changed_async_fds(c->ssl, add, nadd, del, ndel) ? 0 : -1;
}

void tls_async_stats(const tls_conn *c, struct tls_async_stats *out)
{
    memset(out, 0, sizeof *out);
    if (c->async == NULL)
        return;
    struct async_counters a;
    async_conn_counters(c->async, &a);
    out->pauses = a.pauses;
    out->resumes = a.resumes;
    out->want_async = a.want_async;
    out->offloaded = a.offloaded;
    out->inline_ops = a.inline_ops;
    out->job_calls = a.job_calls;
    out->direct_calls = a.direct_calls;
}

/* ---------------------------------------------------------- construction */

static const struct tls_transport_ops *const transports[] = {
    [TLS_RING] = &ring_transport,
    [TLS_MEM] = &mem_transport,
    [TLS_PAIR] = &pair_transport,
    [TLS_FD] = &fd_transport,
};

/* The SSL object's connection, for its callbacks (an index of our own). */
static int conn_index = -1;
static CRYPTO_ONCE conn_index_once = CRYPTO_ONCE_STATIC_INIT;

static void conn_index_init(void)
{
    conn_index = SSL_get_ex_new_index(0, NULL, NULL, NULL, NULL);
}

/* Alerts read: the peer's close_notify marks a clean end (see ssl_status). */
static void info_callback(const SSL *ssl, int where, int ret)
{
    if (!(where & SSL_CB_READ_ALERT) || (ret & 0xff) != SSL_AD_CLOSE_NOTIFY)
        return;
    tls_conn *c = SSL_get_ex_data(ssl, conn_index);
    if (c != NULL)
        c->peer_closed = 1;
}

static int set_hostname(SSL *ssl, const char *hostname)
{
    if (hostname == NULL || *hostname == '\0')
        return 1;
    if (is_ip(hostname))
        return X509_VERIFY_PARAM_set1_ip_asc(SSL_get0_param(ssl), hostname) == 1;
    return SSL_set_tlsext_host_name(ssl, hostname) == 1 && SSL_set1_host(ssl, hostname) == 1;
}

tls_conn *tls_conn_new(SSL_CTX *ctx, int transport, int fd, size_t ring_capacity, int flags,
                       const char *hostname)
{
    if (transport < 0 || (size_t)transport >= sizeof transports / sizeof transports[0] ||
        ring_capacity == 0) {
        ERR_raise_data(ERR_LIB_SSL, ERR_R_PASSED_INVALID_ARGUMENT,
                       "transport %d, fd %d, ring capacity %zu", transport, fd, ring_capacity);
        return NULL;
    }
    tls_conn *c = calloc(1, sizeof *c);
    if (c == NULL || (c->ssl = SSL_new(ctx)) == NULL)
        goto fail;
    c->io = transports[transport];
    c->rec = &openssl_records;
    const struct crypto_cfg *cfg = crypto_of(ctx);
    if (cfg != NULL && (cfg->crypto & TLS_CRYPTO_ASYNC)) {
        if ((c->async = async_conn_new(cfg->async_threshold)) == NULL)
            goto fail;
        c->rec = &async_records;
        c->jobs_on = (SSL_get_mode(c->ssl) & SSL_MODE_ASYNC) != 0;
        c->job_pipes = (cfg->crypto & TLS_CRYPTO_PIPELINE) ? SSL_MAX_PIPELINES : 1; /* (<= 32) */
        /* (SSL_new switched read-ahead on for max_pipelines > 1) */
        c->read_ahead = (flags & TLS_READ_AHEAD) || SSL_get_read_ahead(c->ssl);
    }
    /* A context for direct records: the ring transport hands over after the
     * handshake (read-ahead off until then, so that OpenSSL holds no record
     * beyond the handshake's: what came after is in rx, taken over). */
    int direct = records_ctx_enabled(ctx);
    const char *why = c->io->no_direct != NULL ? c->io->no_direct
                      : c->async != NULL       ? "ASYNC crypto stays on OpenSSL's records"
                      : ring_capacity < RECORDS_MAX_RECORD
                          ? "the ring capacity is below a whole record (16,645 bytes)"
                          : NULL;
    if (direct && why != NULL)
        snprintf(c->records_why, sizeof c->records_why, "%s", why);
    direct = direct && why == NULL;
    c->fd = fd;
    c->flags = flags;
    c->ring_capacity = ring_capacity;
    if (!CRYPTO_THREAD_run_once(&conn_index_once, conn_index_init) || conn_index < 0 ||
        !SSL_set_ex_data(c->ssl, conn_index, c))
        goto fail;
    SSL_set_info_callback(c->ssl, info_callback);
    SSL_set_options(c->ssl, SSL_OP_IGNORE_UNEXPECTED_EOF);
    if (SSL_is_server(c->ssl))
        SSL_set_accept_state(c->ssl);
    else
        SSL_set_connect_state(c->ssl);
    if (!SSL_is_server(c->ssl) && !set_hostname(c->ssl, hostname))
        goto fail;
    if ((flags & TLS_READ_AHEAD) && !direct)
        SSL_set_read_ahead(c->ssl, 1);
    if (!c->io->attach(c, ring_capacity))
        goto fail;
    if (direct) {
        if ((c->tap = records_tap_new(c->ssl)) == NULL)
            goto fail;
        c->rec = &handover_records;
    }
    return c;
fail:
    tls_conn_free(c);
    return NULL;
}

void tls_conn_free(tls_conn *c)
{
    if (c == NULL)
        return;
    if (c->paused) /* (tls_async_finish was not called: the caller's buffers may be
                      gone) let the pool finish with OpenSSL's buffers, and leave
                      the paused job unresumed: it never runs again */
        async_conn_wait_idle(c->async);
    records_tap_free(c->tap, c->ssl);
    records_free(c->direct);
    SSL_free(c->ssl); /* frees the BIOs it was given */
    async_conn_free(c->async); /* (its fd, once the SSL's wait context is gone) */
    if (c->io != NULL)
        c->io->detach(c);
    ring_destroy(c->rx);
    ring_destroy(c->tx);
    free(c->scratch);
    free(c);
}

/* --------------------------------------------------------- compound calls */

/* ---------------------------------------------------------------- memory */

int tls_park(tls_conn *c)
{
    if (c->parked)
        return 1;
    int settled = c->rec == &openssl_records || c->rec == &direct_records; /* not handing over */
    if (c->dead || c->read_status || !settled ||
        !SSL_is_init_finished(c->ssl) || c->io->pending_in(c) > 0 || c->io->pending_out(c) > 0 ||
        c->rec->pending(c) || !SSL_free_buffers(c->ssl))
        return 0;
    if (c->direct != NULL)
        records_trim(c->direct);
    c->io->park(c);
    c->parked = 1;
    return 1;
}

int tls_unpark(tls_conn *c)
{
    if (!c->parked)
        return 0;
    if (!c->io->unpark(c)) {
        c->io->park(c); /* what was made goes again: still parked, and failed */
        return tls_conn_fail(c, TLS_ERROR, "out of memory for the connection's buffers");
    }
    c->parked = 0;
    return 0;
}

int tls_parked(const tls_conn *c) { return c->parked; }

/* Before a call that moves bytes: the buffers back.  0, or TLS_ERROR. */
static inline int awake(tls_conn *c)
{
    return c->parked ? tls_unpark(c) : 0;
}

/* After a status: whether the pump brought ciphertext for a retry. */
static int pumped_more(tls_conn *c, long status)
{
    return status == TLS_WANT_READ && c->pumped && c->io->pump_in(c) > 0;
}

/* After a call that may have produced records: send them, even after a fatal
 * error (so does tls_flush, for TLS_CALLER_IO): the alert OpenSSL queued is
 * for the peer, which would otherwise wait for a handshake message forever. */
static int flush_out(tls_conn *c)
{
    if (c->fd >= 0 && !(c->flags & TLS_CALLER_IO) && c->io->pending_out(c) > 0) {
        int ended = c->read_status == TLS_EOF || c->read_status == TLS_ERROR;
        long r = c->io->pump_out(c);
        if (r == TLS_ERROR && !ended) /* else best effort: the reason is known */
            return TLS_ERROR;
    }
    return 0;
}

long tls_flush(tls_conn *c)
{
    if (c->fd < 0 || c->parked) /* parked: nothing is queued */
        return c->dead ? TLS_ERROR : 0;
    if (c->dead) { /* the alert OpenSSL queued is for the peer, as in flush_out */
        if (c->io->pending_out(c) > 0)
            c->io->pump_out(c); /* best effort: the connection is dead either way */
        return TLS_ERROR;
    }
    return c->io->pump_out(c);
}

int tls_handshake(tls_conn *c)
{
    if (c->dead || awake(c) < 0)
        return TLS_ERROR;
    c->io->new_batch(c);
    c->queue_checked = 0;
    for (;;) {
        int status = handshake_step(c);
        if (status == 0)
            c->rec->handshake_done(c);
        if (flush_out(c) == TLS_ERROR)
            return TLS_ERROR;
        if (pumped_more(c, status))
            continue;
        return status;
    }
}

long tls_read(tls_conn *c, void *buf, size_t n)
{
    if (c->read_status)
        return c->read_status;
    if (awake(c) < 0)
        return TLS_ERROR;
    c->io->new_batch(c);
    c->queue_checked = 0;
    for (;;) {
        long got = c->rec->read(c, buf, n);
        if (got > 0) {
            counter_add(&c->plain_in, (uint64_t)got);
            counter_add(&c->reads, 1);
            flush_out(c);
            return got;
        }
        if (pumped_more(c, got))
            continue;
        if (flush_out(c) == TLS_ERROR)
            return TLS_ERROR;
        return got;
    }
}

long tls_read_ring(tls_conn *c, ring *plain)
{
    if (c->read_status)
        return c->read_status;
    if (awake(c) < 0)
        return TLS_ERROR;
    c->io->new_batch(c);
    c->queue_checked = 0;
    long total = 0, status = 0;
    for (;;) {
        long got = c->rec->read_ring(c, plain); /* decrypted records -> ring */
        if (got > 0) {
            total += got;
            counter_add(&c->plain_in, (uint64_t)got);
            /* The layer read all it could; only a pump may bring more. */
            if (!c->pumped)
                break;
            continue;
        }
        if (pumped_more(c, got))
            continue;
        status = got;
        break;
    }
    if (flush_out(c) == TLS_ERROR && total == 0)
        return TLS_ERROR;
    return total > 0 ? total : status;
}

long tls_write(tls_conn *c, const void *buf, size_t n)
{
    if (c->dead || awake(c) < 0)
        return TLS_ERROR;
    size_t total = 0;
    long status = 0;
    c->queue_checked = 0;
    while (total < n) {
        long put = c->rec->write(c, (const char *)buf + total, n - total);
        if (put > 0) {
            total += (size_t)put;
            counter_add(&c->plain_out, (uint64_t)put);
            counter_add(&c->writes, 1);
            continue;
        }
        status = put;
        /* PAIR: the pair's buffer is full; sending makes room. */
        if (status == TLS_WANT_WRITE && c->pumped && c->io->pump_out(c) > 0)
            continue;
        break;
    }
    if (c->pumped && c->io->pending_out(c) > 0) {
        long r = c->io->pump_out(c);
        if (r == TLS_ERROR && total == 0)
            return TLS_ERROR;
    }
    return total > 0 ? (long)total : status;
}

long tls_write_ring(tls_conn *c, ring *plain, size_t n)
{
    struct iovec iov[2];
    int segs = ring_read_iov(plain, iov);
    long total = 0;
    for (int i = 0; i < segs && n > 0; i++) {
        size_t len = min_sz(iov[i].iov_len, n);
        long put = tls_write(c, iov[i].iov_base, len);
        if (put < 0)
            return total > 0 ? total : put;
        ring_consume(plain, (size_t)put); /* cannot fail: put <= readable */
        total += put;
        n -= (size_t)put;
        if ((size_t)put < len)
            break; /* backpressure */
    }
    return total;
}

int tls_key_update(tls_conn *c, int request)
{
    if (c->dead)
        return TLS_ERROR;
    if (awake(c) < 0)
        return TLS_ERROR;
    c->queue_checked = 0;
    int status = c->rec->key_update(c, request);
    if (flush_out(c) == TLS_ERROR)
        return TLS_ERROR;
    return status;
}

long tls_fill(tls_conn *c) { return awake(c) < 0 ? TLS_ERROR : c->io->fill(c); }

size_t tls_pending_in(tls_conn *c) { return c->io->pending_in(c); }

int tls_shutdown(tls_conn *c)
{
    /* Not after a fatal error (OpenSSL forbids it) nor after the stream
     * ended without the peer's close_notify. */
    if (c->dead || c->read_status == TLS_EOF)
        return c->read_status == TLS_EOF ? TLS_EOF : TLS_ERROR;
    if (awake(c) < 0)
        return TLS_ERROR;
    /* The second call reads the peer's close_notify: from the socket (a new
     * batch for the ring BIO), or through the pump. */
    c->io->new_batch(c);
    c->queue_checked = 0;
    for (;;) {
        int status = c->rec->shutdown(c);
        if (flush_out(c) == TLS_ERROR)
            return TLS_ERROR;
        if (pumped_more(c, status))
            continue;
        return status;
    }
}

/* --------------------------------------------------------------- sans-IO */

size_t tls_feed(tls_conn *c, const void *data, size_t n)
{
    return awake(c) < 0 ? 0 : c->io->feed(c, data, n);
}
void tls_feed_eof(tls_conn *c) { c->io->feed_eof(c); }
size_t tls_take(tls_conn *c, void *buf, size_t n) { return c->io->take(c, buf, n); }
size_t tls_pending_out(tls_conn *c) { return c->io->pending_out(c); }

int tls_has_pending(tls_conn *c) { return c->rec->pending(c) || c->io->pending_in(c) > 0; }

/* ---------------------------------------------------------------- info */

const char *tls_conn_error(const tls_conn *c) { return c->error; }
int tls_conn_errno(const tls_conn *c) { return c->sys_errno ? c->sys_errno : c->io->last_errno(c); }

const char *tls_version(const tls_conn *c)
{
    return SSL_is_init_finished(c->ssl) ? SSL_get_version(c->ssl) : NULL;
}

const char *tls_cipher(const tls_conn *c)
{
    return SSL_is_init_finished(c->ssl) ? SSL_get_cipher_name(c->ssl) : NULL;
}

size_t tls_alpn(const tls_conn *c, char *buf, size_t n)
{
    const unsigned char *proto;
    unsigned int len;
    SSL_get0_alpn_selected(c->ssl, &proto, &len);
    len = (unsigned int)min_sz(len, n);
    if (len > 0)
        memcpy(buf, proto, len);
    return len;
}

size_t tls_peer_cert(const tls_conn *c, unsigned char **der)
{
    *der = NULL;
    X509 *x = SSL_get1_peer_certificate(c->ssl);
    if (x == NULL)
        return 0;
    int n = i2d_X509(x, der); /* allocates *der */
    X509_free(x);
    return n > 0 ? (size_t)n : 0;
}

int tls_session_reused(const tls_conn *c) { return SSL_session_reused(c->ssl); }

const char *tls_openssl_version(void) { return OpenSSL_version(OPENSSL_VERSION); }

const char *tls_records(const tls_conn *c) { return c->rec->name; }
const char *tls_records_why(const tls_conn *c) { return c->records_why; }

void tls_records_counters(const tls_conn *c, struct records_counters *out)
{
    if (c->direct != NULL)
        records_counters(c->direct, out);
    else
        memset(out, 0, sizeof *out);
}

/* --------------------------------------------------------------- ledger */

static void add_ring_stats(const ring *r, struct tls_ledger *out)
{
    if (r == NULL)
        return;
    uint64_t s[2];
    ring_stats(r, s);
    out->ring_copies += s[0];
    out->ring_bytes += s[1];
}

void tls_get_ledger(tls_conn *c, struct tls_ledger *out)
{
    memset(out, 0, sizeof *out);
    c->io->kernel(c, out);
    add_ring_stats(c->rx, out);
    add_ring_stats(c->tx, out);
    out->ring_copies += c->parked_ring_copies;
    out->ring_bytes += c->parked_ring_bytes;
    out->bio_copies = counter_get(&c->bio_copies);
    out->bio_bytes = counter_get(&c->bio_bytes);
    out->plain_in = counter_get(&c->plain_in);
    out->plain_out = counter_get(&c->plain_out);
    out->reads = counter_get(&c->reads);
    out->writes = counter_get(&c->writes);
}

void tls_reset_ledger(tls_conn *c)
{
    c->io->reset_kernel(c);
    if (c->rx != NULL)
        ring_reset_stats(c->rx);
    if (c->tx != NULL)
        ring_reset_stats(c->tx);
    c->parked_ring_copies = c->parked_ring_bytes = 0;
    counter *all[] = {&c->bio_copies, &c->bio_bytes, &c->plain_in,
                      &c->plain_out,  &c->reads,     &c->writes};
    for (size_t i = 0; i < sizeof all / sizeof all[0]; i++)
        counter_zero(all[i]);
}
