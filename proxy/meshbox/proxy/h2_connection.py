"""One HTTP/2 connection as a pure state machine (RFC 9113), either side: bytes in, events out; calls
in, bytes to send out. No sockets, no clock.

It keeps what the protocol needs and nothing the proxy does not use: stream states, both flow-control
windows of each stream and of the connection, settings both ways, HPACK both ways (``hpack``), header
validation (``h2_headers``). Priorities are parsed and ignored (RFC 9113 5.3.2); server push is off.

A peer that breaks the protocol gets GOAWAY with the error code, and ``receive_data`` raises
:class:`H2Error`; a malformed stream gets RST_STREAM (and a :class:`StreamReset` event when the caller
knew the stream). Received data is given back to the peer's windows only when the caller acknowledges
it, in WINDOW_UPDATEs of at least half a window, so a reader that stops stops its writer.
"""

from __future__ import annotations

from typing import Final

from meshbox.proxy.h2_events import (
    CANCEL,
    COMPRESSION_ERROR,
    ENABLE_PUSH,
    ENHANCE_YOUR_CALM,
    FLOW_CONTROL_ERROR,
    FRAME_SIZE_ERROR,
    HEADER_TABLE_SIZE,
    INITIAL_WINDOW_SIZE,
    MAX_CONCURRENT_STREAMS,
    MAX_FRAME_SIZE,
    MAX_HEADER_LIST_SIZE,
    NO_ERROR,
    PROTOCOL_ERROR,
    REFUSED_STREAM,
    STREAM_CLOSED,
    ConnectionTerminated,
    DataReceived,
    Event,
    FlowControlError,
    H2Error,
    Headers,
    PingReceived,
    RemoteSettingsChanged,
    RequestReceived,
    ResponseReceived,
    StreamClosedError,
    StreamEnded,
    StreamReset,
    TrailersReceived,
)
from meshbox.proxy.h2_headers import NO_LENGTH, Malformed, check_request, check_response, check_trailers
from meshbox.proxy.hpack import HpackDecoder, HpackEncoder, HpackError

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


def _u32(data: bytes, at: int) -> int:
    return (data[at] << 24) | (data[at + 1] << 16) | (data[at + 2] << 8) | data[at + 3]


class _Failure(Exception):
    """A connection error found while handling a frame (becomes GOAWAY + H2Error)."""

    def __init__(self, code: int, message: str) -> None:
        super().__init__(message)
        self.code = code


class Stream:
    """One stream's state: which directions are closed, windows, and the received length check."""

    __slots__ = ("content_length", "head_received", "head_request", "inbound", "received", "recv_closed",
                 "recv_unacked", "recv_window", "send_closed", "send_window", "sid")

    def __init__(self, sid: int, inbound: bool, send_window: int, recv_window: int) -> None:
        self.sid = sid
        self.inbound = inbound
        self.send_window = send_window
        self.recv_window = recv_window
        self.recv_unacked = 0
        self.recv_closed = False
        self.send_closed = False
        self.head_received = False
        self.head_request = False
        self.content_length = NO_LENGTH
        self.received = 0


