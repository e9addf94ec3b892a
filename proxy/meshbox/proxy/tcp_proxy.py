"""L4 proxying: copy bytes both ways between a client and one upstream host, with half-close and
flow control; one access log line and TCP metrics per connection. Over mutual TLS between two sidecars
the peer's workload comes from the metadata preamble (peer_exchange): read by the inbound TLS gate on
the server side, by :class:`UpstreamTcp` on the client side."""

from __future__ import annotations

import asyncio
import sys
import time
from typing import cast

from meshbox.proxy.access_log import LogRecord
from meshbox.proxy.circuit_breaker import ClusterLimits
from meshbox.proxy.context import ProxyContext
from meshbox.proxy.peer_exchange import MalformedPreamble, PreambleReader, negotiated, preamble
from meshbox.proxy.peer_identity import PeerIdentity
from meshbox.proxy.peer_metadata import Peer, peer_labels
from meshbox.proxy.security_labels import DESTINATION, with_security
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
        # Counted as opened (tcp_opened) under its full labels.
        self.counted = False
        # The verified client of a mutual TLS connection (set by the inbound TLS gate).
        self.peer: PeerIdentity | None = None
        # The cluster limits this connection holds a connection slot of (circuit breaking).
        self.slot: ClusterLimits | None = None
        # The peer's workload from the TCP metadata exchange: the client's (set by the inbound TLS gate)
        # or the server's (read by UpstreamTcp).
        self.exchanged_peer: Peer | None = None
        # The upstream connection is made (its identity checked); counted once its preamble is read too.
        self.connected = False

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
        if self.exchanged_peer is not None and s.labels[0] == DESTINATION:
            s.labels = peer_labels(s.labels, self.exchanged_peer)
        if s.labels[0] == DESTINATION:
            self._count_opened(None)
        # else (reporter "source") the server's identity, destination_principal, is known once the upstream
        # connection is made: counted then (or at the end, when there is none).
        host = self.target
        cluster = self.cluster
        if cluster is not None:
            s.upstream_cluster = cluster.name
            guard = cluster.guard
            # (With a guard: ejected endpoints skipped, hashed on the client's address.)
            host = cluster.pick() if guard is None else guard.pick([], s.downstream_remote, time.monotonic(),
                                                                   self.ctx.stats)
            if host is None:
                self._refuse("UH")
                return
            if s.labels is cluster.labels[OUTBOUND]:
                # The endpoint's workload, when discovery knows it, is the destination's.
                s.labels = cluster.request_labels(OUTBOUND, host)
            limits = cluster.limits
            if limits.max_connections:
                if not limits.connection_allowed():
                    self.ctx.stats.incr("upstream_cx_overflow")
                    limits.cx_overflow += 1
                    s.upstream_host = host.host
                    self._refuse("UO")
                    return
                limits.cx_active += 1
                self.slot = limits
        if host is None:
            self._refuse(self.refuse_flag)
            return
        s.upstream_host = host.host
        timeout = self.cluster.connect_timeout if self.cluster is not None else 1.0
        self.ctx.loop.create_task(self._open(host, timeout))

    async def _open(self, host: UpstreamHost, timeout: float) -> None:
        try:
            async with asyncio.timeout(timeout):
                _, up = await open_upstream(self.ctx, lambda: UpstreamTcp(self), self.cluster, host, True)
        except (OSError, TimeoutError) as exc:
            self.session.upstream_failure_reason = failure_reason(exc)
            self._report(host, False)
            self._refuse("UF")
            return
        self._report(host, True)
        self.session.upstream_peer_uri = host.peer_uri
        self.connected = True
        if up.exchange is None:
            self._count_upstream()
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

    def _report(self, host: UpstreamHost, connected: bool) -> None:
        """A connect's outcome, for the cluster's outlier detection (a failure counts as a 503)."""
        guard = self.cluster.guard if self.cluster is not None else None
        if guard is not None:
            guard.report(host, 200 if connected else 503, time.monotonic(), self.ctx.stats)

    def _count_upstream(self) -> None:
        """Count a client-side connection as opened, with the server's workload when its preamble named it
        and discovery did not (peer_labels keeps a destination discovery knows)."""
        s = self.session
        peer = self.ctx.peer_metadata.believed(self.exchanged_peer, s.upstream_peer_uri)
        if peer is not None and not self.counted:
            s.labels = peer_labels(s.labels, peer)
        self._count_opened(s.upstream_peer_uri)

    def upstream_preamble(self, peer: Peer | None, rest: bytes) -> None:
        """The server sidecar's preamble is read: label the connection, then pass on what followed it."""
        self.exchanged_peer = peer
        if self.connected:
            self._count_upstream()
        if rest:
            self.write(rest)

    def upstream_preamble_refused(self, reason: str) -> None:
        """The server's preamble is malformed: both connections end, nothing of it forwarded."""
        self.ctx.stats.incr("peer_exchange_malformed")
        self.session.upstream_failure_reason = f"peer exchange: {reason}"
        print(f"meshbox-proxy: TCP metadata exchange with {self.session.upstream_host} failed, connection "
              f"closed: {reason}", file=sys.stderr, flush=True)
        if self.up is not None:
            self.up.abort()
        if self.transport is not None:
            self.transport.close()

    def _count_opened(self, upstream_peer: str | None) -> None:
        """Append the security labels (once) and count the connection as opened under them."""
        if self.counted:
            return
        self.counted = True
        s = self.session
        tls = self.ctx.tls
        s.labels = with_security(s.labels, tls.identity if tls is not None else None, s.downstream_peer_uri,
                                 upstream_peer)
        self.ctx.stats.tcp_opened(s.labels)

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
        if self.slot is not None:
            self.slot.cx_active -= 1
            self.slot = None
        self._count_opened(self.session.upstream_peer_uri)
        s = self.session
        s.duration_ms = int((time.monotonic() - s.start) * 1000)
        self.ctx.access_log.log(s)
        self.ctx.stats.tcp_closed(s.labels, s.response_flags, s.bytes_sent, s.bytes_received)


