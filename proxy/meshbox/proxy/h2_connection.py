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

from meshbox.proxy.h2_events import CANCEL, NO_ERROR, FlowControlError, H2Error, Headers, StreamClosedError
from meshbox.proxy.h2_frames import (
    CONTINUATION,
    DATA,
    END_HEADERS,
    END_STREAM,
    HEADERS,
    MAX_WINDOW,
    PREFACE,
    RST_STREAM,
    SETTINGS,
    WINDOW_UPDATE,
    frame,
)
from meshbox.proxy.h2_receive import H2Receiver
from meshbox.proxy.h2_state import Stream


class H2Connection(H2Receiver):
    """An HTTP/2 connection; ``client``: the proxy opened it (the upstream side). Reading is
    :class:`~meshbox.proxy.h2_receive.H2Receiver`'s; these are the calls that send."""

    def initiate_connection(self) -> None:
        """Queue the preface (as a client) and the first SETTINGS."""
        payload = b"".join(bytes((0, code)) + value.to_bytes(4, "big") for code, value in self.local_settings.items())
        if self.client:
            self.out.append(PREFACE)
        self.out.append(frame(SETTINGS, 0, 0, payload))
        self.greeting = len(self.out)

    def data_to_send(self) -> bytes:
        """Everything queued for the peer since the last call."""
        if not self.out:
            return b""
        data = b"".join(self.out)
        self.out.clear()
        self.greeting = 0
        return data

    def clear_outbound_data_buffer(self) -> None:
        """Drop what is queued, except the proxy's preface and first SETTINGS: a GOAWAY must not be the
        first frame the peer sees (RFC 9113 3.4)."""
        del self.out[self.greeting:]

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

    def local_flow_control_window(self, sid: int) -> int:
        """How much may be sent on ``sid`` now."""
        st = self.streams.get(sid)
        if st is None or st.send_closed:
            raise StreamClosedError(f"stream {sid} is closed for sending")
        return min(st.send_window, self.conn_send_window)

    def stream_is_open(self, sid: int) -> bool:
        return sid in self.streams
