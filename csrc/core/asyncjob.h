/*
 * asyncjob.h - OpenSSL ASYNC jobs for wsstls connections: the built-in
 * provider whose AES-GCM hands records to the crypto pool and pauses the SSL
 * call (ASYNC_pause_job), and the per-connection state both it and the
 * pipelined cipher (pipecipher.h) use to pause.
 *
 * The provider ("wsstls-async", added with OSSL_PROVIDER_add_builtin) offers
 * AES-128-GCM and AES-256-GCM with the property "wsstls.async=yes".  Only
 * contexts made with the property query "?wsstls.async=yes" (SSL_CTX_new_ex)
 * prefer it; every other fetch in the process never sees it.  It serves TLS
 * 1.2 (the TLS AAD / fixed IV controls) and TLS 1.3 (plain AEAD calls).
 *
 * A connection in async mode owns an async_conn and makes it current on its
 * thread around each SSL call (async_enter/async_leave).  Inside the call,
 * when a record's bytes reach the connection's threshold and the call runs
 * in an ASYNC job, the work goes to the pool and the job pauses; the SSL call
 * returns SSL_ERROR_WANT_ASYNC and the connection's eventfd (the only
 * completion signal) becomes readable when the work is done.  The caller
 * resumes by repeating exactly the same SSL call.  Smaller records, or calls
 * outside a job, are sealed inline.
 */
#ifndef WSSTLS_ASYNCJOB_H
#define WSSTLS_ASYNCJOB_H

#include <stddef.h>
#include <stdint.h>

#include <openssl/ssl.h>

#include "cryptopool.h"

#define ASYNC_PROPQ "?wsstls.async=yes"

struct async_counters {
    uint64_t pauses;   /* ASYNC_pause_job calls */
    uint64_t resumes;  /* returns from them */
    uint64_t inline_ops; /* AEAD calls of a job's SSL call sealed inline (below the
                            threshold); calls out of jobs are not counted here */
    uint64_t offloaded;  /* AEAD calls (or pipelined batches) that paused */
    uint64_t want_async; /* SSL calls that returned SSL_ERROR_WANT_ASYNC */
    uint64_t job_calls;    /* SSL calls run in an ASYNC job (SSL_MODE_ASYNC on) */
    uint64_t direct_calls; /* SSL calls kept out of jobs: nothing to offload */
};

struct async_conn;

/* Register and load the provider (once per process).  1 on success. */
int async_provider_init(void);

/* A connection's async state: its eventfd, threshold (bytes). NULL on failure. */
struct async_conn *async_conn_new(size_t threshold);
/* Free it; the caller makes sure no work is in flight (async_conn_busy). */
void async_conn_free(struct async_conn *ac);
/* 1 while the pool holds work of this connection. */
int async_conn_busy(const struct async_conn *ac);
/* Block until the pool has finished this connection's work (shutdown paths). */
void async_conn_wait_idle(struct async_conn *ac);
int async_conn_fd(const struct async_conn *ac);
/* 1 when the connection's eventfd is readable: its paused job's work is done
 * (a poll, the count stays for the job to read). */
int async_conn_ready(const struct async_conn *ac);
/* The SSL call returned SSL_ERROR_WANT_ASYNC (counted by the caller). */
void async_conn_want(struct async_conn *ac);
/* An SSL call ran in a job (in_job 1) or out of one (0), counted by the caller. */
void async_conn_call(struct async_conn *ac, int in_job);
/* The connection's offload threshold, bytes. */
size_t async_conn_threshold(const struct async_conn *ac);
void async_conn_counters(const struct async_conn *ac, struct async_counters *out);

/* Make ac current on this thread for the duration of one SSL call. */
void async_enter(struct async_conn *ac);
void async_leave(void);

/* For the ciphers: run n tasks on the pool and pause the current ASYNC job
 * until they are done.  Returns 1 when they ran that way, 0 when the caller
 * must run them itself (no current async connection, not in a job, fewer
 * than threshold bytes, or no pool). */
int async_offload(struct cpool_task *tasks, size_t n, size_t bytes);

/* Process-wide sums of every connection's counters. */
void async_global_counters(struct async_counters *out);
void async_reset_global_counters(void);

#endif
