"""A Service's endpoints from its selector and the pods, as the endpoints controller computes them (pure).

One rule set for discovery and the local cluster: a Service with a selector selects the pods of
its namespace whose labels include every selector term (compared as strings: label values are
strings); each Service port's targetPort is a number or the name of a container port, resolved
per pod (a pod without that name gives no endpoint for that port); a selected pod is a *ready*
endpoint while it serves, and a not-ready one otherwise (as an EndpointSlice lists it with
``conditions.ready: false``). A Service without a selector has no computed endpoints.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from meshbox.api.kube.names import SERVICE_NAME_LABEL
from meshbox.api.kube.objects import Pod, Service, ServicePort


@dataclass(frozen=True)
class Endpoint:
    """One pod address behind one Service port."""

    ip: str
    port: int
    pod_name: str
    ready: bool


def selects(selector: Mapping[str, str], labels: Mapping[str, str]) -> bool:
    """Whether labels hold every term of a non-empty selector (an empty one selects no pods for a Service)."""
    return bool(selector) and all(labels.get(key) == value for key, value in selector.items())


def matches(selector: Mapping[str, str], labels: Mapping[str, str]) -> bool:
    """Label-query match (``kubectl get -l``, a Deployment's matchLabels): an empty selector matches all."""
    return all(labels.get(key) == value for key, value in selector.items())


def resolve_target(port: ServicePort, pod_ports: Mapping[str, int] | None) -> int | None:
    """The container port a Service port sends to on a pod (None: the pod has no port of that name)."""
    if isinstance(port.target_port, int):
        return port.target_port
    return (pod_ports or {}).get(port.target_port)


def selected_pods(service: Service, pods: Iterable[Pod]) -> list[Pod]:
    """Pods with an IP in the Service's namespace that its selector selects, serving or not."""
    return [p for p in pods if p.namespace == service.namespace and p.ip and selects(service.selector, p.labels)]


def port_endpoints(service: Service, port: ServicePort, pods: Iterable[Pod]) -> list[Endpoint]:
    """Endpoints of one Service port, ready and not, sorted by address."""
    found = []
    for pod in selected_pods(service, pods):
        target = resolve_target(port, pod.ports)
        if target is not None:
            found.append(Endpoint(pod.ip, target, pod.name, pod.serving))
    return sorted(found, key=lambda e: (e.ip, e.port))


def endpoint_slice(service: Service, pods: Iterable[Pod]) -> dict[str, Any]:
    """The EndpointSlice (discovery.k8s.io/v1) the endpoints controller would write for a Service.

    One slice per Service; a port whose targetPort resolves differently on different pods is
    listed with the first pod's number (Kubernetes splits such Services into several slices).
    """
    pods = list(pods)
    ports: list[dict[str, Any]] = []
    addresses: dict[str, dict[str, Any]] = {}
    for port in service.ports:
        endpoints = port_endpoints(service, port, pods)
        if not endpoints and isinstance(port.target_port, str):
            continue
        number = endpoints[0].port if endpoints else port.target_port
        ports.append({"name": port.name, "port": number, "protocol": "TCP"})
        for e in endpoints:
            addresses.setdefault(e.ip, {
                "addresses": [e.ip], "conditions": {"ready": e.ready},
                "targetRef": {"kind": "Pod", "namespace": service.namespace, "name": e.pod_name},
            })
    return {
        "apiVersion": "discovery.k8s.io/v1",
        "kind": "EndpointSlice",
        "metadata": {"name": service.name, "namespace": service.namespace,
                     "labels": {SERVICE_NAME_LABEL: service.name}},
        "addressType": "IPv4",
        "endpoints": [addresses[ip] for ip in sorted(addresses)],
        "ports": ports,
    }


def endpoints_object(service: Service, pods: Iterable[Pod]) -> dict[str, Any]:
    """The v1 Endpoints object of a Service: one subset per Service port, ready and not-ready addresses apart."""
    pods = list(pods)
    subsets = []
    for port in service.ports:
        endpoints = port_endpoints(service, port, pods)
        if not endpoints:
            continue
        subset: dict[str, Any] = {"ports": [{"name": port.name, "port": endpoints[0].port, "protocol": "TCP"}]}
        for key, ready in (("addresses", True), ("notReadyAddresses", False)):
            chosen = [{"ip": e.ip, "targetRef": {"kind": "Pod", "namespace": service.namespace, "name": e.pod_name}}
                      for e in endpoints if e.ready is ready]
            if chosen:
                subset[key] = chosen
        subsets.append(subset)
    return {"apiVersion": "v1", "kind": "Endpoints",
            "metadata": {"name": service.name, "namespace": service.namespace}, "subsets": subsets}
