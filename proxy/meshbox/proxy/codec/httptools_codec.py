"""The default codec: llhttp (Node's parser) through httptools; callbacks collect events."""

from __future__ import annotations

import httptools

from meshbox.proxy.codec.events import END, Body, Event, Headers, ProtocolError, ResponseHead, Tunnel
from meshbox.proxy.codec.heads import MAX_HEAD_BYTES, request_head, response_head
from meshbox.proxy.codec.reason_phrases import REASONS


class _Stop(Exception):
    """Raised from a callback to stop llhttp after the head of a bodiless (HEAD) response."""


class HttptoolsRequestParser:
    """Request bytes → events; keeps state across keep-alive and pipelined requests."""

    __slots__ = ("_completed", "_events", "_failed", "_head_size", "_headers", "_in_head", "_max_head", "_parser",
                 "_tunnel", "_url", "partial_head")

    def __init__(self, max_head: int = MAX_HEAD_BYTES) -> None:
        self._parser = httptools.HttpRequestParser(self)
        self._events: list[Event] = []
        self._url = b""
        self._headers: Headers = []
        self._head_size = 0
        self._in_head = True
        self._max_head = max_head
        self._tunnel = False
        # A message completed during the current feed() (its bytes are not the next head's).
        self._completed = False
        # The error a callback raised: every later feed() raises it again.
        self._failed: ProtocolError | None = None
        # Some bytes of a request head arrived, but not all of it (what the head timeout watches). A plain
        # attribute, not a property: it is read once per request.
        self.partial_head = False

    def on_message_begin(self) -> None:
        # llhttp calls this at the first byte of each message (blank lines between messages are skipped),
        # also when that byte follows a complete message in the same read.
        self._in_head = True
        self._head_size = 0
        self.partial_head = True

    def on_url(self, url: bytes) -> None:
        self._url += url
        self._head_size += len(url)

    def on_header(self, name: bytes, value: bytes) -> None:
        if not self._in_head:
            return  # a trailer: dropped, like the hop-by-hop headers
        self._head_size += len(name) + len(value) + 4
        if self._head_size > self._max_head:
            raise ProtocolError(431, "request headers too large")
        # llhttp keeps trailing whitespace; it is not part of the value (RFC 9110 5.5), h11 drops it too.
        self._headers.append((name.lower(), value.rstrip(b" \t")))

    def on_headers_complete(self) -> None:
        self._in_head = False
        self.partial_head = False
        parser = self._parser
        url, headers = self._url, self._headers
        self._url = b""
        self._headers = []
        self._events.append(request_head(parser.get_method(), url, parser.get_http_version().encode(), headers))

    def on_body(self, body: bytes) -> None:
        self._events.append(Body(body))

    def on_message_complete(self) -> None:
        self._events.append(END)
        self._in_head = True
        self._head_size = 0
        self._completed = True

    def feed(self, data: bytes) -> list[Event]:
        """Parse more bytes; raises ProtocolError (status to answer with) on bad input."""
        if self._tunnel:
            return [Tunnel(data)]
        if self._failed is not None:
            # llhttp stays in its error state (and would report it as a callback error without cause).
            raise ProtocolError(self._failed.status, self._failed.reason)
        events = self._events = []
        self._completed = False
        try:
            self._parser.feed_data(data)
        except httptools.HttpParserUpgrade as exc:
            self._tunnel = True
            offset = exc.args[0]
            if offset < len(data):
                events.append(Tunnel(data[offset:]))
        except httptools.HttpParserCallbackError as exc:
            context = exc.__context__
            if isinstance(context, ProtocolError):
                self._failed = context
                raise context.after(events) from None
            raise
        except httptools.HttpParserError as exc:
            # llhttp's one error for a well-formed "HTTP/d.d" it does not know (malformed ones differ).
            status = 505 if str(exc) == "Invalid HTTP version" else 400
            raise ProtocolError(status, str(exc)).after(events) from None
        if self._in_head and not self._completed:
            # A head still incomplete after this read: bound what llhttp buffers for us. When a message
            # completed in this read, only the next head's URL and whole header lines (counted by the
            # callbacks) are known to be its; the rest of its bytes are bounded by this one read.
            self._head_size += len(data)
            if self._head_size > self._max_head:
                raise ProtocolError(431, "request headers too large").after(events)
        return events


class HttptoolsResponseParser:
    """Response bytes → events; :meth:`expect` before each request tells it the method (HEAD has no body)."""

    __slots__ = ("_done", "_events", "_head", "_headers", "_method", "_parser", "_tunnel")

    def __init__(self, request_method: bytes, upgrade: bool = False) -> None:
        del upgrade  # llhttp recognises a 101 by itself
        self._parser = httptools.HttpResponseParser(self)
        self._method = request_method
        self._events: list[Event] = []
        self._headers: Headers = []
        self._head: ResponseHead | None = None
        self._tunnel = False
        self._done = False

    def expect(self, request_method: bytes, upgrade: bool = False) -> None:
        """Get ready for the response to the next request on the same connection."""
        del upgrade
        if self._method == b"HEAD":
            # llhttp was stopped after that head (it would have waited for a body): start afresh.
            self._parser = httptools.HttpResponseParser(self)
        self._method = request_method
        self._head = None
        self._done = False

    # No on_message_begin / on_status: a Python call each. The reason phrase is regenerated from the
    # status code (as Envoy does), and header state is reset when consumed.

    def on_header(self, name: bytes, value: bytes) -> None:
        if self._head is None:
            self._headers.append((name.lower(), value.rstrip(b" \t")))

    def on_headers_complete(self) -> None:
        parser = self._parser
        status = parser.get_status_code()
        headers = self._headers
        self._headers = []
        head = response_head(status, REASONS.get(status, b"Unknown"), parser.get_http_version().encode(), headers,
                             self._method)
        self._head = head
        self._events.append(head)
        if self._method == b"HEAD" and head.status >= 200:
            self._events.append(END)
            self._done = True
            raise _Stop

    def on_body(self, body: bytes) -> None:
        self._events.append(Body(body))

    def on_message_complete(self) -> None:
        self._events.append(END)
        head = self._head
        if head is not None:
            if head.status >= 200 or head.status == 101:
                self._done = True
            else:
                self._head = None  # after a 1xx, the next head is the real one
    def feed(self, data: bytes) -> list[Event]:
        """Parse more bytes; raises ProtocolError(502) on a malformed response."""
        if self._tunnel:
            return [Tunnel(data)]
        events = self._events = []
        try:
            self._parser.feed_data(data)
        except httptools.HttpParserUpgrade as exc:
            self._tunnel = True
            offset = exc.args[0]
            if offset < len(data):
                events.append(Tunnel(data[offset:]))
        except httptools.HttpParserCallbackError as exc:
            context = exc.__context__
            if isinstance(context, _Stop):
                return events
            if isinstance(context, ProtocolError):
                raise context from None
            raise
        except httptools.HttpParserError as exc:
            raise ProtocolError(502, f"malformed upstream response: {exc}") from None
        return events

    def feed_eof(self) -> list[Event]:
        """The upstream closed: ends a read-until-close body, else the response was cut short."""
        if self._done:
            return []
        head = self._head
        if head is not None and head.has_body and not head.chunked and head.content_length is None:
            self._done = True
            return [END]
        raise ProtocolError(502, "upstream closed the connection before the response was complete")
