/* The per-record work of the proxy's TLS layer (tls_layer.py): decrypt what arrived, encrypt what is
 * sent, one call each way, for a connection whose handshake an ssl.SSLObject on memory BIOs does.
 *
 * Why C: through the ssl module, every read ends in an SSLWantReadError raised and caught and every record
 * costs several Python-level calls; and OpenSSL 3.0's own record layer sets its cipher up through provider
 * parameter lookups on every record. Once the handshake is done, a TLS 1.3 connection with an AES-GCM
 * suite has its records sealed and opened here (tls13_stream.c, tls13_protection.c) with keys derived
 * from the traffic secrets OpenSSL reports through its key-log callback, as kernel TLS takes them over;
 * OpenSSL keeps the certificates, the session and everything the ssl module reports about the
 * connection. Any other connection keeps OpenSSL's record layer, driven here without exceptions.
 *
 * The SSL pointer is read from CPython's _ssl._SSLSocket (what ssl.SSLObject wraps), whose C struct is private:
 * its head (object header, socket weakref, SSL pointer) is the same in CPython 3.8 to 3.13, the build
 * refuses other versions, and module initialisation checks the layout on a fresh object (the SSL's read
 * BIO must be the MemoryBIO it was made with) before any call can use it. The key-log callback this
 * installs on a context replaces the ssl module's (SSLContext.keylog_filename is not honoured for
 * connections through this layer). Single-threaded use with the GIL held, like the rest of the proxy.
 *
 * A pure-Python build uses tls_records_pure.py, which has the same functions over the ssl module. */

#include "tls_records.h"

#include <openssl/err.h>

#if PY_VERSION_HEX < 0x03080000 || PY_VERSION_HEX >= 0x030E0000
#error "tls_records reads the head of CPython's private PySSLSocket struct: its layout is checked for 3.8 to 3.13"
#endif

/* The head of CPython's PySSLSocket and PySSLMemoryBIO (Modules/_ssl.c). */
typedef struct {
    PyObject_HEAD
    PyObject *socket;
    SSL *ssl;
} SslSocketHead;

typedef struct {
    PyObject_HEAD
    BIO *bio;
} MemoryBioHead;

static PyTypeObject *ssl_socket_type;
static PyTypeObject *memory_bio_type;
static int ex_index = -1;       /* the SSL's Records, for the key-log callback */
PyObject *TlsClosed;            /* the peer sent close_notify: args (plaintext before it,) */
PyObject *TlsFailed;            /* a record failed: args (reason, plaintext before it) */

/* Plaintext is read here first: one copy into the bytes object returned when it fits. */
/* Plaintext through OpenSSL's record layer is read here first: one copy into the bytes returned. */
static char scratch[65536];

/* --- The handle ------------------------------------------------------------------------------------- */

static void
records_dealloc(Records *r)
{
    if (r->ssl != NULL && ex_index >= 0)
        SSL_set_ex_data(r->ssl, ex_index, NULL);
    if (r->own) {
        tls13_direction_free(&r->rd);
        tls13_direction_free(&r->wr);
    }
    OPENSSL_cleanse(r->client_secret, sizeof(r->client_secret));
    OPENSSL_cleanse(r->server_secret, sizeof(r->server_secret));
    PyMem_Free(r->in);
    Py_XDECREF(r->sock);
    Py_TYPE(r)->tp_free((PyObject *)r);
}

static PyTypeObject RecordsType = {
    PyVarObject_HEAD_INIT(NULL, 0)
    .tp_name = "meshbox.proxy.tls_records.Records",
    .tp_basicsize = sizeof(Records),
    .tp_dealloc = (destructor)records_dealloc,
    .tp_flags = Py_TPFLAGS_DEFAULT,
    .tp_doc = "The records of one TLS connection: the handle records_of() gives.",
};

static Records *
records(PyObject *handle)
{
    if (Py_TYPE(handle) != &RecordsType) {
        PyErr_Format(PyExc_TypeError, "expected the handle records_of() gives, got %.100s", Py_TYPE(handle)->tp_name);
        return NULL;
    }
    return (Records *)handle;
}

static int
unhex(const char *hex, unsigned char *out, size_t cap, size_t *len)
{
    size_t n = 0;
    for (; hex[0] && hex[1] && n < cap; hex += 2) {
        unsigned int byte;
        if (sscanf(hex, "%2x", &byte) != 1)
            return -1;
        out[n++] = (unsigned char)byte;
    }
    *len = n;
    return hex[0] == 0 ? 0 : -1;
}

