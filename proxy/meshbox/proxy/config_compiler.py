"""ProxyConfig message → Snapshot.

Besides cli and config_files, the only proxy module that reads meshbox.api messages (and so loads
protobuf). Production runs it in short-lived children (the command-line child, the admin /config child
in compile_child) that pickle the Snapshot to the long-running proxy; tests and library use call it
in-process through ProxyServer.apply.
"""

from __future__ import annotations

import json
import re

from google.protobuf import json_format
from google.protobuf.duration_pb2 import Duration
from google.protobuf.message import DecodeError

from meshbox.api.v1 import proxy_config_pb2 as pc
from meshbox.api.v1 import security_pb2
from meshbox.api.validation import ValidationError, validate_proxy_config
from meshbox.proxy.authorization_compiler import compile_authorization
from meshbox.proxy.resilience_compiler import compile_resilience, compile_retry
from meshbox.proxy.route_actions_compiler import compile_route_actions
from meshbox.proxy.snapshot import (
    DEFAULT_CONNECT_TIMEOUT,
    DEFAULT_ROUTE_TIMEOUT,
    DISABLE,
    INBOUND,
    OUTBOUND,
    PERMISSIVE,
    STRICT,
    ClusterRuntime,
    ConfigRejected,
    HeaderMatcher,
    ListenerRuntime,
    RouteRuntime,
    RouteTable,
    Snapshot,
    Workload,
)
from meshbox.proxy.upstream_hosts import HostRegistry

_MODE = security_pb2.PeerAuthentication.MutualTLS
MTLS_MODE = {_MODE.DISABLE: DISABLE, _MODE.PERMISSIVE: PERMISSIVE, _MODE.STRICT: STRICT}


def compile_serialized(body: bytes, workload: Workload) -> Snapshot:
    """A serialized meshbox.api.v1.ProxyConfig (the admin POST /config body) → Snapshot."""
    config = pc.ProxyConfig()
    try:
        config.ParseFromString(body)
    except DecodeError as exc:
        raise ConfigRejected(f"body is not a serialized meshbox.api.v1.ProxyConfig: {exc}") from None
    return compile_config(config, workload)


def compile_config(config: pc.ProxyConfig, workload: Workload) -> Snapshot:
    """Validate and compile; ConfigRejected names what is wrong. The snapshot's hosts come from a private
    registry: the process that serves it adopts it (Snapshot.adopt)."""
    try:
        validate_proxy_config(config, source="config")
        return _snapshot(config, workload)
    except ValidationError as exc:
        raise ConfigRejected(str(exc)) from None
    except Exception as exc:  # e.g. a header regex that does not compile
        raise ConfigRejected(f"config: {exc}") from None


def _seconds(d: Duration, default: float) -> float:
    value = d.seconds + d.nanos / 1e9
    return value if value > 0 else default


def _snapshot(config: pc.ProxyConfig, workload: Workload) -> Snapshot:
    hosts = HostRegistry()
    by_cluster: dict[str, list[pc.Endpoint]] = {}
    for cla in config.endpoints:
        by_cluster.setdefault(cla.cluster_name, []).extend(cla.endpoints)
    clusters: dict[str, ClusterRuntime] = {}
    for c in config.clusters:
        eps = by_cluster.get(c.name, [])
        clusters[c.name] = ClusterRuntime(
            c.name, c.service, _seconds(c.connect_timeout, DEFAULT_CONNECT_TIMEOUT),
            pc.LbPolicy.Name(c.lb_policy or pc.ROUND_ROBIN), [hosts.get(ep.address, ep.port) for ep in eps],
            [ep.weight or 1 for ep in eps], workload, [_endpoint_workload(ep) for ep in eps],
            tls_endpoints=_tls_endpoints(c.tls, eps), sans=frozenset(c.tls.subject_alt_names),
            resilience=compile_resilience(c), http1_upstream=c.upstream_protocol == pc.HTTP1)
    route_tables = {
        rc.name: RouteTable(rc.name, [(list(vh.domains), [_route(r, clusters) for r in vh.routes])
                                      for vh in rc.virtual_hosts])
        for rc in config.route_configs
    }
    listeners = [_listener(lis, route_tables, clusters) for lis in config.listeners]
    # Serialized here, in the compiling child: a huge config then reaches the proxy as one bytes object
    # (no per-endpoint dicts to unpickle) and /config_dump costs the serving process no JSON encoding.
    dump = json.dumps(json_format.MessageToDict(config, preserving_proto_field_name=True),
                      separators=(",", ":")).encode()
    return Snapshot(listeners, route_tables, clusters, dump)


def _tls_endpoints(tls: pc.UpstreamTls, endpoints: list[pc.Endpoint]) -> frozenset[tuple[str, int]]:
    """The endpoints the cluster reaches over mutual TLS (AUTO: those running a sidecar)."""
    if tls.mode == pc.UpstreamTls.DISABLE:
        return frozenset()
    return frozenset((ep.address, ep.port) for ep in endpoints if tls.mode == pc.UpstreamTls.MUTUAL or ep.sidecar)


def _endpoint_workload(endpoint: pc.Endpoint) -> Workload | None:
    if not endpoint.HasField("workload"):
        return None
    w = endpoint.workload
    return Workload(name=w.name or "unknown", namespace=w.namespace or "unknown", app=w.app or w.name or "unknown")


def _header(match: pc.HeaderMatch) -> HeaderMatcher:
    kind = match.WhichOneof("match")
    value = getattr(match, kind).encode() if kind else b""
    return HeaderMatcher(match.name.lower().encode(), kind or "present",
                         re.compile(value) if kind == "regex" else value)


def _route(route: pc.Route, clusters: dict[str, ClusterRuntime]) -> RouteRuntime:
    fault = route.fault
    return RouteRuntime(
        prefix=(route.match.prefix or "/").encode(),
        headers=[_header(h) for h in route.match.headers],
        clusters=[clusters[w.cluster] for w in route.clusters],
        weights=[w.weight for w in route.clusters],
        timeout=_seconds(route.timeout, DEFAULT_ROUTE_TIMEOUT),
        retries=route.retries.attempts,
        per_try_timeout=_seconds(route.retries.per_try_timeout, 0.0) or None,
        abort_percent=fault.abort.percent if fault.HasField("abort") else 0.0,
        abort_status=fault.abort.http_status or 200,
        delay_percent=fault.delay.percent if fault.HasField("delay") else 0.0,
        delay=_seconds(fault.delay.fixed_delay, 0.0),
        retry_policy=compile_retry(route.retries),
        actions=compile_route_actions(route, clusters),
        abort_grpc_status=fault.abort.grpc_status if fault.abort.HasField("grpc_status") else None,
    )


def _listener(listener: pc.Listener, route_tables: dict[str, RouteTable],
              clusters: dict[str, ClusterRuntime]) -> ListenerRuntime:
    address = listener.address or "0.0.0.0"
    return ListenerRuntime(
        name=listener.name or f"{address}_{listener.port}",
        direction=INBOUND if listener.direction == pc.INBOUND else OUTBOUND,
        address=address,
        port=listener.port,
        http=listener.protocol == pc.HTTP,
        bind=listener.bind,
        routes=route_tables.get(listener.route_config) if listener.protocol == pc.HTTP else None,
        cluster=clusters.get(listener.cluster) if listener.protocol == pc.TCP else None,
        mtls=MTLS_MODE.get(listener.mtls_mode, DISABLE),
        authz=compile_authorization(listener.authorization_policies),
        pass_unknown_hosts=listener.pass_unknown_hosts,
    )
