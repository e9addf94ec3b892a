"""What :class:`~meshbox.proxy.h2_connection.H2Connection` reports and raises: events, error codes
(RFC 9113 7), setting identifiers (RFC 9113 6.5.2) and exceptions."""

from __future__ import annotations

from typing import Final

Headers = list[tuple[bytes, bytes]]

# Error codes.
NO_ERROR: Final = 0x0
PROTOCOL_ERROR: Final = 0x1
INTERNAL_ERROR: Final = 0x2
FLOW_CONTROL_ERROR: Final = 0x3
STREAM_CLOSED: Final = 0x5
FRAME_SIZE_ERROR: Final = 0x6
REFUSED_STREAM: Final = 0x7
CANCEL: Final = 0x8
COMPRESSION_ERROR: Final = 0x9
ENHANCE_YOUR_CALM: Final = 0xB

# Settings.
HEADER_TABLE_SIZE: Final = 0x1
ENABLE_PUSH: Final = 0x2
MAX_CONCURRENT_STREAMS: Final = 0x3
INITIAL_WINDOW_SIZE: Final = 0x4
MAX_FRAME_SIZE: Final = 0x5
MAX_HEADER_LIST_SIZE: Final = 0x6


class RequestReceived:
    """A client opened a stream with these request headers (``stream_ended``: and no body)."""

    __slots__ = ("headers", "stream_ended", "stream_id")

    def __init__(self, stream_id: int, headers: Headers, stream_ended: bool) -> None:
        self.stream_id = stream_id
        self.headers = headers
        self.stream_ended = stream_ended


class ResponseReceived:
    """The final response head on one of the proxy's streams (1xx heads are not reported)."""

    __slots__ = ("headers", "stream_ended", "stream_id")

    def __init__(self, stream_id: int, headers: Headers, stream_ended: bool) -> None:
        self.stream_id = stream_id
        self.headers = headers
        self.stream_ended = stream_ended


class TrailersReceived:
    """Trailers: the last header block of a stream (a StreamEnded follows)."""

    __slots__ = ("headers", "stream_id")

    def __init__(self, stream_id: int, headers: Headers) -> None:
        self.stream_id = stream_id
        self.headers = headers


class DataReceived:
    """Body bytes; ``flow_controlled_length`` (with padding) is what to acknowledge once they are used."""

    __slots__ = ("data", "flow_controlled_length", "stream_id")

    def __init__(self, stream_id: int, data: bytes, flow_controlled_length: int) -> None:
        self.stream_id = stream_id
        self.data = data
        self.flow_controlled_length = flow_controlled_length


class StreamEnded:
    """The peer finished sending on the stream."""

    __slots__ = ("stream_id",)

    def __init__(self, stream_id: int) -> None:
        self.stream_id = stream_id


class StreamReset:
    """The stream ended abruptly: RST_STREAM from the peer (``remote``), or a stream error found here
    (the connection already sent the RST_STREAM)."""

    __slots__ = ("error_code", "remote", "stream_id")

    def __init__(self, stream_id: int, error_code: int, remote: bool) -> None:
        self.stream_id = stream_id
        self.error_code = error_code
        self.remote = remote


class PingReceived:
    """A PING (already acknowledged)."""

    __slots__ = ()


class RemoteSettingsChanged:
    """A SETTINGS frame from the peer (already applied and acknowledged)."""

    __slots__ = ()


class ConnectionTerminated:
    """GOAWAY from the peer: streams above ``last_stream_id`` were not processed."""

    __slots__ = ("error_code", "last_stream_id")

    def __init__(self, error_code: int, last_stream_id: int) -> None:
        self.error_code = error_code
        self.last_stream_id = last_stream_id


Event = (RequestReceived | ResponseReceived | TrailersReceived | DataReceived | StreamEnded | StreamReset
         | PingReceived | RemoteSettingsChanged | ConnectionTerminated)


class H2Error(Exception):
    """A call the connection cannot carry out, or a peer that broke the protocol (then ``code`` is the
    GOAWAY's error code and the GOAWAY is already queued)."""

    def __init__(self, message: str, code: int = PROTOCOL_ERROR) -> None:
        super().__init__(message)
        self.code = code


class StreamClosedError(H2Error):
    """The stream is closed (or was never opened) for what was asked."""


class FlowControlError(H2Error):
    """More data than the peer's window allows."""
