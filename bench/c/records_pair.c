/*
 * records_pair.c - one 64 B (or any size) message through a TLS 1.3
 * connection pair, sans-IO over the ring transport, in a loop: the client's
 * tls_write then the server's tls_read.  bench/records_bench.py runs it
 * under callgrind, collecting only inside the calls it names, so the bytes
 * moved between the two connections (the stand-in for the kernel) are not
 * counted.
 *
 *   records_pair openssl|direct SUITE SIZE ITERATIONS
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <openssl/ssl.h>

#include "core/tls.h"

static void die(const char *what)
{
    char buf[512];
    tls_last_error(buf, sizeof buf);
    fprintf(stderr, "records_pair: %s: %s\n", what, buf);
    exit(1);
}

static void move(tls_conn *from, tls_conn *to)
{
    static unsigned char buf[1 << 17];
    size_t n;
    while ((n = tls_take(from, buf, sizeof buf)) > 0)
        if (tls_feed(to, buf, n) != n)
            die("feed");
}

int main(int argc, char **argv)
{
    if (argc != 5)
        die("usage: records_pair openssl|direct SUITE SIZE ITERATIONS");
    int direct = strcmp(argv[1], "direct") == 0;
    size_t size = strtoul(argv[3], NULL, 10);
    long iterations = strtol(argv[4], NULL, 10);
    char *cert, *key;
    size_t cert_len, key_len;
    if (!tls_self_signed("localhost", 2048, 1, &cert, &cert_len, &key, &key_len))
        die("certificate");
    SSL_CTX *sctx = tls_ctx_new(1), *cctx = tls_ctx_new(0);
    if (!sctx || !cctx || !tls_ctx_use_pem(sctx, cert, cert_len, key, key_len) ||
        !tls_ctx_set_verify(cctx, 0, NULL, NULL, 0) ||
        !tls_ctx_set_versions(sctx, TLS1_3_VERSION, TLS1_3_VERSION) ||
        !tls_ctx_set_ciphers(sctx, NULL, argv[2]) || !tls_ctx_set_ciphers(cctx, NULL, argv[2]) ||
        !tls_ctx_set_record_path(sctx, direct) || !tls_ctx_set_record_path(cctx, direct))
        die("contexts");
    tls_conn *c = tls_conn_new(cctx, TLS_RING, -1, 1 << 17, TLS_READ_AHEAD, "localhost");
    tls_conn *s = tls_conn_new(sctx, TLS_RING, -1, 1 << 17, TLS_READ_AHEAD, NULL);
    if (!c || !s)
        die("connections");
    int cd = 1, sd = 1;
    for (int i = 0; i < 50 && (cd || sd); i++) {
        if (cd)
            cd = tls_handshake(c);
        move(c, s);
        if (sd)
            sd = tls_handshake(s);
        move(s, c);
    }
    unsigned char *msg = calloc(1, size + 1), *got = malloc(size + 1);
    if (cd || sd || !msg || !got)
        die("handshake");
    if (tls_read(c, got, size) != TLS_WANT_READ) /* the tickets */
        die("tickets");
    if (strcmp(tls_records(c), argv[1]) != 0 || strcmp(tls_records(s), argv[1]) != 0)
        die("record path");
    for (long i = 0; i < iterations; i++) {
        msg[0] = (unsigned char)i;
        if (tls_write(c, msg, size) != (long)size)
            die("write");
        move(c, s);
        if (tls_read(s, got, size) != (long)size || got[0] != msg[0])
            die("read");
    }
    printf("%s %s %zu %ld ok\n", argv[1], tls_cipher(s), size, iterations);
    tls_conn_free(c);
    tls_conn_free(s);
    tls_ctx_free(cctx);
    tls_ctx_free(sctx);
    tls_free(cert);
    tls_free(key);
    free(msg);
    free(got);
    return 0;
}
