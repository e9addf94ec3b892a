"""A ProxyConfig compiled for the hot path: listener lookup tables, route tables, clusters with pickers.

A Snapshot is immutable once built; applying config builds a new one and swaps a single reference,
so a request in flight keeps the objects it already holds.
"""

from __future__ import annotations

import bisect
import itertools
import random
import re
from dataclasses import dataclass

from google.protobuf.duration_pb2 import Duration

from meshbox.api.v1 import proxy_config_pb2 as pc
from meshbox.proxy.load_balancer import Picker, least_request, round_robin
from meshbox.proxy.upstream_hosts import HostRegistry, UpstreamHost

DEFAULT_ROUTE_TIMEOUT = 15.0
DEFAULT_CONNECT_TIMEOUT = 1.0
INBOUND = pc.INBOUND
OUTBOUND = pc.OUTBOUND


def _seconds(d: Duration, default: float) -> float:
    value = d.seconds + d.nanos / 1e9
    return value if value > 0 else default


@dataclass(frozen=True)
class Workload:
    """Who this proxy runs for; fills the source_*/destination_* metric labels."""

    name: str = "unknown"
    namespace: str = "unknown"
    app: str = "unknown"


def service_labels(service: str) -> tuple[str, str, str]:
    """(destination_service, destination_service_name, destination_service_namespace) of a cluster."""
    if not service:
        return ("unknown", "unknown", "unknown")
    parts = service.split(".")
    return (service, parts[0], parts[1] if len(parts) > 1 else "unknown")


def metric_labels(direction: int, workload: Workload, service: str) -> tuple[str, ...]:
    """Istio's request labels up to destination_service_namespace (code and flags are added per request)."""
    unknown = ("unknown", "unknown", "unknown")
    me = (workload.name, workload.namespace, workload.app)
    if direction == INBOUND:
        return ("destination", *unknown, *me, *service_labels(service))
    return ("source", *me, *unknown, *service_labels(service))


class ClusterRuntime:
    """A cluster with its hosts and picker."""

    __slots__ = ("connect_timeout", "hosts", "labels", "name", "pick", "policy", "service", "weights")

    def __init__(self, cluster: pc.Cluster, hosts: list[UpstreamHost], weights: list[int], workload: Workload) -> None:
        self.name = cluster.name
        self.service = cluster.service
        self.connect_timeout = _seconds(cluster.connect_timeout, DEFAULT_CONNECT_TIMEOUT)
        self.hosts = hosts
        self.weights = weights
        self.policy = pc.LbPolicy.Name(cluster.lb_policy or pc.ROUND_ROBIN)
        make = least_request if cluster.lb_policy == pc.LEAST_REQUEST else round_robin
        self.pick: Picker = make(hosts, weights)
        self.labels = {d: metric_labels(d, workload, cluster.service) for d in (INBOUND, OUTBOUND)}


class HeaderMatcher:
    __slots__ = ("kind", "name", "value")

    def __init__(self, match: pc.HeaderMatch) -> None:
        self.name = match.name.lower().encode()
        kind = match.WhichOneof("match")
        self.kind = kind or "present"
        value = getattr(match, kind) if kind else ""
        self.value: bytes | re.Pattern[bytes] = re.compile(value.encode()) if kind == "regex" else value.encode()

    def matches(self, headers: list[tuple[bytes, bytes]]) -> bool:
        name = self.name
        for n, v in headers:
            if n == name:
                if self.kind == "exact":
                    return v == self.value
                if self.kind == "prefix":
                    return v.startswith(self.value)  # type: ignore[arg-type]
                if self.kind == "regex":
                    return self.value.fullmatch(v) is not None  # type: ignore[union-attr]
                return True
        return False


