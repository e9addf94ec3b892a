"""HTTP/2 framing (RFC 9113 4, 6): frame types, flags, the limits the codec keeps, building a frame, and
the connection error raised while reading one."""

from __future__ import annotations

from typing import Final

from meshbox.proxy.h2_events import PROTOCOL_ERROR

PREFACE: Final = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"
DEFAULT_WINDOW: Final = 65535
MAX_WINDOW: Final = (1 << 31) - 1
DEFAULT_FRAME_SIZE: Final = 16384
UNLIMITED: Final = 1 << 31
# The header list the proxy accepts unless told otherwise (as the HTTP/1.1 head limit).
DEFAULT_HEADER_LIST_SIZE: Final = 64 * 1024
# A header block may span this many CONTINUATION frames (the CONTINUATION flood stops here).
MAX_CONTINUATIONS: Final = 64

DATA: Final = 0x0
HEADERS: Final = 0x1
PRIORITY: Final = 0x2
RST_STREAM: Final = 0x3
SETTINGS: Final = 0x4
PUSH_PROMISE: Final = 0x5
PING: Final = 0x6
GOAWAY: Final = 0x7
WINDOW_UPDATE: Final = 0x8
CONTINUATION: Final = 0x9

END_STREAM: Final = 0x1
ACK: Final = 0x1
END_HEADERS: Final = 0x4
PADDED: Final = 0x8
PRIORITY_FLAG: Final = 0x20


def frame(kind: int, flags: int, stream_id: int, payload: bytes = b"") -> bytes:
    """One frame: the 9-byte header, then ``payload``."""
    size = len(payload)
    return bytes((size >> 16, (size >> 8) & 0xFF, size & 0xFF, kind, flags, (stream_id >> 24) & 0x7F,
                  (stream_id >> 16) & 0xFF, (stream_id >> 8) & 0xFF, stream_id & 0xFF)) + payload


def u32(data: bytes, at: int) -> int:
    return (data[at] << 24) | (data[at + 1] << 16) | (data[at + 2] << 8) | data[at + 3]



class ConnectionFailure(Exception):
    """A connection error found while reading a frame: the connection answers GOAWAY ``code`` and raises."""

    def __init__(self, code: int, message: str) -> None:
        super().__init__(message)
        self.code = code


def unpad(payload: bytes) -> bytes:
    """The payload of a PADDED frame without its pad length byte and padding."""
    if not payload or payload[0] >= len(payload):
        raise ConnectionFailure(PROTOCOL_ERROR, "padding as long as the frame")
    return payload[1:len(payload) - payload[0]]
