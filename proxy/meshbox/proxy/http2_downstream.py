"""HTTP/2 with prior knowledge (h2c, what gRPC sends without TLS) from a client: the connection, its
SETTINGS, PING and GOAWAY, and one :class:`H2Stream` (one exchange core) per request stream.

An HTTP listener's connection becomes one of these when its first bytes are the HTTP/2 preface
(``http_proxy`` sniffs them). Defences, each ending only the offending connection with GOAWAY
ENHANCE_YOUR_CALM: rapid reset (CVE-2023-44487: mostly streams the client itself cancels), PING and
SETTINGS floods, a peer that does not read its acknowledgements, a zero-window stall (``h2_link``);
the connection (``h2_connection``) bounds CONTINUATION frames and the decoded header list (HPACK bomb)
and refuses streams over the concurrency limit.
"""

from __future__ import annotations

import contextlib
import time
from typing import Any

from meshbox.proxy.context import ProxyContext
from meshbox.proxy.h2_connection import H2Connection
from meshbox.proxy.h2_events import (
    CANCEL,
    INITIAL_WINDOW_SIZE,
    MAX_CONCURRENT_STREAMS,
    MAX_HEADER_LIST_SIZE,
    NO_ERROR,
    REFUSED_STREAM,
    ConnectionTerminated,
    DataReceived,
    Event,
    H2Error,
    PingReceived,
    RemoteSettingsChanged,
    RequestReceived,
    StreamEnded,
    StreamReset,
    TrailersReceived,
)
from meshbox.proxy.h2_link import STREAM_WINDOW, H2Link
from meshbox.proxy.header_policy import end_to_end
from meshbox.proxy.http2_stream import H2Stream
from meshbox.proxy.peer_identity import PeerIdentity
from meshbox.proxy.snapshot import ListenerRuntime

STREAMS_PER_CONNECTION = 100
# Decoded header list (names + values + 32 each, RFC 9113 6.5.2): as the HTTP/1.1 head limit.
HEADER_LIST_LIMIT = 64 * 1024
# Rapid reset: after this many client resets of unfinished streams, if they are at least half of the
# streams opened, the connection goes.
RESET_FLOOR = 100
# PING / SETTINGS frames a client may send per second.
CONTROL_FRAMES_PER_SECOND = 100
_monotonic = time.monotonic


