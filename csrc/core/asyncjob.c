/*
 * asyncjob.c - the ASYNC provider and the pause machinery (see asyncjob.h).
 *
 * The provider's AES-GCM is a thin proxy over the default provider's, one
 * inner context of the default provider's own AES-GCM per context, called
 * through that provider's dispatch table: every call and parameter is
 * forwarded, so the TLS record semantics (TLS 1.2 AAD, fixed and explicit
 * IVs; TLS 1.3 AEAD calls) are exactly OpenSSL's.  Only an update of at least the current
 * connection's threshold, inside an ASYNC job, runs elsewhere: on a pool
 * worker while the job is paused.
 *
 * Completion: the worker that finishes a connection's work adds 1 to its
 * eventfd.  The paused job, when resumed, reads the eventfd: 8 bytes read is
 * "done"; EAGAIN (a resume before the work was done) pauses again.  No other
 * flag says "done", so there is nothing to disagree with the counter.
 */
#define _GNU_SOURCE
#include "asyncjob.h"

#include <errno.h>
#include <limits.h>
#include <poll.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdlib.h>
#include <string.h>
#include <sys/eventfd.h>
#include <unistd.h>

#include <openssl/async.h>
#include <openssl/core_dispatch.h>
#include <openssl/core_names.h>
#include <openssl/err.h>
#include <openssl/evp.h>
#include <openssl/params.h>
#include <openssl/provider.h>

#include "counter.h"

/* ------------------------------------------------- per-connection state */

struct async_conn {
    int efd;
    size_t threshold;
    struct cpool_batch batch;
    int busy; /* the pool holds this connection's work (loop thread only) */
    counter pauses, resumes, inline_ops, offloaded, want_async, job_calls, direct_calls;
};

/* The connection whose SSL call runs on this thread.  initial-exec: a
 * pointer's worth of the static TLS surplus glibc keeps for dlopen()ed
 * objects, read without a __tls_get_addr call per record. */
static _Thread_local struct async_conn *current __attribute__((tls_model("initial-exec")));
static const char wait_key = 0; /* the wait context's key for our fd */
static atomic_uint_fast64_t g_pauses, g_resumes, g_inline, g_offloaded, g_want, g_jobs, g_direct;

struct async_conn *async_conn_new(size_t threshold)
{
    struct async_conn *ac = calloc(1, sizeof *ac);
    if (ac == NULL)
        return NULL;
    ac->efd = eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC);
    if (ac->efd < 0) {
        free(ac);
        return NULL;
    }
    ac->threshold = threshold;
    ac->batch.efd = ac->efd;
    return ac;
}

void async_conn_free(struct async_conn *ac)
{
    if (ac == NULL)
        return;
    close(ac->efd);
    free(ac);
}

int async_conn_busy(const struct async_conn *ac) { return ac != NULL && ac->busy; }

void async_conn_wait_idle(struct async_conn *ac)
{
    /* Readable means done; the paused job consumes the count when resumed.
     * Bounded (a pool that never answers is a bug, not a reason to hang). */
    struct pollfd p = {.fd = ac->efd, .events = POLLIN};
    for (int i = 0; i < 60 && ac->busy; i++) {
        int r = poll(&p, 1, 1000);
        if (r > 0 || (r < 0 && errno != EINTR))
            break;
    }
}

int async_conn_fd(const struct async_conn *ac) { return ac->efd; }

int async_conn_ready(const struct async_conn *ac)
{
    struct pollfd p = {.fd = ac->efd, .events = POLLIN};
    return poll(&p, 1, 0) > 0;
}

void async_conn_counters(const struct async_conn *ac, struct async_counters *out)
{
    out->pauses = counter_get(&ac->pauses);
    out->resumes = counter_get(&ac->resumes);
    out->inline_ops = counter_get(&ac->inline_ops);
    out->offloaded = counter_get(&ac->offloaded);
    out->want_async = counter_get(&ac->want_async);
    out->job_calls = counter_get(&ac->job_calls);
    out->direct_calls = counter_get(&ac->direct_calls);
}

