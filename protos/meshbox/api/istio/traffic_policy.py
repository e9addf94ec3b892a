"""The resilience parts of an Istio DestinationRule's trafficPolicy → meshbox ClusterPolicy fields:
connectionPool (circuit breakers, connect timeout, the upstream HTTP version), outlierDetection, retryBudget and
loadBalancer.consistentHash. Istio's defaults are filled in here, so the proxy's fields mean what
they say."""

from __future__ import annotations

from typing import Any

from meshbox.api.istio.fields import PROXY_TODO, Reader
from meshbox.api.v1 import proxy_config_pb2 as pc
from meshbox.api.v1 import routing_pb2

_UINT32 = 2**32 - 1
_TCP_REFUSED = {"tcpKeepalive": PROXY_TODO, "maxConnectionDuration": PROXY_TODO, "idleTimeout": PROXY_TODO}
_HTTP_REFUSED = {"idleTimeout": PROXY_TODO, "maxConcurrentStreams": PROXY_TODO}
# H2UpgradePolicy: DEFAULT and DO_NOT_UPGRADE leave the Service port's protocol in charge.
_H2_UPGRADE_POLICIES = ("DEFAULT", "DO_NOT_UPGRADE", "UPGRADE")
_OUTLIER_REFUSED = {"splitExternalLocalOriginErrors": PROXY_TODO, "consecutiveLocalOriginFailures": PROXY_TODO}
_HASH_REFUSED = {"httpQueryParameterName": PROXY_TODO,
                 "maglev": f"{PROXY_TODO} (it hashes on a ring: use ringHash)"}
# Istio's outlier detection defaults (and Envoy's).
DEFAULT_CONSECUTIVE_5XX = 5
DEFAULT_MAX_EJECTION_PERCENT = 10


def _count(r: Reader, data: dict[str, Any], name: str, path: str) -> int:
    return r.integer(data[name], f"{path}.{name}", low=0, high=_UINT32) or 0 if name in data else 0


def connection_pool(r: Reader, data: Any, path: str, out: routing_pb2.ClusterPolicy) -> None:
    """connectionPool.tcp (maxConnections, connectTimeout) and .http (pending, requests, retries, per connection)."""
    pool = r.fields(data, path, "ConnectionPoolSettings", ("tcp", "http"), {})
    cb = out.circuit_breakers
    if "tcp" in pool:
        where = f"{path}.tcp"
        tcp = r.fields(pool["tcp"], where, "ConnectionPoolSettings.TCPSettings", ("maxConnections", "connectTimeout"),
                       _TCP_REFUSED)
        cb.max_connections = _count(r, tcp, "maxConnections", where)
        if "connectTimeout" in tcp and (d := r.duration(tcp["connectTimeout"], f"{where}.connectTimeout")) is not None:
            out.connect_timeout.CopyFrom(d)
    if "http" in pool:
        where = f"{path}.http"
        http = r.fields(pool["http"], where, "ConnectionPoolSettings.HTTPSettings",
                        ("http1MaxPendingRequests", "http2MaxRequests", "maxRequestsPerConnection", "maxRetries",
                         "h2UpgradePolicy", "useClientProtocol"), _HTTP_REFUSED)
        cb.max_pending_requests = _count(r, http, "http1MaxPendingRequests", where)
        cb.max_requests = _count(r, http, "http2MaxRequests", where)
        cb.max_requests_per_connection = _count(r, http, "maxRequestsPerConnection", where)
        cb.max_retries = _count(r, http, "maxRetries", where)
        out.upstream_protocol = upstream_protocol(r, http, where)


def upstream_protocol(r: Reader, http: dict[str, Any], path: str) -> pc.UpstreamProtocol.ValueType:
    """useClientProtocol: true → USE_CLIENT (it makes h2UpgradePolicy ineffective, as in Istio); otherwise
    UNSPECIFIED: the port's own protocol. h2UpgradePolicy DEFAULT / DO_NOT_UPGRADE keep that; UPGRADE (HTTP/1.1
    clients over HTTP/2) is refused: the proxy does not carry an HTTP/1.1 request on an HTTP/2 stream yet."""
    use_client = http.get("useClientProtocol", False)
    if not isinstance(use_client, bool):
        r.invalid(f"{path}.useClientProtocol", f"expected true or false, got {use_client!r}")
        use_client = False
    if "h2UpgradePolicy" in http:
        where = f"{path}.h2UpgradePolicy"
        policy = r.string(http["h2UpgradePolicy"], where)
        if policy and policy not in _H2_UPGRADE_POLICIES:
            r.invalid(where, f"{policy!r} is not one of {', '.join(_H2_UPGRADE_POLICIES)}")
        elif policy == "UPGRADE" and not use_client:
            r.refuse(where, f"{PROXY_TODO}: HTTP/1.1 clients are not upgraded to HTTP/2 upstream")
    if use_client:
        return pc.USE_CLIENT
    return pc.UPSTREAM_PROTOCOL_UNSPECIFIED


