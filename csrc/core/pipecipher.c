/*
 * pipecipher.c - the pipeline-capable AES-GCM and its ENGINE (see pipecipher.h).
 *
 * What libssl (3.0, TLS 1.2, ssl3_record.c tls1_enc) does with it, per call:
 *   ctrl(EVP_CTRL_AEAD_TLS1_AAD) once per record, in order (we keep each);
 *   with several records, ctrl(EVP_CTRL_SET_PIPELINE_OUTPUT_BUFS / _INPUT_BUFS
 *   / _INPUT_LENS) with arrays that live until the cipher call returns;
 *   then one do_cipher call, in place: explicit IV (8) | data | tag (16).
 * Sealing: the explicit IV is the fixed IV's 8-byte counter, taken in record
 * order before the records are split over threads, so nonces never repeat.
 */
#define _GNU_SOURCE
#define OPENSSL_SUPPRESS_DEPRECATED
#include "pipecipher.h"

#include <pthread.h>
#include <stdatomic.h>
#include <string.h>

#include <openssl/engine.h>
#include <openssl/err.h>
#include <openssl/evp.h>
#include <openssl/rand.h>

#include "asyncjob.h"
#include "cryptopool.h"

#define MAX_PIPES SSL_MAX_PIPELINES
#define AAD_LEN EVP_AEAD_TLS1_AAD_LEN
#define EIV_LEN EVP_GCM_TLS_EXPLICIT_IV_LEN
#define TAG_LEN EVP_GCM_TLS_TAG_LEN

struct pipe_ctx {
    EVP_CIPHER_CTX *inner[MAX_PIPES]; /* created on first use of the slot */
    const EVP_CIPHER *stock;          /* the method copy for this key size */
    unsigned char key[32];
    int keylen, have_key, enc;
    unsigned char iv[12]; /* fixed (4) | counter (8, sealing) */
    int have_fixed;
    unsigned char aad[MAX_PIPES][AAD_LEN];
    unsigned char nonce[MAX_PIPES][12]; /* sealing: each record's, in order */
    size_t naad;
    /* set by the pipeline controls, valid for the next do_cipher only */
    size_t npipes;
    unsigned char **outs;
    unsigned char **ins;
    size_t *lens;
};

static ENGINE *engine;
static EVP_CIPHER *pipe128, *pipe256;   /* ours */
static EVP_CIPHER *stock128, *stock256; /* method copies of libcrypto's legacy GCM */
static pthread_once_t once = PTHREAD_ONCE_INIT;
static int init_ok;
static pthread_mutex_t scope_mu = PTHREAD_MUTEX_INITIALIZER;
static _Thread_local int in_scope;

static atomic_uint_fast64_t c_calls, c_records, c_max, c_hist[PIPE_HIST], c_enc, c_dec, c_par,
    c_async;

static void count_call(size_t n, int enc, int parallel, int async)
{
    atomic_fetch_add_explicit(&c_calls, 1, memory_order_relaxed);
    atomic_fetch_add_explicit(&c_records, n, memory_order_relaxed);
    atomic_fetch_add_explicit(enc ? &c_enc : &c_dec, 1, memory_order_relaxed);
    if (parallel)
        atomic_fetch_add_explicit(&c_par, 1, memory_order_relaxed);
    if (async)
        atomic_fetch_add_explicit(&c_async, 1, memory_order_relaxed);
    int b = n <= 1 ? 0 : n == 2 ? 1 : n <= 4 ? 2 : n <= 8 ? 3 : n <= 16 ? 4 : 5;
    atomic_fetch_add_explicit(&c_hist[b], 1, memory_order_relaxed);
    uint_fast64_t m = atomic_load_explicit(&c_max, memory_order_relaxed);
    while (n > m && !atomic_compare_exchange_weak_explicit(&c_max, &m, n, memory_order_relaxed,
                                                           memory_order_relaxed))
        ;
}

/* ------------------------------------------------------------ one record */