class RouteRuntime:
    """One route: match conditions, weighted clusters, timeout, retries, fault injection."""

    __slots__ = ("abort_percent", "abort_status", "clusters", "cumulative", "delay", "delay_percent", "headers",
                 "per_try_timeout", "prefix", "retries", "single_cluster", "timeout", "total")

    def __init__(self, route: pc.Route, clusters: dict[str, ClusterRuntime]) -> None:
        self.prefix = (route.match.prefix or "/").encode()
        self.headers = [HeaderMatcher(h) for h in route.match.headers]
        self.clusters = [clusters[w.cluster] for w in route.clusters]
        # The usual route has one cluster: callers take it without calling pick_cluster.
        self.single_cluster = self.clusters[0] if len(self.clusters) == 1 else None
        weights = [w.weight for w in route.clusters]
        if not any(weights):
            weights = [1] * len(weights)
        self.cumulative = list(itertools.accumulate(weights))
        self.total = self.cumulative[-1]
        self.timeout = _seconds(route.timeout, DEFAULT_ROUTE_TIMEOUT)
        self.retries = route.retries.attempts
        self.per_try_timeout = _seconds(route.retries.per_try_timeout, 0.0) or None
        fault = route.fault
        self.abort_percent = fault.abort.percent if fault.HasField("abort") else 0.0
        self.abort_status = fault.abort.http_status
        self.delay_percent = fault.delay.percent if fault.HasField("delay") else 0.0
        self.delay = _seconds(fault.delay.fixed_delay, 0.0)

    def pick_cluster(self) -> ClusterRuntime:
        if len(self.clusters) == 1:
            return self.clusters[0]
        return self.clusters[bisect.bisect_right(self.cumulative, random.randrange(self.total))]


class RouteTable:
    """Host → virtual host (exact, host without port, ``*.suffix``, ``prefix.*``, ``*``), then first matching route."""

    __slots__ = ("_cache", "any", "exact", "first", "name", "prefixes", "suffixes")
    _CACHE_SIZE = 1024

    def __init__(self, rc: pc.RouteConfiguration, clusters: dict[str, ClusterRuntime]) -> None:
        self.name = rc.name
        self.exact: dict[bytes, list[RouteRuntime]] = {}
        self.suffixes: list[tuple[bytes, list[RouteRuntime]]] = []
        self.prefixes: list[tuple[bytes, list[RouteRuntime]]] = []
        self.any: list[RouteRuntime] | None = None
        # The first route of the first virtual host, for connections that cannot be routed per request.
        self.first: RouteRuntime | None = None
        for vh in rc.virtual_hosts:
            routes = [RouteRuntime(r, clusters) for r in vh.routes]
            if self.first is None and routes:
                self.first = routes[0]
            for domain in vh.domains:
                d = domain.lower().encode()
                if d == b"*":
                    if self.any is None:
                        self.any = routes
                elif d.startswith(b"*"):
                    self.suffixes.append((d[1:], routes))
                elif d.endswith(b"*"):
                    self.prefixes.append((d[:-1], routes))
                else:
                    self.exact.setdefault(d, routes)
        # Longest wildcard first, as Envoy does.
        self.suffixes.sort(key=lambda item: -len(item[0]))
        self.prefixes.sort(key=lambda item: -len(item[0]))
        # Host header → virtual host, remembered: clients repeat the same few hosts.
        self._cache: dict[bytes, list[RouteRuntime] | None] = {}

    def virtual_host(self, host: bytes) -> list[RouteRuntime] | None:
        try:
            return self._cache[host]
        except KeyError:
            pass
        routes = self._lookup(host)
        if len(self._cache) >= self._CACHE_SIZE:
            self._cache.clear()
        self._cache[host] = routes
        return routes

    def _lookup(self, host: bytes) -> list[RouteRuntime] | None:
        host = host.lower()
        routes = self.exact.get(host)
        if routes is not None:
            return routes
        colon = host.rfind(b":")
        if colon > 0 and host[colon + 1:].isdigit() and not host.endswith(b"]"):
            routes = self.exact.get(host[:colon])
            if routes is not None:
                return routes
            host = host[:colon]
        for suffix, routes in self.suffixes:
            if host.endswith(suffix):
                return routes
        for prefix, routes in self.prefixes:
            if host.startswith(prefix):
                return routes
        return self.any

    def match(self, host: bytes, path: bytes, headers: list[tuple[bytes, bytes]]) -> RouteRuntime | None:
        """The route for a request, or None (no route: NR)."""
        try:
            routes = self._cache[host]  # virtual_host's cache, looked up here first to save a call
        except KeyError:
            routes = self.virtual_host(host)
        if routes is None:
            return None
        for route in routes:
            if path.startswith(route.prefix) and (not route.headers or all(m.matches(headers) for m in route.headers)):
                return route
        return None


    def tunnel_route(self, authority: bytes) -> RouteRuntime | None:
        """The route of a connection tunnelled at L4 (HTTP/2 prior knowledge: no Host to read): the one a
        request for ``/`` to ``authority`` would take, else the first route of the first virtual host."""
        return self.match(authority, b"/", []) or self.first


