"""The config as the hot path uses it: listener lookup tables, route tables, clusters with pickers.

A Snapshot is built from a ProxyConfig by config_compiler, in a short-lived child process in production,
and reaches the proxy as a pickle; this module never imports protobuf or meshbox.api, so the long-running
proxy does not load them. The receiving process adopts a snapshot (its own upstream hosts, pickers and
version), then swaps a single reference to it: a request in flight keeps the objects it already holds,
and nothing changes a snapshot once it serves.
"""

from __future__ import annotations

import asyncio
import bisect
import itertools
import random
import re
from dataclasses import dataclass
from typing import TYPE_CHECKING, TypeAlias

from meshbox.proxy.circuit_breaker import NO_LIMITS, ClusterLimits
from meshbox.proxy.load_balancer import Picker, least_request, random_choice, round_robin
from meshbox.proxy.route_match import match_route
from meshbox.proxy.upstream_hosts import HostRegistry, UpstreamHost

if TYPE_CHECKING:
    # A config that uses them brings these modules in: unpickling its snapshot imports them. A proxy
    # whose config has no authorization policy, resilience setting, retry policy or route action never
    # loads them (tests/test_process_footprint.py).
    from meshbox.proxy.authorization import Authorizer
    from meshbox.proxy.cluster_resilience import ClusterGuard, ResilienceSettings
    from meshbox.proxy.retry_policy import RetryPolicy
    from meshbox.proxy.route_actions import RouteActions

# A listener's traffic direction: the names of meshbox.api.v1.TrafficDirection values (config_compiler
# sets them from the message); they key the per-direction metric labels.
INBOUND = "INBOUND"
OUTBOUND = "OUTBOUND"
# An inbound listener's peer authentication mode: the names of PeerAuthentication.MutualTLS.Mode values
# (UNSET compiles to DISABLE).
DISABLE = "DISABLE"
PERMISSIVE = "PERMISSIVE"
STRICT = "STRICT"
# Seconds of an unset Route.timeout and Cluster.connect_timeout.
DEFAULT_ROUTE_TIMEOUT = 15.0
DEFAULT_CONNECT_TIMEOUT = 1.0
# Endpoints adopted between two yields to the event loop while a config is applied (a few ms of work).
ADOPT_BATCH = 2000


class ConfigRejected(ValueError):
    """A config that cannot be applied; the old one keeps serving. The message says why."""


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


def metric_labels(direction: str, workload: Workload, service: str) -> tuple[str, ...]:
    """Istio's request labels up to destination_service_namespace (code and flags are added per request)."""
    unknown = ("unknown", "unknown", "unknown")
    me = (workload.name, workload.namespace, workload.app)
    if direction == INBOUND:
        return ("destination", *unknown, *me, *service_labels(service))
    return ("source", *me, *unknown, *service_labels(service))


def make_picker(policy: str, hosts: list[UpstreamHost], weights: list[int]) -> Picker:
    """The endpoint picker of a load-balancing policy, by its meshbox.api.v1.LbPolicy name."""
    if policy == "LEAST_REQUEST":
        return least_request(hosts, weights)
    if policy in ("RANDOM", "RING_HASH"):
        # RING_HASH picks on the ring (ClusterGuard); this picker serves requests without a key.
        return random_choice(hosts, weights)
    return round_robin(hosts, weights)


# A string: ResilienceSettings is only imported for type checking.
ClusterState: TypeAlias = ("tuple[str, str, float, str, list[tuple[str, int]], list[int],"
                           " dict[str, tuple[str, ...]], list[Workload | None], frozenset[tuple[str, int]],"
                           " frozenset[str], ResilienceSettings | None, bool]")


def _unadopted() -> UpstreamHost | None:
    raise RuntimeError("a cluster of a snapshot that was not adopted cannot pick hosts")


