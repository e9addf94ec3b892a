"""The exchange state machine of one client connection: codec events and timer firings in, actions out.

No asyncio, no sockets, no clock: every input carries ``now`` and every effect is an action appended to
``actions`` (see ``exchange``), which the I/O layer carries out after each call. Routing, the header
policy, retries, fault injection, route / per-try / client timeouts and access logging live here once,
whatever codec produced the events: an HTTP/1.1 connection feeds it RequestHead / Body / END /
ProtocolError, and the upstream side the ResponseHead / Body / END of its parser.
"""

from __future__ import annotations

import random
from typing import TYPE_CHECKING, Any, Final

from meshbox.proxy.attempt_outcomes import CONNECT_FAILURE, MIRROR_BODY_LIMIT, NO_ANSWER, TRY_TIMEOUT
from meshbox.proxy.codec.events import END, Body, Headers, ProtocolError, RequestHead, Tunnel
from meshbox.proxy.exchange import (
    ARM,
    CLIENT_TIMER,
    CLOSE_UP,
    DELAY_TIMER,
    DISARM,
    MIRROR,
    OPEN,
    RELEASE,
    ROUTE_TIMER,
    START_UP,
    TRY_TIMER,
    WRITE_UP,
    Exchange,
)
from meshbox.proxy.exchange_resilience import ExchangeResilience
from meshbox.proxy.exchange_state import BODY, HEAD, IDLE, NO_TIMER
from meshbox.proxy.header_policy import absolute_form, request_headers_out
from meshbox.proxy.inbound_policy import inbound_request_check
from meshbox.proxy.route_match import match_route
from meshbox.proxy.snapshot import ListenerRuntime, RouteRuntime

if TYPE_CHECKING:
    # Loaded with a config that has route actions (their snapshot objects import the module).
    from meshbox.proxy.route_actions import PendingMirror, RouteActions

_CONNECT_FAILURE = b"upstream connect error or disconnect/reset before headers. reset reason: connection failure"
# Buffer at most this much request body while no upstream connection is attached yet.
PENDING_BODY_LIMIT: Final = 1 << 20


