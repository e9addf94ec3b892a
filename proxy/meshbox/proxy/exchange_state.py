"""The state of one client connection's exchanges, the response side and how exchanges end: the
half of the exchange state machine that ``exchange_core`` builds on (same rules: no asyncio, no
sockets, no clock; inputs carry ``now``, effects are actions appended to ``actions``)."""

from __future__ import annotations

from typing import Any

from meshbox.proxy.codec.events import END, Body, ProtocolError, ResponseHead, Tunnel
from meshbox.proxy.codec.writer import LAST_CHUNK, chunk, local_reply
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
    Exchange,
)
from meshbox.proxy.header_policy import interim_head_out, response_head_out
from meshbox.proxy.snapshot import ListenerRuntime

TERMINATION = b"upstream connect error or disconnect/reset before headers. reset reason: connection termination"
# What the client connection's timer watches.
NO_TIMER, IDLE, HEAD, BODY = range(4)


class ExchangeState:
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

    def _connect(self, ex: Exchange, now: float) -> None:
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
        self.upstream_failed(up, "UC", 503, TERMINATION, now)

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
