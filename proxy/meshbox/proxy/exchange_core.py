"""The exchange state machine of one client connection: codec events and timer firings in, actions out.

No asyncio, no sockets, no clock: every input carries ``now`` and every effect is an action appended to
``actions`` (see ``exchange``), which the I/O layer carries out after each call. Routing, the header
policy, retries, fault injection, route / per-try / client timeouts and access logging live here once,
whatever codec produced the events: an HTTP/1.1 connection feeds it RequestHead / Body / END /
ProtocolError, and the upstream side the ResponseHead / Body / END of its parser.
"""

from __future__ import annotations

import random
from typing import Any

from meshbox.proxy.codec.events import END, Body, ProtocolError, RequestHead, ResponseHead, Tunnel
from meshbox.proxy.codec.writer import LAST_CHUNK, chunk, local_reply
from meshbox.proxy.context import ProxyContext
from meshbox.proxy.exchange import (
    ARM,
    CLIENT_TIMER,
    CLOSE_DOWN,
    CLOSE_UP,
    DELAY_TIMER,
    DISARM,
    EXPECT,
    LOG,
    OPEN,
    PAUSE,
    RELEASE,
    RESUME,
    ROUTE_TIMER,
    TRY_TIMER,
    TUNNEL,
    WRITE_DOWN,
    WRITE_UP,
    Exchange,
)
from meshbox.proxy.header_policy import (
    absolute_form,
    interim_head_out,
    request_head_out,
    request_headers_out,
    response_head_out,
)
from meshbox.proxy.snapshot import ListenerRuntime

_CONNECT_FAILURE = b"upstream connect error or disconnect/reset before headers. reset reason: connection failure"
_TERMINATION = b"upstream connect error or disconnect/reset before headers. reset reason: connection termination"
# Buffer at most this much request body while no upstream connection is attached yet.
PENDING_BODY_LIMIT = 1 << 20
# What the client connection's timer watches.
NO_TIMER, IDLE, HEAD, BODY = range(4)