static void bump(counter *c, atomic_uint_fast64_t *g)
{
    counter_add(c, 1);
    atomic_fetch_add_explicit(g, 1, memory_order_relaxed);
}

void async_enter(struct async_conn *ac) { current = ac; }
void async_leave(void) { current = NULL; }

void async_conn_want(struct async_conn *ac) { bump(&ac->want_async, &g_want); }

void async_conn_call(struct async_conn *ac, int in_job)
{
    if (in_job)
        bump(&ac->job_calls, &g_jobs);
    else
        bump(&ac->direct_calls, &g_direct);
}

size_t async_conn_threshold(const struct async_conn *ac) { return ac->threshold; }

int async_offload(struct cpool_task *tasks, size_t n, size_t bytes)
{
    struct async_conn *ac = current;
    if (ac == NULL)
        return 0;
    ASYNC_JOB *job; /* (looked up last: it costs a thread-local and an init check) */
    if (bytes < ac->threshold || cpool_threads() == 0 || ac->busy ||
        (job = ASYNC_get_current_job()) == NULL) {
        bump(&ac->inline_ops, &g_inline);
        return 0;
    }
    ASYNC_WAIT_CTX *w = ASYNC_get_wait_ctx(job);
    OSSL_ASYNC_FD fd;
    void *custom;
    /* Registered once per wait context (one per SSL); the fd stays ours. */
    if (w == NULL || (!ASYNC_WAIT_CTX_get_fd(w, &wait_key, &fd, &custom) &&
                      !ASYNC_WAIT_CTX_set_wait_fd(w, &wait_key, ac->efd, ac, NULL))) {
        bump(&ac->inline_ops, &g_inline);
        return 0;
    }
    ac->busy = 1;
    if (cpool_submit(&ac->batch, tasks, n) != 0) {
        ac->busy = 0;
        bump(&ac->inline_ops, &g_inline);
        return 0;
    }
    for (;;) {
        bump(&ac->pauses, &g_pauses);
        int paused = ASYNC_pause_job();
        bump(&ac->resumes, &g_resumes);
        uint64_t done;
        if (read(ac->efd, &done, sizeof done) == (ssize_t)sizeof done)
            break;
        if (!paused) /* cannot pause: wait here (never expected) */
            async_conn_wait_idle(ac);
    }
    ac->busy = 0;
    bump(&ac->offloaded, &g_offloaded);
    return 1;
}

void async_global_counters(struct async_counters *out)
{
    out->pauses = atomic_load(&g_pauses);
    out->resumes = atomic_load(&g_resumes);
    out->inline_ops = atomic_load(&g_inline);
    out->offloaded = atomic_load(&g_offloaded);
    out->want_async = atomic_load(&g_want);
    out->job_calls = atomic_load(&g_jobs);
    out->direct_calls = atomic_load(&g_direct);
}

void async_reset_global_counters(void)
{
    atomic_store(&g_pauses, 0);
    atomic_store(&g_resumes, 0);
    atomic_store(&g_inline, 0);
    atomic_store(&g_offloaded, 0);
    atomic_store(&g_want, 0);
    atomic_store(&g_jobs, 0);
    atomic_store(&g_direct, 0);
}

/* ------------------------------------------------------- the provider */

/* The default provider's AES-GCM, called through its own dispatch table (an
 * EVP_CIPHER_CTX in between cost every record a second EVP layer: the
 * parameter calls of TLS 1.2 and the update, forwarded twice). */
struct impl {
    OSSL_FUNC_cipher_newctx_fn *newctx;
    OSSL_FUNC_cipher_freectx_fn *freectx;
    OSSL_FUNC_cipher_dupctx_fn *dupctx;
    OSSL_FUNC_cipher_encrypt_init_fn *einit;
    OSSL_FUNC_cipher_decrypt_init_fn *dinit;
    OSSL_FUNC_cipher_update_fn *update;
    OSSL_FUNC_cipher_final_fn *final;
    OSSL_FUNC_cipher_cipher_fn *cipher;
    OSSL_FUNC_cipher_get_ctx_params_fn *get_ctx_params;
    OSSL_FUNC_cipher_set_ctx_params_fn *set_ctx_params;
    int complete;
};

