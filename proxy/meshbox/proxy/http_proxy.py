"""L7 HTTP/1.1 over asyncio: the I/O layer around the exchange core.

A client connection feeds its bytes to the request parser and the parsed events to its
:class:`ExchangeCore`; an upstream connection feeds its bytes to its response parser and the events to
the core of the client connection it serves. After each input the layer carries out the actions the core
returned (``exchange`` lists them): writes, connects, the connection pool, timers, the access log. It
decides nothing about HTTP itself, except the raw tunnels after an upgrade (L4 byte copying) and the
HTTP/2 preface sniffing, which hands the connection to ``http2_downstream``.
"""

from __future__ import annotations

import asyncio
import time
from typing import TYPE_CHECKING, Any, Final, cast

from meshbox.proxy.alpn import H2, HTTP11, selected
from meshbox.proxy.codec.events import ProtocolError
from meshbox.proxy.context import ProxyContext
from meshbox.proxy.exchange import (
    ARM,
    CLIENT_TIMER,
    CLOSE_DOWN,
    CLOSE_UP,
    DELAY_TIMER,
    DISARM,
    LOG,
    MIRROR,
    OPEN,
    PAUSE,
    RELEASE,
    RESUME,
    ROUTE_TIMER,
    START_UP,
    TRY_TIMER,
    TUNNEL,
    WRITE_DOWN,
    WRITE_UP,
    Exchange,
)
from meshbox.proxy.exchange_core import ExchangeCore
from meshbox.proxy.peer_identity import PeerIdentity
from meshbox.proxy.peer_metadata import peer_labels
from meshbox.proxy.security_labels import RequestLabels
from meshbox.proxy.snapshot import INBOUND, ListenerRuntime
from meshbox.proxy.tcp_proxy import DownstreamTcp
from meshbox.proxy.upstream_hosts import UpstreamHost
from meshbox.proxy.upstream_http import UpstreamHttp
from meshbox.proxy.upstream_http_open import open_http1, open_new

if TYPE_CHECKING:
    # Loaded for clusters with connection limits only (circuit breaking).
    from meshbox.proxy.connection_slots import PendingOpen