class ListenerRuntime:
    __slots__ = ("address", "bind", "cluster", "direction", "key", "name", "port", "protocol", "routes")

    def __init__(self, listener: pc.Listener, routes: dict[str, RouteTable], clusters: dict[str, ClusterRuntime]):
        self.name = listener.name or f"{listener.address or '0.0.0.0'}_{listener.port}"
        self.direction = listener.direction
        self.address = listener.address or "0.0.0.0"
        self.port = listener.port
        self.protocol = listener.protocol
        self.bind = listener.bind
        self.key = (self.direction, self.address, self.port)
        self.routes = routes.get(listener.route_config) if listener.protocol == pc.HTTP else None
        self.cluster = clusters.get(listener.cluster) if listener.protocol == pc.TCP else None


class Snapshot:
    """Everything the data plane needs from one applied ProxyConfig."""

    def __init__(self, config: pc.ProxyConfig, hosts: HostRegistry, workload: Workload, version: int) -> None:
        self.config = config
        self.version = version
        by_cluster: dict[str, list[pc.Endpoint]] = {}
        for cla in config.endpoints:
            by_cluster.setdefault(cla.cluster_name, []).extend(cla.endpoints)
        self.clusters: dict[str, ClusterRuntime] = {}
        self.host_keys: set[tuple[str, int]] = set()
        for cluster in config.clusters:
            eps = by_cluster.get(cluster.name, [])
            self.host_keys.update((ep.address, ep.port) for ep in eps)
            self.clusters[cluster.name] = ClusterRuntime(
                cluster, [hosts.get(ep.address, ep.port) for ep in eps], [ep.weight or 1 for ep in eps], workload)
        self.route_tables = {rc.name: RouteTable(rc, self.clusters) for rc in config.route_configs}
        self.listeners = [ListenerRuntime(lis, self.route_tables, self.clusters) for lis in config.listeners]
        self.by_key = {lis.key: lis for lis in self.listeners}
        self._exact: dict[tuple[str, int], dict[int, ListenerRuntime]] = {}
        self._wildcard: dict[int, dict[int, ListenerRuntime]] = {}
        for lis in self.listeners:
            if lis.address in ("0.0.0.0", "::"):
                self._wildcard.setdefault(lis.port, {})[lis.direction] = lis
            else:
                self._exact.setdefault((lis.address, lis.port), {})[lis.direction] = lis

    def match(self, ip: str, port: int, inbound: bool) -> ListenerRuntime | None:
        """The listener for an original destination: exact address first, then wildcard, preferring the
        direction the connection came from."""
        candidates = self._exact.get((ip, port)) or self._wildcard.get(port)
        if not candidates:
            return None
        first, second = (INBOUND, OUTBOUND) if inbound else (OUTBOUND, INBOUND)
        found = candidates.get(first) or candidates.get(second)
        return found if found is not None else next(iter(candidates.values()))

    def bound_listeners(self) -> list[ListenerRuntime]:
        return [lis for lis in self.listeners if lis.bind]