/* OpenSSL's key-log callback: keeps this connection's application traffic secrets. */
static void
keylog(const SSL *ssl, const char *line)
{
    Records *r = ex_index >= 0 ? SSL_get_ex_data(ssl, ex_index) : NULL;
    if (r == NULL)
        return;
    const char *client = "CLIENT_TRAFFIC_SECRET_0 ", *server = "SERVER_TRAFFIC_SECRET_0 ";
    int is_client = strncmp(line, client, strlen(client)) == 0;
    if (!is_client && strncmp(line, server, strlen(server)) != 0)
        return;
    const char *secret = strchr(line + strlen(client), ' ');  /* after the client random */
    if (secret == NULL)
        return;
    if (is_client && unhex(secret + 1, r->client_secret, sizeof(r->client_secret), &r->client_secret_len) == 0)
        r->secrets |= CLIENT_SECRET;
    else if (!is_client && unhex(secret + 1, r->server_secret, sizeof(r->server_secret), &r->server_secret_len) == 0)
        r->secrets |= SERVER_SECRET;
}

PyDoc_STRVAR(records_of_doc,
"records_of(ssl_object, incoming, outgoing) -> handle\n\n"
"The records of ``ssl_object`` (an _ssl._SSLSocket made on the memory BIOs ``incoming`` and\n"
"``outgoing``, before its handshake): what the other functions take. Valid while ``ssl_object`` lives.");

static PyObject *
records_of(PyObject *self, PyObject *const *args, Py_ssize_t nargs)
{
    if (nargs != 3)
        return PyErr_Format(PyExc_TypeError, "records_of(ssl_object, incoming, outgoing) takes 3 arguments");
    PyObject *sock = args[0];
    if (Py_TYPE(sock) != ssl_socket_type || Py_TYPE(args[1]) != memory_bio_type || Py_TYPE(args[2]) != memory_bio_type)
        return PyErr_Format(PyExc_TypeError, "expected an _ssl._SSLSocket and its two _ssl.MemoryBIO, got %.100s",
                            Py_TYPE(sock)->tp_name);
    SSL *ssl = ((SslSocketHead *)sock)->ssl;
    if (SSL_get_rbio(ssl) != ((MemoryBioHead *)args[1])->bio || SSL_get_wbio(ssl) != ((MemoryBioHead *)args[2])->bio)
        return PyErr_Format(PyExc_ValueError, "the memory BIOs are not the ones this SSL object was made on");
    Records *r = PyObject_New(Records, &RecordsType);
    if (r == NULL)
        return NULL;
    memset((char *)r + sizeof(PyObject), 0, sizeof(Records) - sizeof(PyObject));
    Py_INCREF(sock);
    r->sock = sock;
    r->ssl = ssl;
    SSL_set_ex_data(ssl, ex_index, r);
    SSL_CTX_set_keylog_callback(SSL_get_SSL_CTX(ssl), keylog);
    return (PyObject *)r;
}

/* How many records ``data`` holds (whole ones). */
static size_t
count_records(const unsigned char *data, size_t len)
{
    size_t n = 0;
    while (len >= TLS13_HEADER) {
        size_t record = TLS13_HEADER + (((size_t)data[3] << 8) | data[4]);
        if (record > len)
            break;
        n++;
        data += record;
        len -= record;
    }
    return n;
}

PyDoc_STRVAR(after_handshake_doc,
"after_handshake(handle, flushed) -> bool\n\n"
"Called once the handshake is done, with ``flushed``, the ciphertext its last step produced (still to be\n"
"sent): True when the connection's records are sealed and opened here from now on, False when they stay\n"
"with OpenSSL (not TLS 1.3, or a suite other than AES-GCM).");