struct pctx {
    const struct impl *impl;
    void *inner; /* the default provider's context */
};

static struct impl gcm128, gcm256;
static void *dflt_provctx;
static OSSL_PROVIDER *dflt;

static int take_impl(struct impl *m, const OSSL_DISPATCH *d)
{
    for (; d->function_id != 0; d++) {
        switch (d->function_id) {
        case OSSL_FUNC_CIPHER_NEWCTX:
            m->newctx = OSSL_FUNC_cipher_newctx(d);
            break;
        case OSSL_FUNC_CIPHER_FREECTX:
            m->freectx = OSSL_FUNC_cipher_freectx(d);
            break;
        case OSSL_FUNC_CIPHER_DUPCTX:
            m->dupctx = OSSL_FUNC_cipher_dupctx(d);
            break;
        case OSSL_FUNC_CIPHER_ENCRYPT_INIT:
            m->einit = OSSL_FUNC_cipher_encrypt_init(d);
            break;
        case OSSL_FUNC_CIPHER_DECRYPT_INIT:
            m->dinit = OSSL_FUNC_cipher_decrypt_init(d);
            break;
        case OSSL_FUNC_CIPHER_UPDATE:
            m->update = OSSL_FUNC_cipher_update(d);
            break;
        case OSSL_FUNC_CIPHER_FINAL:
            m->final = OSSL_FUNC_cipher_final(d);
            break;
        case OSSL_FUNC_CIPHER_CIPHER:
            m->cipher = OSSL_FUNC_cipher_cipher(d);
            break;
        case OSSL_FUNC_CIPHER_GET_CTX_PARAMS:
            m->get_ctx_params = OSSL_FUNC_cipher_get_ctx_params(d);
            break;
        case OSSL_FUNC_CIPHER_SET_CTX_PARAMS:
            m->set_ctx_params = OSSL_FUNC_cipher_set_ctx_params(d);
            break;
        default:
            break;
        }
    }
    m->complete = m->newctx && m->freectx && m->dupctx && m->einit && m->dinit && m->update &&
                  m->final && m->cipher && m->get_ctx_params && m->set_ctx_params;
    return m->complete;
}

/* The default provider's AES-128/256-GCM dispatch tables (it stays loaded:
 * we hold a reference, so the tables and its context stay valid).  1 on
 * success. */
static int find_default_gcm(void)
{
    int no_cache = 0;
    const OSSL_ALGORITHM *alg = OSSL_PROVIDER_query_operation(dflt, OSSL_OP_CIPHER, &no_cache);
    if (alg == NULL || (dflt_provctx = OSSL_PROVIDER_get0_provider_ctx(dflt)) == NULL)
        return 0;
    for (; alg->algorithm_names != NULL; alg++) {
        if (strncmp(alg->algorithm_names, "AES-128-GCM:", 12) == 0)
            take_impl(&gcm128, alg->implementation);
        else if (strncmp(alg->algorithm_names, "AES-256-GCM:", 12) == 0)
            take_impl(&gcm256, alg->implementation);
    }
    OSSL_PROVIDER_unquery_operation(dflt, OSSL_OP_CIPHER, alg);
    return gcm128.complete && gcm256.complete;
}

static void *newctx(const struct impl *m)
{
    if (!m->complete)
        return NULL;
    struct pctx *p = calloc(1, sizeof *p);
    if (p == NULL)
        return NULL;
    if ((p->inner = m->newctx(dflt_provctx)) == NULL) {
        free(p);
        return NULL;
    }
    p->impl = m;
    return p;
}

static void *newctx128(void *provctx)
{
    (void)provctx;
    return newctx(&gcm128);
}

static void *newctx256(void *provctx)
{
    (void)provctx;
    return newctx(&gcm256);
}

static void freectx(void *vctx)
{
    struct pctx *p = vctx;
    p->impl->freectx(p->inner);
    free(p);
}