class ExchangeCore(ExchangeResilience):
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
        headers = self.ctx.peer_metadata.request(ex, headers, listener.direction, self.peer)
        tracer = self.ctx.tracer
        if tracer is not None:
            # After the peer metadata: its scan of the headers for its own need not pass the trace headers.
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
            route = self._unknown_host(listener)
            if route is None:
                self._local_reply(ex, 502 if listener.pass_unknown_hosts else 404, b"", "NR", now)
                return
        ex.route = route
        cluster = ex.cluster = route.single_cluster or route.pick_cluster()
        ex.upstream_cluster = cluster.name
        if route.abort_percent and random.random() * 100 < route.abort_percent:
            self._local_reply(ex, route.abort_status, b"fault filter abort", "FI", now)
            return
        if host is None:
            headers.append((b"host", (cluster.service or cluster.name).encode()))
        actions = route.actions
        if actions is not None:
            edited = self._route_actions(ex, actions, headers, target, now)
            if edited is None:
                return
            headers, target = edited
        ex.request_bytes = self.up_framing.request_head(ex, target, headers)
        ex.retries_left = route.retries
        if route.retries:
            self._retry_setup(ex, route)
        if route.delay_percent and random.random() * 100 < route.delay_percent:
            ex.response_flags = "DI"
            self.actions.append((ARM, DELAY_TIMER, ex, route.delay))
            return
        self._connect(ex, now)

    def _unknown_host(self, listener: ListenerRuntime) -> RouteRuntime | None:
        """An egress listener's route for a host no virtual host answers: to the original destination
        under ALLOW_ANY (see passthrough); None otherwise."""
        if not listener.pass_unknown_hosts or self.ctx.registry_only:
            return None
        route = self.passthrough
        if route is None:
            dst = self.original_dst
            if dst is None:
                return None
            from meshbox.proxy.passthrough import passthrough_route  # egress listeners only

            route = self.passthrough = passthrough_route(self.ctx.workload, dst[0], dst[1])
        return route

    def _route_actions(self, ex: Exchange, actions: RouteActions, headers: Headers, target: bytes,
                       now: float) -> tuple[Headers, bytes] | None:
        """The route's local rate limit, redirect, rewrites, header operations and mirrors (see
        route_actions): the request's new headers and target, or None when it was answered here."""
        limiter = actions.limiter
        stats = self.ctx.stats
        if limiter is not None:
            if not limiter.take(now):
                stats.incr("http_local_rate_limit_rate_limited")
                self._local_reply(ex, 429, b"local_rate_limited", "RL", now)
                return None
            stats.incr("http_local_rate_limit_ok")
        redirect = actions.redirect
        if redirect is not None:
            location = redirect.location(ex.authority or b"", target, b"http")
            self._local_reply(ex, redirect.code, b"", "-", now, headers=[(b"location", location)])
            return None
        cluster = ex.cluster
        assert cluster is not None
        headers, target = actions.edit_request(cluster.name, headers, target)
        if actions.mirrors:
            from meshbox.proxy.route_actions import chosen_mirrors

            self._mirror(ex, chosen_mirrors(actions.mirrors), target, headers)
        return headers, target

    def _mirror(self, ex: Exchange, clusters: list[Any], target: bytes, headers: Headers) -> None:
        """Copy the request to the mirrors' clusters: now, or once its body is in (bounded)."""
        head, route = ex.head, ex.route
        if not clusters or head is None or route is None:
            return
        from meshbox.proxy.route_actions import PendingMirror, mirror_copy

        if ex.request_done:
            data = mirror_copy(head.method, target, headers, None)
            for cluster in clusters:
                self.actions.append((MIRROR, cluster, data, route.timeout))
        elif head.content_length is not None and head.content_length > MIRROR_BODY_LIMIT:
            self.ctx.stats.incr("mirror_skipped_body")
        else:
            self.mirroring = PendingMirror(ex, clusters, head.method, target, headers, route.timeout)

    def _mirror_body(self, mirroring: PendingMirror, ex: Exchange, data: bytes, end: bool) -> None:
        if mirroring.exchange is not ex:
            self.mirroring = None  # left over from an exchange that ended before its body did
            return
        if data and not mirroring.add(data):
            self.mirroring = None
            self.ctx.stats.incr("mirror_skipped_body")
            return
        if end:
            self.mirroring = None
            copy = mirroring.copy()
            for cluster in mirroring.clusters:
                self.actions.append((MIRROR, cluster, copy, mirroring.timeout))

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
        guard = cluster.guard
        if guard is not None:
            self._guarded_connect(ex, guard, now, fresh)
            return
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
        if self._retry_failure(ex, CONNECT_FAILURE) and self._may_retry(ex):
            self._report(ex, NO_ANSWER, now)
            self._retry(ex, now)
        else:
            self._local_reply(ex, 503, _CONNECT_FAILURE, self._exhausted(ex, "UF"), now)
        self.flush()

    def _request_body(self, ex: Exchange, data: bytes) -> None:
        ex.bytes_received += len(data)
        mirroring = self.mirroring
        if mirroring is not None:
            self._mirror_body(mirroring, ex, data, False)
        if not ex.request_done:
            data = self.up_framing.request_body(ex, data)
        if ex.replay is not None:
            self._keep_body(ex, data)
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
        mirroring = self.mirroring
        if mirroring is not None:
            self._mirror_body(mirroring, ex, b"", True)
        end = self.up_framing.request_end(ex)
        if end:
            if ex.replay is not None:
                self._keep_body(ex, end)
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
        self.ctx.stats.incr("upstream_rq_per_try_timeout")
        if self._retry_failure(ex, TRY_TIMEOUT) and self._replayable(ex) and self._may_retry(ex):
            self._detach(ex)
            self.actions.append((CLOSE_UP, up))
            self._report(ex, 504, now)
            self._retry(ex, now)
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
