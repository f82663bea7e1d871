/*
 * records.h - TLS 1.3 application-data records sealed and opened by wsstls
 * itself with OpenSSL's AEAD, after OpenSSL's handshake (as kTLS does in the
 * kernel, in user space): ciphertext is opened straight from the incoming
 * ring into the plaintext ring, and sealed straight from the caller's
 * buffer (or the plaintext ring) into the outgoing ring, one AEAD pass each.
 *
 * Hand-over.  records_ctx_enable() installs a keylog callback on a context;
 * records_tap_new() attaches a per-connection tap before the handshake that
 * keeps the two application traffic secrets and counts, through the message
 * callback's SSL3_RT_HEADER reports, the records OpenSSL already sealed or
 * opened with the application keys (the server's NewSessionTickets).  After
 * the handshake records_take_over() checks that OpenSSL holds nothing
 * (TLS 1.3, one of the three AEAD suites, no plaintext or record data
 * buffered, no early data, every record read also decrypted) and returns the
 * record layer, or NULL with the reason the connection stays on OpenSSL's.
 *
 * Records: AES-128-GCM, AES-256-GCM, ChaCha20-Poly1305; nonce = IV xor
 * sequence number; the inner content type after the content, no padding
 * sent, any padding accepted.  Post-handshake messages, reassembled across
 * records: KeyUpdate both ways (update_requested answered once, before the
 * next record we seal), NewSessionTicket (client: checked and dropped),
 * anything else is unexpected.  Alerts: close_notify both ways; on a bad
 * record the fatal alert is sealed into the outgoing ring.  Limits: records
 * up to 2^14 + 256 bytes of ciphertext (less with a negotiated max fragment
 * length), AEAD usage limits (RFC 8446 5.5): the write key is updated before
 * them; the read side asks the peer for an update when it reaches them.
 *
 * Calls return a byte count >= 0 or an enum records_status (< 0).  After
 * RECORDS_ERROR the record layer is dead; records_error() says why.
 * The rings are borrowed, by the address of the owner's pointer to each: the
 * owner may replace a ring (free it while idle, make it again) between calls.  One thread
 * at a time runs a record layer (the rings' other sides may be elsewhere).
 */
#ifndef WSSTLS_RECORDS_H
#define WSSTLS_RECORDS_H

#include <stddef.h>
#include <stdint.h>

#include <openssl/ssl.h>

#include "ring.h"

/* The largest record a peer may send (RFC 8446 5.2: header + 2^14 + 256): the
 * layer opens whole records in the incoming ring, so that ring must hold one. */
#define RECORDS_MAX_RECORD (5 + 16384 + 256)

enum records_suite {
    RECORDS_AES_128_GCM = 1,
    RECORDS_AES_256_GCM = 2,
    RECORDS_CHACHA20_POLY1305 = 3,
};

enum records_status {
    RECORDS_WANT_READ = -1,  /* no complete record: more ciphertext needed */
    RECORDS_WANT_WRITE = -2, /* the outgoing ring has no room for a record */
    RECORDS_CLOSED = -3,     /* the peer's close_notify */
    RECORDS_EOF = -4,        /* the stream ended without close_notify */
    RECORDS_ERROR = -5,      /* fatal: an alert was sealed for the peer */
};

typedef struct records records;

/* --------------------------------------------------------------- hand-over */

typedef struct records_tap records_tap;

/* Install the keylog callback the taps need (once per context); whether a
 * context has it. */
int records_ctx_enable(SSL_CTX *ctx);
int records_ctx_enabled(const SSL_CTX *ctx);
/* Attach a tap to ssl before its handshake; NULL on allocation failure. */
records_tap *records_tap_new(SSL *ssl);
/* Detach from ssl (when still attached) and wipe the secrets it holds. */
void records_tap_free(records_tap *t, SSL *ssl);
/* After the handshake: the record layer over the ciphertext rings, or NULL
 * with why it cannot take over (then the connection stays on OpenSSL's
 * records).  Either way the tap is detached and its secrets wiped. */
records *records_take_over(records_tap *t, SSL *ssl, ring **in, ring **out, char *why,
                           size_t why_len);

/* ------------------------------------------------------------ record layer */

/* From raw traffic secrets (secret_len: the suite's hash length) and the
 * sequence numbers to start at; server: this end's role (which post-handshake
 * messages it may receive).  The caller wipes its copies.  NULL on failure
 * (OpenSSL's error queue says why). */
records *records_new(int server, int suite, const unsigned char *read_secret,
                     const unsigned char *write_secret, size_t secret_len, uint64_t read_seq,
                     uint64_t write_seq, ring **in, ring **out);
void records_free(records *r); /* wipes keys and secrets */
/* An idle connection (tls_park): free the spill and post-handshake message
 * buffers when they hold nothing (both are made again when needed). */
void records_trim(records *r);

/* Plaintext limit per record in both directions (512 .. 16384). */
void records_set_max_fragment(records *r, size_t n);
/* AEAD usage limit per key, in records (tests lower it; 0 restores the
 * suite's default). */
void records_set_key_limit(records *r, uint64_t records_per_key);
/* The end of the incoming stream: no more ciphertext will come. */
void records_set_eof(records *r);

/* Open every complete record in the incoming ring into plain's free space:
 * plaintext bytes added, or a status when none were. */
long records_read_ring(records *r, ring *plain);
/* The same into a buffer (what does not fit is kept for the next call). */
long records_read(records *r, void *buf, size_t n);
/* Seal n bytes into records in the outgoing ring: bytes taken (fewer when
 * the ring fills), or a status when none were. */
long records_write(records *r, const void *buf, size_t n);
/* Seal up to n readable bytes of a ring straight from its memory, and
 * consume what was taken. */
long records_write_ring(records *r, ring *plain, size_t n);
/* Seal close_notify (once): 1 when the peer's was received too, 0 when not
 * (yet), or a status (WANT_WRITE: no room yet). */
int records_close(records *r);
/* Seal what is owed (a KeyUpdate answer): 0, or a status. */
int records_flush(records *r);

/* 1 when a read would make progress without new ciphertext: plaintext kept
 * back, or a complete record in the incoming ring. */
int records_has_pending(const records *r);
const char *records_error(const records *r);
/* The alert sealed for the peer (RFC 8446 6 description), -1 if none. */
int records_alert_sent(const records *r);
/* Whether our close_notify was sealed. */
int records_close_sent(const records *r);
/* The peer's fatal alert, -1 if none. */
int records_alert_received(const records *r);

struct records_counters {
    uint64_t sealed, opened;          /* records */
    uint64_t plain_out, plain_in;     /* application bytes */
    uint64_t key_updates_sent, key_updates_received;
    uint64_t tickets;                 /* NewSessionTickets dropped */
    uint64_t spill_copies, spill_bytes; /* plaintext kept back, then copied */
    uint64_t write_seq, read_seq;     /* of the current keys */
};
void records_counters(const records *r, struct records_counters *out);

/* ----------------------------------------------------- for tests and fuzzing */

/* Feed post-handshake handshake bytes (record contents, in order) to the
 * message parser: 0, or RECORDS_ERROR with the alert sealed.  `aligned`:
 * these bytes ended a record. */
int records_handshake_input(records *r, const unsigned char *data, size_t n, int aligned);
/* Seal one record of any inner content type with `pad` zero bytes of
 * padding (a peer's behaviour the tests need): 0 or a status. */
int records_seal_raw(records *r, int type, const unsigned char *data, size_t n, size_t pad);
/* Seal a KeyUpdate (request: update_requested) and update the write key. */
int records_key_update(records *r, int request);

#endif