static EVP_CIPHER_CTX *slot(struct pipe_ctx *p, size_t i)
{
    if (p->inner[i] != NULL)
        return p->inner[i];
    EVP_CIPHER_CTX *c = EVP_CIPHER_CTX_new();
    if (c == NULL)
        return NULL;
    /* Decrypting: the fixed part only (the rest comes with each record). */
    if (EVP_CipherInit_ex(c, p->stock, NULL, p->key, NULL, p->enc) != 1 ||
        (p->have_fixed && !p->enc &&
         EVP_CIPHER_CTX_ctrl(c, EVP_CTRL_GCM_SET_IV_FIXED, 4, p->iv) <= 0)) {
        EVP_CIPHER_CTX_free(c);
        return NULL;
    }
    return p->inner[i] = c;
}

/* Seal or open record i in place; out/in/len as libssl gave them. */
static int one_record(struct pipe_ctx *p, size_t i, const unsigned char *nonce, unsigned char *out,
                      const unsigned char *in, size_t len)
{
    EVP_CIPHER_CTX *c = p->inner[i];
    if (c == NULL || len > INT32_MAX)
        return 0;
    if (p->enc && EVP_CIPHER_CTX_ctrl(c, EVP_CTRL_GCM_SET_IV_FIXED, -1, (void *)nonce) <= 0)
        return 0;
    if (EVP_CIPHER_CTX_ctrl(c, EVP_CTRL_AEAD_TLS1_AAD, AAD_LEN, p->aad[i]) <= 0)
        return 0;
    return EVP_Cipher(c, out, in, (unsigned int)len) >= 0;
}

/* A share of a batch (small: it lives on the ASYNC job's 32 KiB stack). */
struct group {
    struct pipe_ctx *p;
    size_t first, count;
    unsigned char **outs, **ins;
    size_t *lens;
};

static void run_group(struct cpool_task *t)
{
    struct group *g = t->arg;
    int ok = 1;
    for (size_t i = g->first; i < g->first + g->count; i++)
        ok &= one_record(g->p, i, g->p->nonce[i], g->outs[i], g->ins[i], g->lens[i]);
    t->ok = ok;
}

/* ------------------------------------------------------- the EVP methods */

static int pipe_init(EVP_CIPHER_CTX *ctx, const unsigned char *key, const unsigned char *iv,
                     int enc)
{
    (void)enc; /* -1 means "unchanged": ask the context */
    struct pipe_ctx *p = EVP_CIPHER_CTX_get_cipher_data(ctx);
    p->enc = EVP_CIPHER_CTX_is_encrypting(ctx);
    if (key != NULL) {
        int keylen = EVP_CIPHER_CTX_get_key_length(ctx);
        if (keylen != 16 && keylen != 32)
            return 0;
        for (size_t i = 0; i < MAX_PIPES; i++) { /* a new key: slots are made again */
            EVP_CIPHER_CTX_free(p->inner[i]);
            p->inner[i] = NULL;
        }
        p->keylen = keylen;
        p->stock = keylen == 16 ? stock128 : stock256;
        memcpy(p->key, key, (size_t)keylen);
        p->have_key = 1;
        p->have_fixed = 0;
        if (slot(p, 0) == NULL)
            return 0;
    }
    /* A whole IV (TLS 1.3 sets one per record): the plain AEAD use. */
    if (iv != NULL && (!p->have_key ||
                       EVP_CipherInit_ex(p->inner[0], NULL, NULL, NULL, iv, p->enc) != 1))
        return 0;
    return 1;
}

static int pipe_cleanup(EVP_CIPHER_CTX *ctx)
{
    struct pipe_ctx *p = EVP_CIPHER_CTX_get_cipher_data(ctx);
    if (p == NULL)
        return 1;
    for (size_t i = 0; i < MAX_PIPES; i++) {
        EVP_CIPHER_CTX_free(p->inner[i]);
        p->inner[i] = NULL;
    }
    OPENSSL_cleanse(p->key, sizeof p->key);
    OPENSSL_cleanse(p->iv, sizeof p->iv);
    return 1;
}

