"""Whether a received HTTP/2 header list is well formed (RFC 9113 8.1.1, 8.2, 8.3).

A malformed list is a stream error: the request never reaches the exchange core. What passes here is
safe to turn into an HTTP/1.1 head: names are lowercase tokens, values hold no NUL, CR or LF and no
surrounding whitespace, no connection-specific field, pseudo-headers come first, once each, and are
the ones the message kind allows.

Each check returns the declared content-length (``NO_LENGTH`` when there is none) or raises
:class:`Malformed`.
"""

from __future__ import annotations

from typing import Final

from meshbox.proxy.h2_events import Headers

NO_LENGTH: Final = -1
_TOKEN: Final = b"!#$%&'*+-.^_`|~0123456789abcdefghijklmnopqrstuvwxyz"
# Every byte but NUL, CR and LF: what translate() deletes from a value leaves only the forbidden ones.
_VALUE_OK: Final = bytes(b for b in range(256) if b not in (0, 10, 13))
_CONNECTION_SPECIFIC: Final = frozenset((b"connection", b"keep-alive", b"proxy-connection", b"transfer-encoding",
                                         b"upgrade"))
_REQUEST_PSEUDO: Final = frozenset((b":method", b":scheme", b":path", b":authority"))
_SP: Final = 32
_HTAB: Final = 9


class Malformed(ValueError):
    """The header list breaks RFC 9113; the message says how."""


def _regular(name: bytes, value: bytes, length: int) -> int:
    """Check one regular field; the content-length so far (updated when this is one)."""
    if not name or name.translate(None, _TOKEN):
        raise Malformed(f"field name {name[:40]!r} is not a lowercase token")
    if value:
        if value.translate(None, _VALUE_OK):
            raise Malformed(f"field {name.decode()} holds NUL, CR or LF")
        first, last = value[0], value[-1]
        if first in (_SP, _HTAB) or last in (_SP, _HTAB):
            raise Malformed(f"field {name.decode()} has surrounding whitespace")
    if name in _CONNECTION_SPECIFIC:
        raise Malformed(f"connection-specific field {name.decode()}")
    if name == b"te" and value != b"trailers":
        raise Malformed("te other than trailers")
    if name == b"content-length":
        if not value.isdigit() or len(value) > 18:
            raise Malformed(f"content-length {value[:40]!r} is not a number")
        declared = int(value)
        if length != NO_LENGTH and declared != length:
            raise Malformed("two different content-length values")
        return declared
    return length


def check_request(headers: Headers) -> int:
    """A request head: :method, :scheme and :path (only :authority for CONNECT), then regular fields."""
    method = b""
    path = b""
    seen: set[bytes] = set()
    length = NO_LENGTH
    regular = False
    for name, value in headers:
        if name[:1] == b":":
            if regular:
                raise Malformed(f"pseudo-header {name.decode(errors='replace')} after a regular field")
            if name not in _REQUEST_PSEUDO:
                raise Malformed(f"pseudo-header {name[:40].decode(errors='replace')} not allowed in a request")
            if name in seen:
                raise Malformed(f"pseudo-header {name.decode()} twice")
            seen.add(name)
            if value.translate(None, _VALUE_OK):
                raise Malformed(f"pseudo-header {name.decode()} holds NUL, CR or LF")
            if name == b":method":
                method = value
            elif name == b":path":
                path = value
        else:
            regular = True
            length = _regular(name, value, length)
    if method == b"CONNECT":
        if b":scheme" in seen or b":path" in seen or b":authority" not in seen:
            raise Malformed("CONNECT needs :authority and no :scheme or :path")
    elif not method or b":scheme" not in seen or not path:
        raise Malformed("request without :method, :scheme or :path")
    return length


def check_response(headers: Headers) -> tuple[int, int]:
    """A response head: exactly one 3-digit :status first. Returns (status, content-length)."""
    status = 0
    length = NO_LENGTH
    for index, (name, value) in enumerate(headers):
        if name[:1] == b":":
            if name != b":status" or index != 0:
                raise Malformed(f"pseudo-header {name[:40].decode(errors='replace')} not allowed here")
            if len(value) != 3 or not value.isdigit():
                raise Malformed(f":status {value[:40]!r} is not three digits")
            status = int(value)
        else:
            length = _regular(name, value, length)
    if not status:
        raise Malformed("response without :status")
    return status, length


def check_trailers(headers: Headers) -> None:
    """Trailers: regular fields only."""
    for name, value in headers:
        if name[:1] == b":":
            raise Malformed(f"pseudo-header {name[:40].decode(errors='replace')} in trailers")
        _regular(name, value, NO_LENGTH)
