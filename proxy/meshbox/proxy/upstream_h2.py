"""HTTP/2 to upstream endpoints: a few connections per endpoint, each carrying many streams (one per
call, so calls are balanced one by one, not per connection), and the stream handle the exchange core
knows as ``up``. Response frames become the core's ResponseHead / Body / END; trailers ride on the
client's stream; RST_STREAM and GOAWAY become the core's upstream failures. A pooled connection with no
stream for ``--idle-timeout`` sends GOAWAY, closes and leaves the pool. Over mutual TLS the connection
offers ALPN ``h2`` (alpn).
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from meshbox.proxy.codec.events import END, Body, Headers, ResponseHead
from meshbox.proxy.context import ProxyContext
from meshbox.proxy.exchange_state import TERMINATION
from meshbox.proxy.h2_connection import H2Connection
from meshbox.proxy.h2_events import (
    CANCEL,
    ENABLE_PUSH,
    INITIAL_WINDOW_SIZE,
    ConnectionTerminated,
    DataReceived,
    Event,
    H2Error,
    PingReceived,
    RemoteSettingsChanged,
    ResponseReceived,
    StreamEnded,
    StreamReset,
    TrailersReceived,
)
from meshbox.proxy.h2_link import STREAM_WINDOW, H2Link
from meshbox.proxy.header_policy import end_to_end
from meshbox.proxy.snapshot import ClusterRuntime
from meshbox.proxy.upstream_hosts import UpstreamHost
from meshbox.proxy.upstream_tls import open_upstream

if TYPE_CHECKING:
    from meshbox.proxy.http2_stream import H2Stream

# Streams the proxy opens on one upstream connection at most (fewer if the upstream's SETTINGS say so).
MAX_STREAMS_PER_CONNECTION = 100
REMOTE_RESET = b"upstream connect error or disconnect/reset before headers. reset reason: remote reset"
_monotonic = time.monotonic

Waiter = Callable[["UpstreamH2 | None", "BaseException | None"], None]
# (endpoint, over TLS) → its HTTP/2 connections, ready or connecting.
POOLS: dict[tuple[UpstreamHost, bool], list[UpstreamH2]] = {}


def acquire(ctx: ProxyContext, host: UpstreamHost, cluster: ClusterRuntime, waiter: Waiter) -> UpstreamH2 | None:
    """A connection to ``host`` with room for one more stream, reserved for the caller: returned when
    ready, else None and ``waiter(conn, None)`` (or ``waiter(None, error)``) once connected."""
    tls = (host.address, host.port) in cluster.tls_endpoints
    key = (host, tls)
    conns = POOLS.get(key)
    if conns is None:
        conns = POOLS[key] = []
    for conn in conns:
        if conn.ready and conn.has_room():
            conn.reserved += 1
            return conn
    for conn in conns:
        if not conn.ready and conn.has_room():
            conn.reserved += 1
            conn.waiters.append(waiter)
            return None
    conn = UpstreamH2(ctx, host, key)
    conns.append(conn)
    conn.reserved += 1
    conn.waiters.append(waiter)
    ctx.loop.create_task(conn.connect(cluster))
    return None


def close_idle() -> None:
    """Close every upstream HTTP/2 connection that carries no stream and may not take new ones (a drain)."""
    for conns in list(POOLS.values()):
        for conn in list(conns):
            conn.idle_check()


class UpstreamH2Stream:
    """One attempt of an exchange on an upstream HTTP/2 connection (the core's ``up`` handle)."""

    __slots__ = ("conn", "down", "end_queued", "got_bytes", "sid", "unacked")

    def __init__(self, conn: UpstreamH2, down: H2Stream) -> None:
        self.conn = conn
        self.down = down
        self.sid = 0
        self.end_queued = False
        self.got_bytes = False
        # Flow-controlled bytes received from upstream and not yet handed back to its window.
        self.unacked = 0

    def start(self, down: H2Stream, body: bytes) -> None:
        """Send the request head (and the body so far) on a new stream (the START_UP action)."""
        conn = self.conn
        self.down = down
        h2 = conn.conn
        authority = b""
        headers: Headers = []
        for name, value in down.up_headers:
            if name == b"host":
                authority = value
            else:
                headers.append((name, value))
        ex = down.core.exchange
        method = ex.head.method if ex is not None and ex.head is not None else b"GET"
        fields = [(b":method", method), (b":scheme", b"http"), (b":authority", authority), (b":path", down.target)]
        if down.te_trailers:
            fields.append((b"te", b"trailers"))
        conn.reserved -= 1
        try:
            self.sid = h2.get_next_available_stream_id()
            conn.streams[self.sid] = self
            end = down.request_end_seen and not body
            h2.send_headers(self.sid, fields + headers, end_stream=end)
        except H2Error:
            conn.streams.pop(self.sid, None)
            conn.fail_stream(self, "UC", 503, TERMINATION)
            return
        self.end_queued = end
        if body:
            conn.queue_data(self.sid, body, down.ack)
        self.sync_end()
        conn.pump()

    def send_body(self, data: bytes) -> None:
        if self.sid and not self.end_queued:
            self.conn.queue_data(self.sid, data, self.down.ack)
            self.conn.pump()

    def sync_end(self) -> None:
        """Queue END_STREAM (with the client's trailers) once the core passed the request's end on."""
        if self.sid and not self.end_queued and self.down.request_end_seen:
            self.end_queued = True
            self.conn.queue_end(self.sid, self.down.request_trailers)
            self.conn.pump()

    def ack(self, size: int) -> None:
        """Hand ``size`` bytes back to the upstream's window (they reached the client or were dropped)."""
        size = min(size, self.unacked)
        conn = self.conn
        if size > 0 and not conn.closed:
            self.unacked -= size
            try:
                conn.conn.acknowledge_received_data(size, self.sid)
            except H2Error:
                return
            conn.flush()

    def finish(self, reset_code: int | None) -> None:
        """The exchange is done with this attempt (RELEASE / CLOSE_UP): reset the stream if it is still open
        (an abandoned attempt, or a response that ended before the request did)."""
        conn = self.conn
        if not self.sid:
            conn.reserved = max(0, conn.reserved - 1)
            conn.idle_check()
            return
        if conn.streams.pop(self.sid, None) is not None:
            # Abandoned before its end: what it received will never be sent on.
            self.ack(self.unacked)
        if conn.conn.stream_is_open(self.sid):
            conn.reset(self.sid, CANCEL if reset_code is None else reset_code)
        conn.pump()
        conn.idle_check()


class UpstreamH2(H2Link):
    """An HTTP/2 connection to one endpoint, shared by the calls of every client connection."""

    def __init__(self, ctx: ProxyContext, host: UpstreamHost, key: tuple[UpstreamHost, bool]) -> None:
        conn = H2Connection(True, {INITIAL_WINDOW_SIZE: STREAM_WINDOW, ENABLE_PUSH: 0})
        super().__init__(ctx, conn)
        self.host = host
        self.key = key
        self.ready = False
        self.goaway = False
        self.reserved = 0
        self.waiters: list[Waiter] = []
        self.streams: dict[int, UpstreamH2Stream] = {}
        self.idle_key = (self, "idle")

    def has_room(self) -> bool:
        if self.closed or self.goaway:
            return False
        limit = min(MAX_STREAMS_PER_CONNECTION, self.conn.remote_max_concurrent_streams)
        return len(self.streams) + self.reserved < limit

    def new_stream(self, down: H2Stream) -> UpstreamH2Stream:
        """The handle of a stream reserved by :func:`acquire` (opened by its START_UP)."""
        return UpstreamH2Stream(self, down)

    async def connect(self, cluster: ClusterRuntime) -> None:
        try:
            async with asyncio.timeout(cluster.connect_timeout):
                await open_upstream(self.ctx, lambda: self, cluster, self.host, http2=True)
        except (OSError, TimeoutError) as exc:
            self._forget()
            self.closed = True
            waiters, self.waiters = self.waiters, []
            for waiter in waiters:
                waiter(None, exc)
            return
        self.ready = True
        waiters, self.waiters = self.waiters, []
        for waiter in waiters:
            waiter(self, None)
        self.idle_check()  # every caller may have given up while it connected

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.conn.initiate_connection()
        super().connection_made(transport)

    def data_received(self, data: bytes) -> None:
        try:
            events = self.conn.receive_data(data)
        except H2Error:
            self.ctx.stats.incr("upstream_cx_h2_protocol_error")
            self._fail_all("UPE", 502, b"upstream sent invalid HTTP/2")
            self.abort_connection()
            return
        for ev in events:
            self._event(ev)
        self.pump()

    def _event(self, ev: Event) -> None:
        if isinstance(ev, ConnectionTerminated):
            self.goaway = True
            self._forget()
            last = ev.last_stream_id
            for unprocessed in [s for sid, s in self.streams.items() if sid > last]:
                # Never processed by the upstream (RFC 9113 6.8).
                self.fail_stream(unprocessed, "UC", 503, TERMINATION)
            self.idle_check()
            return
        if isinstance(ev, (PingReceived, RemoteSettingsChanged)):
            return
        st = self.streams.get(ev.stream_id)
        if st is None:
            if isinstance(ev, DataReceived):
                self.conn.acknowledge_received_data(ev.flow_controlled_length, ev.stream_id)
            return
        down = st.down
        core = down.core
        now = _monotonic()
        if isinstance(ev, DataReceived):
            st.got_bytes = True
            st.unacked += ev.flow_controlled_length
            if ev.flow_controlled_length > len(ev.data):
                st.ack(ev.flow_controlled_length - len(ev.data))
            ex = core.exchange
            if ex is None or ex.up is not st:
                st.ack(st.unacked)
            core.response_events(st, [Body(ev.data)], now)
        elif isinstance(ev, ResponseReceived):
            st.got_bytes = True
            headers = [h for h in ev.headers if h[0][:1] != b":"]
            status = int(_status(ev.headers))
            ended = ev.stream_ended
            head = ResponseHead(status, b"", b"2", headers, True, None, False, not ended)
            core.response_events(st, [head, END] if ended else [head], now)
        elif isinstance(ev, TrailersReceived):
            down.response_trailers = end_to_end(ev.headers)
        elif isinstance(ev, StreamEnded):
            self.streams.pop(st.sid, None)
            core.response_events(st, [END], now)
            self.idle_check()
        elif isinstance(ev, StreamReset):
            self.streams.pop(st.sid, None)
            down.reset_code = ev.error_code
            self.ctx.stats.incr("upstream_rq_h2_reset")
            core.upstream_failed(st, "UR", 503, REMOTE_RESET, now)
        else:
            return
        down.run()

    def fail_stream(self, st: UpstreamH2Stream, flag: str, status: int, body: bytes) -> None:
        self.streams.pop(st.sid, None)
        down = st.down
        down.core.upstream_failed(st, flag, status, body, _monotonic())
        down.run()

    def _fail_all(self, flag: str, status: int, body: bytes) -> None:
        for st in list(self.streams.values()):
            self.fail_stream(st, flag, status, body)

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        self._forget()
        if self.stall_armed:
            self.ctx.connection_deadlines.disarm(self.stall_key, None)
        self.ctx.connection_deadlines.disarm(self.idle_key, None)
        now = _monotonic()
        for st in list(self.streams.values()):
            self.streams.pop(st.sid, None)
            st.down.core.upstream_closed(st, False, now)
            st.down.run()

    def idle_check(self) -> None:
        """A connection that can take no more streams (GOAWAY, draining, endpoint gone) closes once idle;
        another one that is idle closes if it stays so for ``--idle-timeout``."""
        if self.streams or self.reserved or self.closed:
            return
        if self.goaway or self.ctx.draining or self.host.retired:
            self._close_idle()
        elif self.ready and self.ctx.idle_timeout > 0:
            self.ctx.connection_deadlines.arm(self.idle_key, self.ctx.idle_timeout, self._idle_fired)

    def _idle_fired(self, key: Any) -> None:
        if self.streams or self.reserved or self.closed:
            return  # in use again: the next idle_check arms it anew
        self.ctx.stats.incr("upstream_cx_idle_timeout")
        self._close_idle()

    def _close_idle(self) -> None:
        """GOAWAY NO_ERROR, close, and out of the pool."""
        self._forget()
        self.ctx.connection_deadlines.disarm(self.idle_key, None)
        with contextlib.suppress(H2Error):
            self.conn.close_connection()
        self.write_out()
        self.closed = True
        if self.transport is not None:
            self.transport.close()

    def _forget(self) -> None:
        conns = POOLS.get(self.key)
        if conns is not None and self in conns:
            conns.remove(self)
            if not conns:
                del POOLS[self.key]


def _status(headers: Headers) -> bytes:
    for name, value in headers:
        if name == b":status":
            return value
    return b"502"

