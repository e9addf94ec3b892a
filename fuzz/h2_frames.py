"""HTTP/2 on the wire, by hand: frames (RFC 9113 §4, §6) and HPACK header blocks (RFC 7541) built
byte by byte, so the fuzz can write what no codec would (bad lengths, flags, stream ids, indexes), and a
reader of the frames the proxy sends back. Independent of the proxy's codec on purpose."""

from __future__ import annotations

import struct
from dataclasses import dataclass

from hpack.huffman import HuffmanEncoder
from hpack.huffman_constants import REQUEST_CODES, REQUEST_CODES_LENGTH

PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"

# Frame types (RFC 9113 §6) and flags.
DATA, HEADERS, PRIORITY, RST_STREAM, SETTINGS, PUSH_PROMISE, PING, GOAWAY, WINDOW_UPDATE, CONTINUATION = range(10)
END_STREAM, ACK, END_HEADERS, PADDED, PRIORITY_FLAG = 0x1, 0x1, 0x4, 0x8, 0x20
FRAME_NAMES = ("DATA", "HEADERS", "PRIORITY", "RST_STREAM", "SETTINGS", "PUSH_PROMISE", "PING", "GOAWAY",
               "WINDOW_UPDATE", "CONTINUATION")

# SETTINGS identifiers (RFC 9113 §6.5.2).
HEADER_TABLE_SIZE, ENABLE_PUSH, MAX_CONCURRENT_STREAMS, INITIAL_WINDOW_SIZE, MAX_FRAME_SIZE, \
    MAX_HEADER_LIST_SIZE = range(1, 7)
# Error codes (RFC 9113 §7).
NO_ERROR, PROTOCOL_ERROR, INTERNAL_ERROR, FLOW_CONTROL_ERROR = 0, 1, 2, 3
REFUSED_STREAM, CANCEL, COMPRESSION_ERROR, ENHANCE_YOUR_CALM = 7, 8, 9, 11

DEFAULT_MAX_FRAME = 16384
MAX_WINDOW = (1 << 31) - 1
_HUFFMAN = HuffmanEncoder(REQUEST_CODES, REQUEST_CODES_LENGTH)


def frame(kind: int, flags: int, sid: int, payload: bytes = b"", length: int | None = None) -> bytes:
    """One frame; ``length`` overrides the 24-bit length field (to lie about the payload)."""
    n = len(payload) if length is None else length
    return struct.pack(">I", n)[1:] + bytes((kind, flags)) + struct.pack(">I", sid & 0xFFFFFFFF) + payload


def settings(*pairs: tuple[int, int]) -> bytes:
    return frame(SETTINGS, 0, 0, b"".join(struct.pack(">HI", k, v & 0xFFFFFFFF) for k, v in pairs))


def window_update(sid: int, increment: int) -> bytes:
    return frame(WINDOW_UPDATE, 0, sid, struct.pack(">I", increment & 0xFFFFFFFF))


def rst_stream(sid: int, code: int) -> bytes:
    return frame(RST_STREAM, 0, sid, struct.pack(">I", code))


def ping(data: bytes = b"fuzzping", ack: bool = False) -> bytes:
    return frame(PING, ACK if ack else 0, 0, data)


def goaway(last: int, code: int, debug: bytes = b"") -> bytes:
    return frame(GOAWAY, 0, 0, struct.pack(">II", last, code) + debug)


def priority(sid: int, depends_on: int, weight: int = 15, exclusive: bool = False) -> bytes:
    return frame(PRIORITY, 0, sid, struct.pack(">IB", depends_on | (exclusive << 31), weight))


def padded(payload: bytes, pad: int) -> bytes:
    """A PADDED frame's payload: the pad length octet, the payload, ``pad`` zero octets."""
    return bytes((pad,)) + payload + b"\0" * pad


# -- HPACK ---------------------------------------------------------------------------------------------

