/* A TLS 1.3 connection's records after the handshake, without OpenSSL's record layer: the byte stream
 * cut into records, each opened or sealed by tls13_protection, and the few post-handshake messages a
 * peer may send (RFC 8446 4.6): session tickets and key updates. See tls_records.c for when and why. */

#include "tls_records.h"

#include <openssl/err.h>

#define NEW_SESSION_TICKET 4
#define KEY_UPDATE 24

/* Fail the connection: nothing more moves through it. */
static PyObject *
fail(Records *r, const char *reason, PyObject *plaintext)
{
    r->failed = 1;
    return tls_records_raise(reason, plaintext);
}

/* A handshake record, client side, before any other record: OpenSSL reads it (a session ticket it keeps
 * for resumption). Its read sequence number matches ours: it has seen every record before this one. */
static const char *
give_to_openssl(Records *r, const unsigned char *record, size_t len)
{
    unsigned char none[1];
    size_t got = 0;
    ERR_clear_error();
    if (BIO_write(SSL_get_rbio(r->ssl), record, (int)len) != (int)len)
        return "out of memory";
    int ret = SSL_read_ex(r->ssl, none, sizeof(none), &got);
    if (ret || SSL_get_error(r->ssl, ret) != SSL_ERROR_WANT_READ || BIO_ctrl_pending(SSL_get_rbio(r->ssl)) != 0) {
        ERR_clear_error();
        return "post-handshake message refused";
    }
    return NULL;
}

/* Key updates and session tickets after the handshake; each message whole in its record. */
static const char *
post_handshake(Records *r, const unsigned char *msg, size_t len)
{
    while (len > 0) {
        if (len < 4)
            return "fragmented post-handshake message";
        size_t body = ((size_t)msg[1] << 16) | ((size_t)msg[2] << 8) | msg[3];
        if (body > len - 4)
            return "fragmented post-handshake message";
        if (msg[0] == KEY_UPDATE) {
            if (body != 1 || msg[4] > 1)
                return "malformed key update";
            if (tls13_key_update(&r->rd) < 0)
                return "key update failed";
            if (msg[4] == 1 && r->pending_len == 0) {
                /* update_requested: answer with ours (not requesting), then use the next write keys. */
                static const unsigned char answer[5] = {KEY_UPDATE, 0, 0, 1, 0};
                if (tls13_seal(&r->wr, TLS13_HANDSHAKE, answer, sizeof(answer), r->pending) < 0
                        || tls13_key_update(&r->wr) < 0)
                    return "key update failed";
                r->pending_len = tls13_sealed_size(sizeof(answer));
            }
        } else if (msg[0] != NEW_SESSION_TICKET) {
            /* A ticket after the first application data is dropped: the connection has one already. */
            return "unexpected post-handshake message";
        }
        msg += 4 + body;
        len -= 4 + body;
    }
    return NULL;
}

/* Keep the ``len`` bytes at ``rest`` (a record not yet complete) for the next call. */
static int
keep_rest(Records *r, const unsigned char *rest, size_t len)
{
    if (len > r->in_cap) {
        unsigned char *grown = PyMem_Realloc(r->in, len);
        if (grown == NULL) {
            PyErr_NoMemory();
            return -1;
        }
        r->in = grown;
        r->in_cap = len;
    }
    memmove(r->in, rest, len);
    r->in_len = len;
    return 0;
}

/* TlsFailed(reason, b""). */
static PyObject *
refuse(const char *reason)
{
    PyObject *empty = PyBytes_FromStringAndSize(NULL, 0);
    PyObject *result = empty == NULL ? NULL : tls_records_raise(reason, empty);
    Py_XDECREF(empty);
    return result;
}