static int pipe_ctrl(EVP_CIPHER_CTX *ctx, int type, int arg, void *ptr)
{
    struct pipe_ctx *p = EVP_CIPHER_CTX_get_cipher_data(ctx);
    switch (type) {
    case EVP_CTRL_INIT: /* before every (re)initialisation */
        for (size_t i = 0; i < MAX_PIPES; i++)
            EVP_CIPHER_CTX_free(p->inner[i]);
        memset(p, 0, sizeof *p);
        return 1;
    case EVP_CTRL_COPY:
        return 0; /* the inner contexts are not shareable: no copies */
    case EVP_CTRL_AEAD_SET_IVLEN:
        return arg == 12; /* (before the key: no slot yet) libcrypto's default */
    case EVP_CTRL_GCM_SET_IV_FIXED:
        if (arg != 4 || !p->have_key)
            return 0;
        memcpy(p->iv, ptr, 4);
        if (p->enc && RAND_bytes(p->iv + 4, 8) <= 0)
            return 0;
        for (size_t i = 0; i < MAX_PIPES; i++) {
            EVP_CIPHER_CTX_free(p->inner[i]);
            p->inner[i] = NULL;
        }
        p->have_fixed = 1;
        p->naad = 0;
        return 1;
    case EVP_CTRL_AEAD_TLS1_AAD: {
        if (arg != AAD_LEN || p->naad >= MAX_PIPES)
            return 0;
        const unsigned char *a = ptr;
        unsigned int len = (unsigned int)a[AAD_LEN - 2] << 8 | a[AAD_LEN - 1];
        if (len < EIV_LEN + (p->enc ? 0 : TAG_LEN))
            return 0;
        memcpy(p->aad[p->naad++], a, AAD_LEN);
        return TAG_LEN; /* the record grows by the tag */
    }
    case EVP_CTRL_SET_PIPELINE_OUTPUT_BUFS:
        if (arg < 1 || arg > MAX_PIPES)
            return 0;
        p->npipes = (size_t)arg;
        p->outs = ptr;
        return 1;
    case EVP_CTRL_SET_PIPELINE_INPUT_BUFS:
        if (arg < 1 || (size_t)arg != p->npipes)
            return 0;
        p->ins = ptr;
        return 1;
    case EVP_CTRL_SET_PIPELINE_INPUT_LENS:
        if (arg < 1 || (size_t)arg != p->npipes)
            return 0;
        p->lens = ptr;
        return 1;
    default: /* the plain AEAD use (tag, IV length): libcrypto's own answer */
        return p->inner[0] != NULL ? EVP_CIPHER_CTX_ctrl(p->inner[0], type, arg, ptr) : -1;
    }
}

static void next_nonce(struct pipe_ctx *p, unsigned char *nonce)
{
    memcpy(nonce, p->iv, 12);
    for (int b = 11; b >= 4; b--) /* big-endian increment of the counter */
        if (++p->iv[b] != 0)
            break;
}

struct plain_job {
    EVP_CIPHER_CTX *c;
    unsigned char *out;
    const unsigned char *in;
    size_t len;
    int ret;
};

static void run_plain(struct cpool_task *t)
{
    struct plain_job *j = t->arg;
    j->ret = EVP_Cipher(j->c, j->out, j->in, (unsigned int)j->len);
    t->ok = j->ret >= 0;
}

/* Not a TLS 1.2 record (TLS 1.3 calls EVP_CipherUpdate for the AAD, the
 * data, and EVP_CipherFinal): libcrypto's GCM on slot 0, one record a call. */
static int plain_aead(struct pipe_ctx *p, unsigned char *out, const unsigned char *in, size_t len)
{
    if (p->inner[0] == NULL || len > UINT32_MAX)
        return -1;
    struct plain_job j = {.c = p->inner[0], .out = out, .in = in, .len = len};
    struct cpool_task t = {.fn = run_plain, .arg = &j};
    if (out == NULL || in == NULL) { /* the AAD, or the tag at the end */
        run_plain(&t);
        return j.ret;
    }
    int async = async_offload(&t, 1, len);
    if (!async)
        run_plain(&t);
    count_call(1, p->enc, 0, async);
    return j.ret;
}