class ClusterRuntime:
    """A cluster with its hosts and picker. ``workloads`` (aligned with ``hosts``) are the workloads discovery
    says serve each endpoint: outbound requests to such a host report it as destination_workload/_namespace/
    _app (:meth:`request_labels`)."""

    __slots__ = ("by_host", "connect_timeout", "endpoints", "guard", "hosts", "http1_upstream", "labels", "limits",
                 "name", "pick", "policy", "resilience", "sans", "service", "tls_endpoints", "weights", "workloads")

    def __init__(self, name: str, service: str, connect_timeout: float, policy: str, hosts: list[UpstreamHost],
                 weights: list[int], workload: Workload, workloads: list[Workload | None] | None = None,
                 tls_endpoints: frozenset[tuple[str, int]] = frozenset(), sans: frozenset[str] = frozenset(),
                 resilience: ResilienceSettings | None = None, http1_upstream: bool = False) -> None:
        self.name = name
        # HTTP/2 clients' requests go to the endpoints over HTTP/1.1 (upstream protocol HTTP1).
        self.http1_upstream = http1_upstream
        self.service = service
        self.connect_timeout = connect_timeout
        self.policy = policy
        self.hosts = hosts
        self.endpoints = [(host.address, host.port) for host in hosts]
        self.weights = weights
        self.labels = {d: metric_labels(d, workload, service) for d in (INBOUND, OUTBOUND)}
        self.workloads: list[Workload | None] = workloads if workloads is not None else [None] * len(hosts)
        # Endpoints reached over mutual TLS, and the SPIFFE IDs their servers may present (empty: any).
        self.tls_endpoints = tls_endpoints
        self.sans = sans
        # Circuit breakers, outlier detection, consistent hashing (cluster_resilience); None: none set.
        self.resilience = resilience
        self._index()

    def _index(self) -> None:
        self.pick: Picker = make_picker(self.policy, self.hosts, self.weights)
        # Counts for the limits (retries are limited on every cluster); a guard only when configured.
        resilience = self.resilience
        self.limits = ClusterLimits(resilience.breaker if resilience is not None else NO_LIMITS)
        self.guard: ClusterGuard | None = None
        if resilience is not None and resilience.guarded:
            from meshbox.proxy.cluster_resilience import ClusterGuard

            self.guard = ClusterGuard(resilience, self.policy, self.hosts, self.weights, self.limits, make_picker)
        # Outbound labels per host whose workload is known: computed once here, looked up per request.
        base = self.labels[OUTBOUND]
        self.by_host: dict[UpstreamHost, tuple[str, ...]] = {
            host: (*base[:4], w.name, w.namespace, w.app, *base[7:])
            for host, w in zip(self.hosts, self.workloads, strict=True) if w is not None
        }

    def request_labels(self, direction: str, host: UpstreamHost | None) -> tuple[str, ...]:
        """The metric labels of a request this cluster served through ``host``."""
        if direction == OUTBOUND and host is not None:
            labels = self.by_host.get(host)
            if labels is not None:
                return labels
        return self.labels[direction]

    # Pickled with endpoint addresses, not hosts (UpstreamHost is a compiled class pickle cannot rebuild),
    # and without the picker (a closure); unpickled, the cluster has no hosts until adopted (building
    # them twice would double the work of applying a huge config).
    def __getstate__(self) -> ClusterState:
        return (self.name, self.service, self.connect_timeout, self.policy, self.endpoints, self.weights, self.labels,
                self.workloads, self.tls_endpoints, self.sans, self.resilience, self.http1_upstream)

    def __setstate__(self, state: ClusterState) -> None:
        (self.name, self.service, self.connect_timeout, self.policy, self.endpoints, self.weights, self.labels,
         self.workloads, self.tls_endpoints, self.sans, self.resilience, self.http1_upstream) = state
        self.hosts = []
        self.pick = _unadopted
        self.by_host = {}
        self.limits = ClusterLimits(self.resilience.breaker if self.resilience is not None else NO_LIMITS)
        self.guard = None

    def adopt(self, registry: HostRegistry) -> None:
        """Use the registry's hosts (their pools and in-flight counts survive config swaps)."""
        get = registry.get
        self.adopted([get(address, port) for address, port in self.endpoints])

    def adopted(self, hosts: list[UpstreamHost]) -> None:
        """Serve ``hosts`` (the registry's, in the order of ``endpoints``)."""
        self.hosts = hosts
        self._index()


