"""The service registry: one immutable snapshot of Services, Pods, endpoints and route rules.

Built from Kubernetes-shaped documents (from a directory or the API server). Objects that
cannot be used are left out and listed in ``errors``; everything else is served. Istio's
VirtualServices and DestinationRules join the route rules and destination policies
(istio_config.py); the previous registry is passed in so their last good versions keep serving.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from meshbox.api.istio.legacy import is_istio_legacy
from meshbox.api.istio.objects import is_istio_networking
from meshbox.api.kube.endpoints import selected_pods
from meshbox.api.kube.objects import (
    EndpointSet,
    ObjectError,
    Pod,
    Service,
    object_label,
    parse_endpoint_slice,
    parse_endpoints,
    parse_pod,
    parse_service,
)
from meshbox.api.loader import ConfigError
from meshbox.api.security_policy import AUTHORIZATION_POLICY, PEER_AUTHENTICATION, SecurityPolicy, parse_security_policy
from meshbox.api.v1 import routing_pb2
from meshbox.api.validation import ValidationError
from meshbox.discovery.istio_config import IstioState, build_istio_config
from meshbox.discovery.route_rules import RouteRule, parse_route_rule_object

# Kinds a registry reads; any other kind (Deployment, ConfigMap...) is skipped without complaint,
# so users can point discovery at the same directory they keep their manifests in.
KINDS = ("Service", "Pod", "Endpoints", "EndpointSlice", "RouteRule", "VirtualService", "DestinationRule",
         "ServiceEntry", "DestinationPolicy", PEER_AUTHENTICATION, AUTHORIZATION_POLICY)


@dataclass(frozen=True)
class SourcedDocument:
    """One Kubernetes-shaped object and where it came from (file path or API URL)."""

    source: str
    doc: Mapping[str, Any]


@dataclass(frozen=True)
class Registry:
    services: tuple[Service, ...] = ()
    pods: tuple[Pod, ...] = ()
    endpoint_sets: tuple[EndpointSet, ...] = ()
    route_rules: tuple[RouteRule, ...] = ()
    errors: tuple[str, ...] = ()
    # DestinationRules' cluster policies and subsets, by host FQDN.
    destination_policies: Mapping[str, routing_pb2.DestinationPolicySpec] = field(default_factory=dict)
    istio_state: IstioState | None = field(default=None, compare=False, repr=False)
    # Istio's security.istio.io policies, validated (enforced by the data plane: docs/security.md).
    security_policies: tuple[SecurityPolicy, ...] = ()
    _pods_by_key: dict[tuple[str, str], Pod] = field(default_factory=dict, compare=False, repr=False)
    _pods_by_ip: dict[str, Pod] = field(default_factory=dict, compare=False, repr=False)

    def __post_init__(self) -> None:
        self._pods_by_key.update({(p.namespace, p.name): p for p in self.pods})
        self._pods_by_ip.update({p.ip: p for p in self.pods if p.ip and p.serving})

    def pod_by_ip(self, ip: str) -> Pod | None:
        """The serving pod with this IP, if any."""
        return self._pods_by_ip.get(ip)

    def pod(self, namespace: str, name: str) -> Pod | None:
        return self._pods_by_key.get((namespace, name))

    def pods_selected_by(self, service: Service) -> list[Pod]:
        """Serving pods in the Service's namespace whose labels include its selector."""
        return [p for p in selected_pods(service, self.pods) if p.serving]

    def endpoint_sets_of(self, service: Service) -> list[EndpointSet]:
        return [e for e in self.endpoint_sets if e.namespace == service.namespace and e.service == service.name]


def parse_security_policy_object(doc: Mapping[str, Any], *, source: str) -> SecurityPolicy:
    """An Istio PeerAuthentication or AuthorizationPolicy; unsupported fields are refused by path."""
    try:
        return parse_security_policy(doc, source=source)
    except (ConfigError, ValidationError) as exc:
        raise ObjectError(str(exc), source=source, obj=object_label(doc)) from exc


def build_registry(documents: Iterable[SourcedDocument], previous: Registry | None = None) -> Registry:
    """Parse every document; the first of two objects with the same kind/namespace/name wins."""
    services: list[Service] = []
    pods: list[Pod] = []
    endpoint_sets: list[EndpointSet] = []
    rules: list[RouteRule] = []
    policies: list[SecurityPolicy] = []
    errors: list[str] = []
    istio: dict[str, list[tuple[str, Mapping[str, Any]]]] = {"VirtualService": [], "DestinationRule": [],
                                                            "ServiceEntry": [], "legacy": []}
    seen: dict[str, str] = {}
    for item in documents:
        doc, source = item.doc, item.source
        kind = doc.get("kind")
        if kind not in KINDS or (kind in istio and not is_istio_networking(doc)) or (
                kind == "DestinationPolicy" and not is_istio_legacy(doc)):
            continue
        label = object_label(doc)
        if label in seen:
            errors.append(f"{source}: {label}: duplicate of the object in {seen[label]}; ignored")
            continue
        seen[label] = source
        try:
            if kind == "Service":
                service = parse_service(doc, source=source)
                if service is not None:
                    services.append(service)
            elif kind == "Pod":
                pods.append(parse_pod(doc, source=source))
            elif kind == "Endpoints":
                endpoint_sets.extend(parse_endpoints(doc, source=source))
            elif kind == "EndpointSlice":
                endpoint_sets.append(parse_endpoint_slice(doc, source=source))
            elif kind in istio:
                istio[kind].append((source, doc))
            elif is_istio_legacy(doc):
                istio["legacy"].append((source, doc))
            elif kind == "RouteRule":
                rules.append(parse_route_rule_object(doc, source=source))
            else:
                policies.append(parse_security_policy_object(doc, source=source))
        except ObjectError as exc:
            errors.append(str(exc))
    translated = build_istio_config(istio["VirtualService"], istio["DestinationRule"], istio["ServiceEntry"],
                                    istio["legacy"], services, rules, previous.istio_state if previous else None)
    return Registry((*services, *translated.services), tuple(pods), (*endpoint_sets, *translated.endpoint_sets),
                    (*rules, *translated.rules), (*errors, *translated.problems),
                    destination_policies=translated.policies, istio_state=translated.state,
                    security_policies=tuple(policies))
