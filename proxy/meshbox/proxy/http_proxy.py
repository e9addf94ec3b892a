"""L7 HTTP/1.1 proxying: one downstream connection, one exchange (request + response) at a time.

The codec turns bytes into events; this module routes each request, picks an upstream host, reuses a
kept-alive upstream connection when one is idle, streams bodies both ways with flow control, writes the
access log line and metrics, and answers errors the way Envoy does (status code + response flag).
Output for one read is gathered and written with a single ``transport.write``.
"""

from __future__ import annotations

import asyncio
import random
import time
from collections.abc import Sequence
from typing import Any, cast

from meshbox.proxy.access_log import LogRecord
from meshbox.proxy.codec.events import END, Body, Headers, ProtocolError, RequestHead, ResponseHead, Tunnel
from meshbox.proxy.codec.writer import LAST_CHUNK, chunk, local_reply, response_head_bytes
from meshbox.proxy.context import ProxyContext
from meshbox.proxy.header_policy import CONNECTION_OPTIONS, HOP_BY_HOP, absolute_form, end_to_end, named_hop_by_hop
from meshbox.proxy.snapshot import INBOUND, ClusterRuntime, ListenerRuntime, RouteRuntime
from meshbox.proxy.tcp_proxy import DownstreamTcp
from meshbox.proxy.upstream_hosts import UpstreamHost

_CONNECT_FAILURE = b"upstream connect error or disconnect/reset before headers. reset reason: connection failure"
_TERMINATION = b"upstream connect error or disconnect/reset before headers. reset reason: connection termination"
# Kept-alive upstream connections per endpoint beyond this are closed instead of pooled.
MAX_IDLE_PER_HOST = 128
# Buffer at most this much request body while no upstream connection is attached yet.
_PENDING_BODY_LIMIT = 1 << 20
# What an HTTP/2 client with prior knowledge (e.g. gRPC without TLS) sends first.
H2_PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"
# What a client connection's timer is watching (see DownstreamHttp._watch).
_NO_TIMER, _IDLE, _HEAD, _BODY = range(4)
_monotonic = time.monotonic


class Exchange(LogRecord):
    """One request and its response; also its access log record."""

    __slots__ = (
        "chunked_out", "close_after", "cluster", "head", "host", "listener", "pending", "pending_size",
        "request_bytes", "request_done", "response_started", "retries_left", "route", "sent_at", "start", "up",
    )

    def __init__(self, head: RequestHead | None, remote: str | None, local: str | None) -> None:
        super().__init__(remote, local)
        self.head = head
        self.start = _monotonic()
        if head is not None:
            self.method = head.method
            self.path = head.target
            self.protocol = "HTTP/1.1" if head.version == b"1.1" else "HTTP/1.0"
            self.request_headers = head.headers
        self.listener: ListenerRuntime | None = None
        self.route: RouteRuntime | None = None
        self.cluster: ClusterRuntime | None = None
        self.host: UpstreamHost | None = None
        self.up: UpstreamHttp | None = None
        self.request_bytes: bytes = b""
        # Request body waiting for an upstream connection (a list once something waits).
        self.pending: Sequence[bytes] = ()
        self.pending_size: int = 0
        self.request_done: bool = False
        self.response_started: bool = False
        self.chunked_out: bool = False
        self.close_after: bool = False
        self.sent_at: float = 0.0
        self.retries_left: int = 0


def _peer(transport: asyncio.BaseTransport, key: str) -> str | None:
    addr = transport.get_extra_info(key)
    if not addr:
        return None
    host, port = addr[0], addr[1]
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