def outlier_detection(r: Reader, data: Any, path: str, out: pc.OutlierDetection) -> None:
    """Istio's OutlierDetection with its defaults: 5 consecutive 5xx, 10s interval, 30s base ejection
    time, 10 % at most ejected. The deprecated consecutiveErrors counts gateway errors (502/503/504)."""
    f = r.fields(data, path, "OutlierDetection",
                 ("consecutive5xxErrors", "consecutiveGatewayErrors", "consecutiveErrors", "interval",
                  "baseEjectionTime", "maxEjectionPercent", "minHealthPercent"), _OUTLIER_REFUSED)
    if "consecutiveErrors" in f:
        out.consecutive_gateway_errors = _count(r, f, "consecutiveErrors", path)
        out.consecutive_5xx = _count(r, f, "consecutive5xxErrors", path)
    else:
        out.consecutive_5xx = _count(r, f, "consecutive5xxErrors", path) if "consecutive5xxErrors" in f \
            else DEFAULT_CONSECUTIVE_5XX
    if "consecutiveGatewayErrors" in f:
        out.consecutive_gateway_errors = _count(r, f, "consecutiveGatewayErrors", path)
    for name, field in (("interval", out.interval), ("baseEjectionTime", out.base_ejection_time)):
        if name in f and (d := r.duration(f[name], f"{path}.{name}")) is not None:
            field.CopyFrom(d)
    out.max_ejection_percent = r.integer(f.get("maxEjectionPercent", DEFAULT_MAX_EJECTION_PERCENT),
                                         f"{path}.maxEjectionPercent", low=0, high=100) or 0
    out.min_health_percent = r.integer(f.get("minHealthPercent", 0), f"{path}.minHealthPercent",
                                       low=0, high=100) or 0


def retry_budget(r: Reader, data: Any, path: str, out: pc.RetryBudget) -> None:
    """Retries in flight limited to ``percent`` of the requests in flight, at least minRetryConcurrency."""
    f = r.fields(data, path, "RetryBudget", ("percent", "minRetryConcurrency"), {})
    out.SetInParent()
    if "percent" in f:
        value = f["percent"].get("value") if isinstance(f["percent"], dict) else f["percent"]
        out.budget_percent = r.number(value, f"{path}.percent", low=0, high=100) or 0.0
    out.min_retry_concurrency = _count(r, f, "minRetryConcurrency", path)


def consistent_hash(r: Reader, data: Any, path: str, out: pc.HashPolicy) -> None:
    """One key (httpHeaderName, httpCookie without ttl, useSourceIp) and the ring size."""
    f = r.fields(data, path, "ConsistentHashLB",
                 ("httpHeaderName", "httpCookie", "useSourceIp", "ringHash", "minimumRingSize"), _HASH_REFUSED)
    keys = [k for k in ("httpHeaderName", "httpCookie", "useSourceIp") if k in f]
    if len(keys) > 1:
        r.invalid(path, f"one hash key only, got {', '.join(keys)}")
    if "httpHeaderName" in f:
        out.header_name = r.string(f["httpHeaderName"], f"{path}.httpHeaderName", required=True).lower()
    if "httpCookie" in f:
        where = f"{path}.httpCookie"
        cookie = r.fields(f["httpCookie"], where, "HTTPCookie", ("name",),
                          {"ttl": f"{PROXY_TODO} (it never sets the cookie: it hashes on the cookie the client "
                                  "sends, so leave ttl out)",
                           "path": f"{PROXY_TODO} (a path only applies to a cookie the proxy sets)",
                           "attributes": f"{PROXY_TODO} (attributes only apply to a cookie the proxy sets)"})
        out.cookie_name = r.string(cookie.get("name"), f"{where}.name", required=True)
    if "useSourceIp" in f:
        if f["useSourceIp"] is not True:
            r.invalid(f"{path}.useSourceIp", f"expected true, got {f['useSourceIp']!r}")
        out.use_source_ip = True
    if not keys:
        r.invalid(path, "a hash key is required: httpHeaderName, httpCookie or useSourceIp")
    size = f.get("minimumRingSize")
    if "ringHash" in f:
        ring = r.fields(f["ringHash"], f"{path}.ringHash", "RingHash", ("minimumRingSize",), {})
        size = ring.get("minimumRingSize", size)
    if size is not None:
        out.minimum_ring_size = r.integer(size, f"{path}.minimumRingSize", low=1, high=1 << 23) or 0
