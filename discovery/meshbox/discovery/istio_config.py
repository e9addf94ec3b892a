"""Istio networking objects in the registry: translated by meshbox.api.istio, checked against the
registry's Services, and turned into route rules, destination policies and (from ServiceEntries)
services with static endpoints.

The last accepted version of every object is kept (``IstioState``) and handed to the next build,
so an edit that breaks a VirtualService or DestinationRule keeps its previous version serving.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from meshbox.api.istio.destination_rule import DestinationRule, translate_destination_rule
from meshbox.api.istio.findings import ERROR, Code, Finding
from meshbox.api.istio.legacy import (
    LegacyDestinationPolicy,
    LegacyRouteRule,
    translate_destination_policy,
    translate_legacy_route_rule,
)
from meshbox.api.istio.objects import resource_label
from meshbox.api.istio.references import STILL_SERVING, HostPorts, ResolvedRoutes, resolve
from meshbox.api.istio.service_entry import ServiceEntry, translate_service_entry
from meshbox.api.istio.virtual_service import VirtualService, translate_virtual_service
from meshbox.api.kube.objects import EndpointAddress, EndpointSet, Service, ServicePort
from meshbox.api.protocols import is_http_port
from meshbox.api.v1 import routing_pb2
from meshbox.discovery.route_rules import RouteRule, targets


@dataclass(frozen=True)
class IstioState:
    """The last accepted translation of each object, by 'Kind namespace/name'."""

    virtual_services: Mapping[str, VirtualService] = field(default_factory=dict)
    destination_rules: Mapping[str, DestinationRule] = field(default_factory=dict)
    service_entries: Mapping[str, ServiceEntry] = field(default_factory=dict)
    routes: Mapping[str, ResolvedRoutes] = field(default_factory=dict)
    legacy: Mapping[str, Any] = field(default_factory=dict)  # config.istio.io/v1alpha2 objects


@dataclass(frozen=True)
class IstioConfig:
    rules: tuple[RouteRule, ...]  # VirtualService routes as route rules, in registry order
    policies: Mapping[str, routing_pb2.DestinationPolicySpec]  # by host FQDN
    problems: tuple[str, ...]
    state: IstioState
    services: tuple[Service, ...] = ()  # from ServiceEntries
    endpoint_sets: tuple[EndpointSet, ...] = ()


def entry_as_service(entry: ServiceEntry) -> tuple[Service, list[EndpointSet]]:
    """A ServiceEntry as a Service at its address with one endpoint set per endpoint.

    Port names carry the protocol as the seed's naming rule reads it (http-*: L7, tcp-*: L4), and an L7 port's
    appProtocol the entry's protocol (http, http2, grpc: which HTTP version goes upstream).
    """
    ports = tuple(ServicePort(f"{'http' if p.http else 'tcp'}-{p.name}", p.number, p.target or p.number,
                              p.protocol.lower() if p.http else "")
                  for p in entry.ports)
    service = Service(entry.host, entry.namespace, entry.address, {}, ports, hosts=(entry.fqdn, entry.host))
    sets = []
    for endpoint in entry.endpoints:
        numbers = {sp.name: endpoint.ports.get(p.name) or p.target or p.number
                   for p, sp in zip(entry.ports, ports, strict=True)}
        sets.append(EndpointSet(entry.host, entry.namespace, (EndpointAddress(endpoint.address, ""),), numbers))
    return service, sets


def known_hosts(services: Sequence[Service]) -> dict[str, HostPorts]:
    """Every Service's FQDN with its ports."""
    return {s.fqdn: HostPorts(frozenset(p.port for p in s.ports),
                              frozenset(p.port for p in s.ports if is_http_port(p.name))) for s in services}


def _with_previous(findings: list[Finding]) -> list[Finding]:
    return [Finding(f.code, f.source, f.resource, f.path, f.message + STILL_SERVING) if f.severity == ERROR else f
            for f in findings]


