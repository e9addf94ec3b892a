"""Reading an HTTP/2 connection: bytes in, events out (RFC 9113 5, 6, 8.1). Connection errors queue
GOAWAY and raise :class:`H2Error`; stream errors reset the stream only."""

from __future__ import annotations

from meshbox.proxy.h2_events import (
    COMPRESSION_ERROR,
    ENABLE_PUSH,
    ENHANCE_YOUR_CALM,
    FLOW_CONTROL_ERROR,
    FRAME_SIZE_ERROR,
    HEADER_TABLE_SIZE,
    INITIAL_WINDOW_SIZE,
    MAX_CONCURRENT_STREAMS,
    MAX_FRAME_SIZE,
    PROTOCOL_ERROR,
    REFUSED_STREAM,
    STREAM_CLOSED,
    ConnectionTerminated,
    DataReceived,
    Event,
    H2Error,
    Headers,
    PingReceived,
    RemoteSettingsChanged,
    RequestReceived,
    ResponseReceived,
    StreamEnded,
    StreamReset,
    TrailersReceived,
)
from meshbox.proxy.h2_frames import (
    ACK,
    CONTINUATION,
    DATA,
    DEFAULT_FRAME_SIZE,
    END_HEADERS,
    END_STREAM,
    GOAWAY,
    HEADERS,
    MAX_CONTINUATIONS,
    MAX_WINDOW,
    PADDED,
    PING,
    PREFACE,
    PRIORITY,
    PRIORITY_FLAG,
    PUSH_PROMISE,
    RST_STREAM,
    SETTINGS,
    WINDOW_UPDATE,
    ConnectionFailure,
    frame,
    u32,
    unpad,
)
from meshbox.proxy.h2_headers import NO_LENGTH, Malformed, check_request, check_response, check_trailers
from meshbox.proxy.h2_state import H2State, Stream
from meshbox.proxy.hpack import HpackError


