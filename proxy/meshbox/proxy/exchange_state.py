"""The state of one client connection's exchanges, the response side and how exchanges end: the
half of the exchange state machine that ``exchange_core`` builds on (same rules: no asyncio, no
sockets, no clock; inputs carry ``now``, effects are actions appended to ``actions``)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Final

from meshbox.proxy.attempt_outcomes import RESET
from meshbox.proxy.codec.events import END, Body, Headers, ProtocolError, ResponseHead, Tunnel
from meshbox.proxy.context import ProxyContext
from meshbox.proxy.exchange import (
    ARM,
    CLIENT_TIMER,
    CLOSE_DOWN,
    CLOSE_UP,
    DISARM,
    LOG,
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
from meshbox.proxy.framing import HTTP1, Http1Framing
from meshbox.proxy.peer_identity import PeerIdentity
from meshbox.proxy.snapshot import ListenerRuntime, RouteRuntime

if TYPE_CHECKING:
    from meshbox.proxy.route_actions import PendingMirror

TERMINATION = b"upstream connect error or disconnect/reset before headers. reset reason: connection termination"
# Idempotent methods (RFC 9110 9.2.2): the only ones sent again after a connection closed unanswered.
IDEMPOTENT = frozenset({b"GET", b"HEAD", b"OPTIONS", b"TRACE", b"PUT", b"DELETE"})
# What the client connection's timer watches.
NO_TIMER: Final = 0
IDLE: Final = 1
HEAD: Final = 2
BODY: Final = 3


class ExchangeState:
    """One client connection's exchanges, one at a time (pipelined requests wait in ``backlog``)."""

    def __init__(self, ctx: ProxyContext, listener: ListenerRuntime, remote: str | None, local: str | None,
                 down_framing: Http1Framing = HTTP1, up_framing: Http1Framing = HTTP1) -> None:
        self.ctx = ctx
        # How messages become bytes towards the client and towards upstream (the only protocol-specific
        # output of the core).
        self.down_framing = down_framing
        self.up_framing = up_framing
        self.listener = listener
        self.listener_snapshot = ctx.snapshot
        self.remote = remote
        self.local = local
        # The verified client of a mutual TLS connection (None: plaintext).
        self.peer: PeerIdentity | None = None
        self.actions: list[tuple[Any, ...]] = []
        self.out: list[bytes] = []
        self.exchange: Exchange | None = None
        self.backlog: list[Any] | None = None
        self.partial_head = False
        self.closed = False
        self.paused = False
        self.tunnelled = False
        # The client half-closed: it sends nothing more, but is owed the answers to its requests.
        self.client_eof = False
        # Pipelined requests held back are being dispatched now.
        self.replaying = False
        # Bytes that followed an upgrade request, held until its answer (see ExchangeCore._hold_early).
        self.early: list[bytes] | None = None
        self.timer = NO_TIMER
        # The last response head said its connection may carry another exchange.
        self.up_keep_alive = False
        # A mirror copy collecting its request's body (route_actions.PendingMirror), else None.
        self.mirroring: PendingMirror | None = None
        # An egress listener's connection: where it was going (set by the I/O layer), and the route there
        # that requests for unknown hosts take under ALLOW_ANY (made on the first such request).
        self.original_dst: tuple[str, int] | None = None
        self.passthrough: RouteRuntime | None = None

    def flush(self) -> None:
        """Turn what was written for the client since the last flush into one write action."""
        out = self.out
        if out:
            self.actions.append((WRITE_DOWN, out[0] if len(out) == 1 else b"".join(out)))
            out.clear()

    def close(self) -> None:
        """Close the client connection once what was written for it is out."""
        self.flush()
        if not self.closed:
            self.closed = True
            self.actions.append((CLOSE_DOWN,))

    def _pause(self) -> None:
        if not self.paused:
            self.paused = True
            self.actions.append((PAUSE,))

    def _resume(self) -> None:
        if self.paused and not self.closed:
            self.paused = False
            self.actions.append((RESUME,))

    # -- the client connection ---------------------------------------------------------------------
    def current_listener(self) -> ListenerRuntime:
        """The connection's listener in the current config (looked up again after a config swap)."""
        snap = self.ctx.snapshot
        if snap is not self.listener_snapshot and snap is not None:
            self.listener_snapshot = snap
            self.listener = snap.by_key.get(self.listener.key, self.listener)
        return self.listener

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

    # -- provided by ExchangeCore -----------------------------------------------------------------
    def _dispatch(self, events: list[Any], now: float) -> None:
        raise NotImplementedError

    def _connect(self, ex: Exchange, now: float, fresh: bool = False) -> None:
        raise NotImplementedError

    # -- provided by ExchangeResilience -------------------------------------------------------------
    def _retry_response(self, ex: Exchange, head: ResponseHead, now: float) -> bool:
        raise NotImplementedError

    def _retry_failure(self, ex: Exchange, failure: int) -> bool:
        raise NotImplementedError

    def _replayable(self, ex: Exchange) -> bool:
        raise NotImplementedError

    def _may_retry(self, ex: Exchange) -> bool:
        raise NotImplementedError

    def _retry(self, ex: Exchange, now: float, fresh: bool = False) -> None:
        raise NotImplementedError

    def _report(self, ex: Exchange, status: int, now: float) -> None:
        raise NotImplementedError

    def _release(self, ex: Exchange, now: float) -> None:
        raise NotImplementedError

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
                out.append(self.down_framing.response_body(ex, data))
            elif ev is END:
                if ex.response_started:
                    self._response_end(ex, up, self.up_keep_alive and not closing, now)
                    if ex.response_code != 101:
                        return
            elif type(ev) is ResponseHead:
                self.up_keep_alive = ev.keep_alive
                self._response_head(ex, ev, now)
                if ex.up is not up:
                    # Retried: the rest of that connection's answer is of no use.
                    self.flush()
                    return
            elif type(ev) is Tunnel:
                ex.bytes_sent += len(ev.data)
                out.append(ev.data)
        self.flush()

    def _response_head(self, ex: Exchange, head: ResponseHead, now: float) -> None:
        status = head.status
        request = ex.head
        assert request is not None
        if status < 200 and status != 101:
            self.out.append(self.down_framing.interim_head(ex, head))
            return
        if ex.response_retry and self._retry_response(ex, head, now):
            return
        route = ex.route
        if route is not None:
            actions = route.actions
            if actions is not None and ex.cluster is not None:
                head = actions.edit_response(ex.cluster.name, head)
        ex.response_started = True
        ex.response_code = status
        head.headers = self.ctx.peer_metadata.response(ex, head.headers)
        ex.response_headers = head.headers
        ust = int((now - ex.sent_at) * 1000)
        ex.upstream_service_time = ust
        self.out.append(self.down_framing.response_head(ex, head, ust, self.ctx.draining))

    def _response_end(self, ex: Exchange, up: object, reusable: bool, now: float) -> None:
        end = self.down_framing.response_end(ex)
        if end:
            self.out.append(end)
        self._detach(ex)
        self._disarm_route(ex)
        actions = self.actions
        if ex.response_code == 101:
            # The connection is a tunnel from now on; logged when it closes.
            self.tunnelled = True
            self.exchange = None
            self.flush()
            early = self.early
            if early is not None:
                self.early = None
                actions.append((WRITE_UP, up, b"".join(early)))
            actions.append((TUNNEL, up, ex))
            # (Reading pauses while more than PENDING_BODY_LIMIT waits: the tunnel takes it from here.)
            self._resume()
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
        pooled connection that sent nothing (the upstream may have timed it out just then): when the
        route allows retries, an idempotent request (RFC 9112 9.3.1) without a body is sent again on a new
        connection (never a pooled one, which may be as stale), as one of its retries; a new connection
        is never "silent reuse", so that happens once at most. Otherwise 503 UC (or a reset once the
        response began). No replay without a retry policy: the upstream may have acted on the request
        (as in Envoy)."""
        ex = self.exchange
        if ex is None or ex.up is not up:
            return
        head = ex.head
        if (silent_reuse and ex.retries_left > 0 and head is not None and head.method in IDEMPOTENT
                and not head.content_length and not head.chunked and not ex.response_started
                and self._may_retry(ex)):
            self._detach(ex)
            self._disarm_route(ex)
            self._retry(ex, now, fresh=True)
            return
        if ex.retries_left > 0 and self._retry_failure_reset(ex) and self._replayable(ex) and self._may_retry(ex):
            # The route retries resets (retry_on reset, 5xx, gateway-error): any request it can send again.
            self._detach(ex)
            self._report(ex, 503, now)
            self._retry(ex, now, fresh=True)
            return
        self.upstream_failed(up, "UC", 503, TERMINATION, now)

    def _retry_failure_reset(self, ex: Exchange) -> bool:
        """Whether the route's retry policy retries a connection closed before the response head."""
        route = ex.route
        policy = route.retry_policy if route is not None else None
        return policy is not None and policy.retries(RESET)

    def tunnel_closed(self, ex: Exchange, now: float) -> None:
        """Both sides of an upgraded connection are done."""
        self._log(ex, now)
        self.close()

    # -- endings -----------------------------------------------------------------------------------
    def _local_reply(self, ex: Exchange, status: int, body: bytes, flag: str, now: float,
                     headers: Headers | None = None) -> None:
        ex.response_code = status
        ex.response_flags = flag
        ex.bytes_sent = len(body)
        request = ex.head
        # After an upgrade request the parser only sees raw bytes: the connection cannot carry more requests.
        close = (not ex.request_done or request is None or not request.keep_alive or request.upgrade
                 or self.ctx.draining)
        ex.close_after = close
        if headers is None:
            self.out.append(self.down_framing.local_reply(ex, status, body, close))
        else:
            self.out.append(self.down_framing.local_reply(ex, status, body, close, headers=headers))
        if request is not None and request.method == b"HEAD":
            ex.bytes_sent = 0
        if ex.request_done or close:
            self._finish(ex, now)

    def _finish(self, ex: Exchange, now: float) -> None:
        self.exchange = None
        # Bytes after a refused upgrade are never forwarded (the connection closes).
        self.early = None
        self._log(ex, now)
        if ex.close_after or not ex.request_done or self.ctx.draining:
            self.close()
            return
        backlog = self.backlog
        if backlog is not None:
            self.backlog = None
            self.replaying = True
            self._dispatch(backlog, now)
            self.replaying = False
            # A local reply to a pipelined request goes out now, not with the next read.
            self.flush()
        self._await_next()

    def _await_next(self) -> None:
        """After an exchange: resume reading once no pipelined request waits, and watch the client.
        (A method of its own: re-reading self.exchange / self.backlog right after assigning None in the
        same function would be checked against that narrowed type by mypyc: a TypeError, issue #18 D5.)"""
        if self.closed or self.backlog is not None or self.replaying:
            # (While the backlog is replayed, the exchange that replays it decides once it is done.)
            return
        if self.client_eof:
            ex = self.exchange
            if ex is None or not ex.request_done:
                # Nothing more can come: no request to wait for, or one that can never be complete.
                self.close()
                return
        if self.paused:
            self._resume()
        if self.exchange is None and not self.partial_head:
            # watch() for the usual case, inlined (this runs for every request): idle from now on.
            self.timer = IDLE
            idle = self.ctx.idle_timeout
            self.actions.append((ARM, CLIENT_TIMER, None, idle) if idle > 0 else (DISARM, CLIENT_TIMER, None))
            return
        self.timer = NO_TIMER
        self.watch()

    def _log(self, ex: Exchange, now: float) -> None:
        if ex.limits is not None:
            self._release(ex, now)
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
