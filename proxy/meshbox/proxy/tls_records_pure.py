"""The functions of the C extension tls_records over CPython's ``_ssl`` methods, for a pure-Python build
(MESHBOX_PROXY_PURE=1): the same results, with OpenSSL's record layer and an SSLWantReadError per read."""

from __future__ import annotations

import _ssl
import contextlib
import re
from typing import Any, NamedTuple


class TlsClosed(Exception):
    """The peer closed TLS (close_notify); args: (plaintext before it,)."""


class TlsFailed(Exception):
    """A TLS record failed; args: (reason, plaintext before it)."""


class _Records(NamedTuple):
    ssl_object: Any
    incoming: _ssl.MemoryBIO
    outgoing: _ssl.MemoryBIO


def _reason(exc: _ssl.SSLError) -> str:
    """OpenSSL's reason in the words tls_records uses ("decryption failed or bad record mac")."""
    if exc.reason:
        return str(exc.reason).replace("_", " ").lower()
    return re.sub(r" \(_ssl\.c:\d+\)$", "", str(exc.strerror or exc)).lower()


def records_of(ssl_object: Any, incoming: _ssl.MemoryBIO, outgoing: _ssl.MemoryBIO) -> object:
    """The handle the other functions take."""
    return _Records(ssl_object, incoming, outgoing)


def after_handshake(handle: object, flushed: bytes) -> bool:
    """False: the records stay with OpenSSL (tls_records.after_handshake)."""
    return False


def read_records(handle: object, data: bytes) -> bytes:
    """Feed ciphertext; return the plaintext it completes (see tls_records.read_records)."""
    records: Any = handle
    if data:
        records.incoming.write(data)
    chunks: list[bytes] = []
    try:
        while True:
            chunk = records.ssl_object.read(65536)
            if not chunk:
                raise TlsClosed(b"".join(chunks))
            chunks.append(chunk)
    except _ssl.SSLWantReadError:
        return b"".join(chunks)
    except _ssl.SSLZeroReturnError:
        raise TlsClosed(b"".join(chunks)) from None
    except _ssl.SSLError as exc:
        raise TlsFailed(_reason(exc), b"".join(chunks)) from None


def write_records(handle: object, data: bytes | bytearray | memoryview) -> bytes:
    """Encrypt plaintext; return all the ciphertext waiting to be sent."""
    records: Any = handle
    if data:
        try:
            records.ssl_object.write(data)
        except _ssl.SSLError as exc:
            raise TlsFailed(_reason(exc), b"") from None
    return bytes(records.outgoing.read())


def shutdown_records(handle: object) -> bytes:
    """Send close_notify without waiting for the peer's; the ciphertext to send."""
    records: Any = handle
    # SSLWantReadError: waiting for the peer's close_notify; another SSLError: the connection failed.
    with contextlib.suppress(_ssl.SSLError):
        records.ssl_object.shutdown()
    return bytes(records.outgoing.read())
