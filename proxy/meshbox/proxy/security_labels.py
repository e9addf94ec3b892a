"""Istio's security labels of the request and TCP metrics: connection_security_policy, source_principal
and destination_principal, appended to a connection's base labels (snapshot.metric_labels).

Values as Istio reports them: on the server side (reporter ``destination``) ``mutual_tls`` or ``none``,
the client's SPIFFE ID and this workload's; on the client side (reporter ``source``) ``unknown``, this
workload's SPIFFE ID and the server's; ``unknown`` wherever an identity is not known.
"""

from __future__ import annotations

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
