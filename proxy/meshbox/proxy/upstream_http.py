"""An upstream HTTP/1.1 connection: parses responses and hands their events to the exchange core of the
client connection it serves, then waits in its host's idle pool (the I/O layer's other half)."""

from __future__ import annotations

import asyncio
import time
from typing import TYPE_CHECKING, Any, Final, Protocol, cast

from meshbox.proxy.circuit_breaker import ClusterLimits
from meshbox.proxy.codec.events import ProtocolError
from meshbox.proxy.context import ProxyContext
from meshbox.proxy.exchange import Exchange
from meshbox.proxy.upstream_hosts import UpstreamHost

if TYPE_CHECKING:
    from meshbox.proxy.exchange_core import ExchangeCore

# Kept-alive upstream connections per endpoint beyond this are closed instead of pooled.
MAX_IDLE_PER_HOST: Final = 128
_monotonic: Final = time.monotonic


class Http1Client(Protocol):
    """What an upstream connection needs of the side serving its exchange's client: an HTTP/1.1 client
    connection (http_proxy.DownstreamHttp) or an HTTP/2 stream sent on as HTTP/1.1 (http2_to_http1)."""

    core: ExchangeCore | None
    transport: asyncio.Transport | None
    eof: bool

    def run(self, core: ExchangeCore) -> None:
        """Carry out the core's actions."""

    def pause_reading(self) -> None:
        """The upstream connection's writes are backed up: stop taking request bytes from the client."""

    def resume_reading(self) -> None:
        """They drained: take request bytes again."""

    def tunnel_data(self, data: bytes) -> None:
        """Bytes from upstream after a 101 (Upgrade)."""

    def tunnel_closed(self, ex: Exchange) -> None:
        """The upstream side of the tunnel closed."""


class UpstreamHttp(asyncio.Protocol):
    """A connection to one upstream host; carries one exchange at a time, then waits in the host's pool."""

    def __init__(self, ctx: ProxyContext, host: UpstreamHost, limits: ClusterLimits | None = None) -> None:
        self.ctx = ctx
        self.host = host
        # The limits of the cluster this connection holds a slot of (circuit breaking), and its requests.
        self.limits = limits
        self.requests = 0
        self.transport: asyncio.Transport | None = None
        self.down: Http1Client | None = None
        self.parser: Any = None
        self.closed = False
        self.reused = False
        self.got_bytes = False
        self.tunnel_exchange: Exchange | None = None
        self.eof = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports are not asyncio.Transport subclasses, only alike.
        self.transport = cast(asyncio.Transport, transport)

    def start(self, down: Http1Client, ex: Exchange) -> None:
        """Carry ``ex`` for ``down`` (the START_UP action, before its request bytes)."""
        head = ex.head
        assert head is not None
        self.down = down
        self.got_bytes = False
        self.requests += 1
        if self.parser is None:
            self.parser = self.ctx.codec.response_parser(head.method, head.upgrade)
        else:
            self.parser.expect(head.method, head.upgrade)

    def write(self, data: bytes) -> None:
        if self.transport is not None and not self.closed:
            self.transport.write(data)

    def data_received(self, data: bytes) -> None:
        down = self.down
        if self.tunnel_exchange is not None:
            self.tunnel_exchange.bytes_sent += len(data)
            if down is not None:
                down.tunnel_data(data)
            return
        core = down.core if down is not None else None
        if core is None:
            # Bytes on an idle connection: the upstream broke the protocol; don't reuse it.
            self.close()
            return
        self.got_bytes = True
        try:
            events = self.parser.feed(data)
        except ProtocolError as exc:
            core.upstream_failed(self, "UPE", 502, exc.reason.encode(), _monotonic())
        else:
            core.response_events(self, events, _monotonic())
        assert down is not None
        down.run(core)

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
        was_closed, self.closed = self.closed, True
        host = self.host
        if self in host.idle:
            host.idle.remove(self)
        limits = self.limits
        if limits is not None:  # a cluster with connection limits (circuit breaking): loaded for it only
            from meshbox.proxy.connection_slots import slot_freed

            self.limits = None
            limits.cx_active -= 1
            slot_freed(limits)
        down = self.down
        tunnel_ex = self.tunnel_exchange
        if tunnel_ex is not None:
            self.tunnel_exchange = None
            if down is not None:
                down.tunnel_closed(tunnel_ex)
            return
        core = down.core if down is not None else None
        if core is None or was_closed or down is None:
            return
        now = _monotonic()
        if self.parser is not None and self.got_bytes:
            try:
                events = self.parser.feed_eof()
            except ProtocolError:
                events = None
            if events:
                core.response_events(self, events, now, closing=True)
                down.run(core)
                return
        core.upstream_closed(self, self.reused and not self.got_bytes, now)
        down.run(core)

    def pause_writing(self) -> None:
        if self.down is not None and self.down.transport is not None:
            self.down.pause_reading()

    def resume_writing(self) -> None:
        if self.down is not None:
            self.down.resume_reading()

    def tunnel_to(self, down: Http1Client, ex: Exchange) -> None:
        self.tunnel_exchange = ex
        self.down = down

    def release(self) -> None:
        """Back to the host's idle pool (or closed when the proxy is draining or the host left the config)."""
        self.down = None
        if self.limits is not None and not self.closed:
            from meshbox.proxy.connection_slots import hand_over

            if hand_over(self, self.limits):
                return
        if self.closed or self.ctx.draining or self.host.retired or len(self.host.idle) >= MAX_IDLE_PER_HOST:
            self.close()
            return
        self.host.idle.append(self)

    def close(self) -> None:
        # Closed on purpose: whatever exchange it carried is no longer its business (no UC from connection_lost).
        if not self.closed and self.transport is not None:
            self.closed = True
            self.transport.close()
        self.closed = True
