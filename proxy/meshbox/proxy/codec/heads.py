"""Rules every codec applies to a parsed head, so both codecs reach the same verdict.

The parsers tokenize; these functions decide framing (Content-Length / chunked / until close),
keep-alive and upgrade, and refuse the shapes used for request smuggling: Content-Length together
with Transfer-Encoding, duplicate or non-numeric Content-Length, any transfer coding but ``chunked``,
a missing or repeated Host, too many headers, an Upgrade request with a body.
"""

from __future__ import annotations

from typing import Final

from meshbox.proxy.codec.events import Headers, ProtocolError, RequestHead, ResponseHead
from meshbox.proxy.codec.reason_phrases import REASONS
from meshbox.proxy.header_policy import connection_tokens

# Envoy's defaults: 60 KiB of request headers, at most 100 of them.
MAX_HEAD_BYTES: Final = 60 * 1024
MAX_HEADERS: Final = 100
METHODS: Final = frozenset({b"GET", b"HEAD", b"POST", b"PUT", b"DELETE", b"OPTIONS", b"PATCH", b"TRACE"})
VERSIONS: Final = frozenset({b"1.1", b"1.0"})
_MAX_CONTENT_LENGTH_DIGITS: Final = 18
# A byte value, not b",": `b"," in data` first tries b"," as an integer and formats a TypeError (about 4x slower).
_COMMA: Final = ord(",")


def reason_phrase(status: int) -> bytes:
    """The standard reason phrase for a status code (what the proxy sends, whatever the upstream said)."""
    return REASONS.get(status, b"Unknown")


def _content_length(value: bytes, status: int) -> int:
    if not value.isdigit() or len(value) > _MAX_CONTENT_LENGTH_DIGITS:
        raise ProtocolError(status, f"invalid Content-Length {value[:40]!r}")
    return int(value)


def unsupported_version(version: bytes) -> ProtocolError:
    """RFC 9112: a well-formed HTTP-version ("HTTP/" DIGIT "." DIGIT) we do not speak is a 505; a request
    line without one (what parsers report as 0.9: HTTP/0.9 had no version) is malformed, a 400."""
    if version == b"0.9" or not (len(version) == 3 and version[1:2] == b"." and version.replace(b".", b"").isdigit()):
        return ProtocolError(400, "malformed request line (no valid HTTP version)")
    return ProtocolError(505, f"HTTP version {version.decode('ascii')} not supported")


def request_head(method: bytes, target: bytes, version: bytes, headers: Headers) -> RequestHead:
    """Validate a request head (header names already lower-case) and work out its framing."""
    if method not in METHODS and method != b"CONNECT":
        raise ProtocolError(400, f"unknown method {method[:20]!r}")
    if len(headers) > MAX_HEADERS:
        raise ProtocolError(431, f"more than {MAX_HEADERS} headers")
    hosts = 0
    content_length: int | None = None
    te: bytes | None = None
    connection: list[bytes] = []
    upgrade = False
    for name, value in headers:
        if name == b"host":
            hosts += 1
        elif name == b"content-length":
            if content_length is not None:
                raise ProtocolError(400, "duplicate Content-Length")
            # _content_length's check, inlined for the valid case (runs for most messages).
            content_length = int(value) if value.isdigit() and len(value) <= _MAX_CONTENT_LENGTH_DIGITS \
                else _content_length(value, 400)
        elif name == b"transfer-encoding":
            if te is not None:
                raise ProtocolError(400, "duplicate Transfer-Encoding")
            te = value
        elif name == b"connection":
            connection.append(value)
        elif name == b"upgrade":
            upgrade = True
    if hosts > 1 or (hosts == 0 and version != b"1.0"):
        raise ProtocolError(400, "exactly one Host header is required")
    if method == b"CONNECT":
        raise ProtocolError(405, "CONNECT is not supported")
    if not target.isascii() or not (target[:1] == b"/" or target == b"*" or target[:7].lower() == b"http://"):
        raise ProtocolError(400, "invalid request target")
    chunked = False
    if te is not None:
        if content_length is not None:
            raise ProtocolError(400, "Content-Length together with Transfer-Encoding")
        if version != b"1.1" or te.strip().lower() != b"chunked":
            raise ProtocolError(400, f"unsupported Transfer-Encoding {te[:40]!r}")
        chunked = True
    if version not in VERSIONS:
        # After the header checks: h11 refuses bad framing of any version before we see the head.
        raise unsupported_version(version)
    if connection:
        # The usual single token ("keep-alive", "close") without a call; a tuple answers `in` like the set.
        tokens = (connection[0].strip().lower(),) if len(connection) == 1 and _COMMA not in connection[0] \
            else connection_tokens(connection)
        keep_alive = b"close" not in tokens if version == b"1.1" else b"keep-alive" in tokens
        upgrade = upgrade and b"upgrade" in tokens
        if upgrade and (chunked or content_length):
            # llhttp switches to raw bytes right after such a head, h11 after its body: no single meaning.
            raise ProtocolError(400, "an upgrade request cannot have a body")
    else:
        keep_alive = version == b"1.1"
        upgrade = False
    return RequestHead(method, target, version, headers, keep_alive, content_length, chunked, upgrade)


def response_head(status: int, reason: bytes, version: bytes, headers: Headers, request_method: bytes) -> ResponseHead:
    """Validate a response head (names lower-case) given the request's method; bad framing is a 502."""
    if version not in VERSIONS:
        raise ProtocolError(502, f"upstream spoke HTTP version {version[:10]!r}")
    if not 100 <= status <= 599:
        raise ProtocolError(502, f"upstream sent status {status}")
    content_length: int | None = None
    te: bytes | None = None
    connection: list[bytes] = []
    for name, value in headers:
        if name == b"content-length":
            if content_length is not None:
                raise ProtocolError(502, "upstream sent duplicate Content-Length")
            content_length = int(value) if value.isdigit() and len(value) <= _MAX_CONTENT_LENGTH_DIGITS \
                else _content_length(value, 502)
        elif name == b"transfer-encoding":
            if te is not None:
                raise ProtocolError(502, "upstream sent duplicate Transfer-Encoding")
            te = value
        elif name == b"connection":
            connection.append(value)
    has_body = not (status < 200 or status in (204, 304) or request_method == b"HEAD")
    chunked = False
    if te is not None:
        if content_length is not None:
            raise ProtocolError(502, "upstream sent Content-Length together with Transfer-Encoding")
        if te.strip().lower() != b"chunked":
            raise ProtocolError(502, f"upstream sent unsupported Transfer-Encoding {te[:40]!r}")
        chunked = has_body
    if connection:
        # The usual single token ("keep-alive", "close") without a call; a tuple answers `in` like the set.
        tokens = (connection[0].strip().lower(),) if len(connection) == 1 and _COMMA not in connection[0] \
            else connection_tokens(connection)
        keep_alive = b"close" not in tokens if version == b"1.1" else b"keep-alive" in tokens
    else:
        keep_alive = version == b"1.1"
    if has_body and not chunked and content_length is None:
        keep_alive = False
    return ResponseHead(status, reason, version, headers, keep_alive, content_length, chunked, has_body)
