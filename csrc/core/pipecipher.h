/*
 * pipecipher.h - a pipeline-capable AES-GCM for TLS 1.2, served by an ENGINE
 * of ours, whose batch of records is sealed or opened in parallel on the
 * crypto pool (cryptopool.h), the calling thread taking a share.
 *
 * Why an ENGINE: OpenSSL 3.0's libssl hands several records to one cipher
 * call only when the cipher carries EVP_CIPH_FLAG_PIPELINE, and the
 * EVP_CTRL_SET_PIPELINE_* controls reach legacy EVP_CIPHER_meth ciphers only
 * (3.5 added a provider API).  Each record is sealed by libcrypto's own
 * legacy AES-GCM (a method copy of EVP_aes_*_gcm(), AES-NI and all), one
 * inner context per pipeline slot: a method copy runs as a legacy cipher
 * without any engine, so nothing looks our engine up again (no recursion).
 *
 * Scope.  libssl takes a context's ciphers from the default ENGINE of each
 * cipher at SSL_CTX_new time, and caches them in the context; an engine that
 * stays the default takes over every user of that cipher in the process
 * (Python's ssl module included).  Ours is the default only for the duration
 * of pipecipher_ssl_ctx_new(), under a lock; during that window any other
 * thread that asks the engine gets libcrypto's stock AES-GCM, and every
 * context made before or after it gets the provider ciphers as before.  A
 * method cipher stays legacy when libssl initialises it at the key change,
 * so the engine is not needed after that.
 */
#ifndef WSSTLS_PIPECIPHER_H
#define WSSTLS_PIPECIPHER_H

#include <stddef.h>
#include <stdint.h>

#include <openssl/ssl.h>

#define PIPE_HIST 6 /* records per call: 1, 2, 3-4, 5-8, 9-16, 17-32 */

struct pipe_counters {
    uint64_t calls;          /* cipher calls (every record after ChangeCipherSpec) */
    uint64_t records;        /* records in them */
    uint64_t max_records;    /* the most records in one call */
    uint64_t hist[PIPE_HIST];
    uint64_t enc_calls, dec_calls;
    uint64_t parallel_calls; /* calls that gave records to the pool */
    uint64_t async_calls;    /* calls that paused their ASYNC job instead */
};

/* SSL_CTX_new_ex with our AES-GCM as the context's AES-128/256-GCM (TLS 1.2
 * pipelining).  NULL on failure (OpenSSL's error queue says why). */
SSL_CTX *pipecipher_ssl_ctx_new(OSSL_LIB_CTX *libctx, const char *propq, const SSL_METHOD *meth);

void pipecipher_counters(struct pipe_counters *out);
void pipecipher_reset_counters(void);

#endif
