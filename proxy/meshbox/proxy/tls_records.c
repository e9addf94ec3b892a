/* The per-record work of the proxy's TLS layer (tls_layer.py): decrypt what arrived, encrypt what is
 * sent, on the memory BIOs of an ssl.SSLObject, in one call each way.
 *
 * Why C: through the ssl module, every read ends in an SSLWantReadError raised and caught (about 1 us
 * each, one per record on each side of a proxy pair) and every record costs several Python-level calls
 * (BIO write, read loop, SSL write, BIO read). Here a call runs OpenSSL's loop itself and reports the
 * ordinary "need more bytes" as a return value; Python exceptions are left for the end of a connection.
 *
 * The SSL pointer is read from CPython's _ssl._SSLSocket (SSLObject._sslobj: the handle records_of gives),
 * whose C struct is private:
 * its head (object header, socket weakref, SSL pointer) is the same in CPython 3.8 to 3.13, the build
 * refuses other versions, and module initialisation checks the layout on a fresh object (the SSL's read
 * BIO must be the MemoryBIO it was made with) before any call can use it. The handshake, certificate
 * checks and everything else stay with the ssl module; this only moves records. Single-threaded use with
 * the GIL held, like the rest of the proxy (the read buffer is static).
 *
 * A pure-Python build uses tls_records_py.py, which has the same functions over the ssl module. */

#define PY_SSIZE_T_CLEAN
#include <Python.h>

#include <openssl/err.h>
#include <openssl/ssl.h>

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
static PyObject *sslobj_attr;   /* "_sslobj" */
static PyObject *TlsClosed;     /* the peer sent close_notify: args (plaintext before it,) */
static PyObject *TlsFailed;     /* a record failed: args (reason, plaintext before it) */

/* Plaintext is read here first: one copy into the bytes object returned when it fits. */
static char scratch[65536];

static SSL *
ssl_of(PyObject *handle)
{
    if (Py_TYPE(handle) != ssl_socket_type) {
        PyErr_Format(PyExc_TypeError, "expected the handle records_of() gives, got %.100s", Py_TYPE(handle)->tp_name);
        return NULL;
    }
    return ((SslSocketHead *)handle)->ssl;
}

PyDoc_STRVAR(records_of_doc,
"records_of(ssl_object) -> handle\n\n"
"What the other functions take for ``ssl_object`` (an ssl.SSLObject on memory BIOs): its _ssl._SSLSocket,\n"
"looked up once per connection rather than once per record. Valid while the SSLObject lives.");

static PyObject *
records_of(PyObject *self, PyObject *ssl_object)
{
    PyObject *sock = PyObject_GetAttr(ssl_object, sslobj_attr);
    if (sock != NULL && Py_TYPE(sock) != ssl_socket_type) {
        PyErr_Format(PyExc_TypeError, "expected an ssl.SSLObject, got %.100s", Py_TYPE(ssl_object)->tp_name);
        Py_CLEAR(sock);
    }
    return sock;
}