class DownstreamHttp(asyncio.Protocol):
    """A client connection handled at L7 for a given listener (looked up again per request, so config
    applied while the connection is kept alive takes effect on its next request)."""

    def __init__(self, ctx: ProxyContext, listener: ListenerRuntime) -> None:
        self.ctx = ctx
        self.listener = listener
        self.listener_snapshot = ctx.snapshot
        self.parser = ctx.codec.request_parser()
        self.transport: asyncio.Transport | None = None
        self.exchange: Exchange | None = None
        self.backlog: list[Any] | None = None
        self.out: list[bytes] = []
        self.tunnel: UpstreamHttp | None = None
        self.remote: str | None = None
        self.local: str | None = None
        self.closed = False
        self.eof = False
        self.reading_paused = False
        self.timer = _NO_TIMER
        # The first bytes are checked for the HTTP/2 preface (kept here while too short to tell).
        self.sniffing = True
        self.sniffed = b""

    # -- asyncio callbacks -------------------------------------------------------------------------
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports are not asyncio.Transport subclasses, only alike.
        self.transport = cast(asyncio.Transport, transport)
        self.remote = _peer(transport, "peername")
        self.local = _peer(transport, "sockname")
        self.ctx.connections.add(self)
        self._watch()

    def data_received(self, data: bytes) -> None:
        if self.sniffing:
            sniffed = self._sniff(data)
            if sniffed is None:
                return
            data = sniffed
        try:
            events: list[Any] = self.parser.feed(data)
        except ProtocolError as exc:
            # Answered in order: after complete requests in the same bytes and any response in flight.
            events = [*exc.events, exc]
        self._dispatch(events)
        if self.out:
            self.flush()
        ex = self.exchange
        if ex is None or not ex.request_done:
            # A complete request leaves the timer armed as it was: _client_timeout re-checks before acting.
            self._watch()

    def eof_received(self) -> bool | None:
        tunnel = self.tunnel
        if tunnel is None or tunnel.transport is None:
            return None
        # A tunnel half-closes like TCP; once both sides are done, close.
        self.eof = True
        if tunnel.eof:
            tunnel.close()
            return None
        if tunnel.transport.can_write_eof():
            tunnel.transport.write_eof()
        return True

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        self.ctx.connections.discard(self)
        self.ctx.connection_deadlines.disarm(self, None)
        ex = self.exchange
        if ex is not None:
            self.exchange = None
            ex.response_flags = "DC" if ex.response_flags == "-" else ex.response_flags
            self._abort_upstream(ex)
            self._log(ex)
        if self.tunnel is not None:
            self.tunnel.close()
            self.tunnel = None

    def pause_writing(self) -> None:
        up = self.exchange.up if self.exchange is not None else self.tunnel
        if up is not None and up.transport is not None:
            up.transport.pause_reading()

    def resume_writing(self) -> None:
        up = self.exchange.up if self.exchange is not None else self.tunnel
        if up is not None and up.transport is not None:
            up.transport.resume_reading()

    # -- plumbing ----------------------------------------------------------------------------------
    def flush(self) -> None:
        out = self.out
        if out and self.transport is not None and not self.closed:
            self.transport.write(out[0] if len(out) == 1 else b"".join(out))
        out.clear()

    def pause_reading(self) -> None:
        if not self.reading_paused and self.transport is not None:
            self.reading_paused = True
            self.transport.pause_reading()

    def resume_reading(self) -> None:
        if self.reading_paused and self.transport is not None and not self.closed:
            self.reading_paused = False
            self.transport.resume_reading()

    def close(self) -> None:
        self.flush()
        if self.transport is not None and not self.closed:
            self.transport.close()

    def abort(self) -> None:
        """Drop this connection and its upstream at once (after an internal error in one of its callbacks)."""
        ex = self.exchange
        if ex is not None and ex.up is not None:
            ex.up.close()
        if self.transport is not None and not self.closed:
            self.transport.abort()

    # -- client timeouts and HTTP/2 sniffing ------------------------------------------------------
    def _phase(self) -> int:
        """What the connection waits for from the client: a new request (idle), the rest of a head, or
        more of a request body. Nothing while a response is on its way (the route timeout covers
        that), while pipelined requests wait, or in a tunnel."""
        ex = self.exchange
        if ex is not None:
            return _NO_TIMER if ex.request_done else _BODY
        if self.backlog is not None or self.tunnel is not None:
            return _NO_TIMER
        if self.sniffed or self.parser.partial_head:
            return _HEAD
        return _IDLE

    def _watch(self) -> None:
        """Point the connection's timer at the current phase (a body's timer restarts on every read)."""
        if self.closed:
            return
        phase = self._phase()
        if phase == self.timer and phase != _BODY:
            return
        self.timer = phase
        ctx = self.ctx
        timeout = (0.0, ctx.idle_timeout, ctx.head_timeout, ctx.body_idle_timeout)[phase]
        if timeout > 0:
            ctx.connection_deadlines.arm(self, timeout, self._client_timeout)
        else:
            ctx.connection_deadlines.disarm(self, None)

    def _client_timeout(self, _: object) -> None:
        armed, self.timer = self.timer, _NO_TIMER
        if self.closed:
            return
        if self._phase() != armed:
            # The timer is left armed when a request completes (saves work per request): the connection
            # moved on since, so watch what it waits for now.
            self._watch()
            return
        stats = self.ctx.stats
        ex = self.exchange
        if armed == _IDLE:
            # No request in progress: close quietly, as there is nothing to log.
            stats.incr("downstream_cx_idle_timeout")
        elif armed == _HEAD:
            stats.incr("downstream_rq_header_timeout")
            ex = Exchange(None, self.remote, self.local)
            ex.listener = self._current_listener()
            self._local_reply(ex, 408, b"request header timeout", "SI")
        elif armed == _BODY and ex is not None:
            stats.incr("downstream_rq_idle_timeout")
            self._abort_upstream(ex)
            if ex.response_started:
                ex.response_flags = "SI"
                self.exchange = None
                self._log(ex)
            else:
                self._local_reply(ex, 408, b"stream timeout", "SI")
        self.close()

    def _sniff(self, data: bytes) -> bytes | None:
        """The bytes to parse as HTTP/1.1, or None: still too few to tell, or handed to an L4 tunnel."""
        data = self.sniffed + data if self.sniffed else data
        if len(data) < len(H2_PREFACE) and H2_PREFACE.startswith(data):
            self.sniffed = data
            self._watch()
            return None
        self.sniffing = False
        self.sniffed = b""
        if data.startswith(H2_PREFACE):
            self._tunnel_h2(data)
            return None
        return data

    def _tunnel_h2(self, data: bytes) -> None:
        """HTTP/2 with prior knowledge (gRPC): no L7 handling for it, so the whole connection goes at L4
        to an endpoint of the cluster the listener's route for its own address picks, logged as TCP."""
        transport = self.transport
        assert transport is not None
        ctx = self.ctx
        ctx.connections.discard(self)
        ctx.connection_deadlines.disarm(self, None)
        self.timer = _NO_TIMER
        ctx.stats.incr("downstream_cx_http2_tunnelled")
        listener = self._current_listener()
        route = listener.routes.tunnel_route(b"%s:%d" % (listener.address.encode(), listener.port)) \
            if listener.routes is not None else None
        cluster = route.pick_cluster() if route is not None else None
        labels = cluster.labels[listener.direction] if cluster is not None else ctx.unknown_labels[listener.direction]
        tcp = DownstreamTcp(ctx, labels, cluster=cluster, refuse_flag="NR")
        self.closed = True  # this protocol object is done; the TCP one owns the transport now
        transport.set_protocol(tcp)
        tcp.connection_made(transport)
        if not transport.is_closing():
            tcp.data_received(data)

    def _dispatch(self, events: list[Any]) -> None:
        for i, ev in enumerate(events):
            if self.closed:
                return
            if self.backlog is not None:
                self.backlog.append(ev)
                continue
            ex = self.exchange
            kind = type(ev)
            if kind is Tunnel:
                tunnel = self.tunnel
                if tunnel is not None and tunnel.tunnel_exchange is not None:
                    tunnel.tunnel_exchange.bytes_received += len(ev.data)
                    tunnel.write(ev.data)
                elif ex is not None:
                    # Sent before the upgrade was answered; refused upgrades close the connection.
                    self._request_body(ex, ev.data)
            elif ex is None:
                if kind is RequestHead:
                    self._start(ev)
                elif kind is ProtocolError:
                    self._protocol_error(ev)
            elif not ex.request_done:
                if kind is Body:
                    self._request_body(ex, ev.data)
                elif ev is END:
                    self._request_end(ex)
            elif ev is not END:
                # A pipelined request (or a parse error after it): hold it until the current response is done.
                self.backlog = list(events[i:])
                self.pause_reading()
                return

    # -- request side ------------------------------------------------------------------------------
    def _current_listener(self) -> ListenerRuntime:
        snap = self.ctx.snapshot
        if snap is not self.listener_snapshot and snap is not None:
            self.listener_snapshot = snap
            self.listener = snap.by_key.get(self.listener.key, self.listener)
        return self.listener

    def _start(self, head: RequestHead) -> None:
        ex = self.exchange = Exchange(head, self.remote, self.local)
        if not head.chunked and not head.content_length:
            ex.request_done = True
        listener = self.listener
        snap = self.ctx.snapshot
        if snap is not self.listener_snapshot and snap is not None:
            listener = self._current_listener()
        ex.listener = listener
        host_header: bytes | None = None
        request_id: bytes | None = None
        headers: Headers = []
        dropped: frozenset[bytes] | None = None
        for h in head.headers:
            name = h[0]
            if name in HOP_BY_HOP:
                if name == b"connection" and h[1].lower() not in CONNECTION_OPTIONS:
                    tokens = named_hop_by_hop(h[1])
                    if tokens:
                        dropped = tokens if dropped is None else dropped | tokens
                continue
            if name == b"host":
                host_header = h[1]
            elif name == b"user-agent":
                ex.user_agent = h[1]
            elif name == b"x-request-id":
                request_id = h[1]
            elif name == b"x-forwarded-for":
                ex.forwarded_for = h[1]
            headers.append(h)
        if dropped:
            headers = [h for h in headers if h[0] not in dropped]
        if request_id is None:
            request_id = self.ctx.request_ids.new()
            rid = (b"x-request-id", request_id)
            headers.append(rid)
            ex.request_headers = [*head.headers, rid]
        ex.request_id = request_id
        target = head.target
        if target[:1] != b"/" and target != b"*":
            # Absolute form (RFC 9112 3.2.2): route by the target's authority, forward in origin form.
            try:
                host_header, target = absolute_form(target)
            except ProtocolError as exc:
                self._protocol_error(exc)
                return
            headers = [h for h in headers if h[0] != b"host"]
            headers.append((b"host", host_header))
            ex.path = target
        ex.authority = host_header
        if head.upgrade:
            headers += [(b"connection", b"upgrade")] + [h for h in head.headers if h[0] == b"upgrade"]
        if listener.routes is None:
            self._local_reply(ex, 404, b"", "NR")
            return
        route = listener.routes.match(host_header or b"", target, head.headers)
        if route is None:
            self._local_reply(ex, 404, b"", "NR")
            return
        ex.route = route
        cluster = ex.cluster = route.single_cluster or route.pick_cluster()
        ex.upstream_cluster = cluster.name
        if route.abort_percent and random.random() * 100 < route.abort_percent:
            self._local_reply(ex, route.abort_status, b"fault filter abort", "FI")
            return
        if host_header is None:
            headers.append((b"host", (cluster.service or cluster.name).encode()))
        if head.chunked:
            headers.append((b"transfer-encoding", b"chunked"))
        # request_head_bytes, written out as it runs for every request (headers is never empty: Host is there).
        ex.request_bytes = b"%s %s HTTP/1.1\r\n%s\r\n\r\n" % (head.method, target,
                                                              b"\r\n".join(map(b": ".join, headers)))
        ex.retries_left = route.retries
        if route.delay_percent and random.random() * 100 < route.delay_percent:
            ex.response_flags = "DI"
            self.ctx.loop.call_later(route.delay, self._connect_after_delay, ex)
            return
        self._connect(ex)

    def _connect_after_delay(self, ex: Exchange) -> None:
        if self.exchange is ex:
            self._connect(ex)
            self.flush()

    def _connect(self, ex: Exchange) -> None:
        cluster = ex.cluster
        assert cluster is not None
        host = cluster.pick()
        if host is None:
            self._local_reply(ex, 503, b"no healthy upstream", "UH")
            return
        ex.host = host
        ex.upstream_host = host.host
        idle = host.idle
        while idle:
            up = idle.pop()
            if not up.closed:
                assert isinstance(up, UpstreamHttp)
                self._attach(ex, up, reused=True)
                return
        self.ctx.loop.create_task(self._open(ex, host, cluster.connect_timeout))

    async def _open(self, ex: Exchange, host: UpstreamHost, timeout: float) -> None:
        loop = self.ctx.loop
        try:
            async with asyncio.timeout(timeout):
                _, up = await loop.create_connection(lambda: UpstreamHttp(self.ctx, host), host.address, host.port)
        except (OSError, TimeoutError):
            if self.exchange is not ex:
                return
            if ex.retries_left > 0:
                ex.retries_left -= 1
                self.ctx.stats.incr("upstream_rq_retry")
                self._connect(ex)
            else:
                self._local_reply(ex, 503, _CONNECT_FAILURE, "UF")
            self.flush()
            return
        if self.exchange is not ex or self.closed:
            up.release()
            return
        self._attach(ex, up, reused=False)
        self.flush()

    def _attach(self, ex: Exchange, up: UpstreamHttp, reused: bool) -> None:
        ex.up = up
        assert ex.host is not None and ex.head is not None
        ex.host.active += 1
        up.start(self, ex, reused)
        data = ex.request_bytes
        if ex.pending:
            data += b"".join(ex.pending)
            ex.pending = ()
            ex.pending_size = 0
            self.resume_reading()
        ex.sent_at = _monotonic()
        # up.write(data), inlined: this runs for every request.
        if up.transport is not None and not up.closed:
            up.transport.write(data)
        if ex.request_done:
            self._arm_timer(ex)

    def _request_body(self, ex: Exchange, data: bytes) -> None:
        ex.bytes_received += len(data)
        head = ex.head
        assert head is not None
        if head.chunked and not ex.request_done:
            data = chunk(data)
        up = ex.up
        if up is not None:
            up.write(data)
        elif ex.route is not None:
            self._hold(ex, data)
            ex.pending_size += len(data)
            if ex.pending_size > _PENDING_BODY_LIMIT:
                self.pause_reading()

    @staticmethod
    def _hold(ex: Exchange, data: bytes) -> None:
        if isinstance(ex.pending, list):
            ex.pending.append(data)
        else:
            ex.pending = [data]

    def _request_end(self, ex: Exchange) -> None:
        ex.request_done = True
        head = ex.head
        assert head is not None
        if head.chunked:
            if ex.up is not None:
                ex.up.write(LAST_CHUNK)
            elif ex.route is not None:
                self._hold(ex, LAST_CHUNK)
        if ex.up is not None and not ex.response_started:
            self._arm_timer(ex)

    def _arm_timer(self, ex: Exchange) -> None:
        """Once the whole request is upstream: the route timeout (once per exchange) and the per-try
        timeout (per attempt, keyed by the upstream connection carrying it)."""
        route = ex.route
        if route is None or (ex.head is not None and ex.head.upgrade):
            return
        deadlines = self.ctx.deadlines
        if not deadlines.is_armed(ex):
            deadlines.arm(ex, route.timeout, self._timeout)
        if route.per_try_timeout is not None and ex.up is not None:
            deadlines.arm(ex.up, route.per_try_timeout, self._try_timeout)

    def _try_timeout(self, up: UpstreamHttp) -> None:
        """One attempt took longer than ``per_try_timeout``: try again on a new connection when retries are
        left and the request can be replayed (no body, no response byte yet), else answer like UT."""
        ex = up.exchange
        if ex is None or self.exchange is not ex or ex.up is not up:
            return
        stats = self.ctx.stats
        stats.incr("upstream_rq_per_try_timeout")
        head = ex.head
        replayable = not ex.response_started and head is not None and not head.chunked and not head.content_length
        if ex.retries_left > 0 and replayable:
            ex.retries_left -= 1
            stats.incr("upstream_rq_retry")
            self._detach(ex)
            up.close()
            self._connect(ex)
            self.flush()
            return
        self._timeout(ex)

    def _timeout(self, ex: Exchange) -> None:
        if self.exchange is not ex:
            return
        self.ctx.stats.incr("upstream_rq_timeout")
        if ex.response_started:
            ex.response_flags = "UT"
            self._abort_upstream(ex)
            self.exchange = None
            self._log(ex)
            self.close()
        else:
            self._abort_upstream(ex)
            self._local_reply(ex, 504, b"upstream request timeout", "UT")
            self.flush()

    # -- response side (called by UpstreamHttp) ---------------------------------------------------
    def response_head(self, ex: Exchange, head: ResponseHead) -> None:
        status = head.status
        request = ex.head
        assert request is not None
        if status < 200 and status != 101:
            if request.version == b"1.1":
                self.out.append(response_head_bytes(status, head.reason, end_to_end(head.headers)))
            return
        ex.response_started = True
        ex.response_code = status
        ex.response_headers = head.headers
        ust = int((_monotonic() - ex.sent_at) * 1000)
        ex.upstream_service_time = ust
        # The head is serialized here rather than through response_head_bytes (this runs for every response):
        # the upstream's headers minus hop-by-hop ones, then the ones the proxy adds, as whole lines.
        added = b"x-envoy-upstream-service-time: %d\r\n" % ust
        # A refused upgrade may already have sent tunnel bytes: the connection cannot be reused.
        keep_alive = request.keep_alive and head.keep_alive and not self.ctx.draining and not request.upgrade
        if status == 101:
            added += b"connection: upgrade\r\n" + b"".join(b"%s: %s\r\n" % h for h in head.headers
                                                          if h[0] == b"upgrade")
        elif head.has_body and head.content_length is None:
            if request.version == b"1.1":
                ex.chunked_out = True
                added += b"transfer-encoding: chunked\r\n"
            else:
                keep_alive = False
        if status != 101:
            if not keep_alive:
                added += b"connection: close\r\n"
            elif request.version == b"1.0":
                added += b"connection: keep-alive\r\n"
        ex.close_after = not keep_alive
        headers = end_to_end(head.headers)
        kept = b"\r\n".join(map(b": ".join, headers)) + b"\r\n" if headers else b""
        self.out.append(b"HTTP/%s %d %s\r\n%s%s\r\n" % (request.version, status, head.reason, kept, added))

    def response_end(self, ex: Exchange, up: UpstreamHttp, reusable: bool) -> None:
        if ex.chunked_out:
            self.out.append(LAST_CHUNK)
        # _detach(ex), inlined: this runs for every request.
        disarm = self.ctx.deadlines.disarm
        disarm(ex, None)
        attached = ex.up
        if attached is not None:
            ex.up = None
            if ex.host is not None:
                ex.host.active -= 1
            disarm(attached, None)
        if ex.response_code == 101:
            # The connection is a tunnel from now on; logged when it closes.
            self.tunnel = up
            self.exchange = None
            up.tunnel_to(self, ex)
            self.flush()
            return
        # flush(), inlined: this runs for every response.
        out = self.out
        if out and self.transport is not None and not self.closed:
            self.transport.write(out[0] if len(out) == 1 else b"".join(out))
        out.clear()
        self._finish(ex)
        if reusable and ex.request_done and not ex.close_after:
            up.release()
        else:
            up.close()

    def response_failed(self, ex: Exchange, flag: str, status: int, body: bytes) -> None:
        """The upstream connection broke or sent garbage."""
        self.ctx.deadlines.disarm(ex, None)
        self._detach(ex)
        if ex.response_started:
            ex.response_flags = flag
            self.exchange = None
            self._log(ex)
            self.close()
        else:
            self._local_reply(ex, status, body, flag)
            self.flush()

    def retry_on_fresh_connection(self, ex: Exchange) -> None:
        """A reused keep-alive connection closed before answering (the upstream timed it out): resend once."""
        self._detach(ex)
        self.ctx.deadlines.disarm(ex, None)
        self._connect(ex)

    def tunnel_data(self, data: bytes) -> None:
        if self.transport is not None and not self.closed:
            self.transport.write(data)

    def tunnel_closed(self, ex: Exchange) -> None:
        self.tunnel = None
        self._log(ex)
        self.close()

    # -- endings -----------------------------------------------------------------------------------
    def _local_reply(self, ex: Exchange, status: int, body: bytes, flag: str) -> None:
        ex.response_code = status
        ex.response_flags = flag
        ex.bytes_sent = len(body)
        request = ex.head
        version = request.version if request is not None else b"1.1"
        close = not ex.request_done or request is None or not request.keep_alive or self.ctx.draining
        ex.close_after = close
        head_only = request is not None and request.method == b"HEAD"
        self.out.append(local_reply(status, body, close=close, version=version, head_only=head_only))
        if head_only:
            ex.bytes_sent = 0
        if ex.request_done or close:
            self._finish(ex)

    def _finish(self, ex: Exchange) -> None:
        self.exchange = None
        self._log(ex)
        if ex.close_after or not ex.request_done:
            self.close()
            return
        if self.ctx.draining:
            self.close()
            return
        backlog = self.backlog
        if backlog is not None:
            self.backlog = None
            self._dispatch(backlog)
            # A local reply to a pipelined request goes out now, not with the next read.
            self.flush()
        self._await_next()

    def _await_next(self) -> None:
        """After an exchange: resume reading once no pipelined request waits, and watch the client.
        (A method of its own: re-reading self.exchange / self.backlog right after assigning None in the
        same function would be checked against that narrowed type by mypyc: a TypeError, issue #18 D5.)"""
        if self.closed:
            return
        if self.backlog is None:
            if self.reading_paused:
                self.resume_reading()
            if self.exchange is None and not self.parser.partial_head:
                # The usual case, inlined: idle from now on, even if the idle timer is still armed.
                self.timer = _IDLE
                ctx = self.ctx
                if ctx.idle_timeout > 0:
                    ctx.connection_deadlines.arm(self, ctx.idle_timeout, self._client_timeout)
                else:
                    ctx.connection_deadlines.disarm(self, None)
                return
        self.timer = _NO_TIMER
        self._watch()

    def _log(self, ex: Exchange) -> None:
        elapsed_ms = (_monotonic() - ex.start) * 1000
        ex.duration_ms = int(elapsed_ms)
        ctx = self.ctx
        ctx.access_log.log(ex)
        listener = ex.listener
        direction = listener.direction if listener is not None else INBOUND
        cluster = ex.cluster
        labels = cluster.request_labels(direction, ex.host) if cluster is not None else ctx.unknown_labels[direction]
        ctx.stats.request(labels, ex.response_code, ex.response_flags, elapsed_ms)

    def _abort_upstream(self, ex: Exchange) -> None:
        self.ctx.deadlines.disarm(ex, None)
        up = self._detach(ex)
        if up is not None:
            up.close()

    def _detach(self, ex: Exchange) -> UpstreamHttp | None:
        """End the current attempt: the upstream connection no longer carries this exchange."""
        up = ex.up
        if up is not None:
            ex.up = None
            if ex.host is not None:
                ex.host.active -= 1
            self.ctx.deadlines.disarm(up, None)
        return up

    def _protocol_error(self, exc: ProtocolError) -> None:
        """Bad bytes from the client: answer 400/431/... (unless a response is under way) and close."""
        ex = self.exchange
        if ex is not None:
            self._abort_upstream(ex)
            if ex.response_started:
                self.exchange = None
                ex.response_flags = "DPE"
                self._log(ex)
                self.close()
                return
        else:
            ex = Exchange(None, self.remote, self.local)
            ex.listener = self.listener
        ex.request_done = False
        self._local_reply(ex, exc.status, exc.reason.encode("utf-8", "replace"), "DPE")
        self.close()


