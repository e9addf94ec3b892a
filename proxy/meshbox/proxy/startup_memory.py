"""Keep start-up from setting the proxy's peak memory, and give back what it used.

Compiling modules (where no bytecode cache can be written), unpickling options and building the first
snapshot leave freed blocks in the C heap that glibc keeps mapped. ``malloc_trim`` returns them to the
kernel: between import stages (so one stage's garbage does not add to the next stage's peak) and once
the proxy serves. ``gc.freeze`` then moves every start-up object out of the collector's reach, so later
collections (and forked workers' copy-on-write pages) do not walk them again.
"""

from __future__ import annotations

import gc
import importlib
from collections.abc import Callable, Iterable


def _glibc_functions() -> tuple[Callable[[], object], Callable[[int, int], object]]:
    """malloc_trim(0) and mallopt: from the small C extension the compiled build has, else through
    ctypes (a pure-Python build), else two no-ops (not glibc)."""
    try:
        from meshbox.proxy import glibc_malloc
    except ImportError:
        pass
    else:
        return glibc_malloc.trim, glibc_malloc.set_option
    import ctypes

    libc = ctypes.CDLL(None)  # the C library the interpreter itself uses
    try:
        malloc_trim, mallopt = libc.malloc_trim, libc.mallopt
    except AttributeError:
        return (lambda: False), (lambda param, value: False)
    return (lambda: malloc_trim(0)), mallopt


_trim, _mallopt = _glibc_functions()


def trim() -> None:
    """Return the C heap's free memory to the kernel (glibc only; a no-op elsewhere)."""
    _trim()


def import_in_stages(modules: Iterable[str]) -> None:
    """Import ``modules`` in order, trimming the C heap after each."""
    for name in modules:
        importlib.import_module(name)
        trim()


def release() -> None:
    """Once serving: collect, freeze the survivors and trim the C heap."""
    gc.collect()
    gc.freeze()
    trim()


# glibc mallopt parameters.
_M_TRIM_THRESHOLD = -1
_M_MMAP_THRESHOLD = -3
TLS_HEAP_THRESHOLD = 1 << 20


def keep_tls_buffers_on_the_heap() -> None:
    """The TLS layer decrypts each read (up to the loop's 256 KiB) into a buffer sized to the ciphertext,
    then shrinks it to the plaintext. Above glibc's default mmap threshold (128 KiB, which does not rise
    for these shrunk chunks) that is an mmap, an mremap and an munmap per large read. With a 1 MiB
    threshold the buffers come from the heap; the untouched part of a buffer never becomes resident.
    glibc only."""
    _mallopt(_M_MMAP_THRESHOLD, TLS_HEAP_THRESHOLD)
    _mallopt(_M_TRIM_THRESHOLD, TLS_HEAP_THRESHOLD)
