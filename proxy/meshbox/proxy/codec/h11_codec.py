"""The reference codec: h11, pure Python, selected with ``--codec h11``.

h11 is more lenient than llhttp in a few places (bare LF line endings, obs-fold, no limit on a head
that arrives in one piece), so this wrapper collects each head itself and refuses those shapes
before h11 sees it; everything else is h11's parsing plus the shared rules in ``heads``.
"""

from __future__ import annotations

import re

import h11

from meshbox.proxy.codec.events import END, Body, Event, ProtocolError, RequestHead, ResponseHead, Tunnel
from meshbox.proxy.codec.heads import (
    MAX_HEAD_BYTES,
    METHODS,
    reason_phrase,
    request_head,
    response_head,
    unsupported_version,
)


def _check_line_endings(head: bytes, *, complete: bool) -> None:
    """Refuse bare LF, bare CR and obs-fold (a header line starting with whitespace)."""
    tail = head if complete or not head.endswith(b"\r") else head[:-1]
    crlf = tail.count(b"\r\n")
    if tail.count(b"\n") != crlf:
        raise ProtocolError(400, "bare LF in head")
    if tail.count(b"\r") != crlf:
        raise ProtocolError(400, "bare CR in head")
    # find(), not `in`: `bytes in bytes` first tries its operand as an integer (a formatted TypeError).
    if tail.find(b"\r\n ") >= 0 or tail.find(b"\r\n\t") >= 0:
        raise ProtocolError(400, "obsolete line folding in head")


_CONTENT_LENGTH_LINE = re.compile(rb"\r\ncontent-length[ \t]*:([^\r\n]*)", re.IGNORECASE)
# The start of a request line as far as it has arrived: a method token, then a space.
_REQUEST_LINE_START = re.compile(rb"[A-Z]*(?: |$)")


def _check_raw_head(head: bytes, status: int = 400) -> None:
    """What h11 would silently normalize: repeated or list-valued Content-Length (it merges equal values)."""
    values = _CONTENT_LENGTH_LINE.findall(head)
    if len(values) > 1:
        raise ProtocolError(status, "duplicate Content-Length")
    if values and not values[0].strip(b" \t").isdigit():
        raise ProtocolError(status, "invalid Content-Length")


# The versions llhttp knows: it reads their heads on (a 505 comes after any header error); others stop it.
_LLHTTP_VERSIONS = frozenset({b"0.9", b"1.0", b"1.1", b"2.0"})
_REQUEST_LINE = re.compile(rb"([A-Z]+) ([\x21-\x7e]+) HTTP/(\d\.\d)")
# Request targets llhttp reads up to the version (CONNECT's authority form takes anything).
_TARGET_START = re.compile(rb"/|\*|[A-Za-z]+://")


def _check_version(buf: bytes) -> None:
    """An unknown version in a well-formed request line is refused first, as llhttp does (it reads the
    line before any header), so both codecs give the same status for a head with several faults."""
    m = _REQUEST_LINE.match(buf)
    if m is None or m.group(3) in _LLHTTP_VERSIONS:
        return
    method = m.group(1)
    if method == b"CONNECT" or (method in METHODS and _TARGET_START.match(m.group(2))):
        raise unsupported_version(m.group(3))


_CONTROL = re.compile(rb"[\x00-\x08\x0a-\x1f\x7f]")


def _check_values(headers: list[tuple[bytes, bytes]], status: int) -> None:
    """llhttp refuses control characters in header values; h11 lets some through."""
    for _, value in headers:
        if _CONTROL.search(value):
            raise ProtocolError(status, "control character in a header value")


def _remote_error(exc: h11.RemoteProtocolError, status: int) -> ProtocolError:
    hint = exc.error_status_hint
    return ProtocolError(hint if hint in (413, 431) else status, str(exc))