class UpstreamHttp(asyncio.Protocol):
    """A connection to one upstream host; carries one exchange at a time, then waits in the host's pool."""

    def __init__(self, ctx: ProxyContext, host: UpstreamHost) -> None:
        self.ctx = ctx
        self.host = host
        self.transport: asyncio.Transport | None = None
        self.down: DownstreamHttp | None = None
        self.exchange: Exchange | None = None
        self.parser: Any = None
        self.closed = False
        self.reused = False
        self.got_bytes = False
        self.tunnel_exchange: Exchange | None = None
        self.parser_keep_alive = False
        self.eof = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports are not asyncio.Transport subclasses, only alike.
        self.transport = cast(asyncio.Transport, transport)

    def start(self, down: DownstreamHttp, ex: Exchange, reused: bool) -> None:
        head = ex.head
        assert head is not None
        self.down = down
        self.exchange = ex
        self.reused = reused
        self.got_bytes = False
        if self.parser is None:
            self.parser = self.ctx.codec.response_parser(head.method, head.upgrade)
        else:
            self.parser.expect(head.method, head.upgrade)

    def write(self, data: bytes) -> None:
        if self.transport is not None and not self.closed:
            self.transport.write(data)

    def data_received(self, data: bytes) -> None:
        if self.tunnel_exchange is not None:
            self.tunnel_exchange.bytes_sent += len(data)
            if self.down is not None:
                self.down.tunnel_data(data)
            return
        ex = self.exchange
        down = self.down
        if ex is None or down is None:
            # Bytes on an idle connection: the upstream broke the protocol; don't reuse it.
            self.close()
            return
        self.got_bytes = True
        try:
            events = self.parser.feed(data)
        except ProtocolError as exc:
            self._fail(ex, down, "UPE", 502, exc.reason.encode())
            return
        self._deliver(ex, down, events)

    def _deliver(self, ex: Exchange, down: DownstreamHttp, events: list[Any]) -> None:
        for ev in events:
            if type(ev) is Body:
                # The response body goes out with the next flush (re-chunked when the length is unknown).
                data = ev.data
                ex.bytes_sent += len(data)
                down.out.append(chunk(data) if ex.chunked_out else data)
            elif ev is END:
                if ex.response_started:
                    self.exchange = None
                    down.response_end(ex, self, self.parser_keep_alive)
                    if ex.response_code != 101:
                        return
            elif type(ev) is ResponseHead:
                self.parser_keep_alive = ev.keep_alive
                down.response_head(ex, ev)
            elif type(ev) is Tunnel:
                ex.bytes_sent += len(ev.data)
                down.tunnel_data(ev.data)
        down.flush()

    def eof_received(self) -> bool | None:
        down = self.down
        if self.tunnel_exchange is None or down is None or down.transport is None:
            return None
        self.eof = True
        if down.eof:
            return None
        if down.transport.can_write_eof():
            down.transport.write_eof()
        return True

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        host = self.host
        if self in host.idle:
            host.idle.remove(self)
        tunnel_ex = self.tunnel_exchange
        if tunnel_ex is not None:
            self.tunnel_exchange = None
            if self.down is not None:
                self.down.tunnel_closed(tunnel_ex)
            return
        ex, down = self.exchange, self.down
        if ex is None or down is None:
            return
        self.exchange = None
        if self.parser is not None and self.got_bytes:
            try:
                events = self.parser.feed_eof()
            except ProtocolError:
                events = None
            if events:
                self.parser_keep_alive = False
                self._deliver(ex, down, events)
                return
        head = ex.head
        if (self.reused and not self.got_bytes and head is not None and head.content_length is None
                and not head.chunked and not ex.response_started):
            down.retry_on_fresh_connection(ex)
            down.flush()
            return
        down.response_failed(ex, "UC", 503, _TERMINATION)

    def _fail(self, ex: Exchange, down: DownstreamHttp, flag: str, status: int, body: bytes) -> None:
        self.exchange = None
        self.close()
        down.response_failed(ex, flag, status, body)

    def pause_writing(self) -> None:
        if self.down is not None and self.down.transport is not None:
            self.down.pause_reading()

    def resume_writing(self) -> None:
        if self.down is not None:
            self.down.resume_reading()

    def tunnel_to(self, down: DownstreamHttp, ex: Exchange) -> None:
        self.tunnel_exchange = ex
        self.down = down

    def release(self) -> None:
        """Back to the host's idle pool (or closed when the proxy is draining or the host left the config)."""
        self.exchange = None
        self.down = None
        if self.closed or self.ctx.draining or self.host.retired or len(self.host.idle) >= MAX_IDLE_PER_HOST:
            self.close()
            return
        self.host.idle.append(self)

    def close(self) -> None:
        # Closed on purpose: whatever exchange it carried is no longer its business (no UC from connection_lost).
        self.exchange = None
        if not self.closed and self.transport is not None:
            self.closed = True
            self.transport.close()
        self.closed = True