static int pipe_cipher(EVP_CIPHER_CTX *ctx, unsigned char *out, const unsigned char *in,
                       size_t len)
{
    struct pipe_ctx *p = EVP_CIPHER_CTX_get_cipher_data(ctx);
    if (!p->have_fixed)
        return plain_aead(p, out, in, len);
    struct group g;
    unsigned char *one_out[1] = {out};
    unsigned char *one_in[1] = {(unsigned char *)in};
    size_t one_len[1] = {len};
    size_t n = p->npipes ? p->npipes : 1;
    g.p = p;
    g.outs = p->npipes ? p->outs : one_out;
    g.ins = p->npipes ? p->ins : one_in;
    g.lens = p->npipes ? p->lens : one_len;
    p->npipes = 0;
    int ok = p->have_fixed && p->naad == n;
    p->naad = 0;
    if (!ok)
        return -1;
    size_t bytes = 0;
    for (size_t i = 0; i < n; i++) {
        if (slot(p, i) == NULL || g.outs[i] != g.ins[i]) /* in place only, as libssl does */
            return -1;
        if (p->enc)
            next_nonce(p, p->nonce[i]);
        bytes += g.lens[i];
    }
    int threads = cpool_threads();
    size_t parts = n == 1 || threads == 0 ? 1 : n < (size_t)threads + 1 ? n : (size_t)threads + 1;
    struct group groups[MAX_PIPES];
    struct cpool_task tasks[MAX_PIPES];
    for (size_t k = 0, first = 0; k < parts; k++) {
        size_t count = n / parts + (k < n % parts);
        groups[k] = g;
        groups[k].first = first;
        groups[k].count = count;
        tasks[k] = (struct cpool_task){.fn = run_group, .arg = &groups[k], .ok = 0};
        first += count;
    }
    /* Paused in an ASYNC job: every group goes to the pool (one pause for
     * the whole batch); the nonces were taken above, in record order. */
    if (async_offload(tasks, parts, bytes)) {
        count_call(n, p->enc, 0, 1);
    } else if (parts > 1) {
        struct cpool_batch batch = {.efd = -1};
        if (cpool_submit(&batch, tasks + 1, parts - 1) != 0) {
            for (size_t k = 1; k < parts; k++)
                run_group(&tasks[k]);
        }
        cpool_run_here(&tasks[0]);
        cpool_wait(&batch);
        count_call(n, p->enc, 1, 0);
    } else {
        run_group(&tasks[0]);
        count_call(n, p->enc, 0, 0);
    }
    for (size_t k = 0; k < parts; k++)
        if (!tasks[k].ok)
            return -1;
    if (n > 1)
        return 1; /* libssl only checks for failure with several records */
    return (int)(p->enc ? len : len - EIV_LEN - TAG_LEN);
}

/* ------------------------------------------------------------- the engine */

static const int nids[] = {NID_aes_128_gcm, NID_aes_256_gcm};

static int engine_ciphers(ENGINE *e, const EVP_CIPHER **cipher, const int **list, int nid)
{
    (void)e;
    if (cipher == NULL) {
        *list = nids;
        return (int)(sizeof nids / sizeof nids[0]);
    }
    /* Outside our own SSL_CTX_new: libcrypto's stock cipher (see the header). */
    if (nid == NID_aes_128_gcm)
        *cipher = in_scope ? pipe128 : EVP_aes_128_gcm();
    else if (nid == NID_aes_256_gcm)
        *cipher = in_scope ? pipe256 : EVP_aes_256_gcm();
    else
        *cipher = NULL;
    return *cipher != NULL;
}