static void *dupctx(void *vctx)
{
    struct pctx *p = vctx, *d = calloc(1, sizeof *d);
    if (d == NULL)
        return NULL;
    d->impl = p->impl;
    if ((d->inner = p->impl->dupctx(p->inner)) == NULL) {
        free(d);
        return NULL;
    }
    return d;
}

static int einit(void *vctx, const unsigned char *key, size_t keylen, const unsigned char *iv,
                 size_t ivlen, const OSSL_PARAM params[])
{
    struct pctx *p = vctx;
    return p->impl->einit(p->inner, key, keylen, iv, ivlen, params);
}

static int dinit(void *vctx, const unsigned char *key, size_t keylen, const unsigned char *iv,
                 size_t ivlen, const OSSL_PARAM params[])
{
    struct pctx *p = vctx;
    return p->impl->dinit(p->inner, key, keylen, iv, ivlen, params);
}

struct update_job {
    struct pctx *p;
    unsigned char *out;
    const unsigned char *in;
    size_t inl, outl, outsize;
};

static void run_update(struct cpool_task *t)
{
    struct update_job *u = t->arg;
    t->ok = u->p->impl->update(u->p->inner, u->out, &u->outl, u->outsize, u->in, u->inl) == 1;
}

static int update(void *vctx, unsigned char *out, size_t *outl, size_t outsize,
                  const unsigned char *in, size_t inl)
{
    struct pctx *p = vctx;
    if (current == NULL) /* a call out of any job (tls.c): the default's, as is */
        return p->impl->update(p->inner, out, outl, outsize, in, inl);
    struct update_job u = {.p = p, .out = out, .in = in, .inl = inl, .outsize = outsize};
    struct cpool_task t = {.fn = run_update, .arg = &u};
    /* Data (not AAD) of at least the threshold, in a job: a worker seals it. */
    if (out == NULL || !async_offload(&t, 1, inl))
        run_update(&t);
    if (!t.ok)
        return 0;
    *outl = u.outl;
    return 1;
}

static int final(void *vctx, unsigned char *out, size_t *outl, size_t outsize)
{
    struct pctx *p = vctx;
    return p->impl->final(p->inner, out, outl, outsize);
}

static int cipher(void *vctx, unsigned char *out, size_t *outl, size_t outsize,
                  const unsigned char *in, size_t inl)
{
    struct pctx *p = vctx;
    return p->impl->cipher(p->inner, out, outl, outsize, in, inl);
}

static int get_ctx_params(void *vctx, OSSL_PARAM params[])
{
    struct pctx *p = vctx;
    return p->impl->get_ctx_params(p->inner, params);
}

static int set_ctx_params(void *vctx, const OSSL_PARAM params[])
{
    struct pctx *p = vctx;
    return p->impl->set_ctx_params(p->inner, params);
}

static int get_params(OSSL_PARAM params[], size_t keylen)
{
    OSSL_PARAM *q;
    if ((q = OSSL_PARAM_locate(params, OSSL_CIPHER_PARAM_MODE)) != NULL &&
        !OSSL_PARAM_set_uint(q, EVP_CIPH_GCM_MODE))
        return 0;
    if ((q = OSSL_PARAM_locate(params, OSSL_CIPHER_PARAM_KEYLEN)) != NULL &&
        !OSSL_PARAM_set_size_t(q, keylen))
        return 0;
    if ((q = OSSL_PARAM_locate(params, OSSL_CIPHER_PARAM_IVLEN)) != NULL &&
        !OSSL_PARAM_set_size_t(q, 12))
        return 0;
    if ((q = OSSL_PARAM_locate(params, OSSL_CIPHER_PARAM_BLOCK_SIZE)) != NULL &&
        !OSSL_PARAM_set_size_t(q, 1))
        return 0;
    const char *ones[] = {OSSL_CIPHER_PARAM_AEAD, OSSL_CIPHER_PARAM_CUSTOM_IV};
    const char *zeros[] = {OSSL_CIPHER_PARAM_CTS, OSSL_CIPHER_PARAM_TLS1_MULTIBLOCK,
                           OSSL_CIPHER_PARAM_HAS_RAND_KEY};
    for (size_t i = 0; i < sizeof ones / sizeof ones[0]; i++)
        if ((q = OSSL_PARAM_locate(params, ones[i])) != NULL && !OSSL_PARAM_set_int(q, 1))
            return 0;
    for (size_t i = 0; i < sizeof zeros / sizeof zeros[0]; i++)
        if ((q = OSSL_PARAM_locate(params, zeros[i])) != NULL && !OSSL_PARAM_set_int(q, 0))
            return 0;
    return 1;
}