/* OpenSSL's reason for the last error, as the ssl module words it ("decryption failed or bad record mac"). */
static PyObject *
failure_reason(SSL *ssl, int ret)
{
    unsigned long code = ERR_peek_last_error();
    const char *reason = code ? ERR_reason_error_string(code) : NULL;
    PyObject *text;
    if (reason != NULL)
        text = PyUnicode_FromString(reason);
    else
        text = PyUnicode_FromFormat("TLS error %d", SSL_get_error(ssl, ret));
    ERR_clear_error();
    return text;
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

static PyObject *
raise_end(PyObject *type, PyObject *reason, PyObject *plaintext)
{
    PyObject *args = reason == NULL ? PyTuple_Pack(1, plaintext) : PyTuple_Pack(2, reason, plaintext);
    if (args != NULL) {
        PyErr_SetObject(type, args);
        Py_DECREF(args);
    }
    return NULL;
}

PyDoc_STRVAR(read_records_doc,
"read_records(handle, data) -> bytes\n\n"
"Feed ``data`` (ciphertext) to the TLS connection and return all the plaintext it completes (b'' while a\n"
"record is still partial). Raises TlsClosed(plaintext) on the peer's close_notify and\n"
"TlsFailed(reason, plaintext) on a record that fails, ``plaintext`` being what came before it.");

static PyObject *
read_records(PyObject *self, PyObject *const *args, Py_ssize_t nargs)
{
    if (nargs != 2) {
        PyErr_SetString(PyExc_TypeError, "read_records(handle, data) takes 2 arguments");
        return NULL;
    }
    SSL *ssl = ssl_of(args[0]);
    if (ssl == NULL)
        return NULL;
    Py_buffer view;
    if (PyObject_GetBuffer(args[1], &view, PyBUF_SIMPLE) < 0)
        return NULL;
    ERR_clear_error();
    if (view.len > 0) {
        int written = BIO_write(SSL_get_rbio(ssl), view.buf, (int)view.len);
        if (written != view.len) {
            PyBuffer_Release(&view);
            return PyErr_NoMemory();
        }
    }
    PyBuffer_Release(&view);

    PyObject *out = NULL;
    Py_ssize_t size = 0;
    size_t used = 0;
    int ret = 1, error = SSL_ERROR_WANT_READ;
    BIO *rbio = SSL_get_rbio(ssl);
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
    PyObject *result;
    if (error == SSL_ERROR_ZERO_RETURN) {
        ERR_clear_error();
        result = raise_end(TlsClosed, NULL, out);
    } else {
        PyObject *reason = failure_reason(ssl, ret);
        result = reason == NULL ? NULL : raise_end(TlsFailed, reason, out);
        Py_XDECREF(reason);
    }
    Py_DECREF(out);
    return result;
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

PyDoc_STRVAR(write_records_doc,
"write_records(handle, data) -> bytes\n\n"
"Encrypt ``data`` (plaintext; may be empty) and return all the ciphertext waiting to be sent, including\n"
"what reading produced (a session ticket, a key update). Raises TlsFailed(reason, b'') when OpenSSL\n"
"refuses the write (the connection already failed or was shut down).");

static PyObject *
write_records(PyObject *self, PyObject *const *args, Py_ssize_t nargs)
{
    if (nargs != 2) {
        PyErr_SetString(PyExc_TypeError, "write_records(handle, data) takes 2 arguments");
        return NULL;
    }
    SSL *ssl = ssl_of(args[0]);
    if (ssl == NULL)
        return NULL;
    Py_buffer view;
    if (PyObject_GetBuffer(args[1], &view, PyBUF_SIMPLE) < 0)
        return NULL;
    ERR_clear_error();
    if (view.len > 0) {
        size_t written = 0;
        int ret = SSL_write_ex(ssl, view.buf, (size_t)view.len, &written);
        PyBuffer_Release(&view);
        if (!ret || written != (size_t)view.len) {
            PyObject *reason = failure_reason(ssl, ret);
            PyObject *empty = PyBytes_FromStringAndSize(NULL, 0);
            if (reason != NULL && empty != NULL)
                raise_end(TlsFailed, reason, empty);
            Py_XDECREF(reason);
            Py_XDECREF(empty);
            return NULL;
        }
    } else {
        PyBuffer_Release(&view);
    }
    return take_output(ssl);
}

PyDoc_STRVAR(keep_buffers_doc,
"keep_buffers(handle)\n\n"
"Keep the connection's record buffers between records. The ssl module sets SSL_MODE_RELEASE_BUFFERS,\n"
"which frees them after every record and allocates them again for the next (about 17 KiB each way):\n"
"for a connection that carries a record every few microseconds that is a malloc and a free per record.");

static PyObject *
keep_buffers(PyObject *self, PyObject *handle)
{
    SSL *ssl = ssl_of(handle);
    if (ssl == NULL)
        return NULL;
    SSL_clear_mode(ssl, SSL_MODE_RELEASE_BUFFERS);
    Py_RETURN_NONE;
}

PyDoc_STRVAR(shutdown_records_doc,
"shutdown_records(handle) -> bytes\n\n"
"Start the TLS shutdown and return the ciphertext to send: close_notify and anything written before it.\n"
"Does not wait for the peer's close_notify (the connection closes after sending it).");

static PyObject *
shutdown_records(PyObject *self, PyObject *handle)
{
    SSL *ssl = ssl_of(handle);
    if (ssl == NULL)
        return NULL;
    ERR_clear_error();
    /* 0 (sent, the peer's not yet seen) is the expected result; a failed connection sends nothing. */
    (void)SSL_shutdown(ssl);
    ERR_clear_error();
    return take_output(ssl);
}

/* Check the struct layout on a fresh client object before trusting it. */
static int
check_layout(void)
{
    int ok = 0;
    PyObject *ssl_module = NULL, *context = NULL, *incoming = NULL, *outgoing = NULL, *ssl_object = NULL;
    PyObject *sock = NULL;
    ssl_module = PyImport_ImportModule("ssl");
    if (ssl_module == NULL)
        goto done;
    PyObject *client = PyObject_GetAttrString(ssl_module, "PROTOCOL_TLS_CLIENT");
    if (client == NULL)
        goto done;
    context = PyObject_CallMethod(ssl_module, "SSLContext", "O", client);
    Py_DECREF(client);
    incoming = PyObject_CallMethod(ssl_module, "MemoryBIO", NULL);
    outgoing = PyObject_CallMethod(ssl_module, "MemoryBIO", NULL);
    if (context == NULL || incoming == NULL || outgoing == NULL)
        goto done;
    ssl_object = PyObject_CallMethod(context, "wrap_bio", "OOOs", incoming, outgoing, Py_False, "layout.check");
    if (ssl_object == NULL)
        goto done;
    sock = PyObject_GetAttr(ssl_object, sslobj_attr);
    if (sock == NULL)
        goto done;
    ssl_socket_type = Py_TYPE(sock);
    Py_INCREF(ssl_socket_type);
    SSL *ssl = ((SslSocketHead *)sock)->ssl;
    if (strcmp(ssl_socket_type->tp_name, "_ssl._SSLSocket") != 0 || ssl == NULL
            || SSL_get_rbio(ssl) != ((MemoryBioHead *)incoming)->bio
            || SSL_get_wbio(ssl) != ((MemoryBioHead *)outgoing)->bio || SSL_is_server(ssl)) {
        PyErr_SetString(PyExc_ImportError,
                        "tls_records: this Python's _ssl._SSLSocket does not have the layout it reads");
        goto done;
    }
    ok = 1;
done:
    Py_XDECREF(sock);
    Py_XDECREF(ssl_object);
    Py_XDECREF(outgoing);
    Py_XDECREF(incoming);
    Py_XDECREF(context);
    Py_XDECREF(ssl_module);
    return ok ? 0 : -1;
}

static PyMethodDef methods[] = {
    {"records_of", records_of, METH_O, records_of_doc},
    {"read_records", (PyCFunction)(void (*)(void))read_records, METH_FASTCALL, read_records_doc},
    {"write_records", (PyCFunction)(void (*)(void))write_records, METH_FASTCALL, write_records_doc},
    {"shutdown_records", shutdown_records, METH_O, shutdown_records_doc},
    {"keep_buffers", keep_buffers, METH_O, keep_buffers_doc},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module = {
    PyModuleDef_HEAD_INIT, "meshbox.proxy.tls_records",
    "TLS records in and out of an ssl.SSLObject's memory BIOs, one call each way.", -1, methods,
};

PyMODINIT_FUNC
PyInit_tls_records(void)
{
    sslobj_attr = PyUnicode_InternFromString("_sslobj");
    if (sslobj_attr == NULL || check_layout() < 0)
        return NULL;
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