static EVP_CIPHER *make_cipher(int nid, int keylen)
{
    EVP_CIPHER *c = EVP_CIPHER_meth_new(nid, 1, keylen);
    if (c == NULL)
        return NULL;
    unsigned long flags = EVP_CIPH_GCM_MODE | EVP_CIPH_FLAG_DEFAULT_ASN1 | EVP_CIPH_CUSTOM_IV |
                          EVP_CIPH_FLAG_CUSTOM_CIPHER | EVP_CIPH_ALWAYS_CALL_INIT |
                          EVP_CIPH_CTRL_INIT | EVP_CIPH_CUSTOM_COPY | EVP_CIPH_FLAG_AEAD_CIPHER |
                          EVP_CIPH_FLAG_PIPELINE;
    if (!EVP_CIPHER_meth_set_iv_length(c, 12) || !EVP_CIPHER_meth_set_flags(c, flags) ||
        !EVP_CIPHER_meth_set_init(c, pipe_init) || !EVP_CIPHER_meth_set_do_cipher(c, pipe_cipher) ||
        !EVP_CIPHER_meth_set_ctrl(c, pipe_ctrl) || !EVP_CIPHER_meth_set_cleanup(c, pipe_cleanup) ||
        !EVP_CIPHER_meth_set_impl_ctx_size(c, sizeof(struct pipe_ctx))) {
        EVP_CIPHER_meth_free(c);
        return NULL;
    }
    return c;
}

/* Process-lifetime objects: the engine and the four method ciphers are made
 * once and stay (contexts anywhere may hold them until the process ends). */
static void init_once(void)
{
    stock128 = EVP_CIPHER_meth_dup(EVP_aes_128_gcm());
    stock256 = EVP_CIPHER_meth_dup(EVP_aes_256_gcm());
    pipe128 = make_cipher(NID_aes_128_gcm, 16);
    pipe256 = make_cipher(NID_aes_256_gcm, 32);
    ENGINE *e = ENGINE_new();
    if (stock128 == NULL || stock256 == NULL || pipe128 == NULL || pipe256 == NULL || e == NULL ||
        !ENGINE_set_id(e, "wsstls-pipe") ||
        !ENGINE_set_name(e, "wsstls pipelined AES-GCM (TLS 1.2)") ||
        !ENGINE_set_ciphers(e, engine_ciphers)) {
        ENGINE_free(e);
        EVP_CIPHER_meth_free(stock128);
        EVP_CIPHER_meth_free(stock256);
        EVP_CIPHER_meth_free(pipe128);
        EVP_CIPHER_meth_free(pipe256);
        stock128 = stock256 = pipe128 = pipe256 = NULL;
        return;
    }
    engine = e;
    init_ok = 1;
}

SSL_CTX *pipecipher_ssl_ctx_new(OSSL_LIB_CTX *libctx, const char *propq, const SSL_METHOD *meth)
{
    if (pthread_once(&once, init_once) != 0 || !init_ok) {
        ERR_raise_data(ERR_LIB_ENGINE, ERR_R_INIT_FAIL, "wsstls pipelined cipher");
        return NULL;
    }
    pthread_mutex_lock(&scope_mu);
    SSL_CTX *ctx = NULL;
    in_scope = 1;
    if (ENGINE_set_default_ciphers(engine)) {
        ctx = SSL_CTX_new_ex(libctx, propq, meth);
        ENGINE_unregister_ciphers(engine);
    }
    in_scope = 0;
    pthread_mutex_unlock(&scope_mu);
    return ctx;
}

void pipecipher_counters(struct pipe_counters *out)
{
    out->calls = atomic_load(&c_calls);
    out->records = atomic_load(&c_records);
    out->max_records = atomic_load(&c_max);
    for (int i = 0; i < PIPE_HIST; i++)
        out->hist[i] = atomic_load(&c_hist[i]);
    out->enc_calls = atomic_load(&c_enc);
    out->dec_calls = atomic_load(&c_dec);
    out->parallel_calls = atomic_load(&c_par);
    out->async_calls = atomic_load(&c_async);
}

void pipecipher_reset_counters(void)
{
    atomic_uint_fast64_t *all[] = {&c_calls, &c_records, &c_max, &c_enc, &c_dec, &c_par, &c_async};
    for (size_t i = 0; i < sizeof all / sizeof all[0]; i++)
        atomic_store(all[i], 0);
    for (int i = 0; i < PIPE_HIST; i++)
        atomic_store(&c_hist[i], 0);
}