static int get_params128(OSSL_PARAM params[]) { return get_params(params, 16); }
static int get_params256(OSSL_PARAM params[]) { return get_params(params, 32); }

static const OSSL_PARAM gettable[] = {
    OSSL_PARAM_uint(OSSL_CIPHER_PARAM_MODE, NULL),
    OSSL_PARAM_size_t(OSSL_CIPHER_PARAM_KEYLEN, NULL),
    OSSL_PARAM_size_t(OSSL_CIPHER_PARAM_IVLEN, NULL),
    OSSL_PARAM_size_t(OSSL_CIPHER_PARAM_BLOCK_SIZE, NULL),
    OSSL_PARAM_int(OSSL_CIPHER_PARAM_AEAD, NULL),
    OSSL_PARAM_int(OSSL_CIPHER_PARAM_CUSTOM_IV, NULL),
    OSSL_PARAM_int(OSSL_CIPHER_PARAM_CTS, NULL),
    OSSL_PARAM_int(OSSL_CIPHER_PARAM_TLS1_MULTIBLOCK, NULL),
    OSSL_PARAM_int(OSSL_CIPHER_PARAM_HAS_RAND_KEY, NULL),
    OSSL_PARAM_END,
};

static const OSSL_PARAM gettable_ctx[] = {
    OSSL_PARAM_size_t(OSSL_CIPHER_PARAM_KEYLEN, NULL),
    OSSL_PARAM_size_t(OSSL_CIPHER_PARAM_IVLEN, NULL),
    OSSL_PARAM_size_t(OSSL_CIPHER_PARAM_AEAD_TAGLEN, NULL),
    OSSL_PARAM_octet_string(OSSL_CIPHER_PARAM_IV, NULL, 0),
    OSSL_PARAM_octet_string(OSSL_CIPHER_PARAM_UPDATED_IV, NULL, 0),
    OSSL_PARAM_octet_string(OSSL_CIPHER_PARAM_AEAD_TAG, NULL, 0),
    OSSL_PARAM_size_t(OSSL_CIPHER_PARAM_AEAD_TLS1_AAD_PAD, NULL),
    OSSL_PARAM_octet_string(OSSL_CIPHER_PARAM_AEAD_TLS1_GET_IV_GEN, NULL, 0),
    OSSL_PARAM_END,
};

static const OSSL_PARAM settable_ctx[] = {
    OSSL_PARAM_size_t(OSSL_CIPHER_PARAM_AEAD_IVLEN, NULL),
    OSSL_PARAM_octet_string(OSSL_CIPHER_PARAM_AEAD_TAG, NULL, 0),
    OSSL_PARAM_octet_string(OSSL_CIPHER_PARAM_AEAD_TLS1_AAD, NULL, 0),
    OSSL_PARAM_octet_string(OSSL_CIPHER_PARAM_AEAD_TLS1_IV_FIXED, NULL, 0),
    OSSL_PARAM_octet_string(OSSL_CIPHER_PARAM_AEAD_TLS1_SET_IV_INV, NULL, 0),
    OSSL_PARAM_END,
};

static const OSSL_PARAM *gettable_params(void *provctx)
{
    (void)provctx;
    return gettable;
}

static const OSSL_PARAM *gettable_ctx_params(void *cctx, void *provctx)
{
    (void)cctx, (void)provctx;
    return gettable_ctx;
}

static const OSSL_PARAM *settable_ctx_params(void *cctx, void *provctx)
{
    (void)cctx, (void)provctx;
    return settable_ctx;
}

