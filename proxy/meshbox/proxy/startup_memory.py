"""Keep start-up from setting the proxy's peak memory, and give back what it used.

Compiling modules (where no bytecode cache can be written), unpickling options and building the first
snapshot leave freed blocks in the C heap that glibc keeps mapped. ``malloc_trim`` returns them to the
kernel: between import stages (so one stage's garbage does not add to the next stage's peak) and once
the proxy serves. ``gc.freeze`` then moves every start-up object out of the collector's reach, so later
collections (and forked workers' copy-on-write pages) do not walk them again.
"""

from __future__ import annotations

import ctypes
import gc
import importlib
from collections.abc import Iterable


def trim() -> None:
    """Return the C heap's free memory to the kernel (glibc only; a no-op elsewhere)."""
    try:
        malloc_trim = ctypes.CDLL(None).malloc_trim  # the C library the interpreter itself uses
    except AttributeError:
        return  # not glibc
    malloc_trim(0)


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
