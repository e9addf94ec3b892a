/* TLS 1.3 record protection for one direction: see tls13_protection.h. */

#include "tls13_protection.h"

#include <string.h>

#include <openssl/hmac.h>

#define TLS_AES_128_GCM_SHA256 0x03001301UL
#define TLS_AES_256_GCM_SHA384 0x03001302UL

/* HKDF-Expand-Label(secret, label, "", length) for length <= the hash length (RFC 8446 7.1): one HMAC. */
static int
expand_label(const EVP_MD *md, const unsigned char *secret, size_t secret_len, const char *label,
             unsigned char *out, size_t length)
{
    unsigned char info[2 + 1 + 6 + 32 + 1 + 1];
    size_t label_len = strlen(label);
    size_t n = 0;
    info[n++] = (unsigned char)(length >> 8);
    info[n++] = (unsigned char)length;
    info[n++] = (unsigned char)(6 + label_len);
    memcpy(info + n, "tls13 ", 6);
    n += 6;
    memcpy(info + n, label, label_len);
    n += label_len;
    info[n++] = 0;  /* empty context */
    info[n++] = 1;  /* HKDF-Expand's block counter: T(1) */
    unsigned char block[EVP_MAX_MD_SIZE];
    unsigned int block_len = 0;
    if (HMAC(md, secret, (int)secret_len, info, n, block, &block_len) == NULL || length > block_len)
        return -1;
    memcpy(out, block, length);
    OPENSSL_cleanse(block, sizeof(block));
    return 0;
}

static int
install_keys(tls13_direction *d)
{
    unsigned char key[32];
    if (expand_label(d->md, d->secret, d->secret_len, "key", key, d->key_len) < 0
            || expand_label(d->md, d->secret, d->secret_len, "iv", d->iv, TLS13_IV) < 0)
        return -1;
    int ok = EVP_CipherInit_ex(d->ctx, d->cipher, NULL, key, NULL, d->encrypt) == 1;
    OPENSSL_cleanse(key, sizeof(key));
    d->seq = 0;
    return ok ? 0 : -1;
}

int
tls13_direction_init(tls13_direction *d, unsigned long suite, const unsigned char *secret, size_t secret_len,
                     int encrypt)
{
    memset(d, 0, sizeof(*d));
    if (suite == TLS_AES_128_GCM_SHA256) {
        d->md = EVP_sha256();
        d->cipher = EVP_aes_128_gcm();
        d->key_len = 16;
    } else if (suite == TLS_AES_256_GCM_SHA384) {
        d->md = EVP_sha384();
        d->cipher = EVP_aes_256_gcm();
        d->key_len = 32;
    } else {
        return -1;
    }
    if (secret_len != (size_t)EVP_MD_get_size(d->md) || secret_len > sizeof(d->secret))
        return -1;
    d->encrypt = encrypt;
    d->secret_len = secret_len;
    memcpy(d->secret, secret, secret_len);
    d->ctx = EVP_CIPHER_CTX_new();
    if (d->ctx == NULL || install_keys(d) < 0) {
        tls13_direction_free(d);
        return -1;
    }
    return 0;
}

void
tls13_direction_free(tls13_direction *d)
{
    EVP_CIPHER_CTX_free(d->ctx);
    d->ctx = NULL;
    OPENSSL_cleanse(d->secret, sizeof(d->secret));
    OPENSSL_cleanse(d->iv, sizeof(d->iv));
}

int
tls13_key_update(tls13_direction *d)
{
    unsigned char next[EVP_MAX_MD_SIZE];
    if (expand_label(d->md, d->secret, d->secret_len, "traffic upd", next, d->secret_len) < 0)
        return -1;
    memcpy(d->secret, next, d->secret_len);
    OPENSSL_cleanse(next, sizeof(next));
    return install_keys(d);
}

/* The per-record nonce: the IV with the sequence number XORed into its last 8 bytes (RFC 8446 5.3). */
static void
nonce_of(const tls13_direction *d, unsigned char *nonce)
{
    memcpy(nonce, d->iv, TLS13_IV);
    for (int i = 0; i < 8; i++)
        nonce[TLS13_IV - 1 - i] ^= (unsigned char)(d->seq >> (8 * i));
}

size_t
tls13_sealed_size(size_t len)
{
    size_t records = len == 0 ? 1 : (len + TLS13_MAX_PLAINTEXT - 1) / TLS13_MAX_PLAINTEXT;
    return len + records * (TLS13_HEADER + 1 + TLS13_TAG);
}

