"""One HTTP/2 stream from a client: its own exchange core (routing, header policy, retries, faults,
timeouts and logging as for HTTP/1.1) and the actions it returns carried out on frames of that stream.

The core writes through the two framing classes of ``h2_framing``: towards the client they send HEADERS
/ DATA / trailers on the stream, towards upstream they hand the request head and body to the upstream
stream (``upstream_h2``). Body data is acknowledged to the client (its window re-opened) only once sent
upstream, and the other way round, so a slow reader holds back its writer instead of filling the proxy.
"""

from __future__ import annotations

import time
from typing import TYPE_CHECKING, Any

from meshbox.proxy import grpc_status
from meshbox.proxy.codec.events import END, Body, Headers, ProtocolError, RequestHead
from meshbox.proxy.exchange import (
    ARM,
    CLIENT_TIMER,
    CLOSE_DOWN,
    CLOSE_UP,
    DELAY_TIMER,
    DISARM,
    LOG,
    OPEN,
    RELEASE,
    ROUTE_TIMER,
    START_UP,
    TRY_TIMER,
    WRITE_UP,
    Exchange,
)
from meshbox.proxy.exchange_core import ExchangeCore
from meshbox.proxy.h2_events import CANCEL, INTERNAL_ERROR, NO_ERROR, H2Error
from meshbox.proxy.h2_framing import H2RequestFraming, H2ResponseFraming
from meshbox.proxy.http2_to_http1 import H2ToHttp1
from meshbox.proxy.security_labels import with_security
from meshbox.proxy.snapshot import INBOUND
from meshbox.proxy.upstream_h2 import UpstreamH2, UpstreamH2Stream, acquire
from meshbox.proxy.upstream_hosts import UpstreamHost
from meshbox.proxy.upstream_tls import failure_reason

if TYPE_CHECKING:
    from meshbox.proxy.http2_downstream import Http2Downstream

# Request body kept for a replay (a retry on a gRPC status) up to this size; larger bodies are not retried.
REPLAY_LIMIT = 64 * 1024
_monotonic = time.monotonic


