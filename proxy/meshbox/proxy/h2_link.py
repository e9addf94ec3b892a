"""One HTTP/2 connection's sending side, shared by the client-facing and the upstream connections: body
data waits per stream until the peer's flow-control window takes it, and only then is the other side
told (``on_sent``) so that it opens its own window by that much. So a slow reader stalls its writer
through both windows and the proxy never holds more than the windows it granted.

Also the connection's defences that do not depend on its role: a peer that does not read what the
proxy must answer (PING and SETTINGS acknowledgements pile up in the write buffer) and a stream that
makes no progress against a zero window for the request idle timeout end the connection (GOAWAY
ENHANCE_YOUR_CALM), never another one.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable
from typing import Any, cast

from meshbox.proxy.codec.events import Headers
from meshbox.proxy.context import ProxyContext
from meshbox.proxy.h2_connection import H2Connection
from meshbox.proxy.h2_events import ENHANCE_YOUR_CALM, H2Error
from meshbox.proxy.h2_frames import DEFAULT_WINDOW

# A peer that lets this much pile up in the write buffer while it sends control frames is not reading.
MAX_UNREAD_BYTES = 1 << 20
# Flow-control windows the proxy grants: per stream, and for the whole connection. They bound what it
# buffers for a slow reader on the other side (per connection: CONNECTION_WINDOW).
STREAM_WINDOW = 256 * 1024
CONNECTION_WINDOW = 1 << 20

OnSent = Callable[[int], None] | None


class OutStream:
    """What waits to be sent on one stream: data pieces (each with its on_sent), then maybe the end."""

    __slots__ = ("data", "end", "end_queued", "reset_after", "trailers")

    def __init__(self) -> None:
        self.data: list[tuple[bytes, OnSent]] = []
        self.end_queued = False
        self.trailers: Headers | None = None
        # An RST_STREAM code to send once the end is out (a complete response to an unfinished request).
        self.reset_after: int | None = None
        self.end = False


class H2Link(asyncio.Protocol):
    """An HTTP/2 connection's transport, protocol state machine and flow-controlled send queues."""

    def __init__(self, ctx: ProxyContext, conn: H2Connection) -> None:
        self.ctx = ctx
        self.conn = conn
        self.transport: asyncio.Transport | None = None
        self.closed = False
        self.write_paused = False
        self.out: dict[int, OutStream] = {}
        self.stall_armed = False
        self.stall_key = (self, "stall")
        self.flush_scheduled = False

    # -- transport ---------------------------------------------------------------------------------
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)
        # The connection window starts at 64 KiB whatever SETTINGS say; raise it once.
        self.conn.increment_flow_control_window(CONNECTION_WINDOW - DEFAULT_WINDOW)
        self.flush()

    def flush(self) -> None:
        """Write what h2 produced, once per turn of the event loop: everything the streams of this
        connection produced while handling one read (of either side) goes out in one write."""
        if not self.flush_scheduled and not self.closed:
            self.flush_scheduled = True
            self.ctx.loop.call_soon(self.write_out)

    def write_out(self) -> None:
        """Write what h2 produced now; a peer that leaves over MAX_UNREAD_BYTES unread is dropped."""
        self.flush_scheduled = False
        data = self.conn.data_to_send()
        transport = self.transport
        if data and transport is not None and not self.closed:
            transport.write(data)
            if transport.get_write_buffer_size() > MAX_UNREAD_BYTES:
                self.ctx.stats.incr("downstream_cx_h2_unread_overflow")
                self.abort_connection()

    def pause_writing(self) -> None:
        self.write_paused = True

    def resume_writing(self) -> None:
        self.write_paused = False
        self.pump()

    def abort_connection(self) -> None:
        """GOAWAY ENHANCE_YOUR_CALM ahead of anything still unwritten, then close; a peer that does not
        take even that within a second is reset. (Closing rather than resetting at once: a reset makes the
        peer's kernel discard the GOAWAY it has not read yet.)"""
        if self.closed:
            return
        transport = self.transport
        self.closed = True
        data = b""
        with contextlib.suppress(H2Error):
            self.conn.clear_outbound_data_buffer()
            self.conn.close_connection(ENHANCE_YOUR_CALM)
            data = self.conn.data_to_send()
        if transport is not None:
            if data:
                transport.write(data)
            transport.close()
            self.ctx.loop.call_later(1.0, transport.abort)

    # -- sending -----------------------------------------------------------------------------------
    def _out(self, sid: int) -> OutStream:
        out = self.out.get(sid)
        if out is None:
            out = self.out[sid] = OutStream()
        return out

    def queue_data(self, sid: int, data: bytes, on_sent: OnSent) -> None:
        if data:
            self._out(sid).data.append((data, on_sent))

    def queue_end(self, sid: int, trailers: Headers | None = None) -> None:
        out = self._out(sid)
        if not out.end_queued:
            out.end_queued = True
            out.trailers = trailers

    def queue_reset_after_end(self, sid: int, code: int) -> None:
        out = self.out.get(sid)
        if out is None:
            self.reset(sid, code)
        else:
            out.reset_after = code

    def reset(self, sid: int, code: int) -> None:
        """RST_STREAM ``sid`` now; what waited on it is dropped (and reported sent, to free the other side)."""
        self.drop(sid)
        with contextlib.suppress(H2Error):
            self.conn.reset_stream(sid, error_code=code)

    def drop(self, sid: int) -> None:
        out = self.out.pop(sid, None)
        if out is not None:
            for data, on_sent in out.data:
                if on_sent is not None:
                    on_sent(len(data))

    def pump(self) -> None:
        """Send what the windows allow, then write it out."""
        if self.closed:
            return
        conn = self.conn
        stalled = False
        for sid in list(self.out):
            if self.write_paused:
                break
            out = self.out[sid]
            try:
                stalled = self._send(conn, sid, out) or stalled
            except H2Error:
                # The stream is gone (reset by the peer, or the connection ended).
                self.drop(sid)
        self.flush()
        if stalled and not self.stall_armed and self.ctx.body_idle_timeout > 0:
            self.stall_armed = True
            self.ctx.connection_deadlines.arm(self.stall_key, self.ctx.body_idle_timeout, self._stall_check)
        elif not stalled and self.stall_armed:
            self.stall_armed = False
            self.ctx.connection_deadlines.disarm(self.stall_key, None)

    def _send(self, conn: H2Connection, sid: int, out: OutStream) -> bool:
        """Send on one stream; True when data is left waiting for the peer's window."""
        pieces = out.data
        while pieces:
            window = conn.local_flow_control_window(sid)
            if window <= 0:
                return True
            data, on_sent = pieces[0]
            size = min(window, conn.max_outbound_frame_size, len(data))
            if size < len(data):
                conn.send_data(sid, data[:size])
                pieces[0] = (data[size:], on_sent)
            else:
                conn.send_data(sid, data)
                pieces.pop(0)
            if on_sent is not None:
                on_sent(size)
        if out.end_queued and not out.end:
            out.end = True
            if out.trailers:
                conn.send_headers(sid, out.trailers, end_stream=True)
            else:
                conn.end_stream(sid)
            del self.out[sid]
            if out.reset_after is not None:
                conn.reset_stream(sid, error_code=out.reset_after)
        return False

    def _stall_check(self, key: Any) -> None:
        """A stream stayed blocked on a zero window for the whole stall timeout: the peer stopped reading."""
        self.stall_armed = False
        if self.closed:
            return
        conn = self.conn
        if any(out.data and conn.local_flow_control_window(sid) <= 0 for sid, out in self.out.items()):
            self.ctx.stats.incr("downstream_cx_h2_flow_control_stall")
            self.abort_connection()
        else:
            self.pump()
