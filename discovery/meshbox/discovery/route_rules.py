"""RouteRules → HTTP routes of one service port, with one subset cluster per labelled destination.

Pure functions. A rule's weighted destinations pick pods by labels (e.g. version: v2); each
distinct label set becomes a subset cluster ``outbound|<port>|<subset>|<fqdn>`` that holds only
the endpoints whose labels include it.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from meshbox.api.kube.endpoints import matches
from meshbox.api.kube.objects import ObjectError, Service, object_label
from meshbox.api.loader import ConfigError, parse_route_rule
from meshbox.api.protocols import upstream_protocol
from meshbox.api.v1 import proxy_config_pb2 as pc
from meshbox.api.v1 import routing_pb2
from meshbox.api.validation import ValidationError
from meshbox.discovery.route_actions import copy_route_actions


@dataclass(frozen=True)
class RouteRule:
    name: str
    namespace: str
    spec: routing_pb2.RouteRuleSpec = field(compare=False)


def parse_route_rule_object(doc: Mapping[str, Any], *, source: str) -> RouteRule:
    """A RouteRule; shape and meaning checked by meshbox.api (errors name the field)."""
    try:
        name, namespace, spec = parse_route_rule(doc, source=source)
    except (ConfigError, ValidationError) as exc:
        raise ObjectError(str(exc), source=source, obj=object_label(doc)) from exc
    return RouteRule(name, namespace, spec)


def cluster_name(direction: str, port: int, subset: str, fqdn: str) -> str:
    """Envoy/Istio-style cluster name, e.g. ``outbound|80|v2|service-two.default.svc.cluster.local``."""
    return f"{direction}|{port}|{subset}|{fqdn}"


def targets(rule: RouteRule, service: Service) -> bool:
    """Whether the rule's destination names this service (short name in its namespace, or FQDN)."""
    dest = rule.spec.destination.rstrip(".")
    qualified = f"{service.name}.{service.namespace}"
    if dest in (service.fqdn, qualified, f"{qualified}.svc"):
        return True
    return dest == service.name and rule.namespace == service.namespace


def ordered_rules(rules: Iterable[RouteRule], service: Service) -> list[RouteRule]:
    """The service's rules, higher precedence first; equal precedence keeps registry order."""
    return sorted((r for r in rules if targets(r, service)), key=lambda r: -r.spec.precedence)


def subset_name(labels: Mapping[str, str], taken: Mapping[str, Mapping[str, str]]) -> str:
    """Short subset name from label values (``v2``); spelled out (``version=v2``) if that is ambiguous."""
    short = "-".join(labels[k] for k in sorted(labels))
    if short not in taken or dict(taken[short]) == dict(labels):
        return short
    return ",".join(f"{k}={labels[k]}" for k in sorted(labels))


@dataclass(frozen=True)
class OtherTarget:
    """A cluster of another service that a route sends to: (host, port, subset) and the subset's labels."""

    host: str
    port: int
    subset: str
    labels: tuple[tuple[str, str], ...]

    @property
    def cluster(self) -> str:
        return cluster_name("outbound", self.port, self.subset, self.host)


@dataclass(frozen=True)
class PortRoutes:
    routes: list[pc.Route]
    subset_clusters: list[pc.Cluster]
    subset_endpoints: list[pc.ClusterLoadAssignment]
    other_targets: list[OtherTarget] = field(default_factory=list)


def subset_policy(policy: routing_pb2.DestinationPolicySpec | None, subset: str) -> routing_pb2.ClusterPolicy | None:
    """The cluster policy of one subset: its own if it has one, else the destination's."""
    if policy is None:
        return None
    for s in policy.subsets:
        if s.name == subset and s.HasField("policy"):
            return s.policy
    return policy.policy


def cluster_for(name: str, fqdn: str, policy: routing_pb2.ClusterPolicy | None,
                protocol: pc.UpstreamProtocol.ValueType = pc.UPSTREAM_PROTOCOL_UNSPECIFIED) -> pc.Cluster:
    """A cluster speaking the port's ``protocol`` upstream, with a DestinationRule's load balancer, connect
    timeout, circuit breakers, outlier detection, hash policy and upstream protocol, when it sets them."""
    cluster = pc.Cluster(name=name, lb_policy=pc.ROUND_ROBIN, service=fqdn, upstream_protocol=protocol)
    if policy is not None:
        cluster.lb_policy = policy.lb_policy or cluster.lb_policy
        cluster.upstream_protocol = policy.upstream_protocol or cluster.upstream_protocol
        if policy.HasField("connect_timeout"):
            cluster.connect_timeout.CopyFrom(policy.connect_timeout)
        for part in ("circuit_breakers", "outlier_detection", "hash_policy"):
            if policy.HasField(part):
                getattr(cluster, part).CopyFrom(getattr(policy, part))
    return cluster


def port_protocol(service: Service, port: int) -> pc.UpstreamProtocol.ValueType:
    """The upstream HTTP version of ``service``'s port numbered ``port`` (see meshbox.api.protocols)."""
    for p in service.ports:
        if p.port == port:
            return upstream_protocol(p.name, p.app_protocol)
    return pc.UPSTREAM_PROTOCOL_UNSPECIFIED


def build_port_routes(
    service: Service, port: int, rules: Sequence[RouteRule], endpoints: Sequence[pc.Endpoint],
    policy: routing_pb2.DestinationPolicySpec | None = None,
) -> PortRoutes:
    """Routes for one HTTP service port: each rule in order, then a catch-all to the whole service."""
    default_cluster = cluster_name("outbound", port, "", service.fqdn)
    subsets: dict[str, Mapping[str, str]] = {}
    others: list[OtherTarget] = []
    routes = []
    for rule in rules:
        spec = rule.spec
        if spec.port and spec.port != port:
            continue
        route = pc.Route(match=pc.RouteMatch(prefix=spec.match.path_prefix, headers=spec.match.headers))

        def target_of(dest: routing_pb2.RouteDestination) -> str:
            if dest.host:
                name = dest.subset or (subset_name(dest.labels, {}) if dest.labels else "")
                other = OtherTarget(dest.host, dest.port, name, tuple(sorted(dest.labels.items())))
                others.append(other)
                return other.cluster
            if dest.labels:
                name = dest.subset or subset_name(dest.labels, subsets)
                subsets[name] = dict(dest.labels)
                return cluster_name("outbound", port, name, service.fqdn)
            return default_cluster

        for dest in spec.route:
            route.clusters.append(pc.WeightedCluster(cluster=target_of(dest), weight=dest.weight))
        copy_route_actions(spec, route, target_of)
        if not spec.route:
            route.clusters.append(pc.WeightedCluster(cluster=default_cluster, weight=100))
        if spec.HasField("timeout"):
            route.timeout.CopyFrom(spec.timeout)
        if spec.HasField("retries"):
            route.retries.CopyFrom(spec.retries)
        if spec.HasField("fault"):
            route.fault.CopyFrom(spec.fault)
        routes.append(route)
    routes.append(pc.Route(match=pc.RouteMatch(), clusters=[pc.WeightedCluster(cluster=default_cluster, weight=100)]))
    clusters, assignments = [], []
    for name, labels in subsets.items():
        cname = cluster_name("outbound", port, name, service.fqdn)
        clusters.append(cluster_for(cname, service.fqdn, subset_policy(policy, name), port_protocol(service, port)))
        chosen = [e for e in endpoints if matches(labels, e.labels)]
        assignments.append(pc.ClusterLoadAssignment(cluster_name=cname, endpoints=chosen))
    return PortRoutes(routes, clusters, assignments, others)