class H2Receiver(H2State):
    """The receiving half of :class:`~meshbox.proxy.h2_connection.H2Connection`."""

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
                        raise ConnectionFailure(PROTOCOL_ERROR, "not the HTTP/2 connection preface")
                    self.pending = buf
                    return events
                if not buf.startswith(PREFACE):
                    raise ConnectionFailure(PROTOCOL_ERROR, "not the HTTP/2 connection preface")
                self.preface_due = False
                pos = len(PREFACE)
            end = len(buf)
            while end - pos >= 9:
                size = (buf[pos] << 16) | (buf[pos + 1] << 8) | buf[pos + 2]
                if size > DEFAULT_FRAME_SIZE:
                    raise ConnectionFailure(FRAME_SIZE_ERROR, f"frame of {size} bytes, over {DEFAULT_FRAME_SIZE}")
                if end - pos - 9 < size:
                    break
                kind = buf[pos + 3]
                flags = buf[pos + 4]
                sid = u32(buf, pos + 5) & 0x7FFFFFFF
                payload = buf[pos + 9:pos + 9 + size]
                pos += 9 + size
                self._frame(kind, flags, sid, payload, events)
        except ConnectionFailure as failure:
            self.failed = True
            self.out.append(self._goaway(failure.code))
            raise H2Error(str(failure), failure.code) from None
        self.pending = buf[pos:] if pos < len(buf) else b""
        return events

    def _frame(self, kind: int, flags: int, sid: int, payload: bytes, events: list[Event]) -> None:
        if self.settings_due:
            if kind != SETTINGS or flags & ACK:
                raise ConnectionFailure(PROTOCOL_ERROR, "the first frame is not SETTINGS")
            self.settings_due = False
        if self.block_sid and kind != CONTINUATION:
            raise ConnectionFailure(PROTOCOL_ERROR, "a header block was interrupted by another frame")
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
                raise ConnectionFailure(PROTOCOL_ERROR, "PING on a stream")
            if len(payload) != 8:
                raise ConnectionFailure(FRAME_SIZE_ERROR, "PING payload is not 8 bytes")
            if not flags & ACK:
                self.out.append(frame(PING, ACK, 0, payload))
                events.append(PingReceived())
        elif kind == GOAWAY:
            if sid:
                raise ConnectionFailure(PROTOCOL_ERROR, "GOAWAY on a stream")
            if len(payload) < 8:
                raise ConnectionFailure(FRAME_SIZE_ERROR, "GOAWAY shorter than 8 bytes")
            self.goaway_received = True
            events.append(ConnectionTerminated(u32(payload, 4), u32(payload, 0) & 0x7FFFFFFF))
        elif kind == PRIORITY:
            if not sid:
                raise ConnectionFailure(PROTOCOL_ERROR, "PRIORITY on stream 0")
            if len(payload) != 5:
                if sid in self.streams:
                    self._stream_error(sid, FRAME_SIZE_ERROR, events)
                elif self._idle(sid):
                    # No RST_STREAM may name an idle stream: the error takes the connection (RFC 9113 5.4.1).
                    raise ConnectionFailure(FRAME_SIZE_ERROR, "PRIORITY payload is not 5 bytes")
        elif kind == PUSH_PROMISE:
            raise ConnectionFailure(PROTOCOL_ERROR, "PUSH_PROMISE (push is not allowed)")

    def _data(self, flags: int, sid: int, payload: bytes, events: list[Event]) -> None:
        if not sid:
            raise ConnectionFailure(PROTOCOL_ERROR, "DATA on stream 0")
        size = len(payload)
        if size > self.conn_recv_window:
            raise ConnectionFailure(FLOW_CONTROL_ERROR, "DATA over the connection window")
        self.conn_recv_window -= size
        data = unpad(payload) if flags & PADDED else payload
        st = self.streams.get(sid)
        if st is None or st.recv_closed or not st.head_received:
            if st is None and self._idle(sid):
                raise ConnectionFailure(PROTOCOL_ERROR, f"DATA on idle stream {sid}")
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
            raise ConnectionFailure(PROTOCOL_ERROR, "HEADERS on stream 0")
        if flags & PADDED:
            payload = unpad(payload)
        if flags & PRIORITY_FLAG:
            if len(payload) < 5:
                raise ConnectionFailure(FRAME_SIZE_ERROR, "HEADERS too short for its priority")
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
            raise ConnectionFailure(PROTOCOL_ERROR, "CONTINUATION without a header block to continue")
        self.block_parts.append(payload)
        self.block_size += len(payload)
        self.block_frames += 1
        if self.block_frames > MAX_CONTINUATIONS or self.block_size > self.decoder.max_header_list_size:
            raise ConnectionFailure(ENHANCE_YOUR_CALM, "header block too long (CONTINUATION flood)")
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
            raise ConnectionFailure(ENHANCE_YOUR_CALM if exc.limit else COMPRESSION_ERROR, str(exc)) from None
        st = self.streams.get(sid)
        if st is None:
            if not self.client and sid & 1 and sid > self.highest_inbound_stream_id:
                self._request(sid, headers, end_stream, events)
                return
            if self._idle(sid) or not sid & 1:
                raise ConnectionFailure(PROTOCOL_ERROR, f"HEADERS on stream {sid}, which the peer may not open")
            # A closed stream. One that just closed (late trailers after a reset) is ignored (RFC 9113 5.1);
            # a lower id than one the peer already opened (closed implicitly, 5.1.1) or one closed long ago
            # gets STREAM_CLOSED, so a client that opened streams out of order does not wait for an answer.
            if sid not in self.closed_recently:
                self._stream_error(sid, STREAM_CLOSED, events)
            return
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

    def _rst_stream(self, sid: int, payload: bytes, events: list[Event]) -> None:
        if not sid:
            raise ConnectionFailure(PROTOCOL_ERROR, "RST_STREAM on stream 0")
        if len(payload) != 4:
            raise ConnectionFailure(FRAME_SIZE_ERROR, "RST_STREAM payload is not 4 bytes")
        st = self.streams.get(sid)
        if st is None:
            if self._idle(sid):
                raise ConnectionFailure(PROTOCOL_ERROR, f"RST_STREAM on idle stream {sid}")
            return
        self._forget(st)
        events.append(StreamReset(sid, u32(payload, 0), True))

    def _window_update(self, sid: int, payload: bytes) -> None:
        if len(payload) != 4:
            raise ConnectionFailure(FRAME_SIZE_ERROR, "WINDOW_UPDATE payload is not 4 bytes")
        increment = u32(payload, 0) & 0x7FFFFFFF
        if not sid:
            if not increment:
                raise ConnectionFailure(PROTOCOL_ERROR, "WINDOW_UPDATE of 0 on the connection")
            self.conn_send_window += increment
            if self.conn_send_window > MAX_WINDOW:
                raise ConnectionFailure(FLOW_CONTROL_ERROR, "connection window over 2^31-1")
            return
        st = self.streams.get(sid)
        if st is None:
            if self._idle(sid):
                raise ConnectionFailure(PROTOCOL_ERROR, f"WINDOW_UPDATE on idle stream {sid}")
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
            raise ConnectionFailure(PROTOCOL_ERROR, "SETTINGS on a stream")
        if flags & ACK:
            if payload:
                raise ConnectionFailure(FRAME_SIZE_ERROR, "SETTINGS ACK with a payload")
            return
        if len(payload) % 6:
            raise ConnectionFailure(FRAME_SIZE_ERROR, "SETTINGS payload is not a multiple of 6 bytes")
        for at in range(0, len(payload), 6):
            code = (payload[at] << 8) | payload[at + 1]
            value = u32(payload, at + 2)
            if code == INITIAL_WINDOW_SIZE:
                if value > MAX_WINDOW:
                    raise ConnectionFailure(FLOW_CONTROL_ERROR, "SETTINGS_INITIAL_WINDOW_SIZE over 2^31-1")
                delta = value - self.remote_window
                self.remote_window = value
                for st in self.streams.values():
                    st.send_window += delta
                    if st.send_window > MAX_WINDOW:
                        raise ConnectionFailure(FLOW_CONTROL_ERROR, "a stream window over 2^31-1")
            elif code == MAX_FRAME_SIZE:
                if not DEFAULT_FRAME_SIZE <= value <= 0xFFFFFF:
                    raise ConnectionFailure(PROTOCOL_ERROR, f"SETTINGS_MAX_FRAME_SIZE {value} out of range")
                self.max_outbound_frame_size = value
            elif code == MAX_CONCURRENT_STREAMS:
                self.remote_max_concurrent_streams = value
            elif code == ENABLE_PUSH:
                if value > 1 or (value and self.client):
                    raise ConnectionFailure(PROTOCOL_ERROR, f"SETTINGS_ENABLE_PUSH {value}")
            elif code == HEADER_TABLE_SIZE:
                self.encoder.table_size_changed()
        self.out.append(frame(SETTINGS, ACK, 0))
        events.append(RemoteSettingsChanged())