def _translate_each(items: Sequence[tuple[str, Mapping[str, Any]]], translate: Callable[..., tuple[Any, list[Finding]]],
                    previous: Mapping[str, Any], findings: list[Finding]) -> dict[str, Any]:
    """Translate each (source, document); a refused one falls back to its previous version if there is one."""
    accepted: dict[str, Any] = {}
    for source, doc in items:
        obj, found = translate(doc, source=source)
        label = resource_label(doc)
        if obj is None and label in previous:
            obj, found = previous[label], _with_previous(found)
        findings.extend(found)
        if obj is not None:
            accepted[label] = obj
    return accepted


def build_istio_config(virtual_services: Sequence[tuple[str, Mapping[str, Any]]],
                       destination_rules: Sequence[tuple[str, Mapping[str, Any]]],
                       service_entries: Sequence[tuple[str, Mapping[str, Any]]],
                       legacy: Sequence[tuple[str, Mapping[str, Any]]],
                       services: Sequence[Service], meshbox_rules: Sequence[RouteRule],
                       previous: IstioState | None) -> IstioConfig:
    """(source, document) pairs of each kind → rules, policies and problems; ``previous`` from the last build.

    ``legacy`` holds config.istio.io/v1alpha2 RouteRules and DestinationPolicies.
    """
    previous = previous or IstioState()
    findings: list[Finding] = []
    entries: dict[str, ServiceEntry] = {}
    entry_services: list[Service] = []
    entry_endpoints: list[EndpointSet] = []
    hosts = known_hosts(services)
    for label, entry in _translate_each(service_entries, translate_service_entry, previous.service_entries,
                                        findings).items():
        if entry.fqdn in hosts:
            findings.append(Finding(Code.CONFLICTING_HOSTS, entry.source, label, "spec.hosts[0]",
                                    f"{entry.fqdn} is already a Service's or another ServiceEntry's host; "
                                    "this entry is not applied"))
            continue
        entries[label] = entry
        service, sets = entry_as_service(entry)
        entry_services.append(service)
        entry_endpoints.extend(sets)
        hosts.update(known_hosts([service]))
    drs = _translate_each(destination_rules, translate_destination_rule, previous.destination_rules, findings)
    vss = _translate_each(virtual_services, translate_virtual_service, previous.virtual_services, findings)
    old = _translate_each(legacy, _translate_legacy, previous.legacy, findings)
    resolution = resolve(list(vss.values()), list(drs.values()), hosts, previous.routes)
    findings.extend(resolution.findings)
    policies = {host: dr.spec for host, dr in resolution.policies.items()}
    old_rules = [RouteRule(o.name, o.namespace, o.spec) for o in old.values() if isinstance(o, LegacyRouteRule)]
    for label, policy in old.items():
        if isinstance(policy, LegacyDestinationPolicy):
            host = policy.spec.destination
            if host in policies:
                findings.append(Finding(Code.CONFLICTING_DESTINATION_RULES, policy.source, label, "spec.destination",
                                        f"{host} already has a DestinationRule or DestinationPolicy; this one is not "
                                        "applied"))
            else:
                policies[host] = policy.spec
    rules = tuple(RouteRule(r.name, r.namespace, spec) for r in resolution.routes.values() for spec in r.specs)
    routed = {spec.destination: r.resource for r in resolution.routes.values() for spec in r.specs}
    for rule in (*meshbox_rules, *old_rules):
        for service in (*services, *entry_services):
            if service.fqdn in routed and targets(rule, service):
                findings.append(Finding(Code.OVERLAPPING_RULES, "registry", f"RouteRule {rule.namespace}/{rule.name}",
                                        "spec.destination", f"{service.fqdn} is also routed by {routed[service.fqdn]}"
                                        "; routes are tried by precedence, then in registry order"))
    return IstioConfig((*old_rules, *rules), policies, tuple(str(f) for f in findings),
                       IstioState(vss, drs, entries, resolution.routes, old), tuple(entry_services),
                       tuple(entry_endpoints))


def _translate_legacy(doc: Mapping[str, Any], *, source: str) -> tuple[Any, list[Finding]]:
    if doc.get("kind") == "RouteRule":
        return translate_legacy_route_rule(doc, source=source)
    return translate_destination_policy(doc, source=source)