class HeaderMatcher:
    """One header condition of a route; ``kind`` is exact, prefix, regex or present."""

    __slots__ = ("kind", "name", "value")

    def __init__(self, name: bytes, kind: str, value: bytes | re.Pattern[bytes]) -> None:
        self.name = name
        self.kind = kind
        self.value = value

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
    """One route: match conditions, weighted clusters, timeout, retries, fault injection, and its other
    actions (header operations, rewrites, redirect, mirrors, rate limit; None when it has none)."""

    __slots__ = ("abort_grpc_status", "abort_percent", "abort_status", "actions", "clusters", "cumulative",
                 "delay", "delay_percent", "headers", "per_try_timeout", "prefix", "retries", "retry_policy",
                 "single_cluster", "timeout", "total")

    def __init__(self, *, prefix: bytes, headers: list[HeaderMatcher], clusters: list[ClusterRuntime],
                 weights: list[int], timeout: float, retries: int, per_try_timeout: float | None,
                 abort_percent: float, abort_status: int, delay_percent: float, delay: float,
                 retry_policy: RetryPolicy | None = None, actions: RouteActions | None = None,
                 abort_grpc_status: int | None = None) -> None:
        self.actions = actions
        self.prefix = prefix
        self.headers = headers
        self.clusters = clusters
        # The usual route has one cluster: callers take it without calling pick_cluster.
        self.single_cluster = clusters[0] if len(clusters) == 1 else None
        if not any(weights):
            weights = [1] * len(weights)
        self.cumulative = list(itertools.accumulate(weights))
        self.total = self.cumulative[-1]
        self.timeout = timeout
        self.retries = retries
        # What is retried and the backoff (None: no retries, or failed connects and per-try timeouts only).
        self.retry_policy = retry_policy
        self.per_try_timeout = per_try_timeout
        self.abort_percent = abort_percent
        self.abort_status = abort_status
        # A fault abort answering gRPC calls with this status (HTTP 200, trailers-only), else None.
        self.abort_grpc_status = abort_grpc_status
        self.delay_percent = delay_percent
        self.delay = delay

    def pick_cluster(self) -> ClusterRuntime:
        if len(self.clusters) == 1:
            return self.clusters[0]
        return self.clusters[bisect.bisect_right(self.cumulative, random.randrange(self.total))]


class RouteTable:
    """Host → virtual host (exact, host without port, ``*.suffix``, ``prefix.*``, ``*``), then first matching route."""

    __slots__ = ("_cache", "any", "exact", "first", "name", "prefixes", "suffixes")
    _CACHE_SIZE = 1024

    def __init__(self, name: str, virtual_hosts: list[tuple[list[str], list[RouteRuntime]]]) -> None:
        """``virtual_hosts``: (domains, routes) in config order."""
        self.name = name
        self.exact: dict[bytes, list[RouteRuntime]] = {}
        self.suffixes: list[tuple[bytes, list[RouteRuntime]]] = []
        self.prefixes: list[tuple[bytes, list[RouteRuntime]]] = []
        self.any: list[RouteRuntime] | None = None
        # The first route of the first virtual host, for connections that cannot be routed per request.
        self.first: RouteRuntime | None = None
        for domains, routes in virtual_hosts:
            if self.first is None and routes:
                self.first = routes[0]
            for domain in domains:
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
        return match_route(self, host, path, headers)

    def tunnel_route(self, authority: bytes) -> RouteRuntime | None:
        """The route of a connection tunnelled at L4 (HTTP/2 prior knowledge: no Host to read): the one a
        request for ``/`` to ``authority`` would take, else the first route of the first virtual host."""
        return self.match(authority, b"/", []) or self.first