static PyObject *
after_handshake(PyObject *self, PyObject *const *args, Py_ssize_t nargs)
{
    Records *r;
    Py_buffer flushed;
    if (nargs != 2 || (r = records(args[0])) == NULL)
        return nargs != 2 ? PyErr_Format(PyExc_TypeError, "after_handshake(handle, flushed) takes 2 arguments") : NULL;
    if (PyObject_GetBuffer(args[1], &flushed, PyBUF_SIMPLE) < 0)
        return NULL;
    SSL *ssl = r->ssl;
    int server = SSL_is_server(ssl);
    BIO *rbio = SSL_get_rbio(ssl);
    size_t waiting = BIO_ctrl_pending(rbio);
    int usable = !r->own && r->secrets == (CLIENT_SECRET | SERVER_SECRET) && SSL_version(ssl) == TLS1_3_VERSION
                 && !SSL_has_pending(ssl) && SSL_get_current_cipher(ssl) != NULL;
    if (usable) {
        unsigned long suite = SSL_CIPHER_get_id(SSL_get_current_cipher(ssl));
        const unsigned char *rd = server ? r->client_secret : r->server_secret;
        const unsigned char *wr = server ? r->server_secret : r->client_secret;
        size_t rd_len = server ? r->client_secret_len : r->server_secret_len;
        size_t wr_len = server ? r->server_secret_len : r->client_secret_len;
        if (tls13_direction_init(&r->rd, suite, rd, rd_len, 0) < 0) {
            usable = 0;
        } else if (tls13_direction_init(&r->wr, suite, wr, wr_len, 1) < 0) {
            tls13_direction_free(&r->rd);
            usable = 0;
        }
    }
    OPENSSL_cleanse(r->client_secret, sizeof(r->client_secret));
    OPENSSL_cleanse(r->server_secret, sizeof(r->server_secret));
    if (!usable) {
        PyBuffer_Release(&flushed);
        /* The ssl module frees the record buffers after every record; a busy connection wants them kept. */
        SSL_clear_mode(ssl, SSL_MODE_RELEASE_BUFFERS);
        Py_RETURN_FALSE;
    }
    r->own = 1;
    /* A server's last handshake step sends its session tickets: the first records of its traffic keys. */
    r->wr.seq = server ? count_records(flushed.buf, (size_t)flushed.len) : 0;
    PyBuffer_Release(&flushed);
    r->mirror = !server;
    /* Records that arrived with the end of the handshake are still in OpenSSL's read BIO: ours now. */
    if (waiting > 0) {
        r->in = PyMem_Malloc(waiting);
        if (r->in == NULL)
            return PyErr_NoMemory();
        r->in_cap = waiting;
        size_t got = 0;
        if (!BIO_read_ex(rbio, r->in, waiting, &got) || got != waiting) {
            ERR_clear_error();
            PyErr_SetString(PyExc_RuntimeError, "the TLS read buffer gave less than it holds");
            return NULL;
        }
        r->in_len = got;
    }
    Py_RETURN_TRUE;
}

/* --- Records through OpenSSL ------------------------------------------------------------------------ */

/* OpenSSL's reason for the last error, as the ssl module words it ("decryption failed or bad record mac"). */
static const char *
failure_reason(SSL *ssl, int ret)
{
    static char text[64];
    unsigned long code = ERR_peek_last_error();
    const char *reason = code ? ERR_reason_error_string(code) : NULL;
    int error = SSL_get_error(ssl, ret);
    if (reason == NULL && error == SSL_ERROR_SYSCALL) {
        reason = "eof occurred in violation of protocol";  /* the ssl module's words */
    } else if (reason == NULL) {
        snprintf(text, sizeof(text), "TLS error %d", error);
        reason = text;
    }
    ERR_clear_error();
    return reason;
}

/* Append n bytes of scratch to *out (created on first use). */
static int
append(PyObject **out, Py_ssize_t *size, Py_ssize_t n)
{
    if (*out == NULL) {
        *out = PyBytes_FromStringAndSize(scratch, n);
        *size = n;
        return *out == NULL ? -1 : 0;
    }
    if (_PyBytes_Resize(out, *size + n) < 0)
        return -1;
    memcpy(PyBytes_AS_STRING(*out) + *size, scratch, (size_t)n);
    *size += n;
    return 0;
}

PyObject *
tls_records_raise(const char *reason, PyObject *plaintext)
{
    PyObject *args = reason == NULL ? PyTuple_Pack(1, plaintext) : Py_BuildValue("(sO)", reason, plaintext);
    if (args != NULL) {
        PyErr_SetObject(reason == NULL ? TlsClosed : TlsFailed, args);
        Py_DECREF(args);
    }
    return NULL;
}