class H11RequestParser:
    """Request bytes → events, one h11 server connection per request (keep-alive handled by us)."""

    __slots__ = ("_buf", "_closing", "_conn", "_head", "_max_head", "_tunnel")

    def __init__(self, max_head: int = MAX_HEAD_BYTES) -> None:
        self._buf = b""
        self._conn: h11.Connection | None = None
        self._head: RequestHead | None = None
        self._max_head = max_head
        self._tunnel = False
        self._closing = False  # the last request was not keep-alive: nothing may follow (as in llhttp)

    @property
    def partial_head(self) -> bool:
        """Some bytes of a request head arrived, but not all of it (what the head timeout watches)."""
        return self._conn is None and bool(self._buf.lstrip(b"\r\n"))

    def feed(self, data: bytes) -> list[Event]:
        """Parse more bytes; raises ProtocolError (status to answer with) on bad input."""
        if self._tunnel:
            return [Tunnel(data)]
        events: list[Event] = []
        try:
            return self._feed(data, events)
        except ProtocolError as exc:
            raise exc.after(events) from None

    def _feed(self, data: bytes, events: list[Event]) -> list[Event]:
        if self._closing:
            raise ProtocolError(400, "data after a request that closes the connection")
        if self._conn is None:
            self._buf += data
        else:
            self._conn.receive_data(data)
        while True:
            conn = self._conn
            if conn is None:
                buf = self._buf
                while buf.startswith(b"\r\n"):
                    buf = buf[2:]
                self._buf = buf
                end = buf.find(b"\r\n\r\n")
                head_len = len(buf) if end < 0 else end + 4
                if head_len > self._max_head:
                    raise ProtocolError(431, "request headers too large")
                _check_version(buf)
                _check_line_endings(buf[:head_len], complete=end >= 0)
                if buf != b"\r" and not _REQUEST_LINE_START.match(buf):
                    # llhttp rejects a non-token method at once; h11 would wait for the line to end.
                    raise ProtocolError(400, "invalid request line")
                if end < 0:
                    return events
                _check_raw_head(buf[:head_len])
                conn = self._conn = h11.Connection(h11.SERVER, max_incomplete_event_size=self._max_head)
                conn.receive_data(buf)
                self._buf = b""
            try:
                event = conn.next_event()
            except h11.RemoteProtocolError as exc:
                raise _remote_error(exc, 400) from None
            if event is h11.NEED_DATA:
                if self._head is not None and self._head.chunked:
                    # llhttp refuses a bare LF in chunk framing at once; h11 would wait for a CRLF forever.
                    _check_line_endings(conn.trailing_data[0], complete=False)
                return events
            if isinstance(event, h11.Request):
                headers = list(event.headers)
                _check_values(headers, 400)
                head = request_head(event.method, event.target, event.http_version, headers)
                self._head = head
                events.append(head)
            elif isinstance(event, h11.Data):
                events.append(Body(bytes(event.data)))
            elif isinstance(event, h11.EndOfMessage):
                events.append(END)
                rest = conn.trailing_data[0]
                self._conn = None
                finished = self._head
                self._head = None
                if finished is not None and finished.upgrade:
                    self._tunnel = True
                    if rest:
                        events.append(Tunnel(rest))
                    return events
                if finished is not None and not finished.keep_alive:
                    self._closing = True
                    if rest:
                        raise ProtocolError(400, "data after a request that closes the connection")
                    return events
                self._buf = rest
            else:
                raise ProtocolError(400, f"unexpected {type(event).__name__}")


class H11ResponseParser:
    """Response bytes → events for one request (h11 is told the request, for HEAD and upgrades)."""

    __slots__ = ("_conn", "_done", "_head", "_method", "_raw", "_tunnel")

    def __init__(self, request_method: bytes, upgrade: bool = False) -> None:
        self.expect(request_method, upgrade)

    def expect(self, request_method: bytes, upgrade: bool = False) -> None:
        """Get ready for the response to the next request (h11 is told that request anew)."""
        conn = h11.Connection(h11.CLIENT)
        headers = [(b"host", b"upstream"), (b"content-length", b"0")]
        if upgrade:
            headers += [(b"connection", b"upgrade"), (b"upgrade", b"tunnel")]
        conn.send(h11.Request(method=request_method, target=b"/", headers=headers))
        conn.send(h11.EndOfMessage())
        self._conn = conn
        self._method = request_method
        self._head: ResponseHead | None = None
        self._done = False
        self._tunnel = False
        self._raw = b""  # bytes of heads not yet parsed, for _check_raw_head

    def feed(self, data: bytes) -> list[Event]:
        """Parse more bytes; raises ProtocolError(502) on a malformed response."""
        if self._tunnel:
            return [Tunnel(data)]
        if self._head is None or self._head.status < 200:
            self._raw += data
        self._conn.receive_data(data)
        return self._pump()

    def feed_eof(self) -> list[Event]:
        """The upstream closed: ends a read-until-close body, else the response was cut short."""
        if self._done:
            return []
        self._conn.receive_data(b"")
        events = self._pump()
        if not self._done:
            raise ProtocolError(502, "upstream closed the connection before the response was complete")
        return events

    def _pump(self) -> list[Event]:
        events: list[Event] = []
        conn = self._conn
        while not self._done:
            try:
                event = conn.next_event()
            except h11.RemoteProtocolError as exc:
                if self._head is not None and not self._head.has_body and self._method == b"HEAD":
                    break
                raise _remote_error(exc, 502) from None
            if event is h11.NEED_DATA or event is h11.PAUSED:
                if conn.their_state is h11.SWITCHED_PROTOCOL:
                    self._done = self._tunnel = True
                    rest = conn.trailing_data[0]
                    if rest:
                        events.append(Tunnel(rest))
                break
            if isinstance(event, h11.InformationalResponse | h11.Response):
                end = self._raw.find(b"\r\n\r\n") + 4
                _check_raw_head(self._raw[:end], 502)
                self._raw = self._raw[end:]
                headers = list(event.headers)
                _check_values(headers, 502)
                head = response_head(event.status_code, reason_phrase(event.status_code), event.http_version,
                                     headers, self._method)
                self._head = head
                events.append(head)
                if isinstance(event, h11.InformationalResponse):
                    events.append(END)
            elif isinstance(event, h11.Data):
                events.append(Body(bytes(event.data)))
            elif isinstance(event, h11.EndOfMessage):
                events.append(END)
                self._done = True
            elif isinstance(event, h11.ConnectionClosed):
                raise ProtocolError(502, "upstream closed the connection before the response was complete")
        return events
