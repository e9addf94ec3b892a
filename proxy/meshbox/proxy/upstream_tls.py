"""Opening an upstream connection: plaintext, or mutual TLS 1.3 with the workload certificate when the
cluster says so for that endpoint, the server identified by its SPIFFE ID (never by host name), offering
the ALPN protocol of what the connection will carry (alpn)."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import TYPE_CHECKING, TypeVar, cast

from meshbox.proxy.alpn import counter, selected
from meshbox.proxy.context import ProxyContext
from meshbox.proxy.inbound_tls import HANDSHAKE_TIMEOUT, peer_of, tls_failure_reason
from meshbox.proxy.peer_identity import announce_peer
from meshbox.proxy.snapshot import ClusterRuntime
from meshbox.proxy.upstream_hosts import UpstreamHost

if TYPE_CHECKING:
    import _ssl

P = TypeVar("P", bound=asyncio.BaseProtocol)


class UpstreamTlsFailure(OSError):
    """The TLS connection to an endpoint failed or its server is not who the cluster allows; ``reason``
    is what %UPSTREAM_TRANSPORT_FAILURE_REASON% logs."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


def failure_reason(exc: BaseException) -> str | None:
    """The transport failure reason of a failed connect (None when it is not a TLS failure)."""
    return exc.reason if isinstance(exc, UpstreamTlsFailure) else None


async def _connect_tls(ctx: ProxyContext, factory: Callable[[], P], host: UpstreamHost, context: _ssl._SSLContext,
                       session: _ssl.SSLSession | None) -> tuple[asyncio.Transport, P]:
    """A TCP connection to ``host`` with the proxy's TLS layer under ``factory()``'s protocol, once its
    handshake is done (resuming ``session`` when given)."""
    from meshbox.proxy.tls_layer import TlsLayer  # loads the TLS records code: TLS only

    loop = ctx.loop
    proto = factory()
    waiter: asyncio.Future[None] = loop.create_future()
    layer = TlsLayer(loop, context, False, proto, waiter, HANDSHAKE_TIMEOUT, session)
    await loop.create_connection(lambda: layer, host.address, host.port)
    try:
        await waiter
    except BaseException:
        layer.abort()
        raise
    return cast(asyncio.Transport, layer), proto


async def open_upstream(ctx: ProxyContext, factory: Callable[[], P], cluster: ClusterRuntime | None,
                        host: UpstreamHost, peer_exchange: bool = False,
                        http2: bool = False) -> tuple[asyncio.BaseTransport, P]:
    """Connect to ``host`` for ``cluster``; raises OSError (UpstreamTlsFailure for TLS) on failure. A TLS
    connection offers the metadata exchange's ALPN with ``peer_exchange`` (TCP), ``h2`` with ``http2``,
    else ``http/1.1``."""
    loop = ctx.loop
    if cluster is None or (host.address, host.port) not in cluster.tls_endpoints:
        return await loop.create_connection(factory, host.address, host.port)
    tls = ctx.tls
    if tls is None:
        raise UpstreamTlsFailure(f"cluster {cluster.name} requires mutual TLS to {host.host} and this proxy "
                                 "has no workload certificate (--cert-dir)")
    try:
        context = tls.client_context(peer_exchange, http2)
        last = host.tls_last
        # A session resumes only with the context that made it (not across a certificate rotation).
        session = getattr(last[1], "session", None) if last is not None and last[0] is context else None
        transport, proto = await _connect_tls(ctx, factory, host, context, session)
    except TimeoutError:
        raise
    except OSError as exc:
        reason = tls_failure_reason(exc)
        ctx.stats.incr("upstream_ssl_handshake_error")
        raise UpstreamTlsFailure(f"TLS error: {reason}") from None
    ssl_object = transport.get_extra_info("ssl_object")
    if ssl_object is not None:
        host.tls_last = (context, ssl_object)
        if ssl_object.session_reused:
            ctx.stats.incr("upstream_ssl_session_reused")
        if getattr(transport, "own_records", False):
            ctx.stats.incr("upstream_cx_tls_own_records")
        alpn_counter = counter("upstream", selected(transport))
        if alpn_counter is not None:
            ctx.stats.incr(alpn_counter)
    peer = peer_of(transport)
    uri = peer.uri if peer is not None else ""
    if cluster.sans and uri not in cluster.sans:
        transport.abort()
        ctx.stats.incr("upstream_ssl_identity_mismatch")
        raise UpstreamTlsFailure(f"TLS error: server identity {uri or '(none)'} of {host.host} is not one of "
                                 f"{', '.join(sorted(cluster.sans))}")
    host.peer_uri = uri
    if peer is not None:
        announce_peer("to", peer, host.host)
    return transport, proto