class UpstreamTcp(asyncio.Protocol):
    def __init__(self, down: DownstreamTcp) -> None:
        self.down = down
        self.transport: asyncio.Transport | None = None
        # Reads the server sidecar's metadata preamble when the TLS handshake negotiated the exchange.
        self.exchange: PreambleReader | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports are not asyncio.Transport subclasses, only alike.
        self.transport = cast(asyncio.Transport, transport)
        if negotiated(transport):
            # Written before any app byte and without waiting for one (server-first protocols).
            self.transport.write(preamble(self.down.ctx.peer_metadata.struct))
            self.exchange = PreambleReader()

    def data_received(self, data: bytes) -> None:
        reader = self.exchange
        if reader is None:
            self.down.write(data)
            return
        try:
            done = reader.read(data)
            if done is None:
                return
            peer, rest = done
        except MalformedPreamble as exc:
            self.exchange = None
            self.down.upstream_preamble_refused(str(exc))
            return
        self.exchange = None
        self.down.upstream_preamble(peer, rest)

    def eof_received(self) -> bool:
        if self.exchange is not None:
            self.down.upstream_preamble_refused(str(self.exchange.truncated()))
            self.exchange = None
            return False
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
            self.close()  # TLS: no half-close (as in Envoy)

    def pause_writing(self) -> None:
        if self.down.transport is not None:
            self.down.transport.pause_reading()

    def resume_writing(self) -> None:
        if self.down.transport is not None:
            self.down.transport.resume_reading()

    def close(self) -> None:
        # Closed from this side: whatever of the server's preamble comes now is not worth reading.
        self.exchange = None
        if self.transport is not None:
            self.transport.close()

    def abort(self) -> None:
        if self.transport is not None:
            self.transport.abort()

    def connection_lost(self, exc: Exception | None) -> None:
        self.down.upstream_lost()