static PyObject *
openssl_read(SSL *ssl, const void *data, size_t len)
{
    ERR_clear_error();
    BIO *rbio = SSL_get_rbio(ssl);
    if (len > 0 && BIO_write(rbio, data, (int)len) != (int)len)
        return PyErr_NoMemory();
    PyObject *out = NULL;
    Py_ssize_t size = 0;
    size_t used = 0;
    int ret = 1, error = SSL_ERROR_WANT_READ;
    for (;;) {
        size_t got = 0;
        ret = SSL_read_ex(ssl, scratch + used, sizeof(scratch) - used, &got);
        if (!ret) {
            error = SSL_get_error(ssl, ret);
            break;
        }
        used += got;
        /* Nothing left to decrypt: the next read could only say so, at the cost of a trip through the
         * record layer (a partial record waits for more bytes, which only a later call brings). */
        if (SSL_pending(ssl) == 0 && BIO_ctrl_pending(rbio) == 0)
            break;
        if (used == sizeof(scratch)) {
            if (append(&out, &size, (Py_ssize_t)used) < 0)
                return NULL;
            used = 0;
        }
    }
    if ((used > 0 || out == NULL) && append(&out, &size, (Py_ssize_t)used) < 0)
        return NULL;
    if (error == SSL_ERROR_WANT_READ)
        return out;
    if (error == SSL_ERROR_ZERO_RETURN)
        ERR_clear_error();
    tls_records_raise(error == SSL_ERROR_ZERO_RETURN ? NULL : failure_reason(ssl, ret), out);
    Py_DECREF(out);
    return NULL;
}

/* All the ciphertext waiting in the write BIO, as bytes. */
static PyObject *
take_output(SSL *ssl)
{
    BIO *wbio = SSL_get_wbio(ssl);
    size_t pending = BIO_ctrl_pending(wbio);
    PyObject *out = PyBytes_FromStringAndSize(NULL, (Py_ssize_t)pending);
    if (out == NULL || pending == 0)
        return out;
    size_t got = 0;
    if (!BIO_read_ex(wbio, PyBytes_AS_STRING(out), pending, &got) || got != pending) {
        Py_DECREF(out);
        ERR_clear_error();
        PyErr_SetString(PyExc_RuntimeError, "the TLS write buffer gave less than it holds");
        return NULL;
    }
    return out;
}

static PyObject *
openssl_write(SSL *ssl, const void *data, size_t len)
{
    ERR_clear_error();
    if (len > 0) {
        size_t written = 0;
        int ret = SSL_write_ex(ssl, data, len, &written);
        if (!ret || written != len) {
            PyObject *empty = PyBytes_FromStringAndSize(NULL, 0);
            if (empty != NULL)
                tls_records_raise(failure_reason(ssl, ret), empty);
            Py_XDECREF(empty);
            return NULL;
        }
    }
    return take_output(ssl);
}

/* --- The functions ---------------------------------------------------------------------------------- */

PyDoc_STRVAR(read_records_doc,
"read_records(handle, data) -> bytes\n\n"
"Feed ``data`` (ciphertext) to the TLS connection and return all the plaintext it completes (b'' while a\n"
"record is still partial). Raises TlsClosed(plaintext) on the peer's close_notify and\n"
"TlsFailed(reason, plaintext) on a record that fails, ``plaintext`` being what came before it.");

typedef PyObject *(*own_path)(Records *, const unsigned char *, size_t);
typedef PyObject *(*openssl_path)(SSL *, const void *, size_t);

/* ``name(handle, data)``: ``data`` through the connection's record path, own or OpenSSL's. */
static PyObject *
move_records(const char *name, PyObject *const *args, Py_ssize_t nargs, own_path own, openssl_path openssl)
{
    Records *r;
    Py_buffer view;
    if (nargs != 2)
        return PyErr_Format(PyExc_TypeError, "%s(handle, data) takes 2 arguments", name);
    if ((r = records(args[0])) == NULL || PyObject_GetBuffer(args[1], &view, PyBUF_SIMPLE) < 0)
        return NULL;
    PyObject *result = r->own ? own(r, view.buf, (size_t)view.len) : openssl(r->ssl, view.buf, (size_t)view.len);
    PyBuffer_Release(&view);
    return result;
}

static PyObject *
read_records(PyObject *self, PyObject *const *args, Py_ssize_t nargs)
{
    return move_records("read_records", args, nargs, tls13_stream_read, openssl_read);
}

PyDoc_STRVAR(write_records_doc,
"write_records(handle, data) -> bytes\n\n"
"Encrypt ``data`` (plaintext; may be empty) and return all the ciphertext waiting to be sent, including\n"
"what reading produced (a key update's answer). Raises TlsFailed(reason, b'') when the write is refused\n"
"(the connection already failed or was shut down).");

static PyObject *
write_records(PyObject *self, PyObject *const *args, Py_ssize_t nargs)
{
    return move_records("write_records", args, nargs, tls13_stream_write, openssl_write);
}

PyDoc_STRVAR(shutdown_records_doc,
"shutdown_records(handle) -> bytes\n\n"
"Start the TLS shutdown and return the ciphertext to send: close_notify and anything written before it.\n"
"Does not wait for the peer's close_notify (the connection closes after sending it).");

