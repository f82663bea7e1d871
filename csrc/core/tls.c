/*
 * tls.c - TLS contexts and connections (see tls.h).
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

#include "counter.h"
#include "ringbio.h"

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

int tls_ctx_use_pem(SSL_CTX *ctx, const char *chain, size_t chain_len, const char *key,
                    size_t key_len)
{
    if (chain_len > INT32_MAX || key_len > INT32_MAX)
        return 0;
    int ok = 0;
    X509 *leaf = NULL, *extra = NULL;
    EVP_PKEY *pkey = NULL;
    BIO *cb = BIO_new_mem_buf(chain, (int)chain_len);
    BIO *kb = BIO_new_mem_buf(key, (int)key_len);
    if (cb == NULL || kb == NULL)
        goto out;
    if ((leaf = PEM_read_bio_X509_AUX(cb, NULL, NULL, NULL)) == NULL)
        goto out;
    if (SSL_CTX_use_certificate(ctx, leaf) != 1 || !SSL_CTX_clear_chain_certs(ctx))
        goto out;
    while ((extra = PEM_read_bio_X509(cb, NULL, NULL, NULL)) != NULL) {
        if (!SSL_CTX_add0_chain_cert(ctx, extra)) /* takes ownership on success */
            goto out;
        extra = NULL;
    }
    /* The loop ends on "no start line" at the end of the data: not an error. */
    unsigned long err = ERR_peek_last_error();
    if (ERR_GET_LIB(err) == ERR_LIB_PEM && ERR_GET_REASON(err) == PEM_R_NO_START_LINE)
        ERR_clear_error();
    else if (err != 0)
        goto out;
    if ((pkey = PEM_read_bio_PrivateKey(kb, NULL, NULL, NULL)) == NULL)
        goto out;
    ok = SSL_CTX_use_PrivateKey(ctx, pkey) == 1 && SSL_CTX_check_private_key(ctx) == 1;
out:
    X509_free(extra);
    X509_free(leaf);
    EVP_PKEY_free(pkey);
    BIO_free(cb);
    BIO_free(kb);
    return ok;
}

