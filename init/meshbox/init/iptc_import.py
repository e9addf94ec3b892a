"""Import python-iptables without its slow library discovery.

Most of what ``import iptc`` (python-iptables 1.2.0) costs a fresh process is finding
libraries, not loading them:

- ``iptc.util`` imports ``distutils.sysconfig`` for ``get_python_lib``, a fallback for finding
  its own C helper. In a virtualenv with setuptools, setuptools' ``_distutils_hack`` shim
  answers that import by importing setuptools (150-200 ms). With ``distutils`` unavailable,
  iptc takes its own fallback, ``sysconfig.get_path("purelib")`` (its path on Python 3.12+,
  which has no distutils), and nothing is printed.
- ``iptc.xtables`` runs ``ldconfig -N -v`` to find the extensions directory unless
  ``XTABLES_LIBDIR`` names it.
- python-iptables' C helper, libxtwrapper (installed next to the package), is looked up with
  ``ctypes.util.find_library`` for four candidate names, each running ``ldconfig -p``, gcc
  and ld, unless ``IPTABLES_LIBDIR`` names its directory.

XTABLES_LIBDIR and IPTABLES_LIBDIR are python-iptables' own settings. They are filled in only
when the caller has not set them and only for the import, so processes started later (such
as iptables-nft-restore) see the environment unchanged.
"""

from __future__ import annotations

import contextlib
import importlib
import importlib.util
import os
import sys
import sysconfig
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType

XTABLES_DIR = "xtables"


def _library_dirs() -> list[Path]:
    """Where distributions install libxtables, in the order ldconfig usually searches them."""
    multiarch = sysconfig.get_config_var("MULTIARCH")
    arch_dirs = [f"{base}/{multiarch}" for base in ("/usr/local/lib", "/lib", "/usr/lib")] if multiarch else []
    return [Path(d) for d in (*arch_dirs, "/usr/local/lib", "/lib64", "/usr/lib64", "/lib", "/usr/lib")]


def extensions_dir(library_dirs: list[Path]) -> Path | None:
    """The xtables extensions directory next to the first libxtables found, if any."""
    for directory in library_dirs:
        if (directory / XTABLES_DIR).is_dir() and any(directory.glob("libxtables.so*")):
            return directory / XTABLES_DIR
    return None


def _helper_dir() -> Path | None:
    """The directory holding python-iptables' libxtwrapper (its package's parent), if found."""
    spec = importlib.util.find_spec("iptc")
    if spec is None or spec.origin is None:
        return None
    directory = Path(spec.origin).parent.parent
    return directory if any(directory.glob("libxtwrapper*.so")) else None


@contextlib.contextmanager
def _environment(settings: dict[str, Path | None]) -> Iterator[None]:
    added = [name for name, value in settings.items() if value is not None and name not in os.environ]
    for name in added:
        os.environ[name] = str(settings[name])
    try:
        yield
    finally:
        for name in added:
            os.environ.pop(name, None)


@contextlib.contextmanager
def _without_distutils() -> Iterator[None]:
    # None in sys.modules makes an import raise ModuleNotFoundError (documented import-system
    # behaviour); an already imported distutils is left alone, importing it again is free.
    blocked = "distutils" not in sys.modules
    if blocked:
        sys.modules["distutils"] = None  # type: ignore[assignment]
    try:
        yield
    finally:
        if blocked and sys.modules.get("distutils", ModuleType("distutils")) is None:
            del sys.modules["distutils"]


def import_iptc() -> ModuleType:
    """``import iptc``, with its library paths given up front (see the module docstring)."""
    if "iptc" in sys.modules:
        return sys.modules["iptc"]
    settings = {"XTABLES_LIBDIR": extensions_dir(_library_dirs()), "IPTABLES_LIBDIR": _helper_dir()}
    with _environment(settings), _without_distutils():
        return importlib.import_module("iptc")