class Http2Downstream(H2Link):
    """A client's HTTP/2 connection on an HTTP listener."""

    def __init__(self, ctx: ProxyContext, listener: ListenerRuntime, remote: str | None, local: str | None,
                 peer: PeerIdentity | None) -> None:
        conn = H2Connection(False, {MAX_CONCURRENT_STREAMS: STREAMS_PER_CONNECTION,
                                    MAX_HEADER_LIST_SIZE: HEADER_LIST_LIMIT, INITIAL_WINDOW_SIZE: STREAM_WINDOW})
        super().__init__(ctx, conn)
        self.listener = listener
        self.listener_snapshot = ctx.snapshot
        self.remote = remote
        self.local = local
        self.peer = peer
        self.streams: dict[int, H2Stream] = {}
        self.opened = 0
        self.client_resets = 0
        self.control_frames = 0
        self.control_since = 0.0
        self.going_away = False
        self.idle_armed = False

    # -- asyncio callbacks -------------------------------------------------------------------------
    def connection_made(self, transport: Any) -> None:
        self.conn.initiate_connection()
        super().connection_made(transport)
        self.ctx.connections.add(self)
        self.ctx.stats.incr("downstream_cx_http2")
        self._watch_idle()

    def data_received(self, data: bytes) -> None:
        if self.closed:
            return
        try:
            events = self.conn.receive_data(data)
        except H2Error:
            # The connection queued the GOAWAY naming the error (a CONTINUATION flood, an oversized header list, ...).
            self.ctx.stats.incr("downstream_cx_h2_protocol_error")
            self.write_out()
            self._end_all()
            if self.transport is not None:
                self.transport.close()
            self.closed = True
            return
        now = _monotonic()
        for ev in events:
            if self.closed:
                return
            self._event(ev, now)
        self.pump()
        self._watch_idle()

    def _event(self, ev: Event, now: float) -> None:
        if isinstance(ev, DataReceived):
            st = self.streams.get(ev.stream_id)
            if st is None:
                self._ack_orphan(ev.stream_id, ev.flow_controlled_length)
            else:
                st.body(ev.data, ev.flow_controlled_length, now)
        elif isinstance(ev, RequestReceived):
            if self.going_away:
                self.reset(ev.stream_id, REFUSED_STREAM)
                return
            st = H2Stream(self, ev.stream_id)
            self.streams[ev.stream_id] = st
            self.opened += 1
            st.begin(ev.headers, ev.stream_ended, now)
        elif isinstance(ev, StreamEnded):
            st = self.streams.get(ev.stream_id)
            if st is not None:
                st.end(now)
        elif isinstance(ev, TrailersReceived):
            st = self.streams.get(ev.stream_id)
            if st is not None:
                st.request_trailers = end_to_end(ev.headers)
        elif isinstance(ev, StreamReset):
            st = self.streams.get(ev.stream_id)
            self.drop(ev.stream_id)
            if st is not None:
                self.client_resets += 1
                st.reset_by_client(ev.error_code, now)
                if self.client_resets >= RESET_FLOOR and self.client_resets * 2 >= self.opened:
                    self.ctx.stats.incr("downstream_cx_h2_rapid_reset")
                    self._refuse()
        elif isinstance(ev, (PingReceived, RemoteSettingsChanged)):
            if now - self.control_since >= 1.0:
                self.control_since = now
                self.control_frames = 0
            self.control_frames += 1
            if self.control_frames > CONTROL_FRAMES_PER_SECOND:
                self.ctx.stats.incr("downstream_cx_h2_control_flood")
                self._refuse()
        elif isinstance(ev, ConnectionTerminated):
            self.going_away = True
            self._close_when_idle()

    def _ack_orphan(self, sid: int, size: int) -> None:
        """DATA for a stream that is over: give the connection window back (the stream's is moot)."""
        with contextlib.suppress(H2Error):
            self.conn.acknowledge_received_data(size, sid)

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        self.ctx.connections.discard(self)
        self.ctx.connection_deadlines.disarm(self, None)
        self.ctx.connection_deadlines.disarm(self.stall_key, None)
        self._end_all()

    def _end_all(self) -> None:
        """The connection is gone: every stream still in progress ends as a client reset (DC)."""
        now = _monotonic()
        for st in list(self.streams.values()):
            st.reset_code = CANCEL
            st.core.client_closed(now)
            st.run()
            st.finish()
        self.streams.clear()

    # -- streams -----------------------------------------------------------------------------------
    def current_listener(self) -> ListenerRuntime:
        """The listener in the current config (a new stream after a config swap uses the new one)."""
        snap = self.ctx.snapshot
        if snap is not self.listener_snapshot and snap is not None:
            self.listener_snapshot = snap
            listener = snap.by_key.get(self.listener.key)
            if listener is None:
                # The listener left the config: finish what runs, take no new stream.
                self.drain()
            else:
                self.listener = listener
        return self.listener

    def config_swapped(self) -> None:
        """A new config is in place: GOAWAY when this connection's listener is no longer in it (streams
        in flight finish on the old one; new streams use the new config in any case)."""
        self.current_listener()

    def pump(self) -> None:
        super().pump()
        if self.going_away:
            # The last stream's end may have waited for its window: close once it is out.
            self._close_when_idle()

    def stream_finished(self, st: H2Stream) -> None:
        if self.streams.get(st.sid) is st:
            del self.streams[st.sid]
        if self.going_away:
            self._close_when_idle()

    # -- the connection's end ----------------------------------------------------------------------
    def busy(self) -> bool:
        return bool(self.streams)

    def drain(self) -> None:
        """GOAWAY (NO_ERROR, the last stream taken): streams in flight finish, then the connection closes."""
        if self.going_away or self.closed:
            return
        self.going_away = True
        self.write_out()
        if self.transport is not None:
            self.conn.close_connection(NO_ERROR)
            self.write_out()
        self._close_when_idle()

    def close(self) -> None:
        self.drain()

    def _close_when_idle(self) -> None:
        if not self.streams and not self.out and not self.closed and self.transport is not None:
            self.write_out()
            self.closed = True
            self.transport.close()

    def _refuse(self) -> None:
        self.abort_connection()
        self._end_all()

    def abort(self) -> None:
        """After an internal error in one of this connection's callbacks: drop it."""
        self._refuse()

    def _watch_idle(self) -> None:
        """No stream for the idle timeout: GOAWAY and close (as a kept-alive HTTP/1.1 connection)."""
        idle = self.ctx.idle_timeout
        if self.streams or idle <= 0 or self.closed:
            return
        self.ctx.connection_deadlines.arm(self, idle, self._idle_fired)

    def _idle_fired(self, key: Any) -> None:
        if self.closed:
            return
        if self.streams or self.out:
            self._watch_idle()
            return
        self.ctx.stats.incr("downstream_cx_idle_timeout")
        self.drain()