#define FN(id, f) {id, (void (*)(void))(f)}
#define GCM_FUNCTIONS(bits)                                                                       \
    static const OSSL_DISPATCH gcm##bits##_fns[] = {                                              \
        FN(OSSL_FUNC_CIPHER_NEWCTX, newctx##bits),                                                \
        FN(OSSL_FUNC_CIPHER_FREECTX, freectx),                                                    \
        FN(OSSL_FUNC_CIPHER_DUPCTX, dupctx),                                                      \
        FN(OSSL_FUNC_CIPHER_ENCRYPT_INIT, einit),                                                 \
        FN(OSSL_FUNC_CIPHER_DECRYPT_INIT, dinit),                                                 \
        FN(OSSL_FUNC_CIPHER_UPDATE, update),                                                      \
        FN(OSSL_FUNC_CIPHER_FINAL, final),                                                        \
        FN(OSSL_FUNC_CIPHER_CIPHER, cipher),                                                      \
        FN(OSSL_FUNC_CIPHER_GET_PARAMS, get_params##bits),                                        \
        FN(OSSL_FUNC_CIPHER_GET_CTX_PARAMS, get_ctx_params),                                      \
        FN(OSSL_FUNC_CIPHER_SET_CTX_PARAMS, set_ctx_params),                                      \
        FN(OSSL_FUNC_CIPHER_GETTABLE_PARAMS, gettable_params),                                    \
        FN(OSSL_FUNC_CIPHER_GETTABLE_CTX_PARAMS, gettable_ctx_params),                            \
        FN(OSSL_FUNC_CIPHER_SETTABLE_CTX_PARAMS, settable_ctx_params),                            \
        {0, NULL},                                                                                \
    };
GCM_FUNCTIONS(128)
GCM_FUNCTIONS(256)

static const OSSL_ALGORITHM ciphers[] = {
    {"AES-128-GCM:id-aes128-GCM:2.16.840.1.101.3.4.1.6", "wsstls.async=yes", gcm128_fns,
     "AES-128-GCM whose records can pause an ASYNC job"},
    {"AES-256-GCM:id-aes256-GCM:2.16.840.1.101.3.4.1.46", "wsstls.async=yes", gcm256_fns,
     "AES-256-GCM whose records can pause an ASYNC job"},
    {NULL, NULL, NULL, NULL},
};

static const OSSL_ALGORITHM *query(void *provctx, int operation_id, int *no_cache)
{
    (void)provctx;
    *no_cache = 0;
    return operation_id == OSSL_OP_CIPHER ? ciphers : NULL;
}

static void teardown(void *provctx) { (void)provctx; }

static const OSSL_DISPATCH provider_fns[] = {
    FN(OSSL_FUNC_PROVIDER_QUERY_OPERATION, query),
    FN(OSSL_FUNC_PROVIDER_TEARDOWN, teardown),
    {0, NULL},
};

static int provider_init(const OSSL_CORE_HANDLE *handle, const OSSL_DISPATCH *in,
                         const OSSL_DISPATCH **out, void **provctx)
{
    (void)handle, (void)in;
    *out = provider_fns;
    *provctx = (void *)provider_fns; /* unused, but not NULL */
    return 1;
}

/* Process-lifetime: the two providers stay loaded once loaded. */
static OSSL_PROVIDER *ours;
static pthread_once_t load_once = PTHREAD_ONCE_INIT;
static int load_ok;

static void load(void)
{
    /* Loading one provider by hand stops the default one loading by itself:
     * load it too (a no-op but for a reference when it already is). */
    if ((dflt = OSSL_PROVIDER_load(NULL, "default")) == NULL || !find_default_gcm())
        return;
    if (!OSSL_PROVIDER_add_builtin(NULL, "wsstls-async", provider_init) ||
        (ours = OSSL_PROVIDER_load(NULL, "wsstls-async")) == NULL)
        return;
    load_ok = 1;
}

int async_provider_init(void)
{
    return pthread_once(&load_once, load) == 0 && load_ok;
}
