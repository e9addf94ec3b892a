"""L4 proxying: copy bytes both ways between a client and one upstream host, with half-close and
flow control; one access log line and TCP metrics per connection."""

from __future__ import annotations

import asyncio
import time
from typing import cast

from meshbox.proxy.access_log import LogRecord
from meshbox.proxy.context import ProxyContext
from meshbox.proxy.peer_identity import PeerIdentity
from meshbox.proxy.security_labels import with_security
from meshbox.proxy.snapshot import OUTBOUND, ClusterRuntime
from meshbox.proxy.upstream_hosts import UpstreamHost
from meshbox.proxy.upstream_tls import failure_reason, open_upstream

_PENDING_LIMIT = 1 << 20


class TcpSession(LogRecord):
    """One proxied TCP connection, also its access log record (method/path/protocol print as '-')."""

    __slots__ = ("labels", "start")

    def __init__(self, labels: tuple[str, ...]) -> None:
        super().__init__(None, None)
        self.start = time.monotonic()
        self.labels = labels


class DownstreamTcp(asyncio.Protocol):
    """The client side. ``cluster`` picks the host; without one, ``target`` is the host (passthrough);
    with neither the connection is refused with ``refuse_flag`` (NR)."""

    def __init__(self, ctx: ProxyContext, labels: tuple[str, ...], cluster: ClusterRuntime | None = None,
                 target: UpstreamHost | None = None, refuse_flag: str = "NR") -> None:
        self.ctx = ctx
        self.cluster = cluster
        self.target = target
        self.refuse_flag = refuse_flag
        self.session = TcpSession(labels)
        self.transport: asyncio.Transport | None = None
        self.up: UpstreamTcp | None = None
        self.pending: list[bytes] = []
        self.pending_size = 0
        self.eof = False
        self.upstream_eof = False
        self.logged = False
        # The verified client of a mutual TLS connection (set by the inbound TLS gate).
        self.peer: PeerIdentity | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports are not asyncio.Transport subclasses, only alike.
        self.transport = cast(asyncio.Transport, transport)
        s = self.session
        for key, attr in (("peername", "downstream_remote"), ("sockname", "downstream_local")):
            addr = transport.get_extra_info(key)
            if addr:
                setattr(s, attr, f"{addr[0]}:{addr[1]}")
        if self.peer is not None:
            s.downstream_peer_uri = self.peer.uri
            s.downstream_tls_version = self.peer.tls_version
        host = self.target
        cluster = self.cluster
        if cluster is not None:
            s.upstream_cluster = cluster.name
            host = cluster.pick()
            if host is not None and s.labels is cluster.labels[OUTBOUND]:
                # The endpoint's workload, when discovery knows it, is the destination's.
                s.labels = cluster.request_labels(OUTBOUND, host)
        tls = self.ctx.tls
        # The server's identity is not known yet when the connection opens: an outbound TCP connection
        # reports destination_principal "unknown".
        s.labels = with_security(s.labels, tls.identity if tls is not None else None,
                                 s.downstream_peer_uri, None)
        self.ctx.stats.tcp_opened(s.labels)
        if cluster is not None and host is None:
            self._refuse("UH")
            return
        if host is None:
            self._refuse(self.refuse_flag)
            return
        s.upstream_host = host.host
        timeout = self.cluster.connect_timeout if self.cluster is not None else 1.0
        self.ctx.loop.create_task(self._open(host, timeout))

    async def _open(self, host: UpstreamHost, timeout: float) -> None:
        try:
            async with asyncio.timeout(timeout):
                _, up = await open_upstream(self.ctx, lambda: UpstreamTcp(self), self.cluster, host)
        except (OSError, TimeoutError) as exc:
            self.session.upstream_failure_reason = failure_reason(exc)
            self._refuse("UF")
            return
        self.session.upstream_peer_uri = host.peer_uri
        if self.transport is None or self.transport.is_closing():
            up.close()
            return
        self.up = up
        if self.pending:
            up.write(b"".join(self.pending))
            self.pending = []
            self.pending_size = 0
            self.transport.resume_reading()
        if self.eof:
            up.write_eof()

    def _refuse(self, flag: str) -> None:
        self.session.response_flags = flag
        if self.transport is not None:
            self.transport.close()

    def data_received(self, data: bytes) -> None:
        self.session.bytes_received += len(data)
        if self.up is not None:
            self.up.write(data)
            return
        self.pending.append(data)
        self.pending_size += len(data)
        if self.pending_size > _PENDING_LIMIT and self.transport is not None:
            self.transport.pause_reading()

    def eof_received(self) -> bool:
        self.eof = True
        if self.up is not None:
            self.up.write_eof()
        if self.upstream_eof and self.transport is not None:
            self.transport.close()
        return True

    def write(self, data: bytes) -> None:
        self.session.bytes_sent += len(data)
        if self.transport is not None:
            self.transport.write(data)

    def write_eof(self) -> None:
        """The upstream finished sending: pass the half-close on; close once both sides are done."""
        self.upstream_eof = True
        if self.transport is None:
            return
        if self.eof or not self.transport.can_write_eof():
            # TLS has no half-close: closing (after what is buffered) is its end of stream.
            self.transport.close()
        else:
            self.transport.write_eof()

    def pause_writing(self) -> None:
        if self.up is not None and self.up.transport is not None:
            self.up.transport.pause_reading()

    def resume_writing(self) -> None:
        if self.up is not None and self.up.transport is not None:
            self.up.transport.resume_reading()

    def connection_lost(self, exc: Exception | None) -> None:
        if self.up is not None:
            self.up.close()
        self.finish()

    def upstream_lost(self) -> None:
        if self.transport is not None:
            self.transport.close()

    def finish(self) -> None:
        if self.logged:
            return
        self.logged = True
        s = self.session
        s.duration_ms = int((time.monotonic() - s.start) * 1000)
        self.ctx.access_log.log(s)
        self.ctx.stats.tcp_closed(s.labels, s.response_flags, s.bytes_sent, s.bytes_received)


class UpstreamTcp(asyncio.Protocol):
    def __init__(self, down: DownstreamTcp) -> None:
        self.down = down
        self.transport: asyncio.Transport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports are not asyncio.Transport subclasses, only alike.
        self.transport = cast(asyncio.Transport, transport)

    def data_received(self, data: bytes) -> None:
        self.down.write(data)

    def eof_received(self) -> bool:
        self.down.write_eof()
        return True

    def write(self, data: bytes) -> None:
        if self.transport is not None:
            self.transport.write(data)

    def write_eof(self) -> None:
        if self.transport is None:
            return
        if self.transport.can_write_eof():
            self.transport.write_eof()
        else:
            self.transport.close()  # TLS: no half-close (as in Envoy)

    def pause_writing(self) -> None:
        if self.down.transport is not None:
            self.down.transport.pause_reading()

    def resume_writing(self) -> None:
        if self.down.transport is not None:
            self.down.transport.resume_reading()

    def close(self) -> None:
        if self.transport is not None:
            self.transport.close()

    def connection_lost(self, exc: Exception | None) -> None:
        self.down.upstream_lost()
