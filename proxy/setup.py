"""Builds meshbox-proxy with its per-request modules (meshbox/proxy/hot_path.py) compiled to C by
mypyc; the rest of the package stays pure Python. Why: CPU per request is the proxy's main cost, and
compiling the typed hot path removes about a third of the Python part of it (docs/proxy.md).

MESHBOX_PROXY_PURE=1 builds a pure-Python distribution instead (no C compiler needed; slower).
"""

from __future__ import annotations

import os
import runpy

from setuptools import Extension, setup


def _ext_modules() -> list:
    if os.environ.get("MESHBOX_PROXY_PURE") == "1":
        return []
    from mypyc.build import mypycify

    # glibc's malloc_trim and mallopt without ctypes (startup_memory falls back to ctypes without it).
    glibc_malloc = Extension("meshbox.proxy.glibc_malloc", ["meshbox/proxy/glibc_malloc.c"])
    # TLS records in one C call each way (tls_layer falls back to tls_records_pure without it).
    tls_records = Extension("meshbox.proxy.tls_records",
                            [f"meshbox/proxy/{name}.c" for name in ("tls_records", "tls13_stream", "tls13_protection")],
                            depends=[f"meshbox/proxy/{name}.h" for name in ("tls_records", "tls13_protection")],
                            libraries=["ssl", "crypto"])

    hot_path = runpy.run_path("meshbox/proxy/hot_path.py")["HOT_PATH"]
    # mypy's flags first. Explicit package bases: "meshbox" is a namespace package rooted here (the
    # build must not depend on a mypy config found in a parent directory). Missing imports (meshbox.api
    # when this distribution is built alone) are typed as Any rather than failing the build.
    return [glibc_malloc, tls_records, *mypycify(
        ["--explicit-package-bases", "--ignore-missing-imports", "--python-version", "3.11",
         *(name.replace(".", "/") + ".py" for name in hot_path)],
        opt_level="3",
        debug_level="0",
        # The runtime library shared by the compiled modules: meshbox/proxy/hot_path__mypyc*.so.
        group_name="meshbox.proxy.hot_path",
    )]


setup(ext_modules=_ext_modules())