int tls_ctx_use_files(SSL_CTX *ctx, const char *chain_file, const char *key_file)
{
    return SSL_CTX_use_certificate_chain_file(ctx, chain_file) == 1 &&
           SSL_CTX_use_PrivateKey_file(ctx, key_file, SSL_FILETYPE_PEM) == 1 &&
           SSL_CTX_check_private_key(ctx) == 1;
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

int tls_ctx_set_ciphers(SSL_CTX *ctx, const char *tls12, const char *tls13)
{
    return (tls12 == NULL || SSL_CTX_set_cipher_list(ctx, tls12) == 1) &&
           (tls13 == NULL || SSL_CTX_set_ciphersuites(ctx, tls13) == 1);
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

struct tls_conn {
    SSL *ssl;
    int transport, fd, flags;
    ring *rx, *tx;   /* TLS_RING: the ciphertext rings; MEM/PAIR: tx holds
                        what send() refused */
    BIO *ringbio;    /* TLS_RING (owned by ssl) */
    BIO *net_in;     /* MEM: the read BIO (owned by ssl); PAIR: our end */
    BIO *net_out;    /* MEM: the write BIO (owned by ssl); PAIR: our end */
    unsigned char *scratch;
    int read_status; /* sticky once the read side ended: CLOSED, EOF, ERROR */
    int dead;        /* TLS_ERROR seen: every call fails */
    int pumped_eof;  /* the pump read the end of the socket's stream */
    int sys_errno;
    char error[512];
    /* FD: kernel traffic seen through the socket BIO's callback; MEM/PAIR:
     * the pumps'.  TLS_RING keeps its own in the ring BIO. */
    counter rx_syscalls, rx_bytes, tx_syscalls, tx_bytes, eagain;
    counter bio_copies, bio_bytes, plain_in, plain_out, reads, writes;
};

/* SSL_get_error needs the thread's error queue empty before each SSL I/O
 * call.  Clearing it walks every slot (3k instructions per 64 B round trip,
 * measured): our calls drain it on every failure, so it is almost always
 * empty already and a peek settles it. */
static inline void clear_errors(void)
{
    if (ERR_peek_error() != 0)
        ERR_clear_error();
}

static int fail(tls_conn *c, int status, const char *what)
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

/* Count the socket BIO's reads and writes (one system call each). */
static long fd_callback(BIO *b, int oper, const char *argp, size_t len, int argi, long argl,
                        int ret, size_t *processed)
{
    (void)argp, (void)len, (void)argi, (void)argl;
    tls_conn *c = (tls_conn *)BIO_get_callback_arg(b);
    int read = oper == (BIO_CB_READ | BIO_CB_RETURN);
    if (c == NULL || (!read && oper != (BIO_CB_WRITE | BIO_CB_RETURN)))
        return ret;
    counter_add(read ? &c->rx_syscalls : &c->tx_syscalls, 1);
    if (ret > 0 && processed != NULL)
        counter_add(read ? &c->rx_bytes : &c->tx_bytes, *processed);
    else if (BIO_should_retry(b))
        counter_add(&c->eagain, 1);
    return ret;
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
    if (transport < TLS_RING || transport > TLS_FD || (transport == TLS_FD && fd < 0) ||
        ring_capacity == 0) {
        ERR_raise_data(ERR_LIB_SSL, ERR_R_PASSED_INVALID_ARGUMENT,
                       "transport %d, fd %d, ring capacity %zu", transport, fd, ring_capacity);
        return NULL;
    }
    tls_conn *c = calloc(1, sizeof *c);
    if (c == NULL || (c->ssl = SSL_new(ctx)) == NULL)
        goto fail;
    c->transport = transport;
    c->fd = fd;
    c->flags = flags;
    if (SSL_is_server(c->ssl))
        SSL_set_accept_state(c->ssl);
    else
        SSL_set_connect_state(c->ssl);
    if (!SSL_is_server(c->ssl) && !set_hostname(c->ssl, hostname))
        goto fail;
    if (flags & TLS_READ_AHEAD)
        SSL_set_read_ahead(c->ssl, 1);

    int ring_flags = (flags & TLS_MIRRORED_RINGS) ? RING_MIRRORED : 0;
    if (transport != TLS_FD && (c->tx = ring_create(ring_capacity, ring_flags)) == NULL)
        goto fail;
    switch (transport) {
    case TLS_RING: {
        if ((c->rx = ring_create(ring_capacity, ring_flags)) == NULL)
            goto fail;
        int via_ring = flags & (TLS_RING_VIA_RING | TLS_CALLER_IO);
        int bio_flags = via_ring ? 0 : RINGBIO_READ_FD | RINGBIO_WRITE_FD;
        if ((c->ringbio = ringbio_new(c->rx, c->tx, fd, bio_flags)) == NULL)
            goto fail;
        SSL_set_bio(c->ssl, c->ringbio, c->ringbio); /* one reference, taken */
        break;
    }
    case TLS_MEM: {
        BIO *in = BIO_new(BIO_s_mem()), *out = BIO_new(BIO_s_mem());
        if (in == NULL || out == NULL) {
            BIO_free(in);
            BIO_free(out);
            goto fail;
        }
        BIO_set_mem_eof_return(in, -1); /* empty means "retry", not EOF */
        SSL_set_bio(c->ssl, in, out);
        c->net_in = in;
        c->net_out = out;
        break;
    }
    case TLS_PAIR: {
        BIO *inner, *outer;
        if (!BIO_new_bio_pair(&inner, ring_capacity, &outer, ring_capacity))
            goto fail;
        SSL_set_bio(c->ssl, inner, inner);
        c->net_in = c->net_out = outer;
        break;
    }
    case TLS_FD: {
        if (!SSL_set_fd(c->ssl, fd))
            goto fail;
        BIO *sock = SSL_get_rbio(c->ssl); /* the same BIO reads and writes */
        BIO_set_callback_arg(sock, (char *)c);
        BIO_set_callback_ex(sock, fd_callback);
        break;
    }
    }
    if ((transport == TLS_MEM || transport == TLS_PAIR) && fd >= 0 &&
        (c->scratch = malloc(SCRATCH_SIZE)) == NULL)
        goto fail;
    return c;
fail:
    tls_conn_free(c);
    return NULL;
}

void tls_conn_free(tls_conn *c)
{
    if (c == NULL)
        return;
    SSL_free(c->ssl); /* frees the BIOs it was given */
    if (c->transport == TLS_PAIR)
        BIO_free(c->net_in);
    ring_destroy(c->rx);
    ring_destroy(c->tx);
    free(c->scratch);
    free(c);
}

/* ------------------------------------------------------------ the pumps */

/* The pump found the socket's EOF and handed it to the BIO: 1 the first
 * time, so that the caller's retry reports it now rather than at a next call
 * that no socket event may ever prompt; 0 after that. */
static long eof_in(tls_conn *c)
{
    if (c->pumped_eof)
        return 0;
    c->pumped_eof = 1;
    return 1;
}

/* MEM/PAIR with a socket: one recv into the network-side BIO.  > 0 bytes
 * moved, 0 nothing to do, or a status. */
static long pump_in(tls_conn *c)
{
    if (c->transport == TLS_RING) { /* the BIO does no socket I/O: fill its ring */
        ssize_t got = ringbio_fill(c->ringbio);
        if (got > 0)
            return got;
        if (got == 0)
            return eof_in(c); /* the BIO reports it once rx is drained */
        if (got == -EAGAIN || got == -ENOBUFS)
            return 0;
        c->sys_errno = (int)-got;
        return fail(c, TLS_ERROR, strerror(c->sys_errno));
    }
    size_t room = SCRATCH_SIZE;
    if (c->transport == TLS_PAIR)
        room = min_sz(room, BIO_ctrl_get_write_guarantee(c->net_in));
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
        c->sys_errno = errno;
        return fail(c, TLS_ERROR, strerror(errno));
    }
    if (got == 0) { /* let the SSL object see the end of the stream */
        if (c->transport == TLS_MEM)
            BIO_set_mem_eof_return(c->net_in, 0);
        else
            BIO_shutdown_wr(c->net_in);
        return eof_in(c);
    }
    counter_add(&c->rx_bytes, (uint64_t)got);
    if (BIO_write(c->net_in, c->scratch, (int)got) != got)
        return fail(c, TLS_ERROR, "BIO_write into the network BIO failed");
    counter_add(&c->bio_copies, 1);
    counter_add(&c->bio_bytes, (uint64_t)got);
    return got;
}

static size_t net_pending(tls_conn *c)
{
    return c->net_out == NULL ? 0 : (size_t)BIO_ctrl_pending(c->net_out);
}

/* MEM/PAIR with a socket: send what the SSL object wrote.  What send()
 * refuses waits in tx (so only take from the BIO what tx could absorb).
 * Returns bytes sent, or a status (WANT_WRITE when tx is still not empty). */
static long ring_out(tls_conn *c)
{
    long sent = 0;
    while (!ring_empty(c->tx)) {
        ssize_t put = ringbio_flush(c->ringbio);
        if (put == -EAGAIN)
            return sent ? sent : TLS_WANT_WRITE;
        if (put < 0) {
            c->sys_errno = (int)-put;
            return fail(c, TLS_ERROR, strerror(c->sys_errno));
        }
        sent += put;
    }
    return sent;
}

static long pump_out(tls_conn *c)
{
    if (c->transport == TLS_RING)
        return ring_out(c);
    long sent = 0;
    if (!ring_empty(c->tx)) {
        ssize_t put = ring_write_fd(c->tx, c->fd);
        counter_add(&c->tx_syscalls, 1);
        if (put == -EAGAIN)
            counter_add(&c->eagain, 1);
        else if (put < 0)
            return fail(c, TLS_ERROR, strerror(c->sys_errno = (int)-put));
        else {
            counter_add(&c->tx_bytes, (uint64_t)put);
            sent += put;
        }
        if (!ring_empty(c->tx))
            return sent ? sent : TLS_WANT_WRITE;
    }
    for (;;) {
        size_t want = min_sz(min_sz(SCRATCH_SIZE, net_pending(c)), ring_writable(c->tx));
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
                return fail(c, TLS_ERROR, strerror(c->sys_errno = errno));
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

/* With a socket, whether the compound calls move ciphertext between it and
 * the SSL object's BIO (MEM, PAIR, and RING without direct I/O), rather
 * than the BIO doing the socket I/O itself. */
static int pumped(const tls_conn *c)
{
    if (c->fd < 0 || (c->flags & TLS_CALLER_IO))
        return 0;
    return c->transport == TLS_MEM || c->transport == TLS_PAIR ||
           (c->transport == TLS_RING && (c->flags & TLS_RING_VIA_RING));
}

static void new_batch(tls_conn *c)
{
    if (c->transport == TLS_RING)
        ringbio_new_batch(c->ringbio);
}

/* ------------------------------------------------------- status mapping */

static int ssl_status(tls_conn *c, int ret)
{
    int saved_errno = errno;
    switch (SSL_get_error(c->ssl, ret)) {
    case SSL_ERROR_WANT_READ:
        return TLS_WANT_READ;
    case SSL_ERROR_WANT_WRITE:
        return TLS_WANT_WRITE;
    case SSL_ERROR_ZERO_RETURN:
        return fail(c, TLS_CLOSED, "the peer closed the TLS session");
    case SSL_ERROR_SYSCALL: {
        int err = c->transport == TLS_RING ? ringbio_last_errno(c->ringbio)
                  : c->transport == TLS_FD ? saved_errno
                                           : c->sys_errno;
        if (ERR_peek_error() == 0 && err == 0)
            return fail(c, TLS_EOF, "the transport ended without close_notify");
        c->sys_errno = err;
        size_t n = (size_t)snprintf(c->error, sizeof c->error, "%s", err ? strerror(err) : "");
        error_queue(c->error, sizeof c->error, n);
        return fail(c, TLS_ERROR, NULL);
    }
    case SSL_ERROR_SSL: {
        unsigned long e = ERR_peek_error();
        if (ERR_GET_LIB(e) == ERR_LIB_SSL && ERR_GET_REASON(e) == SSL_R_UNEXPECTED_EOF_WHILE_READING) {
            ERR_clear_error();
            return fail(c, TLS_EOF, "the transport ended without close_notify");
        }
        size_t n = error_queue(c->error, sizeof c->error, 0);
        long v = SSL_get_verify_result(c->ssl);
        if (v != X509_V_OK && n < sizeof c->error)
            snprintf(c->error + n, sizeof c->error - n, " (%s)", X509_verify_cert_error_string(v));
        return fail(c, TLS_ERROR, NULL);
    }
    default:
        error_queue(c->error, sizeof c->error, 0);
        return fail(c, TLS_ERROR, NULL);
    }
}

/* --------------------------------------------------------- compound calls */

long tls_flush(tls_conn *c)
{
    if (c->fd < 0 || c->transport == TLS_FD)
        return c->dead ? TLS_ERROR : 0;
    if (c->dead) { /* the alert OpenSSL queued is for the peer, as in flush_out */
        if (tls_pending_out(c) > 0)
            pump_out(c); /* best effort: the connection is dead either way */
        return TLS_ERROR;
    }
    return pump_out(c);
}

/* After an SSL call that may have produced records: send them, even after a
 * fatal error (so does tls_flush, for TLS_CALLER_IO): the alert OpenSSL
 * queued is for the peer, which would otherwise wait for a handshake message
 * forever. */
static int flush_out(tls_conn *c)
{
    if (c->fd >= 0 && c->transport != TLS_FD && !(c->flags & TLS_CALLER_IO) &&
        tls_pending_out(c) > 0) {
        int ended = c->read_status == TLS_EOF || c->read_status == TLS_ERROR;
        long r = pump_out(c);
        if (r == TLS_ERROR && !ended) /* else best effort: the reason is known */
            return TLS_ERROR;
    }
    return 0;
}

int tls_handshake(tls_conn *c)
{
    if (c->dead)
        return TLS_ERROR;
    new_batch(c);
    for (;;) {
        clear_errors();
        int r = SSL_do_handshake(c->ssl);
        int status = r == 1 ? 0 : ssl_status(c, r);
        if (flush_out(c) == TLS_ERROR)
            return TLS_ERROR;
        if (status == TLS_WANT_READ && pumped(c) && pump_in(c) > 0)
            continue;
        return status;
    }
}

long tls_read(tls_conn *c, void *buf, size_t n)
{
    if (c->read_status)
        return c->read_status;
    new_batch(c);
    for (;;) {
        size_t got;
        clear_errors();
        if (SSL_read_ex(c->ssl, buf, n, &got)) {
            counter_add(&c->plain_in, got);
            counter_add(&c->reads, 1);
            flush_out(c);
            return (long)got;
        }
        int status = ssl_status(c, 0);
        if (status == TLS_WANT_READ && pumped(c) && pump_in(c) > 0)
            continue;
        if (flush_out(c) == TLS_ERROR)
            return TLS_ERROR;
        return status;
    }
}

long tls_read_ring(tls_conn *c, ring *plain)
{
    if (c->read_status)
        return c->read_status;
    new_batch(c);
    long total = 0;
    int status = 0;
    for (;;) {
        size_t room, got;
        void *p = ring_reserve(plain, &room);
        if (room == 0)
            break;
        clear_errors();
        if (SSL_read_ex(c->ssl, p, room, &got)) { /* decrypted record -> ring */
            ring_commit(plain, got);
            total += (long)got;
            counter_add(&c->plain_in, got);
            counter_add(&c->reads, 1);
            /* Nothing buffered anywhere: another SSL_read would only find
             * that out (a call and an error-queue round trip per message). */
            if (c->transport == TLS_RING && !(c->flags & TLS_RING_VIA_RING) &&
                ringbio_idle(c->ringbio) && !SSL_has_pending(c->ssl))
                break;
            continue;
        }
        status = ssl_status(c, 0);
        if (status == TLS_WANT_READ && pumped(c) && pump_in(c) > 0)
            continue;
        break;
    }
    if (flush_out(c) == TLS_ERROR && total == 0)
        return TLS_ERROR;
    return total > 0 ? total : status;
}

long tls_write(tls_conn *c, const void *buf, size_t n)
{
    if (c->dead)
        return TLS_ERROR;
    size_t total = 0;
    int status = 0;
    while (total < n) {
        size_t put;
        clear_errors();
        if (SSL_write_ex(c->ssl, (const char *)buf + total, n - total, &put)) {
            total += put;
            counter_add(&c->plain_out, put);
            counter_add(&c->writes, 1);
            continue;
        }
        status = ssl_status(c, 0);
        /* PAIR: the pair's buffer is full; sending makes room. */
        if (status == TLS_WANT_WRITE && pumped(c) && pump_out(c) > 0)
            continue;
        break;
    }
    if (pumped(c) && tls_pending_out(c) > 0) {
        long r = pump_out(c);
        if (r == TLS_ERROR && total == 0)
            return TLS_ERROR;
    }
    return total > 0 ? (long)total : status;
}

long tls_fill(tls_conn *c)
{
    if (c->transport != TLS_RING || c->fd < 0)
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

size_t tls_pending_in(tls_conn *c) { return c->rx ? ring_len(c->rx) : 0; }

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

int tls_shutdown(tls_conn *c)
{
    /* Not after a fatal error (OpenSSL forbids it), an unexpected EOF is one. */
    if (c->dead || c->read_status == TLS_EOF)
        return c->read_status == TLS_EOF ? TLS_EOF : TLS_ERROR;
    /* The second call reads the peer's close_notify: from the socket (a new
     * batch for the ring BIO), or through the pump. */
    new_batch(c);
    for (;;) {
        clear_errors();
        int r = SSL_shutdown(c->ssl);
        int status = r >= 0 ? r : ssl_status(c, r);
        if (flush_out(c) == TLS_ERROR)
            return TLS_ERROR;
        if (status == TLS_WANT_READ && pumped(c) && pump_in(c) > 0)
            continue;
        return status;
    }
}

/* --------------------------------------------------------------- sans-IO */

size_t tls_feed(tls_conn *c, const void *data, size_t n)
{
    if (n > INT32_MAX)
        n = INT32_MAX;
    switch (c->transport) {
    case TLS_RING:
        return ring_write(c->rx, data, n);
    case TLS_MEM:
    case TLS_PAIR: {
        if (c->transport == TLS_PAIR)
            n = min_sz(n, BIO_ctrl_get_write_guarantee(c->net_in));
        if (n == 0)
            return 0;
        int put = BIO_write(c->net_in, data, (int)n);
        if (put <= 0)
            return 0;
        counter_add(&c->bio_copies, 1);
        counter_add(&c->bio_bytes, (uint64_t)put);
        return (size_t)put;
    }
    default:
        return 0;
    }
}

void tls_feed_eof(tls_conn *c)
{
    switch (c->transport) {
    case TLS_RING:
        ringbio_set_eof(c->ringbio);
        break;
    case TLS_MEM:
        BIO_set_mem_eof_return(c->net_in, 0);
        break;
    case TLS_PAIR:
        BIO_shutdown_wr(c->net_in);
        break;
    default:
        break;
    }
}

size_t tls_take(tls_conn *c, void *buf, size_t n)
{
    if (c->tx == NULL) /* TLS_FD: OpenSSL sends its records itself */
        return 0;
    size_t got = ring_read(c->tx, buf, n); /* RING; MEM/PAIR: send() leftovers */
    if (got == n || c->net_out == NULL)
        return got;
    int more = BIO_read(c->net_out, (char *)buf + got, (int)min_sz(n - got, INT32_MAX));
    if (more > 0) {
        counter_add(&c->bio_copies, 1);
        counter_add(&c->bio_bytes, (uint64_t)more);
        got += (size_t)more;
    }
    return got;
}

size_t tls_pending_out(tls_conn *c)
{
    return (c->tx ? ring_len(c->tx) : 0) + net_pending(c);
}

int tls_has_pending(tls_conn *c)
{
    if (SSL_pending(c->ssl) > 0 || SSL_has_pending(c->ssl))
        return 1;
    if (c->transport == TLS_RING)
        return !ring_empty(c->rx);
    if (c->transport == TLS_MEM || c->transport == TLS_PAIR)
        return BIO_ctrl_pending(c->net_in) > 0 || (c->transport == TLS_PAIR &&
                                                   BIO_ctrl_pending(SSL_get_rbio(c->ssl)) > 0);
    return 0;
}

/* ---------------------------------------------------------------- info */

const char *tls_conn_error(const tls_conn *c) { return c->error; }
int tls_conn_errno(const tls_conn *c)
{
    if (c->sys_errno == 0 && c->ringbio != NULL)
        return ringbio_last_errno(c->ringbio);
    return c->sys_errno;
}

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
    if (c->transport == TLS_RING) {
        struct ringbio_counters k;
        ringbio_counters(c->ringbio, &k);
        out->rx_syscalls = k.rx_syscalls;
        out->rx_bytes = k.rx_bytes;
        out->rx_direct = k.rx_direct;
        out->tx_syscalls = k.tx_syscalls;
        out->tx_bytes = k.tx_bytes;
        out->tx_direct = k.tx_direct;
        out->eagain = k.eagain;
    } else {
        out->rx_syscalls = counter_get(&c->rx_syscalls);
        out->rx_bytes = counter_get(&c->rx_bytes);
        out->tx_syscalls = counter_get(&c->tx_syscalls);
        out->tx_bytes = counter_get(&c->tx_bytes);
        out->eagain = counter_get(&c->eagain);
        if (c->transport == TLS_FD) { /* OpenSSL's buffers are the only ones */
            out->rx_direct = out->rx_bytes;
            out->tx_direct = out->tx_bytes;
        }
    }
    add_ring_stats(c->rx, out);
    add_ring_stats(c->tx, out);
    out->bio_copies = counter_get(&c->bio_copies);
    out->bio_bytes = counter_get(&c->bio_bytes);
    out->plain_in = counter_get(&c->plain_in);
    out->plain_out = counter_get(&c->plain_out);
    out->reads = counter_get(&c->reads);
    out->writes = counter_get(&c->writes);
}

void tls_reset_ledger(tls_conn *c)
{
    if (c->ringbio != NULL)
        ringbio_reset_counters(c->ringbio);
    if (c->rx != NULL)
        ring_reset_stats(c->rx);
    if (c->tx != NULL)
        ring_reset_stats(c->tx);
    counter *all[] = {&c->rx_syscalls, &c->rx_bytes,  &c->tx_syscalls, &c->tx_bytes,
                      &c->eagain,      &c->bio_copies, &c->bio_bytes,  &c->plain_in,
                      &c->plain_out,   &c->reads,      &c->writes};
    for (size_t i = 0; i < sizeof all / sizeof all[0]; i++)
        counter_zero(all[i]);
}
