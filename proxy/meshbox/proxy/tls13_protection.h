/* TLS 1.3 record protection (RFC 8446 section 5) for one direction of a connection: the AEAD keys
 * derived from a traffic secret, and sealing and opening of records. Used by tls_records.c once OpenSSL
 * has done the handshake; see there for why. AES-128-GCM and AES-256-GCM only. */

#ifndef MESHBOX_TLS13_PROTECTION_H
#define MESHBOX_TLS13_PROTECTION_H

#include <stddef.h>
#include <stdint.h>

#include <openssl/evp.h>

#define TLS13_HEADER 5
#define TLS13_TAG 16
#define TLS13_IV 12
#define TLS13_MAX_PLAINTEXT 16384
/* The largest ciphertext a peer may send: plaintext, content type, padding and tag (RFC 8446 5.2). */
#define TLS13_MAX_CIPHERTEXT (TLS13_MAX_PLAINTEXT + 256)

#define TLS13_APPLICATION_DATA 23
#define TLS13_ALERT 21
#define TLS13_HANDSHAKE 22

typedef struct {
    EVP_CIPHER_CTX *ctx;
    const EVP_MD *md;
    const EVP_CIPHER *cipher;
    size_t secret_len;
    size_t key_len;
    unsigned char secret[EVP_MAX_MD_SIZE];
    unsigned char iv[TLS13_IV];
    uint64_t seq;
    int encrypt;
} tls13_direction;

/* Keys for the cipher suite ``suite`` (OpenSSL's SSL_CIPHER_get_id) from ``secret``; 0 on success, -1
 * when the suite is not one of the two AES-GCM suites or OpenSSL fails. */
int tls13_direction_init(tls13_direction *d, unsigned long suite, const unsigned char *secret, size_t secret_len,
                         int encrypt);
void tls13_direction_free(tls13_direction *d);

/* The next generation of traffic keys (KeyUpdate, RFC 8446 7.2); 0 on success. */
int tls13_key_update(tls13_direction *d);

/* Bytes of the records that carry ``len`` bytes of content (split into TLS13_MAX_PLAINTEXT pieces). */
size_t tls13_sealed_size(size_t len);

/* Seal ``len`` bytes of content of ``type`` into records at ``out`` (tls13_sealed_size bytes); 0 on
 * success. */
int tls13_seal(tls13_direction *d, unsigned char type, const unsigned char *in, size_t len, unsigned char *out);

/* Why the 5-byte record header at ``header`` cannot start a protected record, or NULL when it can: read
 * before the rest of the record arrives, as OpenSSL does. */
const char *tls13_check_header(const unsigned char *header);

/* Open the whole record at ``record`` (header included) into ``out`` (room for the record's length): its
 * content is the first *content_len bytes there, of *type. NULL on success, else the reason it failed. */
const char *tls13_open(tls13_direction *d, const unsigned char *record, size_t record_len, unsigned char *out,
                       size_t *content_len, unsigned char *type);

#endif
