"""Istio's security labels of the request and TCP metrics: connection_security_policy, source_principal
and destination_principal, appended to a connection's base labels (snapshot.metric_labels).

Values as Istio reports them: on the server side (reporter ``destination``) ``mutual_tls`` or ``none``,
the client's SPIFFE ID and this workload's; on the client side (reporter ``source``) ``unknown``, this
workload's SPIFFE ID and the server's; ``unknown`` wherever an identity is not known.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from meshbox.proxy.snapshot import ClusterRuntime
    from meshbox.proxy.upstream_hosts import UpstreamHost

UNKNOWN = "unknown"
DESTINATION = "destination"
# Base labels + (policy, source, destination) → the full tuple: few distinct values, many requests.
_CACHE: dict[tuple[tuple[str, ...], str, str, str], tuple[str, ...]] = {}
_CACHE_MAX = 4096


def with_security(labels: tuple[str, ...], own: str | None, downstream_peer: str | None,
                  upstream_peer: str | None) -> tuple[str, ...]:
    """``labels`` with the three security labels of a request or connection appended (the reporter,
    ``labels[0]``, says which side this proxy is on)."""
    if labels[0] == DESTINATION:
        key = (labels, "mutual_tls" if downstream_peer else "none", downstream_peer or UNKNOWN, own or UNKNOWN)
    else:
        key = (labels, UNKNOWN, own or UNKNOWN, upstream_peer or UNKNOWN)
    full = _CACHE.get(key)
    if full is None:
        if len(_CACHE) >= _CACHE_MAX:
            _CACHE.clear()
        full = _CACHE[key] = (*labels, key[1], key[2], key[3])
    return full


class RequestLabels:
    """The full metric labels of one client connection's requests, remembered from its previous request:
    on a kept-alive connection they nearly always repeat, so a request costs a few identity tests instead
    of a call into the snapshot and a cache key built and hashed. A miss (another cluster, host, identity
    or peer) computes them as ``cluster.request_labels`` and :func:`with_security` say."""

    __slots__ = ("cluster", "direction", "down_peer", "host", "labels", "own", "up_peer")

    def __init__(self) -> None:
        self.cluster: ClusterRuntime | None = None
        self.host: UpstreamHost | None = None
        self.direction = ""
        self.own: str | None = None
        self.down_peer: str | None = None
        self.up_peer: str | None = None
        self.labels: tuple[str, ...] = ()

    def of(self, cluster: ClusterRuntime | None, host: UpstreamHost | None, direction: str,
           unknown: dict[str, tuple[str, ...]], own: str | None, down_peer: str | None,
           up_peer: str | None) -> tuple[str, ...]:
        """The labels of a request served by ``cluster`` through ``host`` (``unknown[direction]`` as the
        base labels when no cluster served it)."""
        if (self.labels and cluster is self.cluster and host is self.host and direction is self.direction
                and own is self.own and down_peer is self.down_peer and up_peer is self.up_peer):
            return self.labels
        base = cluster.request_labels(direction, host) if cluster is not None else unknown[direction]
        labels = with_security(base, own, down_peer, up_peer)
        self.cluster, self.host, self.direction = cluster, host, direction
        self.own, self.down_peer, self.up_peer = own, down_peer, up_peer
        self.labels = labels
        return labels
