/* Shared by tls_records.c (the module, and records through OpenSSL) and tls13_stream.c (records through
 * tls13_protection once the handshake is done). */

#ifndef MESHBOX_TLS_RECORDS_H
#define MESHBOX_TLS_RECORDS_H

#define PY_SSIZE_T_CLEAN
#include <Python.h>

#include <openssl/ssl.h>

#include "tls13_protection.h"

/* The records of one TLS connection (the handle records_of gives). */
typedef struct {
    PyObject_HEAD
    PyObject *sock;                 /* the SSLObject's _ssl._SSLSocket: keeps ``ssl`` alive */
    SSL *ssl;
    int own;                        /* records go through rd/wr, no longer through OpenSSL */
    int mirror;                     /* own, client side: handshake records (session tickets) also go to
                                       OpenSSL, until the first record of another type */
    int failed;                     /* own: a record failed; nothing more moves */
    int got_close;                  /* own: the peer's close_notify came; nothing more is read */
    int sent_close;                 /* own: ours went out; nothing more is written */
    unsigned int secrets;           /* CLIENT_SECRET | SERVER_SECRET: traffic secrets seen in the handshake */
    size_t client_secret_len, server_secret_len;
    unsigned char client_secret[EVP_MAX_MD_SIZE];
    unsigned char server_secret[EVP_MAX_MD_SIZE];
    tls13_direction rd, wr;
    unsigned char *in;              /* own: bytes of a record not yet complete */
    size_t in_len, in_cap;
    unsigned char pending[64];      /* own: a KeyUpdate answer, sent before the next write's records */
    size_t pending_len;
} Records;

#define CLIENT_SECRET 1u
#define SERVER_SECRET 2u

extern PyObject *TlsClosed;
extern PyObject *TlsFailed;

/* Raise TlsClosed(plaintext) (reason NULL) or TlsFailed(reason, plaintext); returns NULL. */
PyObject *tls_records_raise(const char *reason, PyObject *plaintext);

/* Records through tls13_protection (tls13_stream.c). */
PyObject *tls13_stream_read(Records *r, const unsigned char *data, size_t len);
PyObject *tls13_stream_write(Records *r, const unsigned char *data, size_t len);
PyObject *tls13_stream_shutdown(Records *r);

#endif
