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
# What the request pseudo-headers may hold, so that they make a valid HTTP/1.1 request line and Host
# (RFC 9110 5.6.2 token, RFC 3986 scheme, authority and path characters).
_METHOD_OK: Final = _TOKEN + b"ABCDEFGHIJKLMNOPQRSTUVWXYZ"
_SCHEME_OK: Final = b"abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789+-."
_AUTHORITY_OK: Final = (b"abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789-._~%!$&'()*+,;=:[]")
_PATH_OK: Final = bytes(range(0x21, 0x7F))
# Every byte but NUL, CR and LF: what translate() deletes from a value leaves only the forbidden ones.
_VALUE_OK: Final = bytes(b for b in range(256) if b not in (0, 10, 13))
_CONNECTION_SPECIFIC: Final = frozenset((b"connection", b"keep-alive", b"proxy-connection", b"transfer-encoding",
                                         b"upgrade"))
_SP: Final = 32
_HTAB: Final = 9


class Malformed(ValueError):
    """The header list breaks RFC 9113; the message says how."""


# Field names already checked, and what they are; names repeat from request to request, so most are
# looked up rather than scanned. Bounded: past _NAMES_KEPT, new names are checked every time.
_PLAIN: Final = 0
_TE: Final = 1
_CONTENT_LENGTH: Final = 2
_NAMES: Final[dict[bytes, int]] = {}
_NAMES_KEPT: Final = 512
_COLON: Final = 58
_METHOD: Final = 1
_SCHEME: Final = 2
_PATH: Final = 4
_AUTHORITY: Final = 8
_PSEUDO_BITS: Final = {b":method": _METHOD, b":scheme": _SCHEME, b":path": _PATH, b":authority": _AUTHORITY}


def _name_kind(name: bytes) -> int:
    kind = _NAMES.get(name, -1)
    if kind >= 0:
        return kind
    if not name or name.translate(None, _TOKEN):
        raise Malformed(f"field name {name[:40]!r} is not a lowercase token")
    if name in _CONNECTION_SPECIFIC:
        raise Malformed(f"connection-specific field {name.decode()}")
    kind = _TE if name == b"te" else _CONTENT_LENGTH if name == b"content-length" else _PLAIN
    if len(_NAMES) < _NAMES_KEPT:
        _NAMES[name] = kind
    return kind


def _regular(name: bytes, value: bytes, length: int) -> int:
    """Check one regular field; the content-length so far (updated when this is one)."""
    kind = _name_kind(name)
    if value:
        if value.translate(None, _VALUE_OK):
            raise Malformed(f"field {name.decode()} holds NUL, CR or LF")
        first, last = value[0], value[-1]
        if first in (_SP, _HTAB) or last in (_SP, _HTAB):
            raise Malformed(f"field {name.decode()} has surrounding whitespace")
    if kind == _PLAIN:
        return length
    if kind == _TE:
        if value != b"trailers":
            raise Malformed("te other than trailers")
        return length
    if not value.isdigit() or len(value) > 18:
        raise Malformed(f"content-length {value[:40]!r} is not a number")
    declared = int(value)
    if length != NO_LENGTH and declared != length:
        raise Malformed("two different content-length values")
    return declared


def check_request(headers: Headers) -> int:
    """A request head: :method, :scheme and :path (only :authority for CONNECT), then regular fields."""
    method = b""
    seen = 0
    length = NO_LENGTH
    regular = False
    for name, value in headers:
        if name and name[0] == _COLON:
            bit = _PSEUDO_BITS.get(name, 0)
            if regular:
                raise Malformed(f"pseudo-header {name[:40].decode(errors='replace')} after a regular field")
            if not bit:
                raise Malformed(f"pseudo-header {name[:40].decode(errors='replace')} not allowed in a request")
            if seen & bit:
                raise Malformed(f"pseudo-header {name.decode()} twice")
            seen |= bit
            _check_pseudo(bit, value)
            if bit == _METHOD:
                method = value
        else:
            regular = True
            length = _regular(name, value, length)
    if method == b"CONNECT":
        if seen != _METHOD | _AUTHORITY:
            raise Malformed("CONNECT needs :authority and no :scheme or :path")
    elif seen & (_METHOD | _SCHEME | _PATH) != _METHOD | _SCHEME | _PATH:
        raise Malformed("request without :method, :scheme or :path")
    return length


def _check_pseudo(bit: int, value: bytes) -> None:
    if bit == _PATH:
        if value.translate(None, _PATH_OK) or not (value[:1] == b"/" or value == b"*"):
            raise Malformed(f":path {value[:40]!r} is not an origin-form path or *")
    elif bit == _METHOD:
        if not value or value.translate(None, _METHOD_OK):
            raise Malformed(f":method {value[:40]!r} is not a token")
    elif bit == _AUTHORITY:
        if value.translate(None, _AUTHORITY_OK):
            raise Malformed(f":authority {value[:40]!r} holds characters no host and port has")
    elif not value or value.translate(None, _SCHEME_OK):
        raise Malformed(f":scheme {value[:40]!r} is not a scheme")


def check_response(headers: Headers) -> tuple[int, int]:
    """A response head: exactly one 3-digit :status first. Returns (status, content-length)."""
    status = 0
    length = NO_LENGTH
    first = True
    for name, value in headers:
        if name and name[0] == _COLON:
            if name != b":status" or not first:
                raise Malformed(f"pseudo-header {name[:40].decode(errors='replace')} not allowed here")
            if len(value) != 3 or not value.isdigit():
                raise Malformed(f":status {value[:40]!r} is not three digits")
            status = int(value)
        else:
            length = _regular(name, value, length)
        first = False
    if not status:
        raise Malformed("response without :status")
    return status, length


def check_trailers(headers: Headers) -> None:
    """Trailers: regular fields only."""
    for name, value in headers:
        if name and name[0] == _COLON:
            raise Malformed(f"pseudo-header {name[:40].decode(errors='replace')} in trailers")
        _regular(name, value, NO_LENGTH)
