"""The exchange state machine of one client connection: codec events and timer firings in, actions out.

No asyncio, no sockets, no clock: every input carries ``now`` and every effect is an action appended to
``actions`` (see ``exchange``), which the I/O layer carries out after each call. Routing, the header
policy, retries, fault injection, route / per-try / client timeouts and access logging live here once,
whatever codec produced the events: an HTTP/1.1 connection feeds it RequestHead / Body / END /
ProtocolError, and the upstream side the ResponseHead / Body / END of its parser.
"""

from __future__ import annotations

import random
from typing import Any, Final

from meshbox.proxy.codec.events import END, Body, ProtocolError, RequestHead, Tunnel
from meshbox.proxy.exchange import (
    ARM,
    CLIENT_TIMER,
    CLOSE_UP,
    DELAY_TIMER,
    DISARM,
    OPEN,
    RELEASE,
    ROUTE_TIMER,
    START_UP,
    TRY_TIMER,
    WRITE_UP,
    Exchange,
)
from meshbox.proxy.exchange_state import BODY, HEAD, IDLE, NO_TIMER, ExchangeState
from meshbox.proxy.header_policy import absolute_form, request_headers_out
from meshbox.proxy.inbound_policy import inbound_request_check
from meshbox.proxy.route_match import match_route

_CONNECT_FAILURE = b"upstream connect error or disconnect/reset before headers. reset reason: connection failure"
# Buffer at most this much request body while no upstream connection is attached yet.
PENDING_BODY_LIMIT: Final = 1 << 20


class ExchangeCore(ExchangeState):
    """The exchange state machine of one client connection (see the module docstring)."""

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

    def client_half_closed(self) -> bool:
        """The client shut down its sending side. True: keep the connection open to answer the complete
        requests still owed (it closes after the last one); False: close it now (nothing is owed, or
        the request in progress can never be complete)."""
        self.client_eof = True
        ex = self.exchange
        if ex is None:
            if self.backlog is None:
                self.close()
                return False
            return True
        return ex.request_done

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
                    self._hold_early(ex, ev.data)
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
                elif kind is ProtocolError:
                    # The body went bad in a later read than its head.
                    self._protocol_error(ev, now)
            elif ev is not END:
                # A pipelined request (or a parse error after it): hold it until the current response is done.
                self.backlog = list(events[i:])
                self._pause()
                return

    def _start(self, head: RequestHead, now: float) -> None:
        ex = self.exchange = Exchange(head, self.remote, self.local, now)
        if not head.chunked and not head.content_length:
            ex.request_done = True
        listener = self.listener
        if self.ctx.snapshot is not self.listener_snapshot:
            listener = self.current_listener()
        ex.listener = listener
        if self.peer is not None or listener.authz is not None:
            denied = inbound_request_check(self.peer, listener, ex, head)
            if denied:
                self._local_reply(ex, 403, b"RBAC: access denied", "RBAC", now)
                return
        headers, host, request_id = request_headers_out(head, ex)
        if not request_id:
            if request_id is not None:
                # An empty x-request-id is no id: replaced, so every request the upstream sees has one.
                headers = [h for h in headers if h[0] != b"x-request-id"]
            request_id = self.ctx.request_ids.new()
            rid = (b"x-request-id", request_id)
            headers.append(rid)
            kept = [h for h in head.headers if h[0] != b"x-request-id"]
            kept.append(rid)
            ex.request_headers = kept
        ex.request_id = request_id
        tracer = self.ctx.tracer
        if tracer is not None:
            headers, ex.span = tracer.start(ex, headers, listener.direction)
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
        route = match_route(routes, host or b"", target, head.headers) if routes is not None else None
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
        ex.request_bytes = self.up_framing.request_head(ex, target, headers)
        ex.retries_left = route.retries
        if route.delay_percent and random.random() * 100 < route.delay_percent:
            ex.response_flags = "DI"
            self.actions.append((ARM, DELAY_TIMER, ex, route.delay))
            return
        self._connect(ex, now)

    def _hold_early(self, ex: Exchange, data: bytes) -> None:
        """Bytes after an upgrade request, before its answer: they go upstream only if the upstream
        accepts the upgrade (101). Forwarded blindly, the bytes after a refused upgrade would reach the
        upstream as requests the proxy never saw (smuggling)."""
        ex.bytes_received += len(data)
        early = self.early
        if early is None:
            self.early = [data]
        else:
            early.append(data)
        ex.pending_size += len(data)
        if ex.pending_size > PENDING_BODY_LIMIT:
            self._pause()

    def _connect(self, ex: Exchange, now: float, fresh: bool = False) -> None:
        cluster = ex.cluster
        assert cluster is not None
        host = cluster.pick()
        if host is None:
            self._local_reply(ex, 503, b"no healthy upstream", "UH", now)
            return
        ex.host = host
        ex.upstream_host = host.host
        self.actions.append((OPEN, ex, host, fresh))

    def attached(self, ex: Exchange, up: object, now: float) -> None:
        """An upstream connection (pooled or new) is ready for ``ex``."""
        if self.exchange is not ex or self.closed:
            self.actions.append((RELEASE, up))
            return
        ex.up = up
        assert ex.host is not None
        ex.host.active += 1
        data = ex.request_bytes
        if ex.pending:
            data += b"".join(ex.pending)
            ex.pending = ()
            ex.pending_size = 0
            self._resume()
        ex.sent_at = now
        self.actions.append((START_UP, up, ex, data))
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
        if not ex.request_done:
            data = self.up_framing.request_body(ex, data)
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
        end = self.up_framing.request_end(ex)
        if end:
            if ex.up is not None:
                self.actions.append((WRITE_UP, ex.up, end))
            elif ex.route is not None:
                self._hold(ex, end)
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

    def retry_attempt(self, ex: Exchange, now: float) -> None:
        """Another attempt for ``ex``: its current one answered with a status the route retries on (a
        gRPC status: grpc_status.retriable). The caller checked ``retries_left`` and that the request can
        be sent again; the route timeout keeps running across attempts."""
        if self.exchange is not ex:
            return
        ex.retries_left -= 1
        self.ctx.stats.incr("upstream_rq_retry")
        up = self._detach(ex)
        if up is not None:
            self.actions.append((CLOSE_UP, up))
        self._connect(ex, now)

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
