/*
 * wshandshake.c - the opening handshake's accept key (see wshandshake.h).
 */
#include "wshandshake.h"

#include <openssl/err.h>
#include <openssl/evp.h>

/* RFC 6455 section 1.3: appended to the client's key before hashing. */
static const char WS_GUID[] = "258EAFA5-E914-47DA-95CA-C5AB0DC85B11";

int ws_accept_key(const void *key, size_t n, char out[WS_ACCEPT_SIZE + 1])
{
    unsigned char digest[EVP_MAX_MD_SIZE];
    unsigned int dlen = 0;
    out[0] = '\0';
    EVP_MD_CTX *md = EVP_MD_CTX_new();
    int ok = md != NULL && EVP_DigestInit_ex(md, EVP_sha1(), NULL) == 1 &&
             EVP_DigestUpdate(md, key, n) == 1 &&
             EVP_DigestUpdate(md, WS_GUID, sizeof WS_GUID - 1) == 1 &&
             EVP_DigestFinal_ex(md, digest, &dlen) == 1 && dlen == 20;
    EVP_MD_CTX_free(md);
    /* EVP_EncodeBlock writes 28 characters and the NUL for 20 bytes. */
    if (!ok || EVP_EncodeBlock((unsigned char *)out, digest, 20) != WS_ACCEPT_SIZE) {
        out[0] = '\0';
        ERR_clear_error();
        return 0;
    }
    return 1;
}