class H2Stream:
    """A client's stream and the exchange core that serves it."""

    def __init__(self, down: Http2Downstream, sid: int) -> None:
        self.down = down
        self.sid = sid
        self.ctx = down.ctx
        core = self.core = ExchangeCore(down.ctx, down.current_listener(), down.remote, down.local,
                                        H2ResponseFraming(self), H2RequestFraming(self))
        core.peer = down.peer
        # Flow-controlled bytes received from the client and not yet handed back to its window.
        self.unacked = 0
        self.target = b""
        self.up_headers: Headers = []
        self.request_trailers: Headers | None = None
        self.response_trailers: Headers | None = None
        # The core passed the request's end on (framing.request_end); the client's END_STREAM came.
        self.request_end_seen = False
        self.client_ended = False
        self.head_sent = False
        self.end_sent = False
        self.finished = False
        self.te_trailers = False
        self.grpc = False
        self.deadline: float | None = None
        # The request body so far, for a replay; None once over REPLAY_LIMIT.
        self.body_copy: list[bytes] | None = []
        self.body_copy_size = 0
        # The RST_STREAM code of the upstream stream, passed on to the client.
        self.reset_code: int | None = None
        # Set when the route's cluster is spoken to over HTTP/1.1 (see http2_to_http1).
        self.http1: H2ToHttp1 | None = None

    # -- from the client ---------------------------------------------------------------------------
    def begin(self, headers: Headers, ended: bool, now: float) -> None:
        """The request's HEADERS (``ended``: with END_STREAM)."""
        method = target = authority = b""
        fields: Headers = []
        for name, value in headers:
            if name[:1] == b":":
                if name == b":method":
                    method = value
                elif name == b":path":
                    target = value
                elif name == b":authority":
                    authority = value
            elif name == b"host":
                if not authority:
                    authority = value
            else:
                if name == b"te" and value.lower() == b"trailers":
                    self.te_trailers = True
                fields.append((name, value))
        if authority:
            fields.append((b"host", authority))
        self.client_ended = ended
        # A request without a body is complete with its head: the core never calls request_end for it.
        self.request_end_seen = ended
        self.grpc = grpc_status.is_grpc(fields)
        if self.grpc:
            timeout = grpc_status.timeout_of(fields)
            if timeout is not None:
                self.deadline = now + timeout
        head = RequestHead(method, target, b"2", fields, True, None, not ended, False)
        events: list[Any] = [head]
        if method == b"CONNECT":
            events = [ProtocolError(405, "CONNECT is not supported")]
        elif ended:
            events.append(END)
        self.core.request_events(events, False, now)
        self.run()

    def body(self, data: bytes, flow_length: int, now: float) -> None:
        self.unacked += flow_length
        padding = flow_length - len(data)
        if padding:
            self.ack(padding)
        if self.core.exchange is None or not data:
            self.ack(len(data))
            return
        self.core.request_events([Body(data)], False, now)
        self.run()
        if self.core.exchange is None:
            self.ack(self.unacked)

    def end(self, now: float) -> None:
        if self.client_ended:
            return
        self.client_ended = True
        if self.core.exchange is not None:
            self.core.request_events([END], False, now)
            self.run()

    def reset_by_client(self, code: int, now: float) -> None:
        """RST_STREAM from the client: the exchange ends (DC) and its upstream stream is reset likewise."""
        self.reset_code = code
        self.end_sent = True
        self.down.drop(self.sid)
        self.core.client_closed(now)
        self.run()
        self.finish()

    def ack(self, size: int) -> None:
        """Hand ``size`` bytes back to the client's window (they left the proxy or were dropped)."""
        size = min(size, self.unacked)
        if size > 0 and not self.down.closed:
            self.unacked -= size
            try:
                self.down.conn.acknowledge_received_data(size, self.sid)
            except H2Error:
                return
            self.down.flush()

    # -- for the framing ---------------------------------------------------------------------------
    def send_head(self, headers: Headers, end: bool) -> None:
        if self.head_sent or self.end_sent:
            return
        self.head_sent = True
        try:
            self.down.conn.send_headers(self.sid, headers, end_stream=end)
        except H2Error:
            self.end_sent = True
            return
        if end:
            self.end_sent = True

    def send_body(self, data: bytes, up: object | None) -> None:
        if self.end_sent:
            return
        if self.http1 is not None:
            self.http1.queue_body(data, up)
            return
        on_sent = up.ack if isinstance(up, UpstreamH2Stream) else None
        self.down.queue_data(self.sid, data, on_sent)

    def send_end(self) -> None:
        if self.end_sent:
            return
        self.end_sent = True
        trailers = self.response_trailers
        ex = self.core.exchange
        if ex is not None:
            code = grpc_status.status_of(trailers)
            if code is not None:
                ex.grpc_status = code
        self.down.queue_end(self.sid, trailers)

    def record_body(self, data: bytes) -> None:
        copy = self.body_copy
        if copy is not None:
            self.body_copy_size += len(data)
            if self.body_copy_size > REPLAY_LIMIT:
                self.body_copy = None
            else:
                copy.append(data)

    def replayable(self) -> bool:
        """The whole request body is kept (or there is none) and ended: another attempt can resend it."""
        return self.body_copy is not None and self.request_end_seen

    # -- carrying out the core's actions -----------------------------------------------------------
    def run(self) -> None:
        core = self.core
        if core.out:
            core.flush()
        actions = core.actions
        ctx = self.ctx
        http1 = self.http1
        i = 0
        while i < len(actions):
            action = actions[i]
            i += 1
            if http1 is not None and http1.carry(action):
                continue
            op: int = action[0]
            kind: int
            if op == START_UP:
                up = action[1]
                assert isinstance(up, UpstreamH2Stream)
                body = b"".join(self.body_copy) if self.body_copy is not None else action[3]
                up.start(self, body)
            elif op == WRITE_UP:
                up = action[1]
                assert isinstance(up, UpstreamH2Stream)
                up.send_body(action[2])
            elif op == ARM:
                kind = action[1]
                seconds: float = action[3]
                if kind == CLIENT_TIMER:
                    if core.exchange is not None:
                        ctx.connection_deadlines.arm(self, seconds, self._client_fired)
                elif kind == ROUTE_TIMER:
                    if self.deadline is not None:
                        seconds = max(0.0, min(seconds, self.deadline - _monotonic()))
                    ctx.deadlines.arm(action[2], seconds, self._route_fired)
                elif kind == TRY_TIMER:
                    ctx.deadlines.arm(action[2], seconds, self._try_fired)
                else:
                    ctx.deadlines.arm((DELAY_TIMER, action[2]), seconds, self._delay_fired)
            elif op == DISARM:
                kind = action[1]
                if kind == CLIENT_TIMER:
                    ctx.connection_deadlines.disarm(self, None)
                else:
                    ctx.deadlines.disarm((DELAY_TIMER, action[2]) if kind == DELAY_TIMER else action[2], None)
            elif op == LOG:
                self._log(action[1], action[2])
            elif op == OPEN:
                self._open(action[1], action[2])
            elif op in (RELEASE, CLOSE_UP):
                up = action[1]
                assert isinstance(up, UpstreamH2Stream)
                up.finish(self.reset_code if op == CLOSE_UP else None)
            elif op == CLOSE_DOWN:
                self._close_down()
            # WRITE_DOWN: the framing already queued the frames. PAUSE / RESUME: flow control holds the
            # client back instead. TUNNEL: HTTP/2 has no Upgrade.
        actions.clear()
        ex = core.exchange
        if ex is not None and isinstance(ex.up, UpstreamH2Stream):
            ex.up.sync_end()
        if core.exchange is None and core.closed:
            self.finish()
        self.down.pump()

    def _open(self, ex: Exchange, host: UpstreamHost) -> None:
        cluster = ex.cluster
        assert cluster is not None
        conn = acquire(self.ctx, host, cluster, lambda c, exc: self._connected(ex, c, exc))
        if conn is not None:
            self.core.attached(ex, conn.new_stream(self), _monotonic())

    def _connected(self, ex: Exchange, conn: UpstreamH2 | None, exc: BaseException | None) -> None:
        if conn is None:
            if isinstance(exc, OSError):
                ex.upstream_failure_reason = failure_reason(exc)
            self.core.connect_failed(ex, _monotonic())
        else:
            self.core.attached(ex, conn.new_stream(self), _monotonic())
        self.run()

    def _close_down(self) -> None:
        """The core is done with the client's side: a complete response to a request still being sent
        is followed by RST_STREAM NO_ERROR (RFC 9113 8.1); an incomplete one is reset."""
        if self.finished:
            return
        if self.end_sent:
            if not self.client_ended:
                self.down.queue_reset_after_end(self.sid, NO_ERROR)
        else:
            self.end_sent = True
            self.down.reset(self.sid, self.reset_code if self.reset_code is not None else CANCEL)
        self.finish()

    def finish(self) -> None:
        """The stream's exchange is over: forget it and hand back whatever the client's window lent."""
        if self.finished:
            return
        self.finished = True
        self.ctx.connection_deadlines.disarm(self, None)
        self.ack(self.unacked)
        self.down.stream_finished(self)

    def _log(self, ex: Exchange, elapsed_ms: float) -> None:
        ctx = self.ctx
        if ex.grpc_status is None and self.grpc:
            ex.grpc_status = grpc_status.status_of(ex.response_headers)
        if ex.host is not None:
            ex.upstream_peer_uri = ex.host.peer_uri
        ctx.access_log.log(ex)
        listener = ex.listener
        direction = listener.direction if listener is not None else INBOUND
        cluster = ex.cluster
        labels = cluster.request_labels(direction, ex.host) if cluster is not None else ctx.unknown_labels[direction]
        labels = with_security(labels, ctx.tls.identity if ctx.tls is not None else None,
                               ex.downstream_peer_uri, ex.upstream_peer_uri)
        if self.grpc:
            code = ex.grpc_status
            labels = (*labels, "grpc", "" if code is None else str(code))
        ctx.stats.request(labels, ex.response_code, ex.response_flags, elapsed_ms, ex.bytes_received, ex.bytes_sent)
        span = ex.span
        tracer = ctx.tracer
        if span is not None and tracer is not None:
            tracer.finish(ex, span, ex.upstream_cluster or "", elapsed_ms)
        if self.core.exchange is None:
            self.finish_after_log()

    def finish_after_log(self) -> None:
        """Logged: once the response's end is on its way and the client finished sending, the stream is done."""
        if self.end_sent and self.client_ended:
            self.finish()

    # -- timers ------------------------------------------------------------------------------------
    def _fired(self, kind: int, key: Any) -> None:
        if not self.finished:
            self.core.timer_fired(kind, key, _monotonic())
            self.run()

    def _route_fired(self, key: Any) -> None:
        self._fired(ROUTE_TIMER, key)

    def _try_fired(self, key: Any) -> None:
        self._fired(TRY_TIMER, key)

    def _delay_fired(self, key: Any) -> None:
        self._fired(DELAY_TIMER, key[1])

    def _client_fired(self, key: Any) -> None:
        self._fired(CLIENT_TIMER, key)

    def abort(self) -> None:
        """After an internal error in one of this stream's callbacks: reset it."""
        self.reset_code = INTERNAL_ERROR
        self._close_down()
        self.down.pump()
