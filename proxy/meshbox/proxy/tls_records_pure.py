"""The functions of the C extension tls_records over the ssl module, for a pure-Python build
(MESHBOX_PROXY_PURE=1): the same results, at the cost of an SSLWantReadError per read."""

from __future__ import annotations

import contextlib
import ssl
from typing import cast


class TlsClosed(Exception):
    """The peer closed TLS (close_notify); args: (plaintext before it,)."""


class TlsFailed(Exception):
    """A TLS record failed; args: (reason, plaintext before it)."""


def _bios(ssl_object: ssl.SSLObject) -> tuple[ssl.MemoryBIO, ssl.MemoryBIO]:
    # The layer keeps its BIOs on the object it made (tls_layer.new_ssl_object).
    return ssl_object.incoming, ssl_object.outgoing  # type: ignore[attr-defined]


def records_of(ssl_object: ssl.SSLObject) -> object:
    """The handle the other functions take: here the SSLObject itself."""
    return ssl_object


def _reason(exc: ssl.SSLError) -> str:
    return (exc.reason or str(exc)).replace("_", " ").lower()


def read_records(handle: object, data: bytes) -> bytes:
    """Feed ciphertext; return the plaintext it completes (see tls_records.read_records)."""
    ssl_object = cast(ssl.SSLObject, handle)
    incoming, _ = _bios(ssl_object)
    if data:
        incoming.write(data)
    chunks: list[bytes] = []
    try:
        while True:
            chunk = ssl_object.read(65536)
            if not chunk:
                raise TlsClosed(b"".join(chunks))
            chunks.append(chunk)
    except ssl.SSLWantReadError:
        return b"".join(chunks)
    except ssl.SSLZeroReturnError:
        raise TlsClosed(b"".join(chunks)) from None
    except ssl.SSLError as exc:
        raise TlsFailed(_reason(exc), b"".join(chunks)) from None


def write_records(handle: object, data: bytes | bytearray | memoryview) -> bytes:
    """Encrypt plaintext; return all the ciphertext waiting to be sent."""
    ssl_object = cast(ssl.SSLObject, handle)
    _, outgoing = _bios(ssl_object)
    if data:
        try:
            ssl_object.write(data)
        except ssl.SSLError as exc:
            raise TlsFailed(_reason(exc), b"") from None
    return outgoing.read()


def after_handshake(handle: object, flushed: bytes) -> bool:
    """False: the records stay with the ssl module (tls_records.after_handshake)."""
    return False


def shutdown_records(handle: object) -> bytes:
    """Send close_notify without waiting for the peer's; the ciphertext to send."""
    ssl_object = cast(ssl.SSLObject, handle)
    _, outgoing = _bios(ssl_object)
    # SSLWantReadError: waiting for the peer's close_notify; another SSLError: the connection failed.
    with contextlib.suppress(ssl.SSLError):
        ssl_object.unwrap()
    return outgoing.read()
