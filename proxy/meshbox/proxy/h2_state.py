"""What an HTTP/2 connection knows between frames: its streams (states, windows, the received length
check), both sides' settings, the connection windows, HPACK state, and the bookkeeping that reading and
sending share (closing streams, giving window back, stream errors). ``h2_receive`` reads frames on top of
it, ``h2_connection`` adds the calls that send."""

from __future__ import annotations

from typing import Final

from meshbox.proxy.h2_events import (
    INITIAL_WINDOW_SIZE,
    MAX_CONCURRENT_STREAMS,
    MAX_HEADER_LIST_SIZE,
    Event,
    StreamReset,
)
from meshbox.proxy.h2_frames import (
    DEFAULT_FRAME_SIZE,
    DEFAULT_HEADER_LIST_SIZE,
    DEFAULT_WINDOW,
    GOAWAY,
    RST_STREAM,
    UNLIMITED,
    WINDOW_UPDATE,
    frame,
)
from meshbox.proxy.h2_headers import NO_LENGTH
from meshbox.proxy.hpack import HpackDecoder, HpackEncoder

# How many closed stream ids a connection remembers (at least its concurrent streams).
CLOSED_KEPT: Final = 128


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



class H2State:
    """The state of one HTTP/2 connection; ``client``: the proxy opened it (the upstream side)."""

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
        # The peer's first frame must be a SETTINGS (RFC 9113 3.4).
        self.settings_due = True
        # Entries of ``out`` that are the proxy's own preface and first SETTINGS, not handed out yet.
        self.greeting = 0
        # The last streams that closed, oldest first: late frames on them are ignored (RFC 9113 5.1).
        self.closed_recently: dict[int, None] = {}
        self.goaway_received = False
        self.failed = False
        # A header block being continued: its stream, fragments, END_STREAM flag and frame count.
        self.block_sid = 0
        self.block_parts: list[bytes] = []
        self.block_size = 0
        self.block_end_stream = False
        self.block_frames = 0


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
            closed = self.closed_recently
            closed[st.sid] = None
            if len(closed) > CLOSED_KEPT:
                del closed[next(iter(closed))]

    def _goaway(self, code: int) -> bytes:
        return frame(GOAWAY, 0, 0, self.highest_inbound_stream_id.to_bytes(4, "big") + code.to_bytes(4, "big"))

    def _idle(self, sid: int) -> bool:
        """Whether ``sid`` was never opened (no frame but HEADERS and PRIORITY may name it)."""
        if (sid & 1) == (1 if self.client else 0):
            return sid >= self.next_stream_id
        return sid > self.highest_inbound_stream_id

    def _stream_error(self, sid: int, code: int, events: list[Event]) -> None:
        """RST_STREAM ``code``; the caller hears of it when it knew the stream."""
        self.out.append(frame(RST_STREAM, 0, sid, code.to_bytes(4, "big")))
        st = self.streams.get(sid)
        if st is not None:
            self._forget(st)
            events.append(StreamReset(sid, code, False))