def hpack_int(value: int, prefix_bits: int, first: int = 0) -> bytes:
    """An HPACK integer (RFC 7541 §5.1) with ``first`` in the bits above the prefix."""
    limit = (1 << prefix_bits) - 1
    if value < limit:
        return bytes((first | value,))
    out = bytearray((first | limit,))
    value -= limit
    while value >= 128:
        out.append(0x80 | (value & 0x7F))
        value >>= 7
    out.append(value)
    return bytes(out)


def hpack_string(data: bytes, huffman: bool = False) -> bytes:
    if huffman:
        data = _HUFFMAN.encode(data)
    return hpack_int(len(data), 7, 0x80 if huffman else 0) + data


def literal(name: bytes, value: bytes, huffman: bool = False, index: int = 0) -> bytes:
    """A literal field without indexing (RFC 7541 §6.2.2): it leaves the dynamic table alone, so every
    header block of a script decodes the same on its own (the minimiser drops requests freely).
    ``index`` names a static table entry instead of spelling the name."""
    if index:
        return hpack_int(index, 4) + hpack_string(value, huffman)
    return b"\x00" + hpack_string(name, huffman) + hpack_string(value, huffman)


# Static table names (RFC 7541 Appendix A) the fuzz refers to by index.
STATIC_NAMES = {b":authority": 1, b":method": 2, b":path": 4, b":scheme": 6, b":status": 8,
                b"content-length": 28, b"content-type": 31, b"host": 38, b"user-agent": 58}
STATIC_FULL = {(b":method", b"GET"): 2, (b":method", b"POST"): 3, (b":path", b"/"): 4,
               (b":scheme", b"http"): 6, (b":scheme", b"https"): 7}


def header_block(headers: list[tuple[bytes, bytes]], huffman: bool = False, indexed: bool = True) -> bytes:
    """Encode a header list without touching the dynamic table: static-table indexes where they fit
    (when ``indexed``), literals without indexing otherwise. Names and values go as given, unchecked."""
    out = []
    for name, value in headers:
        full = STATIC_FULL.get((name, value)) if indexed else None
        if full:
            out.append(hpack_int(full, 7, 0x80))
        else:
            out.append(literal(name, value, huffman, STATIC_NAMES.get(name, 0) if indexed else 0))
    return b"".join(out)


# -- reading what the proxy sends -------------------------------------------------------------------

@dataclass
class Frame:
    kind: int
    flags: int
    sid: int
    payload: bytes

    def __str__(self) -> str:
        name = FRAME_NAMES[self.kind] if self.kind < len(FRAME_NAMES) else f"type {self.kind}"
        return f"{name} flags={self.flags:#x} stream={self.sid} {len(self.payload)}B"


class FrameError(Exception):
    """The proxy sent bytes that are not HTTP/2 frames."""


class FrameReader:
    """Splits a byte stream into frames (payload padding left in place)."""

    def __init__(self, max_frame: int = DEFAULT_MAX_FRAME) -> None:
        self.buf = bytearray()
        self.max_frame = max_frame

    def feed(self, data: bytes) -> list[Frame]:
        self.buf += data
        frames = []
        while len(self.buf) >= 9:
            length = int.from_bytes(self.buf[:3], "big")
            if length > self.max_frame:
                raise FrameError(f"a frame of {length} bytes, over the {self.max_frame} the client allows")
            if len(self.buf) < 9 + length:
                break
            kind, flags = self.buf[3], self.buf[4]
            sid = int.from_bytes(self.buf[5:9], "big") & 0x7FFFFFFF
            frames.append(Frame(kind, flags, sid, bytes(self.buf[9:9 + length])))
            del self.buf[:9 + length]
        return frames


def unpad(f: Frame) -> bytes:
    """The payload of a DATA or HEADERS frame without padding and priority fields."""
    body = f.payload
    if f.flags & PADDED:
        if not body or body[0] >= len(body):
            raise FrameError(f"bad padding in {f}")
        body = body[1:len(body) - body[0]]
    if f.kind == HEADERS and f.flags & PRIORITY_FLAG:
        body = body[5:]
    return body