static int
seal_one(tls13_direction *d, unsigned char type, const unsigned char *in, size_t len, unsigned char *out)
{
    size_t body = len + 1 + TLS13_TAG;
    unsigned char nonce[TLS13_IV];
    int n = 0;
    if (d->seq == UINT64_MAX)
        return -1;  /* a connection must not wrap its sequence number: it would reuse a nonce */
    out[0] = TLS13_APPLICATION_DATA;
    out[1] = 3;
    out[2] = 3;
    out[3] = (unsigned char)(body >> 8);
    out[4] = (unsigned char)body;
    nonce_of(d, nonce);
    unsigned char *cipher = out + TLS13_HEADER;
    if (EVP_EncryptInit_ex(d->ctx, NULL, NULL, NULL, nonce) != 1
            || EVP_EncryptUpdate(d->ctx, NULL, &n, out, TLS13_HEADER) != 1
            || (len > 0 && EVP_EncryptUpdate(d->ctx, cipher, &n, in, (int)len) != 1)
            || EVP_EncryptUpdate(d->ctx, cipher + len, &n, &type, 1) != 1
            || EVP_EncryptFinal_ex(d->ctx, cipher + len + 1, &n) != 1
            || EVP_CIPHER_CTX_ctrl(d->ctx, EVP_CTRL_AEAD_GET_TAG, TLS13_TAG, cipher + len + 1) != 1)
        return -1;
    d->seq++;
    return 0;
}

int
tls13_seal(tls13_direction *d, unsigned char type, const unsigned char *in, size_t len, unsigned char *out)
{
    do {
        size_t piece = len < TLS13_MAX_PLAINTEXT ? len : TLS13_MAX_PLAINTEXT;
        if (seal_one(d, type, in, piece, out) < 0)
            return -1;
        out += TLS13_HEADER + piece + 1 + TLS13_TAG;
        in += piece;
        len -= piece;
    } while (len > 0);
    return 0;
}

const char *
tls13_check_header(const unsigned char *header)
{
    /* Checked in OpenSSL's order, so the same bytes are refused in the same words. */
    if (header[1] != 3 || header[2] != 3)
        return "wrong version number";
    if (header[0] != TLS13_APPLICATION_DATA)
        return header[0] == TLS13_ALERT ? "unencrypted alert after the handshake" : "unexpected record type";
    size_t body = ((size_t)header[3] << 8) | header[4];
    if (body > TLS13_MAX_CIPHERTEXT)
        return "record overflow";
    if (body < 1 + TLS13_TAG)
        return "record too short";
    return NULL;
}

const char *
tls13_open(tls13_direction *d, const unsigned char *record, size_t record_len, unsigned char *out,
           size_t *content_len, unsigned char *type)
{
    const char *wrong = tls13_check_header(record);
    if (wrong != NULL)
        return wrong;
    size_t body = record_len - TLS13_HEADER;
    if (d->seq == UINT64_MAX)
        return "sequence number exhausted";
    unsigned char nonce[TLS13_IV];
    nonce_of(d, nonce);
    const unsigned char *cipher = record + TLS13_HEADER;
    size_t cipher_len = body - TLS13_TAG;
    int n = 0;
    if (EVP_DecryptInit_ex(d->ctx, NULL, NULL, NULL, nonce) != 1
            || EVP_DecryptUpdate(d->ctx, NULL, &n, record, TLS13_HEADER) != 1
            || EVP_DecryptUpdate(d->ctx, out, &n, cipher, (int)cipher_len) != 1
            || EVP_CIPHER_CTX_ctrl(d->ctx, EVP_CTRL_AEAD_SET_TAG, TLS13_TAG, (void *)(cipher + cipher_len)) != 1
            || EVP_DecryptFinal_ex(d->ctx, out + cipher_len, &n) != 1)
        return "decryption failed or bad record mac";
    d->seq++;
    /* TLSInnerPlaintext: content, the content type, then zero padding. */
    size_t end = cipher_len;
    while (end > 0 && out[end - 1] == 0)
        end--;
    if (end == 0)
        return "record without a content type";
    *type = out[end - 1];
    *content_len = end - 1;
    if (*content_len > TLS13_MAX_PLAINTEXT)
        return "record overflow";
    return NULL;
}