static PyObject *
shutdown_records(PyObject *self, PyObject *handle)
{
    Records *r = records(handle);
    if (r == NULL)
        return NULL;
    if (r->own)
        return tls13_stream_shutdown(r);
    ERR_clear_error();
    /* 0 (sent, the peer's not yet seen) is the expected result; a failed connection sends nothing. */
    (void)SSL_shutdown(r->ssl);
    ERR_clear_error();
    return take_output(r->ssl);
}

/* Check the struct layout on a fresh client object before trusting it. */
static int
check_layout(void)
{
    int ok = 0;
    PyObject *module = NULL, *context = NULL, *incoming = NULL, *outgoing = NULL, *sock = NULL;
    module = PyImport_ImportModule("_ssl");
    if (module == NULL)
        goto done;
    context = PyObject_CallMethod(module, "_SSLContext", "i", 16);  /* PROTOCOL_TLS_CLIENT */
    incoming = PyObject_CallMethod(module, "MemoryBIO", NULL);
    outgoing = PyObject_CallMethod(module, "MemoryBIO", NULL);
    if (context == NULL || incoming == NULL || outgoing == NULL)
        goto done;
    sock = PyObject_CallMethod(context, "_wrap_bio", "OOOs", incoming, outgoing, Py_False, "layout.check");
    if (sock == NULL)
        goto done;
    ssl_socket_type = Py_TYPE(sock);
    memory_bio_type = Py_TYPE(incoming);
    Py_INCREF(ssl_socket_type);
    Py_INCREF(memory_bio_type);
    SSL *ssl = ((SslSocketHead *)sock)->ssl;
    if (strcmp(ssl_socket_type->tp_name, "_ssl._SSLSocket") != 0 || strcmp(memory_bio_type->tp_name, "_ssl.MemoryBIO") != 0
            || ssl == NULL || SSL_get_rbio(ssl) != ((MemoryBioHead *)incoming)->bio
            || SSL_get_wbio(ssl) != ((MemoryBioHead *)outgoing)->bio || SSL_is_server(ssl)) {
        PyErr_SetString(PyExc_ImportError,
                        "tls_records: this Python's _ssl._SSLSocket does not have the layout it reads");
        goto done;
    }
    ok = 1;
done:
    Py_XDECREF(sock);
    Py_XDECREF(outgoing);
    Py_XDECREF(incoming);
    Py_XDECREF(context);
    Py_XDECREF(module);
    return ok ? 0 : -1;
}

static PyMethodDef methods[] = {
    {"records_of", (PyCFunction)(void (*)(void))records_of, METH_FASTCALL, records_of_doc},
    {"after_handshake", (PyCFunction)(void (*)(void))after_handshake, METH_FASTCALL, after_handshake_doc},
    {"read_records", (PyCFunction)(void (*)(void))read_records, METH_FASTCALL, read_records_doc},
    {"write_records", (PyCFunction)(void (*)(void))write_records, METH_FASTCALL, write_records_doc},
    {"shutdown_records", shutdown_records, METH_O, shutdown_records_doc},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module = {
    PyModuleDef_HEAD_INIT, "meshbox.proxy.tls_records",
    "TLS records of the proxy's TLS layer, one call each way (see tls_records.c).", -1, methods,
};

PyMODINIT_FUNC
PyInit_tls_records(void)
{
    if (check_layout() < 0 || PyType_Ready(&RecordsType) < 0)
        return NULL;
    ex_index = SSL_get_ex_new_index(0, NULL, NULL, NULL, NULL);
    if (ex_index < 0) {
        PyErr_SetString(PyExc_ImportError, "tls_records: OpenSSL gave no ex_data index");
        return NULL;
    }
    PyObject *m = PyModule_Create(&module);
    if (m == NULL)
        return NULL;
    TlsClosed = PyErr_NewExceptionWithDoc("meshbox.proxy.tls_records.TlsClosed",
                                          "The peer closed TLS (close_notify); args: (plaintext before it,).",
                                          NULL, NULL);
    TlsFailed = PyErr_NewExceptionWithDoc("meshbox.proxy.tls_records.TlsFailed",
                                          "A TLS record failed; args: (reason, plaintext before it).",
                                          NULL, NULL);
    if (TlsClosed == NULL || TlsFailed == NULL || PyModule_AddObjectRef(m, "TlsClosed", TlsClosed) < 0
            || PyModule_AddObjectRef(m, "TlsFailed", TlsFailed) < 0) {
        Py_DECREF(m);
        return NULL;
    }
    return m;
}
