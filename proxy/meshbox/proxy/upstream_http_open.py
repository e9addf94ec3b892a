"""Getting an upstream HTTP/1.1 connection for an exchange (the OPEN action), for whichever side serves the
exchange's client: an HTTP/1.1 client connection (http_proxy) or one HTTP/2 stream sent on as HTTP/1.1
(http2_to_http1). An idle pooled connection when there is one, else a new one within the cluster's
connection limits (circuit breaking: wait as pending, or 503 UO when too many wait)."""

from __future__ import annotations

import asyncio
import time
from typing import TYPE_CHECKING, Final, cast

from meshbox.proxy.circuit_breaker import ClusterLimits
from meshbox.proxy.exchange import Exchange
from meshbox.proxy.upstream_hosts import UpstreamHost
from meshbox.proxy.upstream_http import Http1Client, UpstreamHttp
from meshbox.proxy.upstream_tls import failure_reason, open_upstream

if TYPE_CHECKING:
    from meshbox.proxy.exchange_core import ExchangeCore

_monotonic: Final = time.monotonic


def open_http1(client: Http1Client, core: ExchangeCore, ex: Exchange, host: UpstreamHost, fresh: bool) -> None:
    """An idle pooled connection to ``host`` (most recently used first) unless ``fresh``, else a new one;
    reported to ``core`` (attached / connect_failed / overflowed), whose actions ``client`` then runs."""
    idle = host.idle
    cluster = ex.cluster
    assert cluster is not None
    limits = cluster.limits
    if limits.per_connection:
        # Only a connection holding one of this cluster's slots (not one pooled before its limits).
        if not fresh and _reuse_counted(core, ex, host, limits):
            return
    else:
        while idle and not fresh:
            up = cast(UpstreamHttp, idle.pop())
            if not up.closed:
                up.reused = True
                core.attached(ex, up, _monotonic())
                return
    if limits.max_connections and not limits.connection_allowed():
        _queue(client, core, ex, host)
        return
    open_new(client, core, ex, host)


def _reuse_counted(core: ExchangeCore, ex: Exchange, host: UpstreamHost, limits: ClusterLimits) -> bool:
    idle = host.idle
    for i in range(len(idle) - 1, -1, -1):
        up = cast(UpstreamHttp, idle[i])
        if up.limits is limits and not up.closed:
            del idle[i]
            up.reused = True
            core.attached(ex, up, _monotonic())
            return True
    return False


def open_new(client: Http1Client, core: ExchangeCore, ex: Exchange, host: UpstreamHost) -> None:
    """A new connection to ``host`` for ``ex`` (also when a slot freed for it: ``client.open_pending``)."""
    cluster = ex.cluster
    assert cluster is not None
    limits = cluster.limits if cluster.limits.per_connection else None
    if limits is not None:
        # Counted now, not once connected: the next request must see the slot taken.
        limits.cx_active += 1
    core.ctx.loop.create_task(_connect(client, core, ex, host, cluster.connect_timeout, limits))


def _queue(client: Http1Client, core: ExchangeCore, ex: Exchange, host: UpstreamHost) -> None:
    cluster = ex.cluster
    assert cluster is not None
    core.ctx.stats.incr("upstream_cx_overflow")
    # Loaded for clusters with connection limits only (circuit breaking).
    from meshbox.proxy.connection_slots import PendingOpen, close_idle_elsewhere, still_waiting

    if not cluster.limits.queue(PendingOpen(client, core, ex, host), still_waiting):
        core.overflowed(ex, _monotonic())
        return
    core.queued(ex)
    close_idle_elsewhere(cluster.hosts, cluster.limits)


async def _connect(client: Http1Client, core: ExchangeCore, ex: Exchange, host: UpstreamHost, timeout: float,
                   limits: ClusterLimits | None) -> None:
    ctx = core.ctx
    try:
        async with asyncio.timeout(timeout):
            _, up = await open_upstream(ctx, lambda: UpstreamHttp(ctx, host, limits), ex.cluster, host)
    except (OSError, TimeoutError) as exc:
        if limits is not None:
            from meshbox.proxy.connection_slots import slot_freed

            limits.cx_active -= 1
            slot_freed(limits)
        ex.upstream_failure_reason = failure_reason(exc)
        core.connect_failed(ex, _monotonic())
        client.run(core)
        return
    core.attached(ex, up, _monotonic())
    client.run(core)