# What an HTTP/2 client with prior knowledge (e.g. gRPC without TLS) sends first.
H2_PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"
_monotonic: Final = time.monotonic


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
        self.parser = ctx.codec.request_parser()
        self.core: ExchangeCore | None = None
        self.transport: asyncio.Transport | None = None
        self.tunnel: UpstreamHttp | None = None
        self.closed = False
        self.eof = False
        self.reading_paused = False
        # The first bytes are checked for the HTTP/2 preface (kept here while too short to tell).
        self.sniffing = True
        self.sniffed = b""
        # The verified client of a mutual TLS connection (set by the inbound TLS gate).
        self.peer: PeerIdentity | None = None
        self.labels = RequestLabels()
        # Where an egress listener's connection was going (set by the capture listener; see passthrough).
        self.original_dst: tuple[str, int] | None = None

    # -- asyncio callbacks -------------------------------------------------------------------------
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports are not asyncio.Transport subclasses, only alike.
        self.transport = cast(asyncio.Transport, transport)
        core = self.core = ExchangeCore(self.ctx, self.listener, _peer(transport, "peername"),
                                        _peer(transport, "sockname"))
        core.peer = self.peer
        core.original_dst = self.original_dst
        if self.peer is not None:
            # Over mutual TLS the client's ALPN choice picks the codec (alpn); with none, the first bytes do.
            protocol = selected(transport)
            if protocol == H2:
                self._serve_h2(b"")
                return
            self.sniffing = protocol != HTTP11
        self.ctx.connections.add(self)
        core.watch()
        self.run(core)

    def data_received(self, data: bytes) -> None:
        tunnel = self.tunnel
        if tunnel is not None:
            ex = tunnel.tunnel_exchange
            if ex is not None:
                ex.bytes_received += len(data)
            tunnel.write(data)
            return
        core = self.core
        assert core is not None
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
        core.request_events(events, self.parser.partial_head, _monotonic())
        self.run(core)

    def eof_received(self) -> bool | None:
        tunnel = self.tunnel
        if tunnel is None:
            core = self.core
            if core is None or core.tunnelled:
                return None
            keep = core.client_half_closed()
            self.run(core)
            return True if keep and not self.closed else None
        if tunnel.transport is None:
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
        core = self.core
        if core is not None and not core.tunnelled:
            core.client_closed(_monotonic())
            self.run(core)
        if self.tunnel is not None:
            self.tunnel.close()
            self.tunnel = None

    def pause_writing(self) -> None:
        up = self._upstream()
        if up is not None and up.transport is not None:
            up.transport.pause_reading()

    def resume_writing(self) -> None:
        up = self._upstream()
        if up is not None and up.transport is not None:
            up.transport.resume_reading()

    def _upstream(self) -> UpstreamHttp | None:
        if self.tunnel is not None:
            return self.tunnel
        ex = self.core.exchange if self.core is not None else None
        return cast(UpstreamHttp, ex.up) if ex is not None and ex.up is not None else None

    # -- carrying out the core's actions -----------------------------------------------------------
    def run(self, core: ExchangeCore) -> None:
        """Carry out what the core asked for, in order (an OPEN answered from the pool adds more)."""
        if core.out:
            core.flush()
        actions = core.actions
        ctx = self.ctx
        i = 0
        while i < len(actions):
            action = actions[i]
            i += 1
            op: int = action[0]
            kind: int
            if op == WRITE_DOWN:
                if self.transport is not None and not self.closed:
                    self.transport.write(action[1])
            elif op == START_UP:
                up = cast(UpstreamHttp, action[1])
                up.start(self, action[2])
                up.write(action[3])
            elif op == WRITE_UP:
                cast(UpstreamHttp, action[1]).write(action[2])
            elif op == ARM:
                kind = action[1]
                if kind == CLIENT_TIMER:
                    ctx.connection_deadlines.arm(self, action[3], self._client_fired)
                elif kind == ROUTE_TIMER:
                    ctx.deadlines.arm(action[2], action[3], self._route_fired)
                else:
                    self._arm(kind, action[2], action[3])
            elif op == DISARM:
                kind = action[1]
                if kind == CLIENT_TIMER:
                    ctx.connection_deadlines.disarm(self, None)
                else:
                    ctx.deadlines.disarm((DELAY_TIMER, action[2]) if kind == DELAY_TIMER else action[2], None)
            elif op == LOG:
                self._log(action[1], action[2])
            elif op == OPEN:
                open_http1(self, core, action[1], action[2], action[3])
            elif op == RELEASE:
                cast(UpstreamHttp, action[1]).release()
            elif op == CLOSE_UP:
                cast(UpstreamHttp, action[1]).close()
            elif op == CLOSE_DOWN:
                if self.transport is not None and not self.closed:
                    self.transport.close()
            elif op == PAUSE:
                self.pause_reading()
            elif op == RESUME:
                self.resume_reading()
            elif op == TUNNEL:
                tunnel = cast(UpstreamHttp, action[1])
                self.tunnel = tunnel
                tunnel.tunnel_to(self, action[2])
            elif op == MIRROR:
                from meshbox.proxy.mirroring import send_mirror  # routes with mirrors only

                send_mirror(ctx, action[1], action[2], action[3])
        actions.clear()

    def _arm(self, kind: int, key: Any, seconds: float) -> None:
        ctx = self.ctx
        if kind == CLIENT_TIMER:
            ctx.connection_deadlines.arm(self, seconds, self._client_fired)
        elif kind == ROUTE_TIMER:
            ctx.deadlines.arm(key, seconds, self._route_fired)
        elif kind == TRY_TIMER:
            ctx.deadlines.arm(key, seconds, self._try_fired)
        else:
            ctx.deadlines.arm((DELAY_TIMER, key), seconds, self._delay_fired)

    def _fired(self, kind: int, key: Any) -> None:
        core = self.core
        if core is not None:
            core.timer_fired(kind, key, _monotonic())
            self.run(core)

    def _route_fired(self, key: Any) -> None:
        self._fired(ROUTE_TIMER, key)

    def _try_fired(self, key: Any) -> None:
        self._fired(TRY_TIMER, key)

    def _delay_fired(self, key: Any) -> None:
        self._fired(DELAY_TIMER, key[1])

    def _client_fired(self, key: Any) -> None:
        self._fired(CLIENT_TIMER, key)

    def _log(self, ex: Exchange, elapsed_ms: float) -> None:
        ctx = self.ctx
        host = ex.host
        if host is not None:
            ex.upstream_peer_uri = host.peer_uri
        ctx.access_log.log(ex)
        ctx.recent.record(ex)
        listener = ex.listener
        tls = ctx.tls
        labels = self.labels.of(ex.cluster, host, listener.direction if listener is not None else INBOUND,
                                ctx.unknown_labels, tls.identity if tls is not None else None,
                                ex.downstream_peer_uri, ex.upstream_peer_uri)
        if ex.peer is not None:
            labels = peer_labels(labels, ex.peer)
        ctx.stats.request(labels, ex.response_code, ex.response_flags, elapsed_ms, ex.bytes_received, ex.bytes_sent)
        span = ex.span
        if span is not None:
            tracer = ctx.tracer
            if tracer is not None:
                tracer.finish(ex, span, ex.upstream_cluster or "", elapsed_ms)

    def open_pending(self, entry: PendingOpen) -> None:
        """A connection slot freed for the pending request ``entry``."""
        open_new(self, entry.core, entry.ex, entry.host)

    def attach_pending(self, entry: PendingOpen, up: UpstreamHttp) -> None:
        """A connection to its host was released for the pending request ``entry``."""
        entry.core.attached(entry.ex, up, _monotonic())
        self.run(entry.core)

    # -- plumbing ----------------------------------------------------------------------------------
    def busy(self) -> bool:
        """An exchange is in progress (a drain closes only connections that are not busy)."""
        return self.core is not None and self.core.exchange is not None

    def pause_reading(self) -> None:
        if not self.reading_paused and self.transport is not None:
            self.reading_paused = True
            self.transport.pause_reading()

    def resume_reading(self) -> None:
        """Read from the client again, unless the core stopped reading (pipelined requests held back, a
        request it rejected, held bytes over their limit): an upstream's drained writes (resume_writing)
        must not undo that, or the rejected request's parser is fed again (issue #18 fuzz, N3)."""
        core = self.core
        if core is not None and core.paused:
            return
        if self.reading_paused and self.transport is not None and not self.closed:
            self.reading_paused = False
            self.transport.resume_reading()

    def close(self) -> None:
        core = self.core
        if core is not None and not core.closed:
            core.close()
            self.run(core)
        elif self.transport is not None and not self.closed:
            self.transport.close()

    def abort(self) -> None:
        """Drop this connection and its upstream at once (after an internal error in one of its callbacks)."""
        up = self._upstream()
        if up is not None:
            up.close()
        if self.transport is not None and not self.closed:
            self.transport.abort()

    def tunnel_data(self, data: bytes) -> None:
        if self.transport is not None and not self.closed:
            self.transport.write(data)

    def tunnel_closed(self, ex: Exchange) -> None:
        self.tunnel = None
        core = self.core
        if core is not None:
            core.tunnel_closed(ex, _monotonic())
            self.run(core)

    # -- HTTP/2 sniffing ---------------------------------------------------------------------------
    def _sniff(self, data: bytes) -> bytes | None:
        """The bytes to parse as HTTP/1.1, or None: still too few to tell, or handed to an L4 tunnel."""
        data = self.sniffed + data if self.sniffed else data
        if len(data) < len(H2_PREFACE) and H2_PREFACE.startswith(data):
            self.sniffed = data
            core = self.core
            assert core is not None
            core.partial_head = True
            core.watch()
            self.run(core)
            return None
        self.sniffing = False
        self.sniffed = b""
        if data.startswith(H2_PREFACE):
            self._serve_h2(data)
            return None
        return data

    def _serve_h2(self, data: bytes) -> None:
        """HTTP/2 with prior knowledge (gRPC without TLS): the connection is handed to an HTTP/2
        connection object (one exchange core per stream); this one is done."""
        # Imported on the first HTTP/2 connection: a proxy that never sees one does not load the HTTP/2 modules.
        from meshbox.proxy.http2_downstream import Http2Downstream

        transport = self.transport
        core = self.core
        assert transport is not None and core is not None
        ctx = self.ctx
        ctx.connections.discard(self)
        ctx.connection_deadlines.disarm(self, None)
        listener = core.current_listener()
        self.closed = True  # this protocol object is done; the TCP or HTTP/2 one owns the transport now
        core.closed = True
        if listener.pass_unknown_hosts:
            # An egress listener has no route of its own address and HTTP/2 streams have no captured
            # destination of their own: the connection goes at L4 where it was going (or NR).
            ctx.stats.incr("downstream_cx_http2_tunnelled")
            dst = core.original_dst
            target = UpstreamHost(dst[0], dst[1]) if dst is not None and not ctx.registry_only else None
            tcp = DownstreamTcp(ctx, ctx.unknown_labels[listener.direction], target=target, refuse_flag="NR")
            transport.set_protocol(tcp)
            tcp.connection_made(transport)
            if not transport.is_closing():
                tcp.data_received(data)
            return
        h2 = Http2Downstream(ctx, listener, core.remote, core.local, self.peer)
        transport.set_protocol(h2)
        h2.connection_made(transport)
        if data and not transport.is_closing():
            h2.data_received(data)
