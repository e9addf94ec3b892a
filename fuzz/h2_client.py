"""The client side of an HTTP/2 script: what the proxy sent back, frame by frame, per stream (response
head, body, trailers, RST_STREAM) and per connection (GOAWAY, close), with the SETTINGS and PING
acknowledgements a client owes. Header blocks are decoded with ``hpack`` in the proxy's order (its
dynamic table); bytes that are not frames or HPACK are a finding of their own."""

from __future__ import annotations

from dataclasses import dataclass, field

from hpack import Decoder
from hpack.exceptions import HPACKError

from . import h2_frames as f

Headers = list[tuple[bytes, bytes]]
CLIENT_SETTINGS = f.settings((f.ENABLE_PUSH, 0), (f.INITIAL_WINDOW_SIZE, 1 << 22), (f.MAX_HEADER_LIST_SIZE, 1 << 20))
# The preface, the client's SETTINGS, and a connection window the proxy never exhausts (the client
# does not hand window back as it reads).
PREAMBLE = f.PREFACE + CLIENT_SETTINGS + f.window_update(0, 1 << 30)
MAX_FRAME_ACCEPTED = 65536  # a valid script may raise SETTINGS_MAX_FRAME_SIZE to this


@dataclass
class StreamSeen:
    """One stream as the client saw it."""

    headers: Headers | None = None  # the final (non-1xx) response head
    informational: int = 0
    body: bytearray = field(default_factory=bytearray)
    trailers: Headers | None = None
    ended: bool = False  # END_STREAM received
    reset: int | None = None  # RST_STREAM error code received

    @property
    def settled(self) -> bool:
        return self.ended or self.reset is not None

    def status(self) -> bytes | None:
        return dict(self.headers).get(b":status") if self.headers is not None else None

    def header(self, name: bytes) -> bytes | None:
        return dict(self.headers).get(name) if self.headers is not None else None


class H2Session:
    """Feeds on the proxy's bytes; ``feed`` returns what the client must write back (ACKs)."""

    def __init__(self) -> None:
        self.reader = f.FrameReader(MAX_FRAME_ACCEPTED)
        self.decoder = Decoder()
        self.decoder.max_header_list_size = 1 << 20
        # A script may raise SETTINGS_HEADER_TABLE_SIZE (any 32-bit value is legal): let the proxy use it.
        self.decoder.max_allowed_table_size = 1 << 32
        self.streams: dict[int, StreamSeen] = {}
        self.goaway: tuple[int, int] | None = None  # (last stream id, error code)
        self.settings_seen = False
        self.problem: str | None = None  # the proxy sent something that is not valid HTTP/2
        self.block: tuple[int, int, bytearray] | None = None  # a header block awaiting CONTINUATION
        self.replies = bytearray()  # ACKs owed, written by the runner only between frames
        self.may_reply = False  # the runner's writes are done: ACKs go out as they arise
        self.must_close = False  # the script broke the preface: the proxy owes only the connection's end

    def stream(self, sid: int) -> StreamSeen:
        st = self.streams.get(sid)
        if st is None:
            st = self.streams[sid] = StreamSeen()
        return st

    def settled(self, sid: int, closed: bool) -> bool:
        """The proxy is done with the stream: answered, reset, refused by GOAWAY, or the connection is gone."""
        st = self.streams.get(sid)
        if st is not None and st.settled:
            return True
        return closed or (self.goaway is not None and sid > self.goaway[0])

    def feed(self, data: bytes) -> bytes:
        if self.problem:
            return b""
        try:
            frames = self.reader.feed(data)
        except f.FrameError as exc:
            self.problem = str(exc)
            return b""
        out = []
        for fr in frames:
            try:
                out.append(self._frame(fr))
            except (f.FrameError, HPACKError) as exc:
                self.problem = f"{type(exc).__name__}: {exc} (in {fr})"
                break
        return b"".join(out)

    def _frame(self, fr: f.Frame) -> bytes:
        if self.block is not None and (fr.kind != f.CONTINUATION or fr.sid != self.block[0]):
            raise f.FrameError(f"{fr} interrupts a header block of stream {self.block[0]}")
        if not self.settings_seen and fr.kind != f.SETTINGS:
            raise f.FrameError(f"the proxy's first frame is {fr}, not SETTINGS")
        kind = fr.kind
        if kind == f.SETTINGS:
            self.settings_seen = True
            if fr.sid or len(fr.payload) % 6 or (fr.flags & f.ACK and fr.payload):
                raise f.FrameError(f"bad SETTINGS {fr}")
            return b"" if fr.flags & f.ACK else f.frame(f.SETTINGS, f.ACK, 0)
        if kind == f.PING:
            if fr.sid or len(fr.payload) != 8:
                raise f.FrameError(f"bad PING {fr}")
            return b"" if fr.flags & f.ACK else f.ping(fr.payload, ack=True)
        if kind == f.GOAWAY:
            if fr.sid or len(fr.payload) < 8:
                raise f.FrameError(f"bad GOAWAY {fr}")
            last, code = int.from_bytes(fr.payload[:4], "big") & 0x7FFFFFFF, int.from_bytes(fr.payload[4:8], "big")
            if self.goaway is not None and last > self.goaway[0]:
                raise f.FrameError(f"GOAWAY raised its last stream id from {self.goaway[0]} to {last}")
            self.goaway = (last, code)
            return b""
        if kind == f.WINDOW_UPDATE or kind == f.PRIORITY or kind > f.CONTINUATION:
            return b""
        if not fr.sid:
            raise f.FrameError(f"{fr} on stream 0")
        if kind == f.PUSH_PROMISE:
            raise f.FrameError("PUSH_PROMISE after the client's SETTINGS_ENABLE_PUSH 0")
        if kind == f.RST_STREAM:
            if len(fr.payload) != 4:
                raise f.FrameError(f"bad RST_STREAM {fr}")
            self.stream(fr.sid).reset = int.from_bytes(fr.payload, "big")
            return b""
        st = self.stream(fr.sid)
        if st.settled and kind != f.RST_STREAM:
            raise f.FrameError(f"{fr} after the stream ended")
        if kind == f.DATA:
            if st.headers is None:
                raise f.FrameError(f"{fr} before a response head")
            st.body += f.unpad(fr)
            st.ended = bool(fr.flags & f.END_STREAM)
            return b""
        if kind == f.HEADERS:
            self.block = (fr.sid, fr.flags, bytearray(f.unpad(fr)))
        else:  # CONTINUATION
            if self.block is None:
                raise f.FrameError(f"{fr} without a header block")
            self.block[2].extend(fr.payload)
        if fr.flags & f.END_HEADERS:
            sid, flags, block = self.block
            self.block = None
            fields = [(bytes(n), bytes(v)) for n, v in self.decoder.decode(bytes(block), raw=True)]
            self._headers(self.stream(sid), fields, bool(flags & f.END_STREAM))
        return b""

    def _headers(self, st: StreamSeen, headers: Headers, end: bool) -> None:
        status = dict(headers).get(b":status", b"")
        if st.headers is None and status.startswith(b"1") and not end:
            st.informational += 1
        elif st.headers is None:
            st.headers = headers
        elif not end:
            raise f.FrameError("a second HEADERS (trailers) without END_STREAM")
        else:
            st.trailers = headers
        st.ended = end