class H2Connection:
    """An HTTP/2 connection; ``client``: the proxy opened it (the upstream side)."""

    def __init__(self, client: bool, settings: dict[int, int]) -> None:
        self.client = client
        # Settings the proxy sends in its first SETTINGS and applies from the start.
        self.local_settings = dict(settings)
        self.local_window = settings.get(INITIAL_WINDOW_SIZE, DEFAULT_WINDOW)
        self.local_max_streams = settings.get(MAX_CONCURRENT_STREAMS, UNLIMITED)
        header_list = settings.get(MAX_HEADER_LIST_SIZE, DEFAULT_HEADER_LIST_SIZE)
        self.decoder = HpackDecoder(header_list)
        self.encoder = HpackEncoder()
        # The peer's settings.
        self.remote_window = DEFAULT_WINDOW
        self.remote_max_concurrent_streams = UNLIMITED
        self.max_outbound_frame_size = DEFAULT_FRAME_SIZE
        # Connection windows: what the proxy may send, what the peer may send, and received bytes the
        # caller acknowledged but the peer was not yet given back; conn_target is the window to keep.
        self.conn_send_window = DEFAULT_WINDOW
        self.conn_recv_window = DEFAULT_WINDOW
        self.conn_recv_unacked = 0
        self.conn_target = DEFAULT_WINDOW
        self.streams: dict[int, Stream] = {}
        self.open_inbound = 0
        self.open_outbound = 0
        self.highest_inbound_stream_id = 0
        self.next_stream_id = 1 if client else 2
        self.out: list[bytes] = []
        self.pending = b""
        self.preface_due = not client
        self.goaway_received = False
        self.failed = False
        # A header block being continued: its stream, fragments, END_STREAM flag and frame count.
        self.block_sid = 0
        self.block_parts: list[bytes] = []
        self.block_size = 0
        self.block_end_stream = False
        self.block_frames = 0

    # -- sending -----------------------------------------------------------------------------------
    def initiate_connection(self) -> None:
        """Queue the preface (as a client) and the first SETTINGS."""
        payload = b"".join(bytes((0, code)) + value.to_bytes(4, "big") for code, value in self.local_settings.items())
        if self.client:
            self.out.append(PREFACE)
        self.out.append(frame(SETTINGS, 0, 0, payload))

    def data_to_send(self) -> bytes:
        """Everything queued for the peer since the last call."""
        if not self.out:
            return b""
        data = b"".join(self.out)
        self.out.clear()
        return data

    def clear_outbound_data_buffer(self) -> None:
        self.out.clear()

    def get_next_available_stream_id(self) -> int:
        if self.next_stream_id > MAX_WINDOW:
            raise H2Error("stream ids exhausted on this connection")
        return self.next_stream_id

    def send_headers(self, sid: int, headers: Headers, end_stream: bool = False) -> None:
        """A header block on ``sid``: a new request stream (as a client), a response head or trailers."""
        st = self.streams.get(sid)
        if st is None:
            if not self.client or sid != self.next_stream_id:
                raise StreamClosedError(f"stream {sid} is not open for a header block")
            if self.goaway_received:
                raise H2Error("the peer sent GOAWAY: no new stream")
            if self.open_outbound >= self.remote_max_concurrent_streams:
                raise H2Error("the peer's concurrent stream limit is reached")
            st = Stream(sid, False, self.remote_window, self.local_window)
            st.head_request = (b":method", b"HEAD") in headers
            self.streams[sid] = st
            self.open_outbound += 1
            self.next_stream_id = sid + 2
        elif st.send_closed:
            raise StreamClosedError(f"stream {sid} is closed for sending")
        block = self.encoder.encode(headers)
        flags = END_STREAM if end_stream else 0
        size = self.max_outbound_frame_size
        if len(block) <= size:
            self.out.append(frame(HEADERS, flags | END_HEADERS, sid, block))
        else:
            self.out.append(frame(HEADERS, flags, sid, block[:size]))
            for at in range(size, len(block), size):
                last = at + size >= len(block)
                self.out.append(frame(CONTINUATION, END_HEADERS if last else 0, sid, block[at:at + size]))
        if end_stream:
            self._send_closed(st)

    def send_data(self, sid: int, data: bytes, end_stream: bool = False) -> None:
        """One DATA frame; ``data`` must fit the windows and the peer's frame size."""
        st = self.streams.get(sid)
        if st is None or st.send_closed:
            raise StreamClosedError(f"stream {sid} is closed for sending")
        size = len(data)
        if size > st.send_window or size > self.conn_send_window:
            raise FlowControlError(f"{size} bytes over the peer's window on stream {sid}")
        if size > self.max_outbound_frame_size:
            raise H2Error(f"{size} bytes over the peer's frame size")
        st.send_window -= size
        self.conn_send_window -= size
        self.out.append(frame(DATA, END_STREAM if end_stream else 0, sid, data))
        if end_stream:
            self._send_closed(st)

    def end_stream(self, sid: int) -> None:
        self.send_data(sid, b"", True)

    def reset_stream(self, sid: int, error_code: int = CANCEL) -> None:
        """RST_STREAM on an open stream (a closed one is left alone)."""
        st = self.streams.get(sid)
        if st is not None:
            self.out.append(frame(RST_STREAM, 0, sid, error_code.to_bytes(4, "big")))
            self._forget(st)

    def close_connection(self, error_code: int = NO_ERROR) -> None:
        """GOAWAY naming the last stream the peer opened."""
        self.out.append(self._goaway(error_code))

    def increment_flow_control_window(self, increment: int) -> None:
        """Open the connection's receive window by ``increment`` (and keep it that large)."""
        self.conn_recv_window += increment
        self.conn_target += increment
        self.out.append(frame(WINDOW_UPDATE, 0, 0, increment.to_bytes(4, "big")))

    def acknowledge_received_data(self, size: int, sid: int) -> None:
        """``size`` received bytes were used: give them back to the peer, in updates of half a window."""
        self.conn_recv_unacked += size
        if self.conn_recv_unacked * 2 >= self.conn_target:
            increment = self.conn_recv_unacked
            self.conn_recv_unacked = 0
            self.conn_recv_window += increment
            self.out.append(frame(WINDOW_UPDATE, 0, 0, increment.to_bytes(4, "big")))
        st = self.streams.get(sid)
        if st is not None and not st.recv_closed:
            st.recv_unacked += size
            if st.recv_unacked * 2 >= self.local_window:
                increment = st.recv_unacked
                st.recv_unacked = 0
                st.recv_window += increment
                self.out.append(frame(WINDOW_UPDATE, 0, sid, increment.to_bytes(4, "big")))

    def local_flow_control_window(self, sid: int) -> int:
        """How much may be sent on ``sid`` now."""
        st = self.streams.get(sid)
        if st is None or st.send_closed:
            raise StreamClosedError(f"stream {sid} is closed for sending")
        return min(st.send_window, self.conn_send_window)

    def stream_is_open(self, sid: int) -> bool:
        return sid in self.streams

    def _send_closed(self, st: Stream) -> None:
        st.send_closed = True
        if st.recv_closed:
            self._forget(st)

    def _recv_closed(self, st: Stream) -> None:
        st.recv_closed = True
        if st.send_closed:
            self._forget(st)

    def _forget(self, st: Stream) -> None:
        if self.streams.pop(st.sid, None) is not None:
            if st.inbound:
                self.open_inbound -= 1
            else:
                self.open_outbound -= 1

    def _goaway(self, code: int) -> bytes:
        return frame(GOAWAY, 0, 0, self.highest_inbound_stream_id.to_bytes(4, "big") + code.to_bytes(4, "big"))

    # -- receiving ---------------------------------------------------------------------------------
    def receive_data(self, data: bytes) -> list[Event]:
        """The events in ``data``; H2Error (GOAWAY queued) when the peer broke the protocol."""
        if self.failed:
            return []
        buf = self.pending + data if self.pending else data
        events: list[Event] = []
        pos = 0
        try:
            if self.preface_due:
                if len(buf) < len(PREFACE):
                    if not PREFACE.startswith(buf):
                        raise _Failure(PROTOCOL_ERROR, "not the HTTP/2 connection preface")
                    self.pending = buf
                    return events
                if not buf.startswith(PREFACE):
                    raise _Failure(PROTOCOL_ERROR, "not the HTTP/2 connection preface")
                self.preface_due = False
                pos = len(PREFACE)
            end = len(buf)
            while end - pos >= 9:
                size = (buf[pos] << 16) | (buf[pos + 1] << 8) | buf[pos + 2]
                if size > DEFAULT_FRAME_SIZE:
                    raise _Failure(FRAME_SIZE_ERROR, f"frame of {size} bytes, over {DEFAULT_FRAME_SIZE}")
                if end - pos - 9 < size:
                    break
                kind = buf[pos + 3]
                flags = buf[pos + 4]
                sid = _u32(buf, pos + 5) & 0x7FFFFFFF
                payload = buf[pos + 9:pos + 9 + size]
                pos += 9 + size
                self._frame(kind, flags, sid, payload, events)
        except _Failure as failure:
            self.failed = True
            self.out.append(self._goaway(failure.code))
            raise H2Error(str(failure), failure.code) from None
        self.pending = buf[pos:] if pos < len(buf) else b""
        return events

    def _frame(self, kind: int, flags: int, sid: int, payload: bytes, events: list[Event]) -> None:
        if self.block_sid and kind != CONTINUATION:
            raise _Failure(PROTOCOL_ERROR, "a header block was interrupted by another frame")
        if kind == DATA:
            self._data(flags, sid, payload, events)
        elif kind == HEADERS:
            self._headers(flags, sid, payload, events)
        elif kind == CONTINUATION:
            self._continuation(flags, sid, payload, events)
        elif kind == WINDOW_UPDATE:
            self._window_update(sid, payload)
        elif kind == RST_STREAM:
            self._rst_stream(sid, payload, events)
        elif kind == SETTINGS:
            self._settings(flags, sid, payload, events)
        elif kind == PING:
            if sid:
                raise _Failure(PROTOCOL_ERROR, "PING on a stream")
            if len(payload) != 8:
                raise _Failure(FRAME_SIZE_ERROR, "PING payload is not 8 bytes")
            if not flags & ACK:
                self.out.append(frame(PING, ACK, 0, payload))
                events.append(PingReceived())
        elif kind == GOAWAY:
            if sid:
                raise _Failure(PROTOCOL_ERROR, "GOAWAY on a stream")
            if len(payload) < 8:
                raise _Failure(FRAME_SIZE_ERROR, "GOAWAY shorter than 8 bytes")
            self.goaway_received = True
            events.append(ConnectionTerminated(_u32(payload, 4), _u32(payload, 0) & 0x7FFFFFFF))
        elif kind == PRIORITY:
            if not sid:
                raise _Failure(PROTOCOL_ERROR, "PRIORITY on stream 0")
            if len(payload) != 5:
                self._stream_error(sid, FRAME_SIZE_ERROR, events)
        elif kind == PUSH_PROMISE:
            raise _Failure(PROTOCOL_ERROR, "PUSH_PROMISE (push is not allowed)")

    def _idle(self, sid: int) -> bool:
        """Whether ``sid`` was never opened (no frame but HEADERS and PRIORITY may name it)."""
        if (sid & 1) == (1 if self.client else 0):
            return sid >= self.next_stream_id
        return sid > self.highest_inbound_stream_id

    def _data(self, flags: int, sid: int, payload: bytes, events: list[Event]) -> None:
        if not sid:
            raise _Failure(PROTOCOL_ERROR, "DATA on stream 0")
        size = len(payload)
        if size > self.conn_recv_window:
            raise _Failure(FLOW_CONTROL_ERROR, "DATA over the connection window")
        self.conn_recv_window -= size
        data = _unpad(payload) if flags & PADDED else payload
        st = self.streams.get(sid)
        if st is None or st.recv_closed or not st.head_received:
            if st is None and self._idle(sid):
                raise _Failure(PROTOCOL_ERROR, f"DATA on idle stream {sid}")
            # A stream that is over (or never sent its head): its bytes still count on the connection.
            self.acknowledge_received_data(size, 0)
            if st is not None:
                self._stream_error(sid, STREAM_CLOSED if st.recv_closed else PROTOCOL_ERROR, events)
            return
        if size > st.recv_window:
            self.acknowledge_received_data(size, 0)
            self._stream_error(sid, FLOW_CONTROL_ERROR, events)
            return
        st.recv_window -= size
        st.received += len(data)
        ended = bool(flags & END_STREAM)
        if st.content_length != NO_LENGTH and (st.received > st.content_length
                                               or (ended and st.received != st.content_length)):
            self.acknowledge_received_data(size, 0)
            self._stream_error(sid, PROTOCOL_ERROR, events)
            return
        events.append(DataReceived(sid, data, size))
        if ended:
            events.append(StreamEnded(sid))
            self._recv_closed(st)

    def _headers(self, flags: int, sid: int, payload: bytes, events: list[Event]) -> None:
        if not sid:
            raise _Failure(PROTOCOL_ERROR, "HEADERS on stream 0")
        if flags & PADDED:
            payload = _unpad(payload)
        if flags & PRIORITY_FLAG:
            if len(payload) < 5:
                raise _Failure(FRAME_SIZE_ERROR, "HEADERS too short for its priority")
            payload = payload[5:]
        end_stream = bool(flags & END_STREAM)
        if flags & END_HEADERS:
            self._block(sid, payload, end_stream, events)
            return
        self.block_sid = sid
        self.block_parts = [payload]
        self.block_size = len(payload)
        self.block_end_stream = end_stream
        self.block_frames = 0

    def _continuation(self, flags: int, sid: int, payload: bytes, events: list[Event]) -> None:
        if not self.block_sid or sid != self.block_sid:
            raise _Failure(PROTOCOL_ERROR, "CONTINUATION without a header block to continue")
        self.block_parts.append(payload)
        self.block_size += len(payload)
        self.block_frames += 1
        if self.block_frames > MAX_CONTINUATIONS or self.block_size > self.decoder.max_header_list_size:
            raise _Failure(ENHANCE_YOUR_CALM, "header block too long (CONTINUATION flood)")
        if flags & END_HEADERS:
            block = b"".join(self.block_parts)
            self.block_sid = 0
            self.block_parts = []
            self._block(sid, block, self.block_end_stream, events)

    def _block(self, sid: int, block: bytes, end_stream: bool, events: list[Event]) -> None:
        """A complete header block: a new request, a response head, or trailers."""
        try:
            headers = self.decoder.decode(block)
        except HpackError as exc:
            raise _Failure(ENHANCE_YOUR_CALM if exc.limit else COMPRESSION_ERROR, str(exc)) from None
        st = self.streams.get(sid)
        if st is None:
            if not self.client and sid & 1 and sid > self.highest_inbound_stream_id:
                self._request(sid, headers, end_stream, events)
                return
            if self._idle(sid) or not sid & 1:
                raise _Failure(PROTOCOL_ERROR, f"HEADERS on stream {sid}, which the peer may not open")
            return  # a stream that is over (a late frame after a reset): ignored, HPACK state kept
        if st.recv_closed:
            self._stream_error(sid, STREAM_CLOSED, events)
            return
        try:
            if not st.head_received and self.client:
                status, length = check_response(headers)
                if status < 200:
                    if end_stream:
                        raise Malformed("informational response ends the stream")
                    return
                st.head_received = True
                # A response to HEAD, or a 304, has no content whatever its content-length says
                # (RFC 9113 8.1.1).
                st.content_length = 0 if st.head_request or status == 304 else length
                if end_stream and st.content_length > 0:
                    raise Malformed("content-length without the body")
                events.append(ResponseReceived(sid, headers, end_stream))
            else:
                if not end_stream:
                    raise Malformed("trailers without END_STREAM")
                check_trailers(headers)
                if st.content_length != NO_LENGTH and st.received != st.content_length:
                    raise Malformed("body shorter than its content-length")
                events.append(TrailersReceived(sid, headers))
        except Malformed:
            self._stream_error(sid, PROTOCOL_ERROR, events)
            return
        if end_stream:
            events.append(StreamEnded(sid))
            self._recv_closed(st)

    def _request(self, sid: int, headers: Headers, end_stream: bool, events: list[Event]) -> None:
        self.highest_inbound_stream_id = sid
        if self.open_inbound >= self.local_max_streams:
            self.out.append(frame(RST_STREAM, 0, sid, REFUSED_STREAM.to_bytes(4, "big")))
            return
        try:
            length = check_request(headers)
            if end_stream and length > 0:
                raise Malformed("content-length without the body")
        except Malformed:
            self.out.append(frame(RST_STREAM, 0, sid, PROTOCOL_ERROR.to_bytes(4, "big")))
            return
        st = Stream(sid, True, self.remote_window, self.local_window)
        st.head_received = True
        st.content_length = length
        self.streams[sid] = st
        self.open_inbound += 1
        events.append(RequestReceived(sid, headers, end_stream))
        if end_stream:
            events.append(StreamEnded(sid))
            self._recv_closed(st)

    def _stream_error(self, sid: int, code: int, events: list[Event]) -> None:
        """RST_STREAM ``code``; the caller hears of it when it knew the stream."""
        self.out.append(frame(RST_STREAM, 0, sid, code.to_bytes(4, "big")))
        st = self.streams.get(sid)
        if st is not None:
            self._forget(st)
            events.append(StreamReset(sid, code, False))

    def _rst_stream(self, sid: int, payload: bytes, events: list[Event]) -> None:
        if not sid:
            raise _Failure(PROTOCOL_ERROR, "RST_STREAM on stream 0")
        if len(payload) != 4:
            raise _Failure(FRAME_SIZE_ERROR, "RST_STREAM payload is not 4 bytes")
        st = self.streams.get(sid)
        if st is None:
            if self._idle(sid):
                raise _Failure(PROTOCOL_ERROR, f"RST_STREAM on idle stream {sid}")
            return
        self._forget(st)
        events.append(StreamReset(sid, _u32(payload, 0), True))

    def _window_update(self, sid: int, payload: bytes) -> None:
        if len(payload) != 4:
            raise _Failure(FRAME_SIZE_ERROR, "WINDOW_UPDATE payload is not 4 bytes")
        increment = _u32(payload, 0) & 0x7FFFFFFF
        if not sid:
            if not increment:
                raise _Failure(PROTOCOL_ERROR, "WINDOW_UPDATE of 0 on the connection")
            self.conn_send_window += increment
            if self.conn_send_window > MAX_WINDOW:
                raise _Failure(FLOW_CONTROL_ERROR, "connection window over 2^31-1")
            return
        st = self.streams.get(sid)
        if st is None:
            if self._idle(sid):
                raise _Failure(PROTOCOL_ERROR, f"WINDOW_UPDATE on idle stream {sid}")
            return
        if not increment or st.send_window + increment > MAX_WINDOW:
            # Not reported as an event: the caller learns of it when it next sends on the stream.
            self.out.append(frame(RST_STREAM, 0, sid, (FLOW_CONTROL_ERROR if increment else PROTOCOL_ERROR)
                                  .to_bytes(4, "big")))
            self._forget(st)
            return
        st.send_window += increment

    def _settings(self, flags: int, sid: int, payload: bytes, events: list[Event]) -> None:
        if sid:
            raise _Failure(PROTOCOL_ERROR, "SETTINGS on a stream")
        if flags & ACK:
            if payload:
                raise _Failure(FRAME_SIZE_ERROR, "SETTINGS ACK with a payload")
            return
        if len(payload) % 6:
            raise _Failure(FRAME_SIZE_ERROR, "SETTINGS payload is not a multiple of 6 bytes")
        for at in range(0, len(payload), 6):
            code = (payload[at] << 8) | payload[at + 1]
            value = _u32(payload, at + 2)
            if code == INITIAL_WINDOW_SIZE:
                if value > MAX_WINDOW:
                    raise _Failure(FLOW_CONTROL_ERROR, "SETTINGS_INITIAL_WINDOW_SIZE over 2^31-1")
                delta = value - self.remote_window
                self.remote_window = value
                for st in self.streams.values():
                    st.send_window += delta
                    if st.send_window > MAX_WINDOW:
                        raise _Failure(FLOW_CONTROL_ERROR, "a stream window over 2^31-1")
            elif code == MAX_FRAME_SIZE:
                if not DEFAULT_FRAME_SIZE <= value <= 0xFFFFFF:
                    raise _Failure(PROTOCOL_ERROR, f"SETTINGS_MAX_FRAME_SIZE {value} out of range")
                self.max_outbound_frame_size = value
            elif code == MAX_CONCURRENT_STREAMS:
                self.remote_max_concurrent_streams = value
            elif code == ENABLE_PUSH:
                if value > 1 or (value and self.client):
                    raise _Failure(PROTOCOL_ERROR, f"SETTINGS_ENABLE_PUSH {value}")
            elif code == HEADER_TABLE_SIZE:
                self.encoder.table_size_changed()
        self.out.append(frame(SETTINGS, ACK, 0))
        events.append(RemoteSettingsChanged())


def _unpad(payload: bytes) -> bytes:
    """The payload of a PADDED frame without its pad length byte and padding."""
    if not payload or payload[0] >= len(payload):
        raise _Failure(PROTOCOL_ERROR, "padding as long as the frame")
    return payload[1:len(payload) - payload[0]]
