"""Connection slots of clusters with max_connections or max_requests_per_connection (the I/O side
of circuit breaking): requests that find no idle connection and no free slot wait as pending; a
slot that frees (a connection closes) or a connection released to its pool serves the oldest."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from meshbox.proxy.circuit_breaker import ClusterLimits
from meshbox.proxy.upstream_hosts import UpstreamHost

if TYPE_CHECKING:
    from meshbox.proxy.exchange import Exchange
    from meshbox.proxy.exchange_core import ExchangeCore


class PendingOpen:
    """A request waiting for a connection to ``host``; ``down`` is its client connection (http_proxy)."""

    __slots__ = ("core", "down", "ex", "host")

    def __init__(self, down: Any, core: ExchangeCore, ex: Exchange, host: UpstreamHost) -> None:
        self.down = down
        self.core = core
        self.ex = ex
        self.host = host


def still_waiting(entry: PendingOpen) -> bool:
    """The request still waits (its client did not go, no timeout answered it meanwhile)."""
    core = entry.core
    return core.exchange is entry.ex and not core.closed and entry.ex.up is None


def slot_freed(limits: ClusterLimits) -> None:
    """A connection of the cluster closed: open one for the oldest pending request."""
    if limits.pending and limits.connection_allowed():
        entry = limits.next_pending(still_waiting)
        if entry is not None:
            entry.down.open_pending(entry)


def hand_over(up: Any, limits: ClusterLimits) -> bool:
    """``up`` finished an exchange. True: it was taken care of here (closed after its last allowed
    request, or given to a pending request for its host, or closed to free the slot for a pending
    request to another host); False: pool it as usual."""
    cap = limits.max_requests_per_connection
    if cap and up.requests >= cap:
        up.close()
        return True
    entry = limits.next_pending(still_waiting)
    if entry is None:
        return False
    if entry.host is up.host:
        up.down = None
        up.reused = True
        entry.down.attach_pending(entry, up)
        return True
    limits.pending.appendleft(entry)
    up.close()
    return True


def close_idle_elsewhere(hosts: list[UpstreamHost], limits: ClusterLimits) -> None:
    """Close one idle connection the cluster holds a slot for, so a pending request can have the slot."""
    for host in hosts:
        for conn in host.idle:
            if getattr(conn, "limits", None) is limits:
                host.idle.remove(conn)
                conn.close()
                return
