"""A stand-in for the ``ssl`` module, so the proxy process never loads ``ssl.py``, nor OpenSSL without a
workload certificate.

uvloop imports ``ssl`` at start-up (and keeps a dozen of its names): that maps libssl and libcrypto and
costs about 4.7 MB of resident memory, a fifth of the proxy's budget. The proxy's own TLS layer
(tls_layer, with a certificate) needs only CPython's ``_ssl``, not ``ssl.py``'s enums and helpers. So
in every proxy process, installed before anything imports asyncio, this module takes the name ``ssl``:
its exception classes and constants are real enough for those imports, and anything that would do TLS
through it raises :class:`TlsUnavailable` naming the cause.
"""

from __future__ import annotations

import sys
import types
from typing import Any

_WHY = ("meshbox-proxy does TLS through its own layer only (the ssl module is a stand-in, see "
        "meshbox/proxy/tls_stand_in.py)")


class TlsUnavailable(RuntimeError):
    """Raised by every TLS operation in a process using the stand-in."""


class _Unavailable:
    """Any ssl class or function: using it raises TlsUnavailable."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        raise TlsUnavailable(f"{type(self).__name__}: {_WHY}")


class SSLError(OSError):
    pass


class SSLWantReadError(SSLError):
    pass


class SSLWantWriteError(SSLError):
    pass


class SSLSyscallError(SSLError):
    pass


class SSLZeroReturnError(SSLError):
    pass


class SSLEOFError(SSLError):
    pass


class CertificateError(ValueError):
    pass


def _unavailable_function(*args: Any, **kwargs: Any) -> Any:
    raise TlsUnavailable(_WHY)


def _module() -> types.ModuleType:
    module = types.ModuleType("ssl", __doc__)
    names: dict[str, Any] = {
        "SSLError": SSLError, "SSLWantReadError": SSLWantReadError, "SSLWantWriteError": SSLWantWriteError,
        "SSLSyscallError": SSLSyscallError, "SSLZeroReturnError": SSLZeroReturnError, "SSLEOFError": SSLEOFError,
        "CertificateError": CertificateError, "SSLCertVerificationError": CertificateError,
        "create_default_context": _unavailable_function, "_create_default_https_context": _unavailable_function,
        # OpenSSL's values, as uvloop compares them with error codes.
        "SSL_ERROR_WANT_READ": 2, "SSL_ERROR_WANT_WRITE": 3, "SSL_ERROR_SYSCALL": 5,
        "HAS_SNI": False, "HAS_ALPN": False,
    }
    module.__dict__.update(names)

    def missing(name: str) -> type[_Unavailable]:
        # Classes, enums and constants other modules name at import time (annotations, defaults).
        if name.startswith("__"):
            raise AttributeError(name)
        stand_in = type(name, (_Unavailable,), {})
        setattr(module, name, stand_in)  # the same object next time (isinstance, identity checks)
        return stand_in

    module.__getattr__ = missing  # type: ignore[method-assign]
    return module


def install() -> bool:
    """Register the stand-in as ``ssl`` unless ssl or asyncio is already imported; True if installed."""
    if "ssl" in sys.modules or "asyncio" in sys.modules:
        return False
    sys.modules["ssl"] = _module()
    return True