class ListenerRuntime:
    """A listener: HTTP ones route with ``routes``, TCP ones forward to ``cluster``. ``pass_unknown_hosts``:
    requests for hosts no virtual host answers go to the original destination (see passthrough)."""

    __slots__ = ("address", "authz", "bind", "cluster", "direction", "http", "key", "mtls", "name",
                 "pass_unknown_hosts", "port", "routes")

    def __init__(self, *, name: str, direction: str, address: str, port: int, http: bool, bind: bool,
                 routes: RouteTable | None, cluster: ClusterRuntime | None, mtls: str = DISABLE,
                 authz: Authorizer | None = None, pass_unknown_hosts: bool = False) -> None:
        self.name = name
        self.direction = direction
        self.address = address
        self.port = port
        self.http = http
        self.bind = bind
        self.routes = routes
        self.cluster = cluster
        # Inbound: peer authentication mode, and the authorization policies (None: no policy, allow all).
        self.mtls = mtls
        self.authz = authz
        self.pass_unknown_hosts = pass_unknown_hosts
        self.key = (direction, address, port)


class Snapshot:
    """Everything the data plane needs from one ProxyConfig, plus its /config_dump form."""

    def __init__(self, listeners: list[ListenerRuntime], route_tables: dict[str, RouteTable],
                 clusters: dict[str, ClusterRuntime], dump: bytes) -> None:
        self.listeners = listeners
        self.route_tables = route_tables
        self.clusters = clusters
        # The ProxyConfig as JSON text (proto field names), made where the message was at hand.
        self.dump = dump
        self.version = 0
        self.host_keys: set[tuple[str, int]] = set()
        self.by_key = {lis.key: lis for lis in listeners}
        self._exact: dict[tuple[str, int], dict[str, ListenerRuntime]] = {}
        self._wildcard: dict[int, dict[str, ListenerRuntime]] = {}
        for lis in listeners:
            if lis.address in ("0.0.0.0", "::"):
                self._wildcard.setdefault(lis.port, {})[lis.direction] = lis
            else:
                self._exact.setdefault((lis.address, lis.port), {})[lis.direction] = lis

    def adopt(self, registry: HostRegistry, version: int) -> None:
        """Make this snapshot this process's own before it serves: the registry's upstream hosts, fresh
        pickers over them, and its version."""
        for cluster in self.clusters.values():
            cluster.adopt(registry)
        self.host_keys = {(h.address, h.port) for c in self.clusters.values() for h in c.hosts}
        self.version = version

    async def adopt_gradually(self, registry: HostRegistry, version: int, batch: int = ADOPT_BATCH) -> None:
        """:meth:`adopt`, yielding to the event loop every ``batch`` endpoints, so that applying a config
        with a huge number of endpoints does not stall the connections being served meanwhile."""
        get = registry.get
        for cluster in self.clusters.values():
            hosts: list[UpstreamHost] = []
            endpoints = cluster.endpoints
            for start in range(0, len(endpoints), batch):
                hosts += [get(address, port) for address, port in endpoints[start:start + batch]]
                await asyncio.sleep(0)
            cluster.adopted(hosts)
        keys: set[tuple[str, int]] = set()
        for cluster in self.clusters.values():
            keys.update(cluster.endpoints)
        self.host_keys = keys
        self.version = version

    def match(self, ip: str, port: int, inbound: bool) -> ListenerRuntime | None:
        """The listener for an original destination: exact address first, then wildcard, preferring the
        direction the connection came from. An egress listener (pass_unknown_hosts) never takes inbound
        connections: they would be parsed as HTTP instead of passed on at L4."""
        candidates = self._exact.get((ip, port)) or self._wildcard.get(port)
        if not candidates:
            return None
        first, second = (INBOUND, OUTBOUND) if inbound else (OUTBOUND, INBOUND)
        listener = candidates.get(first) or candidates.get(second)
        if listener is not None and inbound and listener.pass_unknown_hosts:
            return None
        return listener

    def bound_listeners(self) -> list[ListenerRuntime]:
        return [lis for lis in self.listeners if lis.bind]