PyObject *
tls13_stream_read(Records *r, const unsigned char *data, size_t len)
{
    if (r->failed)
        return refuse("the connection already failed");
    if (r->got_close) {
        PyObject *empty = PyBytes_FromStringAndSize(NULL, 0);
        PyObject *result = empty == NULL ? NULL : tls_records_raise(NULL, empty);
        Py_XDECREF(empty);
        return result;
    }
    const unsigned char *src = data;
    size_t src_len = len;
    if (r->in_len > 0) {
        /* A record began in an earlier call: complete it in the buffer. */
        size_t need = r->in_len + len;
        if (need > r->in_cap) {
            unsigned char *grown = PyMem_Realloc(r->in, need);
            if (grown == NULL)
                return PyErr_NoMemory();
            r->in = grown;
            r->in_cap = need;
        }
        memcpy(r->in + r->in_len, data, len);
        r->in_len = need;
        src = r->in;
        src_len = need;
    }
    /* Content is never longer than the records that carry it. */
    PyObject *out = PyBytes_FromStringAndSize(NULL, (Py_ssize_t)src_len);
    if (out == NULL)
        return NULL;
    unsigned char *plain = (unsigned char *)PyBytes_AS_STRING(out);
    size_t plain_len = 0, off = 0;
    const char *error = NULL;
    int closed = 0;
    while (error == NULL && !closed && src_len - off >= TLS13_HEADER) {
        const unsigned char *record = src + off;
        size_t body = ((size_t)record[3] << 8) | record[4];
        if ((error = tls13_check_header(record)) != NULL)
            break;
        if (src_len - off < TLS13_HEADER + body)
            break;
        size_t content_len = 0;
        unsigned char type = 0;
        error = tls13_open(&r->rd, record, TLS13_HEADER + body, plain + plain_len, &content_len, &type);
        if (error != NULL)
            break;
        if (type == TLS13_APPLICATION_DATA) {
            r->mirror = 0;
            plain_len += content_len;
        } else if (type == TLS13_HANDSHAKE) {
            error = content_len == 0 ? "empty handshake record" : r->mirror ? give_to_openssl(r, record, TLS13_HEADER + body)
                              : post_handshake(r, plain + plain_len, content_len);
        } else if (type == TLS13_ALERT) {
            r->mirror = 0;
            if (content_len == 2 && plain[plain_len + 1] == 0) {
                closed = 1;  /* close_notify */
            } else {
                static char alert[48];
                snprintf(alert, sizeof(alert), "the peer sent alert %d", content_len == 2 ? plain[plain_len + 1] : -1);
                error = alert;
            }
        } else {
            error = "unexpected content type";
        }
        off += TLS13_HEADER + body;
    }
    if (error == NULL && !closed && keep_rest(r, src + off, src_len - off) < 0) {
        Py_DECREF(out);
        return NULL;
    }
    if (_PyBytes_Resize(&out, (Py_ssize_t)plain_len) < 0)
        return NULL;
    if (error == NULL && !closed)
        return out;
    PyObject *result;
    if (closed) {
        r->got_close = 1;
        result = tls_records_raise(NULL, out);
    } else {
        result = fail(r, error, out);
    }
    Py_DECREF(out);
    return result;
}

PyObject *
tls13_stream_write(Records *r, const unsigned char *data, size_t len)
{
    if (r->failed || r->sent_close)
        return refuse(r->failed ? "the connection already failed" : "the connection was shut down");
    size_t sealed = len > 0 ? tls13_sealed_size(len) : 0;
    PyObject *out = PyBytes_FromStringAndSize(NULL, (Py_ssize_t)(r->pending_len + sealed));
    if (out == NULL)
        return NULL;
    unsigned char *dst = (unsigned char *)PyBytes_AS_STRING(out);
    memcpy(dst, r->pending, r->pending_len);
    if (len > 0 && tls13_seal(&r->wr, TLS13_APPLICATION_DATA, data, len, dst + r->pending_len) < 0) {
        Py_DECREF(out);
        r->failed = 1;
        return refuse("encryption failed");
    }
    r->pending_len = 0;
    return out;
}

PyObject *
tls13_stream_shutdown(Records *r)
{
    static const unsigned char close_notify[2] = {1, 0};
    if (r->failed || r->sent_close)
        return PyBytes_FromStringAndSize(NULL, 0);
    r->sent_close = 1;
    PyObject *out = PyBytes_FromStringAndSize(NULL, (Py_ssize_t)(r->pending_len + tls13_sealed_size(2)));
    if (out == NULL)
        return NULL;
    unsigned char *dst = (unsigned char *)PyBytes_AS_STRING(out);
    memcpy(dst, r->pending, r->pending_len);
    if (tls13_seal(&r->wr, TLS13_ALERT, close_notify, sizeof(close_notify), dst + r->pending_len) < 0) {
        Py_DECREF(out);
        return PyBytes_FromStringAndSize(NULL, 0);
    }
    r->pending_len = 0;
    return out;
}