class ExchangeCore:
    """One client connection's exchanges, one at a time (pipelined requests wait in ``backlog``)."""

    def __init__(self, ctx: ProxyContext, listener: ListenerRuntime, remote: str | None, local: str | None) -> None:
        self.ctx = ctx
        self.listener = listener
        self.listener_snapshot = ctx.snapshot
        self.remote = remote
        self.local = local
        self.actions: list[tuple[Any, ...]] = []
        self.out: list[bytes] = []
        self.exchange: Exchange | None = None
        self.backlog: list[Any] | None = None
        self.partial_head = False
        self.closed = False
        self.paused = False
        self.tunnelled = False
        self.timer = NO_TIMER
        # The last response head said its connection may carry another exchange.
        self.up_keep_alive = False

    # -- inputs from the client side ---------------------------------------------------------------
    def request_events(self, events: list[Any], partial_head: bool, now: float) -> None:
        """Events parsed from one read of the client; ``partial_head``: a head has begun but not ended."""
        self.partial_head = partial_head
        self._dispatch(events, now)
        self.flush()
        ex = self.exchange
        if ex is None or not ex.request_done:
            # A complete request leaves the timer armed as it was: client_timeout re-checks before acting.
            self.watch()

    def client_closed(self, now: float) -> None:
        """The client connection is gone."""
        self.closed = True
        ex = self.exchange
        if ex is not None:
            self.exchange = None
            ex.response_flags = "DC" if ex.response_flags == "-" else ex.response_flags
            self._abort_upstream(ex)
            self._log(ex, now)
        self.actions.append((DISARM, CLIENT_TIMER, None))

    def flush(self) -> None:
        """Turn what was written for the client since the last flush into one write action."""
        out = self.out
        if out:
            self.actions.append((WRITE_DOWN, out[0] if len(out) == 1 else b"".join(out)))
            out.clear()

    def close(self) -> None:
        self.flush()
        if not self.closed:
            self.closed = True
            self.actions.append((CLOSE_DOWN,))

    def _dispatch(self, events: list[Any], now: float) -> None:
        for i, ev in enumerate(events):
            if self.closed:
                return
            if self.backlog is not None:
                self.backlog.append(ev)
                continue
            ex = self.exchange
            kind = type(ev)
            if kind is Tunnel:
                if ex is not None:
                    # Sent before the upgrade was answered; refused upgrades close the connection.
                    self._request_body(ex, ev.data)
            elif ex is None:
                if kind is RequestHead:
                    self._start(ev, now)
                elif kind is ProtocolError:
                    self._protocol_error(ev, now)
            elif not ex.request_done:
                if kind is Body:
                    self._request_body(ex, ev.data)
                elif ev is END:
                    self._request_end(ex)
            elif ev is not END:
                # A pipelined request (or a parse error after it): hold it until the current response is done.
                self.backlog = list(events[i:])
                self._pause()
                return

    def _pause(self) -> None:
        if not self.paused:
            self.paused = True
            self.actions.append((PAUSE,))

    def _resume(self) -> None:
        if self.paused and not self.closed:
            self.paused = False
            self.actions.append((RESUME,))

    # -- request side ------------------------------------------------------------------------------
    def current_listener(self) -> ListenerRuntime:
        """The connection's listener in the current config (looked up again after a config swap)."""
        snap = self.ctx.snapshot
        if snap is not self.listener_snapshot and snap is not None:
            self.listener_snapshot = snap
            self.listener = snap.by_key.get(self.listener.key, self.listener)
        return self.listener

    def _start(self, head: RequestHead, now: float) -> None:
        ex = self.exchange = Exchange(head, self.remote, self.local, now)
        if not head.chunked and not head.content_length:
            ex.request_done = True
        listener = self.listener
        if self.ctx.snapshot is not self.listener_snapshot:
            listener = self.current_listener()
        ex.listener = listener
        headers, host, request_id = request_headers_out(head, ex)
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
                host, target = absolute_form(target)
            except ProtocolError as exc:
                self._protocol_error(exc, now)
                return
            headers = [h for h in headers if h[0] != b"host"]
            headers.append((b"host", host))
            ex.path = target
        ex.authority = host
        routes = listener.routes
        route = routes.match(host or b"", target, head.headers) if routes is not None else None
        if route is None:
            self._local_reply(ex, 404, b"", "NR", now)
            return
        ex.route = route
        cluster = ex.cluster = route.single_cluster or route.pick_cluster()
        ex.upstream_cluster = cluster.name
        if route.abort_percent and random.random() * 100 < route.abort_percent:
            self._local_reply(ex, route.abort_status, b"fault filter abort", "FI", now)
            return
        if host is None:
            headers.append((b"host", (cluster.service or cluster.name).encode()))
        if head.chunked:
            headers.append((b"transfer-encoding", b"chunked"))
        ex.request_bytes = request_head_out(head.method, target, headers)
        ex.retries_left = route.retries
        if route.delay_percent and random.random() * 100 < route.delay_percent:
            ex.response_flags = "DI"
            self.actions.append((ARM, DELAY_TIMER, ex, route.delay))
            return
        self._connect(ex, now)

    def _connect(self, ex: Exchange, now: float) -> None:
        cluster = ex.cluster
        assert cluster is not None
        host = cluster.pick()
        if host is None:
            self._local_reply(ex, 503, b"no healthy upstream", "UH", now)
            return
        ex.host = host
        ex.upstream_host = host.host
        self.actions.append((OPEN, ex, host))

    def attached(self, ex: Exchange, up: object, now: float) -> None:
        """An upstream connection (pooled or new) is ready for ``ex``."""
        if self.exchange is not ex or self.closed:
            self.actions.append((RELEASE, up))
            return
        ex.up = up
        assert ex.host is not None
        ex.host.active += 1
        actions = self.actions
        actions.append((EXPECT, up, ex))
        data = ex.request_bytes
        if ex.pending:
            data += b"".join(ex.pending)
            ex.pending = ()
            ex.pending_size = 0
            self._resume()
        ex.sent_at = now
        actions.append((WRITE_UP, up, data))
        if ex.request_done:
            self._arm_timer(ex)

    def connect_failed(self, ex: Exchange, now: float) -> None:
        """Connecting upstream for ``ex`` failed or timed out: retry while attempts are left, else 503 UF."""
        if self.exchange is not ex:
            return
        if ex.retries_left > 0:
            ex.retries_left -= 1
            self.ctx.stats.incr("upstream_rq_retry")
            self._connect(ex, now)
        else:
            self._local_reply(ex, 503, _CONNECT_FAILURE, "UF", now)
        self.flush()

    def _request_body(self, ex: Exchange, data: bytes) -> None:
        ex.bytes_received += len(data)
        head = ex.head
        assert head is not None
        if head.chunked and not ex.request_done:
            data = chunk(data)
        up = ex.up
        if up is not None:
            self.actions.append((WRITE_UP, up, data))
        elif ex.route is not None:
            self._hold(ex, data)
            ex.pending_size += len(data)
            if ex.pending_size > PENDING_BODY_LIMIT:
                self._pause()

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
                self.actions.append((WRITE_UP, ex.up, LAST_CHUNK))
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
        if not ex.timed:
            ex.timed = True
            self.actions.append((ARM, ROUTE_TIMER, ex, route.timeout))
        if route.per_try_timeout is not None and ex.up is not None:
            self.actions.append((ARM, TRY_TIMER, ex.up, route.per_try_timeout))

    # -- timers ------------------------------------------------------------------------------------
    def timer_fired(self, kind: int, key: Any, now: float) -> None:
        """A timer armed by an ARM action expired."""
        if kind == ROUTE_TIMER:
            self._route_timeout(key, now)
        elif kind == TRY_TIMER:
            self._try_timeout(key, now)
        elif kind == DELAY_TIMER:
            ex = self.exchange
            if ex is not None and ex is key:
                self._connect(ex, now)
        else:
            self.client_timeout(now)
        self.flush()

    def _try_timeout(self, up: object, now: float) -> None:
        """One attempt took longer than ``per_try_timeout``: try again on a new connection when retries are
        left and the request can be replayed (no body, no response byte yet), else answer like UT."""
        ex = self.exchange
        if ex is None or ex.up is not up:
            return
        stats = self.ctx.stats
        stats.incr("upstream_rq_per_try_timeout")
        head = ex.head
        replayable = not ex.response_started and head is not None and not head.chunked and not head.content_length
        if ex.retries_left > 0 and replayable:
            ex.retries_left -= 1
            stats.incr("upstream_rq_retry")
            self._detach(ex)
            self.actions.append((CLOSE_UP, up))
            self._connect(ex, now)
            return
        self._route_timeout(ex, now)

    def _route_timeout(self, ex: Exchange, now: float) -> None:
        if self.exchange is not ex:
            return
        self.ctx.stats.incr("upstream_rq_timeout")
        self._abort_upstream(ex)
        if ex.response_started:
            ex.response_flags = "UT"
            self.exchange = None
            self._log(ex, now)
            self.close()
        else:
            self._local_reply(ex, 504, b"upstream request timeout", "UT", now)

    def phase(self) -> int:
        """What the connection waits for from the client: a new request (idle), the rest of a head, or
        more of a request body. Nothing while a response is on its way (the route timeout covers
        that), while pipelined requests wait, or in a tunnel."""
        ex = self.exchange
        if ex is not None:
            return NO_TIMER if ex.request_done else BODY
        if self.backlog is not None or self.tunnelled:
            return NO_TIMER
        if self.partial_head:
            return HEAD
        return IDLE

    def watch(self) -> None:
        """Point the connection's timer at the current phase (a body's timer restarts on every read)."""
        if self.closed:
            return
        phase = self.phase()
        if phase == self.timer and phase != BODY:
            return
        self.timer = phase
        ctx = self.ctx
        timeout = (0.0, ctx.idle_timeout, ctx.head_timeout, ctx.body_idle_timeout)[phase]
        if timeout > 0:
            self.actions.append((ARM, CLIENT_TIMER, None, timeout))
        else:
            self.actions.append((DISARM, CLIENT_TIMER, None))

    def client_timeout(self, now: float) -> None:
        armed, self.timer = self.timer, NO_TIMER
        if self.closed:
            return
        if self.phase() != armed:
            # The timer is left armed when a request completes (saves work per request): the connection
            # moved on since, so watch what it waits for now.
            self.watch()
            return
        stats = self.ctx.stats
        ex = self.exchange
        if armed == IDLE:
            # No request in progress: close quietly, as there is nothing to log.
            stats.incr("downstream_cx_idle_timeout")
        elif armed == HEAD:
            stats.incr("downstream_rq_header_timeout")
            ex = Exchange(None, self.remote, self.local, now)
            ex.listener = self.current_listener()
            self._local_reply(ex, 408, b"request header timeout", "SI", now)
        elif armed == BODY and ex is not None:
            stats.incr("downstream_rq_idle_timeout")
            self._abort_upstream(ex)
            if ex.response_started:
                ex.response_flags = "SI"
                self.exchange = None
                self._log(ex, now)
            else:
                self._local_reply(ex, 408, b"stream timeout", "SI", now)
        self.close()

    # -- response side -----------------------------------------------------------------------------
    def response_events(self, up: object, events: list[Any], now: float, closing: bool = False) -> None:
        """Events parsed from one read of upstream connection ``up`` (``closing``: from its end of stream,
        so it cannot carry another exchange)."""
        ex = self.exchange
        if ex is None or ex.up is not up:
            # Not (or no longer) ours: whatever that connection says is of no use.
            self.actions.append((CLOSE_UP, up))
            return
        out = self.out
        for ev in events:
            if type(ev) is Body:
                # The response body goes out with the next flush (re-chunked when the length is unknown).
                data = ev.data
                ex.bytes_sent += len(data)
                out.append(chunk(data) if ex.chunked_out else data)
            elif ev is END:
                if ex.response_started:
                    self._response_end(ex, up, self.up_keep_alive and not closing, now)
                    if ex.response_code != 101:
                        return
            elif type(ev) is ResponseHead:
                self.up_keep_alive = ev.keep_alive
                self._response_head(ex, ev, now)
            elif type(ev) is Tunnel:
                ex.bytes_sent += len(ev.data)
                out.append(ev.data)
        self.flush()

    def _response_head(self, ex: Exchange, head: ResponseHead, now: float) -> None:
        status = head.status
        request = ex.head
        assert request is not None
        if status < 200 and status != 101:
            self.out.append(interim_head_out(request, head))
            return
        ex.response_started = True
        ex.response_code = status
        ex.response_headers = head.headers
        ust = int((now - ex.sent_at) * 1000)
        ex.upstream_service_time = ust
        data, ex.chunked_out, ex.close_after = response_head_out(request, head, ust, self.ctx.draining)
        self.out.append(data)

    def _response_end(self, ex: Exchange, up: object, reusable: bool, now: float) -> None:
        if ex.chunked_out:
            self.out.append(LAST_CHUNK)
        self._detach(ex)
        self._disarm_route(ex)
        actions = self.actions
        if ex.response_code == 101:
            # The connection is a tunnel from now on; logged when it closes.
            self.tunnelled = True
            self.exchange = None
            self.flush()
            actions.append((TUNNEL, up, ex))
            return
        self.flush()
        # Released before the next exchange starts, so a pipelined request can reuse it at once.
        actions.append((RELEASE, up) if reusable and ex.request_done and not ex.close_after else (CLOSE_UP, up))
        self._finish(ex, now)

    def upstream_failed(self, up: object, flag: str, status: int, body: bytes, now: float) -> None:
        """Upstream connection ``up`` broke or sent garbage (``flag`` UC / UPE)."""
        ex = self.exchange
        if ex is None or ex.up is not up:
            return
        self._detach(ex)
        self.actions.append((CLOSE_UP, up))
        self._disarm_route(ex)
        if ex.response_started:
            ex.response_flags = flag
            self.exchange = None
            self._log(ex, now)
            self.close()
        else:
            self._local_reply(ex, status, body, flag, now)
            self.flush()

    def upstream_closed(self, up: object, silent_reuse: bool, now: float) -> None:
        """Upstream connection ``up`` closed before the response was complete. ``silent_reuse``: it was a
        pooled connection that sent nothing (the upstream had timed it out): a request without a body
        is sent again once, on a new connection; otherwise 503 UC (or a reset once the response began)."""
        ex = self.exchange
        if ex is None or ex.up is not up:
            return
        head = ex.head
        if (silent_reuse and head is not None and head.content_length is None and not head.chunked
                and not ex.response_started):
            self._detach(ex)
            self._disarm_route(ex)
            self._connect(ex, now)
            return
        self.upstream_failed(up, "UC", 503, _TERMINATION, now)

    def tunnel_closed(self, ex: Exchange, now: float) -> None:
        """Both sides of an upgraded connection are done."""
        self._log(ex, now)
        self.close()

    # -- endings -----------------------------------------------------------------------------------
    def _local_reply(self, ex: Exchange, status: int, body: bytes, flag: str, now: float) -> None:
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
            self._finish(ex, now)

    def _finish(self, ex: Exchange, now: float) -> None:
        self.exchange = None
        self._log(ex, now)
        if ex.close_after or not ex.request_done or self.ctx.draining:
            self.close()
            return
        backlog = self.backlog
        if backlog is not None:
            self.backlog = None
            self._dispatch(backlog, now)
            # A local reply to a pipelined request goes out now, not with the next read.
            self.flush()
        self._await_next()

    def _await_next(self) -> None:
        """After an exchange: resume reading once no pipelined request waits, and watch the client.
        (A method of its own: re-reading self.exchange / self.backlog right after assigning None in the
        same function would be checked against that narrowed type by mypyc: a TypeError, issue #18 D5.)"""
        if self.closed or self.backlog is not None:
            return
        self._resume()
        self.timer = NO_TIMER
        self.watch()

    def _log(self, ex: Exchange, now: float) -> None:
        elapsed_ms = (now - ex.start) * 1000
        ex.duration_ms = int(elapsed_ms)
        self.actions.append((LOG, ex, elapsed_ms))

    def _disarm_route(self, ex: Exchange) -> None:
        if ex.timed:
            ex.timed = False
            self.actions.append((DISARM, ROUTE_TIMER, ex))

    def _abort_upstream(self, ex: Exchange) -> None:
        self._disarm_route(ex)
        up = self._detach(ex)
        if up is not None:
            self.actions.append((CLOSE_UP, up))

    def _detach(self, ex: Exchange) -> object | None:
        """End the current attempt: the upstream connection no longer carries this exchange."""
        up = ex.up
        if up is not None:
            ex.up = None
            if ex.host is not None:
                ex.host.active -= 1
            route = ex.route
            if route is not None and route.per_try_timeout is not None:
                self.actions.append((DISARM, TRY_TIMER, up))
        return up

    def _protocol_error(self, exc: ProtocolError, now: float) -> None:
        """Bad bytes from the client: answer 400/431/... (unless a response is under way) and close."""
        ex = self.exchange
        if ex is not None:
            self._abort_upstream(ex)
            if ex.response_started:
                self.exchange = None
                ex.response_flags = "DPE"
                self._log(ex, now)
                self.close()
                return
        else:
            ex = Exchange(None, self.remote, self.local, now)
            ex.listener = self.listener
        ex.request_done = False
        self._local_reply(ex, exc.status, exc.reason.encode("utf-8", "replace"), "DPE", now)
        self.close()
