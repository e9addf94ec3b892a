/* glibc's malloc_trim and mallopt for meshbox.proxy.startup_memory.
 *
 * Calling them through ctypes would load ctypes, _ctypes and libffi into the proxy for two calls:
 * about 0.37 MB resident for good. Built with the compiled hot path (setup.py); a pure-Python build
 * falls back to ctypes. On a C library other than glibc both functions do nothing and return False. */

#define PY_SSIZE_T_CLEAN
#include <Python.h>

#if defined(__GLIBC__)
#include <malloc.h>
#endif

static PyObject *
trim(PyObject *self, PyObject *unused)
{
#if defined(__GLIBC__)
    malloc_trim(0);
    Py_RETURN_TRUE;
#else
    Py_RETURN_FALSE;
#endif
}

static PyObject *
set_option(PyObject *self, PyObject *args)
{
    int param, value;
    if (!PyArg_ParseTuple(args, "ii:set_option", &param, &value))
        return NULL;
#if defined(__GLIBC__)
    return PyBool_FromLong(mallopt(param, value) == 1);
#else
    Py_RETURN_FALSE;
#endif
}

static PyMethodDef methods[] = {
    {"trim", trim, METH_NOARGS, "malloc_trim(0): give the C heap's free memory back to the kernel."},
    {"set_option", set_option, METH_VARARGS, "mallopt(param, value); True when glibc accepted it."},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module = {
    PyModuleDef_HEAD_INIT, "meshbox.proxy.glibc_malloc",
    "glibc's malloc_trim and mallopt, without ctypes.", -1, methods,
};

PyMODINIT_FUNC
PyInit_glibc_malloc(void)
{
    return PyModule_Create(&module);
}
