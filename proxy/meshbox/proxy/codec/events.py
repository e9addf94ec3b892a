"""Events the HTTP/1.1 codecs produce: what a byte stream means, independent of the parser used."""

from __future__ import annotations

from typing import Final

Headers = list[tuple[bytes, bytes]]


class ProtocolError(Exception):
    """The peer sent something that is not acceptable HTTP/1.1; ``status`` is the reply to send (400, 431, ...)."""

    def __init__(self, status: int, reason: str) -> None:
        super().__init__(f"{status}: {reason}")
        self.status = status
        self.reason = reason
        # Complete messages parsed from the same bytes before the error: still to be served, in order.
        self.events: list[Event] = []

    def after(self, events: list[Event]) -> ProtocolError:
        """Attach the complete messages in ``events`` (up to the last EndOfMessage) and return self."""
        for i in range(len(events) - 1, -1, -1):
            if isinstance(events[i], EndOfMessage):
                self.events = events[: i + 1]
                break
        return self


class RequestHead:
    """A parsed and validated request line plus headers (names lower-cased, order kept).

    ``content_length`` is None when absent; ``chunked`` says the body is chunked; ``upgrade`` is true for
    ``Connection: upgrade`` + ``Upgrade`` requests, after which the connection carries raw tunnel bytes.
    """

    __slots__ = ("chunked", "content_length", "headers", "keep_alive", "method", "target", "upgrade", "version")

    def __init__(self, method: bytes, target: bytes, version: bytes, headers: Headers, keep_alive: bool,
                 content_length: int | None, chunked: bool, upgrade: bool) -> None:
        self.method = method
        self.target = target
        self.version = version
        self.headers = headers
        self.keep_alive = keep_alive
        self.content_length = content_length
        self.chunked = chunked
        self.upgrade = upgrade

    def __repr__(self) -> str:
        return f"RequestHead({self.method!r}, {self.target!r}, {self.version!r}, {self.headers!r})"


class ResponseHead:
    """A parsed status line plus headers. ``has_body`` is false for 1xx/204/304 and replies to HEAD;
    ``content_length`` None with ``chunked`` false and ``has_body`` true means "read until close"."""

    __slots__ = ("chunked", "content_length", "has_body", "headers", "keep_alive", "reason", "status", "version")

    def __init__(self, status: int, reason: bytes, version: bytes, headers: Headers, keep_alive: bool,
                 content_length: int | None, chunked: bool, has_body: bool) -> None:
        self.status = status
        self.reason = reason
        self.version = version
        self.headers = headers
        self.keep_alive = keep_alive
        self.content_length = content_length
        self.chunked = chunked
        self.has_body = has_body

    def __repr__(self) -> str:
        return f"ResponseHead({self.status}, {self.reason!r}, {self.version!r}, {self.headers!r})"


class Body:
    """A piece of a message body (de-chunked)."""

    __slots__ = ("data",)

    def __init__(self, data: bytes) -> None:
        self.data = data

    def __repr__(self) -> str:
        return f"Body({self.data!r})"


class EndOfMessage:
    """The message is complete (trailers, if any, are dropped)."""

    __slots__ = ()

    def __repr__(self) -> str:
        return "EndOfMessage()"


class Tunnel:
    """Raw bytes after an upgrade (WebSocket) head: no longer HTTP."""

    __slots__ = ("data",)

    def __init__(self, data: bytes) -> None:
        self.data = data

    def __repr__(self) -> str:
        return f"Tunnel({self.data!r})"


END: Final = EndOfMessage()
Event = RequestHead | ResponseHead | Body | EndOfMessage | Tunnel
